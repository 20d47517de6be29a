//! Running a region's servers until shutdown.

use std::future::Future;
use std::sync::Arc;

use meridian_auth::grpc::Authenticate;
use meridian_proto::admin::v1::admin_service_server::AdminServiceServer;
use meridian_proto::ingest::v1::ingest_service_server::IngestServiceServer;
use meridian_proto::routing::v1::routing_service_server::RoutingServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::admin::Admin;
use crate::node::Region;

/// The region's listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    /// DIMSE associations (today C-ECHO; ingest adds C-STORE).
    pub dicom: TcpListener,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("region {region}: gRPC server: {reason}")]
    Grpc { region: String, reason: String },
    #[error("region {region}: HTTP server: {source}")]
    Http { region: String, source: std::io::Error },
    #[error("region {region}: stopped: its event log can no longer write: {reason}")]
    LogLost { region: String, reason: String },
}

/// Resolves when the region's log says it can never write again (polled:
/// it is rare and the answer is a stop).
async fn log_lost(region: Arc<Region>) -> String {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        every.tick().await;
        if let Some(reason) = region.log.fatal() {
            return reason;
        }
    }
}

/// Serves gRPC (health, reflection v1 and v1alpha, admin) and HTTP, and
/// follows the log into the region's projections, until `shutdown` resolves.
pub async fn serve(
    region: Arc<Region>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let name = region.name.clone();
    let (stop, stopped) = watch::channel(false);
    let follower = tokio::spawn(region.clone().follow(stopped.clone()));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_service_status("", ServingStatus::Serving).await;
    health.set_serving::<AdminServiceServer<Admin>>().await;
    let grpc_err = |reason: String| ServeError::Grpc { region: name.clone(), reason };
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meridian_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| grpc_err(e.to_string()))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| grpc_err(e.to_string()))?;
    let admin =
        AdminServiceServer::with_interceptor(Admin::new(region.clone()), Authenticate::new(region.verifier.clone()));
    let routing = RoutingServiceServer::with_interceptor(
        meridian_routing::adapters::grpc::RoutingGrpc::new(region.routing.clone()),
        Authenticate::new(region.verifier.clone()),
    );
    health.set_serving::<RoutingServiceServer<meridian_routing::adapters::grpc::RoutingGrpc>>().await;
    let ingest = IngestServiceServer::with_interceptor(
        meridian_ingest::grpc::IngestGrpc::new(region.ingest.clone(), upload_limits(&region)),
        Authenticate::new(region.verifier.clone()),
    );
    health.set_serving::<IngestServiceServer<meridian_ingest::grpc::IngestGrpc>>().await;

    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let grpc = Server::builder()
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .add_service(routing)
        .add_service(ingest)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            wait(stopped.clone()),
        );
    let http =
        axum::serve(listeners.http, crate::http::router(region.clone())).with_graceful_shutdown(wait(stopped.clone()));
    let grpc = tokio::spawn(grpc);
    let http = tokio::spawn(async move { http.await });
    let dicom = tokio::spawn(dicom(region.clone(), listeners.dicom, wait(stopped.clone())));
    let timers = tokio::spawn(routing_timers(region.clone(), wait(stopped.clone())));
    let completion = tokio::spawn(ingest_timers(region.clone(), wait(stopped.clone())));
    let sweeps = tokio::spawn(orphan_sweeps(region.clone(), wait(stopped.clone())));

    // A log that can no longer write (fenced by a newer process) stops the
    // region as a signal would, and the stop is reported as an error so
    // the process exits non-zero and its orchestrator restarts or retires it.
    let lost = tokio::select! {
        () = shutdown => None,
        reason = log_lost(region.clone()) => {
            tracing::error!(region = %name, %reason, "the event log can no longer write: stopping");
            health.set_service_status("", ServingStatus::NotServing).await;
            Some(reason)
        }
    };
    tracing::info!(region = %name, "shutting down");
    // Long passes end at their next step; no step is cut between its
    // commit and its fold.
    region.routing.stop_intake();
    region.derivatives.stop();
    region.ingest.stop_sweep();
    let _ = stop.send(true);
    // Servers and associations get a bounded time to finish: a watch
    // stream or a stuck peer must not keep the process up. Past it they
    // are left to the process's exit (as a crash would, which loses
    // nothing acknowledged), never cancelled mid-step while others run.
    let deadline = tokio::time::Instant::now() + DRAIN;
    let grpc = match drain(grpc, deadline, &name, "gRPC").await {
        Some(Ok(r)) => r.map_err(|e| grpc_err(e.to_string())),
        Some(Err(e)) => Err(grpc_err(e.to_string())),
        None => Ok(()),
    };
    let http = match drain(http, deadline, &name, "HTTP").await {
        Some(Ok(r)) => r.map_err(|source| ServeError::Http { region: name.clone(), source }),
        Some(Err(e)) => Err(grpc_err(e.to_string())),
        None => Ok(()),
    };
    // The ticks finish the step they are on (intake stops at its next
    // one), within the same bound.
    for (task, what) in [
        (follower, "log follower"),
        (dicom, "DICOM"),
        (timers, "routing ticks"),
        (completion, "ingest ticks"),
        (sweeps, "orphan sweep"),
    ] {
        drain(task, deadline, &name, what).await;
    }
    // What was acknowledged is in the log; the snapshots make the next
    // start read only what came after them.
    region.save_snapshots(true).await;
    if let Err(e) = region.index.sync() {
        tracing::warn!(region = %name, error = %e, "study index sync at shutdown");
    }
    tracing::info!(region = %name, "stopped");
    grpc?;
    http?;
    match lost {
        Some(reason) => Err(ServeError::LogLost { region: name, reason }),
        None => Ok(()),
    }
}

/// How long a region's servers and ticks get to finish after shutdown is
/// asked: in-flight instances are acknowledged or not (and then sent
/// again by their peer); nothing acknowledged depends on this.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Awaits `task` until `deadline`. `None` when it is still running then:
/// it is not cancelled (a write path cut between its append and its fold
/// would leave others deciding against a stale state) but left to end
/// with the process.
async fn drain<T>(
    task: tokio::task::JoinHandle<T>,
    deadline: tokio::time::Instant,
    region: &str,
    what: &str,
) -> Option<Result<T, tokio::task::JoinError>> {
    match tokio::time::timeout_at(deadline, task).await {
        Ok(done) => Some(done),
        Err(_) => {
            tracing::warn!(%region, what, "still running at the shutdown deadline: left to the exit");
            None
        }
    }
}

fn upload_limits(region: &Region) -> meridian_ingest::grpc::UploadLimits {
    let config = region.platform.regions.get(&region.name);
    meridian_ingest::grpc::UploadLimits { max_instance_bytes: config.map_or(1 << 30, |r| r.dicom.max_instance_bytes) }
}

/// Accepts DICOM associations until `shutdown`; each is served on its own
/// task, at most the region's `dicom.max_associations` at once. One more is
/// refused at once (transient), not queued.
async fn dicom(region: Arc<Region>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let config = region.platform.regions.get(&region.name).map(|r| r.dicom.clone()).unwrap_or_default();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_associations as usize));
    let limits = meridian_dimse::Limits {
        max_pdu_length: config.max_pdu_length,
        idle_timeout: std::time::Duration::from_secs(config.idle_timeout.seconds),
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
                    tracing::warn!(region = %region.name, error = %e, "accepting a DICOM connection");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(region = %region.name, %peer, "DICOM association refused: at the association limit");
            tokio::spawn(async move {
                if let Err(e) = meridian_dimse::refuse_busy(socket, peer).await {
                    tracing::info!(error = %e, "refusing a busy association");
                }
            });
            continue;
        };
        let (region, limits) = (region.clone(), limits.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let store: &dyn meridian_dimse::StoreService = region.ingest.as_ref();
            match meridian_dimse::accept(socket, peer, &region.name, region.platform.clone(), &limits, Some(store))
                .await
            {
                Ok(served) => tracing::info!(
                    region = %region.name,
                    subject = %served.principal.subject,
                    echoes = served.echoes,
                    stores = served.stores,
                    stored = served.stored,
                    released = served.released,
                    "association ended"
                ),
                Err(e) => tracing::info!(region = %region.name, error = %e, "association"),
            }
        });
    }
}

/// How often ingest looks for studies quiet for their period.
const INGEST_TICK: std::time::Duration = std::time::Duration::from_secs(1);

/// How often routing takes in completed studies and runs its timers
/// (escalations, SLA breaches) and push assignment.
const ROUTING_TICK: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `work` with the wall clock's time every `period` until `shutdown`.
async fn every<F, Fut>(period: std::time::Duration, shutdown: impl Future<Output = ()>, mut work: F)
where
    F: FnMut(meridian_events::UnixMicros) -> Fut,
    Fut: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(period);
    // A pass longer than the period is followed by one tick, not a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        #[allow(clippy::disallowed_methods)] // the edge: the timers' clock
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        // A pass runs to its end: long ones (intake) stop at their next
        // step when the region stops, never between a commit and its fold.
        work(meridian_events::UnixMicros(now.as_micros() as i64)).await;
    }
}

/// Sweeps objects no event names every `[housekeeping]
/// orphan_sweep_every` until `shutdown`, on its own timer so a long sweep
/// delays neither completion nor acknowledgements.
async fn orphan_sweeps(region: Arc<Region>, shutdown: impl Future<Output = ()>) {
    let config = region.platform.regions.get(&region.name).map(|r| r.housekeeping.clone()).unwrap_or_default();
    let period = std::time::Duration::from_secs(config.orphan_sweep_every.seconds.max(1));
    let grace = std::time::Duration::from_secs(config.orphan_grace.seconds);
    let mut first = true;
    every(period, shutdown, |now| {
        let region = region.clone();
        // The interval's first tick is at once: the first sweep waits a period.
        let skip = std::mem::replace(&mut first, false);
        async move {
            if skip {
                return;
            }
            let started = std::time::Instant::now();
            match region.ingest.sweep(now, grace).await {
                Ok(deleted) => tracing::debug!(
                    region = %region.name,
                    deleted,
                    ms = started.elapsed().as_millis() as u64,
                    "orphan sweep"
                ),
                Err(e) => tracing::warn!(region = %region.name, error = %e, "ingest sweep"),
            }
        }
    })
    .await
}

/// Completes quiet studies, takes derivatives and snapshots every
/// [`INGEST_TICK`] until `shutdown`.
async fn ingest_timers(region: Arc<Region>, shutdown: impl Future<Output = ()>) {
    every(INGEST_TICK, shutdown, |now| {
        let region = region.clone();
        async move {
            if let Err(e) = region.ingest.complete_quiet(now).await {
                tracing::warn!(region = %region.name, error = %e, "ingest completion");
            }
            // Completed studies' de-identified derivatives, where contracts ask.
            if let Err(e) = region.derivatives.intake(std::time::Duration::from_millis(20)).await {
                tracing::warn!(region = %region.name, error = %e, "derivatives");
            }
            region.save_snapshots(false).await;
            // The index's own commits are not synced (the log is the
            // durable copy); syncing each second bounds the catch-up.
            if let Err(e) = region.index.sync() {
                tracing::warn!(region = %region.name, error = %e, "study index sync");
            }
        }
    })
    .await
}

/// Fires routing's timers and push assignment every [`ROUTING_TICK`] until
/// `shutdown`. Timer events carry ids derived from (study, timer,
/// deadline), so a tick repeated after a restart appends nothing twice.
async fn routing_timers(region: Arc<Region>, shutdown: impl Future<Output = ()>) {
    use meridian_routing::app::Cause;
    use meridian_routing::domain::worklist::Command;
    every(ROUTING_TICK, shutdown, |now| {
        let region = region.clone();
        async move {
            // Completed studies first, so they are assigned on this tick.
            if let Err(e) = region.routing.intake(std::time::Duration::from_millis(20)).await {
                tracing::warn!(region = %region.name, error = %e, "routing intake");
            }
            for command in [Command::Tick, Command::AssignPending] {
                if let Err(e) = region.routing.execute(command, now, Cause::Timer).await {
                    tracing::warn!(region = %region.name, error = %e, "routing timers");
                }
            }
        }
    })
    .await
}
