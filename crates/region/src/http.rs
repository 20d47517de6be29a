//! The region's HTTP port: `/healthz` (open: the process lives),
//! `/readyz` (open: its log and object store answer), `/v1/whoami` (any
//! authenticated principal), `/v1/summary` (platform principals) and
//! DICOMweb under `/dicomweb` (QIDO-RS, WADO-RS; bearer tokens, CORS for
//! browser viewers) and FHIR under `/fhir` (orders in; bearer tokens).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use meridian_auth::{Action, Denied, Principal, Resource, authorize};
use serde_json::{Value, json};
use tower_http::cors::{Any, CorsLayer};

use crate::node::Region;

pub fn router(region: Arc<Region>, room: Option<Router>) -> Router {
    let authenticate =
        || axum::middleware::from_fn_with_state(region.verifier.clone(), meridian_auth::http::authenticate);
    let authenticated =
        Router::new().route("/v1/whoami", get(whoami)).route("/v1/summary", get(summary)).layer(authenticate());
    // Viewers run in browsers on other origins and send bearer tokens (no
    // cookies), so any origin may call; the preflight is answered before
    // authentication.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::ACCEPT, header::CONTENT_TYPE])
        .expose_headers([header::CONTENT_TYPE, header::CONTENT_LOCATION, header::WARNING])
        .max_age(std::time::Duration::from_secs(600));
    // Each service of the process brings its part of `/dicomweb` (storage:
    // QIDO-RS and WADO-RS; ingest: STOW-RS). The fallback comes before the
    // layers so that they wrap it too.
    let served: Vec<&'static str> = region.services().iter().map(|s| s.name()).collect();
    let dicomweb = region
        .services()
        .iter()
        .filter_map(|s| s.dicomweb())
        .fold(Router::new(), Router::merge)
        .fallback(move |method: Method, uri: axum::http::Uri| no_such_resource(method, uri, served.clone()))
        .layer(authenticate())
        .layer(cors);
    // FHIR resources a service takes (reporting: ServiceRequest orders).
    let fhir =
        region.services().iter().filter_map(|s| s.fhir()).fold(Router::new(), Router::merge).layer(authenticate());
    let router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(authenticated)
        .with_state(region.clone())
        .nest("/dicomweb", dicomweb)
        .nest("/fhir", fhir);
    // The reading room brings its own sign-in (a session cookie, not a
    // bearer token), so it is not behind the token layer.
    let router = match room {
        Some(room) => router.nest("/room", room),
        None => router,
    };
    router.layer(axum::middleware::from_fn(traced))
}

/// A request's span, named by its route's template (the path itself holds
/// study UIDs, which never leave the region), continuing the caller's
/// `traceparent`. Probes are not traced.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let route = request.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
    let route = match route.as_deref() {
        Some("/healthz" | "/readyz") => return next.run(request).await,
        Some(route) => route.to_owned(),
        // Unmatched paths are named by their first segment only.
        None => request.uri().path().split('/').take(2).collect::<Vec<_>>().join("/") + "/…",
    };
    let traceparent = request.headers().get(meridian_telemetry::TRACEPARENT).and_then(|v| v.to_str().ok());
    let span = meridian_telemetry::http_server(request.method().as_str(), &route, traceparent);
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// What a path under `/dicomweb` that names no resource here gets: the
/// usual JSON error (behind the same token and CORS layers as every route,
/// so a browser viewer sees the 404, not a CORS failure), naming the
/// services this process runs (a split region routes by path).
async fn no_such_resource(method: Method, uri: axum::http::Uri, served: Vec<&'static str>) -> impl IntoResponse {
    let message = format!(
        "{method} {}: no DICOMweb resource here (PS3.18 studies, series, instances, metadata, frames; \
         this process serves {})",
        uri.path(),
        served.join(", ")
    );
    (StatusCode::NOT_FOUND, Json(json!({"error": {"code": "NOT_FOUND", "message": message}})))
}

async fn healthz(State(region): State<Arc<Region>>) -> Json<Value> {
    let services: Vec<&str> = region.services().iter().map(|s| s.name()).collect();
    Json(json!({"region": region.name, "status": "serving", "services": services}))
}

/// Ready when the log and the object store answered the last probe; 503
/// with the reasons otherwise (a load balancer stops sending work here).
async fn readyz(State(region): State<Arc<Region>>) -> impl IntoResponse {
    let reasons = region.unready();
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let said = if reasons.is_empty() { "ready" } else { "not_ready" };
    (status, Json(json!({"region": region.name, "status": said, "reasons": reasons})))
}

async fn whoami(State(region): State<Arc<Region>>, principal: Principal) -> Json<Value> {
    Json(json!({"region": region.name, "principal": principal}))
}

async fn summary(State(region): State<Arc<Region>>, principal: Principal) -> Result<Json<Value>, Denied> {
    authorize(&principal, Action::TailLog, &Resource::Region { region: &region.name })?;
    let s = region.summary().await;
    let stats = region.summary_stats().await;
    Ok(Json(json!({
        "region": region.name,
        "by_type": s.by_type,
        "by_tenant": s.by_tenant,
        "readers": s.readers,
        "projection": {"name": "events.summary", "stats": stats},
        "projections": region.projections().await,
        "consumers": region.consumers(),
        "lag": region.lag(),
        // The process's, not the region's: spans are exported per process.
        "telemetry": {"spans_dropped": meridian_telemetry::spans_dropped()},
        // Refusals whose AccessDenied could not be written (queue full, or
        // an append the log refused): any is an audit gap to investigate.
        "audit": {
            "refusals_overflowed": region.context.refusals_lost.overflowed.load(std::sync::atomic::Ordering::Relaxed),
            "refusals_unappended": region.context.refusals_lost.unappended.load(std::sync::atomic::Ordering::Relaxed),
        },
    })))
}
