//! Storage as a service of a region's process: QIDO-RS and WADO-RS under
//! `/dicomweb`, the study index they read, and de-identified derivatives of
//! completed studies.
//!
//! Where ingest runs in the same process (`meridian dev`) it writes the
//! index before acknowledging, and a search right after a C-STORE finds
//! the instance. On its own (`meridian serve storage`) this process fills
//! its index from the log (`InstanceReceived`) and folds routing's
//! assignments from the log too: both follow their topics a moment behind.

use std::sync::Arc;
use std::time::Duration;

use meridian_log::TopicName;
use meridian_log::skips::Skips;
use meridian_region::service::{BoxFuture, GrpcRoutes, ServiceListeners};
use meridian_region::{RegionContext, RegionError, RegionService, Stopping, Task, every};

use crate::assignments::FoldedAssignments;
use crate::derivatives::Derivatives;
use crate::dicomweb::{Assignments, DicomWeb};
use crate::index::StudyIndex;
use crate::phi::PhiWriter;

/// Who keeps the study index current.
pub enum IndexFeed {
    /// Ingest, in this process, before it acknowledges.
    Ingest,
    /// This service, from the log's InstanceReceived.
    Log,
}

/// Who tells DICOMweb which reader holds a study.
pub enum AssigneeSource {
    /// Routing, in this process.
    Given(Arc<dyn Assignments>),
    /// This service's fold of `ops.routing`.
    Log,
}

/// How often a separate storage process reads the log for new instances.
const INDEX_FOLLOW: Duration = Duration::from_millis(100);

/// How often derivatives of completed studies are taken.
const DERIVATIVES_TICK: Duration = Duration::from_secs(1);

pub struct StorageService {
    context: Arc<RegionContext>,
    pub index: Arc<StudyIndex>,
    pub dicomweb: Arc<DicomWeb>,
    pub derivatives: Arc<Derivatives>,
    feed: IndexFeed,
    index_skips: Skips,
    folded: Option<Arc<FoldedAssignments>>,
    phi_topic: TopicName,
    /// The index follower's reader, kept between passes (a Kafka reader is
    /// a client with its connections); dropped after an error.
    index_reader: tokio::sync::Mutex<Option<Box<dyn meridian_log::LogReader>>>,
}

impl StorageService {
    /// Opens storage on `context` with its study `index`.
    pub async fn open(
        context: &Arc<RegionContext>,
        index: Arc<StudyIndex>,
        feed: IndexFeed,
        assignees: AssigneeSource,
    ) -> Result<Arc<StorageService>, RegionError> {
        let err = |reason: String| context.service_error("storage", reason);
        let name = &context.name;
        let destinations = context.derivative_destinations().map_err(err)?;
        let writer = Arc::new(
            PhiWriter::new(name, context.platform.clone(), context.blobs.clone(), context.log.clone())
                .with_destinations(destinations),
        );
        let derivatives = Arc::new(
            Derivatives::new(
                name,
                context.platform.clone(),
                writer,
                index.clone(),
                context.log.clone(),
                context.secrets.clone(),
                context.failpoints.clone(),
            )
            .owning(context.ownership),
        );
        let topic = |stream: &str, class| TopicName::new(name, class, stream).map_err(|e| err(e.to_string()));
        let phi_topic = topic("ingest", meridian_events::DataClass::Phi)?;
        let index_skips = Skips::new("storage.index");
        // The assignments fold and the index catch up at once: each waits
        // for the log to stay quiet, which in turn would add up.
        let folding = async {
            match assignees {
                AssigneeSource::Given(given) => Ok((given, None)),
                AssigneeSource::Log => {
                    let routing = topic("routing", meridian_events::DataClass::Operational)?;
                    let folded = FoldedAssignments::open(
                        &routing,
                        context.log.as_ref(),
                        context.keys.as_ref(),
                        context.snapshotter(),
                        context.idle,
                    )
                    .await
                    .map_err(|e| err(e.to_string()))?;
                    let folded = Arc::new(folded);
                    Ok::<(Arc<dyn Assignments>, _), RegionError>((folded.clone(), Some(folded)))
                }
            }
        };
        let indexing = async {
            if let IndexFeed::Ingest = feed {
                return Ok(0);
            }
            // Serve searches over what the log held at start.
            let c = context;
            index
                .catch_up(c.log.as_ref(), c.keys.as_ref(), c.blobs.as_ref(), &phi_topic, c.idle, &index_skips)
                .await
                .map_err(|e| err(e.to_string()))
        };
        let (folding, indexed) = tokio::join!(folding, indexing);
        let ((assignments, folded), indexed) = (folding?, indexed?);
        if let IndexFeed::Log = feed {
            tracing::info!(region = %name, instances = indexed, "study index caught up from the log");
        }
        let dicomweb = DicomWeb::new(
            name,
            context.platform.clone(),
            index.clone(),
            context.blobs.clone(),
            context.log.clone(),
            assignments,
        )
        .map_err(|e| err(e.to_string()))?;
        let service = StorageService {
            context: context.clone(),
            index,
            dicomweb: Arc::new(dicomweb),
            derivatives,
            feed,
            index_skips,
            folded,
            phi_topic,
            index_reader: tokio::sync::Mutex::new(None),
        };
        Ok(Arc::new(service))
    }

    /// Indexes what the log holds past the index's positions, with the
    /// reader kept from the last pass.
    async fn follow_index(&self, idle: Duration) -> Result<usize, crate::index::IndexError> {
        let c = &self.context;
        let mut slot = self.index_reader.lock().await;
        let reader = match slot.as_mut() {
            Some(reader) => reader,
            None => slot.insert(self.index.reader(c.log.as_ref(), &self.phi_topic).await?),
        };
        let indexed =
            self.index.index_from(reader.as_mut(), c.keys.as_ref(), c.blobs.as_ref(), idle, &self.index_skips).await;
        if indexed.is_err() {
            *slot = None;
        }
        indexed
    }
}

impl RegionService for StorageService {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn grpc<'a>(&'a self, _: &'a mut GrpcRoutes, _: &'a tonic_health::server::HealthReporter) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn dicomweb(&self) -> Option<axum::Router> {
        Some(self.dicomweb.clone().router())
    }

    fn start(self: Arc<Self>, _: &mut ServiceListeners, stopping: Stopping) -> Vec<Task> {
        let mut tasks = Vec::new();
        let storage = self.clone();
        tasks.push(Task::spawn(
            "derivatives",
            every(DERIVATIVES_TICK, stopping.clone().wait(), move |_| {
                let storage = storage.clone();
                async move {
                    // Completed studies' de-identified derivatives, where
                    // contracts ask.
                    if let Err(e) = storage.derivatives.intake(Duration::from_millis(20)).await {
                        tracing::warn!(region = %storage.context.name, error = %e, "derivatives");
                    }
                }
            }),
        ));
        if let IndexFeed::Log = self.feed {
            let storage = self.clone();
            let mut last_sync = std::time::Instant::now();
            tasks.push(Task::spawn(
                "study index",
                every(INDEX_FOLLOW, stopping.clone().wait(), move |_| {
                    let storage = storage.clone();
                    // The index's commits are not synced (the log is the
                    // durable copy); a sync each second bounds the re-read.
                    let sync = last_sync.elapsed() >= Duration::from_secs(1);
                    if sync {
                        last_sync = std::time::Instant::now();
                    }
                    async move {
                        if let Err(e) = storage.follow_index(Duration::from_millis(50)).await {
                            tracing::warn!(region = %storage.context.name, error = %e, "study index");
                        }
                        if sync && let Err(e) = storage.index.sync() {
                            tracing::warn!(region = %storage.context.name, error = %e, "study index sync");
                        }
                    }
                }),
            ));
        }
        if let Some(folded) = self.folded.clone() {
            let context = self.context.clone();
            tasks.push(Task::spawn("assignments", async move {
                folded.live().follow(context.log.as_ref(), context.keys.as_ref(), stopping.wait()).await;
            }));
        }
        tasks
    }

    fn stop(&self) {
        self.derivatives.stop();
    }

    fn save_snapshots(&self, force: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(folded) = &self.folded
                && let Err(e) = folded.live().snapshot(force).await
            {
                tracing::warn!(region = %self.context.name, error = %e, "saving the assignments snapshot");
            }
            if force
                && let IndexFeed::Log = self.feed
                && let Err(e) = self.index.sync()
            {
                tracing::warn!(region = %self.context.name, error = %e, "study index sync at shutdown");
            }
        })
    }

    fn projections(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async move {
            let Some(folded) = &self.folded else { return Vec::new() };
            let held = folded.live().lock().await.state().assignee.len();
            vec![serde_json::json!({
                "name": "storage.assignments", "opened": folded.live().opened(),
                "stats": folded.live().stats().await, "held": held,
            })]
        })
    }

    fn consumers(&self) -> Vec<serde_json::Value> {
        let mut skips = vec![self.derivatives.skips()];
        if let IndexFeed::Log = self.feed {
            skips.push(&self.index_skips);
        }
        skips.into_iter().map(Skips::to_json).collect()
    }

    fn rebuildable(&self) -> &'static [&'static str] {
        if self.folded.is_some() { &["storage.assignments"] } else { &[] }
    }

    fn rebuild<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Option<Result<meridian_region::service::Rebuilt, String>>> {
        Box::pin(async move {
            let folded = self.folded.as_ref().filter(|_| name == "storage.assignments")?;
            let c = &self.context;
            let rebuilt = match folded.live().rebuild(c.log.as_ref(), c.keys.as_ref(), c.idle).await {
                Ok(r) => r,
                Err(e) => return Some(Err(e.to_string())),
            };
            let held = folded.live().lock().await.state().assignee.len();
            Some(Ok(meridian_region::service::Rebuilt { rebuilt, summary: format!("{held} studies held") }))
        })
    }
}
