//! The production log on Kafka (rdkafka with its bundled librdkafka).
//!
//! - One transactional, idempotent producer (`acks=all`), owned by a
//!   committer task: each transaction holds every append and step that was
//!   waiting when it began (group commit), so an append is atomic per call,
//!   a consume-transform-produce step commits its outputs and its input
//!   offsets (`send_offsets_to_transaction`) together, and concurrent
//!   callers share one commit round trip.
//! - Readers `assign()` explicit partitions at explicit offsets with
//!   `isolation.level=read_committed`; nothing relies on "latest" offsets or
//!   group rebalancing (tansu answers ListOffsets "latest" wrongly for
//!   multi-record batches, and joins a group slowly).
//! - Partitions are chosen here with the shared murmur2 partitioner, not by
//!   librdkafka, so both logs agree.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use crate::failpoint::{self, FailPoints};
use crate::partitioner::partition_for;
use crate::record::{Appended, Headers, Outgoing, Position, Record, Step};
use crate::topic::{TopicName, TopicSpec};
use crate::{Error, EventLog, LogReader};

const TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct KafkaConfig {
    pub bootstrap_servers: String,
    /// Stable per producing process: a restarted process with the same id
    /// fences its predecessor's open transaction.
    pub transactional_id: String,
    pub replication_factor: i32,
    /// Extra librdkafka settings (TLS, SASL, …).
    pub extra: Vec<(String, String)>,
    pub failpoints: FailPoints,
}

impl KafkaConfig {
    pub fn new(bootstrap_servers: impl Into<String>, transactional_id: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: bootstrap_servers.into(),
            transactional_id: transactional_id.into(),
            replication_factor: 1,
            extra: Vec::new(),
            failpoints: FailPoints::default(),
        }
    }

    fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

fn kafka(operation: &'static str) -> impl Fn(KafkaError) -> Error {
    move |source| Error::Kafka { operation, source }
}

async fn blocking<T: Send + 'static>(
    operation: &'static str,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::KafkaProtocol { operation, reason: e.to_string() })?
}

/// The event log of one region on a Kafka cluster.
pub struct KafkaLog {
    config: KafkaConfig,
    /// To the committer task, which owns the transactional producer.
    jobs: mpsc::Sender<TxnJob>,
    admin: AdminClient<DefaultClientContext>,
    metadata: Arc<BaseConsumer>,
    partitions: RwLock<HashMap<TopicName, u32>>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
    /// Set once a newer process fenced this one's producer: why.
    fenced: Arc<std::sync::OnceLock<String>>,
}

impl KafkaLog {
    pub async fn connect(config: KafkaConfig) -> Result<KafkaLog, Error> {
        let producer = producer(&config).await?;
        let admin = config.client().create().map_err(kafka("create admin client"))?;
        let metadata: BaseConsumer =
            config.client().set("group.id", "meridian-metadata").create().map_err(kafka("create metadata client"))?;
        let (jobs, queue) = mpsc::channel(1024);
        let fenced = Arc::new(std::sync::OnceLock::new());
        tokio::spawn(committer(producer, config.clone(), fenced.clone(), queue));
        Ok(KafkaLog {
            fenced,
            config,
            jobs,
            admin,
            metadata: Arc::new(metadata),
            partitions: RwLock::new(HashMap::new()),
            groups: Mutex::new(HashMap::new()),
        })
    }

    fn group(&self, consumer: &str) -> Result<Arc<BaseConsumer>, Error> {
        let mut groups = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = groups.get(consumer) {
            return Ok(c.clone());
        }
        let c: BaseConsumer = self
            .config
            .client()
            .set("group.id", consumer)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(kafka("create group client"))?;
        let c = Arc::new(c);
        groups.insert(consumer.to_owned(), c.clone());
        Ok(c)
    }

    /// Explicit positions as librdkafka's list, each checked against its
    /// topic's partition count.
    async fn partition_list(
        &self,
        positions: &[Position],
        operation: &'static str,
    ) -> Result<TopicPartitionList, Error> {
        let mut tpl = TopicPartitionList::new();
        for p in positions {
            let n = self.partitions(&p.topic).await?;
            if p.partition >= n {
                return Err(Error::NoSuchPartition {
                    topic: p.topic.to_string(),
                    partition: p.partition,
                    partitions: n,
                });
            }
            tpl.add_partition_offset(p.topic.as_str(), p.partition as i32, Offset::Offset(p.offset as i64))
                .map_err(kafka(operation))?;
        }
        Ok(tpl)
    }

    /// Produces `outputs` (and commits `inputs` for `consumer`) atomically:
    /// validated here, then handed to the committer, which puts every job
    /// waiting at that moment into one Kafka transaction.
    async fn transact(
        &self,
        outputs: Vec<Outgoing>,
        offsets: Option<(String, Vec<Position>)>,
    ) -> Result<Vec<Appended>, Error> {
        for out in &outputs {
            out.validate()?;
        }
        let mut records = Vec::with_capacity(outputs.len());
        for out in outputs {
            let partition = partition_for(&out.key, self.partitions(&out.topic).await?);
            records.push((out, partition));
        }
        let offsets = match offsets {
            Some((consumer, inputs)) => {
                Some((self.group(&consumer)?, self.partition_list(&inputs, "send offsets").await?))
            }
            None => None,
        };
        let (reply, answer) = oneshot::channel();
        self.jobs.send(TxnJob { records, offsets, reply }).await.map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

/// One caller's share of a transaction.
struct TxnJob {
    records: Vec<(Outgoing, u32)>,
    offsets: Option<(Arc<BaseConsumer>, TopicPartitionList)>,
    reply: oneshot::Sender<Result<Vec<Appended>, Error>>,
}

/// Most jobs in one transaction.
const MAX_GROUP: usize = 64;

/// Owns the transactional producer: one transaction at a time, holding
/// every job that was waiting when it began (group commit). A failure
/// aborts the transaction and fails every job in it; callers retry, and
/// de-duplication makes a retried append harmless.
/// What librdkafka said last about its connections (a certificate it
/// cannot verify, a refused login, a broker away): the few latest distinct
/// reasons, so that an operation that timed out can say why ("all brokers
/// are down" alone would not).
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

/// Distinct reasons kept.
const HEARD_KEPT: usize = 4;

impl Heard {
    fn last(&self) -> Option<String> {
        let heard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (!heard.is_empty()).then(|| heard.join("; "))
    }
}

impl ClientContext for Heard {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(%error, reason, "kafka client");
        let mut heard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        heard.retain(|r| r != reason);
        heard.push(reason.to_owned());
        if heard.len() > HEARD_KEPT {
            heard.remove(0);
        }
    }
}

type TransactionalProducer = FutureProducer<Heard>;

/// Makes the transactional producer, ready for its first transaction. A
/// failure says what the client last heard from its brokers.
async fn producer(config: &KafkaConfig) -> Result<TransactionalProducer, Error> {
    let heard = Heard::default();
    let producer: TransactionalProducer = config
        .client()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("transactional.id", &config.transactional_id)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create_with_context(heard.clone())
        .map_err(kafka("create producer"))?;
    let p = producer.clone();
    let initialised =
        blocking("init transactions", move || p.init_transactions(TIMEOUT).map_err(kafka("init transactions"))).await;
    match (initialised, heard.last()) {
        (Ok(()), _) => Ok(producer),
        (Err(Error::Kafka { operation, source }), Some(last)) => {
            Err(Error::KafkaProtocol { operation, reason: format!("{source}; the client last heard: {last}") })
        }
        (Err(e), _) => Err(e),
    }
}

/// Whether librdkafka's fatal error means this producer was fenced: a
/// newer process owns the transactional id.
fn is_fencing(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
}

/// Runs the transactions, one group of waiting appends and steps at a
/// time. After a fatal producer error it makes a new producer (the next
/// group runs on it); once fenced, it refuses every job, since writing
/// again would fight the newer owner of the transactional id.
async fn committer(
    mut producer: TransactionalProducer,
    config: KafkaConfig,
    fenced: Arc<std::sync::OnceLock<String>>,
    mut jobs: mpsc::Receiver<TxnJob>,
) {
    let failpoints = config.failpoints.clone();
    let refusal =
        |reason: &str| Error::Fenced { transactional_id: config.transactional_id.clone(), reason: reason.to_owned() };
    while let Some(first) = jobs.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match jobs.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        if let Some(reason) = fenced.get() {
            for job in group {
                let _ = job.reply.send(Err(refusal(reason)));
            }
            continue;
        }
        let result = transaction(&producer, &failpoints, &group).await;
        let result = match result {
            Ok(appended) => failpoints.hit(failpoint::AFTER_COMMIT).map(|()| appended),
            Err(error) => {
                let p = producer.clone();
                // The error that made us abort is the one to report.
                let _ = blocking("abort transaction", move || {
                    p.abort_transaction(TIMEOUT).map_err(kafka("abort transaction"))
                })
                .await;
                match producer.client().fatal_error() {
                    Some((code, reason)) if is_fencing(code) => {
                        tracing::error!(transactional_id = %config.transactional_id, %reason, "the event log's producer was fenced by a newer process; it writes no more");
                        let _ = fenced.set(reason.clone());
                        Err(refusal(&reason))
                    }
                    Some((code, reason)) => {
                        tracing::error!(?code, %reason, "the event log's producer failed fatally; making a new one");
                        match self::producer(&config).await {
                            Ok(fresh) => producer = fresh,
                            Err(e) => {
                                tracing::error!(error = %e, "a new producer could not be made; the next append tries again")
                            }
                        }
                        Err(error)
                    }
                    None => Err(error),
                }
            }
        };
        match result {
            Ok(appended) => {
                for (job, a) in group.into_iter().zip(appended) {
                    let _ = job.reply.send(Ok(a));
                }
            }
            Err(error) => {
                for job in group {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

async fn transaction(
    producer: &TransactionalProducer,
    failpoints: &FailPoints,
    group: &[TxnJob],
) -> Result<Vec<Vec<Appended>>, Error> {
    let p = producer.clone();
    blocking("begin transaction", move || p.begin_transaction().map_err(kafka("begin transaction"))).await?;
    let mut deliveries = Vec::with_capacity(group.len());
    for job in group {
        let mut pending = Vec::with_capacity(job.records.len());
        for (out, partition) in &job.records {
            let mut headers = OwnedHeaders::new_with_capacity(4);
            for (name, value) in out.headers.iter() {
                headers = headers.insert(Header { key: name, value: Some(value) });
            }
            let record = FutureRecord::to(out.topic.as_str())
                .key(&out.key)
                .payload(&out.value)
                .partition(*partition as i32)
                .headers(headers);
            pending.push(producer.send_result(record).map_err(|(e, _)| kafka("produce")(e))?);
        }
        deliveries.push(pending);
    }
    let mut appended = Vec::with_capacity(group.len());
    for (job, pending) in group.iter().zip(deliveries) {
        let mut a = Vec::with_capacity(pending.len());
        for (delivery, (out, _)) in pending.into_iter().zip(&job.records) {
            let d = delivery
                .await
                .map_err(|_| Error::KafkaProtocol { operation: "produce", reason: "delivery cancelled".into() })?
                .map_err(|(e, _)| kafka("produce")(e))?;
            a.push(Appended { event_id: out.event_id, partition: d.partition as u32, offset: d.offset as u64 });
        }
        appended.push(a);
    }
    for job in group {
        if let Some((consumer, tpl)) = &job.offsets {
            let metadata = consumer.group_metadata().ok_or(Error::KafkaProtocol {
                operation: "send offsets",
                reason: "no consumer group metadata".into(),
            })?;
            let (p, tpl) = (producer.clone(), tpl.clone());
            blocking("send offsets", move || {
                p.send_offsets_to_transaction(&tpl, &metadata, TIMEOUT).map_err(kafka("send offsets"))
            })
            .await?;
        }
    }
    failpoints.hit(failpoint::BEFORE_COMMIT)?;
    let p = producer.clone();
    blocking("commit transaction", move || p.commit_transaction(TIMEOUT).map_err(kafka("commit transaction"))).await?;
    Ok(appended)
}

/// How many in-sync replicas an acknowledged write needs: 2 where there
/// are at least 3 replicas (one may be down, none is lost), else all.
pub fn min_insync_replicas(replication_factor: i32) -> i32 {
    if replication_factor >= 3 { 2 } else { replication_factor.max(1) }
}

impl KafkaLog {
    /// Why this log may no longer write, once a newer process with the same
    /// transactional id fenced it (the process should then stop: its
    /// orchestrator restarts it, or it was the stale one).
    pub fn fenced(&self) -> Option<&str> {
        self.fenced.get().map(String::as_str)
    }

    /// Refuses a topic (one created before, or by someone else) whose
    /// `min.insync.replicas` is below `wanted`: with acks=all, that is
    /// what makes an acknowledged event survive a broker's loss. A broker
    /// that does not describe topic configurations is logged, not refused.
    async fn check_min_insync(&self, topic: &TopicName, wanted: i32) -> Result<(), Error> {
        use rdkafka::admin::ResourceSpecifier;
        let resource = ResourceSpecifier::Topic(topic.as_str());
        let described = self.admin.describe_configs([&resource], &AdminOptions::new()).await;
        let found = match described.as_deref() {
            Ok([Ok(config)]) => config.get("min.insync.replicas").and_then(|e| e.value.clone()),
            other => {
                tracing::warn!(%topic, result = ?other.map(|r| r.len()), "the broker did not describe the topic's configuration; min.insync.replicas not checked");
                return Ok(());
            }
        };
        match found.and_then(|v| v.parse::<i32>().ok()) {
            Some(n) if n < wanted => Err(Error::KafkaProtocol {
                operation: "check topic",
                reason: format!(
                    "{topic} has min.insync.replicas={n}; with replication factor {} it needs at least {wanted} \
                     (kafka-configs --alter --entity-type topics --entity-name {topic} --add-config min.insync.replicas={wanted})",
                    self.config.replication_factor
                ),
            }),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn fatal(&self) -> Option<String> {
        self.fenced().map(|reason| {
            format!("fenced: transactional id {} belongs to a newer process ({reason})", self.config.transactional_id)
        })
    }

    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), Error> {
        let retention = spec.retention_ms.map(|ms| ms.to_string()).unwrap_or_else(|| "-1".to_owned());
        let topic = NewTopic::new(
            spec.name.as_str(),
            spec.partitions as i32,
            TopicReplication::Fixed(self.config.replication_factor),
        )
        .set("retention.ms", &retention);
        let wanted = min_insync_replicas(self.config.replication_factor);
        let min_isr = wanted.to_string();
        let topic = topic.set("min.insync.replicas", &min_isr);
        let results = self.admin.create_topics([&topic], &AdminOptions::new()).await.map_err(kafka("create topic"))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::KafkaProtocol { operation: "create topic", reason: format!("{name}: {code}") });
                }
            }
        }
        self.partitions.write().unwrap_or_else(|p| p.into_inner()).remove(&spec.name);
        let existing = self.partitions(&spec.name).await?;
        if existing != spec.partitions {
            return Err(Error::PartitionCount { topic: spec.name.to_string(), existing, requested: spec.partitions });
        }
        self.check_min_insync(&spec.name, wanted).await
    }

    async fn reachable(&self, within: Duration) -> Result<(), Error> {
        let metadata = self.metadata.clone();
        let bootstrap = self.config.bootstrap_servers.clone();
        blocking("fetch metadata", move || {
            let md = metadata.fetch_metadata(None, within).map_err(kafka("fetch metadata"))?;
            if md.brokers().is_empty() {
                return Err(Error::KafkaProtocol {
                    operation: "fetch metadata",
                    reason: format!("{bootstrap} names no broker"),
                });
            }
            Ok(())
        })
        .await
    }

    async fn partitions(&self, topic: &TopicName) -> Result<u32, Error> {
        if let Some(n) = self.partitions.read().unwrap_or_else(|p| p.into_inner()).get(topic) {
            return Ok(*n);
        }
        let metadata = self.metadata.clone();
        let name = topic.to_string();
        let count = blocking("fetch metadata", move || {
            let md = metadata.fetch_metadata(Some(&name), TIMEOUT).map_err(kafka("fetch metadata"))?;
            let t = md.topics().iter().find(|t| t.name() == name);
            match t {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(Some(t.partitions().len() as u32)),
                _ => Ok(None),
            }
        })
        .await?;
        let count = count.ok_or_else(|| Error::UnknownTopic { topic: topic.to_string() })?;
        self.partitions.write().unwrap_or_else(|p| p.into_inner()).insert(topic.clone(), count);
        Ok(count)
    }

    async fn append(&self, batch: Vec<Outgoing>) -> Result<Vec<Appended>, Error> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.transact(batch, None).await
    }

    async fn reader(&self, from: Vec<Position>) -> Result<Box<dyn LogReader>, Error> {
        let consumer: BaseConsumer = self
            .config
            .client()
            .set("group.id", format!("meridian-reader-{}", uuid::Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("isolation.level", "read_committed")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", "10")
            .create()
            .map_err(kafka("create reader"))?;
        let tpl = self.partition_list(&from, "assign").await?;
        consumer.assign(&tpl).map_err(kafka("assign"))?;
        let mut topics: Vec<TopicName> = from.iter().map(|p| p.topic.clone()).collect();
        topics.dedup();
        let starts = from.iter().map(|p| (p.topic.to_string(), p.partition as i32, p.offset as i64)).collect();
        Ok(Box::new(KafkaReader { consumer: Arc::new(consumer), topics: Arc::new(topics), starts, ends: None }))
    }

    async fn commit(&self, step: Step) -> Result<Vec<Appended>, Error> {
        if !step.outputs.is_empty() {
            return self.transact(step.outputs, Some((step.consumer, step.inputs))).await;
        }
        // Positions alone need no transaction: one offset commit is atomic.
        // (tansu also drops the offsets of a transaction that produced nothing.)
        let tpl = self.partition_list(&step.inputs, "commit offsets").await?;
        let group = self.group(&step.consumer)?;
        let failpoints = self.config.failpoints.clone();
        failpoints.hit(failpoint::BEFORE_COMMIT)?;
        blocking("commit offsets", move || group.commit(&tpl, CommitMode::Sync).map_err(kafka("commit offsets")))
            .await?;
        failpoints.hit(failpoint::AFTER_COMMIT)?;
        Ok(Vec::new())
    }

    async fn committed(&self, consumer: &str, topic: &TopicName, partition: u32) -> Result<Option<u64>, Error> {
        let group = self.group(consumer)?;
        let topic = topic.to_string();
        blocking("committed offsets", move || {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(&topic, partition as i32);
            let offsets = group.committed_offsets(tpl, TIMEOUT).map_err(kafka("committed offsets"))?;
            Ok(offsets.elements().first().and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o as u64),
                _ => None,
            }))
        })
        .await
    }
}

struct KafkaReader {
    consumer: Arc<BaseConsumer>,
    /// Few topics per reader: a scan beats hashing the name per record.
    topics: Arc<Vec<TopicName>>,
    /// Where each assigned partition was read from.
    starts: Vec<(String, i32, i64)>,
    /// Each partition's end when a catch-up began (its last stable
    /// offset: the reader reads committed records only).
    ends: Option<Arc<Vec<i64>>>,
}

/// How long a catch-up read waits before it looks at the positions again.
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

impl KafkaReader {
    /// Whether every partition is read to its end. The consumer's position
    /// moves past transaction markers, so it reaches the end offset itself.
    fn at_ends(consumer: &BaseConsumer, starts: &[(String, i32, i64)], ends: &[i64]) -> Result<bool, Error> {
        let positions = consumer.position().map_err(kafka("position"))?;
        Ok(starts.iter().zip(ends).all(|((topic, partition, start), end)| {
            let at = match positions.find_partition(topic, *partition).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                // Nothing read yet in this partition.
                _ => *start,
            };
            at >= *end
        }))
    }
}

#[async_trait]
impl LogReader for KafkaReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, Error> {
        let (consumer, topics) = (self.consumer.clone(), self.topics.clone());
        // One blocking task fills the batch: the first poll waits, the
        // rest take only what librdkafka already holds. Cheaper than an
        // async wakeup per record.
        blocking("consume", move || {
            let mut out = Vec::new();
            let mut timeout = wait;
            while out.len() < max {
                let message = match consumer.poll(timeout) {
                    None => break,
                    Some(m) => m.map_err(kafka("consume"))?,
                };
                timeout = Duration::ZERO;
                let name = message.topic();
                let Some(topic) = topics.iter().find(|t| t.as_str() == name).cloned() else {
                    continue;
                };
                let headers = message
                    .headers()
                    .map(|hs| Headers::from_pairs(hs.iter().map(|h| (h.key, h.value.unwrap_or_default()))))
                    .unwrap_or_default();
                out.push(Record {
                    topic,
                    partition: message.partition() as u32,
                    offset: message.offset() as u64,
                    key: message.key().unwrap_or_default().to_vec(),
                    value: message.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Ok(out)
        })
        .await
    }

    async fn catch_up_batch(&mut self, max: usize, idle: Duration) -> Result<Vec<Record>, Error> {
        let ends = match &self.ends {
            Some(ends) => ends.clone(),
            None => {
                let (consumer, starts) = (self.consumer.clone(), self.starts.clone());
                let ends = blocking("end offsets", move || {
                    starts
                        .iter()
                        .map(|(topic, partition, _)| {
                            let (_, high) = consumer
                                .fetch_watermarks(topic, *partition, Duration::from_secs(10))
                                .map_err(kafka("end offsets"))?;
                            Ok(high)
                        })
                        .collect::<Result<Vec<i64>, Error>>()
                })
                .await?;
                let ends = Arc::new(ends);
                self.ends = Some(ends.clone());
                ends
            }
        };
        let started = std::time::Instant::now();
        loop {
            let (consumer, starts, at) = (self.consumer.clone(), self.starts.clone(), ends.clone());
            if blocking("position", move || KafkaReader::at_ends(&consumer, &starts, &at)).await? {
                // The next catch-up on this reader asks for the ends again.
                self.ends = None;
                return Ok(Vec::new());
            }
            let batch = self.next_batch(max, CATCH_UP_POLL.min(idle)).await?;
            if !batch.is_empty() {
                return Ok(batch);
            }
            if started.elapsed() >= idle {
                self.ends = None;
                return Ok(batch);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_acknowledged_write_survives_one_broker_where_there_are_three() {
        assert_eq!(super::min_insync_replicas(1), 1);
        assert_eq!(super::min_insync_replicas(2), 2);
        assert_eq!(super::min_insync_replicas(3), 2);
        assert_eq!(super::min_insync_replicas(5), 2);
    }
}
