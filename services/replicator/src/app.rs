//! Copying: what `source`'s log holds past the positions the destination
//! log keeps for `replicator.<source>`, into the destination's topics of
//! the same names, each batch one step (the copies and the positions
//! after them, together or not at all). A crash between the read and the
//! step copies the batch again from the same positions; a re-copy is the
//! same key and bytes, which every consumer's de-duplication drops.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_log::{EventLog, LogReader, Outgoing, Position, Record, Step, TopicName, TopicSpec};

use crate::domain::{self, Route, Skip};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{region}'s log: {source}")]
    Log {
        region: String,
        #[source]
        source: meridian_log::Error,
    },
    #[error("{0}")]
    Topic(#[from] meridian_log::topic::ParseTopicError),
}

/// What a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub records: u64,
    /// Records read and not copied, by reason.
    pub skipped: BTreeMap<Skip, u64>,
}

/// One route's copying, its topics ensured in the destination.
pub struct Replication {
    route: Route,
    source: Arc<dyn EventLog>,
    destination: Arc<dyn EventLog>,
    topics: Vec<TopicName>,
}

impl Replication {
    /// Ensures the destination has each of the source's operational topics,
    /// with the source's partition count (a copy lands in the partition its
    /// key gives, as in the source).
    pub async fn open(
        route: Route,
        source: Arc<dyn EventLog>,
        destination: Arc<dyn EventLog>,
    ) -> Result<Replication, Error> {
        let topics = domain::source_topics(&route.source)?;
        for topic in &topics {
            let partitions = source.partitions(topic).await.map_err(|e| log_err(&route.source, e))?;
            let spec = TopicSpec::new(topic.clone(), partitions);
            destination.ensure_topic(&spec).await.map_err(|e| log_err(&route.destination, e))?;
        }
        Ok(Replication { route, source, destination, topics })
    }

    pub fn route(&self) -> &Route {
        &self.route
    }

    /// Copies what the source holds past the destination's positions, up
    /// to `batch` records a step, until a read of the source stays empty
    /// for `idle`.
    pub async fn pass(&self, batch: usize, idle: Duration) -> Result<Copied, Error> {
        let mut reader = self.reader().await?;
        let mut copied = Copied::default();
        loop {
            let records = reader.catch_up_batch(batch, idle).await.map_err(|e| log_err(&self.route.source, e))?;
            if records.is_empty() {
                return Ok(copied);
            }
            self.copy(records, &mut copied).await?;
        }
    }

    /// A reader of the source from the positions the destination holds.
    async fn reader(&self) -> Result<Box<dyn LogReader>, Error> {
        let consumer = domain::consumer(&self.route.source);
        let mut from = Vec::new();
        for topic in &self.topics {
            let positions = self.destination.resume(&consumer, topic).await;
            from.extend(positions.map_err(|e| log_err(&self.route.destination, e))?);
        }
        self.source.reader(from).await.map_err(|e| log_err(&self.route.source, e))
    }

    /// Checks `records` and commits the copies with the positions after
    /// them, as one step.
    async fn copy(&self, records: Vec<Record>, copied: &mut Copied) -> Result<(), Error> {
        let (source, destination) = (&self.route.source, &self.route.destination);
        let mut outputs = Vec::with_capacity(records.len());
        let mut after: BTreeMap<(TopicName, u32), Position> = BTreeMap::new();
        for record in records {
            after.insert((record.topic.clone(), record.partition), record.next_position());
            match domain::check(source, &record) {
                Ok(event_id) => outputs.push(Outgoing {
                    topic: record.topic,
                    key: record.key,
                    value: record.value,
                    headers: record.headers,
                    event_id,
                }),
                Err(skip) => {
                    // Opaque only: the topic and place, never a value.
                    tracing::warn!(
                        %source, %destination, topic = %record.topic, partition = record.partition,
                        offset = record.offset, reason = skip.as_str(), "record not replicated"
                    );
                    *copied.skipped.entry(skip).or_default() += 1;
                }
            }
        }
        let records = outputs.len() as u64;
        let step = Step { consumer: domain::consumer(source), outputs, inputs: after.into_values().collect() };
        self.destination.commit(step).await.map_err(|e| log_err(destination, e))?;
        copied.records += records;
        Ok(())
    }

    /// Copies as the source appends until `stopped`, with one long-lived
    /// reader (a Kafka consumer is not made anew for every look), each read
    /// waiting up to `wait`. After a failure it waits `wait`, then reads
    /// again from the destination's positions (nothing uncommitted counts).
    pub async fn run(self, wait: Duration, stopped: impl std::future::Future<Output = ()>) {
        tokio::pin!(stopped);
        let (source, destination) = (self.route.source.clone(), self.route.destination.clone());
        let mut reader: Option<Box<dyn LogReader>> = None;
        loop {
            let step = async {
                let r = match &mut reader {
                    Some(r) => r,
                    None => reader.insert(self.reader().await?),
                };
                let records = r.next_batch(BATCH, wait).await.map_err(|e| log_err(&source, e))?;
                let mut copied = Copied::default();
                if !records.is_empty() {
                    self.copy(records, &mut copied).await?;
                }
                Ok::<_, Error>(copied)
            };
            let failed = tokio::select! {
                () = &mut stopped => return,
                done = step => match done {
                    Ok(copied) => {
                        if copied.records > 0 || !copied.skipped.is_empty() {
                            tracing::debug!(%source, %destination, records = copied.records, skipped = ?copied.skipped, "replicated");
                        }
                        false
                    }
                    Err(e) => {
                        tracing::warn!(%source, %destination, error = %e, "replication step failed; reading again from the committed positions");
                        true
                    }
                },
            };
            if failed {
                reader = None;
                tokio::select! {
                    () = &mut stopped => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Records a step copies at most.
pub const BATCH: usize = 512;

fn log_err(region: &str, source: meridian_log::Error) -> Error {
    Error::Log { region: region.to_owned(), source }
}

#[cfg(test)]
mod tests {
    use meridian_events::{DataClass, DataKey, Envelope, EventId, EventMeta, UnixMicros};
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
    use meridian_log::failpoint::{Action, BEFORE_COMMIT, FailPoints};
    use meridian_log::{Record, contract::read_all};
    use meridian_proto::events::v1 as pb;

    use super::*;

    fn meta(n: u128, aggregate_type: &str) -> EventMeta {
        let at = UnixMicros(1_800_000_000_000_000 + n as i64);
        let meta = meridian_log::contract::meta(uuid::Uuid::from_u128(n), 1, EventId::new_at(at));
        EventMeta { aggregate_type: aggregate_type.into(), ..meta }
    }

    async fn append_assignments(log: &dyn EventLog, from: u128, count: u128) {
        let topic = TopicName::new("us-east", DataClass::Operational, "routing").unwrap();
        let batch = (from..from + count)
            .map(|n| {
                let payload =
                    pb::StudyAssigned { study_id: uuid::Uuid::from_u128(n).to_string(), ..Default::default() };
                Outgoing::new(topic.clone(), &Envelope::plain(meta(n, "routing.study"), &payload).unwrap()).unwrap()
            })
            .collect();
        log.append(batch).await.unwrap();
    }

    async fn everything(log: &dyn EventLog, topic: &TopicName, expected: usize) -> Vec<Record> {
        let partitions = log.partitions(topic).await.unwrap();
        let from = (0..partitions).map(|p| Position::start(topic.clone(), p)).collect();
        let mut records = read_all(log, from, expected).await;
        records.sort_by_key(|r| (r.partition, r.offset));
        records
    }

    /// Copies are the source's records (same topic, partition, key and
    /// bytes), each once: across passes, and when a step fails before it
    /// commits (the batch is copied again from the same positions). The
    /// source's PHI topic is never read.
    #[test]
    fn a_region_s_operational_records_cross_once_each_and_its_phi_never() {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let dir = tempfile::TempDir::new().unwrap();
            let source: Arc<dyn EventLog> =
                Arc::new(EmbeddedLog::open(&dir.path().join("us-east.redb"), EmbeddedOptions::default()).unwrap());
            let failpoints = FailPoints::default();
            let destination: Arc<dyn EventLog> = Arc::new(
                EmbeddedLog::open(
                    &dir.path().join("in-south.redb"),
                    EmbeddedOptions { failpoints: failpoints.clone() },
                )
                .unwrap(),
            );
            for topic in domain::source_topics("us-east").unwrap() {
                source.ensure_topic(&TopicSpec::new(topic, 4)).await.unwrap();
            }
            let phi = TopicName::new("us-east", DataClass::Phi, "ingest").unwrap();
            source.ensure_topic(&TopicSpec::new(phi.clone(), 4)).await.unwrap();
            let key = DataKey::generate().unwrap();
            let received = pb::InstanceReceived::default();
            let sealed = Envelope::sealed_with(meta(999, "ingest.instances"), &received, &key).unwrap();
            source.append(vec![Outgoing::new(phi.clone(), &sealed).unwrap()]).await.unwrap();
            append_assignments(source.as_ref(), 0, 30).await;

            let route = Route { source: "us-east".into(), destination: "in-south".into(), because: Vec::new() };
            let replication = Replication::open(route, source.clone(), destination.clone()).await.unwrap();
            let idle = Duration::from_millis(50);
            assert_eq!(replication.pass(7, idle).await.unwrap(), Copied { records: 30, skipped: BTreeMap::new() });
            assert_eq!(replication.pass(7, idle).await.unwrap().records, 0, "nothing twice");

            // A step that fails before it commits copies nothing; the next
            // pass copies that batch and the rest, once.
            append_assignments(source.as_ref(), 30, 20).await;
            failpoints.set(BEFORE_COMMIT, Some(Action::Error));
            assert!(replication.pass(7, idle).await.is_err());
            failpoints.set(BEFORE_COMMIT, None);
            assert_eq!(replication.pass(7, idle).await.unwrap().records, 20);

            let routing = TopicName::new("us-east", DataClass::Operational, "routing").unwrap();
            let originals = everything(source.as_ref(), &routing, 50).await;
            let copies = everything(destination.as_ref(), &routing, 50).await;
            assert_eq!(copies.len(), 50);
            let place = |r: &Record| (r.partition, r.offset, r.key.clone(), r.value.clone());
            assert_eq!(copies.iter().map(place).collect::<Vec<_>>(), originals.iter().map(place).collect::<Vec<_>>());
            assert!(destination.partitions(&phi).await.is_err(), "the PHI topic does not exist in the destination");
        });
    }
}
