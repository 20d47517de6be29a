//! Reporting as a service of a region's process: the gRPC service, and a
//! task that follows the log into reporting's state (routing's moves and
//! its own events), snapshotting as it goes.

use std::sync::Arc;

use meridian_audit::Audit;
use meridian_auth::grpc::Authenticate;
use meridian_proto::reporting::v1::reporting_service_server::ReportingServiceServer;
use meridian_region::service::{BoxFuture, GrpcRoutes, ServiceListeners};
use meridian_region::{RegionContext, RegionError, RegionService, Stopping, Task};

use std::time::Duration;

use crate::adapters::grpc::ReportingGrpc;
use crate::adapters::orders::OrderDesk;
use crate::adapters::receivers::Receivers;
use crate::app::Reporting;

pub struct ReportingService {
    context: Arc<RegionContext>,
    pub reporting: Arc<Reporting>,
    audit: Arc<Audit>,
    receivers: Arc<Receivers>,
    orders: Arc<OrderDesk>,
}

/// How often the delivery worker looks for what is due.
const DELIVERY_TICK: Duration = Duration::from_secs(1);

impl ReportingService {
    /// Opens reporting's state from its snapshot and the tail of its topics.
    pub async fn open(context: &Arc<RegionContext>) -> Result<Arc<ReportingService>, RegionError> {
        let reporting = Reporting::open(
            &context.name,
            context.platform.clone(),
            context.log.clone(),
            context.keys.clone(),
            context.snapshotter(),
            context.idle,
            context.failpoints.clone(),
        )
        .await
        .map_err(|e| context.service_error("reporting", e))?
        .with_secrets(context.secrets.clone());
        let audit = Audit::new(&context.name, context.log.clone())
            .map_err(|e| context.service_error("reporting", e))?
            .with_reader_regions(context.platform.reader_regions());
        let receivers =
            Receivers::new(context.delivery_tokens.clone()).map_err(|e| context.service_error("reporting", e))?;
        let reporting = Arc::new(reporting);
        Ok(Arc::new(ReportingService {
            orders: OrderDesk::new(
                reporting.clone(),
                context.platform.clone(),
                &context.name,
                context.verifier.clone(),
            ),
            context: context.clone(),
            reporting,
            audit: Arc::new(audit),
            receivers: Arc::new(receivers),
        }))
    }
}

impl RegionService for ReportingService {
    fn name(&self) -> &'static str {
        "reporting"
    }

    fn grpc<'a>(
        &'a self,
        routes: &'a mut GrpcRoutes,
        health: &'a meridian_region::service::Health,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let service = ReportingGrpc::new(self.reporting.clone(), self.context.platform.clone(), self.audit.clone());
            routes.add_service(ReportingServiceServer::with_interceptor(
                service,
                Authenticate::new(self.context.verifier.clone()),
            ));
            health.serving::<ReportingServiceServer<ReportingGrpc>>().await;
        })
    }

    fn fhir(&self) -> Option<axum::Router> {
        Some(self.orders.clone().fhir_routes())
    }

    fn start(self: Arc<Self>, listeners: &mut ServiceListeners, stopping: Stopping) -> Vec<Task> {
        let mut tasks = Vec::new();
        // HL7 v2 orders, where this process has the MLLP port.
        if let Some(mllp) = listeners.mllp.take() {
            let (orders, stop, tls) = (self.orders.clone(), stopping.clone(), listeners.tls.clone());
            tasks.push(Task::spawn("reporting takes HL7 orders", orders.listen(mllp, tls, stop.wait())));
        }
        let reporting = self.reporting.clone();
        let stop = stopping.clone();
        let follow = async move { reporting.follow(stop.wait()).await };
        // Escalates critical results past their window, and sends what is
        // due, at once when a delivery is requested, else on the tick
        // (retries); a send is never cancelled mid-frame: the stop is seen
        // between passes.
        let deliveries = async move {
            let stop = stopping.wait();
            tokio::pin!(stop);
            loop {
                let now = meridian_auth::grpc::arrival_time();
                if let Err(e) = self.reporting.escalate_due(now).await {
                    tracing::warn!(region = %self.context.name, error = %e, "escalating critical results");
                }
                if let Err(e) = self.reporting.match_orders(now).await {
                    tracing::warn!(region = %self.context.name, error = %e, "matching orders to their studies");
                }
                if let Err(e) = self.reporting.deliver_due(&self.receivers, now).await {
                    tracing::warn!(region = %self.context.name, error = %e, "delivering reports");
                }
                tokio::select! {
                    () = &mut stop => break,
                    () = self.reporting.wait_for_requests(DELIVERY_TICK) => {}
                }
            }
        };
        tasks.push(Task::spawn("reporting follows the log", follow));
        tasks.push(Task::spawn("reporting delivers", deliveries));
        tasks
    }

    fn stop(&self) {}

    fn save_snapshots(&self, force: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.reporting.snapshot(force).await {
                tracing::warn!(region = %self.context.name, error = %e, "saving reporting's snapshot");
            }
        })
    }

    fn projections(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async move {
            let (studies, unreadable) = self.reporting.read(|f| (f.state.studies.len(), f.unreadable.clone())).await;
            vec![serde_json::json!({
                "name": "reporting.reports", "opened": self.reporting.opened(), "stats": self.reporting.stats().await,
                "studies": studies, "unreadable": unreadable,
            })]
        })
    }
}
