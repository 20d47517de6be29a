//! De-identified derivatives of completed studies.
//!
//! The home region follows its ingest topic. On StudyCompleted (and on
//! StudyUpdated, when instances come after completion), for every contract
//! of the study's tenant that gives readers de-identified images, it
//! de-identifies each instance under the contract's profile and writes it,
//! through the PHI write path's derivative check, to each destination the
//! contract names; then it appends DerivativeCreated per destination,
//! linking the study's opaque id to the derivative's.
//!
//! Crash safety: the outputs and the consumer's input position commit in
//! one step. A crash before it redoes the study: de-identification is
//! deterministic, so the same objects are put again (storing nothing new),
//! and the events get the same ids (derived from the input event's).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use meridian_config::{ImageAccess, Platform};
use meridian_events::payload::Payload;
use meridian_events::{DataClass, Envelope, EventId, InstanceId, SeriesId, StudyId, TenantSecret, UnixMicros};
use meridian_log::{EventLog, Outgoing, Step, TopicName};
use uuid::Uuid;

use crate::deidentify::{DeidError, Profile};
use crate::index::StudyIndex;
use crate::phi::{Aggregate, DeidentifiedObject, PhiWriteError, PhiWriter, storage_event};

/// The consumer's name on the ingest topic.
pub const CONSUMER: &str = "storage.derivatives";

/// How long a derivation waits for the index to hold a completed study's
/// instances (where the index follows the log).
const INDEX_WAIT: Duration = Duration::from_secs(10);

/// A derivative object is stored, its DerivativeCreated not yet committed.
pub const AFTER_PUT: &str = "derivatives.after_put";

/// Instances de-identified at once (each on a blocking thread).
const IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum DerivativeError {
    #[error("derivatives: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("derivatives: {0}")]
    Index(#[from] crate::index::IndexError),
    #[error("derivatives: {0}")]
    Blob(#[from] crate::blobs::BlobError),
    #[error("derivatives: {0}")]
    Write(#[from] PhiWriteError),
    #[error("derivatives: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
    #[error("derivatives: de-identification task: {0}")]
    Task(String),
}

/// What one study's derivative for one destination came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Created {
    pub contract: String,
    pub destination: String,
    pub derivative_study: StudyId,
    pub instances: u32,
    pub withheld: u32,
}

pub struct Derivatives {
    region: String,
    platform: Arc<Platform>,
    phi: Arc<PhiWriter>,
    index: Arc<StudyIndex>,
    log: Arc<dyn EventLog>,
    secrets: BTreeMap<String, TenantSecret>,
    failpoints: meridian_log::failpoint::FailPoints,
    stopping: std::sync::atomic::AtomicBool,
    /// Ingest records passed without a derivation, by reason.
    skips: meridian_log::skips::Skips,
    /// The intake's reader, kept between passes at the committed positions.
    reader: tokio::sync::Mutex<Option<Box<dyn meridian_log::LogReader>>>,
    /// Which partitions of ingest's topic this replica derives.
    ownership: meridian_log::partitioner::Ownership,
    /// Where the index follows the log (ingest is another process): what a
    /// completion names may not be indexed yet.
    follower: Option<Arc<crate::index::IndexFollower>>,
}

/// One instance's outcome: its derivative's ids, or why it was withheld.
enum Instance {
    Derived { study_uid: String, series_uid: String, sop_uid: String, bytes: Vec<u8> },
    Withheld(DeidError),
}

impl Derivatives {
    pub fn new(
        region: &str,
        platform: Arc<Platform>,
        phi: Arc<PhiWriter>,
        index: Arc<StudyIndex>,
        log: Arc<dyn EventLog>,
        secrets: BTreeMap<String, TenantSecret>,
        failpoints: meridian_log::failpoint::FailPoints,
    ) -> Derivatives {
        Derivatives {
            region: region.to_owned(),
            platform,
            phi,
            index,
            log,
            secrets,
            failpoints,
            stopping: std::sync::atomic::AtomicBool::new(false),
            skips: meridian_log::skips::Skips::new(CONSUMER),
            reader: tokio::sync::Mutex::new(None),
            ownership: meridian_log::partitioner::Ownership::default(),
            follower: None,
        }
    }

    /// Waits, before deriving a study, until `follower` has indexed the
    /// instances its completion counts (they were appended before it, but
    /// reach this index through the log).
    pub fn following(mut self, follower: Arc<crate::index::IndexFollower>) -> Derivatives {
        self.follower = Some(follower);
        self
    }

    /// Follows the log into the index until it holds the instances `c`
    /// counts, for at most [`INDEX_WAIT`]; past it, derives what is there
    /// (an instance the index skipped, shredded or unreadable, never comes).
    async fn await_index(&self, c: &Completion) -> Result<(), DerivativeError> {
        let Some(follower) = &self.follower else { return Ok(()) };
        let deadline = tokio::time::Instant::now() + INDEX_WAIT;
        loop {
            let held = match self.index.study_uid(&c.tenant, c.study)? {
                Some(uid) => self.index.study(&c.tenant, &uid)?.map_or(0, |s| s.instances),
                None => 0,
            };
            if held >= c.instances {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    region = %self.region, study = %c.study, held, counted = c.instances,
                    "the index holds fewer instances than the study's completion counts: deriving what it holds"
                );
                return Ok(());
            }
            follower.follow(crate::index::Read::Until(Duration::from_millis(100))).await?;
        }
    }

    /// Derives only the studies on the partitions `ownership` gives this
    /// replica.
    pub fn owning(mut self, ownership: meridian_log::partitioner::Ownership) -> Derivatives {
        self.ownership = ownership;
        self
    }

    /// What intake passed without a derivation, by reason.
    pub fn skips(&self) -> &meridian_log::skips::Skips {
        &self.skips
    }

    /// Takes in what ingest appended since the last call: derives every
    /// completed or updated study. Returns how many studies were derived.
    pub async fn intake(&self, idle: Duration) -> Result<usize, DerivativeError> {
        // One reader for every pass, kept at the committed positions; an
        // error drops it and the next pass starts from what was committed.
        let mut kept = self.reader.lock().await;
        let mut reader = match kept.take() {
            Some(reader) => reader,
            None => {
                let topic = TopicName::new(&self.region, DataClass::Operational, "ingest")
                    .map_err(|e| meridian_log::Error::UnknownTopic { topic: e.name })?;
                // Only the partitions this replica owns: another replica
                // takes the rest, and no study is derived by two.
                self.log.reader(self.ownership.mine(self.log.resume(CONSUMER, &topic).await?)).await?
            }
        };
        let mut derived = 0;
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                *kept = Some(reader);
                return Ok(derived);
            }
            let batch = reader.next_batch(64, idle).await?;
            if batch.is_empty() {
                *kept = Some(reader);
                return Ok(derived);
            }
            // Inputs that ask for nothing commit their positions together,
            // with the next step that has outputs or at the batch's end:
            // one sync per batch, not one per ingest event.
            let mut inputs: BTreeMap<(TopicName, u32), u64> = BTreeMap::new();
            let last = batch.len() - 1;
            for (i, record) in batch.into_iter().enumerate() {
                let mut outputs = Vec::new();
                match completed(&record) {
                    Ok(Some(c)) => {
                        self.await_index(&c).await?;
                        let created = self.derive(&c.tenant, c.study, c.at).await?;
                        derived += usize::from(!created.is_empty());
                        outputs = self.events(&c, &created)?;
                        if !created.is_empty() {
                            tracing::info!(
                                region = %self.region,
                                study = %c.study,
                                partition = record.partition,
                                derivatives = created.len(),
                                "study derived"
                            );
                        }
                    }
                    Ok(None) => {}
                    Err((reason, what)) => self.skips.skip(&record, reason, &what),
                }
                let next = record.next_position();
                inputs.insert((next.topic, next.partition), next.offset);
                if !outputs.is_empty() || i == last {
                    let inputs = std::mem::take(&mut inputs)
                        .into_iter()
                        .map(|((topic, partition), offset)| meridian_log::Position { topic, partition, offset })
                        .collect();
                    self.log.commit(Step { consumer: CONSUMER.into(), outputs, inputs }).await?;
                }
            }
        }
    }

    /// Makes [`intake`](Self::intake) return after the study it is on:
    /// the region is stopping.
    pub fn stop(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes the derivatives of `study` for every contract of `tenant`
    /// that asks for them; `now` stamps any refusal.
    pub async fn derive(&self, tenant: &str, study: Uuid, now: UnixMicros) -> Result<Vec<Created>, DerivativeError> {
        let contracts: Vec<_> = self
            .platform
            .contracts
            .values()
            .filter(|c| c.tenant == tenant && c.image_access == ImageAccess::Deidentified)
            .collect();
        if contracts.is_empty() {
            return Ok(Vec::new());
        }
        let Some(secret) = self.secrets.get(tenant) else {
            tracing::warn!(region = %self.region, %tenant, %study, "no id secret here: no derivative");
            return Ok(Vec::new());
        };
        let Some(study_uid) = self.index.study_uid(tenant, study)? else {
            tracing::warn!(region = %self.region, %tenant, %study, "study not in the index: no derivative");
            return Ok(Vec::new());
        };
        let instances = self.index.instances(tenant, &study_uid, None)?;
        let mut created = Vec::new();
        for contract in contracts {
            let profile = Arc::new(Profile::new(secret, &contract.name, &contract.deidentification_options));
            let derivative_study = StudyId::derive(secret, &profile.uid(&study_uid));
            let mut results: Vec<Option<Created>> = contract
                .deidentification_destinations
                .iter()
                .map(|destination| {
                    Some(Created {
                        contract: contract.name.clone(),
                        destination: destination.clone(),
                        derivative_study,
                        instances: 0,
                        withheld: 0,
                    })
                })
                .collect();
            // De-identification runs ahead on blocking threads while the
            // writes (each synced) go in order: memory holds IN_FLIGHT
            // instances, not the study.
            let keys: Vec<String> = instances.iter().map(|(_, _, entry)| entry.object_key.clone()).collect();
            let blobs = self.phi.blobs().clone();
            let mut outcomes = futures_util::stream::iter(keys.into_iter().map(move |key| {
                let (profile, blobs) = (profile.clone(), blobs.clone());
                async move {
                    let Some(bytes) = blobs.get(&key).await? else {
                        return Ok(Instance::Withheld(DeidError::Unreadable("its object is missing".into())));
                    };
                    let outcome = tokio::task::spawn_blocking(move || match profile.deidentify(&bytes) {
                        Ok(d) => Instance::Derived {
                            study_uid: d.study_uid,
                            series_uid: d.series_uid,
                            sop_uid: d.sop_uid,
                            bytes: d.bytes,
                        },
                        Err(e) => Instance::Withheld(e),
                    })
                    .await
                    .map_err(|e| DerivativeError::Task(e.to_string()))?;
                    Ok::<_, DerivativeError>(outcome)
                }
            }))
            .buffered(IN_FLIGHT);
            while let Some(outcome) = outcomes.try_next().await? {
                let (study_uid, series_uid, sop_uid, bytes) = match outcome {
                    Instance::Derived { study_uid, series_uid, sop_uid, bytes } => {
                        (study_uid, series_uid, sop_uid, bytes)
                    }
                    Instance::Withheld(why) => {
                        tracing::info!(region = %self.region, %study, reason = %why, "instance withheld from the derivative");
                        results.iter_mut().flatten().for_each(|r| r.withheld += 1);
                        continue;
                    }
                };
                for result in &mut results {
                    let Some(r) = result else { continue };
                    let object = DeidentifiedObject {
                        tenant: tenant.to_owned(),
                        contract: contract.name.clone(),
                        destination: r.destination.clone(),
                        study: StudyId::derive(secret, &study_uid),
                        series: SeriesId::derive(secret, &series_uid),
                        instance: InstanceId::derive(secret, &sop_uid),
                        bytes: bytes.clone(),
                    };
                    match self.phi.put_deidentified(object, now).await {
                        Ok(_) => {
                            r.instances += 1;
                            self.failpoints.hit(AFTER_PUT)?;
                        }
                        // Recorded by the write path: this destination gets
                        // nothing more, and no DerivativeCreated.
                        Err(PhiWriteError::DerivativeRefused { .. }) => *result = None,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            created.extend(results.into_iter().flatten());
        }
        Ok(created)
    }

    /// DerivativeCreated per destination, with ids derived from the input
    /// event's, so a redone step appends recognisable duplicates.
    ///
    /// Each (study, contract, destination) is its own aggregate, written
    /// only here. Its version is the version of the ingest event that asked
    /// for it (StudyCompleted, then each StudyUpdated): rising with every
    /// derivation of the study, and the same when a step is redone, with no
    /// state to keep. Versions have gaps; consumers need them rising, not
    /// consecutive.
    fn events(&self, c: &Completion, created: &[Created]) -> Result<Vec<Outgoing>, DerivativeError> {
        let Completion { cause, tenant, study, at, version, .. } = c;
        let (tenant, study, cause, at) = (tenant.as_str(), *study, *cause, *at);
        let mut out = Vec::new();
        for (ordinal, c) in created.iter().enumerate() {
            let contract = self.platform.contracts.get(&c.contract);
            let payload = meridian_proto::events::v1::DerivativeCreated {
                study_id: study.to_string(),
                derivative_study_id: c.derivative_study.to_string(),
                destination_region: c.destination.clone(),
                instance_count: c.instances,
                withheld_count: c.withheld,
                contract: c.contract.clone(),
                options: contract
                    .map(|c| c.deidentification_options.iter().map(|o| o.as_str().to_owned()).collect())
                    .unwrap_or_default(),
            };
            let event_id = EventId::derived(cause, "meridian.events.v1.DerivativeCreated", ordinal as u32);
            let id = meridian_events::id::aggregate_id(
                "storage.derivative",
                &[study.as_bytes(), c.contract.as_bytes(), c.destination.as_bytes()],
            );
            let aggregate = Aggregate { kind: "storage.derivative", id, version: *version };
            let (topic, meta) = storage_event(&self.region, tenant, aggregate, event_id, at, Some(cause))?;
            out.push(Outgoing::new(topic, &Envelope::plain(meta, &payload)?)?);
        }
        Ok(out)
    }
}

/// A study an ingest event says is complete (or grew after completion).
struct Completion {
    cause: EventId,
    tenant: String,
    study: Uuid,
    at: UnixMicros,
    /// The ingest event's version in the study's ingest aggregate.
    version: u64,
    /// The instances the study holds at this completion or update.
    instances: u32,
}

/// The study a record says is complete (or grew after completion); `Err`
/// with a reason for a record that does not read.
fn completed(record: &meridian_log::Record) -> Result<Option<Completion>, (&'static str, String)> {
    let envelope = record.envelope().map_err(|e| ("corrupt_envelope", e.to_string()))?;
    let payload = envelope.open_plain().map_err(|e| (meridian_log::skips::reason(&e), e.to_string()))?;
    let (study, instances) = match payload {
        Payload::StudyCompleted(c) => (c.study_id, c.instance_count),
        Payload::StudyUpdated(u) => (u.study_id, u.instance_count),
        _ => return Ok(None),
    };
    let study = Uuid::parse_str(&study).map_err(|e| ("malformed_ids", format!("study id {study:?}: {e}")))?;
    let meta = &envelope.meta;
    Ok(Some(Completion {
        cause: meta.event_id,
        tenant: meta.tenant.clone(),
        study,
        at: meta.occurred_at,
        version: meta.aggregate_version,
        instances,
    }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use meridian_log::dedup::Deduplicator;
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};

    use super::*;
    use crate::blobs::{Blobs, LocalBlobs};

    fn created(destination: &str) -> Created {
        Created {
            contract: "northwind-lotus".into(),
            destination: destination.into(),
            derivative_study: StudyId(Uuid::from_u128(9)),
            instances: 3,
            withheld: 0,
        }
    }

    #[tokio::test]
    async fn each_destination_is_its_own_aggregate_versioned_by_what_asked_so_no_consumer_drops_one() {
        let dir = tempfile::TempDir::new().unwrap();
        let platform =
            Arc::new(Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap());
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        let blobs: Arc<dyn Blobs> = Arc::new(LocalBlobs::new(dir.path().join("objects")));
        let phi = Arc::new(PhiWriter::new("eu-west", platform.clone(), blobs, log.clone()));
        let index = Arc::new(StudyIndex::open(&dir.path().join("index.redb")).unwrap());
        let derivatives = Derivatives::new("eu-west", platform, phi, index, log, BTreeMap::new(), Default::default());

        let at = UnixMicros(1_795_000_000_000_000);
        let completion = |version: u64| Completion {
            cause: EventId::new_at(at),
            tenant: "northwind".into(),
            study: Uuid::from_u128(1),
            at,
            version,
            instances: 2,
        };
        // A contract naming two destination regions: two events, one study.
        let completed = completion(4);
        let two = [created("in-south"), created("us-east")];
        let first = derivatives.events(&completed, &two).unwrap();
        let metas: Vec<_> = first.iter().map(|o| Envelope::decode(&o.value).unwrap().meta).collect();
        assert_eq!(metas.len(), 2);
        assert_ne!(metas[0].aggregate_id, metas[1].aggregate_id, "one aggregate per destination");
        assert!(metas.iter().all(|m| m.aggregate_version == 4 && m.aggregate_type == "storage.derivative"));
        assert!(metas.iter().all(|m| m.aggregate_id != Uuid::from_u128(1)), "not the study's own id");

        let mut dedup = Deduplicator::with_window(16);
        let mut admit = |out: &[Outgoing]| -> Vec<bool> {
            out.iter().map(|o| dedup.admit(&Envelope::decode(&o.value).unwrap(), &o.value).unwrap()).collect()
        };
        assert_eq!(admit(&first), [true, true], "a de-duplicating consumer takes both");
        // A redone step appends the same events: recognised as copies.
        assert_eq!(admit(&derivatives.events(&completed, &two).unwrap()), [false, false]);
        // The study grows after completion (StudyUpdated, a later version):
        // each destination's next version, taken as new.
        let updated = derivatives.events(&completion(6), &two).unwrap();
        assert!(updated.iter().all(|o| Envelope::decode(&o.value).unwrap().meta.aggregate_version == 6));
        assert_eq!(admit(&updated), [true, true]);
    }
}
