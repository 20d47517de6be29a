//! Consumer-side de-duplication, bounded: per aggregate, the last applied
//! version (and the id and digest of that event), for a window of the
//! aggregates most recently seen.
//!
//! An event at or below the last applied version is a duplicate (a
//! redelivery, a producer's re-append after a crash, or — on brokers that
//! expose aborted transactions to `read_committed` readers — an aborted
//! output). The same event id with different content, or two different
//! events claiming one version, is a [`Conflict`]: reported, never dropped
//! silently.
//!
//! An aggregate is its writer's: the region that wrote the event (its
//! envelope's home region) is part of its identity. A log holding another
//! region's copies (the replicator's) may hold two regions' events for one
//! aggregate id — a reader registered from configuration in every region
//! before readers were registered only where they sit — and those are two
//! aggregates, not a conflict; the fold chooses between them.
//!
//! # What stays caught once an aggregate leaves the window
//! Audit events, refusals and other one-event aggregates would otherwise
//! leave an entry each forever. The table keeps the [`WINDOW`] aggregates
//! touched most recently (least recently touched leave first), so its size,
//! and the size of every snapshot holding it, is bounded. What that keeps:
//! - a record read again at or below the consumer's position (a reader
//!   re-reading, a redelivery after a restart) is recognised by position,
//!   whatever its age — the projector checks positions before this table;
//! - a re-appended or aborted-but-visible copy of an event, and a version
//!   claimed twice, are recognised while the aggregate is among the last
//!   [`WINDOW`] aggregates this consumer saw. Those copies follow their
//!   original within one producer retry or transaction, a few records
//!   later, far inside the window;
//! - a copy arriving after its aggregate left the window (more than
//!   [`WINDOW`] other aggregates in between) is applied as new. Projections
//!   fold such a copy idempotently where it matters (versions kept with
//!   `max`, sets), and the ledger-critical consumers (billing) must not
//!   rely on this table alone.

use std::collections::{BTreeMap, HashMap};

use meridian_events::{Envelope, EventId};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// How many aggregates the table remembers.
pub const WINDOW: usize = 16_384;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    aggregate_type: String,
    /// The writing region; empty in tables stored before it was kept,
    /// which then match any writer (each aggregate had one).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    region: String,
    version: u64,
    event_id: EventId,
    #[serde(with = "hex_digest")]
    digest: [u8; 32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    /// When it was last touched (this table's own counter).
    touched: u64,
    /// The last applied event of each aggregate type with this id (usually one).
    types: Vec<Applied>,
}

/// The per-aggregate table, bounded to a window of recent aggregates.
#[derive(Clone, Debug)]
pub struct Deduplicator {
    /// Aggregate id → its entry. Keyed by id so a lookup allocates nothing.
    last: HashMap<Uuid, Entry>,
    /// Touch counter → aggregate id, oldest first: who leaves next.
    order: BTreeMap<u64, Uuid>,
    next: u64,
    window: usize,
}

impl Default for Deduplicator {
    fn default() -> Self {
        Deduplicator::with_window(WINDOW)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    New,
    Duplicate,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Conflict {
    #[error("event {event_id} was seen before with different content")]
    SameIdDifferentContent { event_id: EventId },
    #[error("events {applied} and {incoming} both claim version {version} of {aggregate}")]
    VersionClaimedTwice { aggregate: String, version: u64, applied: EventId, incoming: EventId },
}

impl Deduplicator {
    /// A table remembering the `window` aggregates touched most recently.
    pub fn with_window(window: usize) -> Deduplicator {
        Deduplicator { last: HashMap::new(), order: BTreeMap::new(), next: 0, window: window.max(1) }
    }

    fn applied(&self, envelope: &Envelope) -> Option<&Applied> {
        self.last.get(&envelope.meta.aggregate_id)?.types.iter().find(|a| Self::same(a, envelope))
    }

    /// Whether `applied` is of `envelope`'s aggregate: its type and writer.
    fn same(applied: &Applied, envelope: &Envelope) -> bool {
        applied.aggregate_type == envelope.meta.aggregate_type
            && (applied.region.is_empty() || applied.region == envelope.meta.home_region)
    }

    /// The aggregate as error messages name it.
    fn key(envelope: &Envelope) -> String {
        format!("{}/{}", envelope.meta.aggregate_type, envelope.meta.aggregate_id.hyphenated())
    }

    /// Whether `envelope` (whose encoded bytes hash to `digest`) is new.
    pub fn check(&self, envelope: &Envelope, digest: &[u8; 32]) -> Result<Verdict, Conflict> {
        let Some(last) = self.applied(envelope) else {
            return Ok(Verdict::New);
        };
        let (version, id) = (envelope.meta.aggregate_version, envelope.meta.event_id);
        if version > last.version {
            return Ok(Verdict::New);
        }
        if version < last.version {
            return Ok(Verdict::Duplicate);
        }
        if id != last.event_id {
            return Err(Conflict::VersionClaimedTwice {
                aggregate: Self::key(envelope),
                version,
                applied: last.event_id,
                incoming: id,
            });
        }
        if *digest != last.digest {
            return Err(Conflict::SameIdDifferentContent { event_id: id });
        }
        Ok(Verdict::Duplicate)
    }

    /// Records `envelope` as applied; the least recently touched aggregate
    /// leaves when the window is full.
    pub fn record(&mut self, envelope: &Envelope, digest: [u8; 32]) {
        let (version, event_id) = (envelope.meta.aggregate_version, envelope.meta.event_id);
        let touched = self.next;
        self.next += 1;
        let id = envelope.meta.aggregate_id;
        let entry = self.last.entry(id).or_insert_with(|| Entry { touched, types: Vec::new() });
        self.order.remove(&entry.touched);
        entry.touched = touched;
        self.order.insert(touched, id);
        match entry.types.iter_mut().find(|a| Self::same(a, envelope)) {
            Some(a) => {
                (a.version, a.event_id, a.digest) = (version, event_id, digest);
                if a.region.is_empty() {
                    a.region.clone_from(&envelope.meta.home_region);
                }
            }
            None => entry.types.push(Applied {
                aggregate_type: envelope.meta.aggregate_type.clone(),
                region: envelope.meta.home_region.clone(),
                version,
                event_id,
                digest,
            }),
        }
        while self.last.len() > self.window {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.last.remove(&oldest);
        }
    }

    /// Takes every entry stored before writers were kept as `region`'s:
    /// until then a consumer folded only its own region's topics, so they
    /// are. Without this, an old table would take another region's copy of
    /// an aggregate both wrote (a reader registered from configuration in
    /// every region) for a conflict with this region's own.
    pub fn own_unnamed(&mut self, region: &str) {
        for entry in self.last.values_mut() {
            for applied in entry.types.iter_mut().filter(|a| a.region.is_empty()) {
                applied.region = region.to_owned();
            }
        }
    }

    /// Checks and, when new, records: true when the event should be applied.
    pub fn admit(&mut self, envelope: &Envelope, encoded: &[u8]) -> Result<bool, Conflict> {
        let digest = envelope.digest(encoded);
        match self.check(envelope, &digest)? {
            Verdict::New => {
                self.record(envelope, digest);
                Ok(true)
            }
            Verdict::Duplicate => Ok(false),
        }
    }

    /// How many aggregates it remembers (at most its window).
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// The entries oldest first: what is compared and stored.
    fn in_order(&self) -> impl Iterator<Item = (&Uuid, &Vec<Applied>)> {
        self.order.values().filter_map(|id| self.last.get(id).map(|e| (id, &e.types)))
    }
}

/// Two tables are equal when they remember the same aggregates in the same
/// order (their touch counters may differ: a restored table renumbers).
impl PartialEq for Deduplicator {
    fn eq(&self, other: &Self) -> bool {
        self.window == other.window && self.last.len() == other.last.len() && self.in_order().eq(other.in_order())
    }
}

impl Eq for Deduplicator {}

/// Stored as its entries oldest first, so a restore keeps who leaves next.
#[derive(Serialize, Deserialize)]
struct Stored<T> {
    window: usize,
    entries: Vec<(Uuid, T)>,
}

impl Serialize for Deduplicator {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Stored { window: self.window, entries: self.in_order().map(|(id, types)| (*id, types)).collect() }
            .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Deduplicator {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored = Stored::<Vec<Applied>>::deserialize(deserializer)?;
        let mut table = Deduplicator::with_window(stored.window);
        for (id, types) in stored.entries {
            let touched = table.next;
            table.next += 1;
            table.order.insert(touched, id);
            table.last.insert(id, Entry { touched, types });
        }
        Ok(table)
    }
}

mod hex_digest {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(digest: &[u8; 32], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(digest))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(&text).map_err(D::Error::custom)?;
        bytes.try_into().map_err(|_| D::Error::custom("a digest is 32 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(aggregate: u128, version: u64, id: u128) -> Envelope {
        let meta = crate::contract::meta(Uuid::from_u128(aggregate), version, EventId(Uuid::from_u128(id)));
        let payload = meridian_proto::events::v1::StudyStarted { study_id: format!("{id}"), ..Default::default() };
        Envelope::plain(meta, &payload).unwrap()
    }

    fn admit(table: &mut Deduplicator, e: &Envelope) -> Result<bool, Conflict> {
        table.admit(e, &e.encode_to_vec())
    }

    #[test]
    fn one_event_aggregates_leave_the_window_and_the_table_stays_bounded() {
        let mut table = Deduplicator::with_window(100);
        for i in 0..10_000u128 {
            assert!(admit(&mut table, &event(i, 1, 1_000_000 + i)).unwrap());
        }
        assert_eq!(table.len(), 100);
        let json = serde_json::to_vec(&table).unwrap();
        assert!(json.len() < 100 * 250, "the stored table is bounded: {} bytes", json.len());
    }

    #[test]
    fn copies_inside_the_window_are_duplicates_and_conflicts_are_still_found() {
        let mut table = Deduplicator::with_window(100);
        let study = event(1, 1, 10);
        assert!(admit(&mut table, &study).unwrap());
        // 99 other aggregates later the study is still remembered.
        for i in 0..99u128 {
            admit(&mut table, &event(1_000 + i, 1, 2_000 + i)).unwrap();
        }
        assert!(!admit(&mut table, &study).unwrap(), "a re-appended copy inside the window");
        let rival = event(1, 1, 11);
        assert!(matches!(admit(&mut table, &rival), Err(Conflict::VersionClaimedTwice { .. })));
        // Touching an aggregate keeps it: a long-lived study is not evicted
        // by one-event aggregates while it keeps getting events.
        for round in 0..5u128 {
            for i in 0..60u128 {
                admit(&mut table, &event(10_000 + round * 100 + i, 1, 20_000 + round * 100 + i)).unwrap();
            }
            assert!(admit(&mut table, &event(1, 2 + round as u64, 30 + round)).unwrap());
        }
        assert!(!admit(&mut table, &event(1, 3, 31)).unwrap(), "an old version of a live aggregate");
    }

    #[test]
    fn one_aggregate_id_written_by_two_regions_is_two_aggregates() {
        let mut table = Deduplicator::with_window(100);
        let ours = event(1, 1, 10);
        let mut theirs = event(1, 1, 10);
        theirs.meta.home_region = "in-south".into();
        assert!(admit(&mut table, &ours).unwrap());
        // The same id and version from the other writer: new, not a conflict.
        assert!(admit(&mut table, &theirs).unwrap());
        let mut their_next = event(1, 2, 20);
        their_next.meta.home_region = "in-south".into();
        assert!(admit(&mut table, &their_next).unwrap());
        assert!(!admit(&mut table, &theirs).unwrap(), "each writer's versions are its own");
        assert!(matches!(admit(&mut table, &event(1, 1, 11)), Err(Conflict::VersionClaimedTwice { .. })));
        // A table stored before writers were kept matches any writer.
        let mut old: serde_json::Value = serde_json::to_value(&table).unwrap();
        for entry in old["entries"].as_array_mut().unwrap() {
            for applied in entry[1].as_array_mut().unwrap() {
                applied.as_object_mut().unwrap().remove("region");
            }
        }
        let mut old: Deduplicator = serde_json::from_value(old).unwrap();
        assert!(!old.check(&ours, &ours.digest(&ours.encode_to_vec())).is_ok_and(|v| v == Verdict::New));
        // Once told they were its own region's, another writer's event is
        // its own aggregate again.
        old.own_unnamed("test");
        assert!(!admit(&mut old, &ours).unwrap());
        let mut elsewhere = event(1, 1, 10);
        elsewhere.meta.home_region = "eu-west".into();
        assert!(admit(&mut old, &elsewhere).unwrap(), "another region's copy of the same id and version");
    }

    #[test]
    fn a_copy_after_its_aggregate_left_the_window_is_admitted_as_the_guarantee_says() {
        let mut table = Deduplicator::with_window(10);
        let first = event(1, 1, 10);
        assert!(admit(&mut table, &first).unwrap());
        for i in 0..10u128 {
            admit(&mut table, &event(100 + i, 1, 200 + i)).unwrap();
        }
        assert!(admit(&mut table, &first).unwrap(), "outside the window: only positions catch it");
    }

    #[test]
    fn a_stored_table_restores_with_the_same_eviction_order() {
        let mut table = Deduplicator::with_window(3);
        for (aggregate, version, id) in [(1u128, 1, 11u128), (2, 1, 12), (3, 1, 13), (1, 2, 21)] {
            admit(&mut table, &event(aggregate, version, id)).unwrap();
        }
        let mut restored: Deduplicator = serde_json::from_slice(&serde_json::to_vec(&table).unwrap()).unwrap();
        assert_eq!(restored, table);
        // Aggregate 2 is the least recently touched in both.
        admit(&mut table, &event(4, 1, 14)).unwrap();
        admit(&mut restored, &event(4, 1, 14)).unwrap();
        assert_eq!(restored, table);
        assert!(!admit(&mut restored, &event(3, 1, 13)).unwrap(), "3 is still there");
        assert!(admit(&mut restored, &event(2, 1, 12)).unwrap(), "2 left first");
    }
}
