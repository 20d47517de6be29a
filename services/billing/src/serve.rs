//! Billing as a service of a region's process: the ledger's steps over the
//! routing topic as reads are signed, and a tick that prices what could
//! not be priced and snapshots the ledger.

use std::sync::Arc;
use std::time::Duration;

use meridian_region::service::{BoxFuture, GrpcRoutes, ServiceListeners};
use meridian_region::{RegionContext, RegionError, RegionService, Stopping, Task, every};

use meridian_auth::grpc::Authenticate;
use meridian_proto::billing::v1::billing_service_server::BillingServiceServer;

use crate::adapters::grpc::BillingGrpc;
use crate::app::Billing;

/// How long one pass waits for the next routing record before it returns
/// (and is started again): bounds how late a stop is seen.
const PASS_WAIT: Duration = Duration::from_millis(250);
/// How often unpriced reads are tried again and the ledger snapshotted.
const BILLING_TICK: Duration = Duration::from_secs(5);

pub struct BillingService {
    context: Arc<RegionContext>,
    pub billing: Arc<Billing>,
}

impl BillingService {
    /// Opens the ledger from its snapshot and what was committed since.
    pub async fn open(context: &Arc<RegionContext>) -> Result<Arc<BillingService>, RegionError> {
        let billing = Billing::open(
            &context.name,
            &context.platform,
            context.log.clone(),
            context.keys.clone(),
            context.snapshotter(),
            context.failpoints.clone(),
            context.idle,
        )
        .await
        .map_err(|e| context.service_error("billing", e))?;
        Ok(Arc::new(BillingService { context: context.clone(), billing: Arc::new(billing) }))
    }
}

impl RegionService for BillingService {
    fn name(&self) -> &'static str {
        "billing"
    }

    fn inputs(&self) -> Vec<(&'static str, meridian_log::TopicName)> {
        let routing =
            meridian_log::TopicName::new(&self.context.name, meridian_events::DataClass::Operational, "routing");
        routing.ok().map(|t| (crate::app::CONSUMER, t)).into_iter().collect()
    }

    fn grpc<'a>(
        &'a self,
        routes: &'a mut GrpcRoutes,
        health: &'a meridian_region::service::Health,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            routes.add_service(BillingServiceServer::with_interceptor(
                BillingGrpc::new(self.billing.clone()),
                Authenticate::new(self.context.verifier.clone()),
            ));
            health.serving::<BillingServiceServer<BillingGrpc>>().await;
        })
    }

    fn start(self: Arc<Self>, _: &mut ServiceListeners, stopping: Stopping) -> Vec<Task> {
        // Never cancelled mid-step: a step is one commit; the pass ends
        // within PASS_WAIT once the stop is asked.
        let steps = {
            let (service, region) = (self.clone(), self.context.name.clone());
            // Charges and invoices answered before billing read what came
            // in meanwhile would be short: not ready until then.
            let caught_up = self.context.caught_up("billing's intake of routing's events");
            stopping.clone().passes(region, "billing step", caught_up, move || {
                let service = service.clone();
                async move { service.billing.pass(PASS_WAIT).await.map(|_| ()) }
            })
        };
        let ticks = every(BILLING_TICK, stopping.wait(), move |_| {
            let service = self.clone();
            async move {
                if let Err(e) = service.billing.reprice().await {
                    tracing::warn!(region = %service.context.name, error = %e, "pricing unpriced reads");
                }
                service.save_snapshots(false).await;
            }
        });
        vec![Task::spawn("billing steps", steps), Task::spawn("billing ticks", ticks)]
    }

    fn stop(&self) {
        self.billing.stop();
    }

    fn save_snapshots(&self, force: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.billing.snapshot(force).await {
                tracing::warn!(region = %self.context.name, error = %e, "saving billing's snapshot");
            }
        })
    }

    fn projections(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async move {
            let (open_reads, unpriced, unreadable) =
                self.billing.read(|l| (l.reads.len(), l.unpriced.len(), l.unreadable.clone())).await;
            vec![serde_json::json!({
                "name": "billing.ledger", "opened": self.billing.opened(), "stats": self.billing.stats().await,
                "open_reads": open_reads, "unpriced_reads": unpriced, "unreadable": unreadable,
            })]
        })
    }
}
