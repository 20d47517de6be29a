//! `meridian.reporting.v1.ReportingService`: the reader who holds a read
//! drafts and signs its report; the tenant, and the reader who holds the
//! study, read it (audited before the text leaves). Every call resolves
//! the principal and asks `authorize` against the study as reporting has
//! folded it.

use std::sync::Arc;

use meridian_audit::{Accessed, Audit};
use meridian_auth::grpc::{
    arrival_time, failed_precondition, invalid_argument, month_argument, permission_denied, principal,
};
use meridian_auth::{Action, Denied, Principal, Resource, authorize};
use meridian_config::Platform;
use meridian_proto::reporting::v1 as pb;
use meridian_proto::reporting::v1::reporting_service_server::ReportingService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::app::{Error, Reporting};
use crate::domain::critical::Critical;
use crate::domain::delivery::{Delivery, Standing};
use crate::domain::model::{Report, Study, StudyFacts};
use crate::domain::peer_review::{Concordance, PeerError, Review};
use crate::domain::report::{self, Command, Event};

pub struct ReportingGrpc {
    reporting: Arc<Reporting>,
    platform: Arc<Platform>,
    audit: Arc<Audit>,
}

impl ReportingGrpc {
    /// Where `p` reads a study of `tenant` under `contract` whose UID is
    /// `uid`: here, or, when the contract gives readers de-identified
    /// images, its derivative (the UID de-identification gave it) in the
    /// destination it landed in — the reader's own region when it is one.
    fn where_read(&self, p: &Principal, tenant: &str, contract: &str, uid: String) -> Result<(String, String), Status> {
        let here = self.reporting.region().to_owned();
        let Some(c) = self.platform.contracts.get(contract) else { return Ok((uid, here)) };
        if c.image_access != meridian_config::ImageAccess::Deidentified {
            return Ok((uid, here));
        }
        let sits_in = p
            .reader
            .as_deref()
            .and_then(|id| self.platform.reader_regions().find(|(reader, _)| reader == id).map(|(_, region)| region));
        let destinations = &c.deidentification_destinations;
        let destination = sits_in.filter(|r| destinations.contains(r)).or_else(|| destinations.first().cloned());
        let (Some(destination), Some(secret)) = (destination, self.reporting.secret(tenant)) else {
            return Err(Status::failed_precondition(format!(
                "contract {contract} gives readers de-identified images, and none is served for it"
            )));
        };
        Ok((secret.deidentification_key(contract).deidentified_uid(&uid), destination))
    }

    pub fn new(reporting: Arc<Reporting>, platform: Arc<Platform>, audit: Arc<Audit>) -> ReportingGrpc {
        ReportingGrpc { reporting, platform, audit }
    }

    /// The study, once `p` may do `action` on it.
    async fn study(&self, p: &Principal, action: Action, text: &str) -> Result<(Uuid, Study), Status> {
        let study = Uuid::parse_str(text)
            .map_err(|_| invalid_argument("study_id", format!("{text:?} is not a study id (a UUID)")))?;
        let found =
            self.reporting.read_current(|f| f.state.studies.get(&study).cloned()).await.map_err(|e| status(&e))?;
        let s = found.ok_or_else(|| Status::not_found(format!("no study {study} is known to reporting here")))?;
        let StudyFacts { tenant, contract, .. } = &s.facts;
        let groups = self.platform.contracts.get(contract).map(|c| c.reading_groups.clone()).unwrap_or_default();
        // A reader acts on a study they hold, or wrote in (to read it, or
        // amend what they signed: the domain checks the signer).
        let wrote = |r: &str| s.reports.iter().any(|rep| rep.versions.iter().any(|v| v.author == r));
        let holder = s.open.as_ref().and_then(|o| o.holder.clone());
        let assigned = match p.reader.as_deref() {
            Some(r) if holder.as_deref() != Some(r) && wrote(r) => Some(r.to_owned()),
            _ => holder,
        };
        let resource = Resource::Study { tenant, contract_groups: &groups, assigned_reader: assigned.as_deref() };
        authorize(p, action, &resource).map_err(|d| permission_denied(&d))?;
        Ok((study, s))
    }
}

impl ReportingGrpc {
    /// Runs the amendment `command` makes of the caller's signed report of
    /// the study and read named, and says what it did.
    async fn amend<T>(
        &self,
        request: &Request<T>,
        study_id: &str,
        read_type: &str,
        key: &str,
        command: impl FnOnce(Uuid, String, String) -> Command,
    ) -> Result<pb::Amended, Status> {
        let p = principal(request)?;
        let (study, _) = self.study(p, Action::SignReport, study_id).await?;
        let command = command(study, reader(p)?, read_type.to_owned());
        let (events, now) = self.reporting.execute(command, arrival_time()).await.map_err(|e| status(&e))?;
        let report = now.report(read_type).ok_or_else(|| Status::internal("amended, yet no report folded"))?;
        let version = events.iter().find_map(|e| match e {
            Event::Amended { version, .. } => Some(*version),
            _ => None,
        });
        // A keyed retry: the version the key added.
        let version = version.or_else(|| {
            let id = report::keyed_id(p.reader.as_deref().unwrap_or_default(), key, study).as_uuid();
            report.versions.iter().find(|v| !key.is_empty() && v.event == id).map(|v| v.version)
        });
        Ok(pb::Amended {
            report_id: report.id.to_string(),
            status: report.status().into(),
            version: version.unwrap_or(0),
        })
    }
}

fn delivery(d: &Delivery) -> pb::Delivery {
    let (state, due_at) = match &d.standing {
        Standing::Due(at) => ("due", Some(at.to_timestamp())),
        Standing::Dead(_) => ("dead", None),
    };
    pb::Delivery {
        delivery_id: d.id.to_string(),
        study_id: d.study.to_string(),
        report_id: d.report.to_string(),
        read_type: d.read_type.clone(),
        endpoint: d.endpoint.clone(),
        kind: d.kind.clone(),
        status: d.status.clone(),
        attempts: d.attempts,
        state: state.into(),
        due_at,
        last_error: d.last_error.clone(),
    }
}

fn critical(study: Uuid, c: &Critical) -> pb::CriticalResult {
    let state = match c.closed {
        None => "open",
        Some((_, true)) => "closed in time",
        Some((_, false)) => "closed late",
    };
    pb::CriticalResult {
        study_id: study.to_string(),
        category: u32::from(c.category),
        flagged_at: Some(c.flagged_at.to_timestamp()),
        deadline: Some(c.deadline.to_timestamp()),
        state: state.into(),
        escalated: c.escalated,
    }
}

/// The reports of `s` the caller may see. A peer review is blinded: its
/// reviewer sees only their own read until they have signed it; nobody
/// else sees a peer review read (quality work of the reading groups).
fn visible<'s>(s: &'s Study, caller: Option<&str>) -> impl Iterator<Item = &'s Report> {
    let review = s.report("peer_review");
    let holds_review = s
        .open
        .as_ref()
        .is_some_and(|o| o.read_type == "peer_review" && o.holder.as_deref() == caller && caller.is_some());
    let wrote_review = review.is_some_and(|r| r.versions.iter().any(|v| Some(v.author.as_str()) == caller));
    let reviewer = holds_review || wrote_review;
    let blinded = reviewer && review.is_none_or(|r| r.signed.is_none());
    s.reports.iter().filter(move |r| {
        let own_review = r.read_type == "peer_review";
        if blinded { own_review } else { !own_review || reviewer }
    })
}

/// One page of reports after `after` (a study and read type), in study
/// then read type order: `tenant`'s (never a peer review), or those
/// `author` wrote; of `status` when one is named. Whether more follow.
fn page<'s>(
    state: &'s crate::domain::model::State,
    tenant: Option<&str>,
    author: Option<&str>,
    (status, read_type): (&str, &str),
    after: Option<&(Uuid, String)>,
    size: usize,
) -> (Vec<(Uuid, &'s Study, &'s Report)>, bool) {
    let mut out = Vec::new();
    let start = after.map_or(Uuid::nil(), |(s, _)| *s);
    for (id, s) in state.studies.range(start..) {
        if tenant.is_some_and(|t| s.facts.tenant != t) {
            continue;
        }
        // Within a study, by read type: the order pages resume in.
        let mut reports: Vec<&Report> = s.reports.iter().collect();
        reports.sort_by(|a, b| a.read_type.cmp(&b.read_type));
        for rep in reports {
            if after.is_some_and(|(a, t)| id == a && rep.read_type.as_str() <= t.as_str()) {
                continue;
            }
            let mine = author.is_some_and(|a| rep.versions.iter().any(|v| v.author == a));
            if (tenant.is_some() && rep.read_type == "peer_review") || (author.is_some() && !mine) {
                continue;
            }
            if (!status.is_empty() && rep.status() != status) || (!read_type.is_empty() && rep.read_type != read_type) {
                continue;
            }
            if out.len() == size {
                return (out, true);
            }
            out.push((*id, s, rep));
        }
    }
    (out, false)
}

fn summary(study: Uuid, s: &Study, r: &Report) -> pb::ReportSummary {
    pb::ReportSummary {
        study_id: study.to_string(),
        report_id: r.id.to_string(),
        read_type: r.read_type.clone(),
        status: r.status().into(),
        author_id: r.versions.last().map_or(String::new(), |v| v.author.clone()),
        signed_by: r.signed.as_ref().map_or(String::new(), |sig| sig.reader.clone()),
        signed_at: r.signed.as_ref().map(|sig| sig.at.to_timestamp()),
        versions: u32::try_from(r.versions.len()).unwrap_or(u32::MAX),
        contract: s.facts.contract.clone(),
        review_score: match (&s.review, r.read_type.as_str()) {
            (Some(review), "peer_review") => review.scored.as_ref().map_or(String::new(), |sc| sc.score.clone()),
            _ => String::new(),
        },
    }
}

fn peer_review(study: Uuid, r: &Review) -> pb::PeerReview {
    pb::PeerReview {
        study_id: study.to_string(),
        reviewed_reader_id: r.reviewed_reader.clone(),
        reviewed_group: r.reviewed_group.clone(),
        due: Some(r.due.to_timestamp()),
        reviewer_id: r.scored.as_ref().map_or(String::new(), |s| s.reviewer.clone()),
        score: r.scored.as_ref().map_or(String::new(), |s| s.score.clone()),
        arbitrated_score: r.arbitrated.as_ref().map_or(String::new(), |a| a.score.clone()),
        standing_score: r.standing().unwrap_or_default().to_owned(),
    }
}

fn concordances(of: std::collections::BTreeMap<String, Concordance>) -> Vec<pb::Concordance> {
    of.into_iter()
        .map(|(name, c)| pb::Concordance {
            concordant_per_mille: c.concordant_per_mille().unwrap_or_default(),
            name,
            reviewed: c.reviewed,
            by_score: c.by_score.into_iter().collect(),
            awaiting_arbitration: c.awaiting_arbitration,
        })
        .collect()
}

fn reader(p: &Principal) -> Result<String, Status> {
    p.reader.clone().ok_or_else(|| {
        permission_denied(&p.refuse(Denied {
            subject: p.subject.clone(),
            action: "act_as_reader",
            resource: "a reader's reports".into(),
            resource_kind: "reader",
            reason: format!("{} is not a reader", p.subject),
        }))
    })
}

/// One mapping of reporting's errors to statuses: a rule broken is
/// FAILED_PRECONDITION naming it; a bad field INVALID_ARGUMENT naming it.
pub fn status(e: &Error) -> Status {
    match e {
        Error::Refused(why) => {
            let message = why.to_string();
            if let Some(rule) = why.rule() {
                return failed_precondition(rule, "study", message);
            }
            match why {
                report::Error::UnknownStudy { .. } => Status::not_found(message),
                report::Error::NoImpression { .. } => invalid_argument("sections.impression", message),
                report::Error::Discrepancy { .. } => invalid_argument("discrepancy", message),
                report::Error::Empty { field, .. } => invalid_argument(field, message),
                report::Error::Field(f) => invalid_argument(&f.field, message),
                report::Error::KeyReused { .. } => invalid_argument("idempotency_key", message),
                _ => invalid_argument("version", message),
            }
        }
        Error::NoDelivery(_) => Status::not_found(e.to_string()),
        Error::PeerReview(why) => {
            let message = why.to_string();
            match why.rule() {
                Some(rule) => failed_precondition(rule, "study", message),
                None if matches!(why, PeerError::UnknownStudy { .. }) => Status::not_found(message),
                None => invalid_argument("score", message),
            }
        }
        Error::Critical(why) => {
            use crate::domain::critical::CriticalError as C;
            let message = why.to_string();
            if let Some(rule) = why.rule() {
                return failed_precondition(rule, "study", message);
            }
            match why {
                C::UnknownStudy { .. } => Status::not_found(message),
                C::Category { .. } => invalid_argument("category", message),
                C::Method { .. } => invalid_argument("method", message),
                C::Recipient => invalid_argument("recipient", message),
                _ => invalid_argument("communicated_at", message),
            }
        }
        other => Status::unavailable(other.to_string()),
    }
}

#[tonic::async_trait]
impl ReportingService for ReportingGrpc {
    async fn save_draft(
        &self,
        request: Request<pb::SaveDraftRequest>,
    ) -> Result<Response<pb::SaveDraftResponse>, Status> {
        let p = principal(&request)?;
        let r = request.get_ref();
        let (study, _) = self.study(p, Action::SignReport, &r.study_id).await?;
        let sections = r.sections.clone().unwrap_or_default();
        let command = Command::SaveDraft {
            study,
            reader: reader(p)?,
            findings: sections.findings,
            impression: sections.impression,
            fields: sections.fields.into_iter().collect(),
            base_version: r.base_version,
            key: r.idempotency_key.clone(),
        };
        let (events, now) = self.reporting.execute(command, arrival_time()).await.map_err(|e| status(&e))?;
        match events.first() {
            Some(Event::Drafted { report, version, read_type, .. }) => Ok(Response::new(pb::SaveDraftResponse {
                report_id: report.to_string(),
                version: *version,
                read_type: read_type.clone(),
            })),
            // A keyed retry: the version the key saved.
            _ => {
                let id = report::keyed_id(&reader(p)?, &r.idempotency_key, study).as_uuid();
                let saved =
                    now.reports.iter().find_map(|rep| rep.versions.iter().find(|v| v.event == id).map(|v| (rep, v)));
                let (rep, v) = saved.ok_or_else(|| Status::internal("a draft decided nothing"))?;
                Ok(Response::new(pb::SaveDraftResponse {
                    report_id: rep.id.to_string(),
                    version: v.version,
                    read_type: rep.read_type.clone(),
                }))
            }
        }
    }

    async fn sign(&self, request: Request<pb::SignRequest>) -> Result<Response<pb::SignResponse>, Status> {
        let p = principal(&request)?;
        let r = request.get_ref();
        let (study, _) = self.study(p, Action::SignReport, &r.study_id).await?;
        let command = Command::Sign {
            study,
            reader: reader(p)?,
            read_type: r.read_type.clone(),
            version: r.version,
            discrepancy: r.discrepancy.clone(),
        };
        let (_, now) = self.reporting.execute(command, arrival_time()).await.map_err(|e| status(&e))?;
        // Signed now or before (a retry): the signature as folded.
        let signed = now.report(&r.read_type).and_then(|rep| rep.signed.as_ref().map(|s| (rep.id, s.clone())));
        let (report, signature) = signed.ok_or_else(|| Status::internal("signed, yet no signature folded"))?;
        Ok(Response::new(pb::SignResponse {
            report_id: report.to_string(),
            version: signature.version,
            signed_at: Some(signature.at.to_timestamp()),
            event_id: signature.event_id.to_string(),
        }))
    }

    async fn add_addendum(
        &self,
        request: Request<pb::AddAddendumRequest>,
    ) -> Result<Response<pb::AddAddendumResponse>, Status> {
        let r = request.get_ref();
        let (text, key) = (r.text.clone(), r.idempotency_key.clone());
        let amended = self
            .amend(&request, &r.study_id, &r.read_type, &r.idempotency_key, |study, reader, read_type| {
                Command::AddAddendum { study, reader, read_type, text, key }
            })
            .await?;
        Ok(Response::new(pb::AddAddendumResponse { amended: Some(amended) }))
    }

    async fn correct(&self, request: Request<pb::CorrectRequest>) -> Result<Response<pb::CorrectResponse>, Status> {
        let r = request.get_ref();
        let (sections, reason, key) =
            (r.sections.clone().unwrap_or_default(), r.reason.clone(), r.idempotency_key.clone());
        let amended = self
            .amend(&request, &r.study_id, &r.read_type, &r.idempotency_key, |study, reader, read_type| {
                Command::Correct {
                    study,
                    reader,
                    read_type,
                    findings: sections.findings,
                    impression: sections.impression,
                    reason,
                    key,
                }
            })
            .await?;
        Ok(Response::new(pb::CorrectResponse { amended: Some(amended) }))
    }

    async fn enter_in_error(
        &self,
        request: Request<pb::EnterInErrorRequest>,
    ) -> Result<Response<pb::EnterInErrorResponse>, Status> {
        let r = request.get_ref();
        let reason = r.reason.clone();
        let amended = self
            .amend(&request, &r.study_id, &r.read_type, "", |study, reader, read_type| Command::EnterInError {
                study,
                reader,
                read_type,
                reason,
            })
            .await?;
        Ok(Response::new(pb::EnterInErrorResponse { amended: Some(amended) }))
    }

    async fn list_deliveries(
        &self,
        request: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let p = principal(&request)?;
        let tenant = &request.get_ref().tenant;
        if tenant.is_empty() {
            return Err(invalid_argument("tenant", "name the tenant"));
        }
        authorize(p, Action::ManageDeliveries, &Resource::Tenant { tenant }).map_err(|d| permission_denied(&d))?;
        let deliveries = self
            .reporting
            .read_current(|f| {
                let of_tenant =
                    |d: &&Delivery| f.state.studies.get(&d.study).is_some_and(|s| s.facts.tenant == *tenant);
                f.state.deliveries.values().filter(of_tenant).map(delivery).collect()
            })
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::ListDeliveriesResponse { deliveries }))
    }

    async fn redeliver(
        &self,
        request: Request<pb::RedeliverRequest>,
    ) -> Result<Response<pb::RedeliverResponse>, Status> {
        let p = principal(&request)?;
        let text = &request.get_ref().delivery_id;
        let id = Uuid::parse_str(text)
            .map_err(|_| invalid_argument("delivery_id", format!("{text:?} is not a delivery id")))?;
        let tenant = self
            .reporting
            .read_current(|f| {
                let d = f.state.deliveries.get(&id)?;
                f.state.studies.get(&d.study).map(|s| s.facts.tenant.clone())
            })
            .await
            .map_err(|e| status(&e))?
            .ok_or_else(|| Status::not_found(format!("no delivery {id} is waiting or dead here")))?;
        authorize(p, Action::ManageDeliveries, &Resource::Tenant { tenant: &tenant })
            .map_err(|d| permission_denied(&d))?;
        let again = self.reporting.redeliver(id, arrival_time()).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::RedeliverResponse { delivery: Some(delivery(&again)) }))
    }

    async fn flag_critical(
        &self,
        request: Request<pb::FlagCriticalRequest>,
    ) -> Result<Response<pb::FlagCriticalResponse>, Status> {
        let p = principal(&request)?;
        let r = request.get_ref();
        let (study, _) = self.study(p, Action::SignReport, &r.study_id).await?;
        let category = u8::try_from(r.category).unwrap_or(u8::MAX);
        let flagged =
            self.reporting.flag_critical(study, &reader(p)?, category, arrival_time()).await.map_err(|e| status(&e))?;
        Ok(Response::new(pb::FlagCriticalResponse { critical: Some(critical(study, &flagged)) }))
    }

    async fn record_communication(
        &self,
        request: Request<pb::RecordCommunicationRequest>,
    ) -> Result<Response<pb::RecordCommunicationResponse>, Status> {
        let p = principal(&request)?;
        let r = request.get_ref();
        let (study, _) = self.study(p, Action::SignReport, &r.study_id).await?;
        let now = arrival_time();
        let at = r.communicated_at.as_ref().map_or(now, meridian_events::UnixMicros::from_timestamp);
        let closed = self
            .reporting
            .communicate_critical(study, &reader(p)?, &r.recipient, &r.method, at, now)
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::RecordCommunicationResponse { critical: Some(critical(study, &closed)) }))
    }

    async fn open_study(
        &self,
        request: Request<pb::OpenStudyRequest>,
    ) -> Result<Response<pb::OpenStudyResponse>, Status> {
        let p = principal(&request)?;
        let (study, s) = self.study(p, Action::ReadImages, &request.get_ref().study_id).await?;
        let at = s.arrived.ok_or_else(|| Status::failed_precondition("no instance of the study has arrived here"))?;
        let arrival = self.reporting.arrival(study, at).await.map_err(|e| status(&e))?;
        // No audit, no UID.
        let accessed = [Accessed { tenant: &s.facts.tenant, study, items: vec![] }];
        self.audit
            .record(p, "reporting.open-study", &accessed, arrival_time())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let (uid, region) = self.where_read(p, &s.facts.tenant, &s.facts.contract, arrival.study_instance_uid)?;
        let dicomweb_path = format!("/dicomweb/studies/{uid}");
        let facts = &s.facts;
        let (template, language) = self.reporting.template_for(&facts.contract, &facts.modality, &facts.body_part);
        let text = |texts| crate::domain::template::in_language(texts, &language).unwrap_or_default().to_owned();
        let template = template.map(|t| pb::StudyTemplate {
            name: t.name.clone(),
            title: text(&t.titles),
            findings_title: text(&t.findings),
            impression_title: text(&t.impression),
            fields: t
                .fields
                .iter()
                .map(|f| pb::TemplateField {
                    name: f.name.clone(),
                    title: text(&f.titles),
                    values: f.values.clone(),
                    required: f.required,
                })
                .collect(),
        });
        let order = match s.order {
            Some(key) => {
                let o = self.reporting.order(key).await.map_err(|e| status(&e))?;
                Some(pb::StudyOrder {
                    reason: o.reason,
                    procedure: o.procedure,
                    ordering_clinician: o.ordering_clinician,
                    priority: o.priority,
                })
            }
            None => None,
        };
        Ok(Response::new(pb::OpenStudyResponse {
            study_instance_uid: uid,
            dicomweb_path,
            region,
            template,
            language,
            order,
        }))
    }

    async fn get_kpis(&self, request: Request<pb::GetKpisRequest>) -> Result<Response<pb::GetKpisResponse>, Status> {
        let p = principal(&request)?;
        let (tenant, period) = (&request.get_ref().tenant, &request.get_ref().period);
        if tenant.is_empty() {
            return Err(invalid_argument("tenant", "name the tenant"));
        }
        authorize(p, Action::ViewKpis, &Resource::Tenant { tenant }).map_err(|d| permission_denied(&d))?;
        month_argument("period", period)?;
        let (k, (readers, groups)) = self
            .reporting
            .read_current(|f| {
                let in_period = |t| crate::domain::kpi::month(t) == *period;
                (
                    crate::domain::kpi::kpis(&f.state, tenant, period),
                    crate::domain::peer_review::concordance(&f.state, tenant, in_period),
                )
            })
            .await
            .map_err(|e| status(&e))?;
        let (p50, p90, p99) = k.turnaround.unwrap_or_default();
        Ok(Response::new(pb::GetKpisResponse {
            reads: k.reads,
            turnaround_p50_seconds: p50,
            turnaround_p90_seconds: p90,
            turnaround_p99_seconds: p99,
            within_sla: k.within_sla,
            with_sla: k.with_sla,
            critical: k.critical,
            critical_in_time: k.critical_in_time,
            critical_late: k.critical_late,
            critical_median_seconds: k.critical_median.unwrap_or_default(),
            readers: concordances(readers),
            groups: concordances(groups),
        }))
    }

    async fn list_reports(
        &self,
        request: Request<pb::ListReportsRequest>,
    ) -> Result<Response<pb::ListReportsResponse>, Status> {
        let p = principal(&request)?;
        let r = request.get_ref();
        // A tenant's reports, or the calling reader's own.
        let (tenant, author) = if r.tenant.is_empty() {
            (None, Some(reader(p)?))
        } else {
            authorize(p, Action::ReadReport, &Resource::Tenant { tenant: &r.tenant })
                .map_err(|d| permission_denied(&d))?;
            (Some(r.tenant.clone()), None)
        };
        const STATUSES: [&str; 6] = ["draft", "preliminary", "final", "appended", "corrected", "entered-in-error"];
        if !r.status.is_empty() && !STATUSES.contains(&r.status.as_str()) {
            return Err(invalid_argument("status", format!("{:?} is not one of {}", r.status, STATUSES.join(", "))));
        }
        let after: Option<(Uuid, String)> = if r.page_token.is_empty() {
            None
        } else {
            let parsed = r.page_token.split_once('/').and_then(|(s, t)| Some((Uuid::parse_str(s).ok()?, t.to_owned())));
            Some(parsed.ok_or_else(|| invalid_argument("page_token", "not a token this service gave"))?)
        };
        let size = match r.page_size {
            0 => 100,
            n => n.min(1000) as usize,
        };
        let (reports, more) = self
            .reporting
            .read_current(|f| {
                let (listed, more) = page(
                    &f.state,
                    tenant.as_deref(),
                    author.as_deref(),
                    (&r.status, &r.read_type),
                    after.as_ref(),
                    size,
                );
                (listed.into_iter().map(|(id, s, rep)| summary(id, s, rep)).collect::<Vec<_>>(), more)
            })
            .await
            .map_err(|e| status(&e))?;
        let next_page_token = match reports.last() {
            Some(last) if more => format!("{}/{}", last.study_id, last.read_type),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListReportsResponse { reports, next_page_token }))
    }

    async fn score_peer_review(
        &self,
        request: Request<pb::ScorePeerReviewRequest>,
    ) -> Result<Response<pb::ScorePeerReviewResponse>, Status> {
        let p = principal(&request)?;
        let r = request.get_ref();
        let (study, _) = self.study(p, Action::ScorePeerReview, &r.study_id).await?;
        let review = self
            .reporting
            .score_peer_review(study, &reader(p)?, &r.score, arrival_time())
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::ScorePeerReviewResponse { review: Some(peer_review(study, &review)) }))
    }

    async fn arbitrate(
        &self,
        request: Request<pb::ArbitrateRequest>,
    ) -> Result<Response<pb::ArbitrateResponse>, Status> {
        let p = principal(&request)?;
        let r = request.get_ref();
        let study = Uuid::parse_str(&r.study_id)
            .map_err(|_| invalid_argument("study_id", format!("{:?} is not a study id (a UUID)", r.study_id)))?;
        // Only a group admin arbitrates: anyone else is refused before the
        // study's review is looked up.
        let own = Resource::ReadingGroup { group: p.group.as_deref().unwrap_or_default() };
        authorize(p, Action::Arbitrate, &own).map_err(|d| permission_denied(&d))?;
        let group = self
            .reporting
            .read_current(|f| {
                f.state.studies.get(&study).and_then(|s| s.review.as_ref()).map(|r| r.reviewed_group.clone())
            })
            .await
            .map_err(|e| status(&e))?
            // Not drawn and not here are one answer: a review's existence
            // is its group's to know.
            .ok_or_else(|| Status::not_found(format!("no peer review of study {study} here")))?;
        authorize(p, Action::Arbitrate, &Resource::ReadingGroup { group: &group })
            .map_err(|d| permission_denied(&d))?;
        let review = self
            .reporting
            .arbitrate(study, &group, &p.subject, &r.score, arrival_time())
            .await
            .map_err(|e| status(&e))?;
        Ok(Response::new(pb::ArbitrateResponse { review: Some(peer_review(study, &review)) }))
    }

    async fn list_priors(
        &self,
        request: Request<pb::ListPriorsRequest>,
    ) -> Result<Response<pb::ListPriorsResponse>, Status> {
        let p = principal(&request)?;
        let (study, s) = self.study(p, Action::ReadReport, &request.get_ref().study_id).await?;
        let deidentified = self
            .platform
            .contracts
            .get(&s.facts.contract)
            .is_some_and(|c| c.image_access == meridian_config::ImageAccess::Deidentified);
        if deidentified || s.facts.patient_key.is_empty() {
            return Ok(Response::new(pb::ListPriorsResponse { priors: Vec::new() }));
        }
        // The patient's other studies, newest first, with a signed read.
        let (tenant, key) = (&s.facts.tenant, &s.facts.patient_key);
        let mut priors: Vec<(Uuid, Study)> = self
            .reporting
            .read_current(|f| {
                let of_patient = f.state.patients.get(tenant).and_then(|p| p.get(key));
                let ids = of_patient.into_iter().flatten().filter(|id| **id != study);
                ids.filter_map(|id| f.state.studies.get(id).map(|st| (*id, st.clone())))
                    .filter(|(_, st)| st.reports.iter().any(|r| r.signed.is_some() && r.read_type != "peer_review"))
                    .collect()
            })
            .await
            .map_err(|e| status(&e))?;
        priors.sort_by_key(|(id, st)| (std::cmp::Reverse(st.facts.completed_at), *id));
        priors.truncate(MOST_PRIORS);
        let signed = |st: &Study| -> Vec<Report> {
            st.reports.iter().filter(|r| r.signed.is_some() && r.read_type != "peer_review").cloned().collect()
        };
        // No audit, no text: each prior's reports are an access of their own.
        let accessed: Vec<Accessed<'_>> = priors
            .iter()
            .map(|(id, st)| Accessed {
                tenant: &st.facts.tenant,
                study: *id,
                items: signed(st).iter().map(|r| r.id.to_string()).collect(),
            })
            .collect();
        self.audit
            .record(p, "reporting.list-priors", &accessed, arrival_time())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut out = Vec::new();
        for (id, st) in &priors {
            let mut reports = Vec::new();
            for r in &signed(st) {
                reports.push(self.report_message(*id, r).await?);
            }
            out.push(pb::Prior {
                study_id: id.to_string(),
                modality: st.facts.modality.clone(),
                body_part: st.facts.body_part.clone(),
                completed_at: Some(st.facts.completed_at.to_timestamp()),
                reports,
            });
        }
        Ok(Response::new(pb::ListPriorsResponse { priors: out }))
    }

    async fn get_report(
        &self,
        request: Request<pb::GetReportRequest>,
    ) -> Result<Response<pb::GetReportResponse>, Status> {
        let p = principal(&request)?;
        let (study, s) = self.study(p, Action::ReadReport, &request.get_ref().study_id).await?;
        // No audit, no text.
        let items = visible(&s, p.reader.as_deref()).map(|r| r.id.to_string()).collect();
        let accessed = [Accessed { tenant: &s.facts.tenant, study, items }];
        self.audit
            .record(p, "reporting.get-report", &accessed, arrival_time())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut reports = Vec::new();
        for r in visible(&s, p.reader.as_deref()) {
            reports.push(self.report_message(study, r).await?);
        }
        // The reviewer, their blinded read signed, sees what they score.
        let signed_review = s
            .report("peer_review")
            .and_then(|r| r.signed.as_ref())
            .is_some_and(|sig| p.reader.as_deref() == Some(sig.reader.as_str()));
        let review = s.review.as_ref().filter(|_| signed_review).map(|r| peer_review(study, r));
        let critical = s.critical.as_ref().map(|c| critical(study, c));
        Ok(Response::new(pb::GetReportResponse { study_id: study.to_string(), reports, review, critical }))
    }
}

/// At most this many priors are listed.
const MOST_PRIORS: usize = 10;

impl ReportingGrpc {
    /// A report as the API gives it: its current text and its amendments'
    /// texts, read from the log.
    async fn report_message(&self, study: Uuid, r: &Report) -> Result<pb::Report, Status> {
        let text = match r.current() {
            Some(v) => {
                let t = self.reporting.text(study, v).await.map_err(|e| status(&e))?;
                let title = self.reporting.title(&t.template, &t.language);
                Some(pb::ReportVersion {
                    version: v.version,
                    author_id: v.author.clone(),
                    saved_at: Some(v.saved_at.to_timestamp()),
                    sections: Some(pb::Sections {
                        findings: t.findings,
                        impression: t.impression,
                        fields: t.fields.into_iter().collect(),
                    }),
                    template: t.template,
                    title,
                    language: t.language,
                })
            }
            None => None,
        };
        let mut amendments = Vec::new();
        for a in &r.amendments {
            let sections = match r.versions.iter().find(|v| a.version != 0 && v.version == a.version) {
                Some(v) => {
                    let t = self.reporting.text(study, v).await.map_err(|e| status(&e))?;
                    Some(pb::Sections { findings: t.findings, impression: t.impression, ..Default::default() })
                }
                None => None,
            };
            amendments.push(pb::Amendment {
                kind: a.kind.clone(),
                version: a.version,
                reader_id: a.reader.clone(),
                at: Some(a.at.to_timestamp()),
                reason: a.reason.clone(),
                sections,
            });
        }
        Ok(pb::Report {
            amendments,
            report_id: r.id.to_string(),
            read_type: r.read_type.clone(),
            status: r.status().into(),
            signed_version: r.signed.as_ref().map_or(0, |s| s.version),
            signed_by: r.signed.as_ref().map_or(String::new(), |s| s.reader.clone()),
            signed_at: r.signed.as_ref().map(|s| s.at.to_timestamp()),
            discrepancy: r.signed.as_ref().map_or(String::new(), |s| s.discrepancy.clone()),
            text,
            versions: u32::try_from(r.versions.len()).unwrap_or(u32::MAX),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Fact, State, StudyFacts, VersionRef, apply};

    /// `n` studies of acme, each with a preliminary by ortiz and a final by
    /// nair, and one peer review.
    fn state(n: u128) -> State {
        let mut state = State::default();
        for i in 1..=n {
            let study = Uuid::from_u128(i);
            let facts = StudyFacts { tenant: "acme".into(), ..Default::default() };
            state = apply(state, &Fact::Queued { study, facts, read_type: "preliminary".into() });
            for (read_type, author) in [("preliminary", "ortiz"), ("final", "nair"), ("peer_review", "lee")] {
                if read_type == "peer_review" && i != 1 {
                    continue;
                }
                let version = VersionRef {
                    version: 1,
                    author: author.into(),
                    saved_at: meridian_events::UnixMicros(0),
                    partition: 0,
                    offset: 0,
                    has_impression: true,
                    kind: "draft".into(),
                    fields: vec![],
                    template: String::new(),
                    event: Uuid::nil(),
                    digest: String::new(),
                };
                let report = crate::domain::model::report_id(study, read_type);
                state = apply(state, &Fact::Saved { study, version, read_type: read_type.into(), report });
            }
        }
        state
    }

    #[test]
    fn pages_resume_where_the_last_ended_and_list_each_report_once() {
        let state = state(5);
        let mut seen = Vec::new();
        let mut after: Option<(Uuid, String)> = None;
        loop {
            let (listed, more) = page(&state, Some("acme"), None, ("", ""), after.as_ref(), 3);
            seen.extend(listed.iter().map(|(id, _, r)| (*id, r.read_type.clone())));
            let Some((id, _, r)) = listed.last() else { break };
            after = Some((*id, r.read_type.clone()));
            if !more {
                break;
            }
        }
        assert_eq!(seen.len(), 10, "five preliminaries and five finals, the peer review not the tenant's: {seen:?}");
        let mut unique = seen.clone();
        unique.dedup();
        assert_eq!(unique, seen);
        // A reader's own: the peer review is its reviewer's.
        let (mine, _) = page(&state, None, Some("lee"), ("", ""), None, 100);
        assert_eq!(mine.iter().map(|(_, _, r)| r.read_type.as_str()).collect::<Vec<_>>(), ["peer_review"]);
        let (drafts, _) = page(&state, Some("acme"), None, ("final", ""), None, 100);
        assert!(drafts.is_empty(), "nothing is signed");
        assert_eq!(page(&state, Some("globex"), None, ("", ""), None, 100).0.len(), 0);
        // By read type: the finals, or a reader's peer reviews only.
        let (finals, _) = page(&state, Some("acme"), None, ("", "final"), None, 100);
        assert!(finals.len() == 5 && finals.iter().all(|(_, _, r)| r.read_type == "final"), "{}", finals.len());
        let (reviews, _) = page(&state, None, Some("lee"), ("", "peer_review"), None, 100);
        assert_eq!(reviews.len(), 1);
        assert!(page(&state, None, Some("lee"), ("", "final"), None, 100).0.is_empty());
    }
}
