//! `meridian.inference.v1.InferenceService`: the models a region runs and
//! whether each is on (its SRE turns them on and off, a tenant's
//! administrator sees them), and what the models said of a tenant's study
//! (codes only: the scores are PHI and stay on the PHI topic).

use std::sync::Arc;

use meridian_auth::grpc::{arrival_time, invalid_argument, permission_denied, principal};
use meridian_auth::{Action, Resource, authorize};
use meridian_proto::inference::v1 as pb;
use meridian_proto::inference::v1::inference_service_server::InferenceService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::app::{Inference, ModelView};

pub struct InferenceGrpc {
    inference: Arc<Inference>,
    region: String,
}

impl InferenceGrpc {
    pub fn new(inference: Arc<Inference>, region: &str) -> InferenceGrpc {
        InferenceGrpc { inference, region: region.to_owned() }
    }

    async fn switch(&self, request: Request<(String, String)>, enabled: bool) -> Result<pb::Model, Status> {
        let p = principal(&request)?;
        authorize(p, Action::ManageModels, &Resource::Region { region: &self.region })
            .map_err(|d| permission_denied(&d))?;
        let (name, reason) = request.get_ref();
        if reason.trim().is_empty() {
            return Err(invalid_argument("reason", "say why: it is kept on the log"));
        }
        let switched = self
            .inference
            .switch(name, enabled, &p.subject, reason, arrival_time())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (view, on) = switched.ok_or_else(|| Status::not_found(format!("no model {name:?} is loaded here")))?;
        Ok(model(&view, on))
    }
}

fn model(view: &ModelView, enabled: bool) -> pb::Model {
    pb::Model {
        name: view.spec.name.clone(),
        version: view.spec.version.clone(),
        intended_use: view.intended_use.clone(),
        enabled,
        modalities: view.spec.modalities.clone(),
        body_parts: view.spec.body_parts.clone(),
        completed: view.stats.completed,
        flagged: view.stats.flagged,
        failed: view.stats.failed,
        recent_positive_rate: view
            .spec
            .drift
            .as_ref()
            .and_then(|d| view.stats.recent_rate(d.window))
            .or_else(|| view.stats.recent_rate(view.stats.recent.len()))
            .unwrap_or_default(),
        latency_p50_ms: view.stats.latency_percentile(0.5).unwrap_or_default(),
        latency_p99_ms: view.stats.latency_percentile(0.99).unwrap_or_default(),
        drift_alerts: view.stats.drift_alerts,
        runtime: view.runtime.clone(),
        score_histograms: view
            .stats
            .scores
            .iter()
            .map(|(output, counts)| pb::ScoreHistogram { output: output.clone(), counts: counts.clone() })
            .collect(),
        failures_by_reason: view.stats.failures.iter().map(|(reason, n)| (reason.clone(), *n)).collect(),
    }
}

#[tonic::async_trait]
impl InferenceService for InferenceGrpc {
    async fn list_models(
        &self,
        request: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        let p = principal(&request)?;
        authorize(p, Action::ViewModels, &Resource::Region { region: &self.region })
            .map_err(|d| permission_denied(&d))?;
        let models = self.inference.listed().await.iter().map(|(v, on)| model(v, *on)).collect();
        Ok(Response::new(pb::ListModelsResponse { models }))
    }

    async fn enable_model(
        &self,
        request: Request<pb::EnableModelRequest>,
    ) -> Result<Response<pb::EnableModelResponse>, Status> {
        let (meta, ext, r) = request.into_parts();
        let request = Request::from_parts(meta, ext, (r.name, r.reason));
        Ok(Response::new(pb::EnableModelResponse { model: Some(self.switch(request, true).await?) }))
    }

    async fn disable_model(
        &self,
        request: Request<pb::DisableModelRequest>,
    ) -> Result<Response<pb::DisableModelResponse>, Status> {
        let (meta, ext, r) = request.into_parts();
        let request = Request::from_parts(meta, ext, (r.name, r.reason));
        Ok(Response::new(pb::DisableModelResponse { model: Some(self.switch(request, false).await?) }))
    }

    async fn get_triage(
        &self,
        request: Request<pb::GetTriageRequest>,
    ) -> Result<Response<pb::GetTriageResponse>, Status> {
        let p = principal(&request)?;
        let text = &request.get_ref().study_id;
        let study = Uuid::parse_str(text)
            .map_err(|_| invalid_argument("study_id", format!("{text:?} is not a study id (a UUID)")))?;
        // Who may read no tenant's triage is refused before anything of
        // the study is looked up (its existence is not theirs to learn).
        let own = Resource::Tenant { tenant: p.tenant.as_deref().unwrap_or_default() };
        authorize(p, Action::ReadReport, &own).map_err(|d| permission_denied(&d))?;
        let outcomes = self.inference.read_state(|f| f.state.outcomes.get(&study).cloned()).await;
        let outcomes = outcomes.ok_or_else(|| Status::not_found(format!("no triage of study {study} here")))?;
        let tenant = outcomes.first().map(|o| o.tenant.clone()).unwrap_or_default();
        // The tenant's own: its facility systems and administrator.
        authorize(p, Action::ReadReport, &Resource::Tenant { tenant: &tenant }).map_err(|d| permission_denied(&d))?;
        let triages = outcomes
            .into_iter()
            .map(|o| pb::Triage {
                model: o.model,
                outcome: o.outcome,
                flagged: o.flagged,
                suggested_priority: o.suggested,
                findings: o.findings,
                latency_ms: o.latency_ms,
                instances_used: o.instances_used,
                reason: o.reason,
                detail: o.detail,
            })
            .collect();
        Ok(Response::new(pb::GetTriageResponse { study_id: study.to_string(), triages }))
    }
}
