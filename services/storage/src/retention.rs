//! Retention and purge. A study's objects are kept for its contract's
//! `retention` after its last read is signed; then the home region
//! purges it: its index entries are dropped, every object under
//! `phi/<tenant>/<study>/` deleted, its data keys shredded (its PHI events
//! stay in the log, unreadable), and then ObjectPurged is appended: one per
//! de-identified derivative (naming the destination, which deletes it when
//! the record's copy arrives, `landed`) and one for the study.
//!
//! The events come last: a crash before them leaves the study due, and the
//! next pass does it again (deleting and shredding twice is once; the
//! events' ids derive from the signature that started the clock, so a
//! redone append is a duplicate consumers drop).
//!
//! Which studies are due is a fold (`storage.retention`) of the region's
//! own routing topic (a study's contract from StudyQueued, its last read
//! from AssignmentCompleted; a read queued again stops the clock) and its
//! own storage topic (the derivatives written, and the purges done). A
//! study is held from its first queueing until its purge is folded.
//! Time is an argument: a pass purges what is due at `now`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use meridian_config::Platform;
use meridian_events::payload::Payload;
use meridian_events::{Envelope, EventId, KeyStore, StudyId, UnixMicros};
use meridian_log::failpoint::FailPoints;
use meridian_log::partitioner::Ownership;
use meridian_log::{EventLog, LogReader, Outgoing, Position, TopicName};
use meridian_objects::blobs::Blobs;
use meridian_projection::live::Live;
use meridian_projection::{Event, Projection};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::index::{IndexError, StudyIndex};
use crate::phi::{Aggregate, storage_event};

/// After a study's objects are deleted and its keys shredded, before its
/// ObjectPurged records are appended: where a crash must redo the purge.
pub const AFTER_DELETE: &str = "retention.after_delete";

/// A purge's records share the study's `storage.object` aggregate: the
/// version is the signature's routing version × this + the record's slot.
const SLOTS: u64 = 64;

/// What retention knows of one study of this region.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Retained {
    pub tenant: String,
    /// The contract routing queued it under; empty until it was queued.
    pub contract: String,
    /// When its last read was signed; none while a read is open.
    pub read_at: Option<i64>,
    /// That signature's event id and routing version: what the purge
    /// derives its ids and versions from.
    pub cause: Option<(Uuid, u64)>,
    /// Its de-identified derivatives: (derivative study, contract,
    /// destination region).
    pub derivatives: BTreeSet<(Uuid, String, String)>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub studies: BTreeMap<Uuid, Retained>,
}

pub struct StudyRetention;

impl Projection for StudyRetention {
    type State = Kept;
    const NAME: &'static str = "storage.retention";

    fn apply(mut state: Kept, event: &Event<'_>) -> Kept {
        if event.copied {
            // Another region's studies are that region's to purge.
            return state;
        }
        let meta = &event.envelope.meta;
        let study = |id: &str| Uuid::parse_str(id).ok();
        match event.payload {
            Payload::StudyQueued(q) => {
                if let Some(s) = study(&q.study_id) {
                    let entry = state.studies.entry(s).or_default();
                    entry.tenant.clone_from(&meta.tenant);
                    entry.contract.clone_from(&q.contract);
                    (entry.read_at, entry.cause) = (None, None);
                }
            }
            Payload::AssignmentCompleted(c) => {
                if let Some(entry) = study(&c.study_id).and_then(|s| state.studies.get_mut(&s)) {
                    entry.read_at = Some(meta.occurred_at.0);
                    entry.cause = Some((meta.event_id.0, meta.aggregate_version));
                }
            }
            Payload::DerivativeCreated(d) => {
                if let (Some(s), Some(derivative)) = (study(&d.study_id), study(&d.derivative_study_id)) {
                    let entry = state.studies.entry(s).or_default();
                    entry.tenant.clone_from(&meta.tenant);
                    entry.derivatives.insert((derivative, d.contract.clone(), d.destination_region.clone()));
                }
            }
            Payload::ObjectPurged(p) if p.derivative_study_id.is_empty() => {
                if let Some(s) = study(&p.study_id) {
                    state.studies.remove(&s);
                }
            }
            _ => {}
        }
        state
    }
}

/// A study whose retention has ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Purge {
    pub study: Uuid,
    pub tenant: String,
    pub contract: String,
    /// When its retention ended: the purge's time on the log.
    pub due: UnixMicros,
    pub cause: EventId,
    pub version: u64,
    pub derivatives: Vec<(Uuid, String, String)>,
}

impl Purge {
    /// Where the study's objects are in its home's store.
    pub fn prefix(&self) -> String {
        format!("phi/{}/{}/", self.tenant, self.study.hyphenated())
    }

    /// The purge's records: each derivative's, then the study's.
    pub fn events(&self, region: &str) -> Result<Vec<Outgoing>, RetentionError> {
        let reason = format!("the retention of contract {} ended", self.contract);
        let mut records: Vec<meridian_proto::events::v1::ObjectPurged> = self
            .derivatives
            .iter()
            .map(|(derivative, contract, destination)| meridian_proto::events::v1::ObjectPurged {
                study_id: self.study.to_string(),
                object_key: format!("deid/{}/{contract}/{}/", self.tenant, derivative.hyphenated()),
                reason: reason.clone(),
                region: destination.clone(),
                derivative_study_id: derivative.to_string(),
            })
            .collect();
        records.push(meridian_proto::events::v1::ObjectPurged {
            study_id: self.study.to_string(),
            object_key: self.prefix(),
            reason,
            region: region.to_owned(),
            derivative_study_id: String::new(),
        });
        let mut out = Vec::new();
        for (slot, payload) in records.iter().enumerate() {
            let slot = slot as u64;
            if slot >= SLOTS {
                return Err(RetentionError::TooManyDerivatives { study: self.study, count: self.derivatives.len() });
            }
            let event_id = EventId::derived(self.cause, "meridian.events.v1.ObjectPurged", slot as u32);
            let aggregate = Aggregate { kind: "storage.object", id: self.study, version: self.version * SLOTS + slot };
            let (topic, meta) = storage_event(region, &self.tenant, aggregate, event_id, self.due, Some(self.cause))?;
            out.push(Outgoing::new(topic, &Envelope::plain(meta, payload)?)?);
        }
        Ok(out)
    }
}

/// The studies whose retention has ended at `now`, in the order it ended.
/// A study whose contract the configuration no longer names is kept (and
/// said, once per pass): its retention is unknown.
pub fn due(kept: &Kept, platform: &Platform, now: UnixMicros) -> Vec<Purge> {
    let mut out = Vec::new();
    for (study, r) in &kept.studies {
        let (Some(read_at), Some((cause, version))) = (r.read_at, r.cause) else { continue };
        let Some(contract) = platform.contracts.get(&r.contract) else {
            tracing::warn!(%study, contract = %r.contract, "retention unknown: the configuration has no such contract");
            continue;
        };
        let retention = i64::try_from(contract.retention.seconds.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        let due = read_at.saturating_add(retention);
        if due <= now.0 {
            out.push(Purge {
                study: *study,
                tenant: r.tenant.clone(),
                contract: r.contract.clone(),
                due: UnixMicros(due),
                cause: EventId(cause),
                version,
                derivatives: r.derivatives.iter().cloned().collect(),
            });
        }
    }
    out.sort_by_key(|p| p.due.0);
    out
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("retention: {0}")]
    Index(#[from] IndexError),
    #[error("retention: {0}")]
    Blob(#[from] crate::blobs::BlobError),
    #[error("retention: shredding a purged study's keys: {0}")]
    Keys(#[from] meridian_events::seal::Error),
    #[error("retention: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("retention: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
    #[error("retention: study {study} has {count} derivatives; one purge records at most 63")]
    TooManyDerivatives { study: Uuid, count: usize },
}

/// The home region's purges: the fold, and the passes that act on it.
pub struct Retention {
    region: String,
    platform: Arc<Platform>,
    live: Live<StudyRetention>,
    index: Arc<StudyIndex>,
    blobs: Arc<dyn Blobs>,
    keys: Arc<dyn KeyStore>,
    log: Arc<dyn EventLog>,
    failpoints: FailPoints,
    /// Which studies this process purges (by their storage partition).
    ownership: Ownership,
    partitions: u32,
    /// Purged by this process, their ObjectPurged not yet folded: not
    /// purged again meanwhile.
    purging: std::sync::Mutex<HashSet<Uuid>>,
}

impl Retention {
    /// Opens the fold from its snapshot and the tail of the region's
    /// routing and storage topics; purges go through `index` and the
    /// region's store, keys and log.
    pub async fn open(
        context: &meridian_region::RegionContext,
        index: Arc<StudyIndex>,
    ) -> Result<Retention, meridian_projection::Error> {
        let region = context.name.as_str();
        let log_err = |source| meridian_projection::Error::Log { projection: StudyRetention::NAME, source };
        let topic = |stream| {
            TopicName::new(region, meridian_events::DataClass::Operational, stream)
                .map_err(|e| log_err(meridian_log::Error::UnknownTopic { topic: e.name }))
        };
        let (routing, storage) = (topic("routing")?, topic("storage")?);
        let mut starts = Vec::new();
        for t in [&routing, &storage] {
            let n = context.log.partitions(t).await.map_err(log_err)?;
            starts.extend((0..n).map(|p| Position::start(t.clone(), p)));
        }
        let partitions = context.log.partitions(&storage).await.map_err(log_err)?;
        let (log, keys) = (context.log.as_ref(), context.keys.as_ref());
        let live = Live::open(region, context.snapshotter(), starts, log, keys, context.idle).await?;
        Ok(Retention {
            region: region.to_owned(),
            platform: context.platform.clone(),
            live,
            index,
            blobs: context.blobs.clone(),
            keys: context.keys.clone(),
            log: context.log.clone(),
            failpoints: context.failpoints.clone(),
            ownership: context.ownership,
            partitions,
            purging: std::sync::Mutex::new(HashSet::new()),
        })
    }

    pub fn live(&self) -> &Live<StudyRetention> {
        &self.live
    }

    /// Purges every study of this process whose retention ended by `now`.
    /// Returns how many. A failing store stops the pass: what it did not
    /// finish is due again at the next.
    pub async fn purge_due(&self, now: UnixMicros) -> Result<usize, RetentionError> {
        let due = {
            let projector = self.live.lock().await;
            let kept = projector.state();
            let mut purging = self.purging.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            purging.retain(|s| kept.studies.contains_key(s));
            let due = due(kept, &self.platform, now);
            due.into_iter().filter(|p| !purging.contains(&p.study)).collect::<Vec<_>>()
        };
        let mut purged = 0;
        for purge in due {
            let key = purge.study.hyphenated().to_string();
            if !self.ownership.owns(meridian_log::partitioner::partition_for(key.as_bytes(), self.partitions)) {
                continue;
            }
            self.purge(&purge).await?;
            self.purging.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(purge.study);
            purged += 1;
        }
        Ok(purged)
    }

    async fn purge(&self, purge: &Purge) -> Result<(), RetentionError> {
        let instances = self.index.forget_study(&purge.tenant, purge.study, None)?;
        let mut deleted = 0;
        for key in self.blobs.list(&purge.prefix()).await? {
            self.blobs.delete(&key).await?;
            deleted += 1;
        }
        let keys = self.keys.shred(StudyId(purge.study))?;
        self.failpoints.hit(AFTER_DELETE)?;
        let records = purge.events(&self.region)?;
        self.log.append(records).await?;
        tracing::info!(
            region = %self.region, study = %purge.study, contract = %purge.contract, instances, objects = deleted,
            keys, derivatives = purge.derivatives.len(), "study purged at the end of its retention"
        );
        Ok(())
    }
}

/// The purges of a region, followed into a study index that is not the
/// purging process's own (ingest's copy, a storage replica's): each
/// ObjectPurged of a study forgets it there. Positions live in the index,
/// moved with what they forgot.
pub struct IndexPurges {
    region: String,
    index: Arc<StudyIndex>,
    /// The process's data keys: a purged study's are forgotten too, so a
    /// study sent again gets a fresh key, not the shredded one remembered.
    keys: Option<Arc<dyn KeyStore>>,
    log: Arc<dyn EventLog>,
    topic: TopicName,
    reader: tokio::sync::Mutex<Option<Box<dyn LogReader>>>,
}

impl IndexPurges {
    pub fn new(region: &str, index: Arc<StudyIndex>, log: Arc<dyn EventLog>) -> Result<IndexPurges, IndexError> {
        let topic = TopicName::new(region, meridian_events::DataClass::Operational, "storage")
            .map_err(|e| IndexError::Log(meridian_log::Error::UnknownTopic { topic: e.name }))?;
        let reader = tokio::sync::Mutex::new(None);
        Ok(IndexPurges { region: region.to_owned(), index, keys: None, log, topic, reader })
    }

    /// Forgets a purged study's keys in `keys` too (a process that seals
    /// its events: ingest).
    pub fn forgetting_keys(mut self, keys: Arc<dyn KeyStore>) -> IndexPurges {
        self.keys = Some(keys);
        self
    }

    /// Forgets the purged studies recorded since the last call, until a
    /// read waits `wait` with nothing; returns how many. After an error
    /// the next call reads again from the index's positions.
    pub async fn follow(&self, wait: std::time::Duration) -> Result<usize, IndexError> {
        let mut slot = self.reader.lock().await;
        let mut reader = match slot.take() {
            Some(reader) => reader,
            None => {
                let partitions = self.log.partitions(&self.topic).await?;
                self.log.reader(self.index.positions(&self.topic, partitions)?).await?
            }
        };
        let mut forgotten = 0;
        loop {
            let batch = reader.next_batch(256, wait).await?;
            if batch.is_empty() {
                *slot = Some(reader);
                return Ok(forgotten);
            }
            for record in &batch {
                let at = Some((&record.topic, record.partition, record.offset));
                let study = record.envelope().ok().and_then(|envelope| match envelope.open_plain() {
                    Ok(Payload::ObjectPurged(p)) if p.derivative_study_id.is_empty() && p.region == self.region => {
                        Uuid::parse_str(&p.study_id).ok().map(|s| (envelope.meta.tenant.clone(), s))
                    }
                    _ => None,
                });
                match study {
                    Some((tenant, study)) => {
                        if let Some(keys) = &self.keys {
                            keys.forget(StudyId(study));
                        }
                        let instances = self.index.forget_study(&tenant, study, at)?;
                        tracing::info!(region = %self.region, %study, instances, "a purged study forgotten in this index");
                        forgotten += 1;
                    }
                    None => self.index.skip(at)?,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use meridian_proto::events::v1 as pb;

    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn platform() -> Platform {
        Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap()
    }

    /// Folds `events` (payload, when, copied) as version 1, 2, … of one
    /// aggregate each.
    fn fold(kept: Kept, events: &[(Payload, i64, bool)]) -> Kept {
        events.iter().enumerate().fold(kept, |kept, (i, (payload, at, copied))| {
            let meta = meridian_events::EventMeta {
                aggregate_type: "routing.study".into(),
                occurred_at: UnixMicros(*at),
                ..meridian_log::contract::meta(
                    Uuid::from_u128(9),
                    i as u64 + 1,
                    EventId(Uuid::from_u128(100 + i as u128)),
                )
            };
            let envelope = Envelope::plain(meta, &pb::StudyQueued::default()).unwrap();
            let event = Event { envelope: &envelope, payload, partition: 0, offset: i as u64, copied: *copied };
            StudyRetention::apply(kept, &event)
        })
    }

    fn queued(study: Uuid, read_type: &str) -> Payload {
        Payload::StudyQueued(pb::StudyQueued {
            study_id: study.to_string(),
            contract: "acme-atlantic".into(),
            read_type: read_type.into(),
            ..Default::default()
        })
    }

    fn signed(study: Uuid, read_type: &str) -> Payload {
        Payload::AssignmentCompleted(pb::AssignmentCompleted {
            study_id: study.to_string(),
            read_type: read_type.into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_study_is_due_its_contracts_retention_after_its_last_read_and_let_go_once_purged() {
        let platform = platform();
        let (study, derivative) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t0 = 1_800_000_000_000_000;
        let created = Payload::DerivativeCreated(pb::DerivativeCreated {
            study_id: study.to_string(),
            derivative_study_id: derivative.to_string(),
            destination_region: "in-south".into(),
            contract: "acme-atlantic".into(),
            ..Default::default()
        });
        // The preliminary signed queues the final: the clock has not started.
        let kept = fold(
            Kept::default(),
            &[
                (queued(study, "preliminary"), t0, false),
                (created, t0, false),
                (signed(study, "preliminary"), t0 + 10, false),
                (queued(study, "final"), t0 + 10, false),
            ],
        );
        assert!(due(&kept, &platform, UnixMicros(t0 + 365 * DAY)).is_empty(), "a read is open");
        // Another region's copy of a signature is not this region's study.
        let copied = fold(kept.clone(), &[(signed(study, "final"), t0 + DAY, true)]);
        assert!(due(&copied, &platform, UnixMicros(t0 + 365 * DAY)).is_empty());
        let kept = fold(kept, &[(signed(study, "final"), t0 + DAY, false)]);
        // acme-atlantic keeps a study 30 days after its last read.
        assert!(due(&kept, &platform, UnixMicros(t0 + 31 * DAY - 1)).is_empty());
        let purges = due(&kept, &platform, UnixMicros(t0 + 31 * DAY));
        let [purge] = &purges[..] else { panic!("{purges:?}") };
        assert_eq!(purge.due, UnixMicros(t0 + 31 * DAY));
        assert_eq!(purge.prefix(), format!("phi/acme/{study}/"));
        assert_eq!(purge.derivatives, [(derivative, "acme-atlantic".to_owned(), "in-south".to_owned())]);

        // Its records: the derivative's, then the study's, one aggregate,
        // rising versions; the same records when the purge is done again.
        let records = purge.events("us-east").unwrap();
        assert_eq!(records, purge.events("us-east").unwrap(), "a redone purge is a duplicate");
        let envelopes: Vec<Envelope> = records.iter().map(|r| Envelope::decode(&r.value).unwrap()).collect();
        let payloads: Vec<pb::ObjectPurged> = envelopes
            .iter()
            .map(|e| match e.open_plain().unwrap() {
                Payload::ObjectPurged(p) => p,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(payloads[0].object_key, format!("deid/acme/acme-atlantic/{derivative}/"));
        assert_eq!((payloads[0].region.as_str(), payloads[1].region.as_str()), ("in-south", "us-east"));
        assert_eq!(payloads[1].derivative_study_id, "");
        let versions: Vec<u64> = envelopes.iter().map(|e| e.meta.aggregate_version).collect();
        assert!(versions[0] < versions[1] && envelopes.iter().all(|e| e.meta.aggregate_id == study), "{versions:?}");
        assert!(envelopes.iter().all(|e| e.meta.occurred_at == purge.due), "the purge's time is when it was due");

        // A derivative's record changes nothing; the study's lets it go.
        let derivative_purged = Payload::ObjectPurged(payloads[0].clone());
        let kept = fold(kept, &[(derivative_purged, t0 + 31 * DAY, false)]);
        assert_eq!(kept.studies.len(), 1);
        let kept = fold(kept, &[(Payload::ObjectPurged(payloads[1].clone()), t0 + 31 * DAY, false)]);
        assert!(kept.studies.is_empty());
    }

    #[test]
    fn a_study_whose_contract_is_gone_is_kept_not_purged() {
        let study = Uuid::from_u128(3);
        let t0 = 1_800_000_000_000_000;
        let mut kept =
            fold(Kept::default(), &[(queued(study, "final"), t0, false), (signed(study, "final"), t0, false)]);
        kept.studies.get_mut(&study).unwrap().contract = "retired-contract".into();
        assert!(due(&kept, &platform(), UnixMicros(t0 + 3650 * DAY)).is_empty());
    }
}
