//! `meridian.routing.v1.RoutingService`: the worklist over gRPC. Every call
//! resolves the principal (Foundation B's interceptor) and asks the one
//! `authorize`; a reader acts for themselves, a group admin for the group.
//! Domain refusals map to the rich error model: FAILED_PRECONDITION with a
//! PreconditionFailure naming the rule, NOT_FOUND with a ResourceInfo.

use std::sync::Arc;

use meridian_auth::grpc::{permission_denied, principal};
use meridian_auth::{Action, Denied, Principal, Resource, authorize};
use meridian_events::UnixMicros;
use meridian_proto::routing::v1 as pb;
use meridian_proto::routing::v1::routing_service_server::RoutingService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::app::{Cause, Error, Routing};
use crate::domain::model::{Availability, Reader, Study};
use crate::domain::worklist::{self, Command, Event, State};

pub struct RoutingGrpc {
    routing: Arc<Routing>,
}

impl RoutingGrpc {
    pub fn new(routing: Arc<Routing>) -> RoutingGrpc {
        RoutingGrpc { routing }
    }
}

/// The edge: a request's arrival time.
#[allow(clippy::disallowed_methods)]
fn now() -> UnixMicros {
    let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    UnixMicros(d.as_micros() as i64)
}

fn not_found(kind: &str, name: &str) -> Status {
    let mut details = ErrorDetails::new();
    details.set_resource_info(kind, name, "", format!("no {kind} {name} in this region"));
    Status::with_error_details(Code::NotFound, format!("no {kind} {name} in this region"), details)
}

fn precondition(kind: &str, subject: &str, description: String) -> Status {
    let details = ErrorDetails::with_precondition_failure_violation(kind, subject, description.clone());
    Status::with_error_details(Code::FailedPrecondition, description, details)
}

/// The one mapping from routing's errors to gRPC statuses.
pub fn status(e: Error) -> Status {
    use worklist::Error as W;
    match e {
        Error::Domain(d) => {
            let message = d.to_string();
            match d {
                W::UnknownReader { reader } => not_found("reader", &reader),
                W::UnknownStudy { study } => not_found("study", &study.to_string()),
                W::UnknownContract { contract, .. } => not_found("contract", &contract),
                W::NotEligible { check, .. } => precondition("ELIGIBILITY", check.rule.as_str(), message),
                W::CherryPick { earlier, .. } => precondition("ORDER", &earlier.to_string(), message),
                W::AlreadyAssigned { study, .. } | W::NotAssignee { study, .. } => {
                    precondition("ASSIGNMENT", &study.to_string(), message)
                }
                W::WrongMode { study, .. } => precondition("ASSIGNMENT_MODE", &study.to_string(), message),
                W::AlreadyQueued { study } => Status::already_exists(format!("study {study} is already queued")),
                W::NothingToClaim { reader } => not_found("eligible study for", &reader),
                W::NotInGroup { reader, group } => precondition("GROUP", &group, format!("{reader} is not in {group}")),
            }
        }
        Error::Log(e) => Status::unavailable(format!("routing log: {e}")),
        other => Status::internal(other.to_string()),
    }
}

fn parse_study(id: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(id).map_err(|e| {
        let details = ErrorDetails::with_bad_request_violation("study_id", format!("{id:?} is not a study id: {e}"));
        Status::with_error_details(Code::InvalidArgument, format!("study_id {id:?} is not a UUID"), details)
    })
}

fn cause(p: &Principal, key: &str) -> Cause {
    if key.is_empty() {
        Cause::Unkeyed
    } else {
        // Scoped by the caller, so two readers' keys cannot collide.
        Cause::Request { tenant: format!("reader:{}", p.subject), idempotency_key: key.to_owned() }
    }
}

/// The reader a call is about, if the principal may act for them: the
/// reader themself, or an admin of their group.
fn acting_for<'s>(p: &Principal, state: &'s State, reader_id: &str, action: Action) -> Result<&'s Reader, Status> {
    let reader = state.readers.get(reader_id).ok_or_else(|| not_found("reader", reader_id))?;
    authorize(p, action, &Resource::ReadingGroup { group: &reader.group }).map_err(|d| permission_denied(&d))?;
    if p.reader.as_deref() != Some(reader_id) && !p.has_role("group-admin") {
        return Err(permission_denied(&Denied {
            subject: p.subject.clone(),
            action: "act_for_reader",
            resource: format!("reader {reader_id}"),
            resource_kind: "reader",
            reason: "a reader acts for themselves; a group admin for the group".into(),
        }));
    }
    Ok(reader)
}

fn entry(routing: &Routing, reader: &Reader, s: &Study) -> pb::WorklistEntry {
    pb::WorklistEntry {
        study_id: s.id.to_string(),
        tenant: s.tenant.clone(),
        home_region: s.home_region.clone(),
        modality: s.modality.clone(),
        body_part: s.body_part.clone(),
        subspecialty: s.subspecialty.clone().unwrap_or_default(),
        priority: s.priority.as_str().into(),
        read_type: s.read_type.as_str().into(),
        deadline: Some(s.deadline.to_timestamp()),
        ai_flagged: s.ai_flagged,
        delivery_model: routing.policy().delivery_model(reader, s).as_str().into(),
        rvu_milli: s.rvu_milli,
    }
}

impl RoutingGrpc {
    /// A reader claims: through a contract of their group, for themselves.
    async fn claim(
        &self,
        p: &Principal,
        reader_id: &str,
        study: Option<Uuid>,
        key: &str,
    ) -> Result<pb::WorklistEntry, Status> {
        let routing = &self.routing;
        let contract_groups = routing
            .read(|s| -> Result<Option<Vec<String>>, Status> {
                acting_for(p, s, reader_id, Action::ViewWorklist)?;
                Ok(study.and_then(|id| s.studies.get(&id)).map(|st| {
                    routing
                        .policy()
                        .contracts
                        .get(&st.contract)
                        .map(|c| c.groups.iter().cloned().collect())
                        .unwrap_or_default()
                }))
            })
            .await?;
        if let (Some(id), Some(groups)) = (study, &contract_groups) {
            let tenant = routing.read(|s| s.studies.get(&id).map(|st| st.tenant.clone()).unwrap_or_default()).await;
            let resource = Resource::Study { tenant: &tenant, contract_groups: groups, assigned_reader: None };
            authorize(p, Action::ClaimStudy, &resource).map_err(|d| permission_denied(&d))?;
        }
        let command = match study {
            Some(study) => Command::Claim { reader: reader_id.to_owned(), study },
            None => Command::ClaimNext { reader: reader_id.to_owned() },
        };
        let events = routing.execute(command, now(), cause(p, key)).await.map_err(status)?;
        let Some(Event::AssignmentClaimed { study, .. }) = events.first() else {
            return Err(Status::internal("a claim decided no claim"));
        };
        routing
            .read(|s| {
                let reader = s.readers.get(reader_id)?;
                s.studies.get(study).map(|st| entry(routing, reader, st))
            })
            .await
            .ok_or_else(|| Status::internal("claimed study vanished"))
    }
}

#[tonic::async_trait]
impl RoutingService for RoutingGrpc {
    async fn get_worklist(
        &self,
        request: Request<pb::GetWorklistRequest>,
    ) -> Result<Response<pb::GetWorklistResponse>, Status> {
        let p = principal(&request)?.clone();
        let reader_id = request.into_inner().reader_id;
        let at = now();
        let routing = &self.routing;
        let entries = routing
            .read(|s| -> Result<Vec<pb::WorklistEntry>, Status> {
                let reader = acting_for(&p, s, &reader_id, Action::ViewWorklist)?;
                let studies = s.worklist(routing.policy(), at, &reader_id).map_err(|e| status(Error::Domain(e)))?;
                Ok(studies.into_iter().map(|st| entry(routing, reader, st)).collect())
            })
            .await?;
        Ok(Response::new(pb::GetWorklistResponse { entries }))
    }

    async fn claim(&self, request: Request<pb::ClaimRequest>) -> Result<Response<pb::ClaimResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let study = parse_study(&r.study_id)?;
        let entry = self.claim(&p, &r.reader_id, Some(study), &r.idempotency_key).await?;
        Ok(Response::new(pb::ClaimResponse { entry: Some(entry) }))
    }

    async fn claim_next(
        &self,
        request: Request<pb::ClaimNextRequest>,
    ) -> Result<Response<pb::ClaimNextResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let entry = self.claim(&p, &r.reader_id, None, &r.idempotency_key).await?;
        Ok(Response::new(pb::ClaimNextResponse { entry: Some(entry) }))
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<Response<pb::ReleaseResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let study = parse_study(&r.study_id)?;
        self.routing.read(|s| acting_for(&p, s, &r.reader_id, Action::ViewWorklist).map(|_| ())).await?;
        let command = Command::Release { reader: r.reader_id, study, reason: r.reason };
        self.routing.execute(command, now(), cause(&p, &r.idempotency_key)).await.map_err(status)?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }

    async fn reassign(&self, request: Request<pb::ReassignRequest>) -> Result<Response<pb::ReassignResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        authorize(&p, Action::Reassign, &Resource::ReadingGroup { group: &r.reading_group })
            .map_err(|d| permission_denied(&d))?;
        let study = parse_study(&r.study_id)?;
        let command = Command::Reassign { group: r.reading_group, study, to: r.to_reader_id };
        self.routing.execute(command, now(), cause(&p, &r.idempotency_key)).await.map_err(status)?;
        Ok(Response::new(pb::ReassignResponse {}))
    }

    async fn explain_eligibility(
        &self,
        request: Request<pb::ExplainEligibilityRequest>,
    ) -> Result<Response<pb::ExplainEligibilityResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let study = parse_study(&r.study_id)?;
        let at = now();
        let routing = &self.routing;
        let checks = routing
            .read(|s| -> Result<_, Status> {
                acting_for(&p, s, &r.reader_id, Action::ViewWorklist)?;
                s.explain(routing.policy(), at, &r.reader_id, study).map_err(|e| status(Error::Domain(e)))
            })
            .await?;
        Ok(Response::new(pb::ExplainEligibilityResponse {
            eligible: checks.iter().all(|c| c.passed),
            checks: checks
                .into_iter()
                .map(|c| pb::RuleCheck { rule: c.rule.as_str().into(), passed: c.passed, reason: c.reason })
                .collect(),
        }))
    }

    async fn set_availability(
        &self,
        request: Request<pb::SetAvailabilityRequest>,
    ) -> Result<Response<pb::SetAvailabilityResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let availability = Availability::parse(&r.status).ok_or_else(|| {
            let details = ErrorDetails::with_bad_request_violation("status", "expected available, busy or away");
            Status::with_error_details(Code::InvalidArgument, format!("status {:?} is not known", r.status), details)
        })?;
        self.routing.read(|s| acting_for(&p, s, &r.reader_id, Action::ViewWorklist).map(|_| ())).await?;
        let command = Command::SetAvailability { reader: r.reader_id, availability };
        self.routing.execute(command, now(), Cause::Unkeyed).await.map_err(status)?;
        Ok(Response::new(pb::SetAvailabilityResponse {}))
    }
}

/// For the rich-error checks in tests: the violation's type and subject.
pub fn precondition_of(status: &Status) -> Option<(String, String)> {
    let details = status.get_error_details();
    let v = details.precondition_failure()?.violations.first()?.clone();
    Some((v.r#type, v.subject))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use meridian_auth::grpc::Authenticate;
    use meridian_auth::token::generate_ed25519;
    use meridian_auth::{TokenSigner, TokenVerifier};
    use meridian_config::PrincipalKind;
    use meridian_events::{DataClass, KeyStore};
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
    use meridian_log::{EventLog, TopicName, TopicSpec};
    use meridian_proto::routing::v1::routing_service_client::RoutingServiceClient;
    use meridian_proto::routing::v1::routing_service_server::RoutingServiceServer;
    use tonic::transport::{Channel, Server};

    use super::*;
    use crate::domain::model::*;
    use crate::domain::policy::*;
    use crate::domain::worklist::NewStudy;

    fn reader(id: &str, group: &str) -> Reader {
        Reader {
            id: id.into(),
            group: group.into(),
            region: "us-east".into(),
            time_zone: "UTC".into(),
            licences: vec![],
            credentials: vec![Credential {
                tenant: "acme".into(),
                facility: "f".into(),
                expires: UnixMicros(i64::MAX),
            }],
            subspecialties: BTreeSet::new(),
            modalities: BTreeSet::from(["CT".into()]),
            read_types: BTreeSet::from([ReadType::Preliminary, ReadType::Final]),
            shifts: (1..=7).map(|d| Shift { weekday: d, start_minute: 0, end_minute: 0 }).collect(),
            capacity: 5,
            availability: Availability::Available,
        }
    }

    fn study(id: u128, priority: Priority, read_type: ReadType, at: UnixMicros) -> NewStudy {
        NewStudy {
            id: Uuid::from_u128(id),
            tenant: "acme".into(),
            facility: "f".into(),
            contract: "c".into(),
            home_region: "us-east".into(),
            origin_jurisdiction: "US-NY".into(),
            modality: "CT".into(),
            body_part: "HEAD".into(),
            subspecialty: None,
            subspecialty_required: false,
            priority,
            service_type: ServiceType::RealTime,
            read_type,
            patient_key: None,
            rvu_milli: 850,
            ai_flagged: true,
            completed_at: at,
            prior_reader: None,
        }
    }

    fn principal(
        subject: &str,
        kind: PrincipalKind,
        group: Option<&str>,
        reader: Option<&str>,
        roles: &[&str],
    ) -> Principal {
        Principal {
            subject: subject.into(),
            kind,
            tenant: (kind == PrincipalKind::Tenant).then(|| "acme".into()),
            facility: None,
            group: group.map(Into::into),
            reader: reader.map(Into::into),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn call<T>(message: T, token: &str) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_claim_over_grpc_through_authorize_with_rich_errors() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        log.ensure_topic(&TopicSpec::new(TopicName::new("us-east", DataClass::Operational, "routing").unwrap(), 4))
            .await
            .unwrap();
        let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
        let contract = ContractPolicy {
            name: "c".into(),
            tenant: "acme".into(),
            groups: BTreeSet::from(["g".to_string()]),
            mode: AssignmentMode::Pull,
            delivery: BTreeMap::from([
                (ReadType::Preliminary, BTreeSet::from([DeliveryModel::Onshore])),
                (ReadType::Final, BTreeSet::from([DeliveryModel::Onshore])),
            ]),
            sla_seconds: BTreeMap::from([
                (Priority::Stat, 1_800),
                (Priority::Urgent, 7_200),
                (Priority::Routine, 86_400),
            ]),
            escalation_per_mille: vec![500],
        };
        let policy = Policy {
            contracts: BTreeMap::from([("c".to_string(), contract)]),
            regions: BTreeMap::from([(
                "us-east".to_string(),
                RegionInfo { country: "US".into(), nearshore: BTreeSet::new() },
            )]),
            ..Default::default()
        };
        let routing =
            Arc::new(Routing::open("us-east", log.clone(), keys, policy, Duration::from_millis(50)).await.unwrap());
        let at = now();
        for r in [reader("dr-x", "g"), reader("dr-y", "g"), reader("dr-z", "h")] {
            routing.execute(Command::RegisterReader(r), at, Cause::Unkeyed).await.unwrap();
        }
        let (stat, routine, fin) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        routing
            .execute(Command::Queue(study(2, Priority::Routine, ReadType::Preliminary, at)), at, Cause::Unkeyed)
            .await
            .unwrap();
        routing
            .execute(Command::Queue(study(1, Priority::Stat, ReadType::Preliminary, at)), at, Cause::Unkeyed)
            .await
            .unwrap();

        let (private, public) = generate_ed25519().unwrap();
        let signer = TokenSigner::new("k", private.as_bytes(), "iss", "aud").unwrap();
        let verifier = Arc::new(TokenVerifier::new("iss", "aud", &[("k".into(), public.into_bytes())]).unwrap());
        let token = |p: Principal| signer.mint(&p, at.0 / 1_000_000, 600).unwrap();
        let x = token(principal("dr-x", PrincipalKind::Group, Some("g"), Some("dr-x"), &["reader"]));
        let y = token(principal("dr-y", PrincipalKind::Group, Some("g"), Some("dr-y"), &["reader"]));
        let admin = token(principal("g-admin", PrincipalKind::Group, Some("g"), None, &["group-admin"]));
        let z = token(principal("dr-z", PrincipalKind::Group, Some("h"), Some("dr-z"), &["reader"]));
        let pacs = token(principal("pacs", PrincipalKind::Tenant, None, None, &["facility"]));

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service =
            RoutingServiceServer::with_interceptor(RoutingGrpc::new(routing.clone()), Authenticate::new(verifier));
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        let mut c = RoutingServiceClient::new(channel);

        // The worklist, in the total order: STAT first.
        let list =
            c.get_worklist(call(pb::GetWorklistRequest { reader_id: "dr-x".into() }, &x)).await.unwrap().into_inner();
        let ids: Vec<String> = list.entries.iter().map(|e| e.study_id.clone()).collect();
        assert_eq!(ids, [stat.to_string(), routine.to_string()]);
        assert_eq!((list.entries[0].delivery_model.as_str(), list.entries[0].ai_flagged), ("onshore", true));

        // No cherry-picking: FAILED_PRECONDITION naming the earlier STAT study.
        let err = c
            .claim(call(
                pb::ClaimRequest {
                    reader_id: "dr-x".into(),
                    study_id: routine.to_string(),
                    idempotency_key: "k1".into(),
                },
                &x,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert_eq!(precondition_of(&err), Some(("ORDER".into(), stat.to_string())));
        let next = c
            .claim_next(call(pb::ClaimNextRequest { reader_id: "dr-x".into(), idempotency_key: "k2".into() }, &x))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(next.entry.unwrap().study_id, stat.to_string());
        let err = c
            .claim(call(
                pb::ClaimRequest {
                    reader_id: "dr-y".into(),
                    study_id: stat.to_string(),
                    idempotency_key: String::new(),
                },
                &y,
            ))
            .await
            .unwrap_err();
        assert_eq!(precondition_of(&err).map(|v| v.0), Some("ASSIGNMENT".into()));

        // A final read needs a licence: the rule is named.
        routing
            .execute(Command::Queue(study(3, Priority::Urgent, ReadType::Final, at)), at, Cause::Unkeyed)
            .await
            .unwrap();
        let err = c
            .claim(call(
                pb::ClaimRequest {
                    reader_id: "dr-y".into(),
                    study_id: fin.to_string(),
                    idempotency_key: String::new(),
                },
                &y,
            ))
            .await
            .unwrap_err();
        assert_eq!(precondition_of(&err), Some(("ELIGIBILITY".into(), "licence".into())));
        let why = c
            .explain_eligibility(call(
                pb::ExplainEligibilityRequest { reader_id: "dr-z".into(), study_id: routine.to_string() },
                &z,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!why.eligible);
        let failed: Vec<&str> = why.checks.iter().filter(|c| !c.passed).map(|c| c.rule.as_str()).collect();
        assert_eq!(failed, ["contract"]);

        // Who may act for whom.
        let err = c.get_worklist(call(pb::GetWorklistRequest { reader_id: "dr-x".into() }, &y)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(c.get_worklist(call(pb::GetWorklistRequest { reader_id: "dr-x".into() }, &admin)).await.is_ok());
        let err = c.get_worklist(call(pb::GetWorklistRequest { reader_id: "dr-x".into() }, &pacs)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = c.get_worklist(Request::new(pb::GetWorklistRequest { reader_id: "dr-x".into() })).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = c
            .claim(call(
                pb::ClaimRequest { reader_id: "dr-x".into(), study_id: "nope".into(), idempotency_key: String::new() },
                &x,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = c
            .claim(call(
                pb::ClaimRequest {
                    reader_id: "dr-x".into(),
                    study_id: Uuid::from_u128(99).to_string(),
                    idempotency_key: String::new(),
                },
                &x,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);

        // Release puts it back; a group admin reassigns.
        c.release(call(
            pb::ReleaseRequest {
                reader_id: "dr-x".into(),
                study_id: stat.to_string(),
                reason: "wrong subspecialty".into(),
                idempotency_key: String::new(),
            },
            &x,
        ))
        .await
        .unwrap();
        c.reassign(call(
            pb::ReassignRequest {
                reading_group: "g".into(),
                study_id: stat.to_string(),
                to_reader_id: "dr-y".into(),
                idempotency_key: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap();
        let err = c
            .reassign(call(
                pb::ReassignRequest {
                    reading_group: "g".into(),
                    study_id: stat.to_string(),
                    to_reader_id: "dr-x".into(),
                    idempotency_key: String::new(),
                },
                &x,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "a reader is not a group admin");
        assert_eq!(routing.read(|s| s.studies[&stat].assignee.clone()).await.as_deref(), Some("dr-y"));
    }
}
