//! Opening a region: its folder, log, topics, key store, the reader
//! bootstrap and the projections it serves.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meridian_auth::TokenVerifier;
use meridian_config::{LogConfig, ObjectStoreConfig, Platform};
use meridian_events::payload::CATALOGUE;
use meridian_events::{KeyStore, UnixMicros};
use meridian_log::embedded::{EmbeddedKeyStore, EmbeddedLog, EmbeddedOptions};
use meridian_log::kafka::{KafkaConfig, KafkaLog};
use meridian_log::{EventLog, Position, TopicName, TopicSpec};
use meridian_projection::Projector;
use meridian_projection::run::{Resumed, Snapshotter, catch_up, rebuild, resume};
use meridian_projection::snapshot::FileSnapshots;
use tokio::sync::{Mutex, watch};

use meridian_storage::dicomweb::{Assignments, DicomWeb};
use meridian_storage::index::StudyIndex;

use crate::summary::EventSummary;

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("region {region} is not in the configuration")]
    Unknown { region: String },
    #[error("region {region}: {path}: {source}")]
    Io { region: String, path: String, source: std::io::Error },
    #[error("region {region}: {source}")]
    Log { region: String, source: meridian_log::Error },
    #[error("region {region}: {source}")]
    Projection { region: String, source: meridian_projection::Error },
    #[error("region {region}: {reason}")]
    Config { region: String, reason: String },
    #[error("region {region}: bootstrap of reader {reader}: {reason}")]
    Bootstrap { region: String, reader: String, reason: String },
    #[error("region {region}: rebuilding {projection}: {reason}")]
    Rebuild { region: String, projection: String, reason: String },
}

/// A projection's snapshot is due after this many records or this long,
/// whichever comes first (and at shutdown): a restart reads at most about
/// this much of the log per projection.
pub const SNAPSHOT_EVERY_EVENTS: u64 = 10_000;
pub const SNAPSHOT_EVERY: Duration = Duration::from_secs(30);

/// The projections a region rebuilds on request.
pub const PROJECTIONS: [&str; 3] = ["events.summary", "ingest.studies", "routing.worklist"];

/// What a rebuild found, and the rebuilt state in a line.
#[derive(Clone, Debug)]
pub struct Rebuilt {
    pub rebuilt: meridian_projection::run::Rebuilt,
    pub summary: String,
}

/// One open region.
pub struct Region {
    pub name: String,
    pub platform: Arc<Platform>,
    pub log: Arc<dyn EventLog>,
    pub keys: Arc<dyn KeyStore>,
    pub objects: PathBuf,
    pub verifier: Arc<TokenVerifier>,
    topics: Vec<TopicName>,
    partitions: u32,
    idle: Duration,
    summary: Mutex<Projector<EventSummary>>,
    snapshots: FileSnapshots,
    summary_snapshots: Snapshotter,
    summary_opened: Resumed,
    /// The routing service of this region (worklist, claims, timers).
    pub routing: Arc<meridian_routing::app::Routing>,
    /// The ingest service of this region (C-STORE, study completeness).
    pub ingest: Arc<meridian_ingest::app::Ingest>,
    /// The study index (QIDO-RS, WADO-RS metadata), fed by ingest.
    pub index: Arc<StudyIndex>,
    /// QIDO-RS and WADO-RS over the index and the object store.
    pub dicomweb: Arc<DicomWeb>,
    /// De-identified derivatives of completed studies, for the contracts
    /// that give readers de-identified images.
    pub derivatives: Arc<meridian_storage::derivatives::Derivatives>,
}

/// The region's object store, as its `[objects]` says.
fn object_store(config: &ObjectStoreConfig, folder: &Path) -> Result<Arc<dyn meridian_storage::blobs::Blobs>, String> {
    use meridian_storage::blobs::{LocalBlobs, S3Blobs, S3Settings};
    match config {
        ObjectStoreConfig::Local => Ok(Arc::new(LocalBlobs::new(folder))),
        ObjectStoreConfig::S3 {
            bucket,
            endpoint,
            region: signing,
            allow_http,
            access_key_id_env,
            secret_access_key_env,
        } => {
            let env = |name: &str| {
                std::env::var(name)
                    .map_err(|_| format!("[objects] S3 bucket {bucket}: environment variable {name} is not set"))
            };
            let settings = S3Settings {
                bucket: bucket.clone(),
                endpoint: endpoint.clone(),
                region: signing.clone(),
                allow_http: *allow_http,
                access_key_id: env(access_key_id_env)?,
                secret_access_key: env(secret_access_key_env)?,
            };
            let store = S3Blobs::new(&settings).map_err(|e| e.to_string())?;
            Ok(Arc::new(store))
        }
    }
}

/// The object stores of the regions this region's tenants' contracts send
/// de-identified derivatives to. A local store is reached in the data
/// folder the regions share (`meridian dev`: `<data>/<region>/objects`);
/// separate deployments use S3, with the destination's credentials.
fn derivative_destinations(
    name: &str,
    platform: &Platform,
    dir: &Path,
) -> Result<std::collections::BTreeMap<String, Arc<dyn meridian_storage::blobs::Blobs>>, String> {
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
        let store =
            object_store(&config.objects, &folder).map_err(|e| format!("derivative destination {region}: {e}"))?;
        out.insert(region.clone(), store);
    }
    Ok(out)
}

/// Routing's assignments, as DICOMweb asks who may see a study.
struct RoutingAssignments(Arc<meridian_routing::app::Routing>);

#[async_trait::async_trait]
impl Assignments for RoutingAssignments {
    async fn assignee(&self, study: uuid::Uuid) -> Option<String> {
        self.0.read(|s| s.studies.get(&study).and_then(|s| s.assignee.clone())).await
    }

    async fn assigned_to(&self, reader: &str) -> BTreeSet<uuid::Uuid> {
        self.0
            .read(|s| {
                s.studies.iter().filter(|(_, st)| st.assignee.as_deref() == Some(reader)).map(|(id, _)| *id).collect()
            })
            .await
    }
}

/// What a region is opened with besides its configuration.
#[derive(Clone, Default)]
pub struct RegionOptions {
    /// The id secrets of the tenants whose PHI this region holds.
    pub secrets: meridian_ingest::app::Secrets,
    /// Armed by tests to crash the region at named points of its write paths.
    pub failpoints: meridian_log::failpoint::FailPoints,
}

impl Region {
    /// Opens the region `name` in `dir` (created if missing); `now` stamps
    /// the bootstrap events of a first start.
    pub async fn open(
        name: &str,
        dir: &Path,
        platform: Arc<Platform>,
        verifier: Arc<TokenVerifier>,
        options: RegionOptions,
        now: UnixMicros,
    ) -> Result<Region, RegionError> {
        let RegionOptions { secrets, failpoints } = options;
        let Some(config) = platform.regions.get(name) else {
            return Err(RegionError::Unknown { region: name.to_owned() });
        };
        let log_config = config.log.clone();
        let io = |path: &Path| {
            let (region, path) = (name.to_owned(), path.display().to_string());
            move |source| RegionError::Io { region, path, source }
        };
        let objects = dir.join("objects");
        std::fs::create_dir_all(&objects).map_err(io(&objects))?;
        let log_err = |source| RegionError::Log { region: name.to_owned(), source };
        let (log, keys, retention_ms): (Arc<dyn EventLog>, Arc<dyn KeyStore>, _) = match &log_config {
            LogConfig::Embedded { .. } => {
                let log_options = EmbeddedOptions { failpoints: failpoints.clone() };
                let log = EmbeddedLog::open(&dir.join("log.redb"), log_options).map_err(log_err)?;
                let keys = log.key_store();
                (Arc::new(log), Arc::new(keys), None)
            }
            LogConfig::Kafka { bootstrap_servers, replication_factor, retention, .. } => {
                // One transactional producer per region process: a restart
                // with the same id fences its predecessor's open transaction.
                let mut kafka = KafkaConfig::new(bootstrap_servers.clone(), format!("meridian-{name}"));
                kafka.replication_factor = *replication_factor;
                // Secrets come from the environment variables the
                // configuration names (the edge of the process reads them).
                kafka.extra = log_config
                    .kafka_client(|variable| std::env::var(variable).ok())
                    .map_err(|reason| RegionError::Config { region: name.to_owned(), reason })?;
                let log = KafkaLog::connect(kafka).await.map_err(log_err)?;
                let keys = EmbeddedKeyStore::open(&dir.join("keys.redb")).map_err(log_err)?;
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
            let topic = TopicName::new(name, info.data_class, info.stream).map_err(|e| RegionError::Bootstrap {
                region: name.to_owned(),
                reader: String::new(),
                reason: e.to_string(),
            })?;
            if !topics.contains(&topic) {
                let spec = TopicSpec { name: topic.clone(), partitions, retention_ms };
                log.ensure_topic(&spec).await.map_err(log_err)?;
                topics.push(topic);
            }
        }
        let snapshots = FileSnapshots::new(dir.join("snapshots"));
        let scheduled = || Snapshotter::new(snapshots.clone(), SNAPSHOT_EVERY_EVENTS, SNAPSHOT_EVERY);
        let proj_err = |source| RegionError::Projection { region: name.to_owned(), source };
        let starts = start_positions(&topics, partitions);
        let (summary, summary_opened) =
            resume::<EventSummary>(&snapshots, starts, log.as_ref(), keys.as_ref(), idle).await.map_err(proj_err)?;
        let routing_policy = meridian_routing::adapters::config::policy(&platform);
        let blobs = object_store(&config.objects, &objects)
            .map_err(|reason| RegionError::Config { region: name.to_owned(), reason })?;
        let destinations = derivative_destinations(name, &platform, dir)
            .map_err(|reason| RegionError::Config { region: name.to_owned(), reason })?;
        let phi = meridian_storage::phi::PhiWriter::new(name, platform.clone(), blobs.clone(), log.clone());
        let derivative_writer = Arc::new(
            meridian_storage::phi::PhiWriter::new(name, platform.clone(), blobs.clone(), log.clone())
                .with_destinations(destinations),
        );
        let index_path = dir.join("index.redb");
        let index = Arc::new(StudyIndex::open(&index_path).map_err(|e| RegionError::Io {
            region: name.to_owned(),
            path: index_path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?);
        let derivatives = Arc::new(meridian_storage::derivatives::Derivatives::new(
            name,
            platform.clone(),
            derivative_writer,
            index.clone(),
            log.clone(),
            secrets.clone(),
            failpoints.clone(),
        ));
        let ingest_options = meridian_ingest::app::IngestOptions { secrets, failpoints, snapshots: scheduled() };
        let ingest = meridian_ingest::app::Ingest::open(
            name,
            platform.clone(),
            phi,
            index.clone(),
            log.clone(),
            keys.clone(),
            idle,
            ingest_options,
        )
        .await
        .map_err(|e| RegionError::Bootstrap {
            region: name.to_owned(),
            reader: String::new(),
            reason: format!("ingest: {e}"),
        })?;
        let routing = Arc::new(
            meridian_routing::app::Routing::open(name, log.clone(), keys.clone(), routing_policy, idle, scheduled())
                .await
                .map_err(|e| RegionError::Bootstrap {
                    region: name.to_owned(),
                    reader: String::new(),
                    reason: e.to_string(),
                })?,
        );
        let assignments = Arc::new(RoutingAssignments(routing.clone()));
        let dicomweb =
            DicomWeb::new(name, platform.clone(), index.clone(), blobs, log.clone(), assignments).map_err(log_err)?;
        let region = Region {
            derivatives,
            ingest: Arc::new(ingest),
            routing,
            index,
            dicomweb: Arc::new(dicomweb),
            name: name.to_owned(),
            platform,
            log,
            keys,
            objects,
            verifier,
            topics,
            partitions,
            idle,
            summary: Mutex::new(summary),
            summary_snapshots: scheduled(),
            summary_opened,
            snapshots,
        };
        region.bootstrap_readers(now).await?;
        // Routing's state includes the readers just registered.
        region.routing.catch_up(idle).await.map_err(|e| RegionError::Bootstrap {
            region: name.to_owned(),
            reader: String::new(),
            reason: e.to_string(),
        })?;
        Ok(region)
    }

    pub fn topics(&self) -> &[TopicName] {
        &self.topics
    }

    pub fn start_positions(&self) -> Vec<Position> {
        start_positions(&self.topics, self.partitions)
    }

    /// Every configured reader becomes a ReaderRegistered event in every
    /// region at first start (reader events are operational: a study's home
    /// region must know every reader it may offer the study to, wherever
    /// they sit); afterwards they change through the routing
    /// API. Event ids come from an idempotency key, so a bootstrap repeated
    /// after a crash is recognised as the same events.
    async fn bootstrap_readers(&self, now: UnixMicros) -> Result<(), RegionError> {
        use meridian_routing::app::Cause;
        use meridian_routing::domain::worklist::Command;
        let err = |reader: &str, reason: String| RegionError::Bootstrap {
            region: self.name.clone(),
            reader: reader.to_owned(),
            reason,
        };
        let known: BTreeSet<String> = self.routing.read(|s| s.readers.keys().cloned().collect()).await;
        let mut commands = Vec::new();
        for group in self.platform.groups.values() {
            for reader in group.readers.iter().filter(|r| !known.contains(&r.id)) {
                let registered =
                    meridian_routing::adapters::config::reader(&group.name, reader).map_err(|e| err(&reader.id, e))?;
                let key = format!("bootstrap/reader/{}", reader.id);
                let cause = Cause::Request { tenant: "platform".into(), idempotency_key: key };
                commands.push((Command::RegisterReader(registered), cause));
            }
        }
        if commands.is_empty() {
            return Ok(());
        }
        tracing::info!(region = %self.name, readers = commands.len(), "registering configured readers");
        self.routing.execute_all(commands, now).await.map_err(|e| err("", e.to_string()))?;
        let mut summary = self.summary.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut summary, self.idle)
            .await
            .map_err(|source| RegionError::Projection { region: self.name.clone(), source })?;
        self.snapshots
            .save(&summary.snapshot())
            .map_err(|source| RegionError::Projection { region: self.name.clone(), source })
    }

    /// The summary's state.
    pub async fn summary(&self) -> crate::summary::Summary {
        self.summary.lock().await.state().clone()
    }

    /// Each in-memory projection: how it was opened (from a snapshot, the
    /// tail it read) and what it did with its input, by reason.
    pub async fn projections(&self) -> serde_json::Value {
        let (ingest, routing) =
            (self.ingest.read(|s| (s.open.len(), s.closed.len())).await, self.routing.read(|s| s.studies.len()).await);
        serde_json::json!([
            {"name": "events.summary", "opened": self.summary_opened, "stats": self.summary_stats().await},
            {"name": "ingest.studies", "opened": self.ingest.opened(), "stats": self.ingest.stats().await,
             "open_studies": ingest.0, "closed_studies": ingest.1},
            {"name": "routing.worklist", "opened": self.routing.opened(), "stats": self.routing.stats().await,
             "studies": routing},
        ])
    }

    /// Every consumer outside the projection runtime, with the records it
    /// passed since this process started, by reason (shredded, unknown data
    /// key, corrupt envelope, missing object, unroutable…).
    pub fn consumers(&self) -> serde_json::Value {
        let skips = [self.ingest.index_skips(), self.routing.intake_skips(), self.derivatives.skips()]
            .map(|s| serde_json::json!({"consumer": s.consumer(), "skipped": s.counts(), "skipped_total": s.total()}));
        serde_json::Value::Array(skips.into())
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
        if let Err(e) = self.ingest.snapshot(force).await {
            tracing::warn!(region = %self.name, error = %e, "saving ingest's snapshot");
        }
        if let Err(e) = self.routing.snapshot(force).await {
            tracing::warn!(region = %self.name, error = %e, "saving routing's snapshot");
        }
    }

    /// Throws the summary away and rebuilds it from the log. Holds the
    /// projection while it does, so the follower neither loses nor doubles
    /// anything: what it read meanwhile is behind or ahead of the rebuilt
    /// positions, and the projector treats it accordingly.
    pub async fn rebuild_summary(&self) -> Result<Rebuilt, RegionError> {
        let err = |source| RegionError::Projection { region: self.name.clone(), source };
        let mut live = self.summary.lock().await;
        let rebuilt = rebuild(&mut live, self.start_positions(), self.log.as_ref(), self.keys.as_ref(), self.idle)
            .await
            .map_err(err)?;
        self.snapshots.save(&live.snapshot()).map_err(err)?;
        Ok(Rebuilt { rebuilt, summary: live.state().render() })
    }

    /// Rebuilds the projection `name` from the log (see
    /// [`meridian_projection::run::rebuild`]) and snapshots it. Ingest's and
    /// routing's writers wait while theirs is rebuilt.
    pub async fn rebuild(&self, name: &str) -> Result<Option<Rebuilt>, RegionError> {
        let err =
            |reason: String| RegionError::Rebuild { region: self.name.clone(), projection: name.to_owned(), reason };
        match name {
            "events.summary" => self.rebuild_summary().await.map(Some),
            "ingest.studies" => {
                let rebuilt = self.ingest.rebuild(self.idle).await.map_err(|e| err(e.to_string()))?;
                let (open, closed) = self.ingest.read(|s| (s.open.len(), s.closed.len())).await;
                Ok(Some(Rebuilt { rebuilt, summary: format!("{open} open studies, {closed} completed") }))
            }
            "routing.worklist" => {
                let rebuilt = self.routing.rebuild(self.idle).await.map_err(|e| err(e.to_string()))?;
                let (readers, studies) = self.routing.read(|s| (s.readers.len(), s.studies.len())).await;
                Ok(Some(Rebuilt { rebuilt, summary: format!("{readers} readers, {studies} studies") }))
            }
            _ => Ok(None),
        }
    }
}

fn start_positions(topics: &[TopicName], partitions: u32) -> Vec<Position> {
    topics.iter().flat_map(|t| (0..partitions).map(move |p| Position::start(t.clone(), p))).collect()
}
