//! Ingest as a service of a region's process: the DICOM port (C-ECHO,
//! C-STORE), STOW-RS under `/dicomweb`, `meridian.ingest.v1`, and its
//! ticks: studies completed after their quiet period, orphaned objects
//! swept.
//!
//! Ingest writes a study index before it acknowledges (to recognise the
//! same bytes again and to reopen a completed study): the storage
//! service's own where both run in one process, its own copy otherwise.

use std::sync::Arc;
use std::time::Duration;

use meridian_auth::grpc::Authenticate;
use meridian_events::UnixMicros;
use meridian_proto::ingest::v1::ingest_replica_service_server::IngestReplicaServiceServer;
use meridian_proto::ingest::v1::ingest_service_server::IngestServiceServer;
use meridian_region::service::{BoxFuture, GrpcRoutes, Rebuilt, ServiceListeners, rebuild_if};
use meridian_region::{RegionContext, RegionError, RegionService, Stopping, Task, every};
use meridian_storage::index::StudyIndex;
use meridian_storage::phi::PhiWriter;
use tokio::net::TcpListener;

use crate::app::{Ingest, IngestOptions};
use crate::grpc::{IngestGrpc, ReplicaGrpc, UploadLimits};
use crate::replicas::Replicas;

/// How often ingest looks for studies quiet for their period.
const INGEST_TICK: Duration = Duration::from_secs(1);

pub struct IngestService {
    context: Arc<RegionContext>,
    pub ingest: Arc<Ingest>,
    index: Arc<StudyIndex>,
    /// The region's purges, followed into this index (a no-op where
    /// storage, in this process, purged it already).
    purges: meridian_storage::retention::IndexPurges,
}

impl IngestService {
    /// Opens ingest's studies from their snapshot and tail, and catches
    /// `index` up with the log.
    pub async fn open(context: &Arc<RegionContext>, index: Arc<StudyIndex>) -> Result<Arc<IngestService>, RegionError> {
        let phi = PhiWriter::new(&context.name, context.platform.clone(), context.blobs.clone(), context.log.clone());
        let replicas = if context.ownership.replicas > 1 {
            let partitions = context.config().log.partitions();
            let replicas = Replicas::new(context.ownership, partitions, &context.peers, context.service_key.clone())
                .map_err(|e| context.service_error("ingest", e))?;
            Some(Arc::new(replicas))
        } else {
            None
        };
        let options = IngestOptions {
            secrets: context.secrets.clone(),
            failpoints: context.failpoints.clone(),
            snapshots: context.snapshotter(),
            replicas,
        };
        let ingest = Ingest::open(
            &context.name,
            context.platform.clone(),
            phi,
            index.clone(),
            context.log.clone(),
            context.keys.clone(),
            context.idle,
            options,
        )
        .await
        .map_err(|e| context.service_error("ingest", e))?;
        let purges = meridian_storage::retention::IndexPurges::new(&context.name, index.clone(), context.log.clone())
            .map_err(|e| context.service_error("ingest", e))?
            .forgetting_keys(context.keys.clone());
        Ok(Arc::new(IngestService { context: context.clone(), ingest: Arc::new(ingest), index, purges }))
    }

    fn limits(&self) -> &meridian_config::DicomLimits {
        &self.context.config().dicom
    }
}

impl RegionService for IngestService {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn grpc<'a>(
        &'a self,
        routes: &'a mut GrpcRoutes,
        health: &'a meridian_region::service::Health,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let limits = UploadLimits { max_instance_bytes: self.limits().max_instance_bytes };
            routes.add_service(IngestServiceServer::with_interceptor(
                IngestGrpc::new(self.ingest.clone(), limits),
                Authenticate::new(self.context.verifier.clone()),
            ));
            health.serving::<IngestServiceServer<IngestGrpc>>().await;
            if self.ingest.replicas().is_some() {
                // Authenticated by the region's service key, not a token.
                routes.add_service(IngestReplicaServiceServer::new(ReplicaGrpc::new(self.ingest.clone())));
                health.serving::<IngestReplicaServiceServer<ReplicaGrpc>>().await;
            }
        })
    }

    fn dicomweb(&self) -> Option<axum::Router> {
        let max_request_bytes = self.context.config().dicomweb.max_request_bytes;
        let limits =
            crate::stow::StowLimits { max_instance_bytes: self.limits().max_instance_bytes, max_request_bytes };
        Some(crate::stow::router(self.ingest.clone(), limits))
    }

    fn start(self: Arc<Self>, listeners: &mut ServiceListeners, stopping: Stopping) -> Vec<Task> {
        let mut tasks = Vec::new();
        if let Some(listener) = listeners.dicom.take() {
            let tls = listeners.tls.clone();
            tasks.push(Task::spawn("DICOM", dicom(self.clone(), listener, tls, stopping.clone().wait())));
        }
        let service = self.clone();
        tasks.push(Task::spawn(
            "ingest ticks",
            every(INGEST_TICK, stopping.clone().wait(), move |now| {
                let service = service.clone();
                async move { service.tick(now).await }
            }),
        ));
        tasks.push(Task::spawn("orphan sweep", orphan_sweeps(self, stopping.wait())));
        tasks
    }

    fn stop(&self) {
        self.ingest.stop_sweep();
    }

    fn save_snapshots(&self, force: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.ingest.snapshot(force).await {
                tracing::warn!(region = %self.context.name, error = %e, "saving ingest's snapshot");
            }
            if force && let Err(e) = self.index.sync() {
                tracing::warn!(region = %self.context.name, error = %e, "study index sync at shutdown");
            }
        })
    }

    fn projections(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async move {
            let (open, closed) = self.ingest.read(|s| (s.open.len(), s.closed.len())).await;
            vec![serde_json::json!({
                "name": "ingest.studies", "opened": self.ingest.opened(), "stats": self.ingest.stats().await,
                "open_studies": open, "closed_studies": closed,
            })]
        })
    }

    fn consumers(&self) -> Vec<serde_json::Value> {
        vec![self.ingest.index_skips().to_json()]
    }

    fn rebuildable(&self) -> &'static [&'static str] {
        &["ingest.studies"]
    }

    fn rebuild<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Result<Rebuilt, String>>> {
        Box::pin(rebuild_if(name, "ingest.studies", self.ingest.rebuild(self.context.idle), async {
            let (open, closed) = self.ingest.read(|s| (s.open.len(), s.closed.len())).await;
            format!("{open} open studies, {closed} completed")
        }))
    }
}

impl IngestService {
    /// Completes quiet studies, snapshots, and syncs the index.
    async fn tick(&self, now: UnixMicros) {
        let region = &self.context.name;
        if let Err(e) = self.ingest.complete_quiet(now).await {
            tracing::warn!(%region, error = %e, "ingest completion");
        }
        if let Err(e) = self.ingest.snapshot(false).await {
            tracing::warn!(%region, error = %e, "saving ingest's snapshot");
        }
        // A purged study is forgotten here too: its instances, sent again,
        // are new, not already stored.
        if let Err(e) = self.purges.follow(Duration::from_millis(5)).await {
            tracing::warn!(%region, error = %e, "study index purges");
        }
        // The index's own commits are not synced (the log is the durable
        // copy); syncing each second bounds the catch-up.
        if let Err(e) = self.index.sync() {
            tracing::warn!(%region, error = %e, "study index sync");
        }
    }
}

/// Accepts DICOM associations until `shutdown`; each is served on its own
/// task, at most the region's `dicom.max_associations` at once. One more is
/// refused at once (transient), not queued.
async fn dicom(
    service: Arc<IngestService>,
    listener: TcpListener,
    tls: Option<meridian_region::tls::ServerTls>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let region = service.context.name.clone();
    let config = service.limits().clone();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_associations as usize));
    let limits = meridian_dimse::Limits {
        max_pdu_length: config.max_pdu_length,
        idle_timeout: Duration::from_secs(config.idle_timeout.seconds),
        max_instance_bytes: usize::try_from(config.max_instance_bytes).unwrap_or(usize::MAX),
    };
    tokio::pin!(shutdown);
    loop {
        let (socket, peer) = tokio::select! {
            () = &mut shutdown => {
                // Associations in flight finish (the caller bounds the wait):
                // every slot back means every association ended.
                let _ = slots.acquire_many(config.max_associations).await;
                return;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(%region, error = %e, "accepting a DICOM connection");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%region, %peer, "DICOM association refused: at the association limit");
            if tls.is_some() {
                // A TLS peer reads no plaintext refusal: closed, it tries again.
                continue;
            }
            tokio::spawn(async move {
                if let Err(e) = meridian_dimse::refuse_busy(socket, peer).await {
                    tracing::info!(error = %e, "refusing a busy association");
                }
            });
            continue;
        };
        let (service, limits, region, tls) = (service.clone(), limits.clone(), region.clone(), tls.clone());
        let span = meridian_telemetry::dicom_association(&region, peer, tls.is_some());
        let association = async move {
            let _slot = slot;
            let store: &dyn meridian_dimse::StoreService = service.ingest.as_ref();
            let platform = service.context.platform.clone();
            let authenticator = service.context.verifier.clone();
            let tls = match tls.as_ref().map(|t| t.for_association()).transpose() {
                Ok(tls) => tls,
                Err(e) => {
                    tracing::error!(%region, %peer, error = %e, "no TLS configuration for the association");
                    return;
                }
            };
            match meridian_dimse::accept(socket, peer, &region, platform, authenticator, &limits, Some(store), tls)
                .await
            {
                Ok(served) => tracing::info!(
                    %region,
                    subject = %served.principal.subject,
                    echoes = served.echoes,
                    stores = served.stores,
                    stored = served.stored,
                    released = served.released,
                    "association ended"
                ),
                Err(e) => tracing::info!(%region, error = %e, "association"),
            }
        };
        tokio::spawn(tracing::Instrument::instrument(association, span));
    }
}

/// Sweeps objects no event names every `[housekeeping]
/// orphan_sweep_every` until `shutdown`, on its own timer so a long sweep
/// delays neither completion nor acknowledgements.
async fn orphan_sweeps(service: Arc<IngestService>, shutdown: impl std::future::Future<Output = ()>) {
    let config = service.context.config().housekeeping.clone();
    let period = Duration::from_secs(config.orphan_sweep_every.seconds.max(1));
    let grace = Duration::from_secs(config.orphan_grace.seconds);
    let mut first = true;
    every(period, shutdown, |now| {
        let service = service.clone();
        // The interval's first tick is at once: the first sweep waits a period.
        let skip = std::mem::replace(&mut first, false);
        async move {
            if skip {
                return;
            }
            let started = std::time::Instant::now();
            match service.ingest.sweep(now, grace).await {
                Ok(deleted) => tracing::debug!(
                    region = %service.context.name,
                    deleted,
                    ms = started.elapsed().as_millis() as u64,
                    "orphan sweep"
                ),
                Err(e) => tracing::warn!(region = %service.context.name, error = %e, "ingest sweep"),
            }
        }
    })
    .await
}
