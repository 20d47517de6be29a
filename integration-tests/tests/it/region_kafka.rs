//! A whole region on a Kafka-API broker (tansu): topics provisioned from the
//! region's `[log]` configuration, data keys in its object store wrapped by
//! its key-encryption key, readers bootstrapped once, the summary
//! projection rebuilt to the same state after a restart.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use meridian_auth::Authenticator;
use meridian_auth::token::generate_ed25519;
use meridian_config::value::DurationSpec;
use meridian_config::{LogConfig, Platform};
use meridian_events::UnixMicros;
use meridian_integration_tests::Tansu;
use meridian_log::EventLog;
use meridian_region::{Region, RegionContext, RegionOptions, RegionService};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

fn kek() -> Option<meridian_objects::keys::Kek> {
    Some(meridian_objects::keys::Kek::from_hex("5a".repeat(32).as_bytes()).unwrap())
}

/// The region with every service this version has, each through its own
/// opener, as `meridian dev` composes them (routing before storage, which
/// asks it who holds a study; ingest and storage on one index).
async fn open(
    name: &str,
    dir: &Path,
    platform: Arc<Platform>,
    verifier: Arc<Authenticator>,
    now: UnixMicros,
) -> Region {
    let options = RegionOptions { key_encryption_key: kek(), process: "test".into(), ..Default::default() };
    let context = Arc::new(RegionContext::open(name, dir, platform, verifier, options).await.unwrap());
    let routing = meridian_routing::serve::RoutingService::open(&context, now).await.unwrap();
    let index = Arc::new(meridian_storage::index::StudyIndex::open(&dir.join("index.redb")).unwrap());
    let ingest = meridian_ingest::serve::IngestService::open(&context, index.clone()).await.unwrap();
    let storage =
        meridian_storage::serve::StorageService::open(&context, index, meridian_storage::serve::IndexFeed::Ingest)
            .await
            .unwrap();
    let services: Vec<Arc<dyn RegionService>> = vec![routing, ingest, storage];
    Region::new(context, services).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_runs_on_kafka_with_topics_provisioned_from_config() {
    let tansu = Tansu::start();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let mut platform = Platform::load(&examples).unwrap();
    platform.regions.get_mut("in-south").unwrap().log = LogConfig::Kafka {
        bootstrap_servers: tansu.bootstrap(),
        partitions: 3,
        replication_factor: 1,
        retention: Some(DurationSpec { seconds: 7 * 86_400 }),
        client: BTreeMap::new(),
        client_secrets_env: BTreeMap::new(),
    };
    let (_, public) = generate_ed25519().unwrap();
    let verifier = Arc::new(Authenticator::new("iss", "aud", &[("k".into(), public.into_bytes())]).unwrap());
    let dir = tempfile::TempDir::new().unwrap();
    let now = UnixMicros(1_790_000_000_000_000);

    // A secret named by an environment variable that is not set: the
    // region does not start, and says which variable it needs.
    let mut unset = platform.clone();
    if let Some(LogConfig::Kafka { client_secrets_env, .. }) = unset.regions.get_mut("in-south").map(|r| &mut r.log) {
        client_secrets_env.insert("sasl.password".into(), "MERIDIAN_TEST_NEVER_SET".into());
    }
    let options = RegionOptions { key_encryption_key: kek(), ..Default::default() };
    let refused = RegionContext::open("in-south", dir.path(), Arc::new(unset), verifier.clone(), options).await;
    let said = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(said.contains("environment variable MERIDIAN_TEST_NEVER_SET"), "{said}");
    // Without its key-encryption key a region on Kafka does not start.
    let no_kek = RegionOptions::default();
    let refused =
        RegionContext::open("in-south", dir.path(), Arc::new(platform.clone()), verifier.clone(), no_kek).await;
    let said = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(said.contains("[keys] key_encryption_key"), "{said}");
    let platform = Arc::new(platform);

    let region = open("in-south", dir.path(), platform.clone(), verifier.clone(), now).await;
    let names: Vec<String> = region.topics().iter().map(|t| t.to_string()).collect();
    assert_eq!(
        names,
        [
            "meridian.in-south.phi.ingest",
            "meridian.in-south.ops.ingest",
            "meridian.in-south.ops.storage",
            "meridian.in-south.ops.audit",
            "meridian.in-south.ops.inference",
            "meridian.in-south.phi.inference",
            "meridian.in-south.ops.reporting",
            "meridian.in-south.phi.reporting",
            "meridian.in-south.ops.routing",
            "meridian.in-south.ops.billing",
        ]
    );
    for topic in region.topics() {
        assert_eq!(region.log.partitions(topic).await.unwrap(), 3, "{topic} has the configured partition count");
    }
    // Ready once its broker and bucket answer and every consumer it
    // started has read to the log's end once.
    assert_eq!(region.probe().await, Vec::<String>::new());
    let lagging = region.context.caught_up("a consumer of the test");
    let reasons = region.probe().await;
    assert_eq!(reasons, ["a consumer of the test: still reading the log to its end since the start"]);
    lagging.mark();
    assert_eq!(region.probe().await, Vec::<String>::new());
    let readers: Vec<String> = region.summary().await.readers.into_iter().collect();
    // The readers who sit in in-south: each region registers its own.
    assert_eq!(readers, ["dr-arjun-rao", "dr-priya-nair"]);
    assert!(!dir.path().join("keys.redb").exists(), "data keys live in the object store, shared by processes");
    assert!(!dir.path().join("log.redb").exists());

    // Retention from config, as the broker reports it; the audit trail's
    // topic is kept forever whatever the log's retention.
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", tansu.bootstrap()).create().unwrap();
    for (topic, kept) in [(region.topics()[0].to_string(), "604800000"), ("meridian.in-south.ops.audit".into(), "-1")] {
        match admin.describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new()).await {
            Ok(results) => {
                let config = results.into_iter().next().unwrap().unwrap();
                let retention = config.get("retention.ms").and_then(|e| e.value.clone());
                assert_eq!(retention.as_deref(), Some(kept), "retention.ms of {topic}");
                let min_isr = config.get("min.insync.replicas").and_then(|e| e.value.clone());
                assert_eq!(min_isr.as_deref(), Some("1"), "min.insync.replicas of {topic} at replication 1");
            }
            // Not every Kafka-API broker answers DescribeConfigs; say so rather than pass silently.
            Err(e) => eprintln!("the broker did not describe topic configs ({e}); retention unchecked"),
        }
    }

    // A restart (new client, same transactional id) registers no one twice,
    // and a rebuild from the broker equals the state it resumed from.
    drop(region);
    let region = open("in-south", dir.path(), platform, verifier, now).await;
    let rebuilt = region.rebuild_summary().await.unwrap().rebuilt;
    // Its two readers' registrations, once each.
    assert_eq!((rebuilt.applied, rebuilt.duplicates, rebuilt.skipped), (2, 0, 0), "{rebuilt:?}");
    assert!(rebuilt.matches_previous);
    // Every projection rebuilds from the broker to what it held.
    let projections =
        ["events.summary", "routing.worklist", "ingest.studies", "storage.assignments", "storage.retention"];
    assert_eq!(region.rebuildable(), projections);
    for name in region.rebuildable() {
        let done = region.rebuild(name).await.unwrap().expect(name);
        assert!(done.rebuilt.matches_previous, "{name}: {done:?}");
    }
    assert!(region.rebuild("no.such.projection").await.unwrap().is_none());

    // Another process takes the region's transactional id: this region's
    // next write fails, and serving stops on its own with the reason (the
    // orchestrator restarts it, or it was the stale copy).
    let newer = meridian_log::kafka::KafkaLog::connect(meridian_log::kafka::KafkaConfig::new(
        tansu.bootstrap(),
        "meridian-in-south-test",
    ))
    .await
    .unwrap();
    let topic = region.topics().iter().find(|t| t.stream() == "routing").unwrap().clone();
    let write = || {
        let event = meridian_log::contract::event(uuid::Uuid::now_v7(), 1, "after the takeover");
        vec![meridian_log::Outgoing::new(topic.clone(), &event).unwrap()]
    };
    assert!(region.log.append(write()).await.is_err(), "a fenced region writes nothing");
    assert!(region.log.fatal().is_some_and(|r| r.contains("fenced")));
    newer.append(write()).await.unwrap();
    let bind = || {
        std::net::TcpListener::bind("127.0.0.1:0").map(|l| {
            l.set_nonblocking(true).unwrap();
            tokio::net::TcpListener::from_std(l).unwrap()
        })
    };
    let listeners = meridian_region::serve::Listeners {
        grpc: bind().unwrap(),
        http: bind().unwrap(),
        dicom: Some(bind().unwrap()),
        mllp: None,
        tls: None,
        room: None,
    };
    let served = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        meridian_region::serve(Arc::new(region), listeners, std::future::pending()),
    )
    .await
    .expect("a region whose log is lost stops without a signal");
    let said = served.unwrap_err().to_string();
    assert!(said.contains("its event log can no longer write") && said.contains("fenced"), "{said}");
}

/// Terminates TLS on `listener` with `tls` and carries each connection to
/// `upstream` in plaintext, as a load balancer in front of a broker would;
/// counts the handshakes it completed.
async fn terminate_tls(
    listener: tokio::net::TcpListener,
    tls: meridian_region::tls::ServerTls,
    upstream: String,
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut incoming = tls.incoming(listener, "kafka");
    while let Some((mut client, _)) = incoming.recv().await {
        handshakes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let upstream = upstream.clone();
        tokio::spawn(async move {
            if let Ok(mut broker) = tokio::net::TcpStream::connect(&upstream).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
            }
        });
    }
}

/// The region reaches its broker over TLS through librdkafka's OpenSSL,
/// configured by `[log] client` as a production region's is
/// (`security.protocol`, `ssl.ca.location`), and does not start against a
/// broker whose certificate it cannot verify. tansu 0.6 cannot serve TLS
/// itself (its `--cert` and `--key` exclude each other in its command
/// line), so TLS is terminated in front of it; the client side is what is
/// under test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_region_reaches_its_broker_over_tls_and_not_one_it_cannot_verify() {
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = front.local_addr().unwrap().port();
    let tansu = Tansu::advertising(front_port);
    let certs = tempfile::TempDir::new().unwrap();
    let broker_certs = meridian_integration_tests::test_certificates(certs.path(), "broker", &[]);
    let stranger = meridian_integration_tests::test_certificates(certs.path(), "stranger", &[]);
    let files = meridian_region::tls::TlsFiles { cert: broker_certs.cert, key: broker_certs.key, client_ca: None };
    let tls = meridian_region::tls::ServerTls::load(files).unwrap();
    let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(terminate_tls(front, tls, tansu.bootstrap(), handshakes.clone()));

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/dev");
    let over_tls = |ca: &Path| {
        let mut platform = Platform::load(&examples).unwrap();
        platform.regions.get_mut("in-south").unwrap().log = LogConfig::Kafka {
            bootstrap_servers: format!("127.0.0.1:{front_port}"),
            partitions: 1,
            replication_factor: 1,
            retention: None,
            client: BTreeMap::from([
                ("security.protocol".into(), "ssl".into()),
                ("ssl.ca.location".into(), ca.display().to_string()),
            ]),
            client_secrets_env: BTreeMap::new(),
        };
        Arc::new(platform)
    };
    let (_, public) = generate_ed25519().unwrap();
    let verifier = Arc::new(Authenticator::new("iss", "aud", &[("k".into(), public.into_bytes())]).unwrap());

    // Trusting another CA: the region does not start, and nothing reached
    // the broker in plaintext.
    let dir = tempfile::TempDir::new().unwrap();
    let options = RegionOptions { key_encryption_key: kek(), process: "test".into(), ..Default::default() };
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        RegionContext::open("in-south", dir.path(), over_tls(&stranger.ca), verifier.clone(), options),
    )
    .await
    .expect("a broker it cannot verify is given up on, not waited for forever");
    let said = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(said.contains("certificate verify failed"), "the refusal says why: {said}");
    assert_eq!(handshakes.load(std::sync::atomic::Ordering::SeqCst), 0, "no handshake completed");

    // Trusting the broker's CA: topics provisioned, readers bootstrapped
    // and read back, every byte through TLS.
    let dir = tempfile::TempDir::new().unwrap();
    let now = UnixMicros(1_790_000_000_000_000);
    let region = open("in-south", dir.path(), over_tls(&broker_certs.ca), verifier, now).await;
    assert_eq!(region.topics().len(), 10);
    let readers = region.summary().await.readers.len();
    assert_eq!(readers, 2, "in-south's readers written at bootstrap, read back over TLS");
    assert!(handshakes.load(std::sync::atomic::Ordering::SeqCst) > 0);
}
