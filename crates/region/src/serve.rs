//! Running a region's servers until shutdown.

use std::future::Future;
use std::sync::Arc;

use meridian_auth::grpc::Authenticate;
use meridian_proto::admin::v1::admin_service_server::AdminServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use tokio_stream::StreamExt;

use crate::admin::Admin;
use crate::node::Region;
use crate::service::{Health, ServiceListeners, Stopping};
use crate::tls::{ServerTls, TlsListener};

/// The process's listeners for a region, bound by the caller (tests bind
/// port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
    /// DIMSE associations: taken by ingest, where this process runs it.
    pub dicom: Option<TcpListener>,
    /// HL7 v2 orders over MLLP: taken by reporting, where this process runs it.
    pub mllp: Option<TcpListener>,
    /// The region's certificate: gRPC and HTTP speak TLS only when given.
    pub tls: Option<ServerTls>,
    /// Pages this process serves on the HTTP port under `/room` (the
    /// reading room), beside the region's own routes.
    pub room: Option<axum::Router>,
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

/// How often readiness is probed while ready, and while not (a process
/// catching up at start is ready a moment after it has).
const PROBE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
const PROBE_UNREADY_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Probes the log, the object store and the consumers' first reads to the
/// log's end until `shutdown`: gRPC health says NOT_SERVING (and `/readyz`
/// 503 with the reasons) while any is wanting, SERVING once none is.
async fn readiness(region: Arc<Region>, health: Health, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut ready = None;
    let mut last_lag: Option<tokio::time::Instant> = None;
    loop {
        let reasons = region.probe().await;
        let now_ready = reasons.is_empty();
        // Lag asks the log for committed positions: only while it answers,
        // and not on every probe.
        if now_ready && last_lag.is_none_or(|at| at.elapsed() >= LAG_EVERY) {
            region.measure_lag().await;
            last_lag = Some(tokio::time::Instant::now());
        }
        if ready != Some(now_ready) {
            match ready {
                None if now_ready => tracing::info!(region = %region.name, "ready"),
                Some(false) if now_ready => tracing::info!(region = %region.name, "ready again"),
                _ => tracing::warn!(region = %region.name, ?reasons, "not ready"),
            }
            health.set_all(now_ready).await;
            region.set_ready(now_ready);
            ready = Some(now_ready);
        }
        let every = if now_ready { PROBE_EVERY } else { PROBE_UNREADY_EVERY };
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// How often consumers' lag is measured.
const LAG_EVERY: std::time::Duration = std::time::Duration::from_secs(15);

/// Each consumer's lag as a gauge, read from the last measure.
fn lag_gauge(region: &Arc<Region>) {
    use opentelemetry::KeyValue;
    let (region, name) = (Arc::downgrade(region), region.name.clone());
    meridian_telemetry::metrics::gauge(
        "meridian.consumer.lag",
        "Records the region's follower has read past a consumer's committed position",
        "{record}",
        move || {
            let Some(region) = region.upgrade() else { return Vec::new() };
            region
                .lag()
                .into_iter()
                .map(|l| {
                    let attributes = vec![
                        KeyValue::new("meridian.region", name.clone()),
                        KeyValue::new("messaging.consumer.group.name", l.consumer),
                        KeyValue::new("messaging.destination.name", l.topic),
                    ];
                    (l.records, attributes)
                })
                .collect()
        },
    );
}

/// A gRPC call's span, continuing the caller's `traceparent`; none for
/// health checks and reflection, which a probe sends every few seconds.
fn grpc_span(request: &axum::http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    if path.starts_with("/grpc.") {
        return tracing::Span::none();
    }
    let traceparent = request.headers().get(meridian_telemetry::TRACEPARENT).and_then(|v| v.to_str().ok());
    meridian_telemetry::grpc_server(path, traceparent)
}

/// Serves gRPC (health, reflection v1 and v1alpha, admin and each
/// service's own) and HTTP, starts each service's tasks and follows the log
/// into the summary, until `shutdown` resolves.
pub async fn serve(
    region: Arc<Region>,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let name = region.name.clone();
    let (stop, stopped) = watch::channel(false);
    let follower = tokio::spawn(region.clone().follow(stopped.clone()));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter.set_service_status("", ServingStatus::Serving).await;
    let health = Health::new(reporter);
    health.serving::<AdminServiceServer<Admin>>().await;
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
    let mut routes = tonic::service::RoutesBuilder::default();
    routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha).add_service(admin);
    for service in region.services() {
        service.grpc(&mut routes, &health).await;
    }

    let wait = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let routes = routes.routes();
    // With the peer's address, so a refused call's audit says where it came from.
    let router = crate::http::router(region.clone(), listeners.room);
    let service_tls = listeners.tls.clone();
    let (grpc, http) = match listeners.tls {
        None => {
            let router = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
            let grpc = Server::builder().trace_fn(grpc_span).add_routes(routes).serve_with_incoming_shutdown(
                TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
                wait(stopped.clone()),
            );
            let http = axum::serve(listeners.http, router).with_graceful_shutdown(wait(stopped.clone()));
            (tokio::spawn(grpc), tokio::spawn(async move { http.await }))
        }
        Some(tls) => {
            let connections = tls.incoming(listeners.grpc, "gRPC");
            let connections = tokio_stream::wrappers::ReceiverStream::new(connections)
                .map(|(stream, _)| Ok::<_, std::io::Error>(stream));
            let grpc = Server::builder()
                .trace_fn(grpc_span)
                .add_routes(routes)
                .serve_with_incoming_shutdown(connections, wait(stopped.clone()));
            let local =
                listeners.http.local_addr().map_err(|source| ServeError::Http { region: name.clone(), source })?;
            let http_listener = TlsListener { incoming: tls.incoming(listeners.http, "HTTP"), local };
            let router = router
                .layer(axum::middleware::map_request(crate::tls::plain_peer))
                .into_make_service_with_connect_info::<crate::tls::TlsPeer>();
            let http = axum::serve(http_listener, router).with_graceful_shutdown(wait(stopped.clone()));
            tokio::spawn(tls.watch(wait(stopped.clone())));
            (tokio::spawn(grpc), tokio::spawn(async move { http.await }))
        }
    };
    lag_gauge(&region);
    let readiness = tokio::spawn(readiness(region.clone(), health.clone(), wait(stopped.clone())));
    let mut taken = ServiceListeners { dicom: listeners.dicom, mllp: listeners.mllp, tls: service_tls };
    let mut tasks = Vec::new();
    for service in region.services() {
        tasks.extend(service.clone().start(&mut taken, Stopping(stopped.clone())));
    }

    // A log that can no longer write (fenced by a newer process) stops the
    // region as a signal would, and the stop is reported as an error so
    // the process exits non-zero and its orchestrator restarts or retires it.
    let lost = tokio::select! {
        () = shutdown => None,
        reason = log_lost(region.clone()) => {
            tracing::error!(region = %name, %reason, "the event log can no longer write: stopping");
            health.set_all(false).await;
            Some(reason)
        }
    };
    tracing::info!(region = %name, "shutting down");
    // Long passes end at their next step; no step is cut between its
    // commit and its fold.
    for service in region.services() {
        service.stop();
    }
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
    // The tasks finish the step they are on, within the same bound.
    drain(follower, deadline, &name, "log follower").await;
    drain(readiness, deadline, &name, "readiness").await;
    for task in tasks {
        drain(task.handle, deadline, &name, task.what).await;
    }
    // What was acknowledged is in the log; the snapshots make the next
    // start read only what came after them.
    region.save_snapshots(true).await;
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

/// Runs `work` with the wall clock's time every `period` until `shutdown`.
pub async fn every<F, Fut>(period: std::time::Duration, shutdown: impl Future<Output = ()>, mut work: F)
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
