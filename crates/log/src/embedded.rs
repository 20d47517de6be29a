//! The embedded log: durable, single node, partitioned, on redb.
//!
//! One writer thread owns every write. It takes whatever appends and commits
//! are waiting (group commit), writes them in one redb transaction, commits
//! with `Durability::Immediate` (fsync), and only then acknowledges. A crash
//! before the commit loses the whole group and acknowledges nothing; after
//! it, everything in the group is there. Readers use redb read transactions
//! (snapshots) and are woken by a watch channel after each commit, which
//! carries every partition's next offset: a reader reads only when one of
//! its own partitions has grown, so a commit to one topic does not send
//! every reader of the region to the file.
//!
//! redb locks its file to one process: tools talk to the running process,
//! never to the file.
//!
//! The region's data-key table lives in the same database
//! ([`EmbeddedKeyStore`]), so a region is one file to back up.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use meridian_events::StudyId;
use meridian_events::seal::{self, DataKey, DataKeyId, KeyState, KeyStore};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use crate::failpoint::{self, FailPoints};
use crate::partitioner::partition_for;
use crate::record::{Appended, Headers, Outgoing, Position, Record, Step};
use crate::topic::{TopicName, TopicSpec};
use crate::{Error, EventLog, LogReader};

/// name → (topic number, partitions, retention ms or 0 for forever)
const TOPICS: TableDefinition<&str, (u32, u32, u64)> = TableDefinition::new("topics");
/// (topic number << 96 | partition << 64 | offset) → encoded record
const RECORDS: TableDefinition<u128, &[u8]> = TableDefinition::new("records");
/// (consumer, topic, partition) → next offset to read
const POSITIONS: TableDefinition<(&str, &str, u32), u64> = TableDefinition::new("positions");
/// data key id → study id (16 bytes) + key (32 bytes); study id alone once shredded
const DATA_KEYS: TableDefinition<u128, &[u8]> = TableDefinition::new("data_keys");
/// study id → its current data key id
const STUDY_KEYS: TableDefinition<u128, u128> = TableDefinition::new("study_keys");

/// Most jobs written in one transaction.
const MAX_GROUP: usize = 512;

fn record_key(topic: u32, partition: u32, offset: u64) -> u128 {
    (u128::from(topic) << 96) | (u128::from(partition) << 64) | u128::from(offset)
}

fn store_err(operation: &'static str) -> impl Fn(redb::Error) -> Error {
    move |e| Error::Store { operation, reason: e.to_string() }
}

fn store<T, E: Into<redb::Error>>(operation: &'static str, r: Result<T, E>) -> Result<T, Error> {
    r.map_err(|e| store_err(operation)(e.into()))
}

#[derive(Clone, Copy, Debug)]
struct TopicMeta {
    number: u32,
    partitions: u32,
}

type Topics = Arc<RwLock<HashMap<TopicName, TopicMeta>>>;

/// Options for opening an embedded log.
#[derive(Clone, Debug, Default)]
pub struct EmbeddedOptions {
    pub failpoints: FailPoints,
}

enum Job {
    CreateTopic { spec: TopicSpec, reply: oneshot::Sender<Result<(), Error>> },
    Append { batch: Vec<Outgoing>, reply: oneshot::Sender<Result<Vec<Appended>, Error>> },
    Commit { step: Step, reply: oneshot::Sender<Result<Vec<Appended>, Error>> },
}

/// The embedded log of one region.
pub struct EmbeddedLog {
    db: Arc<Database>,
    topics: Topics,
    jobs: Option<mpsc::Sender<Job>>,
    writer: Option<JoinHandle<()>>,
    committed: watch::Receiver<Heads>,
}

/// The next offset of every partition, by (topic number, partition), as of
/// the last commit.
type Heads = Arc<HashMap<(u32, u32), u64>>;

/// The page cache of an embedded log file. redb's default (1 GiB a file)
/// would let a region's memory grow with its history; appends and readers
/// near the tail need far less.
pub const LOG_CACHE_BYTES: usize = 64 << 20;
/// The page cache of a key store in its own file.
pub const KEYS_CACHE_BYTES: usize = 16 << 20;

impl EmbeddedLog {
    /// Opens (or creates) the log at `path`.
    pub fn open(path: &Path, options: EmbeddedOptions) -> Result<EmbeddedLog, Error> {
        let db = Arc::new(store("open", Database::builder().set_cache_size(LOG_CACHE_BYTES).create(path))?);
        let mut topics = HashMap::new();
        let mut next_offsets = HashMap::new();
        {
            let tx = store("open", db.begin_write())?;
            // Create every table up front so readers never meet a missing one.
            store("open", tx.open_table(TOPICS))?;
            store("open", tx.open_table(RECORDS))?;
            store("open", tx.open_table(POSITIONS))?;
            store("open", tx.open_table(DATA_KEYS))?;
            store("open", tx.open_table(STUDY_KEYS))?;
            store("open", tx.commit())?;
            let rx = store("open", db.begin_read())?;
            let table = store("open", rx.open_table(TOPICS))?;
            let records = store("open", rx.open_table(RECORDS))?;
            for entry in store("open", table.iter())? {
                let (name, value) = store("open", entry)?;
                let (number, partitions, _retention) = value.value();
                let name: TopicName = name.value().parse().map_err(|e: crate::topic::ParseTopicError| {
                    Error::Store { operation: "open", reason: e.to_string() }
                })?;
                for p in 0..partitions {
                    let range = record_key(number, p, 0)..=record_key(number, p, u64::MAX);
                    let last = store("open", records.range(range))?.next_back();
                    let next = match last {
                        Some(entry) => (store("open", entry)?.0.value() as u64) + 1,
                        None => 0,
                    };
                    next_offsets.insert((number, p), next);
                }
                topics.insert(name, TopicMeta { number, partitions });
            }
        }
        let topics = Arc::new(RwLock::new(topics));
        let (notify, committed) = watch::channel(Arc::new(next_offsets.clone()));
        let (jobs, rx) = mpsc::channel();
        let writer =
            Writer { db: db.clone(), topics: topics.clone(), next_offsets, failpoints: options.failpoints, notify };
        let writer = std::thread::Builder::new()
            .name("meridian-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| Error::Store { operation: "open", reason: format!("starting the writer thread: {e}") })?;
        Ok(EmbeddedLog { db, topics, jobs: Some(jobs), writer: Some(writer), committed })
    }

    /// The region's data-key store, in the same database.
    pub fn key_store(&self) -> EmbeddedKeyStore {
        EmbeddedKeyStore { db: self.db.clone() }
    }

    /// Every topic with its partition count.
    pub fn topics(&self) -> Vec<(TopicName, u32)> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = topics.iter().map(|(n, m)| (n.clone(), m.partitions)).collect();
        all.sort();
        all
    }

    /// Stops the writer after the jobs already sent. The file is released
    /// once the key stores and readers taken from this log are dropped too.
    pub async fn close(mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    async fn send<T>(&self, job: impl FnOnce(oneshot::Sender<Result<T, Error>>) -> Job) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        self.jobs.as_ref().ok_or(Error::Closed)?.send(job(reply)).map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

impl Drop for EmbeddedLog {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

struct Writer {
    db: Arc<Database>,
    topics: Topics,
    next_offsets: HashMap<(u32, u32), u64>,
    failpoints: FailPoints,
    notify: watch::Sender<Heads>,
}

/// A job's writes, planned before anything is written so that a job that
/// fails validation leaves nothing behind in the shared transaction.
enum Plan {
    Topic {
        name: TopicName,
        meta: TopicMeta,
        retention: u64,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Append {
        records: Vec<(u128, Vec<u8>)>,
        appended: Vec<Appended>,
        reply: oneshot::Sender<Result<Vec<Appended>, Error>>,
    },
    Commit {
        records: Vec<(u128, Vec<u8>)>,
        appended: Vec<Appended>,
        consumer: String,
        inputs: Vec<Position>,
        reply: oneshot::Sender<Result<Vec<Appended>, Error>>,
    },
}

impl Writer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.write_group(group);
        }
    }

    fn write_group(&mut self, group: Vec<Job>) {
        let mut offsets = self.next_offsets.clone();
        let mut new_topics: HashMap<TopicName, TopicMeta> = HashMap::new();
        let mut plans = Vec::with_capacity(group.len());
        for job in group {
            match self.plan(job, &mut offsets, &mut new_topics) {
                Ok(Some(plan)) => plans.push(plan),
                Ok(None) => {}
                Err((error, reply)) => reply(error),
            }
        }
        if plans.is_empty() {
            return;
        }
        match self.write(&plans) {
            Ok(()) => {
                self.next_offsets = offsets;
                if !new_topics.is_empty() {
                    self.topics.write().unwrap_or_else(|p| p.into_inner()).extend(new_topics);
                }
                self.notify.send_replace(Arc::new(self.next_offsets.clone()));
                let ack = self.failpoints.hit(failpoint::AFTER_COMMIT);
                for plan in plans {
                    let failed = ack.as_ref().err().map(|e| match e {
                        Error::Injected { point } => Error::Injected { point },
                        _ => Error::Closed,
                    });
                    match (plan, failed) {
                        (Plan::Topic { reply, .. }, None) => drop(reply.send(Ok(()))),
                        (Plan::Append { appended, reply, .. } | Plan::Commit { appended, reply, .. }, None) => {
                            drop(reply.send(Ok(appended)))
                        }
                        (Plan::Topic { reply, .. }, Some(e)) => drop(reply.send(Err(e))),
                        (Plan::Append { reply, .. } | Plan::Commit { reply, .. }, Some(e)) => drop(reply.send(Err(e))),
                    }
                }
            }
            Err(error) => {
                let reason = error.to_string();
                for plan in plans {
                    let e = match &error {
                        Error::Injected { point } => Error::Injected { point },
                        _ => Error::Store { operation: "commit", reason: reason.clone() },
                    };
                    match plan {
                        Plan::Topic { reply, .. } => drop(reply.send(Err(e))),
                        Plan::Append { reply, .. } | Plan::Commit { reply, .. } => drop(reply.send(Err(e))),
                    }
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        job: Job,
        offsets: &mut HashMap<(u32, u32), u64>,
        new_topics: &mut HashMap<TopicName, TopicMeta>,
    ) -> Result<Option<Plan>, (Error, Box<dyn FnOnce(Error)>)> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        let lookup = |name: &TopicName| topics.get(name).or_else(|| new_topics.get(name)).copied();
        match job {
            Job::CreateTopic { spec, reply } => {
                if let Some(meta) = lookup(&spec.name) {
                    let result = if meta.partitions == spec.partitions {
                        Ok(())
                    } else {
                        Err(Error::PartitionCount {
                            topic: spec.name.to_string(),
                            existing: meta.partitions,
                            requested: spec.partitions,
                        })
                    };
                    // Answered now: nothing to write for it.
                    let _ = reply.send(result);
                    return Ok(None);
                }
                if spec.partitions == 0 {
                    let e = Error::PartitionCount { topic: spec.name.to_string(), existing: 0, requested: 0 };
                    return Err((e, Box::new(move |e| drop(reply.send(Err(e))))));
                }
                let number = topics.len() as u32 + new_topics.len() as u32;
                let meta = TopicMeta { number, partitions: spec.partitions };
                new_topics.insert(spec.name.clone(), meta);
                for p in 0..spec.partitions {
                    offsets.insert((number, p), 0);
                }
                Ok(Some(Plan::Topic { name: spec.name, meta, retention: spec.retention_ms.unwrap_or(0), reply }))
            }
            Job::Append { batch, reply } => match Self::plan_records(&lookup, offsets, batch) {
                Ok((records, appended)) => Ok(Some(Plan::Append { records, appended, reply })),
                Err(e) => Err((e, Box::new(move |e| drop(reply.send(Err(e)))))),
            },
            Job::Commit { step, reply } => {
                for input in &step.inputs {
                    if let Err(e) = check_partition(lookup(&input.topic), &input.topic, input.partition) {
                        return Err((e, Box::new(move |e| drop(reply.send(Err(e))))));
                    }
                }
                match Self::plan_records(&lookup, offsets, step.outputs) {
                    Ok((records, appended)) => Ok(Some(Plan::Commit {
                        records,
                        appended,
                        consumer: step.consumer,
                        inputs: step.inputs,
                        reply,
                    })),
                    Err(e) => Err((e, Box::new(move |e| drop(reply.send(Err(e)))))),
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn plan_records(
        lookup: &dyn Fn(&TopicName) -> Option<TopicMeta>,
        offsets: &mut HashMap<(u32, u32), u64>,
        batch: Vec<Outgoing>,
    ) -> Result<(Vec<(u128, Vec<u8>)>, Vec<Appended>), Error> {
        // Validate the whole batch before taking any offset: all or nothing.
        let mut metas = Vec::with_capacity(batch.len());
        for out in &batch {
            let meta = lookup(&out.topic).ok_or_else(|| Error::UnknownTopic { topic: out.topic.to_string() })?;
            out.validate()?;
            metas.push(meta);
        }
        let mut records = Vec::with_capacity(batch.len());
        let mut appended = Vec::with_capacity(batch.len());
        for (out, meta) in batch.into_iter().zip(metas) {
            let partition = partition_for(&out.key, meta.partitions);
            let next = offsets.entry((meta.number, partition)).or_insert(0);
            let offset = *next;
            *next += 1;
            records.push((record_key(meta.number, partition, offset), encode_record(&out)));
            appended.push(Appended { event_id: out.event_id, partition, offset });
        }
        Ok((records, appended))
    }

    fn write(&self, plans: &[Plan]) -> Result<(), Error> {
        let tx = store("begin write", self.db.begin_write())?;
        {
            let mut topics = store("write", tx.open_table(TOPICS))?;
            let mut records = store("write", tx.open_table(RECORDS))?;
            let mut positions = store("write", tx.open_table(POSITIONS))?;
            for plan in plans {
                match plan {
                    Plan::Topic { name, meta, retention, .. } => {
                        store("write", topics.insert(name.as_str(), (meta.number, meta.partitions, *retention)))?;
                    }
                    Plan::Append { records: rs, .. } => {
                        for (key, value) in rs {
                            store("write", records.insert(*key, value.as_slice()))?;
                        }
                    }
                    Plan::Commit { records: rs, consumer, inputs, .. } => {
                        for (key, value) in rs {
                            store("write", records.insert(*key, value.as_slice()))?;
                        }
                        for p in inputs {
                            store(
                                "write",
                                positions.insert((consumer.as_str(), p.topic.as_str(), p.partition), p.offset),
                            )?;
                        }
                    }
                }
            }
        }
        if let Err(e) = self.failpoints.hit(failpoint::BEFORE_COMMIT) {
            let _ = tx.abort();
            return Err(e);
        }
        store("commit", tx.commit())
    }
}

fn check_partition(meta: Option<TopicMeta>, topic: &TopicName, partition: u32) -> Result<TopicMeta, Error> {
    let meta = meta.ok_or_else(|| Error::UnknownTopic { topic: topic.to_string() })?;
    if partition >= meta.partitions {
        return Err(Error::NoSuchPartition { topic: topic.to_string(), partition, partitions: meta.partitions });
    }
    Ok(meta)
}

// Stored record: u32 header bytes length, the headers' own encoding
// ([`Headers`]), u32 key length, key, then the value.
fn encode_record(out: &Outgoing) -> Vec<u8> {
    let headers = out.headers.as_bytes();
    let mut buf = Vec::with_capacity(8 + headers.len() + out.key.len() + out.value.len());
    buf.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    buf.extend_from_slice(headers);
    buf.extend_from_slice(&(out.key.len() as u32).to_le_bytes());
    buf.extend_from_slice(&out.key);
    buf.extend_from_slice(&out.value);
    buf
}

fn decode_record(bytes: &[u8]) -> Option<(Vec<u8>, Vec<u8>, Headers)> {
    let n = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let headers = Headers::from_bytes(bytes.get(4..4 + n)?.to_vec())?;
    let rest = bytes.get(4 + n..)?;
    let k = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let key = rest.get(4..4 + k)?.to_vec();
    Some((key, rest.get(4 + k..)?.to_vec(), headers))
}

#[async_trait]
impl EventLog for EmbeddedLog {
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), Error> {
        let spec = spec.clone();
        self.send(|reply| Job::CreateTopic { spec, reply }).await
    }

    async fn partitions(&self, topic: &TopicName) -> Result<u32, Error> {
        let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
        topics.get(topic).map(|m| m.partitions).ok_or_else(|| Error::UnknownTopic { topic: topic.to_string() })
    }

    async fn append(&self, batch: Vec<Outgoing>) -> Result<Vec<Appended>, Error> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.send(|reply| Job::Append { batch, reply }).await
    }

    async fn reader(&self, from: Vec<Position>) -> Result<Box<dyn LogReader>, Error> {
        let mut cursors = Vec::with_capacity(from.len());
        {
            let topics = self.topics.read().unwrap_or_else(|p| p.into_inner());
            for position in from {
                let meta = check_partition(topics.get(&position.topic).copied(), &position.topic, position.partition)?;
                cursors.push((meta.number, position));
            }
        }
        Ok(Box::new(EmbeddedReader { db: self.db.clone(), cursors, next: 0, committed: self.committed.clone() }))
    }

    async fn commit(&self, step: Step) -> Result<Vec<Appended>, Error> {
        self.send(|reply| Job::Commit { step, reply }).await
    }

    async fn committed(&self, consumer: &str, topic: &TopicName, partition: u32) -> Result<Option<u64>, Error> {
        let db = self.db.clone();
        let (consumer, topic) = (consumer.to_owned(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let rx = store("read positions", db.begin_read())?;
            let table = store("read positions", rx.open_table(POSITIONS))?;
            let value = store("read positions", table.get((consumer.as_str(), topic.as_str(), partition)))?;
            Ok(value.map(|v| v.value()))
        })
        .await
        .map_err(|e| Error::Store { operation: "read positions", reason: e.to_string() })?
    }
}

struct EmbeddedReader {
    db: Arc<Database>,
    cursors: Vec<(u32, Position)>,
    next: usize,
    committed: watch::Receiver<Heads>,
}

fn read_cursors(db: &Database, cursors: &[(u32, Position)], start: usize, max: usize) -> Result<Vec<Record>, Error> {
    let rx = store("read", db.begin_read())?;
    let table = store("read", rx.open_table(RECORDS))?;
    let mut out = Vec::new();
    for i in 0..cursors.len() {
        if out.len() >= max {
            break;
        }
        let (number, position) = &cursors[(start + i) % cursors.len()];
        let range = record_key(*number, position.partition, position.offset)
            ..=record_key(*number, position.partition, u64::MAX);
        for entry in store("read", table.range(range))? {
            if out.len() >= max {
                break;
            }
            let (key, value) = store("read", entry)?;
            let offset = key.value() as u64;
            let (k, v, headers) = decode_record(value.value()).ok_or_else(|| Error::Store {
                operation: "read",
                reason: format!(
                    "record {}/{}/{offset} is not in the stored format",
                    position.topic, position.partition
                ),
            })?;
            out.push(Record {
                topic: position.topic.clone(),
                partition: position.partition,
                offset,
                key: k,
                value: v,
                headers,
            });
        }
    }
    Ok(out)
}

#[async_trait]
impl LogReader for EmbeddedReader {
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, Error> {
        if self.cursors.is_empty() || max == 0 {
            return Ok(Vec::new());
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Only the partitions that have grown past this reader's
            // position are read; none means nothing to read yet.
            let heads = self.committed.borrow_and_update().clone();
            let count = self.cursors.len();
            let due: Vec<(u32, Position)> = (0..count)
                .map(|i| &self.cursors[(self.next + i) % count])
                .filter(|(number, p)| heads.get(&(*number, p.partition)).is_some_and(|next| *next > p.offset))
                .cloned()
                .collect();
            let batch = if due.is_empty() {
                Vec::new()
            } else {
                let db = self.db.clone();
                tokio::task::spawn_blocking(move || read_cursors(&db, &due, 0, max))
                    .await
                    .map_err(|e| Error::Store { operation: "read", reason: e.to_string() })??
            };
            if !batch.is_empty() {
                for record in &batch {
                    if let Some((_, p)) = self
                        .cursors
                        .iter_mut()
                        .find(|(_, p)| p.topic == record.topic && p.partition == record.partition)
                    {
                        p.offset = record.offset + 1;
                    }
                }
                self.next = (self.next + 1) % self.cursors.len();
                return Ok(batch);
            }
            match tokio::time::timeout_at(deadline, self.committed.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }

    /// A read sees every committed record: one that finds none is at the end.
    async fn catch_up_batch(&mut self, max: usize, _idle: Duration) -> Result<Vec<Record>, Error> {
        self.next_batch(max, Duration::ZERO).await
    }
}

/// The region's data keys, in a table of the embedded store: the log's own
/// file when the log is embedded, a file of its own when the log is Kafka.
#[derive(Clone)]
pub struct EmbeddedKeyStore {
    db: Arc<Database>,
}

impl EmbeddedKeyStore {
    /// A key store in its own file (for regions whose log is not embedded).
    pub fn open(path: &Path) -> Result<EmbeddedKeyStore, Error> {
        let db = store("open key store", Database::builder().set_cache_size(KEYS_CACHE_BYTES).create(path))?;
        let tx = store("open key store", db.begin_write())?;
        store("open key store", tx.open_table(DATA_KEYS))?;
        store("open key store", tx.open_table(STUDY_KEYS))?;
        store("open key store", tx.commit())?;
        Ok(EmbeddedKeyStore { db: Arc::new(db) })
    }
}

fn key_err(operation: &'static str) -> impl Fn(redb::Error) -> seal::Error {
    move |e| seal::Error::Store { operation, reason: e.to_string() }
}

fn ks<T, E: Into<redb::Error>>(operation: &'static str, r: Result<T, E>) -> Result<T, seal::Error> {
    r.map_err(|e| key_err(operation)(e.into()))
}

impl KeyStore for EmbeddedKeyStore {
    fn current_key(&self, study: StudyId) -> Result<DataKey, seal::Error> {
        {
            let rx = ks("current_key", self.db.begin_read())?;
            let studies = ks("current_key", rx.open_table(STUDY_KEYS))?;
            if let Some(id) = ks("current_key", studies.get(study.0.as_u128()))? {
                let keys = ks("current_key", rx.open_table(DATA_KEYS))?;
                if let Some(v) = ks("current_key", keys.get(id.value()))?
                    && let Some(key) = parse_key(id.value(), v.value())
                {
                    return Ok(key);
                }
            }
        }
        let tx = ks("current_key", self.db.begin_write())?;
        let key = {
            let mut studies = ks("current_key", tx.open_table(STUDY_KEYS))?;
            let mut keys = ks("current_key", tx.open_table(DATA_KEYS))?;
            // Another writer may have created it since the read above.
            let existing = ks("current_key", studies.get(study.0.as_u128()))?.map(|g| g.value());
            let existing = match existing {
                Some(id) => ks("current_key", keys.get(id))?.and_then(|v| parse_key(id, v.value())),
                None => None,
            };
            match existing {
                Some(key) => key,
                None => {
                    let key = DataKey::generate()?;
                    let mut value = study.0.as_bytes().to_vec();
                    value.extend_from_slice(key.bytes());
                    ks("current_key", keys.insert(key.id.0.as_u128(), value.as_slice()))?;
                    ks("current_key", studies.insert(study.0.as_u128(), key.id.0.as_u128()))?;
                    key
                }
            }
        };
        ks("current_key", tx.commit())?;
        Ok(key)
    }

    fn key(&self, id: DataKeyId) -> Result<KeyState, seal::Error> {
        let rx = ks("key", self.db.begin_read())?;
        let keys = ks("key", rx.open_table(DATA_KEYS))?;
        Ok(match ks("key", keys.get(id.0.as_u128()))? {
            None => KeyState::Unknown,
            Some(v) => match parse_key(id.0.as_u128(), v.value()) {
                Some(key) => KeyState::Active(key),
                None => KeyState::Shredded,
            },
        })
    }

    fn shred(&self, study: StudyId) -> Result<usize, seal::Error> {
        let tx = ks("shred", self.db.begin_write())?;
        let mut shredded = 0;
        {
            let mut keys = ks("shred", tx.open_table(DATA_KEYS))?;
            let mut studies = ks("shred", tx.open_table(STUDY_KEYS))?;
            ks("shred", studies.remove(study.0.as_u128()))?;
            let mut owned = Vec::new();
            for entry in ks("shred", keys.iter())? {
                let (id, value) = ks("shred", entry)?;
                let value = value.value();
                if value.len() == 48 && value[..16] == study.0.as_bytes()[..] {
                    owned.push(id.value());
                }
            }
            for id in owned {
                // Keep a tombstone (the owner alone) so the key reads as
                // shredded, not unknown.
                ks("shred", keys.insert(id, &study.0.as_bytes()[..]))?;
                shredded += 1;
            }
        }
        ks("shred", tx.commit())?;
        Ok(shredded)
    }
}

fn parse_key(id: u128, value: &[u8]) -> Option<DataKey> {
    if value.len() != 48 {
        return None;
    }
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&value[16..]);
    Some(DataKey::from_parts(DataKeyId(Uuid::from_u128(id)), bytes))
}
