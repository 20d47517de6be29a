//! What goes into the log and what comes out.

use meridian_events::{DataClass, Envelope, EventId};

use crate::Error;
use crate::topic::TopicName;

/// Record header names. Headers copy envelope fields for routing and
/// tracing; the value (the envelope) is authoritative.
pub mod header {
    pub const EVENT_ID: &str = "meridian-event-id";
    pub const PAYLOAD_TYPE: &str = "meridian-payload-type";
    pub const DATA_CLASS: &str = "meridian-data-class";
    pub const TRACEPARENT: &str = "traceparent";
}

/// A place in the log: the next offset to read in one topic-partition.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub topic: TopicName,
    pub partition: u32,
    pub offset: u64,
}

impl Position {
    pub fn start(topic: TopicName, partition: u32) -> Position {
        Position { topic, partition, offset: 0 }
    }
}

/// A record to append: built from an envelope, checked against its topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    pub topic: TopicName,
    /// The opaque aggregate id in text form: the partition key.
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub event_id: EventId,
}

impl Outgoing {
    /// Refuses an event whose data class does not match its topic's.
    pub fn new(topic: TopicName, envelope: &Envelope) -> Result<Outgoing, Error> {
        check_class(&topic, envelope.meta.event_id, envelope.data_class)?;
        let mut headers = vec![
            (header::EVENT_ID.to_owned(), envelope.meta.event_id.to_string().into_bytes()),
            (header::PAYLOAD_TYPE.to_owned(), envelope.payload_type.clone().into_bytes()),
            (header::DATA_CLASS.to_owned(), envelope.data_class.as_str().as_bytes().to_vec()),
        ];
        if let Some(tp) = &envelope.meta.traceparent {
            headers.push((header::TRACEPARENT.to_owned(), tp.clone().into_bytes()));
        }
        Ok(Outgoing {
            key: envelope.meta.aggregate_id.hyphenated().to_string().into_bytes(),
            value: envelope.encode_to_vec(),
            headers,
            event_id: envelope.meta.event_id,
            topic,
        })
    }

    /// Checks the record as the log receives it: the value must be an
    /// envelope whose class matches the topic and whose aggregate id is the
    /// key. Both logs call this on every append, so a hand-built record
    /// cannot slip PHI into an operational topic.
    pub fn validate(&self) -> Result<(), Error> {
        let envelope = Envelope::decode(&self.value).map_err(|source| Error::NotAnEnvelope {
            topic: self.topic.to_string(),
            reason: source.to_string(),
        })?;
        check_class(&self.topic, envelope.meta.event_id, envelope.data_class)?;
        if self.key != envelope.meta.aggregate_id.hyphenated().to_string().as_bytes() {
            return Err(Error::KeyMismatch {
                topic: self.topic.to_string(),
                event_id: envelope.meta.event_id,
            });
        }
        Ok(())
    }
}

fn check_class(topic: &TopicName, event_id: EventId, class: DataClass) -> Result<(), Error> {
    if topic.class() != class {
        return Err(Error::ClassMismatch {
            topic: topic.to_string(),
            event_id,
            event_class: class,
            topic_class: topic.class(),
        });
    }
    Ok(())
}

/// A record read from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub topic: TopicName,
    pub partition: u32,
    pub offset: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The position after this record.
    pub fn next_position(&self) -> Position {
        Position { topic: self.topic.clone(), partition: self.partition, offset: self.offset + 1 }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// Decodes the envelope: a corrupt value is a typed error for the
    /// consumer to count and skip, never a panic.
    pub fn envelope(&self) -> Result<Envelope, meridian_events::envelope::Error> {
        Envelope::decode(&self.value)
    }
}

/// Where an appended record went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Appended {
    pub event_id: EventId,
    pub partition: u32,
    pub offset: u64,
}

/// One consume-transform-produce step: the outputs and the consumer's new
/// input positions, committed together or not at all.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub consumer: String,
    pub outputs: Vec<Outgoing>,
    pub inputs: Vec<Position>,
}
