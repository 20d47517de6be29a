//! The log contract suite against the embedded log.

use meridian_log::contract::{self, Gaps};
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::failpoint::FailPoints;
use tempfile::TempDir;

fn open(dir: &TempDir, failpoints: &FailPoints) -> EmbeddedLog {
    EmbeddedLog::open(&dir.path().join("region.redb"), EmbeddedOptions { failpoints: failpoints.clone() }).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_per_key_order() {
    let dir = TempDir::new().unwrap();
    contract::per_key_order(&open(&dir, &FailPoints::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_class_mismatch_is_refused_and_append_is_atomic() {
    let dir = TempDir::new().unwrap();
    contract::class_mismatch_is_refused_and_append_is_atomic(&open(&dir, &FailPoints::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_redelivery_after_consumer_dies() {
    let dir = TempDir::new().unwrap();
    contract::redelivery_after_consumer_dies(&open(&dir, &FailPoints::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_aborted_step_does_not_advance() {
    let dir = TempDir::new().unwrap();
    let failpoints = FailPoints::default();
    // The embedded log never shows an uncommitted write.
    contract::aborted_step_does_not_advance(
        &open(&dir, &failpoints),
        &failpoints,
        Gaps { aborted_records_visible: false },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_resume_after_restart() {
    let dir = TempDir::new().unwrap();
    let fp = FailPoints::default();
    contract::resume_after_restart(open(&dir, &fp), async |log| {
        log.close().await;
        open(&dir, &fp)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_reappended_event_is_applied_once() {
    let dir = TempDir::new().unwrap();
    let fp = FailPoints::default();
    contract::reappended_event_is_applied_once(open(&dir, &fp), async |log| {
        log.close().await;
        open(&dir, &fp)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_same_id_different_content_is_reported() {
    let dir = TempDir::new().unwrap();
    contract::same_id_different_content_is_reported(&open(&dir, &FailPoints::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_corrupt_or_unknown_payload_is_a_typed_error() {
    let dir = TempDir::new().unwrap();
    contract::corrupt_or_unknown_payload_is_a_typed_error(&open(&dir, &FailPoints::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_partition_count_is_fixed() {
    let dir = TempDir::new().unwrap();
    contract::partition_count_is_fixed(&open(&dir, &FailPoints::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_commit_returns_where_outputs_landed() {
    let dir = TempDir::new().unwrap();
    contract::commit_returns_where_outputs_landed(&open(&dir, &FailPoints::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_catch_up_ends_at_the_end() {
    let dir = TempDir::new().unwrap();
    contract::catch_up_ends_at_the_end(&open(&dir, &FailPoints::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_waiting_reader_gets_its_own_partitions_only() {
    let dir = TempDir::new().unwrap();
    contract::a_waiting_reader_gets_its_own_partitions_only(&open(&dir, &FailPoints::default())).await;
}
