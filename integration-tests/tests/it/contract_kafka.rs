//! The log contract suite against a real Kafka-API broker process (tansu),
//! started on a free loopback port for each test.
//!
//! Known tansu gaps, designed around and named where they matter:
//! (1) a `read_committed` consumer still sees records of an aborted
//!     transaction: `aborted_step_does_not_advance` runs with
//!     `aborted_records_visible` and proves the records harmless instead;
//! (2) ListOffsets "latest" is wrong for multi-record batches: the log only
//!     ever reads from explicit positions;
//! (3) group joins are slow: readers use `assign()`, never `subscribe()`.

use meridian_integration_tests::Tansu;
use meridian_log::contract::{self, Gaps};
use meridian_log::failpoint::FailPoints;
use meridian_log::kafka::{KafkaConfig, KafkaLog};
use uuid::Uuid;

async fn connect(tansu: &Tansu, failpoints: &FailPoints) -> KafkaLog {
    let mut config = KafkaConfig::new(tansu.bootstrap(), format!("meridian-test-{}", Uuid::now_v7().simple()));
    config.failpoints = failpoints.clone();
    KafkaLog::connect(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_per_key_order() {
    let tansu = Tansu::start();
    contract::per_key_order(&connect(&tansu, &FailPoints::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_class_mismatch_is_refused_and_append_is_atomic() {
    let tansu = Tansu::start();
    contract::class_mismatch_is_refused_and_append_is_atomic(&connect(&tansu, &FailPoints::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_redelivery_after_consumer_dies() {
    let tansu = Tansu::start();
    contract::redelivery_after_consumer_dies(&connect(&tansu, &FailPoints::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_aborted_step_does_not_advance() {
    let tansu = Tansu::start();
    let failpoints = FailPoints::default();
    // tansu gap (1): aborted records reach read_committed readers.
    let log = connect(&tansu, &failpoints).await;
    contract::aborted_step_does_not_advance(&log, &failpoints, Gaps { aborted_records_visible: true }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_resume_after_restart() {
    let tansu = Tansu::start();
    let fp = FailPoints::default();
    contract::resume_after_restart(connect(&tansu, &fp).await, async |log| {
        drop(log);
        connect(&tansu, &fp).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_reappended_event_is_applied_once() {
    let tansu = Tansu::start();
    let fp = FailPoints::default();
    contract::reappended_event_is_applied_once(connect(&tansu, &fp).await, async |log| {
        drop(log);
        connect(&tansu, &fp).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_same_id_different_content_is_reported() {
    let tansu = Tansu::start();
    contract::same_id_different_content_is_reported(&connect(&tansu, &FailPoints::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_corrupt_or_unknown_payload_is_a_typed_error() {
    let tansu = Tansu::start();
    contract::corrupt_or_unknown_payload_is_a_typed_error(&connect(&tansu, &FailPoints::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_partition_count_is_fixed() {
    let tansu = Tansu::start();
    contract::partition_count_is_fixed(&connect(&tansu, &FailPoints::default()).await).await;
}

/// A second process with the same transactional id fences the first: the
/// first's next append fails and says it was fenced (no zombie writes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_fenced_producer_says_so_and_writes_nothing() {
    use meridian_events::DataClass;
    use meridian_log::EventLog;
    let tansu = Tansu::start();
    let id = format!("meridian-test-{}", Uuid::now_v7().simple());
    let first = KafkaLog::connect(KafkaConfig::new(tansu.bootstrap(), id.clone())).await.unwrap();
    let t = contract::topic(&first, DataClass::Operational, 2).await;
    let one = |marker: &str| {
        vec![meridian_log::Outgoing::new(t.clone(), &contract::event(Uuid::now_v7(), 1, marker)).unwrap()]
    };
    first.append(one("before")).await.unwrap();
    let second = KafkaLog::connect(KafkaConfig::new(tansu.bootstrap(), id)).await.unwrap();
    assert!(first.append(one("zombie")).await.is_err(), "the fenced process's write fails");
    let again = first.append(one("zombie again")).await.unwrap_err();
    assert!(matches!(again, meridian_log::Error::Fenced { .. }), "{again}");
    assert!(again.to_string().contains("restart this one"), "{again}");
    assert!(first.fenced().is_some());
    second.append(one("after")).await.unwrap();
    assert!(second.fenced().is_none(), "the newer owner writes on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_commit_returns_where_outputs_landed() {
    let tansu = Tansu::start();
    contract::commit_returns_where_outputs_landed(&connect(&tansu, &FailPoints::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_catch_up_ends_at_the_end() {
    let tansu = Tansu::start();
    contract::catch_up_ends_at_the_end(&connect(&tansu, &FailPoints::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_a_waiting_reader_gets_its_own_partitions_only() {
    let tansu = Tansu::start();
    contract::a_waiting_reader_gets_its_own_partitions_only(&connect(&tansu, &FailPoints::default()).await).await;
}
