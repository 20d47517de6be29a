//! QIDO-RS through the router: pages that stop at the region's maximum
//! with PS3.18's Warning, stable offsets, searches that seek through the
//! index's keys, and a reader who sees exactly the studies assigned to
//! them, with routing asked once per search.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use meridian_auth::Principal;
use meridian_config::{Platform, PrincipalKind};
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::{EventLog, TopicSpec};
use serde_json::{Map, Value, json};
use tower::ServiceExt;

use super::*;
use crate::blobs::LocalBlobs;
use crate::index::Received;

const STUDIES: u128 = 30;

/// Routing's assignments, fixed, counting how often they are asked.
struct Fixed {
    reader: String,
    studies: BTreeSet<Uuid>,
    asked: AtomicUsize,
}

#[async_trait::async_trait]
impl Assignments for Fixed {
    async fn assignee(&self, study: Uuid) -> Option<String> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.studies.contains(&study).then(|| self.reader.clone())
    }

    async fn assigned_to(&self, reader: &str) -> BTreeSet<Uuid> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        if reader == self.reader { self.studies.clone() } else { BTreeSet::new() }
    }
}

fn study_uid(i: u128) -> String {
    format!("1.2.826.0.1.3680043.10.543.3.{i:03}")
}

/// Study `i` of acme: patient `P{i % 10}`, studied on 2026-01-0{1 + i % 5}.
fn received(i: u128) -> Received {
    let (study, series, sop) = (study_uid(i), format!("{}.1", study_uid(i)), format!("{}.1.1", study_uid(i)));
    let mut metadata = Map::new();
    metadata.insert("0020000D".into(), json!({"vr": "UI", "Value": [study]}));
    metadata.insert("0020000E".into(), json!({"vr": "UI", "Value": [series]}));
    metadata.insert("00080018".into(), json!({"vr": "UI", "Value": [sop]}));
    metadata.insert("00080060".into(), json!({"vr": "CS", "Value": ["CT"]}));
    metadata.insert("00100020".into(), json!({"vr": "LO", "Value": [format!("P{}", i % 10)]}));
    metadata.insert("00080020".into(), json!({"vr": "DA", "Value": [format!("2026010{}", 1 + i % 5)]}));
    Received {
        tenant: "acme".into(),
        study_id: Uuid::from_u128(0x5000 + i),
        series_id: Uuid::from_u128(0x6000 + i),
        instance_id: Uuid::from_u128(0x7000 + i),
        study_uid: study,
        series_uid: series,
        sop_uid: sop.clone(),
        object_key: format!("phi/acme/{sop}.dcm"),
        sha256: format!("{i:064x}"),
        size: 10,
        transfer_syntax: "1.2.840.10008.1.2.1".into(),
        metadata,
    }
}

struct Region {
    _dir: tempfile::TempDir,
    router: Router,
    assignments: Arc<Fixed>,
    log: Arc<EmbeddedLog>,
}

impl Region {
    /// Every PhiAccessed appended so far.
    async fn accessed(&self) -> Vec<meridian_proto::events::v1::PhiAccessed> {
        let topic = meridian_log::TopicName::new("us-east", meridian_events::DataClass::Operational, "audit").unwrap();
        let from = (0..2).map(|p| meridian_log::Position::start(topic.clone(), p)).collect();
        let mut reader = self.log.reader(from).await.unwrap();
        let records = reader.catch_up_batch(1_000, std::time::Duration::from_millis(50)).await.unwrap();
        records
            .iter()
            .filter_map(|r| match meridian_events::Envelope::decode(&r.value).unwrap().open_plain() {
                Ok(meridian_events::Payload::PhiAccessed(a)) => Some(a),
                _ => None,
            })
            .collect()
    }
}

async fn region(max_results: u32) -> Region {
    let dir = tempfile::tempdir().unwrap();
    let mut platform =
        Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap();
    platform.regions.get_mut("us-east").unwrap().dicomweb.max_results = max_results;
    let index = Arc::new(StudyIndex::open(&dir.path().join("index.redb")).unwrap());
    for i in 0..STUDIES {
        index.record(&received(i), None).unwrap();
    }
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
    let audit = meridian_log::TopicName::new("us-east", meridian_events::DataClass::Operational, "audit").unwrap();
    log.ensure_topic(&TopicSpec::new(audit, 2)).await.unwrap();
    let assignments = Arc::new(Fixed {
        reader: "dr-priya-nair".into(),
        studies: [3u128, 17].iter().map(|i| Uuid::from_u128(0x5000 + i)).collect(),
        asked: AtomicUsize::new(0),
    });
    let blobs = Arc::new(LocalBlobs::new(dir.path().join("objects")));
    let web = DicomWeb::new(
        "us-east",
        Arc::new(platform),
        index,
        blobs,
        log.clone(),
        assignments.clone() as Arc<dyn Assignments>,
    )
    .unwrap();
    Region { _dir: dir, router: Arc::new(web).router(), assignments, log }
}

fn principal(kind: PrincipalKind) -> Principal {
    let reader = kind == PrincipalKind::Group;
    Principal {
        subject: if reader { "dr-nair".into() } else { "acme-pacs".into() },
        kind,
        tenant: (!reader).then(|| "acme".into()),
        facility: (!reader).then(|| "acme-general".into()),
        group: reader.then(|| "lotus-teleradiology".into()),
        reader: reader.then(|| "dr-priya-nair".into()),
        roles: vec![if reader { "reader".into() } else { "facility".into() }],
        trail: Default::default(),
    }
}

/// Status, Warning header and the Study Instance UIDs of the results.
async fn search(region: &Region, who: &Principal, query: &str) -> (StatusCode, Option<String>, Vec<String>) {
    let request =
        Request::builder().uri(format!("/studies{query}")).extension(who.clone()).body(Body::empty()).unwrap();
    let response = region.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let warning = response.headers().get("warning").map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let found: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    let uids = found.iter().map(|s| s["0020000D"]["Value"][0].as_str().unwrap_or_default().to_owned()).collect();
    (status, warning, uids)
}

#[tokio::test]
async fn a_search_stops_at_the_regions_maximum_says_so_and_pages_stably() {
    let region = region(10).await;
    let facility = principal(PrincipalKind::Tenant);
    let (status, warning, first) = search(&region, &facility, "").await;
    assert_eq!((status, first.len()), (StatusCode::OK, 10));
    let warning = warning.expect("a cut result says so");
    assert!(warning.starts_with("299 ") && warning.ends_with("\"There are additional results that can be requested\""));
    let (_, _, second) = search(&region, &facility, "?offset=10").await;
    let (_, warning, third) = search(&region, &facility, "?offset=20").await;
    assert_eq!(warning, None, "the last page is whole");
    let all: Vec<String> = first.iter().chain(&second).chain(&third).cloned().collect();
    assert_eq!(all, (0..STUDIES).map(study_uid).collect::<Vec<_>>(), "pages in a stable order, none twice");
    // A client's own smaller limit is its paging: no warning.
    let (_, warning, five) = search(&region, &facility, "?limit=5&offset=3").await;
    assert_eq!((warning, five), (None, (3..8).map(study_uid).collect::<Vec<_>>()));
    // A limit above the maximum is capped, and says so.
    let (_, warning, capped) = search(&region, &facility, "?limit=500").await;
    assert_eq!((capped.len(), warning.is_some()), (10, true));
}

#[tokio::test]
async fn searches_by_patient_accession_date_and_uid_find_exactly_their_studies() {
    let region = region(1_000).await;
    let facility = principal(PrincipalKind::Tenant);
    let (_, _, p3) = search(&region, &facility, "?PatientID=P3").await;
    assert_eq!(p3, [3u128, 13, 23].map(study_uid));
    let (_, _, none) = search(&region, &facility, "?PatientID=P").await;
    assert!(none.is_empty(), "an exact Patient ID is not a prefix");
    let (_, _, dates) = search(&region, &facility, "?StudyDate=20260102-20260103").await;
    let expected: Vec<String> = (0..STUDIES).filter(|i| matches!(i % 5, 1 | 2)).map(study_uid).collect();
    let mut sorted = dates.clone();
    sorted.sort();
    assert_eq!(sorted, expected);
    let (_, _, open) = search(&region, &facility, "?StudyDate=20260105-").await;
    assert_eq!(open.len(), 6);
    let (_, _, both) = search(&region, &facility, &format!("?StudyInstanceUID={}&PatientID=P4", study_uid(4))).await;
    assert_eq!(both, [study_uid(4)]);
    let (_, _, mismatch) =
        search(&region, &facility, &format!("?StudyInstanceUID={}&PatientID=P5", study_uid(4))).await;
    assert!(mismatch.is_empty(), "every filter still holds on a seek's candidates");
}

#[tokio::test]
async fn a_reader_sees_the_studies_assigned_to_them_and_routing_is_asked_once() {
    let region = region(1_000).await;
    let reader = principal(PrincipalKind::Group);
    let (status, _, seen) = search(&region, &reader, "").await;
    assert_eq!((status, seen), (StatusCode::OK, vec![study_uid(3), study_uid(17)]));
    assert_eq!(region.assignments.asked.load(Ordering::Relaxed), 1, "one question to routing per search");
    let (_, _, filtered) = search(&region, &reader, "?PatientID=P7").await;
    assert_eq!(filtered, [study_uid(17)]);
    // The accesses are recorded where the reader is: Lotus reads from
    // in-south, through us-east's DICOMweb; the facility calls from home.
    let accessed = region.accessed().await;
    assert!(!accessed.is_empty());
    assert!(accessed.iter().all(|a| a.principal == "dr-nair" && a.from_region == "in-south"), "{accessed:?}");
    search(&region, &principal(PrincipalKind::Tenant), "?PatientID=P7").await;
    let by_facility: Vec<_> = region.accessed().await.into_iter().filter(|a| a.principal == "acme-pacs").collect();
    assert!(!by_facility.is_empty() && by_facility.iter().all(|a| a.from_region == "us-east"), "{by_facility:?}");
}
