//! Studies in over DIMSE with real peers: dcmtk makes the files and sends
//! them with `storescu` to a region's acceptor backed by ingest; `dcmdump`
//! reads back what was stored.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use meridian_config::Platform;
use meridian_events::payload::Payload;
use meridian_events::{DataClass, KeyStore, TenantSecret, UnixMicros};
use meridian_ingest::app::{Ingest, IngestOptions, Secrets};
use meridian_integration_tests::dicom::{CtInstance, storescu, write_ct};
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::{EventLog, Position, TopicName, TopicSpec};
use meridian_storage::blobs::{Blobs, LocalBlobs};
use meridian_storage::index::StudyIndex;
use meridian_storage::phi::PhiWriter;
use tokio::net::TcpListener;

const STUDY: &str = "1.2.826.0.1.3680043.10.543.7";

pub(crate) fn ct<'a>(series: &'a str, sop: &'a str, pixels: [u16; 4]) -> CtInstance<'a> {
    CtInstance { study_uid: STUDY, series_uid: series, sop_uid: sop, patient_id: "MRN-0001", priority: "STAT", pixels }
}

pub(crate) fn platform() -> Arc<Platform> {
    Arc::new(Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev")).unwrap())
}

async fn read_all(log: &EmbeddedLog, topic: &TopicName) -> Vec<meridian_events::Envelope> {
    let mut reader = log.reader((0..2).map(|p| Position::start(topic.clone(), p)).collect()).await.unwrap();
    let records = reader.next_batch(1_000, Duration::from_millis(200)).await.unwrap();
    records.iter().map(|r| r.envelope().unwrap()).collect()
}

/// The InstanceRejected events of the region's operational ingest topic.
async fn rejections(log: &EmbeddedLog, ops_topic: &TopicName) -> Vec<meridian_proto::events::v1::InstanceRejected> {
    let events = read_all(log, ops_topic).await;
    events
        .iter()
        .filter_map(|e| match e.open_plain() {
            Ok(Payload::InstanceRejected(r)) => Some(r),
            _ => None,
        })
        .collect()
}

/// A region's DICOM acceptor backed by ingest, on an embedded log.
pub(crate) struct Scp {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) log: Arc<EmbeddedLog>,
    pub(crate) keys: Arc<dyn KeyStore>,
    pub(crate) blobs: Arc<dyn Blobs>,
    pub(crate) ingest: Arc<Ingest>,
    pub(crate) index: Arc<StudyIndex>,
    pub(crate) port: u16,
    pub(crate) platform: Arc<Platform>,
    pub(crate) phi_topic: TopicName,
    pub(crate) ops_topic: TopicName,
}

/// Ingest for us-east over `blobs`, replaying `log` (acme's id secret).
async fn open_ingest(
    blobs: Arc<dyn Blobs>,
    log: Arc<EmbeddedLog>,
    keys: Arc<dyn KeyStore>,
    index: Arc<StudyIndex>,
) -> Ingest {
    open_ingest_with(blobs, log, keys, index, meridian_projection::run::Snapshotter::none()).await
}

/// The same, continuing from (and writing) `snapshots`.
pub(crate) async fn open_ingest_with(
    blobs: Arc<dyn Blobs>,
    log: Arc<EmbeddedLog>,
    keys: Arc<dyn KeyStore>,
    index: Arc<StudyIndex>,
    snapshots: meridian_projection::run::Snapshotter,
) -> Ingest {
    let phi = PhiWriter::new("us-east", platform(), blobs, log.clone());
    let secrets: Secrets = [("acme".to_string(), TenantSecret::new(vec![3u8; 32]).unwrap())].into();
    let options = IngestOptions { secrets, failpoints: Default::default(), snapshots, replicas: None };
    Ingest::open("us-east", platform(), phi, index, log, keys, Duration::from_millis(50), options).await.unwrap()
}

async fn scp() -> Scp {
    scp_with(meridian_dimse::Limits::default()).await
}

async fn scp_with(limits: meridian_dimse::Limits) -> Scp {
    scp_on(limits, None).await
}

/// A region's log, with its ingest topics, in a fresh folder.
pub(crate) struct Folder {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) log: Arc<EmbeddedLog>,
    pub(crate) keys: Arc<dyn KeyStore>,
    pub(crate) phi_topic: TopicName,
    pub(crate) ops_topic: TopicName,
}

pub(crate) async fn folder() -> Folder {
    let dir = tempfile::TempDir::new().unwrap();
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
    let topic = |class, stream| TopicName::new("us-east", class, stream).unwrap();
    let (phi_topic, ops_topic) = (topic(DataClass::Phi, "ingest"), topic(DataClass::Operational, "ingest"));
    for t in [&phi_topic, &ops_topic, &topic(DataClass::Operational, "storage")] {
        log.ensure_topic(&TopicSpec::new(t.clone(), 2)).await.unwrap();
    }
    let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
    Folder { dir, log, keys, phi_topic, ops_topic }
}

/// The acceptor over `blobs`, or local files in its folder.
pub(crate) async fn scp_on(limits: meridian_dimse::Limits, blobs: Option<Arc<dyn Blobs>>) -> Scp {
    scp_in(folder().await, limits, blobs, meridian_projection::run::Snapshotter::none()).await
}

/// The acceptor over a folder whose log may already hold events, its
/// studies projection continuing from `snapshots`.
pub(crate) async fn scp_in(
    folder: Folder,
    limits: meridian_dimse::Limits,
    blobs: Option<Arc<dyn Blobs>>,
    snapshots: meridian_projection::run::Snapshotter,
) -> Scp {
    let Folder { dir, log, keys, phi_topic, ops_topic } = folder;
    let platform = platform();
    let blobs: Arc<dyn Blobs> = blobs.unwrap_or_else(|| Arc::new(LocalBlobs::new(dir.path().join("objects"))));
    let index = Arc::new(StudyIndex::open(&dir.path().join("index.redb")).unwrap());
    let ingest = Arc::new(open_ingest_with(blobs.clone(), log.clone(), keys.clone(), index.clone(), snapshots).await);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (scp_ingest, scp_platform) = (ingest.clone(), platform.clone());
    tokio::spawn(async move {
        loop {
            let (socket, peer) = listener.accept().await.unwrap();
            let (ingest, platform, limits) = (scp_ingest.clone(), scp_platform.clone(), limits.clone());
            let authenticator = Arc::new(meridian_auth::Authenticator::new("meridian-dev", "meridian", &[]).unwrap());
            tokio::spawn(async move {
                let store: &dyn meridian_dimse::StoreService = ingest.as_ref();
                let _ = meridian_dimse::accept(
                    socket,
                    peer,
                    "us-east",
                    platform,
                    authenticator,
                    &limits,
                    Some(store),
                    None,
                )
                .await;
            });
        }
    });

    Scp { dir, log, keys, blobs, ingest, index, port, platform, phi_topic, ops_topic }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storescu_sends_a_study_that_is_stored_recorded_and_completed() {
    let Scp { dir, log, keys, blobs, ingest, index, port, phi_topic, ops_topic, .. } = scp().await;
    // One study, two series, three instances, ordered STAT.
    let files = tempfile::TempDir::new().unwrap();
    let study = STUDY;
    let s1 = format!("{study}.1");
    let s2 = format!("{study}.2");
    let sent = vec![
        write_ct(files.path(), &ct(&s1, &format!("{s1}.1"), [1, 2, 3, 4])),
        write_ct(files.path(), &ct(&s1, &format!("{s1}.2"), [5, 6, 7, 8])),
        write_ct(files.path(), &ct(&s2, &format!("{s2}.1"), [9, 9, 9, 9])),
    ];
    let (ok, said) = storescu(port, "ACME_CT1", "MERIDIAN_ACME", &sent);
    assert!(ok, "{said}");

    // Stored as Part-10 files that a real peer reads back, named by opaque ids.
    let keys_stored = blobs.list("phi/acme/").await.unwrap();
    assert_eq!(keys_stored.len(), 3);
    assert!(keys_stored.iter().all(|k| !k.contains(study)), "no DICOM UID in an object key");
    let first = dir.path().join("objects").join(&keys_stored[0]);
    let dump = Command::new("dcmdump").arg(&first).output().unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("MediaStorageSOPInstanceUID") && dump.contains(study), "{dump}");
    assert!(dump.contains("[ACME_CT1]"), "the sender's AE title is in the file meta: {dump}");

    // Acknowledged means indexed: QIDO sees the study at once.
    let indexed = index.study("acme", study).unwrap().expect("the study is indexed");
    assert_eq!((indexed.series, indexed.instances), (2, 3));
    let instances = index.instances("acme", study, None).unwrap();
    assert_eq!(instances.len(), 3);
    assert!(instances.iter().all(|(_, _, e)| e.sha256.len() == 64 && e.object_key.ends_with(".dcm")));

    // The log: three sealed InstanceReceived, one StudyStarted; no PHI in clear.
    let received = read_all(&log, &phi_topic).await;
    assert_eq!(received.len(), 3);
    for e in &received {
        let raw = format!("{:?}", e.body);
        assert!(!raw.contains("MRN-0001") && !raw.contains(study), "a sealed payload shows no PHI");
        let Ok(Payload::InstanceReceived(r)) = e.open(keys.as_ref()) else { panic!("{e:?}") };
        assert_eq!(
            (r.modality.as_str(), r.requested_priority.as_str(), r.facility.as_str()),
            ("CT", "stat", "acme-general")
        );
        assert!(!r.patient_key.is_empty());
    }
    let ops = read_all(&log, &ops_topic).await;
    let started: Vec<_> = ops
        .iter()
        .filter_map(|e| match e.open_plain() {
            Ok(Payload::StudyStarted(s)) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(started.len(), 1, "one StudyStarted for the study");
    assert_eq!((started[0].origin_jurisdiction.as_str(), started[0].requested_priority.as_str()), ("US-NY", "stat"));
    let opaque = started[0].study_id.clone();
    assert!(!format!("{ops:?}").contains(study), "operational events carry opaque ids only");

    // The same files again: nothing new is stored or said.
    let (ok, said) = storescu(port, "ACME_CT1", "MERIDIAN_ACME", &sent);
    assert!(ok, "{said}");
    assert_eq!(blobs.list("phi/acme/").await.unwrap().len(), 3);
    assert_eq!(read_all(&log, &phi_topic).await.len(), 3);

    // Quiet for the contract's period (acme: 2 minutes): completed, once.
    let last = ingest.read(|s| s.open.values().map(|st| st.last_at).max().unwrap()).await;
    assert_eq!(ingest.complete_quiet(UnixMicros(last.0 + 60_000_000)).await.unwrap(), 0, "not quiet yet");
    assert_eq!(ingest.complete_quiet(UnixMicros(last.0 + 120_000_000)).await.unwrap(), 1);
    assert_eq!(ingest.complete_quiet(UnixMicros(last.0 + 240_000_000)).await.unwrap(), 0);
    let completed: Vec<_> = read_all(&log, &ops_topic)
        .await
        .iter()
        .filter_map(|e| match e.open_plain() {
            Ok(Payload::StudyCompleted(c)) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(completed.len(), 1);
    let c = &completed[0];
    assert_eq!((c.study_id.as_str(), c.series_count, c.instance_count), (opaque.as_str(), 2, 3));
    assert_eq!((c.modality.as_str(), c.body_part.as_str(), c.origin_jurisdiction.as_str()), ("CT", "HEAD", "US-NY"));

    // A changed instance after completion: a new version beside the old, and StudyUpdated.
    let changed = write_ct(files.path(), &ct(&s2, &format!("{s2}.1"), [7, 7, 7, 7]));
    let (ok, said) = storescu(port, "ACME_CT1", "MERIDIAN_ACME", &[changed]);
    assert!(ok, "{said}");
    assert_eq!(blobs.list("phi/acme/").await.unwrap().len(), 4, "both versions are kept");
    let versions: Vec<_> = read_all(&log, &phi_topic)
        .await
        .iter()
        .filter_map(|e| match e.open(keys.as_ref()) {
            Ok(Payload::InstanceReceived(r)) => Some(r.replaces_earlier_version),
            _ => None,
        })
        .collect();
    assert_eq!(versions, [false, false, false, true]);
    let updated = read_all(&log, &ops_topic).await.iter().filter(|e| e.payload_type.ends_with("StudyUpdated")).count();
    assert_eq!(updated, 1);

    // A restart rebuilds the same studies from the log.
    let before = ingest.read(|s| s.clone()).await;
    // A fresh index catches up from the log and the objects it names.
    let fresh = Arc::new(StudyIndex::open(&dir.path().join("index-2.redb")).unwrap());
    let reopened = open_ingest(blobs, log.clone(), keys, fresh.clone()).await;
    assert_eq!(reopened.read(|s| s.clone()).await, before);
    let studies = |i: &StudyIndex| i.studies("acme").unwrap();
    assert_eq!(studies(&fresh), studies(&index));
    let all = |i: &StudyIndex| {
        studies(i).iter().flat_map(|(uid, _)| i.instances("acme", uid, None).unwrap()).collect::<Vec<_>>()
    };
    assert_eq!(all(&fresh), all(&index), "the caught-up index holds the latest version of each instance");
}

/// Sends each (command SOP Instance UID, data set) with C-STORE over one
/// association made with dicom-ul, as raw PDUs; returns each status.
fn send_raw(port: u16, instances: Vec<(String, Vec<u8>)>) -> Vec<u16> {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    use dicom_object::InMemDicomObject;
    use dicom_transfer_syntax_registry::entries::{EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN};
    use dicom_ul::pdu::{PDataValue, PDataValueType};
    use dicom_ul::{ClientAssociationOptions, Pdu};
    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";
    let mut a = ClientAssociationOptions::new()
        .calling_ae_title("ACME_CT1")
        .called_ae_title("MERIDIAN_ACME")
        .with_presentation_context(CT, vec![EXPLICIT_VR_LITTLE_ENDIAN.uid()])
        .establish(("127.0.0.1", port))
        .unwrap();
    let context = a.presentation_contexts()[0].id;
    let mut statuses = Vec::new();
    for (n, (sop, data_set)) in instances.into_iter().enumerate() {
        let command = InMemDicomObject::command_from_element_iter([
            DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(CT)),
            DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(0x0001u16)),
            DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(n as u16 + 1)),
            DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
            DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(0u16)),
            DataElement::new(tags::AFFECTED_SOP_INSTANCE_UID, VR::UI, PrimitiveValue::from(sop.as_str())),
        ]);
        let mut bytes = Vec::new();
        command.write_dataset_with_ts(&mut bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        let pdv = |value_type, data| PDataValue { presentation_context_id: context, value_type, is_last: true, data };
        a.send(&Pdu::PData { data: vec![pdv(PDataValueType::Command, bytes)] }).unwrap();
        a.send(&Pdu::PData { data: vec![pdv(PDataValueType::Data, data_set)] }).unwrap();
        let Pdu::PData { data } = a.receive().unwrap() else { panic!("no response") };
        let response =
            InMemDicomObject::read_dataset_with_ts(&data[0].data[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        statuses.push(response.element(tags::STATUS).unwrap().to_int::<u16>().unwrap());
    }
    a.release().unwrap();
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_instance_is_refused_with_its_status_and_the_others_are_stored() {
    use dicom_dictionary_std::tags;
    use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
    let Scp { log, blobs, port, ops_topic, ingest, .. } = scp().await;
    let files = tempfile::TempDir::new().unwrap();
    let s1 = format!("{STUDY}.1");
    let data_set = |sop: &str, drop: Option<dicom_core::Tag>| {
        let path = write_ct(files.path(), &ct(&s1, sop, [1, 2, 3, 4]));
        let mut obj = dicom_object::open_file(&path).unwrap().into_inner();
        if let Some(tag) = drop {
            obj.remove_element(tag);
        }
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &EXPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        out
    };
    let (a, b, c) = (format!("{s1}.1"), format!("{s1}.2"), format!("{s1}.3"));
    let instances = vec![
        (a.clone(), data_set(&a, None)),
        (b.clone(), data_set(&b, Some(tags::STUDY_INSTANCE_UID))),
        (c.clone(), data_set(&c, None)),
        // The command names one instance, the data set another.
        (format!("{s1}.9"), data_set(&format!("{s1}.4"), None)),
    ];
    let statuses = tokio::task::spawn_blocking(move || send_raw(port, instances)).await.unwrap();
    assert_eq!(statuses, [0x0000, 0xA900, 0x0000, 0xA900]);
    assert_eq!(blobs.list("phi/acme/").await.unwrap().len(), 2, "the good instances of the association are stored");

    let rejected = rejections(&log, &ops_topic).await;
    // Different aggregates, different partitions: no order between them.
    let by_code = |code: &str| rejected.iter().find(|r| r.reason_code == code).unwrap();
    assert_eq!(rejected.len(), 2);
    assert!(rejected.iter().all(|r| r.dimse_status == 0xA900 && r.facility == "acme-general"));
    assert!(by_code("missing_study_instance_uid").study_id.is_empty(), "a data set without a study names none");
    let mismatch = &by_code("sop_instance_mismatch").study_id;
    assert!(!mismatch.is_empty() && !mismatch.contains(STUDY), "opaque study id only");
    // The tenant can list them (ListRejections reads these).
    let kept = ingest.read(|s| s.rejections.get("acme").map(|r| r.len())).await;
    assert_eq!(kept, Some(2));
}

/// The data set of a Part-10 file: what follows its File Meta group.
fn data_set_of(file: &[u8]) -> &[u8] {
    // (0002,0000) UL group length, explicit VR, right after "DICM".
    let group_length = u32::from_le_bytes([file[140], file[141], file[142], file[143]]) as usize;
    &file[144 + group_length..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_and_other_transfer_syntaxes_are_stored_exactly_as_received() {
    let Scp { dir, blobs, port, .. } = scp().await;
    let files = tempfile::TempDir::new().unwrap();
    let s1 = format!("{STUDY}.3");
    // dcmtk converts each to a syntax; each needs its own instance.
    let conversions: [(&str, &[&str], &str); 5] = [
        ("dcmcrle", &[], "1.2.840.10008.1.2.5"),
        ("dcmcjpeg", &["+e1"], "1.2.840.10008.1.2.4.70"),
        ("dcmcjpls", &[], "1.2.840.10008.1.2.4.80"),
        ("dcmconv", &["+tb"], "1.2.840.10008.1.2.2"),
        ("dcmconv", &["+td"], "1.2.840.10008.1.2.1.99"),
    ];
    let mut sent = Vec::new();
    for (i, (tool, args, ts)) in conversions.iter().enumerate() {
        let plain = write_ct(files.path(), &ct(&s1, &format!("{s1}.{}", i + 1), [1, 2, 3, i as u16]));
        let converted = files.path().join(format!("{i}.{tool}.dcm"));
        let out = Command::new(tool).args(*args).arg(&plain).arg(&converted).output().unwrap();
        assert!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        sent.push((converted, *ts));
    }
    // dcmsend proposes each file's own transfer syntax, all in one association.
    let out = Command::new("dcmsend")
        .args(["-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &port.to_string()])
        .args(sent.iter().map(|(f, _)| f))
        .env("TCP_NODELAY", "1")
        .output()
        .expect("dcmsend (dcmtk) is installed: scripts/test installs it");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");

    let stored = blobs.list("phi/acme/").await.unwrap();
    assert_eq!(stored.len(), sent.len(), "every one is stored: {said}");
    // The encapsulated (compressed) ones travel as they are: stored byte for
    // byte, in their own syntax. For big endian and deflated files dcmsend
    // proposes the uncompressed family and the association settles on
    // explicit VR little endian, which is then what is received and stored.
    for (file, ts) in
        sent.iter().filter(|(_, ts)| ts.starts_with("1.2.840.10008.1.2.4") || *ts == "1.2.840.10008.1.2.5")
    {
        let original = std::fs::read(file).unwrap();
        let body = data_set_of(&original);
        let object = stored
            .iter()
            .map(|k| std::fs::read(dir.path().join("objects").join(k)).unwrap())
            .find(|o| data_set_of(o) == body)
            .unwrap_or_else(|| panic!("no stored object carries {ts}'s data set byte for byte"));
        let meta = dicom_object::OpenFileOptions::new()
            .read_until(dicom_dictionary_std::tags::PIXEL_DATA)
            .from_reader(&object[128..])
            .unwrap();
        assert_eq!(meta.meta().transfer_syntax().trim_end_matches('\0'), *ts);
    }

    // A peer that proposes deflated first gets it, and it is read and stored as such.
    let deflated = &sent[4].0;
    let out = Command::new("storescu")
        .args(["-xd", "-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &port.to_string()])
        .arg(deflated)
        .env("TCP_NODELAY", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let body = data_set_of(&std::fs::read(deflated).unwrap()).to_vec();
    let stored = blobs.list("phi/acme/").await.unwrap();
    let found = stored.iter().any(|k| data_set_of(&std::fs::read(dir.path().join("objects").join(k)).unwrap()) == body);
    assert!(found, "the deflated data set is stored as received");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_association_over_the_limit_is_refused_at_once_as_transient() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (socket, peer) = listener.accept().await.unwrap();
        meridian_dimse::refuse_busy(socket, peer).await.unwrap();
    });
    let out = tokio::task::spawn_blocking(move || {
        Command::new("echoscu")
            .args(["-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &port.to_string()])
            .env("TCP_NODELAY", "1")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(said.contains("Rejected Transient") && said.contains("Local Limit Exceeded"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_no_event_names_are_swept_after_the_grace_period_and_no_others() {
    use meridian_events::{InstanceId, SeriesId, StudyId};
    use meridian_storage::phi::PhiObject;
    let Scp { blobs, port, ingest, platform, log, .. } = scp().await;
    // A stored instance: named by its InstanceReceived.
    let files = tempfile::TempDir::new().unwrap();
    let s1 = format!("{STUDY}.5");
    let (ok, said) = storescu(
        port,
        "ACME_CT1",
        "MERIDIAN_ACME",
        &[write_ct(files.path(), &ct(&s1, &format!("{s1}.1"), [1, 1, 1, 1]))],
    );
    assert!(ok, "{said}");
    // An object whose event never landed (as after a crash between the two).
    let phi = PhiWriter::new("us-east", platform, blobs.clone(), log);
    let secret = TenantSecret::new(vec![3u8; 32]).unwrap();
    let orphan = PhiObject {
        tenant: "acme".into(),
        study: StudyId::derive(&secret, "1.2.3.9"),
        series: SeriesId::derive(&secret, "1.2.3.9.1"),
        instance: InstanceId::derive(&secret, "1.2.3.9.1.1"),
        bytes: b"half a story".to_vec(),
        held: None,
    };
    let t0 = UnixMicros(1_795_000_000_000_000);
    let orphan_key = phi.put(orphan, t0).await.unwrap().key;
    assert_eq!(blobs.list("phi/").await.unwrap().len(), 2);

    let grace = Duration::from_secs(3_600);
    assert_eq!(ingest.sweep(t0, grace).await.unwrap(), 0, "the first sight only marks it");
    assert_eq!(ingest.sweep(UnixMicros(t0.0 + 1_800_000_000), grace).await.unwrap(), 0, "within the grace period");
    assert_eq!(ingest.sweep(UnixMicros(t0.0 + 3_600_000_000), grace).await.unwrap(), 1);
    let left = blobs.list("phi/").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_ne!(left[0], orphan_key, "the named object stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_over_the_size_limit_is_refused_and_the_association_goes_on() {
    use dicom_core::{DataElement, Tag, VR};
    use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
    let limits = meridian_dimse::Limits { max_instance_bytes: 2_000, ..Default::default() };
    let Scp { log, blobs, port, ops_topic, .. } = scp_with(limits).await;
    let files = tempfile::TempDir::new().unwrap();
    let s1 = format!("{STUDY}.6");
    let data_set = |sop: &str, padding: usize| {
        let path = write_ct(files.path(), &ct(&s1, sop, [1, 2, 3, 4]));
        let mut obj = dicom_object::open_file(&path).unwrap().into_inner();
        if padding > 0 {
            // A private element that makes the data set large.
            obj.put(DataElement::new(
                Tag(0x0011, 0x1010),
                VR::OB,
                dicom_core::PrimitiveValue::from(vec![0u8; padding]),
            ));
        }
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &EXPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        out
    };
    let (a, b, c) = (format!("{s1}.1"), format!("{s1}.2"), format!("{s1}.3"));
    let instances = vec![(a.clone(), data_set(&a, 0)), (b.clone(), data_set(&b, 8_000)), (c.clone(), data_set(&c, 0))];
    let statuses = tokio::task::spawn_blocking(move || send_raw(port, instances)).await.unwrap();
    assert_eq!(statuses, [0x0000, 0xA700, 0x0000]);
    assert_eq!(blobs.list("phi/acme/").await.unwrap().len(), 2, "the others are stored");
    let rejected = rejections(&log, &ops_topic).await;
    assert_eq!(rejected.len(), 1);
    assert_eq!((rejected[0].reason_code.as_str(), rejected[0].dimse_status), ("instance_too_large", 0xA700));
}

/// A data set whose element declares 4 GiB with 16 bytes behind it: dicom-rs
/// would make room for the 4 GiB before failing. It is refused first, with
/// 0xC000 and a reason naming the element; the association goes on and the
/// instances around it are stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_declaring_more_bytes_than_it_sent_is_refused_before_it_is_parsed() {
    use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;
    let Scp { log, blobs, port, ops_topic, .. } = scp().await;
    let files = tempfile::TempDir::new().unwrap();
    let s1 = format!("{STUDY}.8");
    let data_set = |sop: &str| {
        let path = write_ct(files.path(), &ct(&s1, sop, [1, 2, 3, 4]));
        let obj = dicom_object::open_file(&path).unwrap().into_inner();
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &EXPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        out
    };
    let (a, b, c) = (format!("{s1}.1"), format!("{s1}.2"), format!("{s1}.3"));
    let mut bomb = data_set(&b);
    // (7FE1,0010) OB, after every other element: declared 0xFFFF_FFF0 bytes.
    bomb.extend_from_slice(&[0xE1, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF]);
    bomb.extend_from_slice(&[0x42; 16]);
    let instances = vec![(a.clone(), data_set(&a)), (b.clone(), bomb), (c.clone(), data_set(&c))];
    let statuses = tokio::task::spawn_blocking(move || send_raw(port, instances)).await.unwrap();
    assert_eq!(statuses, [0x0000, 0xC000, 0x0000]);
    assert_eq!(blobs.list("phi/acme/").await.unwrap().len(), 2, "the others are stored");
    let rejected = rejections(&log, &ops_topic).await;
    assert_eq!(rejected.len(), 1);
    assert_eq!((rejected[0].reason_code.as_str(), rejected[0].dimse_status), ("length_beyond_data_set", 0xC000));
    assert!(rejected[0].reason.contains("element (7FE1,0010)") && rejected[0].reason.contains("4294967280 bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_associations_share_group_commits_and_keep_one_studys_history_in_order() {
    let Scp { log, keys, index, port, ingest, blobs, phi_topic, ops_topic, .. } = scp().await;
    // Four associations send instances of one study at once, so their
    // arrivals meet in the same group commits.
    let files = tempfile::TempDir::new().unwrap();
    let mut sends = Vec::new();
    for a in 0..4u16 {
        let series = format!("{STUDY}.40.{}", a + 1);
        let batch: Vec<_> = (0..10u16)
            .map(|i| write_ct(files.path(), &ct(&series, &format!("{series}.{}", i + 1), [a, i, 1, 1])))
            .collect();
        sends.push(std::thread::spawn(move || storescu(port, "ACME_CT1", "MERIDIAN_ACME", &batch)));
    }
    for send in sends {
        let (ok, said) = send.join().unwrap();
        assert!(ok, "{said}");
    }
    // Every instance once, its records numbered 1..=40 in log order per
    // partition, and one StudyStarted.
    let received: Vec<_> = read_all(&log, &phi_topic).await;
    assert_eq!(received.len(), 40);
    let mut versions: Vec<u64> = received.iter().map(|e| e.meta.aggregate_version).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "one study's records are in version order: {versions:?}");
    versions.dedup();
    assert_eq!(versions, (1..=40).collect::<Vec<u64>>());
    let ops = read_all(&log, &ops_topic).await;
    assert_eq!(ops.iter().filter(|e| e.payload_type.ends_with("StudyStarted")).count(), 1);
    let entry = index.study("acme", STUDY).unwrap().unwrap();
    assert_eq!((entry.series, entry.instances), (4, 40));
    // The state built in groups is the state a replay builds.
    let dir = tempfile::TempDir::new().unwrap();
    let index = Arc::new(StudyIndex::open(&dir.path().join("index.redb")).unwrap());
    let replayed = open_ingest(blobs, log.clone(), keys, index).await;
    assert_eq!(replayed.read(|s| s.clone()).await, ingest.read(|s| s.clone()).await);
}
