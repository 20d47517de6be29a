//! Crypto-shredding: deleting a study's data key purges its PHI events. The
//! events stay in the log, unreadable; a projection rebuilt afterwards skips
//! them (counted), and the purge survives a restart.

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_events::payload::Payload;
use meridian_events::{DataClass, Envelope, EventId, KeyStore, StudyId, TenantSecret};
use meridian_log::contract::{meta, read_to_end};
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::{EventLog, Outgoing, Position, TopicName, TopicSpec};
use meridian_projection::run::catch_up;
use meridian_projection::{Event, Projection, Projector};
use meridian_proto::events::v1 as pb;
use tempfile::TempDir;

struct InstancesPerStudy;

impl Projection for InstancesPerStudy {
    type State = BTreeMap<String, u32>;
    const NAME: &'static str = "test.instances_per_study";

    fn apply(mut state: Self::State, event: &Event<'_>) -> Self::State {
        if let Payload::InstanceReceived(i) = event.payload {
            *state.entry(i.study_id.clone()).or_default() += 1;
        }
        state
    }
}

fn topic() -> TopicName {
    TopicName::new("us-east", DataClass::Phi, "ingest").unwrap()
}

async fn rebuild(log: &EmbeddedLog, keys: &dyn KeyStore) -> Projector<InstancesPerStudy> {
    let mut projector = Projector::new((0..2).map(|p| Position::start(topic(), p)).collect());
    catch_up(log, keys, &mut projector, Duration::from_millis(200)).await.unwrap();
    projector
}

/// The key store a process opens beside the log (a fresh one after a
/// restart: nothing cached).
type OpenKeys<'a> = dyn Fn(&EmbeddedLog) -> Box<dyn KeyStore> + 'a;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shredding_a_study_makes_its_phi_events_unreadable_and_rebuilds_skip_them() {
    let dir = TempDir::new().unwrap();
    shred_and_restart(dir.path(), &|log: &EmbeddedLog| Box::new(log.key_store())).await;
}

/// The same with the data keys of a region on Kafka: in its object store,
/// wrapped by its key-encryption key, shared by its processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shredding_works_the_same_with_keys_in_the_object_store() {
    use meridian_objects::blobs::LocalBlobs;
    use meridian_objects::keys::{Kek, ObjectKeyStore};
    let dir = TempDir::new().unwrap();
    let objects = dir.path().join("objects");
    let open = |_: &EmbeddedLog| -> Box<dyn KeyStore> {
        let kek = Kek::from_hex("1f".repeat(32).as_bytes()).unwrap();
        Box::new(ObjectKeyStore::new(std::sync::Arc::new(LocalBlobs::new(&objects)), kek).unwrap())
    };
    shred_and_restart(dir.path(), &open).await;
    // No PHI in the key store's objects either, and no tombstone missing.
    let tombstones = std::fs::read_dir(objects.join("keys/v1/shredded")).unwrap().count();
    assert_eq!(tombstones, 1, "the shredded key reads as shredded, not unknown");
    assert_eq!(std::fs::read_dir(objects.join("keys/v1/key")).unwrap().count(), 1, "only the live study's key");
}

async fn shred_and_restart(dir: &std::path::Path, open_keys: &OpenKeys<'_>) {
    let path = dir.join("us-east.redb");
    let log = EmbeddedLog::open(&path, EmbeddedOptions::default()).unwrap();
    log.ensure_topic(&TopicSpec::new(topic(), 2)).await.unwrap();
    let keys = open_keys(&log);
    let secret = TenantSecret::new(vec![42; 32]).unwrap();
    let mut studies = Vec::new();
    for (name, mrn) in [("1.2.840.1", "MRN-ALICE-0001"), ("1.2.840.2", "MRN-BOB-0002")] {
        let study = StudyId::derive(&secret, name);
        let mut batch = Vec::new();
        for n in 1..=3u64 {
            let payload = pb::InstanceReceived {
                study_id: study.to_string(),
                study_instance_uid: name.into(),
                sop_instance_uid: format!("{name}.{n}"),
                patient_id: mrn.into(),
                ..Default::default()
            };
            let e = Envelope::sealed(
                meridian_events::EventMeta {
                    aggregate_type: "ingest.instances".into(),
                    ..meta(study.0, n, EventId::derived(EventId(study.0), "t", n as u32))
                },
                &payload,
                study,
                keys.as_ref(),
            )
            .unwrap();
            batch.push(Outgoing::new(topic(), &e).unwrap());
        }
        log.append(batch).await.unwrap();
        studies.push(study);
    }
    let before = rebuild(&log, keys.as_ref()).await;
    assert_eq!(before.state().values().copied().collect::<Vec<_>>(), vec![3, 3]);

    // Purge the first study.
    assert_eq!(keys.shred(studies[0]).unwrap(), 1);
    drop(keys);
    log.close().await;

    // After a restart, the purge holds.
    let log = EmbeddedLog::open(&path, EmbeddedOptions::default()).unwrap();
    let keys = open_keys(&log);
    let after = rebuild(&log, keys.as_ref()).await;
    assert_eq!(after.state().len(), 1);
    assert_eq!(after.state().get(&studies[1].to_string()), Some(&3));
    assert_eq!(after.stats().shredded, 3, "the purged study's events are skipped and counted");
    assert_eq!(after.stats().applied, 3);

    // The events themselves are still in the log: the log is forever.
    let records = read_to_end(&log, (0..2).map(|p| Position::start(topic(), p)).collect()).await;
    assert_eq!(records.len(), 6);
    drop(keys);
    log.close().await;

    // And no PHI was ever in the file in clear.
    let bytes = std::fs::read(&path).unwrap();
    for needle in [&b"MRN-ALICE-0001"[..], b"MRN-BOB-0002", b"1.2.840.1."] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} found in clear",
            String::from_utf8_lossy(needle)
        );
    }
}
