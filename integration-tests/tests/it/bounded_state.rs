//! Bounded state: ingest's studies projection holds open studies in full
//! and completed ones compact, completes from the open ones alone however
//! many have completed before, and restarts from its snapshot plus the tail.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use meridian_events::{Envelope, EventId, EventMeta, KeyStore, StudyId, UnixMicros};
use meridian_integration_tests::dicom::{storescu, write_ct};
use meridian_log::skips::Skips;
use meridian_log::{EventLog, Outgoing};
use meridian_projection::run::Snapshotter;
use meridian_projection::snapshot::FileSnapshots;
use meridian_proto::events::v1 as pb;
use uuid::Uuid;

use crate::ingest_dimse::{Folder, Scp, ct, folder, open_ingest_with, scp_in};

const T0: UnixMicros = UnixMicros(1_795_000_000_000_000);

fn meta(study: Uuid, aggregate_type: &str, version: u64, at: UnixMicros) -> EventMeta {
    let meta = meridian_log::contract::meta(study, version, EventId::new_at(at));
    EventMeta { aggregate_type: aggregate_type.into(), home_region: "us-east".into(), occurred_at: at, ..meta }
}

/// Appends `studies` completed studies of `instances` instances each, as
/// ingest writes them (sealed InstanceReceived, StudyStarted,
/// StudyCompleted), numbered from `first`.
async fn completed_history(folder: &Folder, first: u32, studies: u32, instances: u32) {
    let mut batch = Vec::new();
    for s in first..first + studies {
        let study = StudyId(Uuid::from_u128(0xA000_0000_0000 + u128::from(s)));
        let id = study.0;
        let series = Uuid::from_u128(0xB000_0000_0000 + u128::from(s)).to_string();
        for i in 0..instances {
            let received = pb::InstanceReceived {
                study_id: id.to_string(),
                series_id: series.clone(),
                instance_id: Uuid::from_u128((u128::from(s) << 32) + u128::from(i)).to_string(),
                study_instance_uid: format!("1.2.826.0.1.3680043.10.543.9.{s}"),
                object_key: format!("phi/acme/{id}/{series}/{i}.dcm"),
                sha256: format!("{:064x}", (u128::from(s) << 32) + u128::from(i)),
                facility: "acme-general".into(),
                modality: "CT".into(),
                ..Default::default()
            };
            let at = UnixMicros(T0.0 + i64::from(i));
            let sealed =
                Envelope::sealed(meta(id, "ingest.instances", u64::from(i) + 1, at), &received, study, &*folder.keys)
                    .unwrap();
            batch.push(Outgoing::new(folder.phi_topic.clone(), &sealed).unwrap());
        }
        let started =
            pb::StudyStarted { study_id: id.to_string(), facility: "acme-general".into(), ..Default::default() };
        let completed = pb::StudyCompleted {
            study_id: id.to_string(),
            series_count: 1,
            instance_count: instances,
            completed_at: Some(UnixMicros(T0.0 + 120_000_000).to_timestamp()),
            ..Default::default()
        };
        batch.push(
            Outgoing::new(
                folder.ops_topic.clone(),
                &Envelope::plain(meta(id, "ingest.study", 1, T0), &started).unwrap(),
            )
            .unwrap(),
        );
        let done = Envelope::plain(meta(id, "ingest.study", 2, T0), &completed).unwrap();
        batch.push(Outgoing::new(folder.ops_topic.clone(), &done).unwrap());
        if batch.len() >= 5_000 {
            folder.log.append(std::mem::take(&mut batch)).await.unwrap();
        }
    }
    folder.log.append(batch).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_completes_at_its_quiet_period_among_ten_thousand_completed_and_they_stay_compact() {
    const STUDIES: u32 = 10_000;
    let folder = folder().await;
    // 2,000 studies of five instances (each sealed under its own data key,
    // which is what makes history slow to write here) and 8,000 whose
    // instance records are older than the log's retention.
    completed_history(&folder, 0, 2_000, 5).await;
    completed_history(&folder, 2_000, STUDIES - 2_000, 0).await;
    let snapshot_dir = folder.dir.path().join("snapshots");
    let snapshots = || Snapshotter::new(FileSnapshots::new(&snapshot_dir), 10_000, Duration::from_secs(30));
    let Scp { ingest, port, log, keys, blobs, index, dir: _dir, .. } =
        scp_in(folder, meridian_dimse::Limits::default(), None, snapshots()).await;
    let (open, closed) = ingest.read(|s| (s.open.len(), s.closed.len())).await;
    assert_eq!((open, closed), (0, STUDIES as usize), "completed studies are closed, none is open");

    // A new study arrives among them.
    let files = tempfile::TempDir::new().unwrap();
    let series = "1.2.826.0.1.3680043.10.543.8.1";
    let sent: Vec<_> =
        (1..=2).map(|i| write_ct(files.path(), &ct(series, &format!("{series}.{i}"), [i, 1, 1, 1]))).collect();
    let (ok, said) = storescu(port, "ACME_CT1", "MERIDIAN_ACME", &sent);
    assert!(ok, "{said}");
    let last = ingest.read(|s| s.open.values().map(|st| st.last_at).max().unwrap()).await;
    let quiet = 120_000_000; // acme's contract: 2 minutes
    assert_eq!(ingest.complete_quiet(UnixMicros(last.0 + quiet - 1)).await.unwrap(), 0, "not quiet yet");
    assert_eq!(ingest.complete_quiet(UnixMicros(last.0 + quiet)).await.unwrap(), 1, "exactly the new study");
    let (open, closed) = ingest.read(|s| (s.open.len(), s.closed.len())).await;
    assert_eq!((open, closed), (0, STUDIES as usize + 1));

    // Completed studies keep no per-instance state: in the snapshot, a
    // completed study of five instances takes as little as one of none
    // (every hash and object key kept would be over a kilobyte each).
    ingest.snapshot(true).await.unwrap();
    let file = snapshot_dir.join("ingest.studies.snapshot.json");
    let snapshot: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let closed = snapshot["state"]["closed"].as_object().unwrap();
    let size = |s: u128| serde_json::to_vec(&closed[&Uuid::from_u128(0xA000_0000_0000 + s).to_string()]).unwrap().len();
    assert!(size(1) <= size(2_001) + 16, "five instances: {} bytes, none: {} bytes", size(1), size(2_001));
    let state = serde_json::to_vec(&snapshot["state"]).unwrap().len();
    let per_study = state / (STUDIES as usize + 1);
    assert!(per_study < 250, "{state} bytes of state: {per_study} per completed study");

    // Snapshot + tail equals a full replay: one more instance after the
    // snapshot (into the completed study: StudyUpdated), then both opens.
    let late = write_ct(files.path(), &ct(series, &format!("{series}.3"), [3, 1, 1, 1]));
    let (ok, said) = storescu(port, "ACME_CT1", "MERIDIAN_ACME", &[late]);
    assert!(ok, "{said}");
    let live = ingest.read(|s| s.clone()).await;
    let updated = live.closed.values().find(|c| c.instances == 3).expect("the completed study counts its new instance");
    assert_eq!((updated.series, updated.version), (1, 3));
    let resumed = open_ingest_with(blobs.clone(), log.clone(), keys.clone(), index.clone(), snapshots()).await;
    let replayed = open_ingest_with(blobs, log, keys, index, Snapshotter::none()).await;
    assert_eq!(resumed.read(|s| s.clone()).await, live);
    assert_eq!(replayed.read(|s| s.clone()).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_set_aside_and_the_studies_are_rebuilt_from_the_log() {
    let folder = folder().await;
    completed_history(&folder, 0, 20, 2).await;
    let snapshot_dir = folder.dir.path().join("snapshots");
    std::fs::create_dir_all(&snapshot_dir).unwrap();
    let file = snapshot_dir.join("ingest.studies.snapshot.json");
    std::fs::write(&file, b"{\"projection\":\"ingest.studies\",\"state\":{\"open\":").unwrap();
    let snapshots = Snapshotter::new(FileSnapshots::new(&snapshot_dir), 10_000, Duration::from_secs(30));
    let Scp { ingest, dir: _dir, .. } = scp_in(folder, meridian_dimse::Limits::default(), None, snapshots).await;
    assert_eq!(ingest.read(|s| s.closed.len()).await, 20, "rebuilt from the log, not empty");
    assert!(!file.exists());
    let aside = snapshot_dir.join("ingest.studies.snapshot.json.unreadable-0");
    let listed: Vec<_> = std::fs::read_dir(&snapshot_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(aside.exists(), "the unreadable file is kept aside for inspection: {listed:?}");
    // The next snapshot is written whole and reads back.
    ingest.snapshot(true).await.unwrap();
    let written: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(written["projection"], "ingest.studies");
}

/// Everything the study index serves for acme: studies, then each study's
/// series, instances and stored DICOM JSON.
/// A key store that fails its next `failures` reads, as a disk error would.
struct FailingKeys<'a> {
    inner: &'a dyn KeyStore,
    failures: AtomicU32,
}

impl KeyStore for FailingKeys<'_> {
    fn current_key(&self, study: StudyId) -> Result<meridian_events::DataKey, meridian_events::seal::Error> {
        self.inner.current_key(study)
    }

    fn key(
        &self,
        id: meridian_events::seal::DataKeyId,
    ) -> Result<meridian_events::KeyState, meridian_events::seal::Error> {
        if self.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(meridian_events::seal::Error::Store { operation: "read", reason: "key store down".into() });
        }
        self.inner.key(id)
    }

    fn shred(&self, study: StudyId) -> Result<usize, meridian_events::seal::Error> {
        self.inner.shred(study)
    }
}

fn served(index: &meridian_storage::index::StudyIndex) -> Vec<String> {
    let mut out = Vec::new();
    for (uid, study) in index.studies("acme").unwrap() {
        out.push(format!("{uid} {study:?}"));
        out.push(format!("{:?}", index.series("acme", &uid).unwrap()));
        out.push(format!("{:?}", index.instances("acme", &uid, None).unwrap()));
        let mut metadata = Vec::new();
        index.metadata_into("acme", &uid, None, None, &mut metadata).unwrap();
        out.push(String::from_utf8(metadata).unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_study_index_synced_then_caught_up_from_the_log_equals_the_live_one() {
    use meridian_storage::index::StudyIndex;
    let Scp { ingest: _ingest, port, log, keys, blobs, index, dir, phi_topic, .. } =
        scp_in(folder().await, meridian_dimse::Limits::default(), None, Snapshotter::none()).await;
    let files = tempfile::TempDir::new().unwrap();
    let send = |series: &str, n: u16, value: u16| {
        let sent: Vec<_> =
            (1..=n).map(|i| write_ct(files.path(), &ct(series, &format!("{series}.{i}"), [i, value, 1, 1]))).collect();
        let (ok, said) = storescu(port, "ACME_CT1", "MERIDIAN_ACME", &sent);
        assert!(ok, "{said}");
    };
    let (a, b) = ("1.2.826.0.1.3680043.10.543.7.61", "1.2.826.0.1.3680043.10.543.7.62");
    send(a, 4, 1);
    // The index's durable point: rows and positions synced together. A
    // crash now would leave exactly this file.
    index.sync().unwrap();
    let synced = dir.path().join("index-synced.redb");
    std::fs::copy(dir.path().join("index.redb"), &synced).unwrap();
    // The tail: a second series, and a new version of an instance of the first.
    send(b, 3, 2);
    send(a, 1, 9);
    let live = served(&index);
    assert!(live.iter().any(|l| l.contains(b)), "the tail is in the live index");

    let restarted = StudyIndex::open(&synced).unwrap();
    assert_ne!(served(&restarted), live, "the synced copy lacks the tail");
    let skips = Skips::new("storage.index");
    // The key store fails for a moment: the catch-up stops at that record
    // and leaves no hole; the next one reads it.
    let failing = FailingKeys { inner: &*keys, failures: AtomicU32::new(1) };
    let idle = Duration::from_millis(50);
    let err = restarted.catch_up(&*log, &failing, &*blobs, &phi_topic, idle, &skips).await.unwrap_err();
    assert!(err.to_string().contains("key store down"), "{err}");
    let read = restarted.catch_up(&*log, &failing, &*blobs, &phi_topic, idle, &skips).await.unwrap();
    assert_eq!(read, 4, "only the tail is read: three instances and one new version");
    assert_eq!(served(&restarted), live);
    assert_eq!(skips.total(), 0);

    let fresh = StudyIndex::open(&dir.path().join("index-fresh.redb")).unwrap();
    fresh.catch_up(&*log, &*keys, &*blobs, &phi_topic, idle, &skips).await.unwrap();
    assert_eq!(served(&fresh), live, "a full replay builds the same index");

    // A shredded study is passed, counted by reason, not retried.
    let (uid, entry) = index.studies("acme").unwrap().remove(0);
    keys.shred(StudyId(entry.study_id)).unwrap();
    let after_shred = StudyIndex::open(&dir.path().join("index-after-shred.redb")).unwrap();
    assert_eq!(after_shred.catch_up(&*log, &*keys, &*blobs, &phi_topic, idle, &skips).await.unwrap(), 0);
    assert_eq!(skips.counts(), std::collections::BTreeMap::from([("shredded".to_string(), 8)]));
    assert!(after_shred.study("acme", &uid).unwrap().is_none());
}
