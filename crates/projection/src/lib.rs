//! A small runtime for event-sourced projections.
//!
//! A projection is a fold, `apply(state, &event) -> state`, with no I/O. The
//! [`Projector`] feeds it records from the log and owns everything around
//! the fold:
//! - input positions (explicit, per topic-partition);
//! - de-duplication (per aggregate, the last applied version): redeliveries,
//!   re-appended events and aborted-but-visible outputs are applied once;
//! - the skip policy: an event that can never be read here (corrupt,
//!   unknown payload type or schema version, crypto-shredded, data key not
//!   in this region) is skipped, counted per reason and logged — never
//!   silently, never a crash. A conflict (same event id, other content) is
//!   counted and logged at error level;
//! - snapshots: state, positions and de-duplication table in one value,
//!   written atomically ([`snapshot::FileSnapshots`]), so a restart replays
//!   only the tail, and snapshot + tail equals a full replay (a property
//!   test proves it, with a broken snapshot as its control).
//!
//! # Layout
//! - [`Projection`], [`Projector`], [`Stats`]: the fold and its driver.
//! - [`snapshot`]: atomic snapshot files.
//! - [`run`]: reading a log into a projector; opening one from its snapshot
//!   and tail; snapshots on a schedule; rebuilding.
//! - [`live`]: a projection a service serves from memory, behind one lock.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt::Debug;

use meridian_events::envelope::Error as EnvelopeError;
use meridian_events::payload::Payload;
use meridian_events::{Envelope, KeyStore};
use meridian_log::dedup::Deduplicator;
use meridian_log::{Position, Record, TopicName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub mod live;
pub mod run;
pub mod snapshot;
pub mod unreadable;
pub mod writers;

/// An event as a projection sees it: the envelope and its opened payload.
pub struct Event<'a> {
    pub envelope: &'a Envelope,
    pub payload: &'a Payload,
    /// Where the record is in its topic: a fold that must find the event
    /// again later (an invoice's document) keeps these, not the event.
    pub partition: u32,
    pub offset: u64,
    /// Another region's event, copied into this region's log by the
    /// replicator (its topic names that region): a fold takes from a copy
    /// only what it must learn from elsewhere (a reader's own events),
    /// never what this region decides itself.
    pub copied: bool,
}

/// A fold over events. `apply` must be pure: no I/O, no clock.
pub trait Projection {
    type State: Clone + Default + Debug + PartialEq + Serialize + DeserializeOwned;
    /// Names the projection in snapshots, logs and metrics.
    const NAME: &'static str;
    fn apply(state: Self::State, event: &Event<'_>) -> Self::State;
}

/// Counts of what the projector did with its input, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub applied: u64,
    /// Already applied (redelivered, re-appended, or aborted-but-visible).
    pub duplicates: u64,
    /// Records before the projector's position (a reader re-reading).
    pub behind_position: u64,
    /// The envelope itself does not decode.
    pub corrupt_envelopes: u64,
    /// Unknown payload type or schema version, or corrupt payload bytes.
    pub unreadable_payloads: u64,
    /// PHI whose data key was shredded (the study was purged).
    pub shredded: u64,
    /// PHI whose data key this region's key store does not hold.
    pub unknown_keys: u64,
    /// Same event id with other content, or one version claimed twice.
    pub conflicts: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key store failed (not "key missing"): retry later, do not skip.
    #[error("projection {projection}: {source}")]
    KeyStore { projection: &'static str, source: EnvelopeError },
    #[error("projection {projection}: snapshot {operation}: {reason}")]
    Snapshot { projection: &'static str, operation: &'static str, reason: String },
    #[error("projection {projection}: {source}")]
    Log { projection: &'static str, source: meridian_log::Error },
}

/// What became of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Duplicate,
    BehindPosition,
    Skipped,
}

/// The state a projector snapshots: everything needed to continue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Snapshot<P: Projection> {
    pub projection: String,
    pub state: P::State,
    pub positions: Vec<(String, u32, u64)>,
    pub dedup: Deduplicator,
    pub stats: Stats,
}

/// Drives a [`Projection`] over log records.
pub struct Projector<P: Projection> {
    state: P::State,
    positions: BTreeMap<(TopicName, u32), u64>,
    dedup: Deduplicator,
    stats: Stats,
    /// The region whose log this is (records of topics naming another
    /// region are copies); `None`: every record is the log's own.
    region: Option<String>,
}

impl<P: Projection> Projector<P> {
    /// A projector reading from `start` (usually offset 0 of every partition).
    pub fn new(start: Vec<Position>) -> Self {
        Projector {
            state: P::State::default(),
            positions: start.into_iter().map(|p| ((p.topic, p.partition), p.offset)).collect(),
            dedup: Deduplicator::default(),
            stats: Stats::default(),
            region: None,
        }
    }

    /// The same projector, reading `region`'s log: records of topics that
    /// name another region reach the fold marked [`Event::copied`].
    pub fn in_region(mut self, region: Option<&str>) -> Self {
        if let Some(region) = region {
            // A table from before writers were kept holds this region's own.
            self.dedup.own_unnamed(region);
        }
        self.region = region.map(str::to_owned);
        self
    }

    /// The region whose log it reads, if it was told.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// Adds a start position for every topic-partition not read yet (a
    /// topic created after the snapshot was taken).
    pub fn ensure_positions(&mut self, starts: Vec<Position>) {
        for p in starts {
            self.positions.entry((p.topic, p.partition)).or_insert(p.offset);
        }
    }

    pub fn state(&self) -> &P::State {
        &self.state
    }

    /// The state, to change what the fold does not derive from the log: a
    /// consumer's outbox once its facts are appended, settings from
    /// configuration.
    pub fn state_mut(&mut self) -> &mut P::State {
        &mut self.state
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Where to read next.
    pub fn positions(&self) -> Vec<Position> {
        self.positions
            .iter()
            .map(|((topic, partition), offset)| Position {
                topic: topic.clone(),
                partition: *partition,
                offset: *offset,
            })
            .collect()
    }

    fn skip(&mut self, record: &Record, reason: &str, error: &dyn std::fmt::Display) -> Outcome {
        meridian_log::skips::log(P::NAME, record, reason, error);
        Outcome::Skipped
    }

    /// Feeds one record. Only a failing key store is an error: every other
    /// problem is a counted, logged skip.
    pub fn feed(&mut self, record: &Record, keys: &dyn KeyStore) -> Result<Outcome, Error> {
        let slot = (record.topic.clone(), record.partition);
        let next = self.positions.get(&slot).copied().unwrap_or(0);
        if record.offset < next {
            self.stats.behind_position += 1;
            return Ok(Outcome::BehindPosition);
        }
        let outcome = self.feed_new(record, keys)?;
        self.positions.insert(slot, record.offset + 1);
        Ok(outcome)
    }

    fn feed_new(&mut self, record: &Record, keys: &dyn KeyStore) -> Result<Outcome, Error> {
        let envelope = match record.envelope() {
            Ok(e) => e,
            Err(e) => {
                self.stats.corrupt_envelopes += 1;
                return Ok(self.skip(record, "corrupt_envelope", &e));
            }
        };
        let digest = envelope.digest(&record.value);
        match self.dedup.check(&envelope, &digest) {
            Ok(meridian_log::dedup::Verdict::New) => {}
            Ok(meridian_log::dedup::Verdict::Duplicate) => {
                self.stats.duplicates += 1;
                return Ok(Outcome::Duplicate);
            }
            Err(conflict) => {
                self.stats.conflicts += 1;
                tracing::error!(projection = P::NAME, topic = %record.topic, offset = record.offset, %conflict, "conflicting event");
                return Ok(Outcome::Skipped);
            }
        }
        let payload = match envelope.open(keys) {
            Ok(p) => p,
            Err(e) if !e.is_unreadable() => {
                return Err(Error::KeyStore { projection: P::NAME, source: e });
            }
            Err(e) => {
                let reason = meridian_log::skips::reason(&e);
                match e {
                    EnvelopeError::Shredded { .. } => self.stats.shredded += 1,
                    EnvelopeError::UnknownKey { .. } => self.stats.unknown_keys += 1,
                    _ => self.stats.unreadable_payloads += 1,
                }
                // Recorded as seen, so a redelivery is a duplicate, not a second skip.
                self.dedup.record(&envelope, digest);
                return Ok(self.skip(record, reason, &e));
            }
        };
        self.dedup.record(&envelope, digest);
        let copied = self.region.as_deref().is_some_and(|region| record.topic.region() != region);
        let state = std::mem::take(&mut self.state);
        let event = Event {
            envelope: &envelope,
            payload: &payload,
            partition: record.partition,
            offset: record.offset,
            copied,
        };
        self.state = P::apply(state, &event);
        self.stats.applied += 1;
        Ok(Outcome::Applied)
    }

    /// Folds records this process has just appended, at the positions the
    /// log gave them: the one writer of a topic keeps its projection
    /// current without reading its own writes back.
    pub fn feed_appended(
        &mut self,
        batch: Vec<meridian_log::Outgoing>,
        appended: Vec<meridian_log::Appended>,
        keys: &dyn KeyStore,
    ) -> Result<(), Error> {
        for (out, at) in batch.into_iter().zip(appended) {
            let record = Record {
                topic: out.topic,
                partition: at.partition,
                offset: at.offset,
                key: out.key,
                value: out.value,
                headers: out.headers,
            };
            self.feed(&record, keys)?;
        }
        Ok(())
    }

    /// The snapshot's bytes, encoded from the live state without copying
    /// it: a caller holding the projector's lock holds it only this long,
    /// and writes the file ([`snapshot::FileSnapshots::write`]) after.
    pub fn encode_snapshot(&self) -> Result<Vec<u8>, Error> {
        #[derive(Serialize)]
        struct View<'a, S: Serialize> {
            projection: &'a str,
            state: &'a S,
            positions: Vec<(String, u32, u64)>,
            dedup: &'a Deduplicator,
            stats: &'a Stats,
        }
        let view = View {
            projection: P::NAME,
            state: &self.state,
            positions: self.positions.iter().map(|((t, p), o)| (t.to_string(), *p, *o)).collect(),
            dedup: &self.dedup,
            stats: &self.stats,
        };
        serde_json::to_vec(&view).map_err(|e| Error::Snapshot {
            projection: P::NAME,
            operation: "encode",
            reason: e.to_string(),
        })
    }

    /// How many records it has taken in (applied, duplicate or skipped):
    /// what a snapshot schedule counts.
    pub fn fed(&self) -> u64 {
        let s = &self.stats;
        s.applied
            + s.duplicates
            + s.corrupt_envelopes
            + s.unreadable_payloads
            + s.shredded
            + s.unknown_keys
            + s.conflicts
    }

    /// Everything needed to continue after a restart, as one value.
    pub fn snapshot(&self) -> Snapshot<P> {
        Snapshot {
            projection: P::NAME.to_owned(),
            state: self.state.clone(),
            positions: self.positions.iter().map(|((t, p), o)| (t.to_string(), *p, *o)).collect(),
            dedup: self.dedup.clone(),
            stats: self.stats.clone(),
        }
    }

    /// Continues from a snapshot.
    pub fn restore(snapshot: Snapshot<P>) -> Result<Self, Error> {
        let bad = |reason: String| Error::Snapshot { projection: P::NAME, operation: "restore", reason };
        if snapshot.projection != P::NAME {
            return Err(bad(format!("snapshot is of projection {:?}", snapshot.projection)));
        }
        let mut positions = BTreeMap::new();
        for (topic, partition, offset) in snapshot.positions {
            let topic: TopicName = topic.parse().map_err(|e| bad(format!("{e}")))?;
            positions.insert((topic, partition), offset);
        }
        Ok(Projector { state: snapshot.state, positions, dedup: snapshot.dedup, stats: snapshot.stats, region: None })
    }
}

#[cfg(test)]
mod tests;
