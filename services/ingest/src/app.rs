//! Ingest on a region: C-STORE in, through the PHI write path, into the
//! event log, and study completeness.
//!
//! The acknowledgement order of an instance: the Part-10 object is put
//! (durable, residency checked) → InstanceReceived (sealed PHI) and, for a
//! study's first instance, StudyStarted are appended as one batch → the
//! studies projection is updated → the success status is sent. A crash
//! before the append leaves an object no event names: invisible, and swept
//! after a grace period ([`Ingest::sweep`]). A refusal appends InstanceRejected (opaque
//! ids and the reason only) and answers its status; the association goes on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_auth::grpc::arrival_time;
use meridian_auth::{Action, Resource, authorize};
use meridian_config::Platform;
use meridian_dimse::command::{
    STATUS_CANNOT_UNDERSTAND, STATUS_NOT_AUTHORIZED, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS,
};
use meridian_dimse::{Instance, Sender, StoreService};
use meridian_events::payload::Payload;
use meridian_events::{
    AccessionKey, DataClass, Envelope, EventId, EventMeta, InstanceId, KeyStore, PatientKey, SeriesId, StudyId,
    UnixMicros,
};
use meridian_log::failpoint::FailPoints;
use meridian_log::skips::Skips;
use meridian_log::{EventLog, Outgoing, Position, TopicName};
use meridian_projection::live::Live;
use meridian_projection::run::{Rebuilt, Resumed, Snapshotter};
use meridian_projection::{Event as Logged, Projection, Projector};
use meridian_proto::events::v1 as pb;
use meridian_proto::ingest::v1 as pb_ingest;
use meridian_storage::index::{IndexError, Received, StudyIndex};
use meridian_storage::phi::{PhiObject, PhiWriteError, PhiWriter};
use tokio::sync::{Mutex, oneshot};
use uuid::Uuid;

use crate::dataset::{self, Rejection};
use crate::replicas::{ReplicaError, Replicas};
use crate::studies::{self, Studies};

/// The object is durable; its events are not appended yet.
pub const AFTER_PUT: &str = "ingest.after_put";
/// The events are appended; the success status is not sent yet.
pub const AFTER_APPEND: &str = "ingest.after_append";

/// Object keys the sweep lists and looks up in the index at a time.
const SWEEP_PAGE: usize = 4_096;

/// A study completes after this long without a new instance when its
/// contract names no quiet period.
pub const DEFAULT_QUIET: Duration = Duration::from_secs(90);

/// A study's operational events, and its instance records (PHI, on the
/// PHI topic): two aggregates keyed by the study, each in order on its topic.
const STUDY: &str = "ingest.study";
const INSTANCES: &str = "ingest.instances";

/// Each tenant's id secret, for the tenants whose home this region is.
pub use meridian_region::Secrets;

pub struct IngestOptions {
    pub secrets: Secrets,
    /// [`AFTER_PUT`] and [`AFTER_APPEND`], armed by crash tests.
    pub failpoints: FailPoints,
    /// Where and how often the studies projection is snapshotted.
    pub snapshots: Snapshotter,
    /// This replica and its peers, when the region runs more than one:
    /// it then folds and writes only the studies it owns.
    pub replicas: Option<Arc<Replicas>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ingest log: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("ingest projection: {0}")]
    Projection(#[from] meridian_projection::Error),
    #[error("ingest event: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
    #[error("ingest: {0}")]
    Phi(#[from] PhiWriteError),
    #[error("ingest: {0}")]
    Index(#[from] IndexError),
    /// The group this instance was committed with failed.
    #[error("ingest: the group commit failed: {0}")]
    Group(String),
    #[error("ingest: the committing task went away")]
    Abandoned,
    #[error("ingest: {0}")]
    Replicas(#[from] ReplicaError),
    /// The study's owner did not answer a handed-over arrival.
    #[error("ingest: ingest replica {owner}, which owns the study, did not take the arrival: {reason}")]
    HandOver { owner: u32, reason: String },
    /// A replica handed over an arrival this one cannot record.
    #[error("ingest: a handed-over arrival: {0}")]
    Arrival(String),
}

/// An instance whose object is durable, waiting for its events.
struct Arrival {
    tenant: String,
    facility: String,
    study: StudyId,
    received: pb::InstanceReceived,
    indexed: Received,
    now: UnixMicros,
    /// The span it arrived in (a C-STORE, a STOW-RS request): the group
    /// commit runs in whichever arrival's task takes the lock.
    traceparent: Option<String>,
}

impl Arrival {
    /// As one replica hands it to the study's owner.
    fn to_wire(&self) -> pb_ingest::Arrival {
        pb_ingest::Arrival {
            tenant: self.tenant.clone(),
            facility: self.facility.clone(),
            received: Some(self.received.clone()),
            metadata_json: serde_json::to_vec(&self.indexed.metadata).unwrap_or_default(),
            arrived_at_micros: self.now.0,
            traceparent: self.traceparent.clone().unwrap_or_default(),
        }
    }

    fn from_wire(wire: pb_ingest::Arrival) -> Result<Arrival, Error> {
        let bad = |what: &str, e: &dyn std::fmt::Display| Error::Arrival(format!("{what}: {e}"));
        let received = wire.received.ok_or_else(|| Error::Arrival("it names no InstanceReceived".into()))?;
        let id = |field: &str, text: &str| Uuid::parse_str(text).map_err(|e| bad(field, &e));
        let study = StudyId(id("study_id", &received.study_id)?);
        let indexed = Received {
            tenant: wire.tenant.clone(),
            study_id: study.as_uuid(),
            series_id: id("series_id", &received.series_id)?,
            instance_id: id("instance_id", &received.instance_id)?,
            study_uid: received.study_instance_uid.clone(),
            series_uid: received.series_instance_uid.clone(),
            sop_uid: received.sop_instance_uid.clone(),
            object_key: received.object_key.clone(),
            sha256: received.sha256.clone(),
            size: received.size_bytes,
            transfer_syntax: received.transfer_syntax_uid.clone(),
            metadata: serde_json::from_slice(&wire.metadata_json).map_err(|e| bad("metadata_json", &e))?,
        };
        let now = UnixMicros(wire.arrived_at_micros);
        let traceparent = Some(wire.traceparent).filter(|t| !t.is_empty());
        Ok(Arrival { tenant: wire.tenant, facility: wire.facility, study, received, indexed, now, traceparent })
    }
}

type Answer = oneshot::Sender<Result<u16, Error>>;

/// What became of one instance: its status, and its opaque ids when it was
/// stored or why it was refused (no PHI in either).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub status: u16,
    /// (study, series, instance) of a stored instance.
    pub stored: Option<(Uuid, Uuid, Uuid)>,
    /// (reason code, reason) of a refused one.
    pub refusal: Option<(String, String)>,
}

impl Receipt {
    fn refused(status: u16, code: &str, reason: String) -> Receipt {
        Receipt { status, stored: None, refusal: Some((code.to_owned(), reason)) }
    }
}

/// One record an arrival appends, with what it says (for folding ahead).
type Record = (Outgoing, Payload, EventMeta);

/// The studies projection of the region's ingest topics.
pub struct IngestProjection;

impl Projection for IngestProjection {
    type State = Studies;
    const NAME: &'static str = "ingest.studies";

    fn apply(state: Studies, event: &Logged<'_>) -> Studies {
        studies::apply(state, event.payload, &event.envelope.meta)
    }
}

pub struct Ingest {
    region: String,
    platform: Arc<Platform>,
    secrets: Secrets,
    phi: PhiWriter,
    index: Arc<StudyIndex>,
    log: Arc<dyn EventLog>,
    keys: Arc<dyn KeyStore>,
    phi_topic: TopicName,
    ops_topic: TopicName,
    projector: Live<IngestProjection>,
    /// Arrivals waiting for the next group commit.
    arrivals: std::sync::Mutex<Vec<(Arrival, Answer)>>,
    failpoints: FailPoints,
    /// Orphans seen by the last sweep, and when.
    suspects: Mutex<BTreeMap<String, UnixMicros>>,
    /// Set when the region stops: a sweep ends at its next page.
    stopping: std::sync::atomic::AtomicBool,
    /// Records the study index's catch-up passed, by reason.
    index_skips: Skips,
    replicas: Option<Arc<Replicas>>,
}

/// How often opening retries a study index catch-up that failed on a
/// store error (after 0.4, 0.8, 1.6, 3.2 s) before it refuses to start.
const CATCH_UP_RETRIES: u32 = 4;

fn topic(region: &str, class: DataClass) -> Result<TopicName, Error> {
    TopicName::new(region, class, "ingest").map_err(|e| Error::Log(meridian_log::Error::UnknownTopic { topic: e.name }))
}

impl Ingest {
    /// Opens the studies projection from its snapshot and the tail of the
    /// region's ingest topics, and catches the study index up from its last
    /// synced position.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        region: &str,
        platform: Arc<Platform>,
        phi: PhiWriter,
        index: Arc<StudyIndex>,
        log: Arc<dyn EventLog>,
        keys: Arc<dyn KeyStore>,
        idle: Duration,
        options: IngestOptions,
    ) -> Result<Ingest, Error> {
        let IngestOptions { secrets, failpoints, snapshots, replicas } = options;
        let (phi_topic, ops_topic) = (topic(region, DataClass::Phi)?, topic(region, DataClass::Operational)?);
        let mut positions = Vec::new();
        let mut counts = Vec::new();
        for t in [&phi_topic, &ops_topic] {
            let partitions = log.partitions(t).await?;
            counts.push(partitions);
            for p in 0..partitions {
                positions.push(Position::start(t.clone(), p));
            }
        }
        if let Some(replicas) = &replicas {
            // A study's records are keyed by its id on both topics: one
            // partition number, one owner, only when the counts agree.
            if counts[0] != counts[1] || counts[0] != replicas.partitions() {
                return Err(ReplicaError::Partitions { phi: counts[0], ops: counts[1] }.into());
            }
            positions = replicas.ownership().mine(positions);
        }
        let index_skips = Skips::new("storage.index");
        // The studies and the index catch up at once: each waits for the
        // log to stay quiet, which in turn would add up.
        let index_caught_up = async {
            let mut attempt = 0;
            loop {
                let blobs = phi.blobs().as_ref();
                match index.catch_up(log.as_ref(), keys.as_ref(), blobs, &phi_topic, idle, &index_skips).await {
                    Ok(n) => return Ok(n),
                    // A store that fails now may answer in a moment; the
                    // index never passes a record it could not read.
                    Err(e) if attempt < CATCH_UP_RETRIES => {
                        attempt += 1;
                        tracing::warn!(region, attempt, error = %e, "study index catch-up failed; reading that record again");
                        tokio::time::sleep(Duration::from_millis(200) * 2u32.pow(attempt)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        let (projector, indexed) =
            tokio::join!(Live::open(region, snapshots, positions, log.as_ref(), keys.as_ref(), idle), index_caught_up);
        let (projector, indexed) = (projector?, indexed?);
        if indexed > 0 {
            tracing::info!(region, instances = indexed, "study index caught up from the log");
        }
        Ok(Ingest {
            region: region.to_owned(),
            platform,
            secrets,
            phi,
            index,
            log,
            keys,
            phi_topic,
            ops_topic,
            projector,
            arrivals: std::sync::Mutex::new(Vec::new()),
            failpoints,
            suspects: Mutex::new(BTreeMap::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            index_skips,
            replicas,
        })
    }

    /// What the study index's catch-up could not index, by reason.
    pub fn index_skips(&self) -> &Skips {
        &self.index_skips
    }

    /// Makes a running [`sweep`](Self::sweep) end at its next page (it
    /// deletes nothing then): the region is stopping.
    pub fn stop_sweep(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Rebuilds the studies from the log and snapshots them; arrivals wait.
    pub async fn rebuild(&self, idle: Duration) -> Result<Rebuilt, Error> {
        Ok(self.projector.rebuild(self.log.as_ref(), self.keys.as_ref(), idle).await?)
    }

    /// How the studies projection was opened (snapshot, tail, time).
    pub fn opened(&self) -> &Resumed {
        self.projector.opened()
    }

    /// What the studies projection did with its input, by reason.
    pub async fn stats(&self) -> meridian_projection::Stats {
        self.projector.stats().await
    }

    /// Writes the studies' snapshot when one is due (`force`: whenever
    /// anything changed since the last, as at shutdown). The lock that
    /// acknowledgements wait on is held only while it is encoded.
    pub async fn snapshot(&self, force: bool) -> Result<(), Error> {
        Ok(self.projector.snapshot(force).await?)
    }

    /// Reads the studies under the lock.
    pub async fn read<T>(&self, f: impl FnOnce(&Studies) -> T) -> T {
        f(self.projector.lock().await.state())
    }

    fn jurisdiction(&self, tenant: &str, facility: &str) -> String {
        self.platform
            .tenants
            .get(tenant)
            .and_then(|t| t.facilities.iter().find(|f| f.name == facility))
            .map(|f| f.jurisdiction.0.clone())
            .unwrap_or_default()
    }

    /// A study's quiet period: its contract's (the default when no
    /// contract takes it).
    fn quiet(&self, study: &studies::Study) -> i64 {
        let seconds =
            self.platform.contracts.get(&study.contract).map_or(DEFAULT_QUIET.as_secs(), |c| c.quiet_period.seconds);
        i64::try_from(seconds).unwrap_or(i64::MAX / 1_000_000) * 1_000_000
    }

    /// The contract that takes a study starting with `received` at `now`,
    /// or why none does: chosen once, here, and carried on StudyStarted and
    /// StudyCompleted so that routing and every later reader agree.
    fn contract_for(&self, tenant: &str, received: &pb::InstanceReceived, now: UnixMicros) -> (String, String) {
        // An order without a priority is routine, as routing queues it.
        let priority = meridian_config::Priority::parse(&received.requested_priority)
            .unwrap_or(meridian_config::Priority::Routine);
        let facts = meridian_config::StudyFacts {
            facility: &received.facility,
            modality: &received.modality,
            body_part: &received.body_part,
            priority,
        };
        let at = jiff::Timestamp::from_microsecond(now.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        match self.platform.contract_for(tenant, &facts, at) {
            Ok(c) => (c.name.clone(), String::new()),
            Err(why) => (String::new(), why.to_string()),
        }
    }

    fn meta(
        &self,
        tenant: &str,
        study: Uuid,
        version: u64,
        event_id: EventId,
        now: UnixMicros,
        traceparent: Option<String>,
    ) -> EventMeta {
        EventMeta {
            event_id,
            aggregate_type: STUDY.into(),
            aggregate_id: study,
            aggregate_version: version,
            tenant: tenant.to_owned(),
            home_region: self.region.clone(),
            occurred_at: now,
            causation_id: None,
            correlation_id: None,
            traceparent,
        }
    }

    /// Stores one instance and answers the DIMSE status for it.
    pub async fn receive(&self, sender: &Sender, instance: Instance, now: UnixMicros) -> u16 {
        self.receipt(sender, instance, now).await.status
    }

    /// Stores one instance and says what became of it.
    pub async fn receipt(&self, sender: &Sender, instance: Instance, now: UnixMicros) -> Receipt {
        match self.try_receive(sender, instance, now).await {
            Ok(receipt) => receipt,
            Err(e) => {
                // Nothing was acknowledged; the peer may send again.
                tracing::warn!(region = %self.region, error = %e, "instance not stored");
                Receipt::refused(STATUS_OUT_OF_RESOURCES, "not_stored", format!("not stored, send it again: {e}"))
            }
        }
    }

    async fn try_receive(&self, sender: &Sender, instance: Instance, now: UnixMicros) -> Result<Receipt, Error> {
        let principal = &sender.principal;
        let tenant = principal.tenant.clone().unwrap_or_default();
        let facility = principal.facility.clone().unwrap_or_default();
        if authorize(principal, Action::SendStudy, &Resource::Tenant { tenant: &tenant }).is_err() {
            let refusal = Rejection {
                status: STATUS_NOT_AUTHORIZED,
                code: "not_authorized",
                reason: "the calling AE title may not send studies".into(),
            };
            return self.reject(&tenant, &facility, None, refusal, now).await;
        }
        let bytes = match dataset::part10(&instance, &sender.calling_ae_title) {
            Ok(b) => b,
            Err(reason) => {
                let rejection = Rejection { status: STATUS_CANNOT_UNDERSTAND, code: "unreadable_data_set", reason };
                return self.reject(&tenant, &facility, None, rejection, now).await;
            }
        };
        let facts = match dataset::read_part10(&instance, &bytes) {
            Ok(f) => f,
            Err(rejection) => {
                let study = self.secrets.get(&tenant).and_then(|secret| {
                    // Identify the study where the data set names one, so
                    // the tenant sees the rejection under it.
                    dataset::study_of(&instance).map(|uid| StudyId::derive(secret, &uid).as_uuid())
                });
                return self.reject(&tenant, &facility, study, rejection, now).await;
            }
        };
        // Residency first: a region that may not hold the tenant's PHI
        // holds no id secret for it either.
        if let Err(refused) = self.phi.admit(&tenant, now).await {
            if let PhiWriteError::Refused { .. } | PhiWriteError::UnknownTenant { .. } = refused {
                let rejection =
                    Rejection { status: STATUS_NOT_AUTHORIZED, code: "residency", reason: refused.to_string() };
                return self.reject(&tenant, &facility, None, rejection, now).await;
            }
            return Err(refused.into());
        }
        let Some(secret) = self.secrets.get(&tenant) else {
            tracing::error!(region = %self.region, %tenant, "no id secret for the tenant in this region");
            let reason = format!("region {} holds no id secret for tenant {tenant}", self.region);
            return Ok(Receipt::refused(STATUS_OUT_OF_RESOURCES, "no_id_secret", reason));
        };
        let study = StudyId::derive(secret, &facts.study_uid);
        let series = SeriesId::derive(secret, &facts.series_uid);
        let instance_id = InstanceId::derive(secret, &facts.sop_uid);
        let patient_key = if facts.patient_id.is_empty() {
            String::new()
        } else {
            PatientKey::derive(secret, &facts.issuer_of_patient_id, &facts.patient_id).as_uuid().to_string()
        };
        // A version already held (a re-send): the store then recognises the
        // same bytes before writing them.
        let held = self
            .index
            .instance(&tenant, &facts.study_uid, &facts.series_uid, &facts.sop_uid)
            .ok()
            .flatten()
            .map(|current| current.sha256);
        let object = PhiObject { tenant: tenant.clone(), study, series, instance: instance_id, bytes, held };
        let stored = match self.phi.put(object, now).await {
            Ok(stored) => stored,
            Err(refused @ (PhiWriteError::Refused { .. } | PhiWriteError::UnknownTenant { .. })) => {
                let rejection =
                    Rejection { status: STATUS_NOT_AUTHORIZED, code: "residency", reason: refused.to_string() };
                return self.reject(&tenant, &facility, Some(study.as_uuid()), rejection, now).await;
            }
            Err(e) => return Err(e.into()),
        };
        self.failpoints.hit(AFTER_PUT)?;

        let received = pb::InstanceReceived {
            study_id: study.as_uuid().to_string(),
            instance_id: instance_id.as_uuid().to_string(),
            series_id: series.as_uuid().to_string(),
            study_instance_uid: facts.study_uid.clone(),
            series_instance_uid: facts.series_uid.clone(),
            sop_instance_uid: facts.sop_uid.clone(),
            sop_class_uid: facts.sop_class,
            transfer_syntax_uid: facts.transfer_syntax.clone(),
            object_key: stored.key.clone(),
            sha256: stored.sha256.clone(),
            size_bytes: stored.size,
            facility: facility.clone(),
            calling_ae_title: sender.calling_ae_title.clone(),
            patient_id: facts.patient_id,
            issuer_of_patient_id: facts.issuer_of_patient_id,
            accession_key: if facts.accession_number.trim().is_empty() {
                String::new()
            } else {
                AccessionKey::derive(secret, &facts.accession_number).as_uuid().to_string()
            },
            accession_number: facts.accession_number,
            replaces_earlier_version: false,
            modality: facts.modality,
            body_part: facts.body_part,
            patient_key,
            procedure_code: facts.procedure_code,
            requested_priority: facts.requested_priority,
            patient_name: facts.patient_name,
            patient_birth_date: facts.patient_birth_date,
            patient_sex: facts.patient_sex,
            study_description: facts.study_description,
            study_date: facts.study_date,
            study_time: facts.study_time,
        };
        let indexed = Received {
            tenant: tenant.clone(),
            study_id: study.as_uuid(),
            series_id: series.as_uuid(),
            instance_id: instance_id.as_uuid(),
            study_uid: facts.study_uid,
            series_uid: facts.series_uid,
            sop_uid: facts.sop_uid,
            object_key: stored.key,
            sha256: stored.sha256,
            size: stored.size,
            transfer_syntax: facts.transfer_syntax,
            metadata: facts.metadata,
        };
        let ids = (study.as_uuid(), series.as_uuid(), instance_id.as_uuid());
        let (tenant_id, size) = (tenant.clone(), indexed.size);
        let traceparent = meridian_telemetry::traceparent();
        let arrival = Arrival { tenant, facility, study, received, indexed, now, traceparent };
        let status = match &self.replicas {
            Some(replicas) if !replicas.owns(study.as_uuid()) => {
                let owner = replicas.owner_of(study.as_uuid());
                replicas
                    .hand_over(owner, arrival.to_wire(), now.0)
                    .await
                    .map_err(|s| Error::HandOver { owner, reason: s.message().to_owned() })?
            }
            _ => self.acknowledge(arrival).await?,
        };
        if status == STATUS_SUCCESS {
            meridian_telemetry::metrics::instance_stored(&self.region, &tenant_id, size);
        }
        Ok(Receipt { status, stored: Some(ids), refusal: None })
    }

    /// Records an arrival another replica stored, for a study this one
    /// owns: the same commit as its own arrivals. Its DIMSE status.
    pub async fn record_handed_over(&self, arrival: pb_ingest::Arrival) -> Result<u16, Error> {
        let arrival = Arrival::from_wire(arrival)?;
        if let Some(replicas) = &self.replicas
            && !replicas.owns(arrival.study.as_uuid())
        {
            let owner = replicas.owner_of(arrival.study.as_uuid());
            return Err(Error::Arrival(format!(
                "replica {} does not own study {}; replica {owner} does (are the replicas' --replicas the same?)",
                replicas.ownership().ordinal,
                arrival.study.as_uuid()
            )));
        }
        self.acknowledge(arrival).await
    }

    pub fn replicas(&self) -> Option<&Arc<Replicas>> {
        self.replicas.as_ref()
    }

    /// Appends the arrival's events and indexes it, together with every
    /// other arrival waiting at that moment: one log append (one group
    /// commit) and one index transaction for all. Whoever takes the lock
    /// commits what is queued; the others find their answer ready.
    async fn acknowledge(&self, arrival: Arrival) -> Result<u16, Error> {
        let (answer, answered) = oneshot::channel();
        self.arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((arrival, answer));
        {
            let mut projector = self.projector.lock().await;
            let group = std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
            if !group.is_empty() {
                self.commit_group(&mut projector, group).await;
            }
        }
        answered.await.unwrap_or_else(|_| Err(Error::Abandoned))
    }

    async fn commit_group(&self, projector: &mut Projector<IngestProjection>, group: Vec<(Arrival, Answer)>) {
        let state = projector.state();
        // Studies touched twice in this group: the later arrival decides
        // against the earlier one's events, folded into a copy of the study.
        // A completed study is reopened into the copy from the index.
        let mut scratch = Studies::default();
        let mut batch = Vec::new();
        let mut members = Vec::new();
        let mut answers: Vec<Option<Result<u16, Error>>> = (0..group.len()).map(|_| None).collect();
        for (i, (arrival, _)) in group.iter().enumerate() {
            let id = arrival.study.as_uuid();
            if !scratch.open.contains_key(&id)
                && let Some(closed) = state.closed.get(&id)
            {
                match self.reopen(closed, &arrival.indexed) {
                    Ok(study) => {
                        scratch.open.insert(id, study);
                    }
                    Err(e) => {
                        answers[i] = Some(Err(e));
                        continue;
                    }
                }
            }
            let view = if scratch.open.contains_key(&id) { &scratch } else { state };
            match self.events_of(view, arrival) {
                Ok(None) => members.push((i, None)),
                Ok(Some(records)) => {
                    let again = group[i + 1..].iter().any(|(later, _)| later.study == arrival.study);
                    if again {
                        scratch.open.entry(id).or_insert_with(|| state.open.get(&id).cloned().unwrap_or_default());
                        for (_, payload, meta) in &records {
                            scratch = studies::apply(std::mem::take(&mut scratch), payload, meta);
                        }
                    }
                    let range = batch.len()..batch.len() + records.len();
                    batch.extend(records.into_iter().map(|(out, _, _)| out));
                    members.push((i, Some(range)));
                }
                Err(e) => answers[i] = Some(Err(e)),
            }
        }
        let appended = if batch.is_empty() { Ok(Vec::new()) } else { self.log.append(batch.clone()).await };
        match appended {
            Ok(appended) => {
                let mut records = Vec::new();
                for (i, range) in &members {
                    let at = range
                        .as_ref()
                        .and_then(|r| appended.get(r.start))
                        .map(|a| (&self.phi_topic, a.partition, a.offset));
                    let indexed = &group[*i].0.indexed;
                    // The same bytes again append nothing; the index may
                    // still lack them after a crash, and is caught up here.
                    if at.is_some()
                        || self
                            .index
                            .instance(&indexed.tenant, &indexed.study_uid, &indexed.series_uid, &indexed.sop_uid)
                            .ok()
                            .flatten()
                            .is_none_or(|c| c.sha256 != indexed.sha256)
                    {
                        records.push((indexed, at));
                    }
                }
                let indexed = self.index.record_all(&records);
                let fed = projector.feed_appended(batch, appended, self.keys.as_ref());
                let outcome = indexed.map_err(Error::from).and_then(|()| fed.map_err(Error::from));
                if let Err(e) = self.failpoints.hit(AFTER_APPEND) {
                    let reason = e.to_string();
                    for (_, answer) in group {
                        let _ = answer.send(Err(Error::Group(reason.clone())));
                    }
                    return;
                }
                match outcome {
                    Ok(()) => {
                        for (i, _) in &members {
                            answers[*i] = Some(Ok(STATUS_SUCCESS));
                        }
                    }
                    Err(e) => {
                        let reason = e.to_string();
                        for (i, _) in &members {
                            answers[*i] = Some(Err(Error::Group(reason.clone())));
                        }
                    }
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for (i, _) in &members {
                    answers[*i] = Some(Err(Error::Group(reason.clone())));
                }
            }
        }
        for ((_, answer), result) in group.into_iter().zip(answers) {
            let _ = answer.send(result.unwrap_or(Err(Error::Abandoned)));
        }
    }

    /// The records one arrival appends against `state`: InstanceReceived
    /// (sealed) and StudyStarted or StudyUpdated where due; `None` for the
    /// same bytes again.
    fn events_of(&self, state: &Studies, arrival: &Arrival) -> Result<Option<Vec<Record>>, Error> {
        let Arrival { tenant, facility, study, received, now, traceparent, .. } = arrival;
        let known = state.open.get(&study.as_uuid());
        let previous = known.and_then(|s| s.instances.get(&received.instance_id));
        if previous == Some(&received.sha256) {
            return Ok(None);
        }
        let received = pb::InstanceReceived { replaces_earlier_version: previous.is_some(), ..received.clone() };
        let mut version = known.map_or(0, |s| s.version);
        let records = known.map_or(0, |s| s.instances_version) + 1;
        let meta = EventMeta {
            aggregate_type: INSTANCES.into(),
            ..self.meta(tenant, study.as_uuid(), records, EventId::new_at(*now), *now, traceparent.clone())
        };
        let sealed = Envelope::sealed(meta.clone(), &received, *study, self.keys.as_ref())?;
        let mut out =
            vec![(Outgoing::new(self.phi_topic.clone(), &sealed)?, Payload::InstanceReceived(received.clone()), meta)];
        let alongside = match studies::alongside(state, study.as_uuid(), &received) {
            Some(Payload::StudyStarted(mut started)) => {
                started.origin_jurisdiction = self.jurisdiction(tenant, facility);
                (started.contract, started.unroutable_reason) = self.contract_for(tenant, &received, *now);
                Some(Payload::StudyStarted(started))
            }
            other => other,
        };
        if let Some(payload) = alongside {
            version += 1;
            let meta = self.meta(tenant, study.as_uuid(), version, EventId::new_at(*now), *now, traceparent.clone());
            let envelope = match &payload {
                Payload::StudyStarted(p) => Envelope::plain(meta.clone(), p)?,
                Payload::StudyUpdated(p) => Envelope::plain(meta.clone(), p)?,
                _ => return Ok(Some(out)),
            };
            out.push((Outgoing::new(self.ops_topic.clone(), &envelope)?, payload, meta));
        }
        Ok(Some(out))
    }

    /// A completed study as a decision about a new instance needs it: its
    /// instances and series as the index holds them.
    fn reopen(&self, closed: &studies::Closed, arrival: &Received) -> Result<studies::Study, Error> {
        let series: BTreeMap<String, Uuid> = self
            .index
            .series(&arrival.tenant, &arrival.study_uid)?
            .into_iter()
            .map(|(uid, entry)| (uid, entry.series_id))
            .collect();
        let instances = self.index.instances(&arrival.tenant, &arrival.study_uid, None)?;
        Ok(closed.reopened(instances.into_iter().map(|(series_uid, _, entry)| {
            let series = series.get(&series_uid).map(Uuid::to_string).unwrap_or(series_uid);
            (series, entry.instance_id.to_string(), entry.sha256)
        })))
    }

    /// Refuses an instance that never reached the checks (an HTTP part that
    /// is not a DICOM file, too large, or in a syntax this region does not
    /// store): records it like any refusal and answers its status.
    pub async fn refuse(&self, sender: &Sender, study: Option<Uuid>, rejection: Rejection, now: UnixMicros) -> u16 {
        let tenant = sender.principal.tenant.clone().unwrap_or_default();
        let facility = sender.principal.facility.clone().unwrap_or_default();
        let status = rejection.status;
        self.reject(&tenant, &facility, study, rejection, now).await.map(|r| r.status).unwrap_or_else(|e| {
            tracing::warn!(region = %self.region, error = %e, "recording a refusal");
            status
        })
    }

    /// Records a refused instance (operational: opaque ids and the reason)
    /// and answers its status.
    async fn reject(
        &self,
        tenant: &str,
        facility: &str,
        study: Option<Uuid>,
        rejection: Rejection,
        now: UnixMicros,
    ) -> Result<Receipt, Error> {
        tracing::info!(region = %self.region, %tenant, %facility, code = rejection.code, status = rejection.status, "instance rejected");
        meridian_telemetry::metrics::instance_refused(&self.region, tenant, rejection.code);
        let receipt = Receipt::refused(rejection.status, rejection.code, rejection.reason.clone());
        let mut projector = self.projector.lock().await;
        // A refusal under a study this region holds is part of its
        // history; one that names no study, or one not received here, is
        // an aggregate of its own (so no state is kept for it).
        let (aggregate, version) = match study.and_then(|s| projector.state().version(&s).map(|v| (s, v))) {
            Some((s, version)) => (s, version + 1),
            None => (Uuid::now_v7(), 1),
        };
        let payload = pb::InstanceRejected {
            study_id: study.map(|s| s.to_string()).unwrap_or_default(),
            facility: facility.to_owned(),
            dimse_status: u32::from(rejection.status),
            reason_code: rejection.code.to_owned(),
            reason: rejection.reason,
        };
        let meta = self.meta(tenant, aggregate, version, EventId::new_at(now), now, meridian_telemetry::traceparent());
        let batch = vec![Outgoing::new(self.ops_topic.clone(), &Envelope::plain(meta, &payload)?)?];
        let appended = self.log.append(batch.clone()).await?;
        projector.feed_appended(batch, appended, self.keys.as_ref())?;
        Ok(receipt)
    }

    /// Completes every study quiet for its period by `now`. Event ids come
    /// from (study, last instance time), so a restart cannot complete a
    /// study twice. Returns how many completed.
    pub async fn complete_quiet(&self, now: UnixMicros) -> Result<usize, Error> {
        let mut projector = self.projector.lock().await;
        let done = studies::completions(projector.state(), now, |s| self.quiet(s), |t, f| self.jurisdiction(t, f));
        let n = done.len();
        self.append_completions(&mut projector, done, now).await?;
        if n > 0 {
            tracing::info!(region = %self.region, studies = n, "studies completed");
        }
        Ok(n)
    }

    /// Completes `tenant`'s study now (the sender says it has sent it all).
    /// `None` when the tenant has no such open or completed study here; the
    /// flag says whether it completed now or was complete already.
    pub async fn complete_now(
        &self,
        tenant: &str,
        study: Uuid,
        now: UnixMicros,
    ) -> Result<Option<(pb::StudyCompleted, bool)>, Error> {
        let mut projector = self.projector.lock().await;
        if let Some(c) = projector.state().closed.get(&study).filter(|c| c.tenant == tenant) {
            let done = pb::StudyCompleted {
                study_id: study.to_string(),
                series_count: c.series,
                instance_count: c.instances,
                ..Default::default()
            };
            return Ok(Some((done, false)));
        }
        if projector.state().open.get(&study).is_none_or(|s| s.tenant != tenant) {
            return Ok(None);
        }
        let Some(completed) = studies::completion(projector.state(), study, now, |t, f| self.jurisdiction(t, f)) else {
            return Ok(None);
        };
        self.append_completions(&mut projector, vec![(study, completed.clone())], now).await?;
        Ok(Some((completed, true)))
    }

    async fn append_completions(
        &self,
        projector: &mut Projector<IngestProjection>,
        done: Vec<(Uuid, pb::StudyCompleted)>,
        now: UnixMicros,
    ) -> Result<(), Error> {
        if done.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::new();
        for (study, completed) in &done {
            let Some(s) = projector.state().open.get(study) else { continue };
            let event_id = EventId::timer(*study, "ingest.quiet", s.last_at);
            // Completion is a step of the study's trace, begun at its first
            // instance (no request is in flight when a quiet period ends).
            let span = meridian_telemetry::step("ingest.study completed", s.traceparent.as_deref());
            let traceparent = meridian_telemetry::traceparent_of(&span);
            let meta = self.meta(&s.tenant, *study, s.version + 1, event_id, now, traceparent);
            batch.push(Outgoing::new(self.ops_topic.clone(), &Envelope::plain(meta, completed)?)?);
        }
        let appended = self.log.append(batch.clone()).await?;
        projector.feed_appended(batch, appended, self.keys.as_ref())?;
        Ok(())
    }

    /// Deletes the objects that no event has named for at least `grace`:
    /// a crash between the object put and the event append leaves one,
    /// invisible (nothing points at it) until it goes. A sweep only marks
    /// what it finds; a later sweep deletes what is still unnamed after the
    /// grace period, so an instance in flight is never swept. Returns how
    /// many objects were deleted.
    /// The listing comes in pages (one in memory at a time); each key is
    /// one lookup in the index's table of named objects, off the lock that
    /// acknowledgements wait on.
    pub async fn sweep(&self, now: UnixMicros, grace: Duration) -> Result<usize, Error> {
        let mut orphans = Vec::new();
        let mut after: Option<String> = None;
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(0);
            }
            let page =
                self.phi.blobs().list_page("phi/", after.as_deref(), SWEEP_PAGE).await.map_err(PhiWriteError::from)?;
            let Some(last) = page.last().cloned() else { break };
            let index = self.index.clone();
            let unnamed = tokio::task::spawn_blocking(move || index.unnamed(&page))
                .await
                .map_err(|e| Error::Group(format!("sweep lookup: {e}")))??;
            // Another replica's arrivals are named in its index, not this
            // one's: each replica sweeps only the studies it owns.
            orphans.extend(unnamed.into_iter().filter(|key| self.sweeps(key)));
            after = Some(last);
        }
        let mut suspects = self.suspects.lock().await;
        suspects.retain(|k, _| orphans.contains(k));
        let grace = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
        let mut deleted = 0;
        for key in orphans {
            let first_seen = *suspects.entry(key.clone()).or_insert(now);
            if now.0 - first_seen.0 >= grace {
                self.phi.blobs().delete(&key).await.map_err(PhiWriteError::from)?;
                suspects.remove(&key);
                deleted += 1;
            }
        }
        if deleted > 0 {
            tracing::info!(region = %self.region, deleted, "swept objects no event names");
        }
        Ok(deleted)
    }

    /// Whether this replica sweeps the object at `key`
    /// (`phi/{tenant}/{study}/…`): it owns the study, or is the only one.
    fn sweeps(&self, key: &str) -> bool {
        let Some(replicas) = &self.replicas else { return true };
        key.split('/').nth(2).and_then(|s| Uuid::parse_str(s).ok()).is_some_and(|study| replicas.owns(study))
    }

    /// The opaque id of `tenant`'s Study Instance UID (in its home region).
    pub fn study_id_of(&self, tenant: &str, study_instance_uid: &str) -> Option<Uuid> {
        self.secrets.get(tenant).map(|secret| StudyId::derive(secret, study_instance_uid).as_uuid())
    }
}

#[async_trait::async_trait]
impl StoreService for Ingest {
    async fn store(&self, sender: &Sender, instance: Instance) -> u16 {
        self.receive(sender, instance, arrival_time()).await
    }

    async fn too_large(&self, sender: &Sender, _sop_class: &str, size: usize) -> u16 {
        let tenant = sender.principal.tenant.clone().unwrap_or_default();
        let facility = sender.principal.facility.clone().unwrap_or_default();
        let rejection = Rejection {
            status: STATUS_OUT_OF_RESOURCES,
            code: "instance_too_large",
            reason: format!("a data set of {size} bytes is over this region's per-instance limit"),
        };
        self.reject(&tenant, &facility, None, rejection, arrival_time())
            .await
            .map_or(STATUS_OUT_OF_RESOURCES, |r| r.status)
    }
}
