//! What a draft and a signature decide, against the folded state: only the
//! reader who holds a study's open read writes its report; a signature
//! takes a saved version (immutable from then on); a final needs a
//! licence current in the patient's jurisdiction at the moment of signing.

use meridian_events::UnixMicros;
use uuid::Uuid;

use super::model::{State, report_id};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    SaveDraft { study: Uuid, reader: String, findings: String, impression: String, base_version: u32 },
    Sign { study: Uuid, reader: String, read_type: String, version: u32, discrepancy: String },
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
            Error::UnknownStudy { .. }
            | Error::NoVersion { .. }
            | Error::NoImpression { .. }
            | Error::Discrepancy { .. } => None,
        }
    }
}

/// The events `command` decides at `now`; none when it was done already
/// (a signature asked again).
pub fn decide(state: &State, command: &Command, now: UnixMicros) -> Result<Vec<Event>, Error> {
    match command {
        Command::SaveDraft { study, reader, findings, impression, base_version } => {
            let s = state.studies.get(study).ok_or(Error::UnknownStudy { study: *study })?;
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
    }
}
