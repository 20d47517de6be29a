//! Inference on a region's log: one projection of ingest's two topics
//! (completions; instances, opened with the region's keys) and its own,
//! behind one lock. A pass catches up, takes the reads that are due, runs
//! each (objects read from the region's store after PhiAccessed, slices
//! decoded and the model run on blocking threads), and appends the outcome
//! with ids derived from the study's StudyCompleted and the model: a
//! redelivery or a restart cannot triage a study twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_audit::{Accessed, Audit};
use meridian_auth::Principal;
use meridian_config::{ModelRuntime, Platform, PrincipalKind};
use meridian_events::envelope::EventMeta;
use meridian_events::payload::Payload;
use meridian_events::{DataClass, Envelope, EventId, KeyStore, StudyId, UnixMicros};
use meridian_log::failpoint::FailPoints;
use meridian_log::{EventLog, Outgoing, Position, TopicName};
use meridian_objects::blobs::Blobs;
use meridian_projection::live::Live;
use meridian_projection::run::{Resumed, Snapshotter, catch_up};
use meridian_projection::{Event as Logged, Projection, Stats};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::adapters::events::{self, Outcome};
use crate::adapters::oip::RemoteSpec;
use crate::adapters::pixels;
use crate::adapters::runtime::{Embedded, Remote, Runtime, RuntimeError};
use crate::domain::model::{self, State};
use crate::domain::triage::{self, Due, ModelSpec, OutputSpec, Policy};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("inference log: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("inference state: {0}")]
    Projection(#[from] meridian_projection::Error),
    #[error("inference event: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
    #[error("audit: {0}")]
    Audit(String),
}

/// The scores computed, nothing appended yet.
pub const AFTER_RUN: &str = "inference.after_run";

/// A study whose instances are not all here this long after its
/// completion fails `incomplete_study`.
pub const INCOMPLETE_AFTER: i64 = 10 * 60 * 1_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folded {
    pub state: State,
    /// `inference.study/<id>` and `inference.scores/<id>` → last version.
    pub versions: BTreeMap<String, u64>,
    pub unreadable: BTreeMap<String, (u64, String)>,
    /// Each study's trace, as its completion (or latest update) carried
    /// it, while the study is held: its reads are steps of that trace.
    #[serde(default)]
    pub traces: BTreeMap<Uuid, String>,
}

pub struct InferenceProjection;

const STUDY: &str = "inference.study";
const SCORES: &str = "inference.scores";
/// A model's own events: turned on or off, drift.
const MODEL: &str = "inference.model";

impl Projection for InferenceProjection {
    type State = Folded;
    const NAME: &'static str = "inference.triage";

    fn apply(mut folded: Folded, event: &Logged<'_>) -> Folded {
        let meta = &event.envelope.meta;
        if [STUDY, SCORES, MODEL].contains(&meta.aggregate_type.as_str()) {
            let last = folded.versions.entry(format!("{}/{}", meta.aggregate_type, meta.aggregate_id)).or_default();
            *last = (*last).max(meta.aggregate_version);
        }
        match events::fact(event.payload, meta.event_id, meta.causation_id, &meta.tenant, meta.occurred_at) {
            Ok(Some(fact)) => folded.state = model::apply(std::mem::take(&mut folded.state), &fact),
            Ok(None) => {}
            Err(why) => meridian_projection::unreadable::count(&mut folded.unreadable, &why, meta.event_id),
        }
        use meridian_events::payload::Payload;
        if let (Payload::StudyCompleted(_) | Payload::StudyUpdated(_), Some(trace)) = (event.payload, &meta.traceparent)
            && folded.state.studies.contains_key(&meta.aggregate_id)
        {
            folded.traces.insert(meta.aggregate_id, trace.clone());
        }
        // Studies are let go by time, at any event: their traces with them.
        if folded.traces.len() > folded.state.studies.len() {
            let held = &folded.state.studies;
            folded.traces.retain(|study, _| held.contains_key(study));
        }
        folded
    }
}

/// Model `name`'s aggregate id and its next version.
fn model_aggregate(folded: &Folded, name: &str) -> (Uuid, u64) {
    let id = meridian_events::id::aggregate_id(MODEL, &[name.as_bytes()]);
    (id, folded.versions.get(&format!("{MODEL}/{id}")).copied().unwrap_or(0) + 1)
}

/// A model loaded, with how its slices are made.
pub struct Loaded {
    pub spec: ModelSpec,
    pub intended_use: String,
    pub window: (f64, f64),
    pub size: (u32, u32),
    pub runtime: Runtime,
}

/// What the API says of a loaded model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelView {
    pub spec: ModelSpec,
    pub intended_use: String,
    /// "embedded" or "remote <endpoint>".
    pub runtime: String,
    pub stats: model::ModelStats,
}

impl ModelView {
    fn of(m: &Loaded, stats: model::ModelStats) -> ModelView {
        ModelView { spec: m.spec.clone(), intended_use: m.intended_use.clone(), runtime: m.runtime.describe(), stats }
    }
}

/// Loads every model the configuration names (a model that does not load
/// refuses the start, naming its file and field).
pub fn load_models(platform: &Platform) -> Result<(Policy, BTreeMap<String, Loaded>), Error> {
    let mut loaded = BTreeMap::new();
    let mut policy = Policy::default();
    for m in platform.models.values() {
        let outputs: Vec<String> = m.outputs.iter().map(|o| o.name.clone()).collect();
        let [rows, columns] = m.input.size;
        let runtime = match &m.runtime {
            ModelRuntime::Embedded { path } => {
                let file = platform.root.join(path);
                let model = Embedded::load(&file, &m.input.name, rows, columns, &outputs).map_err(|e| match e {
                    RuntimeError::Load { reason, .. } => RuntimeError::Load {
                        path: format!("models/{}.toml: runtime.path ({})", m.name, file.display()),
                        reason,
                    },
                    other => other,
                })?;
                Runtime::Embedded(Arc::new(model))
            }
            ModelRuntime::Remote { endpoint, model, model_version, timeout_ms, retries, ca } => {
                let field = |field: &str, reason: String| RuntimeError::Load {
                    path: format!("models/{}.toml: runtime.{field}", m.name),
                    reason,
                };
                let ca_pem = match ca {
                    Some(ca) => {
                        Some(std::fs::read(platform.root.join(ca)).map_err(|e| field("ca", format!("{ca}: {e}")))?)
                    }
                    None => None,
                };
                let spec = RemoteSpec {
                    endpoint: endpoint.clone(),
                    model: if model.is_empty() { m.name.clone() } else { model.clone() },
                    version: model_version.clone(),
                    input: m.input.name.clone(),
                    outputs: outputs.clone(),
                    rows,
                    columns,
                    timeout: Duration::from_millis(*timeout_ms),
                    retries: *retries,
                    ca_pem,
                };
                let remote = Remote::connect(spec).map_err(|e| match e {
                    RuntimeError::Load { reason, .. } => field("endpoint", reason),
                    other => other,
                })?;
                Runtime::Remote(Arc::new(remote))
            }
        };
        let spec = ModelSpec {
            name: m.name.clone(),
            version: m.version.clone(),
            modalities: m.input.modalities.clone(),
            body_parts: m.input.body_parts.clone(),
            facilities: m.input.facilities.clone(),
            max_slices: m.input.max_slices as usize,
            drift: m.validation.as_ref().map(|v| triage::Drift {
                baseline: v.baseline_positive_rate,
                window: v.window as usize,
                tolerance: v.tolerance,
            }),
            outputs: m
                .outputs
                .iter()
                .map(|o| OutputSpec {
                    name: o.name.clone(),
                    threshold: o.threshold,
                    finding: o.finding.clone(),
                    priority: o.suggested_priority.as_str().to_owned(),
                })
                .collect(),
        };
        policy.models.insert(m.name.clone(), spec.clone());
        let window = (m.input.window.centre, m.input.window.width);
        let intended_use = m.intended_use.clone();
        loaded.insert(m.name.clone(), Loaded { spec, intended_use, window, size: (rows, columns), runtime });
    }
    for c in platform.contracts.values() {
        policy.contracts.insert(c.name.clone(), c.ai_models.clone());
    }
    for t in platform.tenants.values() {
        let mut of_tenant = platform.contracts.values().filter(|c| c.tenant == t.name);
        if let (Some(only), None) = (of_tenant.next(), of_tenant.next()) {
            policy.only_contract.insert(t.name.clone(), only.name.clone());
        }
    }
    Ok((policy, loaded))
}

pub struct Inference {
    region: String,
    log: Arc<dyn EventLog>,
    keys: Arc<dyn KeyStore>,
    blobs: Arc<dyn Blobs>,
    audit: Arc<Audit>,
    live: Live<InferenceProjection>,
    ops: TopicName,
    phi: TopicName,
    idle: Duration,
    policy: Policy,
    models: BTreeMap<String, Loaded>,
    failpoints: FailPoints,
    /// Reads decoded and run at once, at most.
    permits: tokio::sync::Semaphore,
}

fn topic(region: &str, class: DataClass, stream: &str) -> Result<TopicName, Error> {
    TopicName::new(region, class, stream).map_err(|e| Error::Log(meridian_log::Error::UnknownTopic { topic: e.name }))
}

/// Who reads the objects: inference itself, audited as a service.
fn service_principal() -> Principal {
    Principal {
        subject: "service:inference".into(),
        kind: PrincipalKind::Platform,
        tenant: None,
        facility: None,
        group: None,
        reader: None,
        roles: vec![],
        trail: Default::default(),
    }
}

/// What inference is opened with besides the log.
pub struct Opening {
    pub region: String,
    pub platform: Arc<Platform>,
    pub log: Arc<dyn EventLog>,
    pub keys: Arc<dyn KeyStore>,
    pub blobs: Arc<dyn Blobs>,
    pub snapshots: Snapshotter,
    pub idle: Duration,
    pub failpoints: FailPoints,
}

impl Inference {
    /// Loads the models and opens from the snapshot and the tail of
    /// ingest's topics and its own.
    pub async fn open(o: Opening) -> Result<Inference, Error> {
        let (policy, models) = load_models(&o.platform)?;
        let ingest = topic(&o.region, DataClass::Operational, "ingest")?;
        let instances = topic(&o.region, DataClass::Phi, "ingest")?;
        let ops = topic(&o.region, DataClass::Operational, "inference")?;
        let phi = topic(&o.region, DataClass::Phi, "inference")?;
        let mut starts = Vec::new();
        // Its own PHI topic for the scores' distributions.
        for t in [&ingest, &instances, &ops, &phi] {
            starts.extend((0..o.log.partitions(t).await?).map(|p| Position::start(t.clone(), p)));
        }
        let live = Live::open(&o.region, o.snapshots, starts, o.log.as_ref(), o.keys.as_ref(), o.idle).await?;
        let audit = Audit::new(&o.region, o.log.clone()).map_err(|e| Error::Audit(e.to_string()))?;
        Ok(Inference {
            region: o.region,
            log: o.log,
            keys: o.keys,
            blobs: o.blobs,
            audit: Arc::new(audit),
            live,
            ops,
            phi,
            idle: o.idle,
            policy,
            models,
            failpoints: o.failpoints,
            permits: tokio::sync::Semaphore::new(2),
        })
    }

    /// The models loaded, as `name@version`.
    pub fn models(&self) -> Vec<String> {
        self.models.values().map(|m| m.spec.id()).collect()
    }

    /// Runs the reads due at `now` (a few a pass) and appends each outcome.
    pub async fn run_due(&self, now: UnixMicros) -> Result<usize, Error> {
        let due = {
            let mut projector = self.live.lock().await;
            catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
            let folded = projector.state();
            let due = triage::due(&folded.state, &self.policy, now, INCOMPLETE_AFTER);
            let trace = |d: &Due| folded.traces.get(&d.study()).cloned();
            due.into_iter().take(8).map(|d| (trace(&d), d)).collect::<Vec<_>>()
        };
        let count = due.len();
        for (trace, d) in due {
            // A read is a step of its study's trace, begun at the study's
            // first C-STORE: the runtime's time shows in it.
            let step = meridian_telemetry::step("inference triage", trace.as_deref());
            let read = async {
                let outcome = match d {
                    Due::Fail { study, model, reason, detail, cause } => {
                        Outcome::Failed { study, model: model.id(), cause, reason, detail, input_digest: String::new() }
                    }
                    Due::Run { study, model, instances, cause } => {
                        self.read(study, &model, &instances, cause, now).await?
                    }
                };
                self.failpoints.hit(AFTER_RUN)?;
                self.append(&outcome, now).await
            };
            tracing::Instrument::instrument(read, step).await?;
        }
        if count > 0 {
            self.raise_drift(now).await?;
        }
        Ok(count)
    }

    /// Appends ModelDriftDetected for each model whose recent outcomes
    /// stray from its validation (once a window: the id names the count).
    async fn raise_drift(&self, now: UnixMicros) -> Result<(), Error> {
        let mut projector = self.live.lock().await;
        let due = triage::drifted(&projector.state().state, &self.policy);
        for d in due {
            let name = d.model.split('@').next().unwrap_or(&d.model).to_owned();
            let (id, version) = model_aggregate(projector.state(), &name);
            let payload = Payload::ModelDriftDetected(meridian_proto::events::v1::ModelDriftDetected {
                model: d.model.clone(),
                window: u32::try_from(d.window).unwrap_or(u32::MAX),
                statistic: d.statistic,
                baseline: d.baseline,
                outcomes: d.outcomes,
            });
            let event_id = EventId::derived(EventId(id), "drift", u32::try_from(d.outcomes).unwrap_or(u32::MAX));
            let meta = self.meta(event_id, MODEL, id, version, "platform", None, now);
            let batch = vec![Outgoing::new(self.ops.clone(), &payload.plain_envelope(meta)?)?];
            let appended = self.log.append(batch.clone()).await?;
            projector.feed_appended(batch, appended, self.keys.as_ref())?;
            tracing::warn!(region = %self.region, model = %d.model, statistic = d.statistic, baseline = d.baseline, window = d.window, "model drift: its recent share flagged strays from its validation");
        }
        Ok(())
    }

    /// The envelope facts of one of inference's events: version `version`
    /// of `aggregate_type`/`id`, for `tenant` (a model's own events are
    /// the platform's, as routing's reader events), caused by `cause`.
    #[allow(clippy::too_many_arguments)] // an envelope's facts, each its own
    fn meta(
        &self,
        event_id: EventId,
        aggregate_type: &str,
        id: Uuid,
        version: u64,
        tenant: &str,
        cause: Option<EventId>,
        now: UnixMicros,
    ) -> EventMeta {
        EventMeta {
            event_id,
            aggregate_type: aggregate_type.into(),
            aggregate_id: id,
            aggregate_version: version,
            tenant: tenant.into(),
            home_region: self.region.clone(),
            occurred_at: now,
            causation_id: cause,
            correlation_id: None,
            traceparent: meridian_telemetry::traceparent(),
        }
    }

    /// One model's read of one study, answering `cause`: its outcome.
    async fn read(
        &self,
        study: Uuid,
        spec: &ModelSpec,
        instances: &[model::Instance],
        cause: EventId,
        now: UnixMicros,
    ) -> Result<Outcome, Error> {
        let started = Instant::now();
        let ids: Vec<Uuid> = instances.iter().map(|i| i.id).collect();
        let fail = |reason: &'static str, detail: String| Outcome::Failed {
            study,
            model: spec.id(),
            cause,
            reason,
            detail,
            input_digest: model::input_digest(&ids),
        };
        let Some(loaded) = self.models.get(&spec.name) else {
            return Ok(fail("model_output", format!("model {} is not loaded", spec.id())));
        };
        let tenant = self
            .live
            .lock()
            .await
            .state()
            .state
            .studies
            .get(&study)
            .and_then(|s| s.completion.as_ref().map(|c| c.tenant.clone()))
            .unwrap_or_default();
        // No audit, no pixels.
        let items = instances.iter().map(|i| i.id.to_string()).collect();
        self.audit
            .record(&service_principal(), "inference.read", &[Accessed { tenant: &tenant, study, items }], now)
            .await
            .map_err(|e| Error::Audit(e.to_string()))?;
        let _permit = self.permits.acquire().await.map_err(|e| Error::Audit(e.to_string()))?;
        let mut objects = Vec::with_capacity(instances.len());
        for i in instances {
            match self.blobs.get(&i.object_key).await {
                Ok(Some(bytes)) => objects.push(bytes),
                Ok(None) => return Ok(fail("object_missing", format!("instance {} has no object", i.id))),
                Err(e) => return Ok(fail("object_missing", format!("instance {}: {e}", i.id))),
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let slices = match pixels::slices(objects, loaded.window, loaded.size, threads).await {
            Ok(slices) => slices,
            Err(e) => return Ok(fail(e.reason, e.detail)),
        };
        // The call's id is the study's opaque id: no UID leaves the service.
        let per_slice = match loaded.runtime.run(slices, &study.to_string()).await {
            Ok(scores) => scores,
            Err(e) => {
                let (reason, detail) = e.reason();
                return Ok(fail(reason, detail));
            }
        };
        let highest: BTreeMap<String, f32> = per_slice
            .iter()
            .map(|(name, scores)| (name.clone(), scores.iter().copied().fold(f32::MIN, f32::max)))
            .collect();
        let judged = triage::judge(spec, &highest);
        let scores = spec
            .outputs
            .iter()
            .filter_map(|o| highest.get(&o.name).map(|s| (o.name.clone(), *s, o.threshold as f32)))
            .collect();
        Ok(Outcome::Completed {
            study,
            model: spec.id(),
            cause,
            flagged: judged.flagged,
            suggested: judged.suggested,
            findings: judged.findings,
            latency_ms: u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX),
            scores,
            instances: ids,
        })
    }

    async fn append(&self, outcome: &Outcome, now: UnixMicros) -> Result<(), Error> {
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let (study, model, cause) = (outcome.study(), outcome.model().to_owned(), outcome.cause());
        let folded = projector.state();
        let Some(s) = folded.state.studies.get(&study) else { return Ok(()) };
        let Some(completion) = &s.completion else { return Ok(()) };
        // Each cause answered once, whoever read it first (an answer
        // folded from before answers remembered their cause: the completion).
        let answered = match s.answered.get(&model) {
            Some(a) => a.cause == Some(cause),
            None => s.read_by.contains(&model) && completion.cause == cause,
        };
        if answered {
            return Ok(());
        }
        let tenant = completion.tenant.clone();
        let mut batch = Vec::new();
        for payload in events::payloads(outcome) {
            let (aggregate, topic) = match payload {
                Payload::AiTriageScored(_) => (SCORES, &self.phi),
                _ => (STUDY, &self.ops),
            };
            let slot = format!("{aggregate}/{study}");
            let version = folded.versions.get(&slot).copied().unwrap_or(0) + 1;
            let event_id = EventId::derived(cause, &format!("{}:{model}", payload.type_name()), 0);
            let meta = self.meta(event_id, aggregate, study, version, &tenant, Some(cause), now);
            batch.push(match payload {
                // Scores are findings: sealed under the study's key.
                Payload::AiTriageScored(p) => {
                    Outgoing::new(topic.clone(), &Envelope::sealed(meta, &p, StudyId(study), self.keys.as_ref())?)?
                }
                other => Outgoing::new(topic.clone(), &other.plain_envelope(meta)?)?,
            });
        }
        match outcome {
            Outcome::Completed { flagged, suggested, latency_ms, .. } => {
                tracing::info!(region = %self.region, %study, %model, flagged, suggested = suggested.as_deref().unwrap_or(""), latency_ms, "study triaged");
            }
            Outcome::Failed { reason, detail, .. } => {
                tracing::warn!(region = %self.region, %study, %model, reason, %detail, "triage failed: the study is routed at its normal priority");
            }
        }
        let appended = self.log.append(batch.clone()).await?;
        projector.feed_appended(batch, appended, self.keys.as_ref())?;
        match outcome {
            Outcome::Completed { latency_ms, .. } => {
                meridian_telemetry::metrics::triage_read(&self.region, &model, "completed", *latency_ms as f64 / 1e3);
            }
            Outcome::Failed { reason, .. } => {
                meridian_telemetry::metrics::triage_read(&self.region, &model, reason, 0.0)
            }
        }
        Ok(())
    }

    /// Turns model `name` on or off, by `by`, for `reason`; the model as it
    /// now stands. `None` when no such model is loaded.
    pub async fn switch(
        &self,
        name: &str,
        enabled: bool,
        by: &str,
        reason: &str,
        now: UnixMicros,
    ) -> Result<Option<(ModelView, bool)>, Error> {
        let Some(loaded) = self.models.get(name) else { return Ok(None) };
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let was_on = !projector.state().state.disabled.contains(name);
        if was_on != enabled {
            let (id, version) = model_aggregate(projector.state(), name);
            let (model, by, reason) = (name.to_owned(), by.to_owned(), reason.to_owned());
            let payload = if enabled {
                Payload::ModelEnabled(meridian_proto::events::v1::ModelEnabled { model, by, reason })
            } else {
                Payload::ModelDisabled(meridian_proto::events::v1::ModelDisabled { model, by, reason })
            };
            let event_id =
                EventId::derived(EventId(id), payload.type_name(), u32::try_from(version).unwrap_or(u32::MAX));
            let meta = self.meta(event_id, MODEL, id, version, "platform", None, now);
            let batch = vec![Outgoing::new(self.ops.clone(), &payload.plain_envelope(meta)?)?];
            let appended = self.log.append(batch.clone()).await?;
            projector.feed_appended(batch, appended, self.keys.as_ref())?;
            tracing::warn!(region = %self.region, model = %name, enabled, "model switched");
        }
        let stats = projector.state().state.stats.get(&loaded.spec.id()).cloned().unwrap_or_default();
        Ok(Some((ModelView::of(loaded, stats), enabled)))
    }

    /// Each loaded model, and whether it is on.
    pub async fn listed(&self) -> Vec<(ModelView, bool)> {
        let projector = self.live.lock().await;
        let state = &projector.state().state;
        self.models
            .values()
            .map(|m| {
                let stats = state.stats.get(&m.spec.id()).cloned().unwrap_or_default();
                (ModelView::of(m, stats), !state.disabled.contains(&m.spec.name))
            })
            .collect()
    }

    pub async fn read_state<T>(&self, f: impl FnOnce(&Folded) -> T) -> T {
        f(self.live.lock().await.state())
    }

    pub fn opened(&self) -> &Resumed {
        self.live.opened()
    }

    pub async fn stats(&self) -> Stats {
        self.live.stats().await
    }

    pub async fn snapshot(&self, force: bool) -> Result<(), Error> {
        Ok(self.live.snapshot(force).await?)
    }

    /// Follows the log into the state until `stop`.
    pub async fn follow(&self, stop: impl std::future::Future<Output = ()>) {
        self.live.follow(self.log.as_ref(), self.keys.as_ref(), stop).await;
    }
}
