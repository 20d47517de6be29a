//! Figures for the event log (docs/benchmarks.md):
//! - embedded: durable append throughput (256-byte payloads, batches of
//!   100, several appenders so group commit can work), p50/p99 latency of a
//!   single-event durable append, replay throughput (read, and read + fold);
//! - Kafka adapter against tansu on loopback, side by side with a bare
//!   rdkafka producer and consumer in the same run.
//!
//! Usage: cargo run --release -p meridian-integration-tests --bin log-bench [-- --events N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_events::{DataClass, Envelope, EventId};
use meridian_integration_tests::Tansu;
use meridian_log::contract::meta;
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::kafka::{KafkaConfig, KafkaLog};
use meridian_log::partitioner::partition_for;
use meridian_log::{EventLog, Outgoing, Position, TopicName, TopicSpec};
use meridian_projection::{Event, Projection, Projector};
use meridian_proto::events::v1 as pb;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uuid::Uuid;

const PARTITIONS: u32 = 4;

/// An operational event whose payload is 256 bytes.
fn event(aggregate: Uuid, version: u64) -> Envelope {
    let mut payload = pb::StudyStarted {
        study_id: aggregate.to_string(),
        modality: "CT".into(),
        ..Default::default()
    };
    // Pad until the encoded payload is exactly 256 bytes (the length prefix
    // of the padding field grows with it).
    while prost::Message::encoded_len(&payload) < 256 {
        payload.body_part.push('x');
    }
    assert_eq!(prost::Message::encoded_len(&payload), 256);
    Envelope::plain(
        meta(
            aggregate,
            version,
            EventId::derived(EventId(aggregate), "bench", version as u32),
        ),
        &payload,
    )
    .expect("operational payload")
}

fn outgoing(topic: &TopicName, n: usize) -> Vec<Outgoing> {
    let aggregates: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
    (0..n)
        .map(|i| {
            Outgoing::new(
                topic.clone(),
                &event(aggregates[i % 64], (i / 64) as u64 + 1),
            )
            .expect("event")
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

struct Count;
impl Projection for Count {
    type State = u64;
    const NAME: &'static str = "bench.count";
    fn apply(state: u64, _event: &Event<'_>) -> u64 {
        state + 1
    }
}

async fn embedded(events: usize) -> anyhow::Result<()> {
    let dir = tempfile::TempDir::new()?;
    let log = Arc::new(EmbeddedLog::open(
        &dir.path().join("bench.redb"),
        EmbeddedOptions::default(),
    )?);
    let topic = TopicName::new("bench", DataClass::Operational, "append")?;
    log.ensure_topic(&TopicSpec::new(topic.clone(), PARTITIONS))
        .await?;

    // Durable append, batches of 100, 8 appenders; each appender writes its
    // own aggregates, as a service does (versions of one aggregate in order).
    let lanes: Vec<Vec<Vec<Outgoing>>> = (0..8)
        .map(|_| {
            outgoing(&topic, events / 8)
                .chunks(100)
                .map(<[_]>::to_vec)
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in lanes {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for batch in lane {
                log.append(batch).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embedded  durable append, 256 B payloads, batches of 100, 8 appenders: {:>9.0} events/s ({events} events in {secs:.2} s)",
        events as f64 / secs
    );

    // Single-event durable append latency, one appender.
    let singles = outgoing(&topic, 2_000);
    let mut latencies = Vec::with_capacity(singles.len());
    for out in singles {
        let t = Instant::now();
        log.append(vec![out]).await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    println!(
        "embedded  single-event durable append latency: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );

    // Replay: read every record back; then read and fold through a projector.
    let from: Vec<Position> = (0..PARTITIONS)
        .map(|p| Position::start(topic.clone(), p))
        .collect();
    let total = events + 2_000;
    let started = Instant::now();
    let mut reader = log.reader(from.clone()).await?;
    let mut n = 0;
    while n < total {
        n += reader
            .next_batch(8192, Duration::from_millis(200))
            .await?
            .len();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "embedded  replay (read): {:>9.0} events/s ({n} events in {secs:.2} s)",
        n as f64 / secs
    );

    let keys = log.key_store();
    let started = Instant::now();
    let mut projector = Projector::<Count>::new(from);
    meridian_projection::run::catch_up(
        log.as_ref(),
        &keys,
        &mut projector,
        Duration::from_millis(50),
    )
    .await?;
    let secs = started.elapsed().as_secs_f64() - 0.05;
    println!(
        "embedded  replay (read + decode + de-duplicate + fold): {:>9.0} events/s ({} events in {secs:.2} s)",
        *projector.state() as f64 / secs,
        projector.state()
    );
    anyhow::ensure!(
        projector.stats().duplicates == 0,
        "unexpected duplicates: {:?}",
        projector.stats()
    );
    Ok(())
}

async fn kafka(events: usize) -> anyhow::Result<()> {
    let tansu = Tansu::start();
    let log = KafkaLog::connect(KafkaConfig::new(
        tansu.bootstrap(),
        format!("bench-{}", Uuid::now_v7().simple()),
    ))
    .await?;
    let ours = TopicName::new("bench", DataClass::Operational, "kafka-ours")?;
    let bare = TopicName::new("bench", DataClass::Operational, "kafka-bare")?;
    log.ensure_topic(&TopicSpec::new(ours.clone(), PARTITIONS))
        .await?;
    log.ensure_topic(&TopicSpec::new(bare.clone(), PARTITIONS))
        .await?;
    let records = outgoing(&ours, events);

    // Bare rdkafka: an idempotent producer, acks=all, no transactions.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(records.len());
    for r in &records {
        let record = FutureRecord::to(bare.as_str())
            .key(&r.key)
            .payload(&r.value)
            .partition(partition_for(&r.key, PARTITIONS) as i32);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    let bare_produce = events as f64 / started.elapsed().as_secs_f64();

    // Bare rdkafka, transactional: the same guarantee KafkaLog gives (each
    // batch of 1,000 atomic), without Meridian's layer.
    let txn: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "transactional.id",
            format!("bench-bare-{}", Uuid::now_v7().simple()),
        )
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    txn.init_transactions(Duration::from_secs(30))?;
    let started = Instant::now();
    for chunk in records.chunks(1_000) {
        txn.begin_transaction()?;
        let mut deliveries = Vec::with_capacity(chunk.len());
        for r in chunk {
            let record = FutureRecord::to(bare.as_str())
                .key(&r.key)
                .payload(&r.value)
                .partition(partition_for(&r.key, PARTITIONS) as i32);
            deliveries.push(txn.send_result(record).map_err(|(e, _)| e)?);
        }
        for d in deliveries {
            d.await?.map_err(|(e, _)| e)?;
        }
        txn.commit_transaction(Duration::from_secs(30))?;
    }
    let bare_txn_produce = events as f64 / started.elapsed().as_secs_f64();

    // Meridian's KafkaLog: validated, headers, one transaction per batch of 1,000.
    let started = Instant::now();
    for chunk in records.chunks(1_000) {
        log.append(chunk.to_vec()).await?;
    }
    let ours_produce = events as f64 / started.elapsed().as_secs_f64();
    println!(
        "kafka     produce: KafkaLog {ours_produce:>9.0} events/s; bare rdkafka transactional {bare_txn_produce:>9.0} events/s ({:.0}% of it); bare idempotent, no transactions {bare_produce:>9.0} events/s ({:.0}% of it)",
        100.0 * ours_produce / bare_txn_produce,
        100.0 * ours_produce / bare_produce
    );

    // Bare consumer: assign all partitions from offset 0.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.bootstrap())
        .set("group.id", "bench-bare")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(bare.as_str(), p as i32, Offset::Offset(0))?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut n = 0;
    let mut bytes = 0usize;
    while n < 2 * events {
        let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
            .await
            .context("bare consumer stalled")??;
        bytes += m.payload().map_or(0, <[u8]>::len);
        n += 1;
    }
    let bare_consume = n as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box(bytes);

    let from: Vec<Position> = (0..PARTITIONS)
        .map(|p| Position::start(ours.clone(), p))
        .collect();
    let started = Instant::now();
    let mut reader = log.reader(from).await?;
    let mut n = 0;
    while n < events {
        let batch = reader.next_batch(8192, Duration::from_secs(10)).await?;
        anyhow::ensure!(!batch.is_empty(), "KafkaLog reader stalled at {n}");
        n += batch.len();
    }
    let ours_consume = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "kafka     consume: KafkaLog {ours_consume:>9.0} events/s, bare rdkafka {bare_consume:>9.0} events/s ({:.0}% of bare)",
        100.0 * ours_consume / bare_consume
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events = match args.iter().position(|a| a == "--events") {
        Some(i) => args.get(i + 1).context("--events N")?.parse()?,
        None => 200_000,
    };
    embedded(events).await?;
    kafka(events / 2).await?;
    Ok(())
}
