//! Consumer-side de-duplication, bounded: per aggregate, the last applied
//! version (and the id and digest of that event).
//!
//! An event at or below the last applied version is a duplicate (a
//! redelivery, a producer's re-append after a crash, or — on brokers that
//! expose aborted transactions to `read_committed` readers — an aborted
//! output). The same event id with different content, or two different
//! events claiming one version, is a [`Conflict`]: reported, never dropped
//! silently.

use std::collections::BTreeMap;

use meridian_events::{Envelope, EventId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Applied {
    aggregate_type: String,
    version: u64,
    event_id: EventId,
    digest: [u8; 32],
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deduplicator {
    /// Aggregate id → the last applied event of each aggregate type with
    /// that id (usually one). Keyed by id so a lookup allocates nothing.
    last: BTreeMap<Uuid, Vec<Applied>>,
    #[serde(default)]
    aggregates: usize,
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
    fn applied(&self, envelope: &Envelope) -> Option<&Applied> {
        self.last.get(&envelope.meta.aggregate_id)?.iter().find(|a| a.aggregate_type == envelope.meta.aggregate_type)
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

    /// Records `envelope` as applied.
    pub fn record(&mut self, envelope: &Envelope, digest: [u8; 32]) {
        let (version, event_id) = (envelope.meta.aggregate_version, envelope.meta.event_id);
        let types = self.last.entry(envelope.meta.aggregate_id).or_default();
        match types.iter_mut().find(|a| a.aggregate_type == envelope.meta.aggregate_type) {
            Some(a) => (a.version, a.event_id, a.digest) = (version, event_id, digest),
            None => {
                types.push(Applied { aggregate_type: envelope.meta.aggregate_type.clone(), version, event_id, digest });
                self.aggregates += 1;
            }
        }
    }

    /// Checks and, when new, records: true when the event should be applied.
    pub fn admit(&mut self, envelope: &Envelope, encoded: &[u8]) -> Result<bool, Conflict> {
        let digest = Envelope::digest(encoded);
        match self.check(envelope, &digest)? {
            Verdict::New => {
                self.record(envelope, digest);
                Ok(true)
            }
            Verdict::Duplicate => Ok(false),
        }
    }

    /// How many aggregates it remembers.
    pub fn len(&self) -> usize {
        self.aggregates
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }
}
