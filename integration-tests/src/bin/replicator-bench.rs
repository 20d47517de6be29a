//! Figures for the replicator (docs/benchmarks.md, "Replication"):
//! events/s of `Replication::pass` copying a region's routing topic
//! - between two embedded logs (what `meridian dev` does), and
//! - between two tansu brokers on loopback (what `meridian serve
//!   replicator` does), side by side with a bare rdkafka loop copying the
//!   same records in the same run: a consumer from offset 0, an idempotent
//!   producer (no transactions, no per-record check, no positions kept).
//!
//! Usage: cargo run --release -p meridian-integration-tests --bin replicator-bench [-- --events N]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use meridian_events::{DataClass, Envelope, EventId};
use meridian_integration_tests::Tansu;
use meridian_log::contract::meta;
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::kafka::{KafkaConfig, KafkaLog};
use meridian_log::{EventLog, Outgoing, TopicName, TopicSpec};
use meridian_proto::events::v1 as pb;
use meridian_replicator::app::Replication;
use meridian_replicator::domain::Route;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use uuid::Uuid;

const PARTITIONS: u32 = 2;

/// An operational routing event of about 256 bytes of payload.
fn event(aggregate: Uuid, version: u64) -> Envelope {
    let mut payload = pb::StudyAssigned { study_id: aggregate.to_string(), ..Default::default() };
    while prost::Message::encoded_len(&payload) < 256 {
        payload.reader_id.push('x');
    }
    let meta = meta(aggregate, version, EventId::derived(EventId(aggregate), "bench", version as u32));
    let meta = meridian_events::EventMeta { aggregate_type: "routing.study".into(), ..meta };
    Envelope::plain(meta, &payload).expect("operational payload")
}

async fn fill(source: &dyn EventLog, topic: &TopicName, events: usize) -> anyhow::Result<()> {
    let aggregates: Vec<Uuid> = (0..64).map(|_| Uuid::now_v7()).collect();
    let records: Vec<Outgoing> = (0..events)
        .map(|i| Outgoing::new(topic.clone(), &event(aggregates[i % 64], (i / 64) as u64 + 1)))
        .collect::<Result<_, _>>()?;
    for chunk in records.chunks(1_000) {
        source.append(chunk.to_vec()).await?;
    }
    Ok(())
}

fn route() -> Route {
    Route { source: "us-east".into(), destination: "in-south".into(), because: Vec::new() }
}

/// Passes until every record crossed; a pass ends once a read stays empty
/// 50 ms, so the time holds at most one such wait.
async fn copy_all(replication: &Replication, events: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut copied = 0;
    while copied < events as u64 {
        copied += replication.pass(512, Duration::from_millis(50)).await?.records;
    }
    anyhow::ensure!(copied as usize == events, "copied {copied} of {events}");
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

async fn bare(from: &str, to: &str, topic: &str, events: usize) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", from)
        .set("group.id", format!("bench-bare-{}", Uuid::now_v7().simple()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", to)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let copy = format!("{topic}.bare");
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(events);
    while deliveries.len() < events {
        let m = consumer.recv().await?;
        let mut headers = OwnedHeaders::new_with_capacity(4);
        if let Some(h) = m.headers() {
            for header in h.iter() {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let record = FutureRecord::to(&copy)
            .key(m.key().unwrap_or_default())
            .payload(m.payload().unwrap_or_default())
            .partition(m.partition())
            .headers(headers);
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for d in deliveries {
        d.await?.map_err(|(e, _)| e)?;
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let events = match args.iter().position(|a| a == "--events") {
        Some(i) => args.get(i + 1).context("--events N")?.parse()?,
        None => 20_000,
    };
    let topic = TopicName::new("us-east", DataClass::Operational, "routing")?;
    let mut embedded = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::TempDir::new()?;
        let source: Arc<dyn EventLog> =
            Arc::new(EmbeddedLog::open(&dir.path().join("us-east.redb"), EmbeddedOptions::default())?);
        let destination: Arc<dyn EventLog> =
            Arc::new(EmbeddedLog::open(&dir.path().join("in-south.redb"), EmbeddedOptions::default())?);
        for t in meridian_replicator::domain::source_topics("us-east")? {
            source.ensure_topic(&TopicSpec::new(t, PARTITIONS)).await?;
        }
        fill(source.as_ref(), &topic, events).await?;
        let replication = Replication::open(route(), source, destination).await?;
        embedded.push(copy_all(&replication, events).await?);
    }
    println!("embedded  ({events} events of ~256 B payload, median of 3 runs)");
    println!("embedded  Replication::pass, batches of 512: {:>9.0} events/s", median(embedded));

    let (a, b) = (Tansu::start(), Tansu::start());
    let (mut replicated, mut bare_loop) = (Vec::new(), Vec::new());
    for round in 0..3 {
        let id = |what: &str| format!("bench-{what}-{round}-{}", Uuid::now_v7().simple());
        let source: Arc<dyn EventLog> = Arc::new(KafkaLog::connect(KafkaConfig::new(a.bootstrap(), id("a"))).await?);
        let destination: Arc<dyn EventLog> =
            Arc::new(KafkaLog::connect(KafkaConfig::new(b.bootstrap(), id("b"))).await?);
        // Each round copies from a region of its own, so from offset 0.
        let region = format!("r{round}");
        let topic = TopicName::new(&region, DataClass::Operational, "routing")?;
        for t in meridian_replicator::domain::source_topics(&region)? {
            source.ensure_topic(&TopicSpec::new(t, PARTITIONS)).await?;
        }
        fill(source.as_ref(), &topic, events).await?;
        bare_loop.push(bare(&a.bootstrap(), &b.bootstrap(), topic.as_str(), events).await?);
        let route = Route { source: region, destination: "in-south".into(), because: Vec::new() };
        let replication = Replication::open(route, source, destination).await?;
        replicated.push(copy_all(&replication, events).await?);
    }
    let (ours, bare) = (median(replicated), median(bare_loop));
    println!("kafka     (two tansu brokers on loopback, {events} events per run, median of 3 interleaved runs)");
    println!(
        "kafka     Replication::pass (checked, one transaction of 512 with its positions): {ours:>8.0} events/s; \
         bare consume-produce loop (idempotent, no transactions, no check): {bare:>8.0} ({:.0}%)",
        100.0 * ours / bare
    );
    Ok(())
}
