//! What a draft and a signature decide, against the folded state: only the
//! reader who holds a study's open read writes its report; a signature
//! takes a saved version (immutable from then on); a final needs a
//! licence current in the patient's jurisdiction at the moment of signing.

use std::collections::BTreeMap;

use meridian_events::{EventId, UnixMicros};
use uuid::Uuid;

use super::delivery::{self, Delivery, Outcome, Policy, Standing};
use super::model::{Report, State, VersionRef, report_id, text_digest};
use super::peer_review::{self, PeerEvent};
use super::template::{self, FieldError, Template};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    SaveDraft {
        study: Uuid,
        reader: String,
        findings: String,
        impression: String,
        /// The template's coded fields: name → value.
        fields: BTreeMap<String, String>,
        base_version: u32,
        /// The caller's idempotency key ("" for none): the same key and
        /// text again is the version saved the first time.
        key: String,
    },
    Sign {
        study: Uuid,
        reader: String,
        read_type: String,
        version: u32,
        discrepancy: String,
    },
    /// Text appended to a signed report (the signed text stays).
    AddAddendum {
        study: Uuid,
        reader: String,
        read_type: String,
        text: String,
        key: String,
    },
    /// A corrected report: new text, current from now on; the signed text
    /// stays on record.
    Correct {
        study: Uuid,
        reader: String,
        read_type: String,
        findings: String,
        impression: String,
        reason: String,
        key: String,
    },
    /// The report should never have been issued (wrong patient, say).
    EnterInError {
        study: Uuid,
        reader: String,
        read_type: String,
        reason: String,
    },
}

impl Command {
    pub fn study(&self) -> Uuid {
        match self {
            Command::SaveDraft { study, .. }
            | Command::Sign { study, .. }
            | Command::AddAddendum { study, .. }
            | Command::Correct { study, .. }
            | Command::EnterInError { study, .. } => *study,
        }
    }
}

/// What reporting appends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A version of a read's report (ReportText, PHI).
    Drafted {
        study: Uuid,
        report: Uuid,
        version: u32,
        read_type: String,
        author: String,
        findings: String,
        impression: String,
        saved_at: UnixMicros,
        /// "draft", "addendum" or "correction".
        kind: &'static str,
        fields: BTreeMap<String, String>,
        /// The template it was written to ("" for none), and its language.
        template: String,
        language: String,
        /// Its id when the caller gave an idempotency key.
        keyed: Option<EventId>,
    },
    /// A read signed with one of its versions (ReportSigned).
    Signed {
        study: Uuid,
        report: Uuid,
        read_type: String,
        reader: String,
        version: u32,
        signed_at: UnixMicros,
        discrepancy: String,
    },
    /// A report to send to a receiver (DeliveryRequested).
    Requested(Delivery),
    /// A receiver took it (ReportDelivered).
    Delivered { delivery: Uuid, endpoint: String, attempt: u32, answer: String },
    /// A send failed (DeliveryFailed).
    DeliveryFailed {
        delivery: Uuid,
        endpoint: String,
        attempt: u32,
        error: String,
        permanent: bool,
        retry_at: UnixMicros,
    },
    /// A signed final drawn for peer review (PeerReviewRequested).
    Peer(PeerEvent),
    /// A signed report amended (ReportAmended).
    Amended {
        study: Uuid,
        report: Uuid,
        read_type: String,
        kind: &'static str,
        version: u32,
        reader: String,
        at: UnixMicros,
        reason: String,
    },
}

/// Why a command is refused; each names its rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no study {study} is known to reporting in this region")]
    UnknownStudy { study: Uuid },
    #[error("{reader} does not hold the open read of study {study}")]
    NotHolder { study: Uuid, reader: String },
    #[error("study {study}'s {read_type} read is signed already")]
    AlreadySigned { study: Uuid, read_type: String },
    #[error("study {study}'s open read is {open}, not {asked}")]
    ReadType { study: Uuid, open: String, asked: String },
    #[error("{reader} holds no licence current in {jurisdiction}: a final needs one")]
    Licence { reader: String, jurisdiction: String },
    #[error("nothing saved to sign for study {study}'s {read_type} read")]
    NoDraft { study: Uuid, read_type: String },
    #[error("no version {version} of study {study}'s {read_type} report (it has 1 to {last})")]
    NoVersion { study: Uuid, read_type: String, version: u32, last: u32 },
    #[error("version {latest} was saved since version {base}: edit the latest")]
    Stale { base: u32, latest: u32 },
    #[error("sections.impression: a report is signed with an impression; version {version} has none")]
    NoImpression { version: u32 },
    #[error("discrepancy: {value:?} is not none, minor or major")]
    Discrepancy { value: String },
    #[error("study {study}'s {read_type} report is not signed: amend only what was signed")]
    NotSigned { study: Uuid, read_type: String },
    #[error("{reader} did not sign study {study}'s {read_type} report ({signer} did): its signer amends it")]
    NotSigner { study: Uuid, read_type: String, reader: String, signer: String },
    #[error("study {study}'s {read_type} report was entered in error: it takes no more amendments")]
    EnteredInError { study: Uuid, read_type: String },
    #[error("{field}: {what}")]
    Empty { field: &'static str, what: &'static str },
    #[error("{0}")]
    Field(#[from] FieldError),
    #[error("idempotency_key {key:?} saved other text for this study before: a key names one save")]
    KeyReused { key: String },
}

impl Error {
    /// The rule a FAILED_PRECONDITION names, or None for a bad argument.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            Error::NotHolder { .. } => Some("ASSIGNMENT"),
            Error::AlreadySigned { .. } => Some("SIGNED"),
            Error::ReadType { .. } => Some("READ_TYPE"),
            Error::Licence { .. } => Some("LICENCE"),
            Error::NoDraft { .. } => Some("DRAFT"),
            Error::Stale { .. } => Some("VERSION"),
            Error::NotSigned { .. } => Some("NOT_SIGNED"),
            Error::NotSigner { .. } => Some("AUTHOR"),
            Error::EnteredInError { .. } => Some("ENTERED_IN_ERROR"),
            Error::UnknownStudy { .. }
            | Error::NoVersion { .. }
            | Error::NoImpression { .. }
            | Error::Discrepancy { .. }
            | Error::Empty { .. }
            | Error::KeyReused { .. }
            | Error::Field(_) => None,
        }
    }
}

/// The events `command` decides at `now` under `policy` (the tenants'
/// receivers): a signature's or an amendment's events, then a delivery
/// request to each receiver that takes the read; none when it was done
/// already (a signature asked again).
pub fn decide(state: &State, policy: &Policy, command: &Command, now: UnixMicros) -> Result<Vec<Event>, Error> {
    let mut events = decide_report(state, policy, command, now)?;
    let study = command.study();
    let facts = state.studies.get(&study).map(|s| &s.facts);
    let tenant = facts.map_or("", |f| f.tenant.as_str());
    let sample = facts.and_then(|f| policy.samples.get(&f.contract));
    let drawn = events.iter().find_map(|e| match e {
        Event::Signed { report, read_type, reader, .. } if read_type == "final" => {
            peer_review::drawn(state, sample, study, *report, reader, now)
        }
        _ => None,
    });
    events.extend(drawn.map(Event::Peer));
    let caused: Vec<(Uuid, String, &'static str, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Signed { report, read_type, version, .. } => {
                let status = if read_type == "preliminary" { "preliminary" } else { "final" };
                Some((*report, read_type.clone(), status, *version))
            }
            Event::Amended { report, read_type, kind, version, .. } => {
                let status = match *kind {
                    "addendum" => "appended",
                    "corrected" => "corrected",
                    _ => "entered-in-error",
                };
                Some((*report, read_type.clone(), status, *version))
            }
            _ => None,
        })
        .collect();
    for (report, read_type, status, version) in caused {
        let what = status; // one request per status change and version
        // A peer review is the reading groups' quality work, not a report
        // to the hospital: never delivered.
        if read_type == "peer_review" {
            continue;
        }
        for endpoint in policy.endpoints.get(tenant).map(Vec::as_slice).unwrap_or_default() {
            if !endpoint.read_types.is_empty() && !endpoint.read_types.contains(&read_type) {
                continue;
            }
            events.push(Event::Requested(Delivery {
                id: delivery::delivery_id(report, what, version, &endpoint.name),
                study,
                report,
                read_type: read_type.clone(),
                endpoint: endpoint.name.clone(),
                kind: endpoint.kind.clone(),
                status: status.to_owned(),
                requested_at: now,
                attempts: 0,
                standing: Standing::Due(now),
                last_error: String::new(),
                supersedes: None,
            }));
        }
    }
    Ok(events)
}

/// What a send of `delivery` (attempt `attempt`) came to, as its event.
pub fn outcome(delivery: &Delivery, attempt: u32, outcome: Outcome, now: UnixMicros) -> Event {
    match outcome {
        Outcome::Delivered(answer) => {
            Event::Delivered { delivery: delivery.id, endpoint: delivery.endpoint.clone(), attempt, answer }
        }
        Outcome::Failed { error, permanent } => Event::DeliveryFailed {
            delivery: delivery.id,
            endpoint: delivery.endpoint.clone(),
            attempt,
            error,
            permanent,
            retry_at: UnixMicros(now.0 + delivery::backoff(attempt)),
        },
    }
}

/// The id of the text a keyed save of `study` by `reader` writes: the same
/// for every retry, another for another study.
pub fn keyed_id(reader: &str, key: &str, study: Uuid) -> EventId {
    EventId::idempotent(reader, &format!("{key}\u{0}{study}"), "ReportText", 0)
}

/// The version a keyed request saved before, if it is a retry; refused
/// when the key saved other text.
fn retried<'s>(
    state: &'s State,
    study: Uuid,
    reader: &str,
    key: &str,
    digest: &str,
) -> Result<Option<&'s VersionRef>, Error> {
    if key.is_empty() {
        return Ok(None);
    }
    let id = keyed_id(reader, key, study).as_uuid();
    let reports = state.studies.get(&study).map(|s| s.reports.as_slice()).unwrap_or_default();
    match reports.iter().flat_map(|r| &r.versions).find(|v| v.event == id) {
        Some(v) if v.digest == digest => Ok(Some(v)),
        Some(_) => Err(Error::KeyReused { key: key.to_owned() }),
        None => Ok(None),
    }
}

/// The template of a study's reports, if one is configured.
fn template_of<'p>(policy: &'p Policy, state: &State, study: Uuid) -> Option<&'p Template> {
    let facts = &state.studies.get(&study)?.facts;
    Template::for_study(&policy.templates, &facts.modality, &facts.body_part)
}

/// A signature's or an amendment's own events.
fn decide_report(state: &State, policy: &Policy, command: &Command, now: UnixMicros) -> Result<Vec<Event>, Error> {
    let language = || {
        let contract = state.studies.get(&command.study()).map_or("", |s| s.facts.contract.as_str());
        policy.language(contract).to_owned()
    };
    match command {
        Command::SaveDraft { study, reader, findings, impression, fields, base_version, key } => {
            let digest = text_digest(findings, impression, fields);
            if retried(state, *study, reader, key, &digest)?.is_some() {
                return Ok(Vec::new());
            }
            let s = state.studies.get(study).ok_or(Error::UnknownStudy { study: *study })?;
            let template = template_of(policy, state, *study);
            match template {
                Some(t) => t.check(fields)?,
                None => template::no_template(fields)?,
            }
            let open = s.open.as_ref().filter(|o| o.holder.as_deref() == Some(reader.as_str()));
            let Some(open) = open else {
                return Err(Error::NotHolder { study: *study, reader: reader.clone() });
            };
            let report = s.report(&open.read_type);
            if report.is_some_and(|r| r.signed.is_some()) {
                return Err(Error::AlreadySigned { study: *study, read_type: open.read_type.clone() });
            }
            let latest = report.and_then(|r| r.versions.last()).map_or(0, |v| v.version);
            if *base_version != 0 && *base_version != latest {
                return Err(Error::Stale { base: *base_version, latest });
            }
            Ok(vec![Event::Drafted {
                study: *study,
                report: report_id(*study, &open.read_type),
                version: latest + 1,
                read_type: open.read_type.clone(),
                author: reader.clone(),
                findings: findings.clone(),
                impression: impression.clone(),
                saved_at: now,
                kind: "draft",
                fields: fields.clone(),
                template: template.map(|t| t.name.clone()).unwrap_or_default(),
                language: language(),
                keyed: (!key.is_empty()).then(|| keyed_id(reader, key, *study)),
            }])
        }
        Command::Sign { study, reader, read_type, version, discrepancy } => {
            if !matches!(discrepancy.as_str(), "" | "none" | "minor" | "major") {
                return Err(Error::Discrepancy { value: discrepancy.clone() });
            }
            let s = state.studies.get(study).ok_or(Error::UnknownStudy { study: *study })?;
            // Signed already by this reader: the same answer, nothing new.
            if let Some(signed) = s.report(read_type).and_then(|r| r.signed.as_ref()) {
                if signed.reader == *reader && (*version == 0 || *version == signed.version) {
                    return Ok(Vec::new());
                }
                return Err(Error::AlreadySigned { study: *study, read_type: read_type.clone() });
            }
            let open = s.open.as_ref().filter(|o| o.holder.as_deref() == Some(reader.as_str()));
            let Some(open) = open else {
                return Err(Error::NotHolder { study: *study, reader: reader.clone() });
            };
            if open.read_type != *read_type {
                return Err(Error::ReadType { study: *study, open: open.read_type.clone(), asked: read_type.clone() });
            }
            let jurisdiction = &s.facts.jurisdiction;
            let licensed =
                || state.licences.get(reader).is_some_and(|ls| ls.iter().any(|l| l.covers(jurisdiction, now)));
            if read_type == "final" && !jurisdiction.is_empty() && !licensed() {
                return Err(Error::Licence { reader: reader.clone(), jurisdiction: jurisdiction.clone() });
            }
            let versions = s.report(read_type).map(|r| r.versions.as_slice()).unwrap_or_default();
            let Some(last) = versions.last() else {
                return Err(Error::NoDraft { study: *study, read_type: read_type.clone() });
            };
            let chosen = if *version == 0 { Some(last) } else { versions.iter().find(|v| v.version == *version) };
            let chosen = chosen.ok_or(Error::NoVersion {
                study: *study,
                read_type: read_type.clone(),
                version: *version,
                last: last.version,
            })?;
            if !chosen.has_impression {
                return Err(Error::NoImpression { version: chosen.version });
            }
            if let Some(missing) = template_of(policy, state, *study).and_then(|t| t.missing(&chosen.fields)) {
                return Err(Error::Field(missing));
            }
            Ok(vec![Event::Signed {
                study: *study,
                report: report_id(*study, read_type),
                read_type: read_type.clone(),
                reader: reader.clone(),
                version: chosen.version,
                signed_at: now,
                discrepancy: discrepancy.clone(),
            }])
        }
        Command::AddAddendum { study, reader, read_type, text, key } => {
            if text.trim().is_empty() {
                return Err(Error::Empty { field: "text", what: "an addendum says something" });
            }
            if retried(state, *study, reader, key, &text_digest(text, "", &BTreeMap::new()))?.is_some() {
                return Ok(Vec::new());
            }
            let report = signed_by(state, *study, read_type, reader)?;
            let text = Some((text.as_str(), ""));
            let keyed = (!key.is_empty()).then(|| keyed_id(reader, key, *study));
            Ok(amend(report, *study, reader, now, "addendum", text, String::new(), language(), keyed))
        }
        Command::Correct { study, reader, read_type, findings, impression, reason, key } => {
            if impression.trim().is_empty() {
                return Err(Error::Empty {
                    field: "sections.impression",
                    what: "a corrected report has an impression",
                });
            }
            if reason.trim().is_empty() {
                return Err(Error::Empty { field: "reason", what: "say what the correction corrects" });
            }
            if retried(state, *study, reader, key, &text_digest(findings, impression, &BTreeMap::new()))?.is_some() {
                return Ok(Vec::new());
            }
            let report = signed_by(state, *study, read_type, reader)?;
            let text = Some((findings.as_str(), impression.as_str()));
            let keyed = (!key.is_empty()).then(|| keyed_id(reader, key, *study));
            Ok(amend(report, *study, reader, now, "corrected", text, reason.clone(), language(), keyed))
        }
        Command::EnterInError { study, reader, read_type, reason } => {
            if reason.trim().is_empty() {
                return Err(Error::Empty { field: "reason", what: "say why the report was in error" });
            }
            let report = signed_by(state, *study, read_type, reader)?;
            Ok(amend(report, *study, reader, now, "entered_in_error", None, reason.clone(), language(), None))
        }
    }
}

/// `study`'s signed `read_type` report, when `reader` signed it and it
/// still takes amendments.
fn signed_by<'s>(state: &'s State, study: Uuid, read_type: &str, reader: &str) -> Result<&'s Report, Error> {
    let s = state.studies.get(&study).ok_or(Error::UnknownStudy { study })?;
    let not_signed = || Error::NotSigned { study, read_type: read_type.to_owned() };
    let report = s.report(read_type).ok_or_else(not_signed)?;
    let signed = report.signed.as_ref().ok_or_else(not_signed)?;
    if signed.reader != reader {
        let (read_type, reader, signer) = (read_type.to_owned(), reader.to_owned(), signed.reader.clone());
        return Err(Error::NotSigner { study, read_type, reader, signer });
    }
    if report.amendments.iter().any(|a| a.kind == "entered_in_error") {
        return Err(Error::EnteredInError { study, read_type: read_type.to_owned() });
    }
    Ok(report)
}

/// The events of an amendment: its text as the next version (if any) and
/// the amendment naming it. Coded fields are the signed version's: an
/// addendum or a correction adds text.
#[allow(clippy::too_many_arguments)] // one amendment's facts, each its own
fn amend(
    report: &Report,
    study: Uuid,
    reader: &str,
    now: UnixMicros,
    kind: &'static str,
    text: Option<(&str, &str)>,
    reason: String,
    language: String,
    keyed: Option<EventId>,
) -> Vec<Event> {
    let next = report.versions.last().map_or(0, |v| v.version) + 1;
    let mut events = Vec::new();
    if let Some((findings, impression)) = text {
        events.push(Event::Drafted {
            study,
            report: report.id,
            version: next,
            read_type: report.read_type.clone(),
            author: reader.to_owned(),
            findings: findings.to_owned(),
            impression: impression.to_owned(),
            saved_at: now,
            kind: if kind == "addendum" { "addendum" } else { "correction" },
            fields: BTreeMap::new(),
            template: String::new(),
            language,
            keyed,
        });
    }
    events.push(Event::Amended {
        study,
        report: report.id,
        read_type: report.read_type.clone(),
        kind,
        version: if text.is_some() { next } else { 0 },
        reader: reader.to_owned(),
        at: now,
        reason,
    });
    events
}
