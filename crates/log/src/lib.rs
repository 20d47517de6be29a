//! Meridian's event log: one trait, [`EventLog`], with two implementations
//! that one contract suite ([`contract`]) holds to the same behaviour.
//!
//! # Layout
//! - [`topic`]: topic names `meridian.<region>.<class>.<stream>` and specs.
//! - [`record`]: records in and out, positions, consume-transform-produce steps.
//! - [`partitioner`]: Kafka's murmur2, used by both implementations.
//! - [`embedded`]: the durable single-node log on redb (dev mode, fast tests),
//!   with the region's data-key table ([`embedded::EmbeddedKeyStore`]).
//! - [`kafka`]: the production log on rdkafka (bundled librdkafka).
//! - [`failpoint`]: named failure injection in the write paths.
//! - [`contract`]: the contract suite every implementation must pass.
//!
//! # Guarantees (both implementations)
//! - Order holds per topic-partition only; a record's partition is
//!   `murmur2(key) % partitions`, the key being the opaque aggregate id.
//! - `append` is atomic per call and durable when it returns.
//! - `commit` writes a step's outputs and the consumer's input positions
//!   together, or neither.
//! - Positions are always explicit: there is no "latest".
//! - An event whose data class does not match its topic is refused.
//!
//! De-duplication is the consumer's job (`meridian-projection`): on Kafka an
//! aborted transaction's records can still reach a `read_committed` reader
//! on some brokers (tansu does this), and a producer may re-append after a
//! crash.

#![forbid(unsafe_code)]

use std::time::Duration;

use async_trait::async_trait;
use meridian_events::{DataClass, EventId};

pub mod contract;
pub mod dedup;
pub mod embedded;
pub mod failpoint;
pub mod kafka;
pub mod partitioner;
pub mod record;
pub mod skips;
pub mod topic;

pub use record::{Appended, Headers, Outgoing, Position, Record, Step};
pub use topic::{TopicName, TopicSpec};

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("topic {topic} does not exist")]
    UnknownTopic { topic: String },
    #[error("topic {topic} exists with {existing} partitions, {requested} requested")]
    PartitionCount { topic: String, existing: u32, requested: u32 },
    #[error("topic {topic} has {partitions} partitions, partition {partition} requested")]
    NoSuchPartition { topic: String, partition: u32, partitions: u32 },
    #[error("append to {topic}: event {event_id} is {event_class} but the topic carries {topic_class}")]
    ClassMismatch { topic: String, event_id: EventId, event_class: DataClass, topic_class: DataClass },
    #[error("append to {topic}: record value is not an envelope: {reason}")]
    NotAnEnvelope { topic: String, reason: String },
    #[error("append to {topic}: record key of event {event_id} is not its aggregate id")]
    KeyMismatch { topic: String, event_id: EventId },
    #[error("embedded log {operation}: {reason}")]
    Store { operation: &'static str, reason: String },
    #[error("kafka {operation}: {source}")]
    Kafka { operation: &'static str, source: rdkafka::error::KafkaError },
    #[error("kafka {operation}: {reason}")]
    KafkaProtocol { operation: &'static str, reason: String },
    /// Another process took over this log's transactional id: this one may
    /// never write again (only a restart, as the newest owner, may).
    #[error(
        "kafka: fenced: transactional id {transactional_id} belongs to a newer process ({reason}); restart this one"
    )]
    Fenced { transactional_id: String, reason: String },
    #[error("injected failure at {point}")]
    Injected { point: &'static str },
    #[error("the log is closed")]
    Closed,
}

/// The event log of one region.
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Creates the topic if it is missing. An existing topic with another
    /// partition count is an error: the partitioner depends on the count.
    async fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), Error>;

    async fn partitions(&self, topic: &TopicName) -> Result<u32, Error>;

    /// Appends every record or none; durable when it returns.
    async fn append(&self, batch: Vec<Outgoing>) -> Result<Vec<Appended>, Error>;

    /// Why this log can never write again from this process (a Kafka
    /// producer fenced by a newer owner of its transactional id), if so:
    /// the process should stop and let its orchestrator decide.
    fn fatal(&self) -> Option<String> {
        None
    }

    /// Whether the log answers now (a broker's metadata within `within`),
    /// for readiness: an error says what did not answer.
    async fn reachable(&self, within: Duration) -> Result<(), Error> {
        let _ = within;
        Ok(())
    }

    /// A reader starting at explicit positions.
    async fn reader(&self, from: Vec<Position>) -> Result<Box<dyn LogReader>, Error>;

    /// Commits a consume-transform-produce step atomically; returns where
    /// each output landed, in order (as `append` does), so a consumer can
    /// fold its own writes without reading them back.
    async fn commit(&self, step: Step) -> Result<Vec<Appended>, Error>;

    /// The consumer's committed position in a topic-partition, if any.
    async fn committed(&self, consumer: &str, topic: &TopicName, partition: u32) -> Result<Option<u64>, Error>;

    /// Where the consumer goes on in each partition of `topic`: its
    /// committed positions, the start where it has none.
    async fn resume(&self, consumer: &str, topic: &TopicName) -> Result<Vec<Position>, Error> {
        let mut from = Vec::new();
        for partition in 0..self.partitions(topic).await? {
            let offset = self.committed(consumer, topic, partition).await?.unwrap_or(0);
            from.push(Position { topic: topic.clone(), partition, offset });
        }
        Ok(from)
    }
}

/// Reads records in offset order per partition.
#[async_trait]
pub trait LogReader: Send {
    /// Up to `max` records; waits up to `wait` when none is there yet and
    /// returns an empty batch if none came.
    async fn next_batch(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, Error>;

    /// The next records of a catch-up: empty once the reader has read its
    /// partitions to where they ended when the catch-up began. A log that
    /// knows its ends (Kafka: the last stable offsets) stops there at once;
    /// otherwise, and as a bound where an end is not reached (a
    /// transaction another producer holds open), a read that waits `idle`
    /// with nothing new ends it.
    async fn catch_up_batch(&mut self, max: usize, idle: Duration) -> Result<Vec<Record>, Error> {
        self.next_batch(max, idle).await
    }
}
