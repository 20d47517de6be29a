//! The production shape without containers: one region on a Kafka-API
//! broker (tansu) and an S3-API bucket (moto), each service its own
//! `meridian serve` process on free ports, meeting the others only on the
//! log. Studies go in over DIMSE to ingest, are found through storage's
//! QIDO-RS and queued and assigned by routing; processes are killed with
//! SIGKILL mid-flow and restarted, and nothing acknowledged is lost or
//! counted twice.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use meridian_integration_tests::dicom::{acknowledged, storescu};
use meridian_integration_tests::processes::{
    Cluster, bucket, complete, found, get, health, of_type, ready, rejections, service_health, stream_events,
    study_files, wait_until,
};
use meridian_integration_tests::{Moto, Tansu};

const MERIDIAN: &str = env!("CARGO_BIN_EXE_meridian");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")
}

fn routing_events(process: &meridian_integration_tests::processes::Service, token: &str) -> Vec<serde_json::Value> {
    meridian_integration_tests::processes::routing_events(Path::new(MERIDIAN), process, token)
}

#[test]
fn services_as_processes_on_kafka_lose_nothing_acknowledged_when_killed_mid_flow() {
    let (tansu, moto) = (Tansu::start(), Moto::start("unused"));
    let work = tempfile::TempDir::new().unwrap();
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &examples(), work.path(), &tansu, Some(&moto));
    let config = cluster.config.clone();

    // Bad input first: an embedded region is refused, naming the file.
    let embedded = Command::new(MERIDIAN)
        .args(["serve", "routing", "--region", "in-south", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(work.path().join("refused"))
        .output()
        .unwrap();
    assert_eq!(embedded.status.code(), Some(64));
    let said = String::from_utf8_lossy(&embedded.stderr);
    assert!(said.contains("regions/in-south.toml") && said.contains("kind = \"kafka\""), "{said}");
    // A missing key-encryption key exits 64 naming the field.
    let no_kek = Command::new(MERIDIAN)
        .args(["serve", "routing", "--region", "us-east", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(work.path().join("refused"))
        .arg("--secrets")
        .arg(work.path().join("secrets"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&no_kek.stderr);
    assert_eq!(no_kek.status.code(), Some(64), "{said}");
    assert!(said.contains("keys.key_encryption_key") && said.contains("MERIDIAN_TEST_KEK"), "{said}");
    // So does a bucket whose credentials' variable is not set.
    let no_bucket_key = Command::new(MERIDIAN)
        .args(["serve", "storage", "--region", "us-east", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(work.path().join("refused"))
        .arg("--secrets")
        .arg(work.path().join("secrets"))
        .env("MERIDIAN_TEST_KEK", meridian_integration_tests::processes::KEK)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&no_bucket_key.stderr);
    assert_eq!(no_bucket_key.status.code(), Some(64), "{said}");
    assert!(said.contains("MERIDIAN_TEST_S3_KEY"), "{said}");
    // Ingest replicas without every replica's address are refused.
    let no_peers = Command::new(MERIDIAN)
        .args(["serve", "ingest", "--region", "us-east", "--instance", "0", "--replicas", "2", "--config"])
        .arg(&config)
        .args(["--peers", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&no_peers.stderr);
    assert_eq!(no_peers.status.code(), Some(64), "{said}");
    assert!(said.contains("--peers") && said.contains("1 given"), "{said}");
    let bad_peer = Command::new(MERIDIAN)
        .args(["serve", "ingest", "--region", "us-east", "--instance", "0", "--replicas", "2", "--config"])
        .arg(&config)
        .args(["--peers", "http://127.0.0.1:1,not a url"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&bad_peer.stderr);
    assert_eq!(bad_peer.status.code(), Some(64), "{said}");
    assert!(said.contains("--peers: \"not a url\" is not a gRPC address"), "{said}");

    // Routing's first commit records the configuration it loaded, its
    // second registers the configured readers; its third is the intake of
    // the first completed study: it dies there, having read the input and
    // committed nothing.
    let mut routing = cluster.start_armed("routing", None, "log.before_commit=abort@3");
    let storage = cluster.start("storage", None);
    let ingest = cluster.start("ingest", Some(0));
    let (pacs, sre) = (&tokens["acme-pacs"], &tokens["sre"]);

    // One study of three instances through ingest, completed, found by
    // storage, queued and assigned by routing: three processes, one log.
    let files = tempfile::TempDir::new().unwrap();
    let first = "1.2.826.0.1.3680043.10.543.301";
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &study_files(files.path(), first, 3));
    assert!(ok, "{said}");
    wait_until("storage's QIDO-RS finds the three instances", 60, || (found(&storage, pacs).len() == 3).then_some(()));
    complete(&ingest, pacs, first);
    let died = wait_until("routing dies at its intake commit", 60, || routing.child.try_wait().unwrap());
    assert!(!died.success(), "{died}");
    let routing = cluster.start("routing", None);
    let events = wait_until("routing, restarted, queues and assigns the study", 60, || {
        let events = routing_events(&storage, sre);
        (of_type(&events, "StudyQueued").len() == 1 && of_type(&events, "StudyAssigned").len() == 1).then_some(events)
    });
    assert_eq!(of_type(&events, "StudyAssigned")[0]["payload"]["readerId"], "dr-ana-ortiz");
    // Storage, another process, learns who holds the study from routing's
    // events: the assignee finds it with QIDO-RS, another reader does not.
    let readable = |principal: &str| {
        let (status, body) = get(&storage.http(), "/dicomweb/studies", &tokens[principal]);
        assert_eq!(status, 200, "{body}");
        body.as_array().map_or(0, Vec::len)
    };
    wait_until("the assignee finds the study through storage", 30, || (readable("dr-ortiz") == 1).then_some(()));
    assert_eq!(readable("dr-nair"), 0, "a reader it is not assigned to sees nothing");

    // SIGKILL ingest in the middle of an association; what storescu saw
    // acknowledged must all be found once ingest is back, and the rest is
    // sent again.
    let second = "1.2.826.0.1.3680043.10.543.302";
    let many = study_files(files.path(), second, 40);
    let port = ingest.dicom_port();
    let sending = {
        let many = many.clone();
        std::thread::spawn(move || {
            let out = Command::new("storescu")
                .args(["-v", "-aet", "ACME_CT1", "-aec", "MERIDIAN_ACME", "127.0.0.1", &port.to_string()])
                .args(&many)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
        })
    };
    std::thread::sleep(Duration::from_millis(400));
    ingest.kill();
    // Files are named by their SOP Instance UIDs.
    let acked: Vec<String> = acknowledged(&sending.join().unwrap())
        .iter()
        .map(|file| Path::new(file).file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    eprintln!("{} of 40 instances acknowledged before the SIGKILL", acked.len());
    assert!(acked.len() < many.len(), "the kill landed mid-association ({} of 40 acknowledged)", acked.len());
    // Storage, too, is killed while it may be indexing, and comes back.
    storage.kill();
    let storage = cluster.start("storage", None);
    let ingest = cluster.start("ingest", Some(0));
    // Files are named by their SOP Instance UID.
    let all = wait_until("every acknowledged instance found after the kills", 60, || {
        let all = found(&storage, pacs);
        acked.iter().all(|uid| all.contains(uid)).then_some(all)
    });
    assert!(all.len() >= 3 + acked.len(), "{} found, {} acknowledged", all.len(), acked.len());
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &many);
    assert!(ok, "the whole study again after the restart: {said}");
    wait_until("all 43 instances found", 60, || (found(&storage, pacs).len() == 43).then_some(()));

    // Routing is killed after the second study completes, and restarted.
    complete(&ingest, pacs, second);
    wait_until("the second study queued", 60, || {
        (of_type(&routing_events(&storage, sre), "StudyQueued").len() == 2).then_some(())
    });
    routing.kill();
    let routing = cluster.start("routing", None);
    let events = wait_until("both studies assigned after routing's restart", 60, || {
        let events = routing_events(&routing, sre);
        (of_type(&events, "StudyAssigned").len() >= 2).then_some(events)
    });
    // Exactly once: one StudyQueued and one StudyAssigned per study.
    let per_study = |short: &str| {
        let mut studies: Vec<String> =
            of_type(&events, short).iter().map(|e| e["payload"]["studyId"].as_str().unwrap().to_owned()).collect();
        let n = studies.len();
        studies.sort();
        studies.dedup();
        (n, studies.len())
    };
    assert_eq!(per_study("StudyQueued"), (2, 2), "one StudyQueued per study");
    assert_eq!(per_study("StudyAssigned"), (2, 2), "one StudyAssigned per study");

    // No consumer of any process met a conflict or skipped a record.
    for process in [&routing, &storage, &ingest] {
        let (status, summary) = get(&process.http(), "/v1/summary", sre);
        assert_eq!(status, 200, "{summary}");
        for projection in summary["projections"].as_array().unwrap() {
            assert_eq!(projection["stats"]["conflicts"], 0, "{}: {projection}", process.name);
        }
        for consumer in summary["consumers"].as_array().unwrap() {
            assert_eq!(consumer["skipped_total"], 0, "{}: {consumer}", process.name);
        }
    }
}

#[test]
fn a_process_is_not_ready_while_its_broker_or_bucket_is_away_and_recovers_by_itself() {
    use tonic_health::ServingStatus;
    let brokers_bucket = Moto::start("unused");
    let mut tansu = Tansu::on_s3(&brokers_bucket, "tansu");
    let mut moto = Moto::start("unused");
    let work = tempfile::TempDir::new().unwrap();
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &examples(), work.path(), &tansu, Some(&moto));
    let routing = cluster.start("routing", None);
    let ingest = cluster.start("ingest", None);
    wait_until("ready at start", 30, || ready(&ingest).0.then_some(()));
    assert_eq!(health(&ingest), ServingStatus::Serving as i32);

    // The bucket goes away: not ready, saying why; back: ready by itself.
    moto.stop();
    let said = wait_until("not ready without the bucket", 30, || {
        let (ok, said) = ready(&ingest);
        (!ok).then_some(said)
    });
    assert!(said.contains("object store"), "{said}");
    assert_eq!(health(&ingest), ServingStatus::NotServing as i32);
    // Each of its gRPC services says so too, as a probe of one would see.
    let ingest_api = "meridian.ingest.v1.IngestService";
    assert_eq!(service_health(&ingest, ingest_api), ServingStatus::NotServing as i32);
    moto.restart(&bucket("us-east"));
    wait_until("ready again with the bucket back", 30, || ready(&ingest).0.then_some(()));
    assert_eq!(health(&ingest), ServingStatus::Serving as i32);
    assert_eq!(service_health(&ingest, ingest_api), ServingStatus::Serving as i32);
    // Routing probes the bucket too, on its own 5 s schedule: ready again
    // before the broker goes, so what it says next is about the broker.
    wait_until("routing ready again with the bucket back", 30, || ready(&routing).0.then_some(()));

    // The broker goes away: the same; it comes back with its topics and
    // positions (tansu keeps them in its own bucket), and work goes on.
    tansu.stop();
    let said = wait_until("not ready without the broker", 60, || {
        let (ok, said) = ready(&routing);
        (!ok).then_some(said)
    });
    assert!(said.contains("event log"), "{said}");
    assert_eq!(health(&routing), ServingStatus::NotServing as i32);
    tansu.restart();
    wait_until("ready again with the broker back", 60, || ready(&routing).0.then_some(()));
    let files = tempfile::TempDir::new().unwrap();
    let study = "1.2.826.0.1.3680043.10.543.401";
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &study_files(files.path(), study, 2));
    assert!(ok, "stored after the broker's restart: {said}");
    let events = routing_events(&routing, &tokens["sre"]);
    // us-east's two readers, registered before the broker went.
    assert_eq!(of_type(&events, "ReaderRegistered").len(), 2, "the broker kept what it held");
}

/// Keys under `prefix` in `bucket` on moto.
fn keys_in(moto: &Moto, bucket: &str, prefix: &str) -> Vec<String> {
    let (status, body) = moto.request("GET", &format!("/{bucket}?list-type=2&prefix={prefix}"));
    assert_eq!(status, 200, "{body}");
    body.split("<Key>").skip(1).filter_map(|k| k.split_once("</Key>")).map(|(k, _)| k.to_owned()).collect()
}

#[test]
fn studies_sent_to_two_ingest_replicas_are_derived_by_two_storage_replicas_each_once_into_the_allowed_region() {
    use meridian_events::{StudyId, TenantSecret};
    let (tansu, moto) = (Tansu::start(), Moto::start("unused"));
    let work = tempfile::TempDir::new().unwrap();
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &examples(), work.path(), &tansu, Some(&moto));
    // Northwind's home is eu-west; its contract gives Lotus's readers
    // de-identified images in in-south. Two ingest replicas each own the
    // studies on one partition of ingest's topics; two storage replicas
    // share the derivations the same way.
    let ingest = cluster.start_ingest_replicas("eu-west", 2);
    let replicas =
        [cluster.start_replica("eu-west", "storage", 0, 2), cluster.start_replica("eu-west", "storage", 1, 2)];
    // Two studies on each of the topic's two partitions (records are keyed
    // by the study's opaque id).
    let secret = std::fs::read(work.path().join("secrets/northwind.id-secret")).unwrap();
    let secret = TenantSecret::new(secret).unwrap();
    let mut by_partition: [Vec<String>; 2] = Default::default();
    for n in 0.. {
        let uid = format!("1.2.826.0.1.3680043.10.543.5{n:02}");
        let key = StudyId::derive(&secret, &uid).as_uuid().hyphenated().to_string();
        let p = meridian_log::partitioner::partition_for(key.as_bytes(), 2) as usize;
        if by_partition[p].len() < 2 {
            by_partition[p].push(uid);
        }
        if by_partition.iter().all(|s| s.len() == 2) {
            break;
        }
    }
    let files = tempfile::TempDir::new().unwrap();
    let pacs = &tokens["northwind-pacs"];
    for (n, study) in by_partition.iter().flatten().enumerate() {
        // Each study's two instances go to the two replicas: one stores an
        // instance of a study it does not own and hands it to the owner.
        let dir = files.path().join(n.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let instances = study_files(&dir, study, 2);
        for (replica, file) in ingest.iter().zip(&instances) {
            // Only images that say no identity is burned into their pixels
            // are released de-identified.
            let modified = Command::new("dcmodify").args(["-nb", "-i", "(0028,0301)=NO"]).arg(file).output().unwrap();
            assert!(modified.status.success(), "{}", String::from_utf8_lossy(&modified.stderr));
            let (ok, said) = storescu(replica.dicom_port(), "NW_DUB_CT", "MERIDIAN_NW", std::slice::from_ref(file));
            assert!(ok, "{said}");
        }
        // Asked of either replica, the owner completes it with both.
        let (_, instances, completed_now) = complete(&ingest[n % 2], pacs, study);
        assert_eq!((instances, completed_now), (2, true), "study {study}");
    }
    // A refusal on each replica: the tenant's list, asked of one, has both.
    for (n, replica) in ingest.iter().enumerate() {
        let dir = files.path().join(format!("refused-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file = study_files(&dir, &format!("1.2.826.0.1.3680043.10.543.9{n}"), 1);
        let erased = Command::new("dcmodify").args(["-nb", "-i", "(0020,000E)="]).arg(&file[0]).output().unwrap();
        assert!(erased.status.success(), "{}", String::from_utf8_lossy(&erased.stderr));
        let (ok, _) = storescu(replica.dicom_port(), "NW_DUB_CT", "MERIDIAN_NW", &file);
        assert!(!ok, "an instance without a Series Instance UID is refused");
    }
    let listed = wait_until("both replicas' refusals listed by one", 30, || {
        let listed = rejections(&ingest[0], pacs);
        (listed.len() == 2).then_some(listed)
    });
    assert!(listed.iter().all(|(code, _)| code == "missing_series_instance_uid"), "{listed:?}");
    let derived = wait_until("the four studies derived into in-south's bucket", 60, || {
        let keys = keys_in(&moto, &bucket("in-south"), "deid/");
        (keys.len() == 8).then_some(keys)
    });
    assert!(derived.iter().all(|k| !k.contains("1.2.826")), "derivative keys carry no DICOM UID: {derived:?}");
    // Residency: the patient's images stay in eu-west's bucket; in-south
    // holds only de-identified copies, us-east nothing.
    assert_eq!(keys_in(&moto, &bucket("eu-west"), "phi/").len(), 8);
    assert!(keys_in(&moto, &bucket("in-south"), "phi/").is_empty());
    assert!(keys_in(&moto, &bucket("us-east"), "").is_empty());
    // Each study derived once, each replica deriving its own partition's.
    let events = stream_events(Path::new(MERIDIAN), &replicas[0], "eu-west", "storage", &tokens["sre"]);
    assert_eq!(of_type(&events, "DerivativeCreated").len(), 4, "one DerivativeCreated per study: {events:?}");
    // One writer per study: one StudyStarted and one StudyCompleted each,
    // every instance recorded once, whichever replica received it.
    let events = stream_events(Path::new(MERIDIAN), &ingest[1], "eu-west", "ingest", &tokens["sre"]);
    assert_eq!(of_type(&events, "StudyStarted").len(), 4, "{events:?}");
    assert_eq!(of_type(&events, "StudyCompleted").len(), 4, "{events:?}");
    assert_eq!(of_type(&events, "InstanceReceived").len(), 8, "{events:?}");
    for (ordinal, replica) in replicas.iter().enumerate() {
        let said = std::fs::read_to_string(&replica.log).unwrap();
        let derived: Vec<&str> = said.lines().filter(|l| l.contains("study derived")).collect();
        assert_eq!(derived.len(), 2, "replica {ordinal} derived its partition's two: {derived:?}");
        assert!(derived.iter().all(|l| l.contains(&format!("partition={ordinal}"))), "{derived:?}");
    }
    // The owner SIGKILLed: the other replica stores an instance of its
    // study but cannot hand it over, and tells the sender to send again;
    // the owner back (same address), the same instance is recorded once.
    let mut ingest = ingest;
    let ports: Vec<u16> = ingest.iter().map(|s| s.grpc().rsplit(':').next().unwrap().parse().unwrap()).collect();
    let late = (0..)
        .map(|n| format!("1.2.826.0.1.3680043.10.543.7{n:02}"))
        .find(|uid| {
            let key = StudyId::derive(&secret, uid).as_uuid().hyphenated().to_string();
            meridian_log::partitioner::partition_for(key.as_bytes(), 2) == 0
        })
        .unwrap();
    let dir = files.path().join("late");
    std::fs::create_dir_all(&dir).unwrap();
    let file = study_files(&dir, &late, 1);
    ingest.remove(0).kill();
    let (ok, said) = storescu(ingest[0].dicom_port(), "NW_DUB_CT", "MERIDIAN_NW", &file);
    assert!(!ok, "acknowledged while the study's owner was down: {said}");
    ingest.insert(0, cluster.start_ingest_replica("eu-west", 0, &ports));
    let (ok, said) = storescu(ingest[1].dicom_port(), "NW_DUB_CT", "MERIDIAN_NW", &file);
    assert!(ok, "{said}");
    assert_eq!(complete(&ingest[1], pacs, &late), (1, 1, true));
    let late_id = StudyId::derive(&secret, &late).as_uuid().to_string();
    let events: Vec<serde_json::Value> =
        stream_events(Path::new(MERIDIAN), &ingest[0], "eu-west", "ingest", &tokens["sre"])
            .into_iter()
            .filter(|e| e.to_string().contains(&late_id))
            .collect();
    for (kind, n) in [("InstanceReceived", 1), ("StudyStarted", 1), ("StudyCompleted", 1)] {
        assert_eq!(of_type(&events, kind).len(), n, "{kind} of the late study: {events:?}");
    }
}

#[test]
fn billing_charges_and_pays_each_signed_read_once_through_kills() {
    use meridian_integration_tests::processes::sign_at;
    let (tansu, moto) = (Tansu::start(), Moto::start("unused"));
    // The reads are signed 40 days ago: their month has ended, so its
    // invoice can be issued, shown and corrected here.
    #[allow(clippy::disallowed_methods)] // the test's clock, for a month that has ended
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let signed_at = meridian_events::UnixMicros(now - 40 * 86_400_000_000);
    let work = tempfile::TempDir::new().unwrap();
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &examples(), work.path(), &tansu, Some(&moto));
    let (pacs, sre) = (&tokens["acme-pacs"], &tokens["sre"]);
    let routing = cluster.start("routing", None);
    let ingest = cluster.start("ingest", None);
    // Billing's first step takes the readers' registrations; its second,
    // the study's first events: it dies there, before committing.
    let mut billing = cluster.start_armed("billing", None, "billing.after_decide=abort@2");
    let events = |stream: &str| stream_events(Path::new(MERIDIAN), &routing, "us-east", stream, sre);

    // Two STAT CT studies: each queued at once and pushed to a reader for
    // its preliminary read (the example's finals need an onshore reader
    // other than the preliminary's: none is free here, so finals wait).
    let files = tempfile::TempDir::new().unwrap();
    for (n, uid) in ["1.2.826.0.1.3680043.10.543.401", "1.2.826.0.1.3680043.10.543.402"].iter().enumerate() {
        let dir = files.path().join(n.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let file = study_files(&dir, uid, 1);
        // A CT head (CPT 70450, 0.85 wRVU in the example's catalogue): the
        // group is paid by the procedure's work RVU.
        let coded = Command::new("dcmodify")
            .args(["-nb", "-i", "(0008,1032)[0].(0008,0100)=70450", "-i", "(0008,1032)[0].(0008,0102)=CPT"])
            .arg(&file[0])
            .output()
            .unwrap();
        assert!(coded.status.success(), "{}", String::from_utf8_lossy(&coded.stderr));
        let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &file);
        assert!(ok, "{said}");
        complete(&ingest, pacs, uid);
    }
    let died = wait_until("billing dies at its failpoint", 60, || billing.child.try_wait().unwrap());
    assert!(!died.success(), "{died}");
    billing = cluster.start("billing", None);
    let assigned = wait_until("both preliminaries assigned", 60, || {
        let events = events("routing");
        let assigned: Vec<(String, String)> = of_type(&events, "StudyAssigned")
            .iter()
            .map(|a| {
                let a = &a["payload"];
                (a["studyId"].as_str().unwrap().to_owned(), a["readerId"].as_str().unwrap().to_owned())
            })
            .collect();
        (assigned.len() == 2).then_some(assigned)
    });
    sign_at(&tansu, ("us-east", "acme"), &assigned[0].0, &assigned[0].1, "preliminary", 1, signed_at);
    // SIGKILL billing while it may be charging the first read.
    billing.kill();
    let billing = cluster.start("billing", None);
    sign_at(&tansu, ("us-east", "acme"), &assigned[1].0, &assigned[1].1, "preliminary", 1, signed_at);

    let posted = wait_until("both reads charged and paid", 60, || {
        let posted = events("billing");
        (of_type(&posted, "ChargePosted").len() >= 2 && of_type(&posted, "PayoutAccrued").len() >= 2).then_some(posted)
    });
    let charges = of_type(&posted, "ChargePosted");
    assert_eq!(charges.len(), 2, "one charge per signed read: {posted:?}");
    assert_eq!(of_type(&posted, "PayoutAccrued").len(), 2, "{posted:?}");
    assert!(of_type(&posted, "ChargeUnpriced").is_empty(), "{posted:?}");
    let ids: std::collections::BTreeSet<&str> = posted.iter().map(|e| e["event_id"].as_str().unwrap_or("")).collect();
    assert_eq!(ids.len(), posted.len(), "no fact twice: {posted:?}");
    // Priced by the contract: a CT preliminary is 30.00, with the STAT
    // order's surcharge; paid to the signing reader's group.
    for c in &charges {
        let lines = c["payload"]["lines"].as_array().unwrap();
        assert_eq!(lines[0]["amount"]["minorUnits"], "3000", "{c}");
        assert!(lines.iter().any(|l| l["kind"] == "priority"), "the STAT order's surcharge: {c}");
        assert_eq!(c["payload"]["amount"]["currencyCode"], "USD");
    }
    for p in of_type(&posted, "PayoutAccrued") {
        let (group, amount) = (&p["payload"]["readingGroup"], &p["payload"]["amount"]);
        // 0.85 wRVU × 32.50 USD (atlantic-rads) or × 18.00 EUR (lotus).
        let expected = match group.as_str().unwrap() {
            "atlantic-rads" => ("USD", "2763"),
            "lotus-teleradiology" => ("EUR", "1530"),
            other => panic!("paid to {other}: {p}"),
        };
        assert_eq!((amount["currencyCode"].as_str().unwrap(), amount["minorUnits"].as_str().unwrap()), expected, "{p}");
        assert_eq!(p["payload"]["rvuMilli"], 850);
    }

    // The tenant's administrator previews the month's invoice: the lines
    // by contract field, each naming the charges behind it.
    let period = charges[0]["payload"]["period"].as_str().unwrap().to_owned();
    let preview = |token: &str, tenant: &str| {
        Command::new(MERIDIAN)
            .args(["invoice", "preview", "--csv", "--tenant", tenant, "--period", &period, "--region", "us-east"])
            .args(["--endpoint", &format!("http://{}", billing.grpc()), "--token", token])
            .output()
            .unwrap()
    };
    let out = preview(&tokens["acme-admin"], "acme");
    let csv = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{csv}{}", String::from_utf8_lossy(&out.stderr));
    let base = csv
        .lines()
        .find(|l| l.contains(",engagement.per_read_type.preliminary.CT,"))
        .unwrap_or_else(|| panic!("{csv}"));
    let fields: Vec<&str> = base.split(',').collect();
    assert_eq!(&fields[4..8], ["2", "3000", "6000", "USD"], "{csv}");
    let named: std::collections::BTreeSet<&str> = fields[8].split(' ').collect();
    let charged: std::collections::BTreeSet<&str> = charges.iter().map(|c| c["event_id"].as_str().unwrap()).collect();
    assert_eq!(named, charged, "the line names the charges behind it");
    // This month is still open: issuing it is refused, naming its end.
    let cli = |token: &str, args: &[&str]| {
        Command::new(MERIDIAN)
            .args(args)
            .args(["--region", "us-east", "--endpoint", &format!("http://{}", billing.grpc()), "--token", token])
            .output()
            .unwrap()
    };
    let clerk = tokens["billing-clerk"].as_str();
    let this_month = jiff::Timestamp::from_microsecond(now).unwrap().strftime("%Y-%m").to_string();
    let issue = cli(clerk, &["invoice", "issue", "--tenant", "acme", "--period", &this_month]);
    let said = String::from_utf8_lossy(&issue.stderr);
    assert!(!issue.status.success() && said.contains("FailedPrecondition") && said.contains("open until"), "{said}");
    // The reads' month has ended: the clerk issues its invoice, once.
    let issue = cli(clerk, &["invoice", "issue", "--tenant", "acme", "--period", &period]);
    let said = String::from_utf8_lossy(&issue.stdout);
    assert!(issue.status.success(), "{said}{}", String::from_utf8_lossy(&issue.stderr));
    let number = said.lines().find(|l| l.contains(" acme-atlantic ")).and_then(|l| l.split(' ').next()).unwrap();
    assert!(number.starts_with("US-"), "{said}");
    let again = cli(clerk, &["invoice", "issue", "--tenant", "acme", "--period", &period]);
    assert_eq!(String::from_utf8_lossy(&again.stdout), said, "issued once");
    // Exported as issued: each line names its events; the JSON says the same.
    let shown = cli(&tokens["acme-admin"], &["invoice", "show", "--number", number, "--csv"]);
    let csv = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{csv}{}", String::from_utf8_lossy(&shown.stderr));
    let base = csv.lines().find(|l| l.contains(",engagement.per_read_type.preliminary.CT,")).unwrap();
    let fields: Vec<&str> = base.split(',').collect();
    assert_eq!(&fields[4..8], ["2", "3000", "6000", "USD"], "{csv}");
    assert_eq!(fields[8].split(' ').collect::<std::collections::BTreeSet<_>>(), charged, "{csv}");
    let shown = cli(&tokens["acme-admin"], &["invoice", "show", "--number", number, "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let line_no = fields[1].parse::<u64>().unwrap();
    assert_eq!(json["lines"][line_no as usize - 1]["amount"], 6000, "{json}");
    assert_eq!((&json["minor_unit_exponent"], &json["rounding"]), (&2.into(), &"half_up".into()), "{json}");
    // Another tenant's administrator learns nothing of it: answered as a
    // number never issued (numbers run in sequence: a refusal would tell
    // how many acme has).
    let denied = cli(&tokens["northwind-admin"], &["invoice", "show", "--number", number]);
    let never = cli(&tokens["northwind-admin"], &["invoice", "show", "--number", "US-2099-000001"]);
    let said = String::from_utf8_lossy(&denied.stderr).replace(number, "N");
    assert!(said.contains("NotFound"), "{said}");
    assert_eq!(said, String::from_utf8_lossy(&never.stderr).replace("US-2099-000001", "N"));
    // A charge on it, explained: the read, each part of its price, its cause.
    let charge = charges[0]["event_id"].as_str().unwrap();
    let explained = cli(&tokens["acme-admin"], &["invoice", "explain", "--tenant", "acme", "--event", charge]);
    let said = String::from_utf8_lossy(&explained.stdout);
    assert!(explained.status.success(), "{said}{}", String::from_utf8_lossy(&explained.stderr));
    assert!(said.contains("engagement.per_read_type.preliminary.CT") && said.contains("invoiced"), "{said}");
    assert!(said.contains(charges[0]["payload"]["causeEventId"].as_str().unwrap()), "{said}");
    let denied = cli(&tokens["northwind-admin"], &["invoice", "explain", "--tenant", "acme", "--event", charge]);
    assert!(String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"));
    // One read was charged twice by mistake: a credit note takes one unit
    // of the line back; run again, the same credit note; more than is left
    // is refused, naming what is left.
    let line = format!("{line_no}:1");
    let credit = |line: &str| {
        cli(clerk, &["invoice", "credit", "--number", number, "--line", line, "--reason", "duplicate read"])
    };
    let note = credit(&line);
    let said = String::from_utf8_lossy(&note.stdout).to_string();
    assert!(note.status.success() && said.contains("US-CN-000001") && said.contains("-30.00 USD"), "{said}");
    assert_eq!(String::from_utf8_lossy(&credit(&line).stdout), said, "credited once");
    let refused = credit(&format!("{line_no}:2"));
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("FailedPrecondition") && why.contains("has 1 left to credit, not 2"), "{why}");
    let json: serde_json::Value =
        serde_json::from_slice(&cli(clerk, &["invoice", "show", "--number", number, "--json"]).stdout).unwrap();
    assert_eq!(json["credit_notes"][0]["total"], -3000, "{json}");
    // The reading group's admin sees what the group earned here.
    let groups: std::collections::BTreeSet<String> = of_type(&posted, "PayoutAccrued")
        .iter()
        .map(|p| p["payload"]["readingGroup"].as_str().unwrap().to_owned())
        .collect();
    if groups.contains("atlantic-rads") {
        use meridian_proto::billing::v1 as pb;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let payouts = runtime.block_on(async {
            let address = format!("http://{}", billing.grpc());
            let mut client = pb::billing_service_client::BillingServiceClient::connect(address).await.unwrap();
            let ask = pb::ListPayoutsRequest { reading_group: "atlantic-rads".into(), period: period.clone() };
            let mut request = tonic::Request::new(ask);
            let token = format!("Bearer {}", tokens["atlantic-admin"]);
            request.metadata_mut().insert("authorization", token.parse().unwrap());
            client.list_payouts(request).await.unwrap().into_inner().payouts
        });
        let paid = of_type(&posted, "PayoutAccrued")
            .iter()
            .filter(|p| p["payload"]["readingGroup"] == "atlantic-rads")
            .count();
        let [usd] = &payouts[..] else { panic!("{payouts:?}") };
        assert_eq!((usd.reads, usd.amount.as_ref().unwrap().minor_units), (paid as u64, 2_763 * paid as i64));
    }
    // Only the tenant's administrator, and only for its own tenant.
    for (token, tenant) in [(pacs, "acme"), (&tokens["northwind-admin"], "acme")] {
        let denied = preview(token, tenant);
        assert!(!denied.status.success());
        assert!(
            String::from_utf8_lossy(&denied.stderr).contains("PermissionDenied"),
            "{}",
            String::from_utf8_lossy(&denied.stderr)
        );
    }
    drop(billing);
}

/// Reporting as its own process beside routing and ingest: the reader
/// who holds a read drafts it, reporting is SIGKILLed and restarted (from
/// its snapshot and the tail), the reader signs, and routing — another
/// process, meeting reporting only on the log — completes the read and
/// pushes her the next study.
#[test]
fn reporting_apart_signs_what_routing_assigned_through_a_sigkill() {
    let (tansu, moto) = (Tansu::start(), Moto::start("unused"));
    let work = tempfile::TempDir::new().unwrap();
    let one_reader = work.path().join("examples");
    meridian_integration_tests::one_reader_examples(&examples(), &one_reader);
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &one_reader, work.path(), &tansu, Some(&moto));
    let (pacs, sre) = (&tokens["acme-pacs"], &tokens["sre"]);
    let routing = cluster.start("routing", None);
    let ingest = cluster.start("ingest", None);
    let reporting = cluster.start("reporting", None);
    let events = |stream: &str| stream_events(Path::new(MERIDIAN), &routing, "us-east", stream, sre);
    let files = tempfile::TempDir::new().unwrap();
    for (n, uid) in ["1.2.826.0.1.3680043.10.543.501", "1.2.826.0.1.3680043.10.543.502"].iter().enumerate() {
        let dir = files.path().join(n.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let file = study_files(&dir, uid, 1);
        let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &file);
        assert!(ok, "{said}");
        complete(&ingest, pacs, uid);
    }
    let assigned = |events: &[serde_json::Value]| -> Vec<String> {
        of_type(events, "StudyAssigned").iter().map(|a| a["payload"]["studyId"].as_str().unwrap().to_owned()).collect()
    };
    let held = wait_until("one study pushed to dr-ana-ortiz", 60, || assigned(&events("routing")).first().cloned());
    let cli = |reporting: &meridian_integration_tests::processes::Service, token: &str, args: &[&str]| {
        let out = Command::new(MERIDIAN)
            .args(args)
            .args(["--region", "us-east", "--endpoint", &format!("http://{}", reporting.grpc()), "--token", token])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let ortiz = tokens["dr-ortiz"].as_str();
    let (ok, said) = cli(&reporting, ortiz, &["report", "draft", &held, "--impression", "No acute findings."]);
    assert!(ok && said.contains("version 1 saved"), "{said}");
    reporting.kill();
    let reporting = cluster.start("reporting", None);
    let (ok, said) = cli(&reporting, ortiz, &["report", "sign", &held, "--read-type", "preliminary"]);
    assert!(ok && said.contains("signed with version 1"), "the draft outlived the kill: {said}");
    let next = wait_until("the read completed and the next study pushed to her", 60, || {
        let events = events("routing");
        let done = of_type(&events, "AssignmentCompleted").iter().any(|c| c["payload"]["studyId"] == held.as_str());
        let next = assigned(&events).into_iter().find(|s| *s != held);
        next.filter(|_| done)
    });
    assert_ne!(next, held);
    let (ok, said) = cli(&reporting, &tokens["acme-admin"], &["report", "show", &held]);
    assert!(ok && said.contains("signed by dr-ana-ortiz") && said.contains("No acute findings."), "{said}");
    let signed = of_type(&events("reporting"), "ReportSigned").len();
    assert_eq!(signed, 1, "one signature on the log");
}

/// Inference as its own process on tansu, reading what ingest (another
/// process) stored on moto's S3: a head CT with a bleed is read once
/// through an abort after its scores were computed, and routing (a third
/// process) raises it to STAT.
#[test]
fn inference_apart_reads_from_s3_once_through_an_abort_and_routing_raises_the_study() {
    let (tansu, moto) = (Tansu::start(), Moto::start("unused"));
    let work = tempfile::TempDir::new().unwrap();
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &examples(), work.path(), &tansu, Some(&moto));
    let (pacs, sre) = (&tokens["acme-pacs"], &tokens["sre"]);
    let routing = cluster.start("routing", None);
    let ingest = cluster.start("ingest", None);
    let mut inference = cluster.start_armed("inference", None, "inference.after_run=abort@1");
    let files = tempfile::TempDir::new().unwrap();
    let uid = "1.2.826.0.1.3680043.10.543.801";
    let slices: Vec<PathBuf> =
        (1..=3).map(|n| meridian_integration_tests::dicom::head_ct_slice(files.path(), uid, n, n == 2)).collect();
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &slices);
    assert!(ok, "{said}");
    complete(&ingest, pacs, uid);
    let died = wait_until("inference aborts after its scores", 60, || inference.exited());
    assert!(!died.success(), "{died}");
    let _inference = cluster.start("inference", None);
    let events = |stream: &str| stream_events(Path::new(MERIDIAN), &routing, "us-east", stream, sre);
    let study = wait_until("routing raised the study to STAT", 90, || {
        let routing = events("routing");
        of_type(&routing, "StudyTriaged")
            .iter()
            .find(|t| t["payload"]["priority"] == "stat")
            .map(|t| t["payload"]["studyId"].as_str().unwrap().to_owned())
    });
    std::thread::sleep(Duration::from_secs(2));
    let outcomes = events("inference");
    let completed = of_type(&outcomes, "AiTriageCompleted");
    assert_eq!(completed.len(), 1, "read once: {outcomes:?}");
    assert_eq!(completed[0]["payload"]["studyId"], study.as_str());
    assert_eq!(completed[0]["payload"]["flagged"], true);
}

/// `meridian serve replicator` for eu-west, its broker not us-east's: what
/// us-east's routing appends on its broker (its readers' registrations)
/// is copied to eu-west's, same events under us-east's topic name, through
/// an abort at its first step's commit and a SIGKILL; in-south shares eu-west's broker, so
/// nothing of it is copied (its topics are already there).
#[test]
fn the_replicator_as_a_process_copies_a_regions_operational_events_to_another_broker_through_a_kill() {
    let (tansu, other) = (Tansu::start(), Tansu::start());
    let work = tempfile::TempDir::new().unwrap();
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &examples(), work.path(), &tansu, None);
    let eu_west = cluster.config.join("regions/eu-west.toml");
    let text = std::fs::read_to_string(&eu_west).unwrap().replace(&tansu.bootstrap(), &other.bootstrap());
    std::fs::write(&eu_west, text).unwrap();
    cluster.on_broker("in-south", &other);

    let routing = cluster.start("routing", None);
    let sre = &tokens["sre"];
    let registered = wait_until("us-east's readers registered", 30, || {
        let events = stream_events(Path::new(MERIDIAN), &routing, "us-east", "routing", sre);
        let registered: Vec<String> =
            of_type(&events, "ReaderRegistered").iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
        (!registered.is_empty()).then_some(registered)
    });
    let copies = |replicator: &meridian_integration_tests::processes::Service| {
        let out = Command::new(MERIDIAN)
            .args(["log", "tail", "--json", "--stream", "routing", "--copies-of", "us-east", "--region", "eu-west"])
            .arg("--endpoint")
            .arg(replicator.grpc())
            .args(["--token", sre])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .collect::<Vec<_>>()
    };
    // Aborted at its first copying step's commit (the first commit is its
    // ConfigurationLoaded), then started again: what that step held is
    // copied from the same positions.
    let mut armed = cluster.start_in("eu-west", "replicator", None, "log.before_commit=abort@2");
    let aborted = wait_until("the armed replicator to abort", 30, || armed.child.try_wait().unwrap());
    assert!(!aborted.success(), "{}", std::fs::read_to_string(&armed.log).unwrap_or_default());
    let replicator = cluster.start_in("eu-west", "replicator", None, "");
    let first = wait_until("the registrations copied to eu-west's broker", 60, || {
        let copied = copies(&replicator);
        registered.iter().all(|id| copied.iter().any(|c| c["event_id"] == id.as_str())).then_some(copied)
    });
    let ids = |copied: &[serde_json::Value]| {
        let mut ids: Vec<String> = copied.iter().map(|c| c["event_id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        ids
    };
    // tansu shows a read_committed reader the records of the aborted
    // transaction (a known gap: Kafka hides them); each is the same event
    // as its committed copy, which a consumer's de-duplication drops.
    for copy in &first {
        let same: Vec<&serde_json::Value> = first.iter().filter(|c| c["event_id"] == copy["event_id"]).collect();
        let what =
            |c: &serde_json::Value| (c["partition"].clone(), c["aggregate_version"].clone(), c["payload"].clone());
        assert!(same.iter().all(|c| what(c) == what(copy)), "{same:?}");
    }
    assert!(first.iter().all(|c| c["topic"] == "meridian.us-east.ops.routing" && c["data_class"] == "ops"));
    // Killed and started again, it goes on from the positions it committed
    // with its copies: each event is there once.
    replicator.kill();
    let replicator = cluster.start_in("eu-west", "replicator", None, "");
    std::thread::sleep(Duration::from_secs(2));
    let again = copies(&replicator);
    assert_eq!(ids(&again), ids(&first), "nothing copied again after the SIGKILL");
    // in-south shares eu-west's broker: its topics are there already, and
    // the replicator said so rather than copy them onto themselves.
    let said = std::fs::read_to_string(&replicator.log).unwrap();
    assert!(said.contains("in-south shares eu-west's Kafka cluster"), "{said}");

    // What the copies are for: eu-west's routing, a process on the other
    // broker, folds them. It knows us-east's readers (us-east writes them)
    // and refuses to change one; a change made in us-east reaches it
    // through the replicator, killed right after and restarted.
    let eu_routing = cluster.start_in("eu-west", "routing", None, "");
    let reader = |process: &meridian_integration_tests::processes::Service, region: &str, args: &[&str]| {
        let out = Command::new(MERIDIAN)
            .arg("reader")
            .args(args)
            .args(["--region", region, "--endpoint", &process.grpc(), "--token", &tokens["dr-ortiz"]])
            .args(["--reader", "dr-ana-ortiz"])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    wait_until("eu-west's routing knows dr-ana-ortiz from us-east's events", 30, || {
        let (ok, said) = reader(&eu_routing, "eu-west", &["show"]);
        (ok && said.contains("dr-ana-ortiz of atlantic-rads sits in us-east") && said.contains(": available,"))
            .then_some(())
    });
    let (ok, said) = reader(&eu_routing, "eu-west", &["availability", "away"]);
    assert!(!ok && said.contains("FailedPrecondition") && said.contains("sits in us-east"), "{said}");
    let (ok, said) = reader(&routing, "us-east", &["availability", "away"]);
    assert!(ok && said.contains(": away,"), "{said}");
    replicator.kill();
    let replicator = cluster.start_in("eu-west", "replicator", None, "");
    wait_until("her availability reaches eu-west", 60, || {
        let (ok, said) = reader(&eu_routing, "eu-west", &["show"]);
        (ok && said.contains(": away,")).then_some(())
    });
    // Each copy folded once: no conflict, whatever crossed twice.
    let (status, summary) = meridian_integration_tests::processes::get(&eu_routing.http(), "/v1/summary", sre);
    assert_eq!(status, 200, "{summary}");
    let worklist = summary["projections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "routing.worklist")
        .unwrap_or_else(|| panic!("{summary}"))
        .clone();
    assert_eq!(worklist["stats"]["conflicts"], 0, "{worklist}");
    assert!(worklist["stats"]["applied"].as_u64().unwrap() >= 3, "{worklist}");
    eu_routing.kill();
    replicator.kill();
    routing.kill();
}

/// `meridian residency report` asking each named region's process, as
/// `token`: its exit code, stdout and stderr.
fn residency(token: &str, regions: &[(&str, String)], args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new(MERIDIAN);
    command.args(["residency", "report", "--token", token]);
    for (region, grpc) in regions {
        command.args(["--endpoint", &format!("{region}={grpc}")]);
    }
    let out = command.args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_residency_report_asks_each_regions_process_and_names_an_object_planted_in_a_bucket() {
    let (tansu, moto) = (Tansu::start(), Moto::start("unused"));
    let work = tempfile::TempDir::new().unwrap();
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &examples(), work.path(), &tansu, Some(&moto));
    let ingest = cluster.start("ingest", None);
    let storage = cluster.start("storage", None);
    let eu_west = cluster.start_in("eu-west", "storage", None, "");
    let files = tempfile::TempDir::new().unwrap();
    let study = "1.2.826.0.1.3680043.10.543.2209";
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &study_files(files.path(), study, 2));
    assert!(ok, "{said}");
    // Each region's process lists its own bucket and reads its own topics.
    let regions = [("us-east", storage.grpc()), ("eu-west", eu_west.grpc())];
    let report = wait_until("acme's two objects surveyed in us-east", 30, || {
        let (code, out, _) = residency(&tokens["sre"], &regions, &["--json"]);
        let report: serde_json::Value = serde_json::from_str(&out).ok()?;
        (code == Some(0) && report["regions"]["us-east"]["phi"]["acme"] == 2).then_some(report)
    });
    assert!(report["regions"]["us-east"]["data_key"][""].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["regions"]["eu-west"], serde_json::json!({}), "{report}");
    assert!(report["violations"].as_array().unwrap().is_empty(), "{report}");
    assert!(!report.to_string().contains(study), "{report}");

    // An acme object written into eu-west's bucket behind the platform's back.
    let key = "phi/acme/0190f4a2-6f1c-8d3e-a000-000000000001/0190f4a2-6f1c-8d3e-a000-000000000002/\
               0190f4a2-6f1c-8d3e-a000-000000000003.5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef.dcm";
    let (status, body) = moto.request("PUT", &format!("/{}/{key}", bucket("eu-west")));
    assert_eq!(status, 200, "{body}");
    let (code, out, err) = residency(&tokens["sre"], &regions, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!("eu-west   VIOLATION phi_outside_home {key}: tenant acme's PHI lives only")),
        "{out}"
    );
    assert!(err.contains("residency: 1 violations, 0 of 2 regions unanswered"), "{err}");
    // A region whose process is gone is named, and the others still reported.
    eu_west.kill();
    let (code, out, err) = residency(&tokens["sre"], &regions, &[]);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains("eu-west   UNANSWERED") && out.contains("us-east   holds 2 data keys, 2 PHI objects of acme"),
        "{out}"
    );
    ingest.kill();
    storage.kill();
}

/// The examples as the end-to-end run needs them: acme on pull, studies
/// complete a second after their last instance, dr-priya-nair (in-south)
/// on shift around the clock (dr-ana-ortiz is, by [`Cluster::new`]).
fn read_across_regions(examples: &Path, to: &Path) {
    meridian_integration_tests::nair_always_on_pull_examples(examples, to);
    let contract = to.join("contracts/acme-atlantic.toml");
    let text = std::fs::read_to_string(&contract).unwrap();
    assert!(text.contains("quiet_period = \"2m\""), "{text}");
    std::fs::write(&contract, text.replace("quiet_period = \"2m\"", "quiet_period = \"1s\"")).unwrap();
}

#[test]
fn a_head_ct_read_across_two_brokers_as_processes_ends_as_in_one_through_sigkills_of_ingest_routing_and_billing() {
    let (tansu, other, moto) = (Tansu::start(), Tansu::start(), Moto::start("unused"));
    let work = tempfile::TempDir::new().unwrap();
    let examples = work.path().join("examples");
    read_across_regions(&self::examples(), &examples);
    let (cluster, tokens) =
        Cluster::new(Path::new(MERIDIAN), &examples, &work.path().join("cluster"), &tansu, Some(&moto));
    // in-south on a broker of its own: what crosses, the replicator copies.
    cluster.on_broker("in-south", &other);
    let ingest = cluster.start("ingest", None);
    let storage = cluster.start("storage", None);
    let inference = cluster.start("inference", None);
    let mut routing = cluster.start("routing", None);
    let reporting = cluster.start("reporting", None);
    let mut billing = cluster.start("billing", None);
    let south = cluster.start_in("in-south", "routing", None, "");
    // Each way a replicator: us-east's studies to in-south, in-south's
    // readers to us-east.
    let replicator = cluster.start_in("in-south", "replicator", None, "");
    let back = cluster.start_in("us-east", "replicator", None, "");
    let sre = &tokens["sre"];
    let cli = |process: &meridian_integration_tests::processes::Service, region: &str, token: &str, args: &[&str]| {
        let out = Command::new(MERIDIAN)
            .args(args)
            .args(["--region", region, "--endpoint", &process.grpc(), "--token", token])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };

    // A two-series head CT, ingest killed between its first three slices
    // and the last two.
    let study_uid = "1.2.826.0.1.3680043.10.543.2233";
    let files = tempfile::TempDir::new().unwrap();
    let slice = |series, n| {
        meridian_integration_tests::dicom::head_ct_series_slice(
            files.path(),
            study_uid,
            series,
            n,
            series == 1 && n == 2,
        )
    };
    let first: Vec<PathBuf> = (1..=3).map(|n| slice(1, n)).collect();
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &first);
    assert!(ok, "{said}");
    ingest.kill();
    let ingest = cluster.start("ingest", None);
    let rest: Vec<PathBuf> = (1..=2).map(|n| slice(2, n)).collect();
    let (ok, said) = storescu(ingest.dicom_port(), "ACME_CT1", "MERIDIAN_ACME", &rest);
    assert!(ok, "{said}");

    // Triaged and raised to STAT; on her worklist in in-south, across the brokers.
    let study = wait_until("the study triaged and raised to STAT", 90, || {
        let events = stream_events(Path::new(MERIDIAN), &routing, "us-east", "routing", sre);
        of_type(&events, "StudyTriaged")
            .into_iter()
            .find(|t| t["payload"]["priority"] == "stat")
            .map(|t| t["payload"]["studyId"].as_str().unwrap().to_owned())
    });
    let nair = &tokens["dr-nair"];
    wait_until("the study on dr-priya-nair's worklist in in-south", 60, || {
        let out = Command::new(MERIDIAN)
            .args(["worklist", "--reader", "dr-priya-nair", "--endpoint", &south.grpc(), "--token", nair])
            .output()
            .unwrap();
        let (ok, said) = (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned());
        (ok && said.lines().any(|l| l.starts_with("us-east") && l.contains(&study) && l.contains("stat"))).then_some(())
    });
    // She claims it at home; routing is killed right after and restarted.
    let (ok, said) = cli(&routing, "us-east", nair, &["claim", &study, "--reader", "dr-priya-nair"]);
    assert!(ok, "{said}");
    routing.kill();
    routing = cluster.start("routing", None);
    // Her preliminary, then billing killed while it charges it.
    let impression = "Acute right frontal haemorrhage.";
    let draft = |token: &str| {
        cli(
            &reporting,
            "us-east",
            token,
            &["report", "draft", &study, "--impression", impression, "--field", "haemorrhage=present"],
        )
    };
    let (ok, said) = wait_until("her draft (reporting folded the claim)", 30, || Some(draft(nair)).filter(|d| d.0));
    assert!(ok, "{said}");
    let (ok, said) = cli(&reporting, "us-east", nair, &["report", "sign", &study, "--read-type", "preliminary"]);
    assert!(ok, "{said}");
    billing.kill();
    billing = cluster.start("billing", None);
    // The final, onshore, by dr-ana-ortiz.
    let ortiz = &tokens["dr-ortiz"];
    let (ok, said) = wait_until("the final read to claim", 30, || {
        let claimed = cli(&routing, "us-east", ortiz, &["claim", &study, "--reader", "dr-ana-ortiz"]);
        claimed.0.then_some(claimed)
    });
    assert!(ok, "{said}");
    let (ok, said) = wait_until("her draft of the final", 30, || Some(draft(ortiz)).filter(|d| d.0));
    assert!(ok, "{said}");
    let (ok, said) = cli(&reporting, "us-east", ortiz, &["report", "sign", &study, "--read-type", "final"]);
    assert!(ok, "{said}");

    // The same final state as in one process: each read queued, claimed,
    // completed and signed once, charged once, whatever was killed.
    let charged = wait_until("both reads charged", 60, || {
        let events = stream_events(Path::new(MERIDIAN), &billing, "us-east", "billing", sre);
        let mine: Vec<serde_json::Value> = of_type(&events, "ChargePosted")
            .into_iter()
            .filter(|c| c["payload"]["studyId"] == study.as_str())
            .cloned()
            .collect();
        (mine.len() >= 2).then_some(mine)
    });
    std::thread::sleep(Duration::from_secs(2));
    let count = |process, stream: &str, kind: &str| {
        let events = stream_events(Path::new(MERIDIAN), process, "us-east", stream, sre);
        let ids: std::collections::BTreeSet<String> = of_type(&events, kind)
            .into_iter()
            .filter(|e| e["payload"]["studyId"] == study.as_str())
            // One final in twenty is drawn for peer review: another read.
            .filter(|e| e["payload"]["readType"] != "peer_review")
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.len()
    };
    assert_eq!(count(&billing, "billing", "ChargePosted"), 2, "{charged:?}");
    for (kind, n) in [("StudyQueued", 2), ("AssignmentClaimed", 2), ("AssignmentCompleted", 2), ("StudyTriaged", 1)] {
        assert_eq!(count(&routing, "routing", kind), n, "{kind}");
    }
    assert_eq!(count(&reporting, "reporting", "ReportSigned"), 2);
    assert_eq!(count(&ingest, "ingest", "StudyCompleted"), 1);
    // And its PHI stayed home.
    let regions = [("us-east", storage.grpc()), ("in-south", south.grpc())];
    let (code, out, err) = residency(sre, &regions, &[]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("us-east   holds") && out.contains("5 PHI objects of acme"), "{out}");
    assert!(out.contains("in-south  holds nothing"), "{out}");
    for service in [ingest, storage, inference, routing, reporting, billing, south, replicator, back] {
        service.kill();
    }
}

/// Retention as processes on tansu and moto: eu-west's storage (its own
/// process, aborted once between deleting and recording) purges a
/// Northwind study three seconds after its final; ingest (another
/// process, with its own copy of the study index) forgets it, so the same
/// instance sent again is stored anew; in-south's storage deletes the
/// derivative from its bucket.
#[test]
fn a_study_purged_by_storage_apart_is_forgotten_by_ingest_and_its_derivative_deleted_where_it_landed() {
    use meridian_events::{StudyId, TenantSecret};
    let (tansu, moto) = (Tansu::start(), Moto::start("unused"));
    let work = tempfile::TempDir::new().unwrap();
    let examples_here = work.path().join("examples");
    meridian_integration_tests::northwind_reads_in_in_south(&examples(), &examples_here, Some("3s"));
    let (cluster, tokens) = Cluster::new(Path::new(MERIDIAN), &examples_here, work.path(), &tansu, Some(&moto));
    // in-south on the same broker: it reads eu-west's storage topic itself,
    // as it would read the replicator's copy of it on a broker of its own.
    cluster.on_broker("in-south", &tansu);
    let ingest = cluster.start_in("eu-west", "ingest", None, "");
    let routing = cluster.start_in("eu-west", "routing", None, "");
    let reporting = cluster.start_in("eu-west", "reporting", None, "");
    let mut storage = cluster.start_in("eu-west", "storage", None, "retention.after_delete=abort");
    let _landed = cluster.start_in("in-south", "storage", None, "");
    let uid = "1.2.826.0.1.3680043.10.543.2252";
    let files = tempfile::TempDir::new().unwrap();
    let instances = study_files(files.path(), uid, 2);
    for file in &instances {
        let modified = Command::new("dcmodify").args(["-nb", "-i", "(0028,0301)=NO"]).arg(file).output().unwrap();
        assert!(modified.status.success(), "{}", String::from_utf8_lossy(&modified.stderr));
    }
    let (ok, said) = storescu(ingest.dicom_port(), "NW_DUB_CT", "MERIDIAN_NW", &instances);
    assert!(ok, "{said}");
    complete(&ingest, &tokens["northwind-pacs"], uid);
    let secret = TenantSecret::new(std::fs::read(work.path().join("secrets/northwind.id-secret")).unwrap()).unwrap();
    let study = StudyId::derive(&secret, uid).as_uuid().to_string();
    let home = format!("phi/northwind/{study}/");
    assert_eq!(keys_in(&moto, &bucket("eu-west"), &home).len(), 2);
    wait_until("the derivative in in-south's bucket", 60, || {
        (keys_in(&moto, &bucket("in-south"), "deid/northwind/").len() == 2).then_some(())
    });
    let byrne = &tokens["dr-byrne"];
    let cli = |process: &meridian_integration_tests::processes::Service, args: &[&str]| {
        let out = Command::new(MERIDIAN)
            .args(args)
            .args(["--region", "eu-west", "--endpoint", &process.grpc(), "--token", byrne])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), said)
    };
    let (ok, said) = wait_until("the study queued and claimed", 60, || {
        Some(cli(&routing, &["claim", &study, "--reader", "dr-ciara-byrne"])).filter(|c| c.0)
    });
    assert!(ok, "{said}");
    let draft = ["report", "draft", &study, "--findings", "No acute finding.", "--impression", "Normal CT."];
    let (ok, said) =
        wait_until("her draft (reporting folded the claim)", 30, || Some(cli(&reporting, &draft)).filter(|d| d.0));
    assert!(ok, "{said}");
    let (ok, said) = cli(&reporting, &["report", "sign", &study, "--read-type", "final"]);
    assert!(ok, "{said}");

    // Due three seconds after the final: storage deletes, shreds and dies.
    let status = wait_until("the armed purge", 60, || storage.child.try_wait().unwrap());
    assert!(!status.success(), "aborted at retention.after_delete: {status}");
    assert!(keys_in(&moto, &bucket("eu-west"), &home).is_empty(), "deleted before the crash");
    assert!(!keys_in(&moto, &bucket("eu-west"), "keys/v1/shredded/").is_empty(), "its data key shredded");
    assert_eq!(keys_in(&moto, &bucket("in-south"), "deid/northwind/").len(), 2, "the derivative waits for the record");
    storage = cluster.start_in("eu-west", "storage", None, "");
    wait_until("the derivative deleted from in-south's bucket", 60, || {
        keys_in(&moto, &bucket("in-south"), "deid/northwind/").is_empty().then_some(())
    });
    let events = stream_events(Path::new(MERIDIAN), &storage, "eu-west", "storage", &tokens["sre"]);
    let purged = of_type(&events, "ObjectPurged");
    assert_eq!(purged.len(), 2, "the derivative's record and the study's, once: {purged:?}");
    assert_eq!(purged[1]["payload"]["objectKey"], home.as_str());
    assert!(found(&storage, &tokens["northwind-pacs"]).is_empty(), "searched at home, the study is gone");

    // Ingest's own index forgot it: the same instance, sent again, is new.
    wait_until("ingest forgot the purged study", 30, || {
        let said = std::fs::read_to_string(&ingest.log).unwrap();
        said.contains("a purged study forgotten in this index").then_some(())
    });
    let (ok, said) = storescu(ingest.dicom_port(), "NW_DUB_CT", "MERIDIAN_NW", &instances[..1]);
    assert!(ok, "{said}");
    assert_eq!(keys_in(&moto, &bucket("eu-west"), &home).len(), 1);
    // Recorded, so indexed again where storage serves it (an instance taken
    // for one already held would be stored and named by no event).
    let pacs = &tokens["northwind-pacs"];
    let sop = format!("{uid}.1.1");
    wait_until("the instance sent again found in eu-west", 30, || found(&storage, pacs).contains(&sop).then_some(()));
}
