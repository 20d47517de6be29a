//! Traces that follow a study across the log.
//!
//! A span opens where work enters a region (a DICOM association and each
//! C-STORE in it, a gRPC call, an HTTP request) and where a consumer takes
//! an event from the log. Every envelope appended carries the W3C
//! `traceparent` of the span that caused it ([`traceparent`]) and the
//! consumer continues it ([`consuming`]), so one study's work from its first
//! C-STORE to its StudyAssigned is one trace although the services meet
//! only on the log.
//!
//! Spans leave the region (to the operator's collector), so their
//! attributes carry Meridian's opaque ids and standard names only: never a
//! DICOM UID, accession number or patient id, and HTTP spans name the
//! route's template, not the path (which holds study UIDs).
//!
//! Export is OTLP over gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or its
//! `_TRACES_` form) is set ([`Exporting`]). A collector that is down or
//! slow costs spans, counted in [`spans_dropped`], never a request: spans
//! queue in memory (bounded) and are sent from the SDK's own thread.

pub mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// The W3C Trace Context header and envelope field.
pub const TRACEPARENT: &str = "traceparent";

/// Spans sent to no collector since the process started: the export failed
/// (collector down, refused, timed out) and the batch was let go.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Spans the process could not export, counted since it started.
pub fn spans_dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The `traceparent` of the current span, for the envelope it appends;
/// `None` when no trace is being recorded (no exporter configured).
pub fn traceparent() -> Option<String> {
    traceparent_of(&Span::current())
}

/// The `traceparent` of `span`, when it is recorded.
pub fn traceparent_of(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| format!("00-{:032x}-{:016x}-{:02x}", sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8()))
}

/// The trace id (32 hex digits) a `traceparent` names, when well formed.
pub fn trace_id(traceparent: &str) -> Option<String> {
    remote(traceparent).map(|sc| format!("{:032x}", sc.trace_id()))
}

/// The span a `traceparent` names, as a remote parent; `None` for a
/// malformed or all-zero one (a peer's header is not trusted to be valid).
fn remote(traceparent: &str) -> Option<SpanContext> {
    struct One<'a>(&'a str);
    impl Extractor for One<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            (key == TRACEPARENT).then_some(self.0)
        }
        fn keys(&self) -> Vec<&str> {
            vec![TRACEPARENT]
        }
    }
    let cx = TraceContextPropagator::new().extract(&One(traceparent));
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the span `traceparent` names (a peer's header or
/// an envelope's field). Call before the span is first entered; a missing
/// or malformed value leaves it a root.
pub fn follow(span: &Span, traceparent: Option<&str>) {
    if let Some(parent) = traceparent.and_then(remote) {
        // Refused only when no layer records spans: nothing to continue then.
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
    record_trace_id(span);
}

/// Links `span` to the span `traceparent` names: for one step that takes
/// several messages, each with its own trace.
pub fn link(span: &Span, traceparent: Option<&str>) {
    if let Some(other) = traceparent.and_then(remote) {
        span.add_link(other);
    }
}

/// Writes the span's trace id into its `trace_id` field, so that log lines
/// inside it name the trace.
fn record_trace_id(span: &Span) {
    if let Some(id) = traceparent_of(span).as_deref().and_then(|t| t.get(3..35).map(str::to_owned)) {
        span.record("trace_id", id.as_str());
    }
}

/// A consumer's span for one event read from the log, continuing the trace
/// its envelope carries (OpenTelemetry's messaging conventions).
pub fn consuming(consumer: &str, topic: &str, partition: u32, offset: u64, traceparent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        target: "meridian::log",
        "process",
        otel.name = %format_args!("{topic} process"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = %topic,
        messaging.destination.partition.id = partition,
        messaging.kafka.offset = offset,
        messaging.consumer.group.name = %consumer,
        trace_id = Empty,
    );
    follow(&span, traceparent);
    span
}

/// A span for a step taken with no request in flight (a timer's), in the
/// trace `traceparent` names when it names one.
pub fn step(what: &str, traceparent: Option<&str>) -> Span {
    let span = tracing::info_span!(target: "meridian::step", "step", otel.name = %what, trace_id = Empty);
    follow(&span, traceparent);
    span
}

/// A consumer's span for one step over several events read together: the
/// child of the one event's span when there is one, else linked to each
/// (OpenTelemetry's batch receive), so that each input's trace leads to it.
pub fn consuming_batch<'a>(consumer: &str, traceparents: impl IntoIterator<Item = Option<&'a str>>) -> Span {
    let traceparents: Vec<&str> = traceparents.into_iter().flatten().collect();
    let span = tracing::info_span!(
        target: "meridian::log",
        "process",
        otel.name = %format_args!("{consumer} process"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.batch.message_count = traceparents.len(),
        messaging.consumer.group.name = %consumer,
        trace_id = Empty,
    );
    match traceparents.as_slice() {
        [one] => follow(&span, Some(one)),
        many => {
            for traceparent in many {
                link(&span, Some(traceparent));
            }
            record_trace_id(&span);
        }
    }
    span
}

/// A gRPC server span for `path` (`/package.Service/Method`), continuing
/// the caller's trace when it sent a `traceparent`.
pub fn grpc_server(path: &str, traceparent: Option<&str>) -> Span {
    let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        target: "meridian::grpc",
        "grpc",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        trace_id = Empty,
    );
    follow(&span, traceparent);
    span
}

/// An HTTP server span, named by the route's template (`/dicomweb/studies/{study}`,
/// never the path, which holds UIDs).
pub fn http_server(method: &str, route: &str, traceparent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        target: "meridian::http",
        "http",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = Empty,
        trace_id = Empty,
    );
    follow(&span, traceparent);
    span
}

/// A DICOM association's span (PS3.8), from A-ASSOCIATE-RQ to its end.
pub fn dicom_association(region: &str, peer: std::net::SocketAddr, tls: bool) -> Span {
    let span = tracing::info_span!(
        target: "meridian::dimse",
        "dicom association",
        otel.kind = "server",
        meridian.region = %region,
        network.peer.address = %peer.ip(),
        network.peer.port = peer.port(),
        tls,
        trace_id = Empty,
    );
    record_trace_id(&span);
    span
}

/// How spans leave this process: OTLP over gRPC to the collector the
/// standard `OTEL_` variables name. Shut it down at exit to send what is
/// queued.
pub struct Exporting {
    provider: SdkTracerProvider,
    meters: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
    endpoint: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{variable}={endpoint}: {reason}")]
    Exporter { variable: &'static str, endpoint: String, reason: String },
}

impl Exporting {
    /// The exporter `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`) names, unless `OTEL_TRACES_EXPORTER`
    /// is `none`; `None` when neither is set. Call inside the Tokio runtime
    /// that will carry the exports.
    pub fn from_env(service: &str) -> Result<Option<Exporting>, Error> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        if var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none") {
            return Ok(None);
        }
        let Some((variable, endpoint)) = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .into_iter()
            .find_map(|name| var(name).map(|v| (name, v)))
        else {
            return Ok(None);
        };
        let service = var("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned());
        Exporting::to(variable, &endpoint, &service).map(Some)
    }

    fn to(variable: &'static str, endpoint: &str, service: &str) -> Result<Exporting, Error> {
        use opentelemetry_otlp::WithExportConfig;
        let refused = |reason: String| Error::Exporter { variable, endpoint: endpoint.to_owned(), reason };
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| refused(e.to_string()))?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(refused("not an http:// or https:// address of an OTLP/gRPC collector".into()));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| refused(e.to_string()))?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(service.to_owned()).build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(Counted { inner: Arc::new(exporter), runtime })
            .with_resource(resource.clone())
            .build();
        // Metrics to the same collector, read every OTEL_METRIC_EXPORT_INTERVAL
        // (60 s by default) on the runtime, unless OTEL_METRICS_EXPORTER=none.
        let meters = if std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v.trim() == "none") {
            None
        } else {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| refused(e.to_string()))?;
            let reader = opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
                exporter,
                opentelemetry_sdk::runtime::Tokio,
            )
            .build();
            let meters = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
                .with_reader(reader)
                .with_resource(resource)
                .build();
            opentelemetry::global::set_meter_provider(meters.clone());
            Some(meters)
        };
        Ok(Exporting { provider, meters, endpoint: endpoint.to_owned() })
    }

    /// Where spans go.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The layer that records Meridian's spans (INFO and above) for
    /// export; other crates' spans stay in the logs only.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let filter = tracing_subscriber::filter::filter_fn(|meta| {
            meta.target().starts_with("meridian")
                && (meta.is_span() && meta.level() <= &tracing::Level::INFO
                    || meta.is_event() && meta.level() <= &tracing::Level::WARN)
        });
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("meridian"))
            .with_location(false)
            .with_threads(false)
            .with_filter(filter)
    }

    /// Sends what is queued and stops. Blocks (the SDK's thread waits on
    /// the runtime): call off the runtime's workers.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(endpoint = %self.endpoint, error = %e, "spans not all sent at exit");
        }
        if let Some(Err(e)) = self.meters.map(|m| m.shutdown()) {
            tracing::warn!(endpoint = %self.endpoint, error = %e, "metrics not sent at exit");
        }
    }
}

/// How long one export may take before its spans are let go.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// The OTLP exporter run on the process's Tokio runtime (the SDK's batch
/// thread has none, and tonic needs one), counting the spans of every
/// batch that could not be sent.
#[derive(Debug)]
struct Counted<E> {
    inner: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for Counted<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len() as u64;
        let inner = self.inner.clone();
        // The timer too runs on the runtime: the SDK's thread has no timers.
        let exported = self.runtime.spawn(async move {
            match tokio::time::timeout(EXPORT_TIMEOUT * 2, inner.export(batch)).await {
                Ok(result) => result,
                Err(_) => Err(OTelSdkError::Timeout(EXPORT_TIMEOUT * 2)),
            }
        });
        async move {
            let result = exported.await.unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())));
            if result.is_err() {
                DROPPED.fetch_add(spans, Ordering::Relaxed);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_names_its_trace_and_a_malformed_one_names_none() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(good).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E473G-00f067aa0ba902b7-01",
        ] {
            assert_eq!(trace_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_step_over_one_event_continues_its_trace_and_over_several_begins_its_own() {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let a = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let b = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
            let one = consuming_batch("billing.ledger", [Some(a), None]);
            assert_eq!(traceparent_of(&one).and_then(|t| trace_id(&t)), trace_id(a));
            let two = consuming_batch("billing.ledger", [Some(a), Some(b)]);
            let own = traceparent_of(&two).and_then(|t| trace_id(&t));
            assert!(own.is_some() && own != trace_id(a) && own != trace_id(b));
        });
    }

    #[test]
    fn without_an_exporter_nothing_is_traced_and_following_is_harmless() {
        let span = consuming("routing.intake", "meridian.us-east.ops.ingest", 0, 7, Some("garbage"));
        let _entered = span.enter();
        assert_eq!(traceparent(), None);
    }

    /// With the layer installed, a span that follows an envelope's
    /// traceparent is in its trace, and what it appends names that trace.
    #[test]
    fn a_consumer_continues_the_trace_its_envelope_carries() {
        use tracing_subscriber::layer::SubscriberExt;
        let provider = SdkTracerProvider::builder().build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = consuming("routing.intake", "meridian.us-east.ops.ingest", 0, 7, Some(incoming));
            let outgoing = span.in_scope(traceparent).expect("a recorded span has a traceparent");
            assert_eq!(trace_id(&outgoing).as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
            assert_ne!(outgoing, incoming, "the consumer's own span is the parent of what it appends");
            // A root span starts a trace of its own.
            let root = grpc_server("/meridian.routing.v1.RoutingService/ClaimNext", None);
            let own = root.in_scope(traceparent).expect("recorded");
            assert_ne!(trace_id(&own), trace_id(incoming));
        });
    }
}
