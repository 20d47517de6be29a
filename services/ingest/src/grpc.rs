//! `meridian.ingest.v1.IngestService`: a tenant lists its refused
//! instances and completes its studies. Every call resolves the principal
//! (Foundation B's interceptor) and asks `authorize` for the tenant.

use std::sync::Arc;

use meridian_auth::grpc::{permission_denied, principal};
use meridian_auth::{Action, Principal, Resource, authorize};
use meridian_proto::ingest::v1 as pb;
use meridian_proto::ingest::v1::complete_study_request::Study;
use meridian_proto::ingest::v1::ingest_service_server::IngestService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::app::Ingest;

pub struct IngestGrpc {
    ingest: Arc<Ingest>,
}

impl IngestGrpc {
    pub fn new(ingest: Arc<Ingest>) -> IngestGrpc {
        IngestGrpc { ingest }
    }
}

use meridian_auth::grpc::arrival_time as now;

use meridian_auth::grpc::invalid_argument as bad_request;

/// The tenant the principal acts for, if it may take `action` for it.
fn tenant_for(p: &Principal, action: Action) -> Result<String, Status> {
    let tenant = p.tenant.clone().ok_or_else(|| {
        let details = ErrorDetails::with_bad_request_violation("authorization", "the principal acts for no tenant");
        Status::with_error_details(Code::PermissionDenied, "only a tenant's principals use this service", details)
    })?;
    authorize(p, action, &Resource::Tenant { tenant: &tenant }).map_err(|d| permission_denied(&d))?;
    Ok(tenant)
}

#[tonic::async_trait]
impl IngestService for IngestGrpc {
    async fn list_rejections(
        &self,
        request: Request<pb::ListRejectionsRequest>,
    ) -> Result<Response<pb::ListRejectionsResponse>, Status> {
        let p = principal(&request)?.clone();
        let tenant = tenant_for(&p, Action::ViewRejections)?;
        let size = match request.into_inner().page_size {
            n if n <= 0 => 100,
            n => (n as usize).min(1_000),
        };
        let rejections = self
            .ingest
            .read(|s| {
                s.rejections
                    .get(&tenant)
                    .map(|kept| {
                        kept.iter()
                            .rev()
                            .take(size)
                            .map(|r| pb::Rejection {
                                study_id: r.study_id.clone(),
                                facility: r.facility.clone(),
                                dimse_status: r.dimse_status,
                                reason_code: r.reason_code.clone(),
                                reason: r.reason.clone(),
                                rejected_at: Some(r.at.to_timestamp()),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .await;
        Ok(Response::new(pb::ListRejectionsResponse { rejections }))
    }

    async fn complete_study(
        &self,
        request: Request<pb::CompleteStudyRequest>,
    ) -> Result<Response<pb::CompleteStudyResponse>, Status> {
        let p = principal(&request)?.clone();
        let tenant = tenant_for(&p, Action::SendStudy)?;
        let study = match request.into_inner().study {
            Some(Study::StudyInstanceUid(uid)) if crate::dataset::valid_uid(&uid) => self
                .ingest
                .study_id_of(&tenant, &uid)
                .ok_or_else(|| Status::failed_precondition(format!("tenant {tenant}'s studies are not held here")))?,
            Some(Study::StudyInstanceUid(_)) => {
                return Err(bad_request("study_instance_uid", "is not a valid UID"));
            }
            Some(Study::StudyId(id)) => {
                Uuid::parse_str(&id).map_err(|e| bad_request("study_id", format!("{id:?} is not a study id: {e}")))?
            }
            None => return Err(bad_request("study", "name the study by study_instance_uid or study_id")),
        };
        let done =
            self.ingest.complete_now(&tenant, study, now()).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let Some((completed, completed_now)) = done else {
            let mut details = ErrorDetails::new();
            details.set_resource_info("study", study.to_string(), "", "no such study of the tenant in this region");
            return Err(Status::with_error_details(
                Code::NotFound,
                format!("no study {study} of {tenant} here"),
                details,
            ));
        };
        Ok(Response::new(pb::CompleteStudyResponse {
            study_id: completed.study_id,
            series_count: completed.series_count,
            instance_count: completed.instance_count,
            completed_now,
        }))
    }
}
