//! The S3 object store against a real S3-API server (moto): the store's
//! contract, the PHI write path's residency refusal, and DICOM in over
//! DIMSE with the objects in a bucket, read back by a fresh study index.

use std::sync::Arc;

use sha2::Digest;
use std::time::Duration;

use meridian_events::{InstanceId, SeriesId, StudyId, TenantSecret, UnixMicros};
use meridian_integration_tests::Moto;
use meridian_integration_tests::dicom::{CtInstance, storescu, write_ct};
use meridian_storage::blobs::{Blobs, S3Blobs, S3Settings, contract};
use meridian_storage::index::StudyIndex;
use meridian_storage::phi::{PhiObject, PhiWriteError, PhiWriter};

use crate::ingest_dimse::{Scp, scp_on};

fn s3(moto: &Moto, bucket: &str) -> Arc<dyn Blobs> {
    let settings = S3Settings {
        bucket: bucket.into(),
        endpoint: Some(moto.endpoint()),
        region: "us-east-1".into(),
        allow_http: true,
        access_key_id: "meridian-test".into(),
        secret_access_key: "meridian-test".into(),
    };
    Arc::new(S3Blobs::new(&settings).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_store_keeps_the_object_store_contract() {
    let moto = Moto::start("contract");
    contract(s3(&moto, "contract").as_ref()).await;
    // A bucket that is not there is an error that names it.
    let missing = s3(&moto, "no-such-bucket");
    let e = missing.put_once("phi/acme/x.dcm", b"x".to_vec()).await.unwrap_err();
    assert!(e.to_string().contains("s3://no-such-bucket/phi/acme/x.dcm"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dimse_instances_land_in_the_bucket_and_a_fresh_index_reads_them_back() {
    let moto = Moto::start("us-east-phi");
    let blobs = s3(&moto, "us-east-phi");
    let Scp { dir, log, keys, port, platform, ingest, index, .. } =
        scp_on(meridian_dimse::Limits::default(), Some(blobs.clone())).await;
    let files = tempfile::TempDir::new().unwrap();
    let study = "1.2.826.0.1.3680043.10.543.8";
    let sent: Vec<_> = (1..=3u16)
        .map(|i| {
            let sop = format!("{study}.1.{i}");
            let ct = CtInstance {
                study_uid: study,
                series_uid: &format!("{study}.1"),
                sop_uid: &sop,
                patient_id: "MRN-S3",
                priority: "",
                pixels: [i, 2, 3, 4],
            };
            write_ct(files.path(), &ct)
        })
        .collect();
    let (ok, said) = storescu(port, "ACME_CT1", "MERIDIAN_ACME", &sent);
    assert!(ok, "{said}");
    let stored = blobs.list("phi/acme/").await.unwrap();
    assert_eq!(stored.len(), 3, "{stored:?}");
    for key in &stored {
        let bytes = blobs.get(key).await.unwrap().unwrap();
        assert_eq!(&bytes[128..132], b"DICM", "{key} is a Part-10 file");
        let sha: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert!(key.ends_with(&format!(".{sha}.dcm")), "{key} is named by the SHA-256 of its bytes");
    }
    assert_eq!(index.instances("acme", study, None).unwrap().len(), 3);

    // A fresh index catches up from the log, reading each object from S3.
    let fresh = StudyIndex::open(&dir.path().join("fresh.redb")).unwrap();
    let topic = meridian_log::TopicName::new("us-east", meridian_events::DataClass::Phi, "ingest").unwrap();
    let n = fresh
        .catch_up(log.as_ref(), keys.as_ref(), blobs.as_ref(), &topic, Duration::from_millis(100), &Default::default())
        .await
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(fresh.instances("acme", study, None).unwrap(), index.instances("acme", study, None).unwrap());
    drop(ingest);

    // The residency check does not depend on the store: northwind's PHI
    // may not live in us-east, and nothing reaches the bucket.
    let phi = PhiWriter::new("us-east", platform, blobs.clone(), log.clone());
    let secret = TenantSecret::new(vec![5u8; 32]).unwrap();
    let object = PhiObject {
        tenant: "northwind".into(),
        study: StudyId::derive(&secret, "1.2.3"),
        series: SeriesId::derive(&secret, "1.2.3.1"),
        instance: InstanceId::derive(&secret, "1.2.3.1.1"),
        bytes: b"not here".to_vec(),
        held: None,
    };
    let refused = phi.put(object, UnixMicros(1)).await.unwrap_err();
    assert!(matches!(refused, PhiWriteError::Refused { .. }), "{refused}");
    assert!(blobs.list("phi/northwind/").await.unwrap().is_empty());
}

/// The data keys of a region whose services are separate processes, in its
/// bucket: processes racing on a new study agree on one key (S3's
/// conditional PUT), another process opens it, and a shred is seen by a
/// process that had never read the key.
#[test]
fn data_keys_in_the_bucket_are_shared_by_processes_and_shredded_for_all() {
    use meridian_events::KeyStore;
    use meridian_events::seal::KeyState;
    use meridian_objects::keys::{Kek, ObjectKeyStore};
    let moto = Moto::start("keys");
    let kek = || Kek::from_hex("3c".repeat(32).as_bytes()).unwrap();
    let store = || ObjectKeyStore::new(s3(&moto, "keys"), kek()).unwrap();
    let study = StudyId(uuid::Uuid::from_u128(0x5eed));
    let ids: Vec<_> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..6).map(|_| s.spawn(|| store().current_key(study).unwrap().id)).collect();
        racers.into_iter().map(|r| r.join().unwrap()).collect()
    });
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one key for the study: {ids:?}");
    let reader = store();
    assert!(matches!(reader.key(ids[0]).unwrap(), KeyState::Active(_)));
    assert_eq!(store().shred(study).unwrap(), 1);
    assert!(matches!(store().key(ids[0]).unwrap(), KeyState::Shredded), "a fresh process sees the shred");
    let other_region = ObjectKeyStore::new(s3(&moto, "keys"), Kek::from_hex("3d".repeat(32).as_bytes()).unwrap());
    let fresh = other_region.unwrap().current_key(StudyId(uuid::Uuid::from_u128(7))).unwrap();
    let refused = reader.key(fresh.id).unwrap_err().to_string();
    assert!(refused.contains("key-encryption key"), "{refused}");
}
