//! Figures for the event log (docs/benchmarks.md):
//! - embedded: durable append throughput (256-byte payloads, batches of
//!   100, several appenders so group commit can work), p50/p99 latency of a
//!   single-event durable append, replay throughput (read, and read + fold);
//! - Kafka adapter against tansu on loopback, side by side with a bare
//!   rdkafka producer and consumer in the same run.
//!
//! Usage: cargo run --release -p meridian-integration-tests --bin log-bench [-- --events N]

use std::collections::BTreeMap;
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
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uuid::Uuid;

const PARTITIONS: u32 = 4;

/// An operational event whose payload is 256 bytes.
fn event(aggregate: Uuid, version: u64) -> Envelope {
    let mut payload = pb::StudyStarted { study_id: aggregate.to_string(), modality: "CT".into(), ..Default::default() };
    // Pad until the encoded payload is exactly 256 bytes (the length prefix
    // of the padding field grows with it).
    while prost::Message::encoded_len(&payload) < 256 {
        payload.body_part.push('x');
    }
    assert_eq!(prost::Message::encoded_len(&payload), 256);
    Envelope::plain(meta(aggregate, version, EventId::derived(EventId(aggregate), "bench", version as u32)), &payload)
        .expect("operational payload")
}

fn outgoing(topic: &TopicName, n: usize) -> Vec<Outgoing> {
    let aggregates: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
    (0..n)
        .map(|i| Outgoing::new(topic.clone(), &event(aggregates[i % 64], (i / 64) as u64 + 1)).expect("event"))
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

/// One round of the embedded log's figures.
struct EmbeddedFigures {
    append: f64,
    p50_ms: f64,
    p99_ms: f64,
    replay_read: f64,
    replay_fold: f64,
}

async fn embedded(events: usize) -> anyhow::Result<EmbeddedFigures> {
    let dir = tempfile::TempDir::new()?;
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("bench.redb"), EmbeddedOptions::default())?);
    let topic = TopicName::new("bench", DataClass::Operational, "append")?;
    log.ensure_topic(&TopicSpec::new(topic.clone(), PARTITIONS)).await?;

    // Durable append, batches of 100, 8 appenders; each appender writes its
    // own aggregates, as a service does (versions of one aggregate in order).
    let lanes: Vec<Vec<Vec<Outgoing>>> =
        (0..8).map(|_| outgoing(&topic, events / 8).chunks(100).map(<[_]>::to_vec).collect()).collect();
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
    let append = events as f64 / started.elapsed().as_secs_f64();

    // Single-event durable append latency, one appender.
    let singles = outgoing(&topic, 2_000);
    let mut latencies = Vec::with_capacity(singles.len());
    for out in singles {
        let t = Instant::now();
        log.append(vec![out]).await?;
        latencies.push(t.elapsed());
    }
    latencies.sort();
    let p50_ms = percentile(&latencies, 0.50).as_secs_f64() * 1e3;
    let p99_ms = percentile(&latencies, 0.99).as_secs_f64() * 1e3;

    // Replay: read every record back; then read and fold through a projector.
    let from: Vec<Position> = (0..PARTITIONS).map(|p| Position::start(topic.clone(), p)).collect();
    let total = events + 2_000;
    let started = Instant::now();
    let mut reader = log.reader(from.clone()).await?;
    let mut n = 0;
    while n < total {
        n += reader.next_batch(8192, Duration::from_millis(200)).await?.len();
    }
    let replay_read = n as f64 / started.elapsed().as_secs_f64();

    let keys = log.key_store();
    let started = Instant::now();
    let mut projector = Projector::<Count>::new(from);
    meridian_projection::run::catch_up(log.as_ref(), &keys, &mut projector, Duration::from_millis(50)).await?;
    // The last read waits 50 ms for more before deciding it has caught up.
    let secs = started.elapsed().as_secs_f64() - 0.05;
    anyhow::ensure!(projector.stats().duplicates == 0, "unexpected duplicates: {:?}", projector.stats());
    anyhow::ensure!(*projector.state() as usize == total, "folded {} of {total}", projector.state());
    Ok(EmbeddedFigures { append, p50_ms, p99_ms, replay_read, replay_fold: total as f64 / secs })
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// A bare rdkafka producer (idempotent, acks=all), pipelined; with
/// `transactional`, one transaction per 1,000 records, like one KafkaLog append.
async fn bare_produce(
    bootstrap: &str,
    topic: &TopicName,
    records: &[Outgoing],
    transactional: bool,
) -> anyhow::Result<f64> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000");
    if transactional {
        config.set("transactional.id", format!("bench-bare-{}", Uuid::now_v7().simple()));
    }
    let producer: FutureProducer = config.create()?;
    if transactional {
        producer.init_transactions(Duration::from_secs(30))?;
    }
    let chunk = if transactional { 1_000 } else { records.len() };
    let started = Instant::now();
    for batch in records.chunks(chunk) {
        if transactional {
            producer.begin_transaction()?;
        }
        let mut deliveries = Vec::with_capacity(batch.len());
        for r in batch {
            // The same record KafkaLog sends: key, value and headers.
            let mut headers = OwnedHeaders::new_with_capacity(4);
            for (name, value) in r.headers.iter() {
                headers = headers.insert(Header { key: name, value: Some(value) });
            }
            let record = FutureRecord::to(topic.as_str())
                .key(&r.key)
                .payload(&r.value)
                .partition(partition_for(&r.key, PARTITIONS) as i32)
                .headers(headers);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for d in deliveries {
            d.await?.map_err(|(e, _)| e)?;
        }
        if transactional {
            producer.commit_transaction(Duration::from_secs(30))?;
        }
    }
    Ok(records.len() as f64 / started.elapsed().as_secs_f64())
}

/// KafkaLog with `appenders` concurrent appenders of 1,000-event batches.
async fn ours_produce(log: &Arc<KafkaLog>, topic: &TopicName, events: usize, appenders: usize) -> anyhow::Result<f64> {
    let lanes: Vec<Vec<Outgoing>> = (0..appenders).map(|_| outgoing(topic, events / appenders)).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for lane in lanes {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for chunk in lane.chunks(1_000) {
                log.append(chunk.to_vec()).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

/// A bare rdkafka consumer over every partition from offset 0; `owned`
/// takes ownership of each record (`detach`), as a consumer that keeps
/// records past the next poll must; otherwise it only looks at the payload.
async fn bare_consume(bootstrap: &str, topic: &TopicName, n: usize, owned: bool) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("bench-{}", Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic.as_str(), p as i32, Offset::Offset(0))?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let (mut bytes, mut kept) = (0usize, Vec::new());
    for _ in 0..n {
        let m =
            tokio::time::timeout(Duration::from_secs(10), consumer.recv()).await.context("bare consumer stalled")??;
        if owned {
            kept.push(m.detach());
        } else {
            bytes += m.payload().map_or(0, <[u8]>::len);
        }
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box((bytes, kept.len()));
    Ok(rate)
}

async fn ours_consume(log: &KafkaLog, topic: &TopicName, n: usize) -> anyhow::Result<f64> {
    let from: Vec<Position> = (0..PARTITIONS).map(|p| Position::start(topic.clone(), p)).collect();
    let started = Instant::now();
    let mut reader = log.reader(from).await?;
    let mut got = 0;
    while got < n {
        let batch = reader.next_batch(8192, Duration::from_secs(10)).await?;
        anyhow::ensure!(!batch.is_empty(), "KafkaLog reader stalled at {got}");
        got += batch.len();
    }
    Ok(got as f64 / started.elapsed().as_secs_f64())
}

/// Each comparison runs `rounds` times, ours and bare interleaved on fresh
/// topics, and prints the medians: the broker shares the two cores with
/// the bench, so single runs vary by a factor of two.
async fn kafka(events: usize, rounds: usize) -> anyhow::Result<()> {
    let tansu = Tansu::start();
    let bootstrap = tansu.bootstrap();
    let log =
        Arc::new(KafkaLog::connect(KafkaConfig::new(&bootstrap, format!("bench-{}", Uuid::now_v7().simple()))).await?);
    let mut r: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        let ours = TopicName::new("bench", DataClass::Operational, &format!("kafka-ours-{round}"))?;
        let bare = TopicName::new("bench", DataClass::Operational, &format!("kafka-bare-{round}"))?;
        log.ensure_topic(&TopicSpec::new(ours.clone(), PARTITIONS)).await?;
        log.ensure_topic(&TopicSpec::new(bare.clone(), PARTITIONS)).await?;
        let records = outgoing(&bare, events);
        r.entry("bare idempotent").or_default().push(bare_produce(&bootstrap, &bare, &records, false).await?);
        r.entry("ours 8 appenders").or_default().push(ours_produce(&log, &ours, events, 8).await?);
        r.entry("bare transactional").or_default().push(bare_produce(&bootstrap, &bare, &records, true).await?);
        r.entry("ours 1 appender").or_default().push(ours_produce(&log, &ours, events, 1).await?);
        r.entry("consume ours").or_default().push(ours_consume(&log, &ours, 2 * events).await?);
        r.entry("consume bare owned").or_default().push(bare_consume(&bootstrap, &bare, 2 * events, true).await?);
        r.entry("consume bare borrowed").or_default().push(bare_consume(&bootstrap, &bare, 2 * events, false).await?);
    }
    let m = |k: &str| median(r[k].clone());
    println!(
        "kafka     (tansu on loopback, {events} events of 256 B payload per run, median of {rounds} interleaved runs)"
    );
    println!(
        "kafka     produce, 8 appenders x 1,000-event appends: KafkaLog {:>8.0} events/s; bare idempotent producer, no transactions {:>8.0} ({:.0}%)",
        m("ours 8 appenders"),
        m("bare idempotent"),
        100.0 * m("ours 8 appenders") / m("bare idempotent")
    );
    println!(
        "kafka     produce, 1 appender x 1,000-event appends:  KafkaLog {:>8.0} events/s; bare transactional producer, 1,000 per transaction {:>8.0} ({:.0}%)",
        m("ours 1 appender"),
        m("bare transactional"),
        100.0 * m("ours 1 appender") / m("bare transactional")
    );
    println!(
        "kafka     consume: KafkaLog reader {:>8.0} events/s; bare consumer taking ownership {:>8.0} ({:.0}%); bare consumer borrowing only {:>8.0} ({:.0}%)",
        m("consume ours"),
        m("consume bare owned"),
        100.0 * m("consume ours") / m("consume bare owned"),
        m("consume bare borrowed"),
        100.0 * m("consume ours") / m("consume bare borrowed")
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
    let mut rounds = Vec::new();
    for _ in 0..3 {
        rounds.push(embedded(events).await?);
    }
    let m = |f: fn(&EmbeddedFigures) -> f64| median(rounds.iter().map(f).collect());
    println!("embedded  ({events} events of 256 B payload per run, median of 3 runs)");
    println!("embedded  durable append, batches of 100, 8 appenders: {:>9.0} events/s", m(|f| f.append));
    println!(
        "embedded  single-event durable append latency: p50 {:.3} ms, p99 {:.3} ms",
        m(|f| f.p50_ms),
        m(|f| f.p99_ms)
    );
    println!("embedded  replay, read: {:>9.0} events/s", m(|f| f.replay_read));
    println!(
        "embedded  replay, read + decode + de-duplicate + fold (Projector): {:>9.0} events/s",
        m(|f| f.replay_fold)
    );
    kafka(events / 2, 3).await?;
    Ok(())
}
