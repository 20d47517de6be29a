//! The contract suite: what every [`EventLog`] must do, written once and run
//! against the embedded log and against a real Kafka-API broker.
//!
//! Each check makes its own topics (a random stream name), so checks can
//! share one broker. A check panics with a message on failure: the suite is
//! test code, compiled into the library so the integration tests of every
//! implementation call the same functions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_events::envelope::{Envelope, EventMeta};
use meridian_events::payload::Payload;
use meridian_events::seal::MemoryKeyStore;
use meridian_events::{DataClass, EventId, StudyId, UnixMicros};
use meridian_proto::events::v1 as pb;
use uuid::Uuid;

use crate::dedup::{Conflict, Deduplicator};
use crate::failpoint::{self, Action, FailPoints};
use crate::partitioner::partition_for;
use crate::{Error, EventLog, Outgoing, Position, Record, Step, TopicName, TopicSpec};

/// What a log under test is known to do differently, stated where it is used.
#[derive(Clone, Copy, Debug)]
pub struct Gaps {
    /// tansu hands records of an aborted transaction to `read_committed`
    /// readers. The suite then proves they are harmless instead of absent.
    pub aborted_records_visible: bool,
}

pub async fn topic(log: &dyn EventLog, class: DataClass, partitions: u32) -> TopicName {
    let stream = format!("t{}", Uuid::now_v7().simple());
    let name = TopicName::new("test", class, &stream).unwrap();
    log.ensure_topic(&TopicSpec::new(name.clone(), partitions)).await.unwrap();
    name
}

pub fn meta(aggregate: Uuid, version: u64, event_id: EventId) -> EventMeta {
    EventMeta {
        event_id,
        aggregate_type: "ingest.study".into(),
        aggregate_id: aggregate,
        aggregate_version: version,
        tenant: "acme".into(),
        home_region: "test".into(),
        occurred_at: UnixMicros(1_700_000_000_000_000 + version as i64),
        causation_id: None,
        correlation_id: None,
        traceparent: None,
    }
}

/// An operational event: version `version` of study `aggregate`, marked.
pub fn event(aggregate: Uuid, version: u64, marker: &str) -> Envelope {
    let id = EventId::derived(EventId(aggregate), "contract", version as u32);
    let payload = pb::StudyStarted { study_id: aggregate.to_string(), modality: marker.into(), ..Default::default() };
    Envelope::plain(meta(aggregate, version, id), &payload).unwrap()
}

fn out(topic: &TopicName, e: &Envelope) -> Outgoing {
    Outgoing::new(topic.clone(), e).unwrap()
}

pub async fn read_all(log: &dyn EventLog, from: Vec<Position>, expected: usize) -> Vec<Record> {
    let mut reader = log.reader(from).await.unwrap();
    let mut records = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while records.len() < expected && tokio::time::Instant::now() < deadline {
        records.extend(reader.next_batch(1000, Duration::from_millis(500)).await.unwrap());
    }
    // Anything beyond what was expected must show up too.
    records.extend(reader.next_batch(1000, Duration::from_millis(300)).await.unwrap());
    records
}

/// Reads until a read waits `idle` and gets nothing.
pub async fn read_to_end(log: &dyn EventLog, from: Vec<Position>) -> Vec<Record> {
    let mut reader = log.reader(from).await.unwrap();
    let mut records = Vec::new();
    loop {
        let batch = reader.next_batch(4096, Duration::from_millis(300)).await.unwrap();
        if batch.is_empty() {
            return records;
        }
        records.extend(batch);
    }
}

fn starts(topic: &TopicName, partitions: u32) -> Vec<Position> {
    (0..partitions).map(|p| Position::start(topic.clone(), p)).collect()
}

fn marker(r: &Record) -> String {
    match r.envelope().unwrap().open_plain().unwrap() {
        Payload::StudyStarted(s) => s.modality,
        other => panic!("unexpected payload {other:?}"),
    }
}

/// Records of one key stay in order on the partition the shared
/// partitioner names.
pub async fn per_key_order(log: &dyn EventLog) {
    let t = topic(log, DataClass::Operational, 4).await;
    let keys: Vec<Uuid> = (0..5).map(|_| Uuid::now_v7()).collect();
    for round in 0..4u64 {
        let mut batch = Vec::new();
        for v in 1..=5 {
            for k in &keys {
                batch.push(out(&t, &event(*k, round * 5 + v, "o")));
            }
        }
        let appended = log.append(batch.clone()).await.unwrap();
        assert_eq!(appended.len(), batch.len(), "one position per appended record");
        for (a, o) in appended.iter().zip(&batch) {
            assert_eq!(a.event_id, o.event_id);
            assert_eq!(a.partition, partition_for(&o.key, 4), "partition must come from murmur2(key)");
        }
    }
    let records = read_all(log, starts(&t, 4), 100).await;
    assert_eq!(records.len(), 100);
    let mut seen: BTreeMap<Vec<u8>, Vec<u64>> = BTreeMap::new();
    for r in &records {
        assert_eq!(r.partition, partition_for(&r.key, 4));
        seen.entry(r.key.clone()).or_default().push(r.envelope().unwrap().meta.aggregate_version);
    }
    for versions in seen.values() {
        assert_eq!(versions, &(1..=20).collect::<Vec<_>>(), "per-key order must hold");
    }
}

async fn catch_up(reader: &mut dyn crate::LogReader, idle: Duration) -> Vec<Record> {
    let mut read = Vec::new();
    loop {
        let batch = reader.catch_up_batch(7, idle).await.unwrap();
        if batch.is_empty() {
            return read;
        }
        read.extend(batch);
    }
}

/// A catch-up ends where the log ended when it began, without waiting for
/// a quiet spell: `idle` is an hour here, so a catch-up that waited for one
/// would never end (the runner's timeout fails it). A partition with
/// nothing in it is at its end already; the same reader catches up again
/// later to the records appended since, with a step committed in between
/// (a transaction marker on Kafka, which the end must count).
pub async fn catch_up_ends_at_the_end(log: &dyn EventLog) {
    let t = topic(log, DataClass::Operational, 3).await;
    // Keys on two of the three partitions only.
    let keys: Vec<Uuid> = (0u128..)
        .map(Uuid::from_u128)
        .filter(|k| partition_for(k.hyphenated().to_string().as_bytes(), 3) != 2)
        .take(4)
        .collect();
    let hour = Duration::from_secs(3_600);
    for round in 0..3u64 {
        let batch: Vec<Outgoing> = keys.iter().map(|k| out(&t, &event(*k, round + 1, "c"))).collect();
        log.append(batch).await.unwrap();
    }
    let mut reader = log.reader(starts(&t, 3)).await.unwrap();
    assert_eq!(catch_up(reader.as_mut(), hour).await.len(), 12, "every record appended before the catch-up");
    let more: Vec<Outgoing> = keys.iter().map(|k| out(&t, &event(*k, 4, "c"))).collect();
    let step = Step { consumer: "contract-catch-up".into(), inputs: starts(&t, 3), outputs: more };
    log.commit(step).await.unwrap();
    let again = catch_up(reader.as_mut(), hour).await;
    assert_eq!(again.len(), 4, "the same reader catches up to what came since");
    assert!(again.iter().all(|r| r.envelope().unwrap().meta.aggregate_version == 4));
}

/// A reader waiting at the end of its partitions is given the records
/// appended to them after it began to wait, and nothing of the other
/// partitions of its topic or of other topics, however many commits those
/// see meanwhile.
pub async fn a_waiting_reader_gets_its_own_partitions_only(log: &dyn EventLog) {
    let mine = topic(log, DataClass::Operational, 2).await;
    let other = topic(log, DataClass::Operational, 1).await;
    let on = |partition: u32| -> Vec<Uuid> {
        (0u128..)
            .map(Uuid::from_u128)
            .filter(|k| partition_for(k.hyphenated().to_string().as_bytes(), 2) == partition)
            .take(3)
            .collect()
    };
    let (zero, one) = (on(0), on(1));
    log.append(vec![out(&mine, &event(zero[0], 1, "before"))]).await.unwrap();
    let mut reader = log.reader(vec![Position { topic: mine.clone(), partition: 0, offset: 1 }]).await.unwrap();
    let writes = async {
        for (i, k) in one.iter().enumerate() {
            log.append(vec![out(&other, &event(*k, 1, "elsewhere")), out(&mine, &event(*k, i as u64 + 1, "beside"))])
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        log.append(vec![out(&mine, &event(zero[1], 1, "mine"))]).await.unwrap();
    };
    let (got, ()) = tokio::join!(reader.next_batch(100, Duration::from_secs(20)), writes);
    let got = got.unwrap();
    assert_eq!(got.iter().map(marker).collect::<Vec<_>>(), ["mine"], "only the record on the reader's partition");
    // Kafka counts its transaction markers among the offsets: after, not at, 1.
    assert!(got[0].partition == 0 && got[0].offset >= 1, "{:?}", (got[0].partition, got[0].offset));
    assert!(reader.next_batch(100, Duration::from_millis(300)).await.unwrap().is_empty(), "nothing more");
}

/// A batch is all or nothing, and an event whose data class does not match
/// its topic is refused: built through `Outgoing::new` or by hand.
pub async fn class_mismatch_is_refused_and_append_is_atomic(log: &dyn EventLog) {
    let ops = topic(log, DataClass::Operational, 1).await;
    let keys = MemoryKeyStore::default();
    let study = Uuid::now_v7();
    let phi = Envelope::sealed(
        EventMeta { aggregate_type: "ingest.instances".into(), ..meta(study, 1, EventId::new_at(UnixMicros(1))) },
        &pb::InstanceReceived { patient_id: "MRN-1".into(), ..Default::default() },
        StudyId(study),
        &keys,
    )
    .unwrap();
    assert!(matches!(Outgoing::new(ops.clone(), &phi), Err(Error::ClassMismatch { .. })));

    let good = out(&ops, &event(Uuid::now_v7(), 1, "good"));
    let mut smuggled = good.clone();
    smuggled.value = phi.encode_to_vec();
    smuggled.key = study.hyphenated().to_string().into_bytes();
    let err = log.append(vec![good.clone(), smuggled]).await.unwrap_err();
    assert!(matches!(err, Error::ClassMismatch { .. }), "got {err}");
    assert!(err.to_string().contains("is phi but the topic carries ops"), "{err}");

    let mut garbage = good.clone();
    garbage.value = b"not an envelope".to_vec();
    assert!(matches!(log.append(vec![garbage]).await.unwrap_err(), Error::NotAnEnvelope { .. }));

    // Nothing of the refused batches was written; a later good one is.
    log.append(vec![out(&ops, &event(Uuid::now_v7(), 1, "later"))]).await.unwrap();
    let records = read_all(log, starts(&ops, 1), 1).await;
    assert_eq!(records.iter().map(marker).collect::<Vec<_>>(), vec!["later"]);
}

/// A consumer that dies before committing gets the same records again.
pub async fn redelivery_after_consumer_dies(log: &dyn EventLog) {
    let input = topic(log, DataClass::Operational, 1).await;
    let key = Uuid::now_v7();
    log.append((1..=10).map(|v| out(&input, &event(key, v, &v.to_string()))).collect()).await.unwrap();
    let consumer = format!("c{}", Uuid::now_v7().simple());
    let records = read_all(log, starts(&input, 1), 10).await;
    assert_eq!(records.len(), 10);
    // Processed five, committed them, then died with five more in hand.
    log.commit(Step { consumer: consumer.clone(), outputs: vec![], inputs: vec![records[4].next_position()] })
        .await
        .unwrap();
    let at = log.committed(&consumer, &input, 0).await.unwrap().expect("a committed position");
    assert_eq!(at, records[4].offset + 1);
    let again = read_all(log, vec![Position { topic: input.clone(), partition: 0, offset: at }], 5).await;
    assert_eq!(again.iter().map(marker).collect::<Vec<_>>(), vec!["6", "7", "8", "9", "10"]);
}

/// A step's commit says where each output landed, in order: a consumer
/// folds its own writes from that, never by reading them back.
pub async fn commit_returns_where_outputs_landed(log: &dyn EventLog) {
    let input = topic(log, DataClass::Operational, 1).await;
    let output = topic(log, DataClass::Operational, 4).await;
    log.append(vec![out(&input, &event(Uuid::now_v7(), 1, "in"))]).await.unwrap();
    let records = read_all(log, starts(&input, 1), 1).await;
    let outputs: Vec<Outgoing> = (0..6).map(|i| out(&output, &event(Uuid::now_v7(), 1, &format!("out{i}")))).collect();
    let consumer = format!("c{}", Uuid::now_v7().simple());
    let step = Step { consumer, outputs: outputs.clone(), inputs: vec![records[0].next_position()] };
    let landed = log.commit(step).await.unwrap();
    assert_eq!(landed.len(), outputs.len(), "one position per output");
    let written = read_all(log, starts(&output, 4), 6).await;
    for (o, a) in outputs.iter().zip(&landed) {
        assert_eq!(a.event_id, o.event_id);
        assert_eq!(a.partition, partition_for(&o.key, 4));
        let there =
            written.iter().find(|r| r.partition == a.partition && r.offset == a.offset).expect("a record there");
        assert_eq!(there.value, o.value, "the record at the returned position is the output");
    }
    let positions_only = Step {
        consumer: format!("c{}", Uuid::now_v7().simple()),
        outputs: vec![],
        inputs: vec![records[0].next_position()],
    };
    assert!(log.commit(positions_only).await.unwrap().is_empty());
}

/// A consume-transform-produce step that fails before its commit leaves the
/// input positions where they were. Its outputs are invisible, or, where the
/// broker shows aborted records (tansu), harmless: the retried step writes
/// the same event ids and a de-duplicating consumer applies each once.
pub async fn aborted_step_does_not_advance(log: &dyn EventLog, failpoints: &FailPoints, gaps: Gaps) {
    let input = topic(log, DataClass::Operational, 1).await;
    let output = topic(log, DataClass::Operational, 1).await;
    let key = Uuid::now_v7();
    log.append(vec![out(&input, &event(key, 1, "in"))]).await.unwrap();
    let consumer = format!("c{}", Uuid::now_v7().simple());
    let records = read_all(log, starts(&input, 1), 1).await;
    let derived_key = Uuid::now_v7();
    let step = Step {
        consumer: consumer.clone(),
        outputs: vec![out(&output, &event(derived_key, 1, "derived"))],
        inputs: vec![records[0].next_position()],
    };
    failpoints.set(failpoint::BEFORE_COMMIT, Some(Action::Error));
    let err = log.commit(step.clone()).await.unwrap_err();
    failpoints.set(failpoint::BEFORE_COMMIT, None);
    assert!(matches!(err, Error::Injected { .. }), "got {err}");
    assert_eq!(log.committed(&consumer, &input, 0).await.unwrap(), None, "an aborted step must not move positions");

    let seen_after_abort = read_all(log, starts(&output, 1), 0).await;
    if !gaps.aborted_records_visible {
        assert!(seen_after_abort.is_empty(), "aborted outputs must be invisible");
    }
    // The retry commits; whatever a reader sees, de-duplicated, is one event.
    log.commit(step).await.unwrap();
    assert_eq!(log.committed(&consumer, &input, 0).await.unwrap(), Some(records[0].offset + 1));
    let seen = read_all(log, starts(&output, 1), seen_after_abort.len() + 1).await;
    let mut dedup = Deduplicator::default();
    let applied: Vec<_> =
        seen.iter().filter(|r| dedup.admit(&r.envelope().unwrap(), &r.value).unwrap()).map(marker).collect();
    assert_eq!(applied, vec!["derived"]);
}

/// Committed positions survive a restart of the log (or of the client), and
/// reading resumes there.
pub async fn resume_after_restart<L: EventLog>(first: L, reopen: impl AsyncFnOnce(L) -> L) {
    let input = topic(&first, DataClass::Operational, 2).await;
    let key = Uuid::now_v7();
    first.append((1..=6).map(|v| out(&input, &event(key, v, &v.to_string()))).collect()).await.unwrap();
    let partition = partition_for(key.hyphenated().to_string().as_bytes(), 2);
    let records = read_all(&first, starts(&input, 2), 6).await;
    let consumer = format!("c{}", Uuid::now_v7().simple());
    first
        .commit(Step { consumer: consumer.clone(), outputs: vec![], inputs: vec![records[3].next_position()] })
        .await
        .unwrap();
    let log = reopen(first).await;
    let at = log.committed(&consumer, &input, partition).await.unwrap().expect("position survives restart");
    let rest = read_all(&log, vec![Position { topic: input.clone(), partition, offset: at }], 2).await;
    assert_eq!(rest.iter().map(marker).collect::<Vec<_>>(), vec!["5", "6"]);
    assert_eq!(log.partitions(&input).await.unwrap(), 2);
}

/// A producer that restarts and appends an event again (same id, same
/// bytes) is applied once by every consumer.
pub async fn reappended_event_is_applied_once<L: EventLog>(first: L, reopen: impl AsyncFnOnce(L) -> L) -> L {
    let t = topic(&first, DataClass::Operational, 1).await;
    let key = Uuid::now_v7();
    let e1 = event(key, 1, "one");
    let e2 = event(key, 2, "two");
    first.append(vec![out(&t, &e1), out(&t, &e2)]).await.unwrap();
    let log = reopen(first).await;
    // It did not know whether its append landed, so it sends both again.
    log.append(vec![out(&t, &e1), out(&t, &e2)]).await.unwrap();
    let records = read_all(&log, starts(&t, 1), 4).await;
    assert_eq!(records.len(), 4, "the log keeps both copies");
    for _consumer in 0..2 {
        let mut dedup = Deduplicator::default();
        let applied: Vec<_> =
            records.iter().filter(|r| dedup.admit(&r.envelope().unwrap(), &r.value).unwrap()).map(marker).collect();
        assert_eq!(applied, vec!["one", "two"]);
    }
    log
}

/// The same event id with different content is reported, not dropped.
pub async fn same_id_different_content_is_reported(log: &dyn EventLog) {
    let t = topic(log, DataClass::Operational, 1).await;
    let key = Uuid::now_v7();
    let original = event(key, 1, "original");
    let mut forged = event(key, 1, "forged");
    forged.meta.event_id = original.meta.event_id;
    log.append(vec![out(&t, &original), out(&t, &forged)]).await.unwrap();
    let records = read_all(log, starts(&t, 1), 2).await;
    let mut dedup = Deduplicator::default();
    assert!(dedup.admit(&records[0].envelope().unwrap(), &records[0].value).unwrap());
    let err = dedup.admit(&records[1].envelope().unwrap(), &records[1].value).unwrap_err();
    assert_eq!(err, Conflict::SameIdDifferentContent { event_id: original.meta.event_id });
}

/// An unknown payload type or schema version and a corrupt payload come
/// back as typed errors for the consumer to count and skip.
pub async fn corrupt_or_unknown_payload_is_a_typed_error(log: &dyn EventLog) {
    use meridian_events::envelope::Error as EnvelopeError;
    use meridian_events::payload::Error as PayloadError;
    let t = topic(log, DataClass::Operational, 1).await;
    let mut unknown = event(Uuid::now_v7(), 1, "x");
    unknown.payload_type = "meridian.events.v1.FromTheFuture".into();
    let mut newer = event(Uuid::now_v7(), 1, "x");
    newer.schema_version = 99;
    let mut corrupt = event(Uuid::now_v7(), 1, "x");
    corrupt.body = meridian_events::envelope::Body::Plain(vec![0x0a, 0xff, 0xff, 0xff]);
    log.append(vec![out(&t, &unknown), out(&t, &newer), out(&t, &corrupt)]).await.unwrap();
    let records = read_all(log, starts(&t, 1), 3).await;
    let errors: Vec<_> = records.iter().map(|r| r.envelope().unwrap().open_plain().unwrap_err()).collect();
    assert!(
        matches!(&errors[0], EnvelopeError::Payload { source: PayloadError::UnknownType { .. }, .. }),
        "{:?}",
        errors[0]
    );
    assert!(
        matches!(
            &errors[1],
            EnvelopeError::Payload { source: PayloadError::UnsupportedSchemaVersion { found: 99, .. }, .. }
        ),
        "{:?}",
        errors[1]
    );
    assert!(
        matches!(&errors[2], EnvelopeError::Payload { source: PayloadError::Corrupt { .. }, .. }),
        "{:?}",
        errors[2]
    );
    assert!(errors.iter().all(|e| e.is_unreadable()));
}

/// A topic keeps its partition count: asking for another is an error.
pub async fn partition_count_is_fixed(log: &dyn EventLog) {
    let t = topic(log, DataClass::Operational, 3).await;
    log.ensure_topic(&TopicSpec::new(t.clone(), 3)).await.unwrap();
    let err = log.ensure_topic(&TopicSpec::new(t.clone(), 5)).await.unwrap_err();
    assert!(matches!(err, Error::PartitionCount { existing: 3, requested: 5, .. }), "{err}");
    let unknown = TopicName::new("test", DataClass::Operational, "never-created").unwrap();
    assert!(log.reader(vec![Position::start(unknown, 0)]).await.is_err());
}
