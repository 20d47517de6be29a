//! A region's shared context (its folder, log, topics, key store, object
//! store, secrets and token verifier) and the open region: that context,
//! the services this process runs on it, and the summary projection every
//! process keeps.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meridian_auth::Authenticator;
use meridian_config::{LogConfig, Platform};
use meridian_events::payload::CATALOGUE;
use meridian_events::{DataClass, KeyStore, UnixMicros};
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::kafka::{KafkaConfig, KafkaLog};
use meridian_log::{EventLog, Position, TopicName, TopicSpec};
use meridian_objects::blobs::Blobs;
use meridian_objects::keys::{Kek, ObjectKeyStore};
use meridian_projection::Projector;
use meridian_projection::run::{Resumed, Snapshotter, rebuild, resume};
use meridian_projection::snapshot::FileSnapshots;
use tokio::sync::{Mutex, watch};

use crate::service::{Rebuilt, RegionService};
use crate::summary::EventSummary;

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("region {region} is not in the configuration")]
    Unknown { region: String },
    #[error("region {region}: {path}: {source}")]
    Io { region: String, path: String, source: std::io::Error },
    #[error("region {region}: {source}")]
    Log { region: String, source: Box<meridian_log::Error> },
    #[error("region {region}: {source}")]
    Projection { region: String, source: Box<meridian_projection::Error> },
    #[error("region {region}: {reason}")]
    Config { region: String, reason: String },
    #[error("region {region}: rebuilding {projection}: {reason}")]
    Rebuild { region: String, projection: String, reason: String },
    #[error("region {region}: opening {service}: {reason}")]
    Service { region: String, service: &'static str, reason: String },
}

/// A projection's snapshot is due after this many records or this long,
/// whichever comes first (and at shutdown): a restart reads at most about
/// this much of the log per projection.
pub const SNAPSHOT_EVERY_EVENTS: u64 = 10_000;
/// The stream of the audit trail, kept forever whatever the log's retention.
pub const AUDIT_STREAM: &str = "audit";
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(30);

/// Tenant → id secret, for the tenants whose PHI the region holds.
pub type Secrets = std::collections::BTreeMap<String, meridian_events::TenantSecret>;

/// What a region is opened with besides its configuration.
#[derive(Clone, Default)]
pub struct RegionOptions {
    /// The id secrets of the tenants whose PHI this region holds.
    pub secrets: Secrets,
    /// Armed by tests to crash the region at named points of its write paths.
    pub failpoints: meridian_log::failpoint::FailPoints,
    /// The region's key-encryption key, read by the caller from the
    /// secret `[keys] key_encryption_key` names (required on Kafka).
    pub key_encryption_key: Option<Kek>,
    /// What this process is, for its Kafka transactional id
    /// (`meridian-{region}-{process}`): `dev`, `routing`, `ingest-1`… One
    /// process per id: a second one fences the first.
    pub process: String,
    /// Which partitions this replica's partitioned consumers own.
    pub ownership: meridian_log::partitioner::Ownership,
    /// Every replica's gRPC URL in ordinal order, for a service whose
    /// replicas call each other (ingest); empty for one replica.
    pub peers: Vec<String>,
    /// (tenant, endpoint) → the bearer token of an enabled FHIR receiver,
    /// read by the caller from the secret its `bearer_token` names.
    pub delivery_tokens: DeliveryTokens,
}

/// (tenant, endpoint name) → bearer token.
pub type DeliveryTokens = std::collections::BTreeMap<(String, String), String>;

/// What every service process of a region shares: opened once per process.
pub struct RegionContext {
    pub name: String,
    pub platform: Arc<Platform>,
    /// `regions/<name>.toml`.
    config: meridian_config::Region,
    pub log: Arc<dyn EventLog>,
    pub keys: Arc<dyn KeyStore>,
    /// The region's object store (PHI, derivatives; on Kafka, data keys).
    pub blobs: Arc<dyn Blobs>,
    /// The process's data directory for this region: snapshots, the study
    /// index, the embedded log and, on `[objects] kind = "local"`, objects.
    pub dir: PathBuf,
    /// Gives each principal it verifies the region's refusal trail.
    pub verifier: Arc<Authenticator>,
    /// Refusals the audit trail could not keep (see `meridian_audit::refusals`).
    pub refusals_lost: Arc<meridian_audit::refusals::Lost>,
    /// What this process is (`dev`, `routing`, `ingest-1`…).
    pub process: String,
    /// The id secrets of the tenants whose PHI this region holds.
    pub secrets: Secrets,
    pub failpoints: meridian_log::failpoint::FailPoints,
    /// The bearer tokens of the tenants' enabled FHIR receivers.
    pub delivery_tokens: DeliveryTokens,
    /// Which partitions this replica's partitioned consumers own (all of
    /// them in a process that is the only one of its service).
    pub ownership: meridian_log::partitioner::Ownership,
    /// Every replica's gRPC URL in ordinal order (see [`RegionOptions`]).
    pub peers: Vec<String>,
    /// Authenticates calls between this region's processes (derived from
    /// its key-encryption key; absent on the embedded log, one process).
    pub service_key: Option<meridian_objects::keys::ServiceKey>,
    /// How long a read must stay empty to count as caught up.
    pub idle: Duration,
    topics: Vec<TopicName>,
    /// Other regions' operational topics copied into this log by the
    /// replicator (or MirrorMaker 2), under their own names: the regions
    /// the configuration routes here (`meridian_config::replication`).
    copies: Vec<TopicName>,
    partitions: u32,
    snapshots: FileSnapshots,
    /// The consumers started in this process, and whether each has read
    /// to the log's end yet: readiness waits for every one.
    consumers: std::sync::Mutex<Vec<(&'static str, crate::service::CaughtUp)>>,
}

impl RegionContext {
    /// Opens the region `name`'s context in `dir` (created if missing).
    pub async fn open(
        name: &str,
        dir: &Path,
        platform: Arc<Platform>,
        verifier: Arc<Authenticator>,
        options: RegionOptions,
    ) -> Result<RegionContext, RegionError> {
        let RegionOptions { secrets, failpoints, key_encryption_key, process, ownership, peers, delivery_tokens } =
            options;
        let service_key = key_encryption_key.as_ref().map(meridian_objects::keys::Kek::service_key);
        let Some(config) = platform.regions.get(name) else {
            return Err(RegionError::Unknown { region: name.to_owned() });
        };
        let config_err = |reason: String| RegionError::Config { region: name.to_owned(), reason };
        let log_config = config.log.clone();
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects).map_err(|source| RegionError::Io {
            region: name.to_owned(),
            path: objects.display().to_string(),
            source,
        })?;
        let blobs =
            meridian_objects::blobs::open(&config.objects, &objects, |v| std::env::var(v).ok()).map_err(config_err)?;
        let log_err = |source| RegionError::Log { region: name.to_owned(), source: Box::new(source) };
        let (log, keys, retention_ms): (Arc<dyn EventLog>, Arc<dyn KeyStore>, _) = match &log_config {
            LogConfig::Embedded { .. } => {
                let log_options = EmbeddedOptions { failpoints: failpoints.clone() };
                let log = EmbeddedLog::open(&dir.join("log.redb"), log_options).map_err(log_err)?;
                let keys = log.key_store();
                (Arc::new(log), Arc::new(keys), None)
            }
            LogConfig::Kafka { bootstrap_servers, replication_factor, retention, .. } => {
                // One transactional producer per process: a restart with
                // the same id fences its predecessor's open transaction.
                let process = if process.is_empty() { "dev" } else { process.as_str() };
                let mut kafka = KafkaConfig::new(bootstrap_servers.clone(), format!("meridian-{name}-{process}"));
                kafka.replication_factor = *replication_factor;
                kafka.failpoints = failpoints.clone();
                // Secrets come from the environment variables the
                // configuration names (the edge of the process reads them).
                kafka.extra = log_config.kafka_client(|variable| std::env::var(variable).ok()).map_err(config_err)?;
                let Some(kek) = key_encryption_key else {
                    return Err(config_err(
                        "[keys] key_encryption_key: a region on Kafka needs its key-encryption key".into(),
                    ));
                };
                // Every process of the region shares the data keys through
                // the object store; the log never holds one.
                let keys = ObjectKeyStore::new(blobs.clone(), kek)
                    .map_err(|e| config_err(format!("the data-key store: {e}")))?;
                let log = KafkaLog::connect(kafka).await.map_err(log_err)?;
                (Arc::new(log), Arc::new(keys), retention.map(|r| r.seconds * 1_000))
            }
        };
        let partitions = log_config.partitions();
        // Positions are explicit and there is no trusted "end of log", so
        // catching up means reading until a read stays empty this long; a
        // broker's first fetch takes longer than a local read.
        let idle = match log_config {
            LogConfig::Embedded { .. } => Duration::from_millis(50),
            LogConfig::Kafka { .. } => Duration::from_secs(2),
        };
        let mut topics = Vec::new();
        for info in CATALOGUE {
            let topic = TopicName::new(name, info.data_class, info.stream).map_err(|e| config_err(e.to_string()))?;
            if !topics.contains(&topic) {
                // The audit trail outlives any retention the log is given:
                // HIPAA keeps it six years (164.316(b)(2)), and it holds
                // opaque ids only, so it may outlive the studies it names.
                let retention_ms = if info.stream == AUDIT_STREAM { None } else { retention_ms };
                let spec = TopicSpec { name: topic.clone(), partitions, retention_ms };
                log.ensure_topic(&spec).await.map_err(log_err)?;
                topics.push(topic);
            }
        }
        // The copies exist before any consumer of them opens, with their
        // source's partition count (a copy lands in the partition its key
        // gives there): whoever starts first, replicator or consumer.
        let mut copies = Vec::new();
        for source in meridian_config::replication::sources_into(&platform, name) {
            let partitions = platform.regions.get(&source).map_or(partitions, |r| r.log.partitions());
            for info in CATALOGUE.iter().filter(|i| i.data_class == DataClass::Operational) {
                let topic = TopicName::new(&source, DataClass::Operational, info.stream)
                    .map_err(|e| config_err(e.to_string()))?;
                if !copies.contains(&topic) {
                    let retention_ms = if info.stream == AUDIT_STREAM { None } else { retention_ms };
                    let spec = TopicSpec { name: topic.clone(), partitions, retention_ms };
                    log.ensure_topic(&spec).await.map_err(log_err)?;
                    copies.push(topic);
                }
            }
        }
        // Every principal this region resolves carries its refusal trail.
        let (trail, refusals_lost) =
            meridian_audit::refusals::RefusalWriter::start(name, log.clone()).map_err(|e| config_err(e.to_string()))?;
        let verifier = Arc::new(verifier.with_trail(trail));
        let config = config.clone();
        Ok(RegionContext {
            name: name.to_owned(),
            config,
            platform,
            log,
            keys,
            blobs,
            dir: dir.to_owned(),
            verifier,
            refusals_lost,
            process: if process.is_empty() { "dev".to_owned() } else { process },
            secrets,
            failpoints,
            ownership,
            peers,
            delivery_tokens,
            service_key,
            idle,
            topics,
            copies,
            partitions,
            snapshots: FileSnapshots::new(dir.join("snapshots")),
            consumers: std::sync::Mutex::default(),
        })
    }

    /// Registers the consumer `what` (a service's intake from another's
    /// topic): the process is not ready until the handle returned is
    /// marked, when the consumer has read to the log's end once.
    pub fn caught_up(&self, what: &'static str) -> crate::service::CaughtUp {
        let handle = crate::service::CaughtUp::default();
        self.consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((what, handle.clone()));
        handle
    }

    /// The consumers that have not yet read to the log's end.
    pub fn catching_up(&self) -> Vec<&'static str> {
        let consumers = self.consumers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        consumers.iter().filter(|(_, c)| !c.is_caught_up()).map(|(what, _)| *what).collect()
    }

    /// Appends ConfigurationLoaded to the region's audit: the digest of the
    /// configuration directory this process loaded (`config`), at start.
    pub async fn record_configuration(&self, config: &Path, now: UnixMicros) -> Result<String, RegionError> {
        meridian_audit::configuration::record(&self.log, &self.name, config, &self.process, now)
            .await
            .map_err(|e| RegionError::Config { region: self.name.clone(), reason: e.to_string() })
    }

    /// `regions/<name>.toml`.
    pub fn config(&self) -> &meridian_config::Region {
        &self.config
    }

    pub fn topics(&self) -> &[TopicName] {
        &self.topics
    }

    pub fn start_positions(&self) -> Vec<Position> {
        start_positions(&self.topics, self.partitions)
    }

    /// The copies of other regions' `stream` topics in this log (see
    /// [`RegionContext::copies`]): what a service folds to learn what only
    /// another region writes (readers sit in one region; studies are homed
    /// in one).
    pub fn copies_of(&self, stream: &str) -> Vec<TopicName> {
        self.copies.iter().filter(|t| t.stream() == stream).cloned().collect()
    }

    /// A projection's snapshots, due every [`SNAPSHOT_EVERY_EVENTS`] or
    /// [`SNAPSHOT_EVERY`].
    pub fn snapshotter(&self) -> Snapshotter {
        Snapshotter::new(self.snapshots.clone(), SNAPSHOT_EVERY_EVENTS, SNAPSHOT_EVERY)
    }

    /// The object stores of the regions this region's tenants' contracts
    /// send de-identified derivatives to. A local store is reached in the
    /// data folder the regions share (`meridian dev`:
    /// `<data>/<region>/objects`); separate deployments use S3, with the
    /// destination's credentials.
    pub fn derivative_destinations(&self) -> Result<std::collections::BTreeMap<String, Arc<dyn Blobs>>, String> {
        let (name, platform, dir) = (&self.name, &self.platform, &self.dir);
        let homed_here =
            |tenant: &str| platform.tenants.get(tenant).is_some_and(|t| t.home_regions.iter().any(|r| r == name));
        let wanted: BTreeSet<&String> = platform
            .contracts
            .values()
            .filter(|c| homed_here(&c.tenant))
            .flat_map(|c| c.deidentification_destinations.iter())
            .filter(|r| *r != name)
            .collect();
        let mut out = std::collections::BTreeMap::new();
        for region in wanted {
            let Some(config) = platform.regions.get(region) else { continue };
            let folder = dir.parent().unwrap_or(dir).join(region).join("objects");
            let store = meridian_objects::blobs::open(&config.objects, &folder, |v| std::env::var(v).ok())
                .map_err(|e| format!("derivative destination {region}: {e}"))?;
            out.insert(region.clone(), store);
        }
        Ok(out)
    }

    /// The error of a service that failed to open.
    pub fn service_error(&self, service: &'static str, reason: impl std::fmt::Display) -> RegionError {
        RegionError::Service { region: self.name.clone(), service, reason: reason.to_string() }
    }
}

/// One open region in this process: its context, the services this
/// process runs on it, and the summary projection.
pub struct Region {
    pub context: Arc<RegionContext>,
    pub name: String,
    pub platform: Arc<Platform>,
    pub log: Arc<dyn EventLog>,
    pub keys: Arc<dyn KeyStore>,
    pub verifier: Arc<Authenticator>,
    services: Vec<Arc<dyn RegionService>>,
    summary: Mutex<Projector<EventSummary>>,
    summary_snapshots: Snapshotter,
    summary_opened: Resumed,
    /// Why the process is not ready now (empty: ready), from the last probe.
    unready: std::sync::Mutex<Vec<String>>,
    /// Whether the last probe found it ready (false until one has).
    ready: tokio::sync::watch::Sender<bool>,
    /// Each consumer's lag at the last measure ([`Region::measure_lag`]).
    lag: std::sync::Mutex<Vec<Lag>>,
}

/// Records of a topic the region's follower has read and a consumer has
/// not yet committed: measured from committed positions, never from the
/// broker's "latest" offsets (tansu answers those wrongly after a restart).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Lag {
    pub consumer: &'static str,
    pub topic: String,
    pub records: u64,
}

/// The summary projection, resumed, before its region is assembled.
pub struct ResumedSummary {
    projector: Projector<EventSummary>,
    opened: Resumed,
}

/// How long a readiness probe waits for the broker or the bucket.
pub const PROBE_WITHIN: Duration = Duration::from_secs(3);

impl Region {
    /// The region with `services` opened on `context`; the summary
    /// projection resumes from its snapshot.
    pub async fn new(
        context: Arc<RegionContext>,
        services: Vec<Arc<dyn RegionService>>,
    ) -> Result<Region, RegionError> {
        let summary = Region::resume_summary(&context).await?;
        Ok(Region::assemble(context, services, summary))
    }

    /// The summary projection from its snapshot and the log's tail: a
    /// composition opens it while its services open theirs.
    pub async fn resume_summary(context: &RegionContext) -> Result<ResumedSummary, RegionError> {
        let proj_err = |source| RegionError::Projection { region: context.name.clone(), source: Box::new(source) };
        let (projector, opened) = resume::<EventSummary>(
            Some(&context.name),
            &context.snapshots,
            context.start_positions(),
            context.log.as_ref(),
            context.keys.as_ref(),
            context.idle,
        )
        .await
        .map_err(proj_err)?;
        Ok(ResumedSummary { projector, opened })
    }

    /// The region of `services` on `context` with its resumed summary.
    pub fn assemble(
        context: Arc<RegionContext>,
        services: Vec<Arc<dyn RegionService>>,
        summary: ResumedSummary,
    ) -> Region {
        Region {
            name: context.name.clone(),
            platform: context.platform.clone(),
            log: context.log.clone(),
            keys: context.keys.clone(),
            verifier: context.verifier.clone(),
            summary_snapshots: context.snapshotter(),
            context,
            services,
            summary: Mutex::new(summary.projector),
            summary_opened: summary.opened,
            unready: std::sync::Mutex::new(Vec::new()),
            ready: tokio::sync::watch::Sender::new(false),
            lag: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Measures each service's consumers' lag: per topic, the records the
    /// region's follower has read past the consumer's committed positions.
    pub async fn measure_lag(&self) {
        let read: std::collections::BTreeMap<(String, u32), u64> = self
            .summary
            .lock()
            .await
            .positions()
            .into_iter()
            .map(|p| ((p.topic.to_string(), p.partition), p.offset))
            .collect();
        let mut measured = Vec::new();
        for service in &self.services {
            for (consumer, topic) in service.inputs() {
                let Ok(committed) = self.log.resume(consumer, &topic).await else { continue };
                let name = topic.to_string();
                let records = committed
                    .iter()
                    .map(|c| read.get(&(name.clone(), c.partition)).map_or(0, |end| end.saturating_sub(c.offset)))
                    .sum();
                measured.push(Lag { consumer, topic: name, records });
            }
        }
        *self.lag.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = measured;
    }

    /// Each consumer's lag at the last measure.
    pub fn lag(&self) -> Vec<Lag> {
        self.lag.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Asks the log and the object store whether they answer, remembers
    /// and returns why not (empty: ready).
    pub async fn probe(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Err(e) = self.log.reachable(PROBE_WITHIN).await {
            reasons.push(format!("event log: {e}"));
        }
        match tokio::time::timeout(PROBE_WITHIN, self.context.blobs.get("readiness/probe")).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => reasons.push(format!("object store: {e}")),
            Err(_) => reasons.push(format!("object store: no answer within {} s", PROBE_WITHIN.as_secs())),
        }
        if let Some(fatal) = self.log.fatal() {
            reasons.push(format!("event log: {fatal}"));
        }
        for what in self.context.catching_up() {
            reasons.push(format!("{what}: still reading the log to its end since the start"));
        }
        *self.unready.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = reasons.clone();
        reasons
    }

    /// Says whether the last probe found the region ready (its health
    /// already set to match).
    pub fn set_ready(&self, ready: bool) {
        self.ready.send_replace(ready);
    }

    /// Resolves once a probe has found the region ready (its log and
    /// object store answer, its consumers have read to the log's end).
    pub async fn until_ready(&self) {
        let _ = self.ready.subscribe().wait_for(|ready| *ready).await;
    }

    /// Why the process was not ready at the last probe (empty: ready).
    pub fn unready(&self) -> Vec<String> {
        self.unready.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn services(&self) -> &[Arc<dyn RegionService>] {
        &self.services
    }

    pub fn topics(&self) -> &[TopicName] {
        self.context.topics()
    }

    pub fn start_positions(&self) -> Vec<Position> {
        self.context.start_positions()
    }

    /// The summary's state.
    pub async fn summary(&self) -> crate::summary::Summary {
        self.summary.lock().await.state().clone()
    }

    /// Each in-memory projection: how it was opened (from a snapshot, the
    /// tail it read) and what it did with its input, by reason.
    pub async fn projections(&self) -> serde_json::Value {
        let mut all = vec![serde_json::json!({
            "name": "events.summary", "opened": self.summary_opened, "stats": self.summary_stats().await,
        })];
        for service in &self.services {
            all.extend(service.projections().await);
        }
        serde_json::Value::Array(all)
    }

    /// Every consumer outside the projection runtime, with the records it
    /// passed since this process started, by reason (shredded, unknown data
    /// key, corrupt envelope, missing object, unroutable…).
    pub fn consumers(&self) -> serde_json::Value {
        serde_json::Value::Array(self.services.iter().flat_map(|s| s.consumers()).collect())
    }

    /// The projections this process rebuilds on request.
    pub fn rebuildable(&self) -> Vec<&'static str> {
        let mut names = vec!["events.summary"];
        names.extend(self.services.iter().flat_map(|s| s.rebuildable().iter().copied()));
        names
    }

    /// What the summary projection did with its input, by reason: the
    /// skip counters (unreadable, shredded, conflicts…) operators watch.
    pub async fn summary_stats(&self) -> meridian_projection::Stats {
        self.summary.lock().await.stats().clone()
    }

    /// Follows the log into the summary until `shutdown`, snapshotting every
    /// 1,000 events or 5 s, and once more at the end.
    pub async fn follow(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let positions = self.summary.lock().await.positions();
        let mut reader = match self.log.reader(positions).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(region = %self.name, error = %e, "cannot follow the log");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                batch = reader.next_batch(1024, Duration::from_millis(500)) => match batch {
                    Ok(batch) if !batch.is_empty() => {
                        let mut summary = self.summary.lock().await;
                        for record in &batch {
                            if let Err(e) = summary.feed(record, self.keys.as_ref()) {
                                tracing::warn!(region = %self.name, error = %e, "summary projection");
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(region = %self.name, error = %e, "reading the log");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                },
            }
            self.save_snapshot(false).await;
        }
        self.save_snapshot(true).await;
    }

    async fn save_snapshot(&self, force: bool) {
        let encoded = self.summary_snapshots.encode_if_due(&*self.summary.lock().await, force);
        let written = match encoded {
            Ok(Some((fed, bytes))) => self.summary_snapshots.write::<EventSummary>(fed, bytes).await,
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::warn!(region = %self.name, error = %e, "saving the summary snapshot");
        }
    }

    /// Writes every projection's snapshot that is due (`force`: every one
    /// that changed, as at shutdown). Failures are logged: the previous
    /// snapshot stays valid and the next start reads a longer tail.
    pub async fn save_snapshots(&self, force: bool) {
        self.save_snapshot(force).await;
        for service in &self.services {
            service.save_snapshots(force).await;
        }
    }

    /// Throws the summary away and rebuilds it from the log. Holds the
    /// projection while it does, so the follower neither loses nor doubles
    /// anything: what it read meanwhile is behind or ahead of the rebuilt
    /// positions, and the projector treats it accordingly.
    pub async fn rebuild_summary(&self) -> Result<Rebuilt, RegionError> {
        let err = |source| RegionError::Projection { region: self.name.clone(), source: Box::new(source) };
        let mut live = self.summary.lock().await;
        let rebuilt =
            rebuild(&mut live, self.start_positions(), self.log.as_ref(), self.keys.as_ref(), self.context.idle)
                .await
                .map_err(err)?;
        self.context.snapshots.save(&live.snapshot()).map_err(err)?;
        Ok(Rebuilt { rebuilt, summary: live.state().render() })
    }

    /// Rebuilds the projection `name` from the log (see
    /// [`meridian_projection::run::rebuild`]) and snapshots it; `None`
    /// when no service of this process has it.
    pub async fn rebuild(&self, name: &str) -> Result<Option<Rebuilt>, RegionError> {
        if name == "events.summary" {
            return self.rebuild_summary().await.map(Some);
        }
        for service in &self.services {
            if let Some(done) = service.rebuild(name).await {
                return done.map(Some).map_err(|reason| RegionError::Rebuild {
                    region: self.name.clone(),
                    projection: name.into(),
                    reason,
                });
            }
        }
        Ok(None)
    }
}

fn start_positions(topics: &[TopicName], partitions: u32) -> Vec<Position> {
    topics.iter().flat_map(|t| (0..partitions).map(move |p| Position::start(t.clone(), p))).collect()
}
