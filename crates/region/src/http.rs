//! The region's HTTP port: `/healthz` (open), `/v1/whoami` (any
//! authenticated principal) and `/v1/summary` (platform principals). Later
//! issues add DICOMweb here.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use meridian_auth::{Action, Denied, Principal, Resource, authorize};
use serde_json::{Value, json};

use crate::node::Region;

pub fn router(region: Arc<Region>) -> Router {
    let authenticated = Router::new()
        .route("/v1/whoami", get(whoami))
        .route("/v1/summary", get(summary))
        .layer(axum::middleware::from_fn_with_state(region.verifier.clone(), meridian_auth::http::authenticate));
    Router::new().route("/healthz", get(healthz)).merge(authenticated).with_state(region)
}

async fn healthz(State(region): State<Arc<Region>>) -> Json<Value> {
    Json(json!({"region": region.name, "status": "serving"}))
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
    })))
}
