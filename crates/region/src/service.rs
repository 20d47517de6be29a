//! What a service brings to a region's process: the seam between the shared
//! region context and each service's own opener (`services/*/src/serve.rs`).
//!
//! `meridian serve <service>` runs one service on a region's context;
//! `meridian dev` runs every service of every region in one process through
//! the same openers. A service adds gRPC services and HTTP routes to the
//! process's ports, starts its own tasks (listeners, ticks, consumers) and
//! answers for its projections; the region serves health, reflection,
//! admin and `/v1/summary` around them.

use std::future::Future;
use std::pin::Pin;

use tokio::net::TcpListener;
use tokio::sync::watch;

/// Resolves when the process is stopping; every long task selects on it.
#[derive(Clone)]
pub struct Stopping(pub(crate) watch::Receiver<bool>);

impl Stopping {
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Whether the stop has come (for loops that must not be cancelled
    /// mid-step, and check between steps instead).
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }

    /// Runs `pass` again and again until the stop comes. A pass is never
    /// cancelled mid-step (each returns within its own wait, and the stop
    /// is seen between passes); a failed one is logged as `what` and tried
    /// again after a second. A pass returns when a read waited with
    /// nothing, so the first that succeeds has read to the log's end:
    /// `caught_up` is marked then.
    pub async fn passes<F, Fut, E>(self, region: String, what: &'static str, caught_up: CaughtUp, mut pass: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        while !self.is_stopping() {
            match pass().await {
                Ok(()) => caught_up.mark(),
                Err(e) => {
                    tracing::warn!(%region, error = %e, "{what}");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Whether a consumer has read to the log's end since the process
/// started. Until it has, what its service answers may lag what the log
/// holds (a worklist without the studies that came in while the process
/// was down), so the process is not ready
/// ([`RegionContext::caught_up`](crate::RegionContext::caught_up)).
#[derive(Clone, Debug, Default)]
pub struct CaughtUp(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CaughtUp {
    pub fn mark(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_caught_up(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One of a service's running tasks, named for the shutdown log.
pub struct Task {
    pub what: &'static str,
    pub handle: tokio::task::JoinHandle<()>,
}

impl Task {
    pub fn spawn(what: &'static str, work: impl Future<Output = ()> + Send + 'static) -> Task {
        Task { what, handle: tokio::spawn(work) }
    }
}

/// What a projection rebuild found, and the rebuilt state in a line.
#[derive(Clone, Debug)]
pub struct Rebuilt {
    pub rebuilt: meridian_projection::run::Rebuilt,
    pub summary: String,
}

/// The gRPC services of a process, gathered from its services.
pub type GrpcRoutes = tonic::service::RoutesBuilder;

/// A process's gRPC health: each gRPC service it serves is named here as it
/// is added, so readiness reports every one of them with the process ("")
/// — a probe of one service sees the process's readiness too.
#[derive(Clone)]
pub struct Health {
    reporter: tonic_health::server::HealthReporter,
    served: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl Health {
    pub fn new(reporter: tonic_health::server::HealthReporter) -> Health {
        Health { reporter, served: Default::default() }
    }

    /// `S` is served: SERVING now, and with the process from here on.
    pub async fn serving<S: tonic::server::NamedService>(&self) {
        self.served.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(S::NAME);
        self.reporter.set_serving::<S>().await;
    }

    /// The process and every service it serves: SERVING or NOT_SERVING.
    pub async fn set_all(&self, serving: bool) {
        use tonic_health::ServingStatus;
        let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
        let served = self.served.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        self.reporter.set_service_status("", status).await;
        for name in served {
            self.reporter.set_service_status(name, status).await;
        }
    }
}

/// Sockets a service may take: the DICOM port is ingest's, the MLLP port
/// (HL7 v2 orders) reporting's.
#[derive(Default)]
pub struct ServiceListeners {
    pub dicom: Option<TcpListener>,
    pub mllp: Option<TcpListener>,
    /// The region's TLS, when it has a certificate: the DICOM port speaks
    /// it too (PS3.15 Annex B).
    pub tls: Option<crate::tls::ServerTls>,
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A service of a region, opened on its context.
pub trait RegionService: Send + Sync + 'static {
    /// `ingest`, `storage`, `routing`…: what `meridian serve` names.
    fn name(&self) -> &'static str;

    /// Adds this service's gRPC services and reports them serving.
    fn grpc<'a>(&'a self, routes: &'a mut GrpcRoutes, health: &'a Health) -> BoxFuture<'a, ()>;

    /// Routes under `/dicomweb` (authenticated and CORS-wrapped by the
    /// region); `None` when the service serves none.
    fn dicomweb(&self) -> Option<axum::Router> {
        None
    }

    /// Routes under `/fhir` (authenticated by the region); `None` when the
    /// service serves none.
    fn fhir(&self) -> Option<axum::Router> {
        None
    }

    /// Starts the service's tasks; each ends when `stopping` resolves, at
    /// the end of the step it is on.
    fn start(self: std::sync::Arc<Self>, listeners: &mut ServiceListeners, stopping: Stopping) -> Vec<Task>;

    /// Asks long passes to end at their next step (called before the
    /// tasks are awaited at shutdown).
    fn stop(&self) {}

    /// Writes the snapshots that are due (`force`: every changed one).
    fn save_snapshots(&self, force: bool) -> BoxFuture<'_, ()>;

    /// Each in-memory projection: how it was opened, what it did.
    fn projections(&self) -> BoxFuture<'_, Vec<serde_json::Value>> {
        Box::pin(async { Vec::new() })
    }

    /// Consumers outside the projection runtime, with their skip counts.
    fn consumers(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }

    /// The consumer groups this service commits positions under, with the
    /// topics each reads: their lag is measured against what the region's
    /// follower has read.
    fn inputs(&self) -> Vec<(&'static str, meridian_log::TopicName)> {
        Vec::new()
    }

    /// The projections this service rebuilds on request.
    fn rebuildable(&self) -> &'static [&'static str] {
        &[]
    }

    /// Rebuilds the projection `name` (one of [`Self::rebuildable`]).
    fn rebuild<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Option<Result<Rebuilt, String>>> {
        let _ = name;
        Box::pin(async { None })
    }
}

/// The rebuild of a service's one projection `mine`, when `name` is it:
/// `rebuild` runs it, `summary` then says what it holds.
pub async fn rebuild_if<E: std::fmt::Display>(
    name: &str,
    mine: &str,
    rebuild: impl Future<Output = Result<meridian_projection::run::Rebuilt, E>>,
    summary: impl Future<Output = String>,
) -> Option<Result<Rebuilt, String>> {
    if name != mine {
        return None;
    }
    Some(match rebuild.await {
        Ok(rebuilt) => Ok(Rebuilt { rebuilt, summary: summary.await }),
        Err(e) => Err(e.to_string()),
    })
}
