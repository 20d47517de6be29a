//! A report as its receivers get it, checked by real validators: the FHIR
//! R4 DiagnosticReport by fhir.resources 6.4.0 (FHIR 4.0.1), the HL7
//! v2.5.1 ORU^R01 by hl7apy at its STRICT level, for every status a
//! report goes through, with text that needs escaping.

use std::path::{Path, PathBuf};
use std::process::Command;

use meridian_events::UnixMicros;
use meridian_reporting::adapters::{fhir, hl7, hl7_order, orders};
use meridian_reporting::domain::message::{Patient, ReportMessage};
use uuid::Uuid;

fn python(var: &str, venv: &str) -> PathBuf {
    std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(format!(".cache/meridian/tools/{venv}/bin/python"))
    })
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python").join(name)
}

fn message(status: &str) -> ReportMessage {
    ReportMessage {
        report: Uuid::from_u128(0x5eed),
        study: Uuid::from_u128(0x57d),
        tenant: "acme".into(),
        status: status.into(),
        read_type: if status == "preliminary" { "preliminary" } else { "final" }.into(),
        patient: Patient {
            id: "MRN-0042".into(),
            issuer: "ACME GENERAL".into(),
            name: "O'Neil^Siobhan^M^Dr^".into(),
            birth_date: "19800214".into(),
            sex: "F".into(),
        },
        accession: "ACC-2026-0001".into(),
        study_uid: "1.2.826.0.1.3680043.10.543.1".into(),
        study_description: "CT HEAD W/O CONTRAST".into(),
        study_date: "20261104".into(),
        study_time: "101500.123".into(),
        signed_at: UnixMicros(1_793_812_500_000_000),
        reader: "dr-ana-ortiz".into(),
        group: "atlantic-rads".into(),
        findings: "No acute haemorrhage | mass ^ effect & no ~ shift \\ none.\nVentricles normal.".into(),
        impression: "Normal head CT.".into(),
        addenda: if status == "appended" { vec!["Compared with 2025: stable.".into()] } else { vec![] },
        language: "en-IE".into(),
        title: "CT Head without contrast".into(),
        headings: ("Findings".into(), "Impression".into()),
        fields: vec![("Intracranial haemorrhage".into(), "absent".into()), ("Laterality".into(), "midline".into())],
        placer_order: "PO-77|A".into(),
        ordering_clinician: "1234^Lee^Sam^^^Dr".into(),
    }
}

const STATUSES: [&str; 5] = ["preliminary", "final", "appended", "corrected", "entered-in-error"];

#[test]
fn each_status_of_a_report_is_a_valid_fhir_r4_diagnostic_report() {
    let dir = tempfile::TempDir::new().unwrap();
    let files: Vec<PathBuf> = STATUSES
        .iter()
        .map(|s| {
            let path = dir.path().join(format!("{s}.json"));
            std::fs::write(&path, serde_json::to_vec(&fhir::diagnostic_report(&message(s))).unwrap()).unwrap();
            path
        })
        .collect();
    let out = Command::new(python("MERIDIAN_FHIR_PYTHON", "venv-fhir"))
        .arg(script("fhir_check.py"))
        .args(&files)
        .output()
        .expect("the FHIR validator's venv: scripts/test installs it");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let expected: Vec<String> = STATUSES.iter().map(|s| format!("ok DiagnosticReport {s}")).collect();
    assert_eq!(said.lines().collect::<Vec<_>>(), expected);

    // Resources the check must refuse: an instant that is not one (the
    // validator's), a status outside DiagnosticReport's required binding
    // (the script's, as fhir.resources does not check bindings).
    for (field, value) in [("issued", "yesterday"), ("status", "signed")] {
        let mut bad = fhir::diagnostic_report(&message("final"));
        bad[field] = serde_json::json!(value);
        let path = dir.path().join(format!("bad-{field}.json"));
        std::fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
        let out = Command::new(python("MERIDIAN_FHIR_PYTHON", "venv-fhir"))
            .arg(script("fhir_check.py"))
            .arg(&path)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && said.contains(field), "{field} = {value:?}: {said}");
    }
}

#[test]
fn each_status_of_a_report_is_a_strictly_valid_hl7_oru_r01() {
    let dir = tempfile::TempDir::new().unwrap();
    let parties = hl7::Parties { sending: ("MERIDIAN", "us-east"), receiving: ("RIS", "ACME") };
    let files: Vec<PathBuf> = STATUSES
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let path = dir.path().join(format!("{s}.hl7"));
            let oru = hl7::oru_r01(&message(s), &format!("MSG{n:017}"), &parties, UnixMicros(1_793_812_600_000_000));
            std::fs::write(&path, oru).unwrap();
            path
        })
        .collect();
    let out = Command::new(python("MERIDIAN_PYTHON", "venv"))
        .arg(script("hl7_check.py"))
        .args(&files)
        .output()
        .expect("hl7apy in the tools' venv: scripts/test installs it");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    let expected: Vec<String> = ["P", "F", "C", "C", "C"]
        .iter()
        .enumerate()
        .map(|(n, status)| format!("ok ORU^R01^ORU_R01 MSG{n:017} {status}"))
        .collect();
    assert_eq!(said.lines().collect::<Vec<_>>(), expected);

    // A message STRICT must refuse (a study date that is no DTM in OBR-7):
    // the check can fail.
    let path = dir.path().join("bad.hl7");
    let oru = hl7::oru_r01(&message("final"), "BAD", &parties, UnixMicros(0));
    let (study_date, observed) = ("|20261104101500|", "|2026110410150X|");
    assert!(oru.contains(study_date), "{oru}");
    std::fs::write(&path, oru.replacen(study_date, observed, 1)).unwrap();
    let out = Command::new(python("MERIDIAN_PYTHON", "venv")).arg(script("hl7_check.py")).arg(&path).output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn the_acks_to_orders_and_the_outcome_of_a_bad_service_request_are_valid() {
    let dir = tempfile::TempDir::new().unwrap();
    let orm = "MSH|^~\\&|EPIC|acme-general|MERIDIAN|us-east|20261203101500||ORM^O01^ORM_O01|MSG-001|P|2.5.1\r\
PID|1||MRN-0042^^^ACME GENERAL^MR||Doe^Jane\r\
ORC|NW|PO-77|||||^^^^^S\r\
OBR|1|PO-77||70450^CT head^CPT||||||||||||||\r";
    let m = hl7_order::Message::parse(orm).unwrap();
    let h = hl7_order::header(&m);
    let refused = hl7_order::order(&m, "acme", "acme-general").unwrap_err();
    let rejected = hl7_order::Refusal {
        code: "AR",
        error: (200, "Unsupported message type"),
        segment: "MSH",
        field: 9,
        text: "MSH-9 \"ADT^A01\": orders are ORM^O01 or OMI^O23".into(),
    };
    let at = UnixMicros(1_796_000_000_000_000);
    let acks = [None, Some(&refused), Some(&rejected)].map(|r| hl7_order::ack(&h, r, "us-east", at));
    let files: Vec<PathBuf> = acks
        .iter()
        .enumerate()
        .map(|(n, ack)| {
            let path = dir.path().join(format!("ack{n}.hl7"));
            std::fs::write(&path, ack).unwrap();
            path
        })
        .collect();
    let out = Command::new(python("MERIDIAN_PYTHON", "venv"))
        .arg(script("hl7_check.py"))
        .args(&files)
        .output()
        .expect("hl7apy in the tools' venv: scripts/test installs it");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(
        said.lines().collect::<Vec<_>>(),
        [
            "ok ACK^O01^ACK AMSG-001 AA",
            "ok ACK^O01^ACK AMSG-001 AE OBR^1^18 101",
            "ok ACK^O01^ACK AMSG-001 AR MSH^1^9 200",
        ]
    );

    // A ServiceRequest as a hospital sends it is valid R4 and reads into an
    // order; the OperationOutcome a bad one gets is valid R4 and names the
    // element.
    let request = serde_json::json!({
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "priority": "stat",
        "identifier": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
            "system": "urn:acme:accession",
            "value": "ACC-9001"
        }],
        "code": {"text": "CT head without contrast"},
        "subject": {"identifier": {"system": "urn:acme:mrn", "value": "MRN-0042"}},
        "requester": {"display": "Dr Sam Lee"},
        "reasonCode": [{"text": "Fall, rule out bleed"}]
    });
    let order = orders::service_request(&request, "acme", "acme-general").unwrap();
    assert_eq!((order.accession.as_str(), order.priority.as_str()), ("ACC-9001", "stat"));
    let mut bad = request.clone();
    bad["identifier"] = serde_json::json!([]);
    let (element, why) = orders::service_request(&bad, "acme", "acme-general").unwrap_err();
    let outcome = orders::operation_outcome("required", &why, Some(element));
    let (sent, answered) = (dir.path().join("request.json"), dir.path().join("outcome.json"));
    std::fs::write(&sent, request.to_string()).unwrap();
    std::fs::write(&answered, outcome.to_string()).unwrap();
    let out = Command::new(python("MERIDIAN_FHIR_PYTHON", "venv-fhir"))
        .arg(script("fhir_check.py"))
        .args([&sent, &answered])
        .output()
        .expect("fhir.resources in its own venv: scripts/test installs it");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert_eq!(outcome["issue"][0]["expression"][0], "ServiceRequest.identifier");
}
