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
use crate::dicomweb::DicomWeb;
use crate::index::{IndexFollower, Read, StudyIndex};
use crate::phi::PhiWriter;
use crate::retention::{IndexPurges, Retention};

/// Who keeps the study index current.
pub enum IndexFeed {
    /// Ingest, in this process, before it acknowledges.
    Ingest,
    /// This service, from the log's InstanceReceived.
    Log,
}

/// How often a separate storage process reads the log for new instances.
const INDEX_FOLLOW: Duration = Duration::from_millis(100);

/// How often the home region looks for studies whose retention ended.
const RETENTION_TICK: Duration = Duration::from_secs(5);

/// How long one derivatives pass waits for the next completed study
/// before it returns (and is started again): bounds how late a stop is seen.
const DERIVATIVES_WAIT: Duration = Duration::from_millis(250);

pub struct StorageService {
    context: Arc<RegionContext>,
    pub index: Arc<StudyIndex>,
    pub dicomweb: Arc<DicomWeb>,
    pub derivatives: Arc<Derivatives>,
    /// Who holds each study, folded from routing's events.
    folded: Arc<FoldedAssignments>,
    /// Where ingest is another process: the index's follower of the log.
    follower: Option<Arc<IndexFollower>>,
    /// Other regions' derivatives landed here, indexed as their
    /// DerivativeCreated copies arrive.
    landed: Arc<crate::landed::LandedDerivatives>,
    /// This region's studies whose retention ends, and their purge.
    retention: Arc<Retention>,
    /// Where this process's index is its own (ingest elsewhere): the
    /// purges of other storage replicas, followed into it.
    purges: Option<Arc<IndexPurges>>,
}

impl StorageService {
    /// Opens storage on `context` with its study `index`.
    pub async fn open(
        context: &Arc<RegionContext>,
        index: Arc<StudyIndex>,
        feed: IndexFeed,
    ) -> Result<Arc<StorageService>, RegionError> {
        let err = |reason: String| context.service_error("storage", reason);
        let name = &context.name;
        let destinations = context.derivative_destinations().map_err(err)?;
        let writer = Arc::new(
            PhiWriter::new(name, context.platform.clone(), context.blobs.clone(), context.log.clone())
                .with_destinations(destinations),
        );
        let topic = |stream: &str, class| TopicName::new(name, class, stream).map_err(|e| err(e.to_string()));
        let phi_topic = topic("ingest", meridian_events::DataClass::Phi)?;
        let follower = match feed {
            IndexFeed::Ingest => None,
            IndexFeed::Log => Some(Arc::new(IndexFollower::new(
                index.clone(),
                context.log.clone(),
                context.keys.clone(),
                context.blobs.clone(),
                phi_topic,
            ))),
        };
        let mut derivatives = Derivatives::new(
            name,
            context.platform.clone(),
            writer,
            index.clone(),
            context.log.clone(),
            context.secrets.clone(),
            context.failpoints.clone(),
        )
        .owning(context.ownership);
        if let Some(follower) = &follower {
            // A completed study's instances reach this index through the
            // log too: derivatives wait for them.
            derivatives = derivatives.following(follower.clone());
        }
        let derivatives = Arc::new(derivatives);
        // The assignments fold and the index catch up at once: each waits
        // for the log to stay quiet, which in turn would add up.
        let folding = async {
            let routing = topic("routing", meridian_events::DataClass::Operational)?;
            let mut copies = context.copies_of("routing");
            copies.extend(context.copies_of("storage"));
            let folded = FoldedAssignments::open(
                &routing,
                &copies,
                context.log.as_ref(),
                context.keys.as_ref(),
                context.snapshotter(),
                context.idle,
            )
            .await
            .map_err(|e| err(e.to_string()))?;
            Ok::<_, RegionError>(Arc::new(folded))
        };
        let indexing = async {
            // Serve searches over what the log held at start.
            match &follower {
                Some(follower) => follower.follow(Read::ToEnd(context.idle)).await.map_err(|e| err(e.to_string())),
                None => Ok(0),
            }
        };
        let (folding, indexed) = tokio::join!(folding, indexing);
        let (folded, indexed) = (folding?, indexed?);
        if follower.is_some() {
            tracing::info!(region = %name, instances = indexed, "study index caught up from the log");
        }
        let dicomweb = DicomWeb::new(
            name,
            context.platform.clone(),
            index.clone(),
            context.blobs.clone(),
            context.log.clone(),
            folded.clone(),
        )
        .map_err(|e| err(e.to_string()))?;
        let landed = Arc::new(crate::landed::LandedDerivatives::new(
            name,
            index.clone(),
            context.log.clone(),
            context.blobs.clone(),
            context.copies_of("storage"),
        ));
        let retention = Arc::new(Retention::open(context, index.clone()).await.map_err(|e| err(e.to_string()))?);
        let purges = match &follower {
            Some(_) => Some(Arc::new(
                IndexPurges::new(name, index.clone(), context.log.clone()).map_err(|e| err(e.to_string()))?,
            )),
            None => None,
        };
        let service = StorageService {
            context: context.clone(),
            landed,
            retention,
            purges,
            index,
            dicomweb: Arc::new(dicomweb),
            derivatives,
            folded,
            follower,
        };
        Ok(Arc::new(service))
    }
}

impl RegionService for StorageService {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn grpc<'a>(&'a self, _: &'a mut GrpcRoutes, _: &'a meridian_region::service::Health) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    fn dicomweb(&self) -> Option<axum::Router> {
        Some(self.dicomweb.clone().router())
    }

    fn start(self: Arc<Self>, _: &mut ServiceListeners, stopping: Stopping) -> Vec<Task> {
        let mut tasks = Vec::new();
        // Completed studies' de-identified derivatives, where contracts ask,
        // taken as they complete (one long-lived reader on ingest's topic);
        // never cancelled mid-step: the stop is checked between passes.
        let storage = self.clone();
        // Not a readiness concern: a derivative comes later, and what is
        // served is not wrong meanwhile (an unregistered handle).
        let caught_up = meridian_region::service::CaughtUp::default();
        tasks.push(Task::spawn(
            "derivatives",
            stopping.clone().passes(self.context.name.clone(), "derivatives", caught_up, move || {
                let storage = storage.clone();
                async move { storage.derivatives.intake(DERIVATIVES_WAIT).await.map(|_| ()) }
            }),
        ));
        if let Some(follower) = self.follower.clone() {
            let storage = self.clone();
            let mut last_sync = std::time::Instant::now();
            tasks.push(Task::spawn(
                "study index",
                every(INDEX_FOLLOW, stopping.clone().wait(), move |_| {
                    let (storage, follower) = (storage.clone(), follower.clone());
                    // The index's commits are not synced (the log is the
                    // durable copy); a sync each second bounds the re-read.
                    let sync = last_sync.elapsed() >= Duration::from_secs(1);
                    if sync {
                        last_sync = std::time::Instant::now();
                    }
                    async move {
                        if let Err(e) = follower.follow(Read::Until(Duration::from_millis(50))).await {
                            tracing::warn!(region = %storage.context.name, error = %e, "study index");
                        }
                        if sync && let Err(e) = storage.index.sync() {
                            tracing::warn!(region = %storage.context.name, error = %e, "study index sync");
                        }
                    }
                }),
            ));
        }
        // Other regions' derivatives, indexed as they land (not a readiness
        // concern: a derivative is served once it is indexed).
        let landed = self.landed.clone();
        tasks.push(Task::spawn(
            "derivatives landed",
            stopping.clone().passes(
                self.context.name.clone(),
                "derivatives landed",
                meridian_region::service::CaughtUp::default(),
                move || {
                    let landed = landed.clone();
                    async move { landed.follow(DERIVATIVES_WAIT).await.map(|_| ()) }
                },
            ),
        ));
        // Retention: the fold follows the log; a tick purges what is due.
        let (retention, context) = (self.retention.clone(), self.context.clone());
        let stop = stopping.clone();
        tasks.push(Task::spawn("retention", async move {
            retention.live().follow(context.log.as_ref(), context.keys.as_ref(), stop.wait()).await;
        }));
        let (retention, purges, region) = (self.retention.clone(), self.purges.clone(), self.context.name.clone());
        tasks.push(Task::spawn(
            "purges",
            every(RETENTION_TICK, stopping.clone().wait(), move |now| {
                let (retention, purges, region) = (retention.clone(), purges.clone(), region.clone());
                async move {
                    if let Err(e) = retention.purge_due(now).await {
                        tracing::warn!(%region, error = %e, "purging studies whose retention ended");
                    }
                    if let Some(purges) = purges
                        && let Err(e) = purges.follow(Duration::from_millis(5)).await
                    {
                        tracing::warn!(%region, error = %e, "study index purges");
                    }
                }
            }),
        ));
        let (folded, context) = (self.folded.clone(), self.context.clone());
        tasks.push(Task::spawn("assignments", async move {
            folded.live().follow(context.log.as_ref(), context.keys.as_ref(), stopping.wait()).await;
        }));
        tasks
    }

    fn stop(&self) {
        self.derivatives.stop();
    }

    fn save_snapshots(&self, force: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.folded.live().snapshot(force).await {
                tracing::warn!(region = %self.context.name, error = %e, "saving the assignments snapshot");
            }
            if let Err(e) = self.retention.live().snapshot(force).await {
                tracing::warn!(region = %self.context.name, error = %e, "saving the retention snapshot");
            }
            if force
                && self.follower.is_some()
                && let Err(e) = self.index.sync()
            {
                tracing::warn!(region = %self.context.name, error = %e, "study index sync at shutdown");
            }
        })
    }

    fn projections(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async move {
            let folded = &self.folded;
            let held = folded.live().lock().await.state().assignee.len();
            let retention = self.retention.live();
            let kept = retention.lock().await.state().studies.len();
            vec![
                serde_json::json!({
                    "name": "storage.assignments", "opened": folded.live().opened(),
                    "stats": folded.live().stats().await, "held": held,
                }),
                serde_json::json!({
                    "name": "storage.retention", "opened": retention.opened(),
                    "stats": retention.stats().await, "studies": kept,
                }),
            ]
        })
    }

    fn consumers(&self) -> Vec<serde_json::Value> {
        let mut skips = vec![self.derivatives.skips(), self.landed.skips()];
        if let Some(follower) = &self.follower {
            skips.push(follower.skips());
        }
        skips.into_iter().map(Skips::to_json).collect()
    }

    fn rebuildable(&self) -> &'static [&'static str] {
        &["storage.assignments", "storage.retention"]
    }

    fn rebuild<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Option<Result<meridian_region::service::Rebuilt, String>>> {
        Box::pin(async move {
            let c = &self.context;
            if name == "storage.retention" {
                let live = self.retention.live();
                let rebuilt = match live.rebuild(c.log.as_ref(), c.keys.as_ref(), c.idle).await {
                    Ok(r) => r,
                    Err(e) => return Some(Err(e.to_string())),
                };
                let kept = live.lock().await.state().studies.len();
                let summary = format!("{kept} studies kept until their retention ends");
                return Some(Ok(meridian_region::service::Rebuilt { rebuilt, summary }));
            }
            if name != "storage.assignments" {
                return None;
            }
            let folded = &self.folded;
            let rebuilt = match folded.live().rebuild(c.log.as_ref(), c.keys.as_ref(), c.idle).await {
                Ok(r) => r,
                Err(e) => return Some(Err(e.to_string())),
            };
            let held = folded.live().lock().await.state().assignee.len();
            Some(Ok(meridian_region::service::Rebuilt { rebuilt, summary: format!("{held} studies held") }))
        })
    }
}
