//! `meridian.routing.v1.RoutingService`: the worklist over gRPC. Every call
//! resolves the principal (Foundation B's interceptor) and asks the one
//! `authorize`; a reader acts for themselves, a group admin for the group.
//! Domain refusals map to the rich error model: FAILED_PRECONDITION with a
//! PreconditionFailure naming the rule, NOT_FOUND with a ResourceInfo.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meridian_auth::grpc::{permission_denied, principal};
use meridian_auth::{Action, Denied, Principal, Resource, authorize};
use meridian_events::UnixMicros;
use meridian_proto::routing::v1 as pb;
use meridian_proto::routing::v1::routing_service_server::RoutingService;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::app::{Cause, Error, Folded, Routing};
use crate::domain::model::{Availability, Credential, Licence, ReadType, Reader, Shift, Study};
use crate::domain::worklist::{self, Command, Event, Profile, State};

pub struct RoutingGrpc {
    routing: Arc<Routing>,
}

impl RoutingGrpc {
    pub fn new(routing: Arc<Routing>) -> RoutingGrpc {
        RoutingGrpc { routing }
    }
}

use meridian_auth::grpc::arrival_time as now;

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
                W::AlreadyRegistered { reader } => {
                    let mut details = ErrorDetails::new();
                    details.set_resource_info("reader", &reader, "", message.clone());
                    Status::with_error_details(Code::AlreadyExists, message, details)
                }
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
                W::WrongRead { study, .. } => precondition("READ_TYPE", &study.to_string(), message),
                W::NotInGroup { reader, group } => precondition("GROUP", &group, format!("{reader} is not in {group}")),
                W::HeldByAnotherGroup { study, .. } => {
                    let mut details = ErrorDetails::new();
                    details.set_resource_info("study", study.to_string(), "", message.clone());
                    Status::with_error_details(Code::PermissionDenied, message, details)
                }
            }
        }
        Error::ReaderElsewhere { ref reader, ref region } => {
            precondition("REGION", &format!("{region}/{reader}"), e.to_string())
        }
        Error::KeyReused { .. } => {
            let message = e.to_string();
            let details = ErrorDetails::with_bad_request_violation("idempotency_key", message.clone());
            Status::with_error_details(Code::InvalidArgument, message, details)
        }
        Error::Log(e) => Status::unavailable(format!("routing log: {e}")),
        other => Status::internal(other.to_string()),
    }
}

use meridian_auth::grpc::invalid_argument as bad_request;

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1_000;
/// A watched page is looked at again this often even with no event:
/// shifts end and licences expire with time alone.
const WATCH_RECHECK: Duration = Duration::from_secs(15);

fn page_size(requested: i32) -> usize {
    if requested <= 0 { DEFAULT_PAGE } else { (requested as usize).min(MAX_PAGE) }
}

/// Page tokens are the offset into the worklist, opaque to clients.
fn page_offset(token: &str) -> Result<usize, Status> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .strip_prefix("o")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad_request("page_token", format!("{token:?} is not a token this service gave")))
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
        return Err(permission_denied(&p.refuse(Denied {
            subject: p.subject.clone(),
            action: "act_for_reader",
            resource: format!("reader {reader_id}"),
            resource_kind: "reader",
            reason: "a reader acts for themselves; a group admin for the group".into(),
        })));
    }
    Ok(reader)
}

/// The study, if reading group `group` may see it: a contract of its
/// tenant names the group. Otherwise NOT_FOUND, as for a study that is not
/// here, so that other groups' work is not disclosed.
fn seen_by<'s>(routing: &Routing, state: &'s State, group: &str, study: Uuid) -> Result<&'s Study, Status> {
    let hidden = || not_found("study", &study.to_string());
    let st = state.studies.get(&study).ok_or_else(hidden)?;
    let contract = routing.policy().contracts.get(&st.contract);
    if !contract.is_some_and(|c| c.groups.contains(group)) {
        return Err(hidden());
    }
    Ok(st)
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
        language: routing.policy().contracts.get(&s.contract).map(|c| c.language.clone()).unwrap_or_default(),
    }
}

fn time(field: &str, t: &Option<prost_types::Timestamp>) -> Result<UnixMicros, Status> {
    t.as_ref().map(UnixMicros::from_timestamp).ok_or_else(|| bad_request(field, "is missing"))
}

fn licences_in(ls: &[pb::Licence]) -> Result<Vec<Licence>, Status> {
    ls.iter()
        .enumerate()
        .map(|(i, l)| {
            if l.jurisdiction.is_empty() {
                return Err(bad_request(&format!("licences[{i}].jurisdiction"), "is empty"));
            }
            Ok(Licence {
                jurisdiction: l.jurisdiction.clone(),
                expires: time(&format!("licences[{i}].expires_at"), &l.expires_at)?,
            })
        })
        .collect()
}

fn credentials_in(cs: &[pb::Credential]) -> Result<Vec<Credential>, Status> {
    cs.iter()
        .enumerate()
        .map(|(i, c)| {
            if c.tenant.is_empty() || c.facility.is_empty() {
                return Err(bad_request(&format!("credentials[{i}]"), "needs a tenant and a facility"));
            }
            Ok(Credential {
                tenant: c.tenant.clone(),
                facility: c.facility.clone(),
                expires: time(&format!("credentials[{i}].expires_at"), &c.expires_at)?,
            })
        })
        .collect()
}

fn profile_in(p: Option<&pb::ReaderProfile>) -> Result<Profile, Status> {
    let p = p.ok_or_else(|| bad_request("profile", "is missing"))?;
    let read_types = p
        .read_types
        .iter()
        .map(|t| {
            ReadType::parse(t).ok_or_else(|| {
                bad_request("profile.read_types", format!("{t:?} is not preliminary, final, secondary or peer_review"))
            })
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    let shifts = p
        .shifts
        .iter()
        .enumerate()
        .map(|(i, sh)| {
            let weekday = u8::try_from(sh.weekday).ok().filter(|d| (1..=7).contains(d));
            match weekday {
                Some(weekday) if sh.start_minute < 1_440 && sh.end_minute < 1_440 => {
                    Ok(Shift { weekday, start_minute: sh.start_minute, end_minute: sh.end_minute })
                }
                _ => Err(bad_request(
                    &format!("profile.shifts[{i}]"),
                    "needs an ISO weekday (1-7) and minutes of the day (0-1439)",
                )),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    if p.capacity == 0 {
        return Err(bad_request("profile.capacity", "must be at least 1"));
    }
    Ok(Profile {
        subspecialties: p.subspecialties.iter().cloned().collect(),
        modalities: p.modalities.iter().cloned().collect(),
        read_types,
        shifts,
        capacity: p.capacity,
    })
}

fn reader_out(state: &State, r: &Reader) -> pb::Reader {
    let ts = |t: UnixMicros| Some(t.to_timestamp());
    pb::Reader {
        reader_id: r.id.clone(),
        reading_group: r.group.clone(),
        region: r.region.clone(),
        time_zone: r.time_zone.clone(),
        profile: Some(pb::ReaderProfile {
            subspecialties: r.subspecialties.iter().cloned().collect(),
            modalities: r.modalities.iter().cloned().collect(),
            read_types: r.read_types.iter().map(|t| t.as_str().to_owned()).collect(),
            shifts: r
                .shifts
                .iter()
                .map(|s| pb::Shift {
                    weekday: u32::from(s.weekday),
                    start_minute: s.start_minute,
                    end_minute: s.end_minute,
                })
                .collect(),
            capacity: r.capacity,
        }),
        licences: r
            .licences
            .iter()
            .map(|l| pb::Licence { jurisdiction: l.jurisdiction.clone(), expires_at: ts(l.expires) })
            .collect(),
        credentials: r
            .credentials
            .iter()
            .map(|c| pb::Credential {
                tenant: c.tenant.clone(),
                facility: c.facility.clone(),
                expires_at: ts(c.expires),
            })
            .collect(),
        status: r.availability.as_str().into(),
        open_assignments: state.load.get(&r.id).map_or(0, |l| l.open),
    }
}

/// FAILED_PRECONDITION naming the home region when `study` is shown here
/// but homed in another region: what is done to it is done there.
fn elsewhere(folded: &Folded, study: &Uuid, what: &str) -> Result<(), Status> {
    match folded.homed_elsewhere(study) {
        None => Ok(()),
        Some(home) => Err(precondition(
            "REGION",
            &format!("{home}/{study}"),
            format!("study {study} is homed in {home}: {what} it through {home}'s routing"),
        )),
    }
}

/// The page `reader` watches, and why each study of `previous` that is not
/// on it left.
fn watched_page(
    routing: &Routing,
    folded: &Folded,
    reader: &str,
    size: usize,
    previous: &[pb::WorklistEntry],
    at: UnixMicros,
) -> Result<pb::WatchWorklistResponse, Status> {
    let state = &folded.worklist;
    let r = state.readers.get(reader).ok_or_else(|| not_found("reader", reader))?;
    let studies = folded.offers(routing.policy(), at, reader, size).map_err(|e| status(Error::Domain(e)))?;
    let entries: Vec<pb::WorklistEntry> = studies.iter().map(|st| entry(routing, r, st)).collect();
    let now_on: BTreeSet<&str> = entries.iter().map(|e| e.study_id.as_str()).collect();
    let before: BTreeSet<&str> = previous.iter().map(|e| e.study_id.as_str()).collect();
    let entered =
        entries.iter().filter(|e| !before.contains(e.study_id.as_str())).map(|e| e.study_id.clone()).collect();
    let removed = previous
        .iter()
        .filter(|e| !now_on.contains(e.study_id.as_str()))
        .map(|e| {
            let id = Uuid::parse_str(&e.study_id).unwrap_or_default();
            let reason = match folded.study(&id) {
                None => "no longer on a worklist this region knows".to_owned(),
                Some(st) if st.assignee.as_deref() == Some(reader) => "assigned to you".to_owned(),
                Some(st) if st.assignee.is_some() => "assigned to another reader".to_owned(),
                Some(st) if !state.studies.contains_key(&id) => {
                    format!("{} no longer offers it to you, or {size} studies come first", st.home_region)
                }
                Some(_) => match state.explain(routing.policy(), at, reader, id) {
                    Ok(checks) => match checks.into_iter().find(|c| !c.passed) {
                        Some(c) => format!("{}: {}", c.rule, c.reason),
                        None => format!("behind {size} studies that come first"),
                    },
                    Err(e) => e.to_string(),
                },
            };
            pb::WorklistRemoval { study_id: e.study_id.clone(), reason }
        })
        .collect();
    let held = folded.assignments(reader).map_err(|e| status(Error::Domain(e)))?;
    let held = held.into_iter().map(|st| entry(routing, r, st)).collect();
    Ok(pb::WatchWorklistResponse { entries, entered_study_ids: entered, removed, held })
}

impl RoutingGrpc {
    /// The reader a management call is about, and the admin's right to it.
    async fn managed_reader(&self, p: &Principal, reader_id: &str) -> Result<(), Status> {
        self.routing
            .read(|s| {
                let r = s.readers.get(reader_id).ok_or_else(|| not_found("reader", reader_id))?;
                authorize(p, Action::ManageReaders, &Resource::ReadingGroup { group: &r.group })
                    .map_err(|d| permission_denied(&d))
            })
            .await
    }

    /// A group admin's change to one of its readers: the right to the reader
    /// first, then the request's fields, then the reader as it now is.
    async fn change_reader(
        &self,
        p: &Principal,
        reader_id: &str,
        key: &str,
        command: impl FnOnce() -> Result<Command, Status>,
    ) -> Result<pb::Reader, Status> {
        self.managed_reader(p, reader_id).await?;
        self.manage(p, reader_id, command()?, key).await
    }

    /// Runs a management command and answers with the reader after it.
    async fn manage(&self, p: &Principal, reader_id: &str, command: Command, key: &str) -> Result<pb::Reader, Status> {
        self.routing.execute(command, now(), cause(p, key)).await.map_err(status)?;
        self.routing
            .read(|s| s.readers.get(reader_id).map(|r| reader_out(s, r)))
            .await
            .ok_or_else(|| not_found("reader", reader_id))
    }

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
            .read_folded(|f| -> Result<Option<Vec<String>>, Status> {
                acting_for(p, &f.worklist, reader_id, Action::ViewWorklist)?;
                if let Some(id) = &study {
                    elsewhere(f, id, "claim")?;
                }
                let s = &f.worklist;
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
        let r = request.into_inner();
        let (size, offset) = (page_size(r.page_size), page_offset(&r.page_token)?);
        let at = now();
        let routing = &self.routing;
        let (entries, more) = routing
            .read_folded(|f| -> Result<_, Status> {
                let reader = acting_for(&p, &f.worklist, &r.reader_id, Action::ViewWorklist)?;
                let studies = f
                    .offers(routing.policy(), at, &r.reader_id, offset + size + 1)
                    .map_err(|e| status(Error::Domain(e)))?;
                let more = studies.len() > offset + size;
                Ok((studies.into_iter().skip(offset).take(size).map(|st| entry(routing, reader, st)).collect(), more))
            })
            .await?;
        let next_page_token = if more { format!("o{}", offset + size) } else { String::new() };
        Ok(Response::new(pb::GetWorklistResponse { entries, next_page_token }))
    }

    type WatchWorklistStream = Pin<Box<dyn Stream<Item = Result<pb::WatchWorklistResponse, Status>> + Send + 'static>>;

    async fn watch_worklist(
        &self,
        request: Request<pb::WatchWorklistRequest>,
    ) -> Result<Response<Self::WatchWorklistStream>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let size = page_size(r.page_size);
        let routing = self.routing.clone();
        let first = routing
            .read_folded(|f| {
                acting_for(&p, &f.worklist, &r.reader_id, Action::ViewWorklist)?;
                watched_page(&routing, f, &r.reader_id, size, &[], now())
            })
            .await?;
        let mut changes = routing.changes();
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tokio::spawn(async move {
            let (mut previous, mut previous_held) = (first.entries.clone(), first.held.clone());
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            loop {
                tokio::select! {
                    () = tx.closed() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(WATCH_RECHECK) => {}
                }
                let page =
                    routing.read_folded(|f| watched_page(&routing, f, &r.reader_id, size, &previous, now())).await;
                match page {
                    Ok(page) if page.entries == previous && page.held == previous_held => {}
                    Ok(page) => {
                        (previous, previous_held) = (page.entries.clone(), page.held.clone());
                        if tx.send(Ok(page)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
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
        self.routing.read_folded(|f| elsewhere(f, &study, "release")).await?;
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
        let routing = &self.routing;
        routing.read(|s| seen_by(routing, s, &r.reading_group, study).map(drop)).await?;
        let tenant = routing.read(|s| s.studies.get(&study).map(|st| st.tenant.clone())).await;
        let command = Command::Reassign { group: r.reading_group, study, to: r.to_reader_id };
        self.routing.execute(command, now(), cause(&p, &r.idempotency_key)).await.map_err(|e| {
            // The domain's one refusal: another group's reader holds it.
            if let Error::Domain(held @ worklist::Error::HeldByAnotherGroup { .. }) = &e {
                let denied = Denied {
                    subject: p.subject.clone(),
                    action: Action::Reassign.as_str(),
                    resource: format!("study {study}"),
                    resource_kind: "study",
                    reason: held.to_string(),
                };
                p.refuse_on(denied, tenant.as_deref());
            }
            status(e)
        })?;
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
            .read_folded(|f| -> Result<_, Status> {
                let reader = acting_for(&p, &f.worklist, &r.reader_id, Action::ViewWorklist)?;
                // A study homed elsewhere is explained as its home region's
                // worklist would, for this region's reader.
                let holding = f.elsewhere.values().find(|s| s.studies.contains_key(&study));
                let s = holding.filter(|_| !f.worklist.studies.contains_key(&study)).unwrap_or(&f.worklist);
                seen_by(routing, s, &reader.group, study)?;
                s.explain_to(routing.policy(), at, reader, study).map_err(|e| status(Error::Domain(e)))
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

    async fn register_reader(
        &self,
        request: Request<pb::RegisterReaderRequest>,
    ) -> Result<Response<pb::RegisterReaderResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let given = r.reader.ok_or_else(|| bad_request("reader", "is missing"))?;
        authorize(&p, Action::ManageReaders, &Resource::ReadingGroup { group: &given.reading_group })
            .map_err(|d| permission_denied(&d))?;
        if given.reader_id.is_empty() {
            return Err(bad_request("reader.reader_id", "is empty"));
        }
        if !self.routing.policy().regions.contains_key(&given.region) {
            return Err(bad_request("reader.region", format!("{:?} is not a configured region", given.region)));
        }
        if jiff::tz::TimeZone::get(&given.time_zone).is_err() {
            return Err(bad_request("reader.time_zone", format!("{:?} is not an IANA time zone", given.time_zone)));
        }
        let profile = profile_in(given.profile.as_ref())?;
        let reader = Reader {
            id: given.reader_id.clone(),
            group: given.reading_group,
            region: given.region,
            time_zone: given.time_zone,
            licences: licences_in(&given.licences)?,
            credentials: credentials_in(&given.credentials)?,
            subspecialties: profile.subspecialties,
            modalities: profile.modalities,
            read_types: profile.read_types,
            shifts: profile.shifts,
            capacity: profile.capacity,
            availability: Availability::Available,
        };
        let reader = self.manage(&p, &given.reader_id, Command::RegisterReader(reader), &r.idempotency_key).await?;
        Ok(Response::new(pb::RegisterReaderResponse { reader: Some(reader) }))
    }

    async fn update_reader(
        &self,
        request: Request<pb::UpdateReaderRequest>,
    ) -> Result<Response<pb::UpdateReaderResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let command =
            || Ok(Command::UpdateReader { reader: r.reader_id.clone(), profile: profile_in(r.profile.as_ref())? });
        let reader = self.change_reader(&p, &r.reader_id, &r.idempotency_key, command).await?;
        Ok(Response::new(pb::UpdateReaderResponse { reader: Some(reader) }))
    }

    async fn update_licences(
        &self,
        request: Request<pb::UpdateLicencesRequest>,
    ) -> Result<Response<pb::UpdateLicencesResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let command =
            || Ok(Command::UpdateLicences { reader: r.reader_id.clone(), licences: licences_in(&r.licences)? });
        let reader = self.change_reader(&p, &r.reader_id, &r.idempotency_key, command).await?;
        Ok(Response::new(pb::UpdateLicencesResponse { reader: Some(reader) }))
    }

    async fn update_credentials(
        &self,
        request: Request<pb::UpdateCredentialsRequest>,
    ) -> Result<Response<pb::UpdateCredentialsResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let command = || {
            Ok(Command::UpdateCredentials { reader: r.reader_id.clone(), credentials: credentials_in(&r.credentials)? })
        };
        let reader = self.change_reader(&p, &r.reader_id, &r.idempotency_key, command).await?;
        Ok(Response::new(pb::UpdateCredentialsResponse { reader: Some(reader) }))
    }

    async fn list_assignments(
        &self,
        request: Request<pb::ListAssignmentsRequest>,
    ) -> Result<Response<pb::ListAssignmentsResponse>, Status> {
        let p = principal(&request)?.clone();
        let reader_id = request.into_inner().reader_id;
        let routing = &self.routing;
        let entries = routing
            .read_folded(|f| -> Result<Vec<pb::WorklistEntry>, Status> {
                let reader = acting_for(&p, &f.worklist, &reader_id, Action::ViewWorklist)?;
                let held = f.assignments(&reader_id).map_err(|e| status(Error::Domain(e)))?;
                Ok(held.into_iter().map(|st| entry(routing, reader, st)).collect())
            })
            .await?;
        Ok(Response::new(pb::ListAssignmentsResponse { entries }))
    }

    async fn list_unroutable(
        &self,
        request: Request<pb::ListUnroutableRequest>,
    ) -> Result<Response<pb::ListUnroutableResponse>, Status> {
        let p = principal(&request)?.clone();
        let studies = self.unroutable_of(&p, request.get_ref().page_size).await?;
        Ok(Response::new(pb::ListUnroutableResponse { studies }))
    }

    async fn get_reader(
        &self,
        request: Request<pb::GetReaderRequest>,
    ) -> Result<Response<pb::GetReaderResponse>, Status> {
        let p = principal(&request)?.clone();
        let r = request.into_inner();
        let reader = self
            .routing
            .read(|s| acting_for(&p, s, &r.reader_id, Action::ViewWorklist).map(|reader| reader_out(s, reader)))
            .await?;
        Ok(Response::new(pb::GetReaderResponse { reader: Some(reader) }))
    }
}

impl RoutingGrpc {
    /// The tenant's unroutable studies, newest first.
    pub async fn unroutable_of(&self, p: &Principal, page_size: i32) -> Result<Vec<pb::UnroutableStudy>, Status> {
        let tenant = p.tenant.clone().unwrap_or_default();
        authorize(p, Action::ViewRejections, &Resource::Tenant { tenant: &tenant })
            .map_err(|d| permission_denied(&d))?;
        let size = if page_size <= 0 { 100 } else { (page_size as usize).min(1_000) };
        Ok(self
            .routing
            .read(|s| {
                let list = s.unroutable.get(&tenant).into_iter().flatten().rev().take(size);
                list.map(|u| pb::UnroutableStudy {
                    study_id: u.study.to_string(),
                    facility: u.facility.clone(),
                    reason: u.reason.clone(),
                    completed_at: Some(u.completed_at.to_timestamp()),
                })
                .collect()
            })
            .await)
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
    use meridian_auth::{Authenticator, TokenSigner};
    use meridian_config::PrincipalKind;
    use meridian_events::DataClass;
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
            read_types: BTreeSet::from([ReadType::Preliminary, ReadType::Final]),
            ..crate::app::tests::reader()
        }
    }

    fn study(id: u128, priority: Priority, read_type: ReadType, at: UnixMicros) -> NewStudy {
        NewStudy { priority, read_type, ai_flagged: true, ..crate::app::tests::study(id, at) }
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
            trail: Default::default(),
        }
    }

    fn call<T>(message: T, token: &str) -> Request<T> {
        let mut r = Request::new(message);
        r.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        r
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        log: Arc<EmbeddedLog>,
        routing: Arc<Routing>,
        c: RoutingServiceClient<Channel>,
        at: UnixMicros,
        x: String,
        y: String,
        admin: String,
        z: String,
        pacs: String,
        h_admin: String,
        stat: Uuid,
        routine: Uuid,
        fin: Uuid,
    }

    /// Routing over gRPC with readers dr-x, dr-y (group g) and dr-z (group
    /// h), a STAT and a routine preliminary queued, and tokens for each.
    async fn fixture() -> Fixture {
        let dir = tempfile::TempDir::new().unwrap();
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        log.ensure_topic(&TopicSpec::new(TopicName::new("us-east", DataClass::Operational, "routing").unwrap(), 4))
            .await
            .unwrap();
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
            service: None,
            subspecialty_required: false,
            language: "en".into(),
        };
        // A second contract names both groups: one group's reader may then
        // hold a study the other group's admin can see.
        let shared = ContractPolicy {
            name: "shared".into(),
            groups: BTreeSet::from(["g".into(), "h".into()]),
            ..contract.clone()
        };
        let policy = Policy {
            contracts: BTreeMap::from([("c".to_string(), contract), ("shared".to_string(), shared)]),
            regions: BTreeMap::from([(
                "us-east".to_string(),
                RegionInfo { country: "US".into(), nearshore: BTreeSet::new() },
            )]),
            ..Default::default()
        };
        let routing = Arc::new(crate::app::tests::open_with(&log, policy).await);
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
        let verifier = Arc::new(Authenticator::new("iss", "aud", &[("k".into(), public.into_bytes())]).unwrap());
        let token = |p: Principal| signer.mint(&p, at.0 / 1_000_000, 600).unwrap();
        let x = token(principal("dr-x", PrincipalKind::Group, Some("g"), Some("dr-x"), &["reader"]));
        let y = token(principal("dr-y", PrincipalKind::Group, Some("g"), Some("dr-y"), &["reader"]));
        let admin = token(principal("g-admin", PrincipalKind::Group, Some("g"), None, &["group-admin"]));
        let z = token(principal("dr-z", PrincipalKind::Group, Some("h"), Some("dr-z"), &["reader"]));
        let pacs = token(principal("pacs", PrincipalKind::Tenant, None, None, &["facility"]));
        let h_admin = token(principal("h-admin", PrincipalKind::Group, Some("h"), None, &["group-admin"]));

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
        let c = RoutingServiceClient::new(channel);

        Fixture { _dir: dir, log, routing, c, at, x, y, admin, z, pacs, h_admin, stat, routine, fin }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_claim_over_grpc_through_authorize_with_rich_errors() {
        let Fixture { _dir, routing, mut c, at, x, y, admin, z, pacs, stat, routine, fin, .. } = fixture().await;
        // The worklist, in the total order: STAT first.
        let list = c
            .get_worklist(call(pb::GetWorklistRequest { reader_id: "dr-x".into(), ..Default::default() }, &x))
            .await
            .unwrap()
            .into_inner();
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
        // The claimed study is dr-x's work now, and only dr-x (or an admin) sees it listed.
        let mine = c
            .list_assignments(call(pb::ListAssignmentsRequest { reader_id: "dr-x".into() }, &x))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mine.entries.iter().map(|e| e.study_id.clone()).collect::<Vec<_>>(), [stat.to_string()]);
        let err =
            c.list_assignments(call(pb::ListAssignmentsRequest { reader_id: "dr-x".into() }, &y)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
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
                pb::ExplainEligibilityRequest { reader_id: "dr-y".into(), study_id: fin.to_string() },
                &y,
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(!why.eligible);
        let failed: Vec<&str> = why.checks.iter().filter(|c| !c.passed).map(|c| c.rule.as_str()).collect();
        assert_eq!(failed, ["licence"]);
        // Another group's reader learns nothing of a study no contract
        // of theirs names: the same answer as for no study at all.
        let err = c
            .explain_eligibility(call(
                pb::ExplainEligibilityRequest { reader_id: "dr-z".into(), study_id: routine.to_string() },
                &z,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.message(), format!("no study {routine} in this region"));

        // Who may act for whom.
        let err = c
            .get_worklist(call(pb::GetWorklistRequest { reader_id: "dr-x".into(), ..Default::default() }, &y))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(
            c.get_worklist(call(pb::GetWorklistRequest { reader_id: "dr-x".into(), ..Default::default() }, &admin))
                .await
                .is_ok()
        );
        let err = c
            .get_worklist(call(pb::GetWorklistRequest { reader_id: "dr-x".into(), ..Default::default() }, &pacs))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = c
            .get_worklist(Request::new(pb::GetWorklistRequest { reader_id: "dr-x".into(), ..Default::default() }))
            .await
            .unwrap_err();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retried_request_gets_its_first_answer_even_after_a_restart_and_a_reused_key_is_named() {
        let Fixture { _dir, log, routing, mut c, at, x, stat, routine, .. } = fixture().await;
        let next = || call(pb::ClaimNextRequest { reader_id: "dr-x".into(), idempotency_key: "n-1".into() }, &x);
        let first = c.claim_next(next()).await.unwrap().into_inner();
        let again = c.claim_next(next()).await.unwrap().into_inner();
        assert_eq!(again, first, "the retry is answered as the first call was");
        assert_eq!(first.entry.as_ref().unwrap().study_id, stat.to_string());
        let mine = routing.read(|s| s.studies.values().filter(|s| s.assignee.as_deref() == Some("dr-x")).count()).await;
        assert_eq!(mine, 1, "the retry claimed nothing more");

        // The same key for another request: INVALID_ARGUMENT naming the key.
        let claim =
            pb::ClaimRequest { reader_id: "dr-x".into(), study_id: routine.to_string(), idempotency_key: "n-1".into() };
        let err = c.claim(call(claim, &x)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.get_error_details().bad_request().unwrap().field_violations[0].field, "idempotency_key");
        assert!(err.message().contains("\"n-1\""), "{}", err.message());

        let release = || {
            let r = pb::ReleaseRequest {
                reader_id: "dr-x".into(),
                study_id: stat.to_string(),
                reason: "wrong subspecialty".into(),
                idempotency_key: "r-1".into(),
            };
            call(r, &x)
        };
        c.release(release()).await.unwrap();
        c.release(release()).await.expect("a retried release is answered, not refused as not the assignee");

        // The answers live in the log: a routing opened again from it knows them.
        let policy = routing.policy().clone();
        drop((c, routing));
        let reopened = crate::app::tests::open_with(&log, policy).await;
        let cause = || Cause::Request { tenant: "reader:dr-x".into(), idempotency_key: "n-1".into() };
        let answer = reopened.execute(Command::ClaimNext { reader: "dr-x".into() }, at, cause()).await.unwrap();
        assert!(matches!(&answer[..], [Event::AssignmentClaimed { study, .. }] if *study == stat));
        assert_eq!(reopened.read(|s| s.studies[&stat].assignee.clone()).await, None, "released, and not claimed again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_admin_moves_only_work_its_group_may_see_and_no_other_group_holds() {
        let Fixture { _dir, routing, mut c, at, admin, z, h_admin, routine, .. } = fixture().await;
        let shared = Uuid::from_u128(4);
        let queued = NewStudy { contract: "shared".into(), ..study(4, Priority::Stat, ReadType::Preliminary, at) };
        routing.execute(Command::Queue(queued), at, Cause::Unkeyed).await.unwrap();
        let claim =
            pb::ClaimRequest { reader_id: "dr-z".into(), study_id: shared.to_string(), idempotency_key: String::new() };
        c.claim(call(claim, &z)).await.unwrap();
        let reassign = |group: &str, study: Uuid, to: &str, token: &str| {
            let r = pb::ReassignRequest {
                reading_group: group.into(),
                study_id: study.to_string(),
                to_reader_id: to.into(),
                idempotency_key: String::new(),
            };
            call(r, token)
        };
        let err = c.reassign(reassign("g", shared, "dr-x", &admin)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "g's admin may not take what h's reader holds");
        assert!(err.message().contains("dr-z of reading group h holds"), "{}", err.message());
        assert_eq!(routing.read(|s| s.studies[&shared].assignee.clone()).await.as_deref(), Some("dr-z"));
        // h's admin may not see a study only g's contract names.
        let err = c.reassign(reassign("h", routine, "dr-z", &h_admin)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        // Once dr-z lets it go, either group's admin may move it.
        let release = pb::ReleaseRequest {
            reader_id: "dr-z".into(),
            study_id: shared.to_string(),
            reason: String::new(),
            idempotency_key: String::new(),
        };
        c.release(call(release, &z)).await.unwrap();
        c.reassign(reassign("g", shared, "dr-x", &admin)).await.unwrap();
        assert_eq!(routing.read(|s| s.studies[&shared].assignee.clone()).await.as_deref(), Some("dr-x"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tenant_lists_its_unroutable_studies_and_an_assignment_names_its_read() {
        let Fixture { _dir, log, routing, mut c, at, x, pacs, stat, .. } = fixture().await;
        let unroutable = crate::domain::worklist::Unroutable {
            study: Uuid::from_u128(7),
            tenant: "acme".into(),
            facility: "f".into(),
            reason: "no contract of tenant acme takes a routine XA study".into(),
            completed_at: at,
        };
        let mark = || Command::MarkUnroutable(unroutable.clone());
        routing.execute(mark(), at, Cause::Unkeyed).await.unwrap();
        let again = routing.execute(mark(), at, Cause::Unkeyed).await.unwrap_err();
        assert!(matches!(again, Error::Domain(worklist::Error::AlreadyQueued { .. })), "kept once");
        let listed =
            c.list_unroutable(call(pb::ListUnroutableRequest { page_size: 0 }, &pacs)).await.unwrap().into_inner();
        assert_eq!(listed.studies.len(), 1);
        assert_eq!(
            (listed.studies[0].study_id.clone(), listed.studies[0].reason.clone()),
            (unroutable.study.to_string(), unroutable.reason.clone())
        );
        let err = c.list_unroutable(call(pb::ListUnroutableRequest { page_size: 0 }, &x)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "a reader does not list a tenant's studies");

        // The claim's event says which read it is for.
        c.claim_next(call(pb::ClaimNextRequest { reader_id: "dr-x".into(), idempotency_key: String::new() }, &x))
            .await
            .unwrap();
        let topic = TopicName::new("us-east", DataClass::Operational, "routing").unwrap();
        let start = (0..4).map(|p| meridian_log::Position::start(topic.clone(), p)).collect();
        let records = log.reader(start).await.unwrap().next_batch(1_000, Duration::from_millis(200)).await.unwrap();
        let claimed: Vec<_> = records
            .iter()
            .filter_map(|r| match r.envelope().unwrap().open_plain() {
                Ok(meridian_events::Payload::AssignmentClaimed(c)) => Some(c),
                _ => None,
            })
            .collect();
        assert_eq!(claimed.len(), 1);
        assert_eq!((claimed[0].study_id.clone(), claimed[0].read_type.as_str()), (stat.to_string(), "preliminary"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worklist_pages_and_a_watch_follows_its_changes_with_reasons() {
        let Fixture { _dir, routing, mut c, at, x, y, stat, routine, .. } = fixture().await;
        let page = |size: i32, token: &str| pb::GetWorklistRequest {
            reader_id: "dr-x".into(),
            page_size: size,
            page_token: token.into(),
        };
        let first = c.get_worklist(call(page(1, ""), &x)).await.unwrap().into_inner();
        assert_eq!(first.entries.iter().map(|e| e.study_id.clone()).collect::<Vec<_>>(), [stat.to_string()]);
        assert!(!first.next_page_token.is_empty());
        let second = c.get_worklist(call(page(1, &first.next_page_token), &x)).await.unwrap().into_inner();
        assert_eq!(second.entries[0].study_id, routine.to_string());
        assert!(second.next_page_token.is_empty(), "the last page says so");
        let err = c.get_worklist(call(page(1, "page-2"), &x)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.get_error_details().bad_request().unwrap().field_violations[0].field, "page_token");

        let mut watch = c
            .watch_worklist(call(pb::WatchWorklistRequest { reader_id: "dr-x".into(), page_size: 10 }, &x))
            .await
            .unwrap()
            .into_inner();
        let now_on = watch.message().await.unwrap().unwrap();
        assert_eq!(now_on.entries.len(), 2);
        assert_eq!(now_on.entered_study_ids, [stat.to_string(), routine.to_string()]);

        // Another reader claims the STAT study: it leaves dr-x's page, with why.
        c.claim_next(call(pb::ClaimNextRequest { reader_id: "dr-y".into(), idempotency_key: String::new() }, &y))
            .await
            .unwrap();
        let change = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(change.entries.iter().map(|e| e.study_id.clone()).collect::<Vec<_>>(), [routine.to_string()]);
        assert_eq!(change.removed.len(), 1);
        assert_eq!(change.removed[0].study_id, stat.to_string());
        assert_eq!(change.removed[0].reason, "assigned to another reader");
        assert!(change.entered_study_ids.is_empty());

        // dr-x goes away: everything leaves, naming the rule.
        routing
            .execute(
                Command::SetAvailability { reader: "dr-x".into(), availability: Availability::Away },
                at,
                Cause::Unkeyed,
            )
            .await
            .unwrap();
        let change = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.unwrap().unwrap().unwrap();
        assert!(change.entries.is_empty());
        assert_eq!(change.removed[0].reason, "on_shift: dr-x is Away");

        // A reader cannot watch another's worklist.
        let err = c
            .watch_worklist(call(pb::WatchWorklistRequest { reader_id: "dr-y".into(), page_size: 0 }, &x))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_admins_register_and_update_their_readers_and_no_one_else_does() {
        let Fixture { _dir, routing, mut c, x, admin, z, stat, .. } = fixture().await;
        let until = Some(UnixMicros(i64::MAX / 2).to_timestamp());
        let profile = pb::ReaderProfile {
            subspecialties: vec!["neuro".into()],
            modalities: vec!["CT".into()],
            read_types: vec!["preliminary".into(), "final".into()],
            shifts: (1..=7).map(|d| pb::Shift { weekday: d, start_minute: 0, end_minute: 0 }).collect(),
            capacity: 3,
        };
        let new_reader = pb::Reader {
            reader_id: "dr-w".into(),
            reading_group: "g".into(),
            region: "us-east".into(),
            time_zone: "America/New_York".into(),
            profile: Some(profile.clone()),
            licences: vec![pb::Licence { jurisdiction: "US-NY".into(), expires_at: until }],
            credentials: vec![pb::Credential { tenant: "acme".into(), facility: "f".into(), expires_at: until }],
            ..Default::default()
        };
        let register = |r: pb::Reader| pb::RegisterReaderRequest { reader: Some(r), idempotency_key: String::new() };

        // A reader is not an admin; an admin of another group is not this one's.
        let err = c.register_reader(call(register(new_reader.clone()), &x)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        let err = c.register_reader(call(register(new_reader.clone()), &z)).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        // Bad fields are named.
        let mut bad = new_reader.clone();
        bad.time_zone = "Mars/Olympus".into();
        let err = c.register_reader(call(register(bad), &admin)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.get_error_details().bad_request().unwrap().field_violations[0].field, "reader.time_zone");
        let mut bad = new_reader.clone();
        bad.profile.as_mut().unwrap().shifts[0].weekday = 8;
        let err = c.register_reader(call(register(bad), &admin)).await.unwrap_err();
        assert_eq!(err.get_error_details().bad_request().unwrap().field_violations[0].field, "profile.shifts[0]");

        let registered =
            c.register_reader(call(register(new_reader.clone()), &admin)).await.unwrap().into_inner().reader.unwrap();
        assert_eq!((registered.status.as_str(), registered.open_assignments), ("available", 0));
        assert_eq!(registered.profile.as_ref().unwrap().capacity, 3);
        let err = c.register_reader(call(register(new_reader.clone()), &admin)).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);

        // The new reader is offered work at once.
        let offered = routing.read(|s| s.worklist(routing.policy(), now(), "dr-w").unwrap().len()).await;
        assert_eq!(offered, 2);

        // A profile without CT takes the work away; the event says so.
        let mut mr_only = profile.clone();
        mr_only.modalities = vec!["MR".into()];
        let updated = c
            .update_reader(call(
                pb::UpdateReaderRequest {
                    reader_id: "dr-w".into(),
                    profile: Some(mr_only),
                    idempotency_key: "u1".into(),
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .reader
            .unwrap();
        assert_eq!(updated.profile.unwrap().modalities, ["MR"]);
        let checks = routing.read(|s| s.explain(routing.policy(), now(), "dr-w", stat).unwrap()).await;
        assert!(checks.iter().any(|c| c.rule.as_str() == "modality" && !c.passed));

        // Credentials and licences are replaced whole.
        let updated = c
            .update_credentials(call(
                pb::UpdateCredentialsRequest {
                    reader_id: "dr-w".into(),
                    credentials: vec![],
                    idempotency_key: String::new(),
                },
                &admin,
            ))
            .await
            .unwrap()
            .into_inner()
            .reader
            .unwrap();
        assert!(updated.credentials.is_empty());
        let err = c
            .update_licences(call(
                pb::UpdateLicencesRequest {
                    reader_id: "dr-w".into(),
                    licences: vec![pb::Licence { jurisdiction: "US-CA".into(), expires_at: None }],
                    idempotency_key: String::new(),
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.get_error_details().bad_request().unwrap().field_violations[0].field, "licences[0].expires_at");
        let err = c
            .update_licences(call(
                pb::UpdateLicencesRequest {
                    reader_id: "dr-w".into(),
                    licences: vec![],
                    idempotency_key: String::new(),
                },
                &x,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "a reader does not change their own licences");

        // The reader sees themselves; the log holds every change.
        let me = c.get_reader(call(pb::GetReaderRequest { reader_id: "dr-x".into() }, &x)).await.unwrap().into_inner();
        assert_eq!(me.reader.unwrap().reading_group, "g");
        let types = routing.read(|s| s.readers["dr-w"].modalities.clone()).await;
        assert_eq!(types, BTreeSet::from(["MR".to_string()]));
    }
}
