//! Inference as a service of a region's process: a task that follows the
//! log into its state, and a worker that runs the reads that are due (on
//! its tick; a read is never cancelled mid-step: the stop is seen between
//! passes).

use std::sync::Arc;
use std::time::Duration;

use meridian_region::service::{BoxFuture, GrpcRoutes, ServiceListeners};
use meridian_region::{RegionContext, RegionError, RegionService, Stopping, Task};

use meridian_auth::grpc::Authenticate;
use meridian_proto::inference::v1::inference_service_server::InferenceServiceServer;

use crate::adapters::grpc::InferenceGrpc;
use crate::app::{Inference, Opening};

pub struct InferenceService {
    context: Arc<RegionContext>,
    pub inference: Arc<Inference>,
}

/// How often the worker looks for reads that are due.
const TICK: Duration = Duration::from_millis(500);

impl InferenceService {
    /// Loads the models (one that does not load refuses the start) and
    /// opens inference's state from its snapshot and the tail of its topics.
    pub async fn open(context: &Arc<RegionContext>) -> Result<Arc<InferenceService>, RegionError> {
        let inference = Inference::open(Opening {
            region: context.name.clone(),
            platform: context.platform.clone(),
            log: context.log.clone(),
            keys: context.keys.clone(),
            blobs: context.blobs.clone(),
            snapshots: context.snapshotter(),
            idle: context.idle,
            failpoints: context.failpoints.clone(),
        })
        .await
        .map_err(|e| match e {
            e @ crate::app::Error::Runtime(_) => {
                RegionError::Config { region: context.name.clone(), reason: e.to_string() }
            }
            e => context.service_error("inference", e),
        })?;
        tracing::info!(region = %context.name, models = ?inference.models(), "inference opened");
        Ok(Arc::new(InferenceService { context: context.clone(), inference: Arc::new(inference) }))
    }
}

impl RegionService for InferenceService {
    fn name(&self) -> &'static str {
        "inference"
    }

    fn grpc<'a>(
        &'a self,
        routes: &'a mut GrpcRoutes,
        health: &'a meridian_region::service::Health,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let service = InferenceGrpc::new(self.inference.clone(), &self.context.name);
            routes.add_service(InferenceServiceServer::with_interceptor(
                service,
                Authenticate::new(self.context.verifier.clone()),
            ));
            health.serving::<InferenceServiceServer<InferenceGrpc>>().await;
        })
    }

    fn start(self: Arc<Self>, _: &mut ServiceListeners, stopping: Stopping) -> Vec<Task> {
        let inference = self.inference.clone();
        let stop = stopping.clone();
        let follow = async move { inference.follow(stop.wait()).await };
        let worker = async move {
            let stop = stopping.wait();
            tokio::pin!(stop);
            loop {
                let now = meridian_auth::grpc::arrival_time();
                if let Err(e) = self.inference.run_due(now).await {
                    tracing::warn!(region = %self.context.name, error = %e, "running the triage that is due");
                }
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(TICK) => {}
                }
            }
        };
        vec![Task::spawn("inference follows the log", follow), Task::spawn("inference triages", worker)]
    }

    fn save_snapshots(&self, force: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.inference.snapshot(force).await {
                tracing::warn!(region = %self.context.name, error = %e, "saving inference's snapshot");
            }
        })
    }

    fn projections(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async move {
            let (studies, unreadable) =
                self.inference.read_state(|f| (f.state.studies.len(), f.unreadable.clone())).await;
            vec![serde_json::json!({
                "name": "inference.triage", "opened": self.inference.opened(), "stats": self.inference.stats().await,
                "studies": studies, "models": self.inference.models(), "unreadable": unreadable,
            })]
        })
    }
}
