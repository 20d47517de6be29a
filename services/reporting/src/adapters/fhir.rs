//! A report as a FHIR R4 DiagnosticReport (US Core DiagnosticReport
//! Profile for Report and Note exchange): one business identifier across
//! versions, so a receiver's conditional update
//! (`PUT DiagnosticReport?identifier=system|value`) replaces the version
//! it holds.

use serde_json::{Value, json};

use crate::domain::message::ReportMessage;

/// The system of every report's business identifier.
pub const REPORT_SYSTEM: &str = "urn:meridian:report";
const US_CORE_NOTE: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-diagnosticreport-note";

/// Percent-encodes what a URI may not carry as is (FHIR `uri` has no
/// whitespace; issuers of patient ids may).
fn uri_part(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The patient's identifier system: the issuer's, else the tenant's.
fn patient_system(m: &ReportMessage) -> String {
    if m.patient.issuer.is_empty() {
        format!("urn:meridian:tenant:{}:patient-id", uri_part(&m.tenant))
    } else {
        format!("urn:meridian:issuer:{}", uri_part(&m.patient.issuer))
    }
}

/// "Family^Given^Middle^Prefix^Suffix" as "Given Middle Family".
fn display_name(dicom: &str) -> String {
    let parts: Vec<&str> = dicom.split('^').map(str::trim).collect();
    let given = parts.iter().skip(1).take(2).filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join(" ");
    let family = parts.first().copied().unwrap_or_default();
    [given.as_str(), family].iter().filter(|p| !p.is_empty()).copied().collect::<Vec<_>>().join(" ")
}

/// DICOM's YYYYMMDD as FHIR's date, if it is one.
fn date(dicom: &str) -> Option<String> {
    let d = dicom.trim();
    (d.len() == 8 && d.bytes().all(|b| b.is_ascii_digit())).then(|| format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..]))
}

/// The DiagnosticReport of `m`.
pub fn diagnostic_report(m: &ReportMessage) -> Value {
    use base64::Engine as _;
    let issued = jiff::Timestamp::from_microsecond(m.signed_at.0).map(|t| t.to_string()).unwrap_or_default();
    let text = m.text();
    let mut subject = json!({ "identifier": { "system": patient_system(m), "value": m.patient.id } });
    let name = display_name(&m.patient.name);
    if !name.is_empty() {
        subject["display"] = json!(name);
    }
    let mut report = json!({
        "resourceType": "DiagnosticReport",
        "meta": { "profile": [US_CORE_NOTE] },
        "identifier": [{ "system": REPORT_SYSTEM, "value": m.report.to_string() }],
        "status": m.status,
        "category": [{ "coding": [{ "system": "http://loinc.org", "code": "LP29684-5", "display": "Radiology" }] }],
        "code": {
            "coding": [{ "system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study" }],
            "text": if m.study_description.is_empty() { "Diagnostic imaging study" } else { m.study_description.as_str() },
        },
        "subject": subject,
        "issued": issued,
        "performer": [{
            "identifier": { "system": "urn:meridian:reading-group", "value": m.group },
            "display": m.group,
        }],
        "resultsInterpreter": [{
            "identifier": { "system": "urn:meridian:reader", "value": m.reader },
            "display": m.reader,
        }],
        "conclusion": m.impression.trim(),
        "presentedForm": [{
            "contentType": "text/plain; charset=utf-8",
            "language": m.language,
            "data": base64::engine::general_purpose::STANDARD.encode(text.as_bytes()),
            "title": if m.title.is_empty() { format!("{} report", m.read_type) } else { format!("{} ({})", m.title, m.read_type) },
        }],
    });
    // Effective: the study's date (its time has no zone in DICOM, and a
    // FHIR dateTime with a time needs one), else the signature's.
    report["effectiveDateTime"] = json!(date(&m.study_date).unwrap_or_else(|| issued.clone()));
    if !m.study_uid.is_empty() {
        report["imagingStudy"] =
            json!([{ "identifier": { "system": "urn:dicom:uid", "value": format!("urn:oid:{}", m.study_uid) } }]);
    }
    if !m.placer_order.is_empty() {
        report["basedOn"] = json!([{
            "type": "ServiceRequest",
            "identifier": {
                "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC" }] },
                "system": format!("urn:meridian:tenant:{}:placer-order", uri_part(&m.tenant)),
                "value": m.placer_order,
            },
        }]);
    }
    if !m.accession.is_empty() {
        report["identifier"].as_array_mut().expect("an array").push(json!({
            "type": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN" }] },
            "system": format!("urn:meridian:tenant:{}:accession", uri_part(&m.tenant)),
            "value": m.accession,
        }));
    }
    report
}

/// Where a receiver's conditional update of `m`'s report goes, under its
/// FHIR base URL.
pub fn conditional_update_url(base: &str, m: &ReportMessage) -> String {
    format!("{}/DiagnosticReport?identifier={}%7C{}", base.trim_end_matches('/'), uri_part(REPORT_SYSTEM), m.report)
}

#[cfg(test)]
pub(crate) mod tests {
    use meridian_events::UnixMicros;
    use uuid::Uuid;

    use super::*;
    use crate::domain::message::Patient;

    pub(crate) fn message() -> ReportMessage {
        ReportMessage {
            report: Uuid::from_u128(0xabc),
            study: Uuid::from_u128(0xdef),
            tenant: "acme".into(),
            status: "final".into(),
            read_type: "final".into(),
            patient: Patient {
                id: "MRN-0042".into(),
                issuer: "ACME GENERAL".into(),
                name: "Doe^Jane^Q".into(),
                birth_date: "19800214".into(),
                sex: "F".into(),
            },
            accession: "ACC-7|1^2".into(),
            study_uid: "1.2.826.0.1.3680043.10.543.1".into(),
            study_description: "CT HEAD W/O CONTRAST".into(),
            study_date: "20261104".into(),
            study_time: "101500".into(),
            signed_at: UnixMicros(1_793_812_500_000_000),
            reader: "dr-ana-ortiz".into(),
            group: "atlantic-rads".into(),
            findings: "No acute intracranial haemorrhage.\nVentricles normal.".into(),
            impression: "Normal head CT.".into(),
            addenda: vec!["Compared with 2025: stable & unchanged.".into()],
            language: "en".into(),
            title: String::new(),
            headings: crate::domain::message::default_headings(),
            fields: Vec::new(),
            placer_order: String::new(),
            ordering_clinician: String::new(),
        }
    }

    #[test]
    fn a_report_is_a_diagnostic_report_with_one_identifier_across_versions() {
        let m = message();
        let r = diagnostic_report(&m);
        assert_eq!(r["identifier"][0], json!({ "system": REPORT_SYSTEM, "value": m.report.to_string() }));
        assert_eq!(r["status"], "final");
        assert_eq!(r["subject"]["identifier"]["system"], "urn:meridian:issuer:ACME%20GENERAL");
        assert_eq!(r["subject"]["display"], "Jane Q Doe");
        assert_eq!(r["effectiveDateTime"], "2026-11-04");
        assert_eq!(r["issued"], "2026-11-04T17:15:00Z");
        assert_eq!(r["imagingStudy"][0]["identifier"]["value"], "urn:oid:1.2.826.0.1.3680043.10.543.1");
        use base64::Engine as _;
        let data = r["presentedForm"][0]["data"].as_str().unwrap();
        let text = String::from_utf8(base64::engine::general_purpose::STANDARD.decode(data).unwrap()).unwrap();
        assert_eq!(text, m.text());
        assert!(text.contains("ADDENDUM 1:\nCompared with 2025"));
        let corrected = diagnostic_report(&ReportMessage { status: "corrected".into(), ..m.clone() });
        assert_eq!(corrected["identifier"], r["identifier"], "the same business identifier");
        assert_eq!(
            conditional_update_url("https://ehr.example/fhir/", &m),
            format!("https://ehr.example/fhir/DiagnosticReport?identifier=urn%3Ameridian%3Areport%7C{}", m.report)
        );
    }
}
