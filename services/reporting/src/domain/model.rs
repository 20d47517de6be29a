//! What reporting knows: each study's open read and who holds it (from
//! routing), each reader's licences (from routing), and each read's report
//! versions and signature (its own events). The text of a version is not
//! held: only where its event is on the log, so memory holds no PHI text
//! and follows the studies, not the words written.

use std::collections::BTreeMap;

use meridian_events::{EventId, UnixMicros};

use super::critical::{Critical, CriticalEvent};
use super::delivery::{Delivery, Standing};
use super::order::{OrderFact, Orders};
use super::peer_review::{PeerEvent, Review};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A fact reporting folds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fact {
    /// StudyQueued: the study's next read and its facts.
    Queued { study: Uuid, facts: StudyFacts, read_type: String },
    /// StudyAssigned, AssignmentClaimed, AssignmentReassigned: who holds the read.
    Held { study: Uuid, reader: String },
    /// AssignmentReleased: nobody holds it.
    Released { study: Uuid },
    /// AssignmentCompleted: the read is done.
    Completed { study: Uuid, read_type: String },
    /// ReaderRegistered (with the reader's group: a report's performer),
    /// LicenceUpdated.
    Licences { reader: String, group: Option<String>, licences: Vec<Licence> },
    /// DeliveryRequested.
    Requested(Delivery),
    /// ReportDelivered: the request is done.
    Delivered { delivery: Uuid },
    /// DeliveryFailed.
    Failed { delivery: Uuid, attempt: u32, error: String, permanent: bool, retry_at: UnixMicros },
    /// ReportText: a version saved, at its place on the log.
    Saved { study: Uuid, version: VersionRef, read_type: String, report: Uuid },
    /// ReportSigned.
    Signed { study: Uuid, report: Uuid, read_type: String, signature: Signature },
    /// ReportAmended.
    Amended { study: Uuid, report: Uuid, read_type: String, amendment: Amendment },
    /// InstanceReceived: where the study's first instance (its patient and
    /// accession) is on the log.
    Arrived { study: Uuid, partition: u32, offset: u64, accession_key: Option<Uuid> },
    /// A critical result flagged, communicated, closed or escalated.
    Critical(CriticalEvent),
    /// A peer review requested, scored or arbitrated.
    Peer(PeerEvent),
    /// An order received or matched.
    Order(OrderFact),
}

/// What was done to a signed report. Its text, if any, is a version of
/// kind "addendum" or "correction".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amendment {
    /// "addendum", "corrected" or "entered_in_error".
    pub kind: String,
    /// The text version it adds (0: none).
    pub version: u32,
    pub reader: String,
    pub at: UnixMicros,
    pub reason: String,
}

/// What routing says of a study.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StudyFacts {
    pub tenant: String,
    pub contract: String,
    pub facility: String,
    /// The patient's jurisdiction ("US-NY"), for a final's licence.
    pub jurisdiction: String,
    pub modality: String,
    pub body_part: String,
    /// As routing queued it (a peer review is queued by the same).
    #[serde(default)]
    pub subspecialty: String,
    #[serde(default)]
    pub rvu_milli: u32,
    /// When the study was complete: turnaround runs from here.
    #[serde(default)]
    pub completed_at: UnixMicros,
    /// Each read's SLA deadline, as routing queued it.
    #[serde(default)]
    pub deadlines: BTreeMap<String, UnixMicros>,
    /// The opaque patient key (an HMAC of the tenant's secret and the
    /// patient id): the patient's other studies are their priors. Empty
    /// when unknown.
    #[serde(default)]
    pub patient_key: String,
}

/// A licence to report: a jurisdiction (a national one covers its
/// subdivisions) until it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Licence {
    pub jurisdiction: String,
    pub expires: UnixMicros,
}

impl Licence {
    /// As routing judges it: "US" covers "US-NY"; "US-NY" only itself.
    pub fn covers(&self, jurisdiction: &str, at: UnixMicros) -> bool {
        let place = self.jurisdiction == jurisdiction
            || (!self.jurisdiction.contains('-') && jurisdiction.split('-').next() == Some(self.jurisdiction.as_str()));
        place && at < self.expires
    }
}

/// A saved version: who, when, and where its ReportText is on the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRef {
    pub version: u32,
    pub author: String,
    pub saved_at: UnixMicros,
    pub partition: u32,
    pub offset: u64,
    /// Whether it has an impression (a version without one cannot be signed).
    pub has_impression: bool,
    /// "draft", "addendum" or "correction".
    #[serde(default = "draft")]
    pub kind: String,
    /// The coded fields it has (names only: their values are PHI, on the
    /// log), and the template it was written to ("" for none).
    #[serde(default)]
    pub fields: Vec<String>,
    #[serde(default)]
    pub template: String,
    /// Its event's id (a keyed save's is the key's), and a digest of its
    /// text: a retried keyed save is told from a key reused for other text.
    #[serde(default)]
    pub event: Uuid,
    #[serde(default)]
    pub digest: String,
}

/// A digest of a version's text and fields (hex, 128 bits): what a retried
/// keyed save must match.
pub fn text_digest(findings: &str, impression: &str, fields: &BTreeMap<String, String>) -> String {
    let mut parts: Vec<&[u8]> = vec![findings.as_bytes(), impression.as_bytes()];
    for (k, v) in fields {
        parts.extend([k.as_bytes(), v.as_bytes()]);
    }
    meridian_events::id::aggregate_id("reporting.text.digest", &parts).simple().to_string()
}

fn draft() -> String {
    "draft".into()
}

/// A read's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub version: u32,
    pub reader: String,
    pub at: UnixMicros,
    pub discrepancy: String,
    pub event_id: EventId,
}

/// One read's report: its versions, and its signature once signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub id: Uuid,
    pub read_type: String,
    pub versions: Vec<VersionRef>,
    pub signed: Option<Signature>,
    /// After signing: addenda, a correction, an entry in error (append-only).
    #[serde(default)]
    pub amendments: Vec<Amendment>,
}

impl Report {
    /// Its status as FHIR names it: "preliminary"/"final" once signed (by
    /// read type), "appended", "corrected", "entered-in-error"; "draft"
    /// before.
    pub fn status(&self) -> &'static str {
        if self.signed.is_none() {
            return "draft";
        }
        let kinds = || self.amendments.iter().map(|a| a.kind.as_str());
        if kinds().any(|k| k == "entered_in_error") {
            "entered-in-error"
        } else if kinds().any(|k| k == "corrected") {
            "corrected"
        } else if kinds().any(|k| k == "addendum") {
            "appended"
        } else if self.read_type == "preliminary" {
            "preliminary"
        } else {
            "final"
        }
    }

    /// The version whose text is the report now: the last correction, else
    /// the signed one (a draft's: the latest).
    pub fn current(&self) -> Option<&VersionRef> {
        let corrected = self.amendments.iter().rev().find(|a| a.kind == "corrected").map(|a| a.version);
        let chosen = corrected.or(self.signed.as_ref().map(|s| s.version));
        match chosen {
            Some(v) => self.versions.iter().find(|x| x.version == v),
            None => self.versions.last(),
        }
    }

    /// The addenda's text versions, in order.
    pub fn addenda(&self) -> impl Iterator<Item = &VersionRef> {
        let versions: Vec<u32> = self.amendments.iter().filter(|a| a.kind == "addendum").map(|a| a.version).collect();
        self.versions.iter().filter(move |v| versions.contains(&v.version))
    }
}

/// The read routing has open for a study, and who holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRead {
    pub read_type: String,
    pub holder: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Study {
    pub facts: StudyFacts,
    /// Where its first InstanceReceived is on the PHI ingest topic: the
    /// patient and accession a delivered report names are read from there
    /// (memory holds no patient data).
    #[serde(default)]
    pub arrived: Option<(u32, u64)>,
    pub open: Option<OpenRead>,
    /// One per read type, in the order they were started.
    pub reports: Vec<Report>,
    /// The study's critical result (the latest flagged).
    #[serde(default)]
    pub critical: Option<Critical>,
    /// Its final's peer review, when the sample drew it.
    #[serde(default)]
    pub review: Option<Review>,
    /// The order it met (its accession key).
    #[serde(default)]
    pub order: Option<Uuid>,
}

impl Study {
    pub fn report(&self, read_type: &str) -> Option<&Report> {
        self.reports.iter().find(|r| r.read_type == read_type)
    }
}

/// Reporting's state. Grows by one small entry per study reported (its
/// reports' versions and signatures, never their text).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub studies: BTreeMap<Uuid, Study>,
    pub licences: BTreeMap<String, Vec<Licence>>,
    /// Reader → reading group.
    #[serde(default)]
    pub groups: BTreeMap<String, String>,
    /// Requests not delivered yet (due, or dead letters).
    #[serde(default)]
    pub deliveries: BTreeMap<Uuid, Delivery>,
    /// Orders in, and the studies' accession keys they meet by.
    #[serde(default)]
    pub orders: Orders,
    /// Tenant → patient key → its studies: a study's priors. (Nested, not
    /// keyed by a pair: a snapshot's map keys are strings.)
    #[serde(default)]
    pub patients: BTreeMap<String, BTreeMap<String, std::collections::BTreeSet<Uuid>>>,
}

/// The report id of `study`'s read of `read_type`: the same for all its
/// versions (one business identifier across versions).
pub fn report_id(study: Uuid, read_type: &str) -> Uuid {
    meridian_events::id::aggregate_id("reporting.report", &[study.as_bytes(), read_type.as_bytes()])
}

/// `study`'s report of `read_type`, made when it is not there yet.
fn report_mut<'s>(state: &'s mut State, study: Uuid, read_type: &str, id: Uuid) -> &'s mut Report {
    let s = state.studies.entry(study).or_default();
    match s.reports.iter().position(|r| r.read_type == read_type) {
        Some(i) => &mut s.reports[i],
        None => {
            let read_type = read_type.to_owned();
            s.reports.push(Report { id, read_type, versions: vec![], signed: None, amendments: vec![] });
            s.reports.last_mut().expect("just pushed")
        }
    }
}

/// Folds one fact.
pub fn apply(mut state: State, fact: &Fact) -> State {
    match fact {
        Fact::Queued { study, facts, read_type } => {
            let s = state.studies.entry(*study).or_default();
            // Each read keeps its deadline; a later read's facts are the study's.
            let mut deadlines = std::mem::take(&mut s.facts.deadlines);
            deadlines.extend(facts.deadlines.clone());
            s.facts = StudyFacts { deadlines, ..facts.clone() };
            s.open = Some(OpenRead { read_type: read_type.clone(), holder: None });
            if !facts.patient_key.is_empty() {
                let of_tenant = state.patients.entry(facts.tenant.clone()).or_default();
                of_tenant.entry(facts.patient_key.clone()).or_default().insert(*study);
            }
        }
        Fact::Held { study, reader } => {
            if let Some(open) = state.studies.get_mut(study).and_then(|s| s.open.as_mut()) {
                open.holder = Some(reader.clone());
            }
        }
        Fact::Released { study } => {
            if let Some(open) = state.studies.get_mut(study).and_then(|s| s.open.as_mut()) {
                open.holder = None;
            }
        }
        Fact::Completed { study, read_type } => {
            if let Some(s) = state.studies.get_mut(study)
                && s.open.as_ref().is_some_and(|o| &o.read_type == read_type)
            {
                s.open = None;
            }
        }
        Fact::Licences { reader, group, licences } => {
            state.licences.insert(reader.clone(), licences.clone());
            if let Some(group) = group {
                state.groups.insert(reader.clone(), group.clone());
            }
        }
        Fact::Requested(d) => {
            if let Some(old) = d.supersedes {
                state.deliveries.remove(&old);
            }
            state.deliveries.entry(d.id).or_insert_with(|| d.clone());
        }
        Fact::Delivered { delivery } => {
            state.deliveries.remove(delivery);
        }
        Fact::Failed { delivery, attempt, error, permanent, retry_at } => {
            if let Some(d) = state.deliveries.get_mut(delivery)
                && *attempt >= d.attempts
            {
                d.attempts = *attempt;
                d.last_error = error.clone();
                d.standing = if *permanent { Standing::Dead(error.clone()) } else { Standing::Due(*retry_at) };
            }
        }
        Fact::Saved { study, version, read_type, report } => {
            let r = report_mut(&mut state, *study, read_type, *report);
            if !r.versions.iter().any(|v| v.version == version.version) {
                r.versions.push(version.clone());
                r.versions.sort_by_key(|v| v.version);
            }
        }
        Fact::Critical(event) => super::critical::apply(&mut state, event),
        Fact::Peer(event) => super::peer_review::apply(&mut state, event),
        Fact::Order(fact) => super::order::apply(&mut state, fact),
        Fact::Arrived { study, partition, offset, accession_key } => {
            let s = state.studies.entry(*study).or_default();
            if s.arrived.is_none() {
                s.arrived = Some((*partition, *offset));
            }
            if let Some(key) = accession_key {
                super::order::apply(&mut state, &OrderFact::Accession { study: *study, key: *key });
            }
        }
        // Signatures and text are on two topics, folded in either order:
        // whichever comes first makes the report.
        Fact::Amended { study, report, read_type, amendment } => {
            let r = report_mut(&mut state, *study, read_type, *report);
            if !r.amendments.contains(amendment) {
                r.amendments.push(amendment.clone());
            }
        }
        Fact::Signed { study, report, read_type, signature } => {
            report_mut(&mut state, *study, read_type, *report).signed = Some(signature.clone());
        }
    }
    state
}
