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
use crate::phi::{DeidentifiedObject, PhiWriteError, PhiWriter, object_event};

/// The consumer's name on the ingest topic.
pub const CONSUMER: &str = "storage.derivatives";

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
        }
    }

    /// Takes in what ingest appended since the last call: derives every
    /// completed or updated study. Returns how many studies were derived.
    pub async fn intake(&self, idle: Duration) -> Result<usize, DerivativeError> {
        let topic = TopicName::new(&self.region, DataClass::Operational, "ingest")
            .map_err(|e| meridian_log::Error::UnknownTopic { topic: e.name })?;
        let mut reader = self.log.reader(self.log.resume(CONSUMER, &topic).await?).await?;
        let mut derived = 0;
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(derived);
            }
            let batch = reader.next_batch(64, idle).await?;
            if batch.is_empty() {
                return Ok(derived);
            }
            // Inputs that ask for nothing commit their positions together,
            // with the next step that has outputs or at the batch's end:
            // one sync per batch, not one per ingest event.
            let mut inputs: BTreeMap<(TopicName, u32), u64> = BTreeMap::new();
            let last = batch.len() - 1;
            for (i, record) in batch.into_iter().enumerate() {
                let mut outputs = Vec::new();
                if let Some((cause, tenant, study, at)) = completed(&record) {
                    let created = self.derive(&tenant, study, at).await?;
                    derived += usize::from(!created.is_empty());
                    outputs = self.events(&tenant, study, cause, at, &created)?;
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
    fn events(
        &self,
        tenant: &str,
        study: Uuid,
        cause: EventId,
        at: UnixMicros,
        created: &[Created],
    ) -> Result<Vec<Outgoing>, DerivativeError> {
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
            let (topic, meta) = object_event(&self.region, tenant, study, event_id, at, Some(cause))?;
            out.push(Outgoing::new(topic, &Envelope::plain(meta, &payload)?)?);
        }
        Ok(out)
    }
}

/// The study a record says is complete (or grew after completion): the
/// cause, tenant, opaque study id and moment.
fn completed(record: &meridian_log::Record) -> Option<(EventId, String, Uuid, UnixMicros)> {
    let envelope = record.envelope().ok()?;
    let study = match envelope.open_plain().ok()? {
        Payload::StudyCompleted(c) => c.study_id,
        Payload::StudyUpdated(u) => u.study_id,
        _ => return None,
    };
    let study = Uuid::parse_str(&study).ok()?;
    Some((envelope.meta.event_id, envelope.meta.tenant.clone(), study, envelope.meta.occurred_at))
}
