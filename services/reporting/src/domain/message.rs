//! What a delivered report says, whatever carries it (FHIR, HL7v2): the
//! report as it stands (status, current text, addenda), who it is about
//! and who read it. Built from the folded report and the study's first
//! instance; rendered by `adapters::fhir` and `adapters::hl7`.

use meridian_events::UnixMicros;
use uuid::Uuid;

/// The patient as the study's instances name them (PHI).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Patient {
    pub id: String,
    /// Issuer of Patient ID; empty when the instances name none.
    pub issuer: String,
    /// As DICOM writes it: "Family^Given^Middle^Prefix^Suffix".
    pub name: String,
    /// YYYYMMDD, or empty.
    pub birth_date: String,
    /// M, F, O, or empty.
    pub sex: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportMessage {
    /// One business identifier across every version of the read's report.
    pub report: Uuid,
    pub study: Uuid,
    pub tenant: String,
    /// "preliminary", "final", "appended", "corrected", "entered-in-error".
    pub status: String,
    pub read_type: String,
    pub patient: Patient,
    pub accession: String,
    pub study_uid: String,
    pub study_description: String,
    /// Study Date and Time as DICOM writes them (YYYYMMDD, HHMMSS[.f]).
    pub study_date: String,
    pub study_time: String,
    pub signed_at: UnixMicros,
    pub reader: String,
    pub group: String,
    pub findings: String,
    pub impression: String,
    /// Addenda's texts, in order.
    pub addenda: Vec<String>,
    /// BCP 47 language of the text.
    pub language: String,
    /// The template's title in that language ("" with no template), its
    /// section headings ("Findings", "Impression" by default), and the
    /// signed version's coded fields as (label, value).
    pub title: String,
    pub headings: (String, String),
    pub fields: Vec<(String, String)>,
    /// The hospital's order it answers, when one was matched: its placer
    /// order number and ordering clinician (as the order named them).
    pub placer_order: String,
    pub ordering_clinician: String,
}

/// The headings a report has with no template.
pub fn default_headings() -> (String, String) {
    ("Findings".into(), "Impression".into())
}

impl ReportMessage {
    /// The report as plain text: findings, impression, addenda.
    pub fn text(&self) -> String {
        let mut out = String::new();
        if !self.title.is_empty() {
            out.push_str(&format!("{}\n\n", self.title));
        }
        if !self.findings.trim().is_empty() {
            out.push_str(&format!("{}:\n", self.headings.0.to_uppercase()));
            out.push_str(self.findings.trim());
            out.push_str("\n\n");
        }
        for (label, value) in &self.fields {
            out.push_str(&format!("{label}: {value}\n"));
        }
        if !self.fields.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("{}:\n", self.headings.1.to_uppercase()));
        out.push_str(self.impression.trim());
        out.push('\n');
        for (n, a) in self.addenda.iter().enumerate() {
            out.push_str(&format!("\nADDENDUM {}:\n{}\n", n + 1, a.trim()));
        }
        out
    }
}
