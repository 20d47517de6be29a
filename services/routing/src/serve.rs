//! Routing as a service of a region's process: the worklist's gRPC API,
//! the readers the configuration names (registered once), the intake of
//! completed studies and the timers (escalations, SLA breaches, push
//! assignment).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use meridian_auth::grpc::Authenticate;
use meridian_events::UnixMicros;
use meridian_proto::routing::v1::routing_service_server::RoutingServiceServer;
use meridian_region::service::{BoxFuture, GrpcRoutes, Rebuilt, ServiceListeners, rebuild_if};
use meridian_region::{RegionContext, RegionError, RegionService, Stopping, Task, every};

use crate::adapters::grpc::RoutingGrpc;
use crate::app::{Cause, Routing};
use crate::domain::worklist::Command;

/// How often routing runs its timers (escalations, SLA breaches) and push
/// assignment (readers come on shift, capacity frees up).
const ROUTING_TICK: Duration = Duration::from_secs(5);

/// How long one intake pass waits for the next input before it returns
/// (and is started again): bounds how late a stop is seen.
const INTAKE_WAIT: Duration = Duration::from_millis(250);

pub struct RoutingService {
    context: Arc<RegionContext>,
    pub routing: Arc<Routing>,
}

impl RoutingService {
    /// Opens the worklist from its snapshot and tail and registers the
    /// configured readers it does not know yet; `now` stamps those events.
    pub async fn open(context: &Arc<RegionContext>, now: UnixMicros) -> Result<Arc<RoutingService>, RegionError> {
        let err = |reason: String| context.service_error("routing", reason);
        let policy = crate::adapters::config::policy(&context.platform);
        let routing = Routing::open(
            &context.name,
            context.copies_of("routing"),
            context.log.clone(),
            context.keys.clone(),
            policy,
            context.idle,
            context.snapshotter(),
        )
        .await
        .map_err(|e| err(e.to_string()))?
        .only_its_readers();
        let service = RoutingService { context: context.clone(), routing: Arc::new(routing) };
        service.register_readers(now).await.map_err(err)?;
        queue_gauges(&context.name, &service.routing);
        Ok(Arc::new(service))
    }

    /// Every configured reader who sits in this region becomes a
    /// ReaderRegistered event here at first start; afterwards they change
    /// through this region's routing API. The other regions learn them
    /// from the copies of this region's routing topic (the replicator's),
    /// so a change made here reaches every region whose studies they read.
    /// Event ids come from an idempotency key, so a registration repeated
    /// after a crash, or by a second process, is recognised as the same
    /// events.
    async fn register_readers(&self, now: UnixMicros) -> Result<(), String> {
        let known: BTreeSet<String> = self.routing.read(|s| s.readers.keys().cloned().collect()).await;
        let mut commands = Vec::new();
        for group in self.context.platform.groups.values() {
            let here = group.readers.iter().filter(|r| r.region == self.context.name);
            for reader in here.filter(|r| !known.contains(&r.id)) {
                let registered = crate::adapters::config::reader(&group.name, reader)
                    .map_err(|e| format!("reader {}: {e}", reader.id))?;
                let key = format!("bootstrap/reader/{}", reader.id);
                let cause = Cause::Request { tenant: "platform".into(), idempotency_key: key };
                commands.push((Command::RegisterReader(registered), cause));
            }
        }
        if commands.is_empty() {
            return Ok(());
        }
        tracing::info!(region = %self.context.name, readers = commands.len(), "registering configured readers");
        self.routing.execute_all(commands, now).await.map_err(|e| e.to_string())?;
        // The worklist includes the readers just registered.
        self.routing.catch_up(self.context.idle).await.map_err(|e| e.to_string())
    }
}

impl RoutingService {
    /// Offers pending studies to readers (push contracts).
    async fn assign_pending(&self) {
        #[allow(clippy::disallowed_methods)] // the edge: push assignment's clock
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let now = UnixMicros(now.as_micros() as i64);
        if let Err(e) = self.routing.execute(Command::AssignPending, now, Cause::Timer).await {
            tracing::warn!(region = %self.context.name, error = %e, "push assignment");
        }
    }
}

impl RegionService for RoutingService {
    fn name(&self) -> &'static str {
        "routing"
    }

    fn grpc<'a>(
        &'a self,
        routes: &'a mut GrpcRoutes,
        health: &'a meridian_region::service::Health,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            routes.add_service(RoutingServiceServer::with_interceptor(
                RoutingGrpc::new(self.routing.clone()),
                Authenticate::new(self.context.verifier.clone()),
            ));
            health.serving::<RoutingServiceServer<RoutingGrpc>>().await;
        })
    }

    fn start(self: Arc<Self>, _: &mut ServiceListeners, stopping: Stopping) -> Vec<Task> {
        // Completed studies are taken in as they arrive (one long-lived
        // reader waits on ingest's topic), and pushed to a reader at once.
        // Never cancelled mid-step (a step is a commit and its fold): the
        // pass ends within INTAKE_WAIT once the stop is asked.
        let intake = {
            let (service, region) = (self.clone(), self.context.name.clone());
            // A worklist served before intake read what came in meanwhile
            // would miss those studies: not ready until then.
            let caught_up = self.context.caught_up("routing's intake of completed studies and signed reads");
            stopping.clone().passes(region, "routing intake", caught_up, move || {
                let service = service.clone();
                async move {
                    if service.routing.intake(INTAKE_WAIT).await? > 0 {
                        service.assign_pending().await;
                    }
                    Ok::<_, crate::app::Error>(())
                }
            })
        };
        // Other regions' readers and the studies they show this region's
        // readers arrive as copies of their routing topics; a reader who
        // came on may take a pending study at once.
        let copies = {
            let (service, region) = (self.clone(), self.context.name.clone());
            let caught_up = self.context.caught_up("routing's copies of other regions' readers and studies");
            stopping.clone().passes(region, "routing copies", caught_up, move || {
                let service = service.clone();
                async move {
                    if service.routing.follow_copies(INTAKE_WAIT).await? > 0 {
                        service.assign_pending().await;
                    }
                    Ok::<_, crate::app::Error>(())
                }
            })
        };
        // Timer events carry ids derived from (study, timer, deadline), so
        // a tick repeated after a restart appends nothing twice.
        let timers = every(ROUTING_TICK, stopping.wait(), move |now| {
            let service = self.clone();
            async move {
                if let Err(e) = service.routing.execute(Command::Tick, now, Cause::Timer).await {
                    tracing::warn!(region = %service.context.name, error = %e, "routing timers");
                }
                service.assign_pending().await;
                service.save_snapshots(false).await;
            }
        });
        vec![
            Task::spawn("routing intake", intake),
            Task::spawn("routing copies", copies),
            Task::spawn("routing ticks", timers),
        ]
    }

    fn stop(&self) {
        self.routing.stop_intake();
    }

    fn save_snapshots(&self, force: bool) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.routing.snapshot(force).await {
                tracing::warn!(region = %self.context.name, error = %e, "saving routing's snapshot");
            }
        })
    }

    fn projections(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async move {
            let studies = self.routing.read(|s| s.studies.len()).await;
            vec![serde_json::json!({
                "name": "routing.worklist", "opened": self.routing.opened(),
                "stats": self.routing.stats().await, "studies": studies,
            })]
        })
    }

    fn consumers(&self) -> Vec<serde_json::Value> {
        vec![self.routing.intake_skips().to_json()]
    }

    fn inputs(&self) -> Vec<(&'static str, meridian_log::TopicName)> {
        crate::app::intake_topics(&self.context.name).into_iter().map(|t| (crate::app::INTAKE, t)).collect()
    }

    fn rebuildable(&self) -> &'static [&'static str] {
        &["routing.worklist"]
    }

    fn rebuild<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Result<Rebuilt, String>>> {
        Box::pin(rebuild_if(name, "routing.worklist", self.routing.rebuild(self.context.idle), async {
            let (readers, studies) = self.routing.read(|s| (s.readers.len(), s.studies.len())).await;
            format!("{readers} readers, {studies} studies")
        }))
    }
}

/// The worklist's depth, SLA risk and breaches per priority, as gauges read
/// at each metrics export. A read that finds the worklist busy reports what
/// the last one saw.
fn queue_gauges(region: &str, routing: &Arc<Routing>) {
    use meridian_telemetry::metrics::gauge;
    use opentelemetry::KeyValue;
    type Last = std::sync::Mutex<Vec<(&'static str, crate::domain::worklist::Standing)>>;
    let last: Arc<Last> = Arc::default();
    let read = {
        let (routing, last) = (Arc::downgrade(routing), last.clone());
        move || {
            let mut kept = last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(standing) = routing.upgrade().and_then(|r| r.standing_now()) {
                *kept = standing.into_iter().map(|(p, s)| (p.as_str(), s)).collect();
            }
            kept.clone()
        }
    };
    let read = Arc::new(read);
    for (name, description, pick) in [
        ("meridian.routing.queue.depth", "Studies waiting for a reader, by priority", 0),
        ("meridian.routing.sla.at_risk", "Studies past an escalation of their SLA, not yet breached, by priority", 1),
        ("meridian.routing.sla.breached", "Studies past their deadline, by priority", 2),
    ] {
        let (read, region) = (read.clone(), region.to_owned());
        gauge(name, description, "{study}", move || {
            read()
                .into_iter()
                .map(|(priority, s)| {
                    let value = [s.queued, s.at_risk, s.breached][pick];
                    let attributes = vec![
                        KeyValue::new("meridian.region", region.clone()),
                        KeyValue::new("meridian.priority", priority),
                    ];
                    (value, attributes)
                })
                .collect()
        });
    }
}
