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

/// Record headers in one buffer: u16 count, then per header u16 name
/// length, name, u32 value length, value. One allocation per record rather
/// than two per header, which is most of a replay's cost.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<u8>);

impl Headers {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Headers {
        let mut buf = vec![0, 0];
        let mut count: u16 = 0;
        for (name, value) in pairs {
            buf.extend_from_slice(&(name.len() as u16).to_le_bytes());
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(&(value.len() as u32).to_le_bytes());
            buf.extend_from_slice(value);
            count += 1;
        }
        buf[..2].copy_from_slice(&count.to_le_bytes());
        Headers(buf)
    }

    /// Checks the encoding of stored header bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Option<Headers> {
        let headers = Headers(bytes);
        let count = headers.count()?;
        (headers.iter().count() == count as usize).then_some(headers)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn count(&self) -> Option<u16> {
        Some(u16::from_le_bytes(self.0.get(..2)?.try_into().ok()?))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut rest = self.0.get(2..).unwrap_or_default();
        let mut left = self.count().unwrap_or(0);
        std::iter::from_fn(move || {
            if left == 0 {
                return None;
            }
            left -= 1;
            let n = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
            let name = std::str::from_utf8(rest.get(2..2 + n)?).ok()?;
            rest = rest.get(2 + n..)?;
            let m = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            let value = rest.get(4..4 + m)?;
            rest = rest.get(4 + m..)?;
            Some((name, value))
        })
    }

    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
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
    pub headers: Headers,
    pub event_id: EventId,
}

impl Outgoing {
    /// Refuses an event whose data class does not match its topic's.
    pub fn new(topic: TopicName, envelope: &Envelope) -> Result<Outgoing, Error> {
        check_class(&topic, envelope.meta.event_id, envelope.data_class)?;
        let event_id = envelope.meta.event_id.to_string();
        let mut pairs = vec![
            (header::EVENT_ID, event_id.as_bytes()),
            (header::PAYLOAD_TYPE, envelope.payload_type.as_bytes()),
            (header::DATA_CLASS, envelope.data_class.as_str().as_bytes()),
        ];
        if let Some(tp) = &envelope.meta.traceparent {
            pairs.push((header::TRACEPARENT, tp.as_bytes()));
        }
        let headers = Headers::from_pairs(pairs);
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
        let envelope = Envelope::decode(&self.value)
            .map_err(|source| Error::NotAnEnvelope { topic: self.topic.to_string(), reason: source.to_string() })?;
        check_class(&self.topic, envelope.meta.event_id, envelope.data_class)?;
        if self.key != envelope.meta.aggregate_id.hyphenated().to_string().as_bytes() {
            return Err(Error::KeyMismatch { topic: self.topic.to_string(), event_id: envelope.meta.event_id });
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
    pub headers: Headers,
}

impl Record {
    /// The position after this record.
    pub fn next_position(&self) -> Position {
        Position { topic: self.topic.clone(), partition: self.partition, offset: self.offset + 1 }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_and_refuse_bad_bytes() {
        let h = Headers::from_pairs([("a", &b"1"[..]), ("traceparent", b"00-ab")]);
        assert_eq!(h.get("traceparent"), Some(&b"00-ab"[..]));
        assert_eq!(h.iter().count(), 2);
        assert_eq!(Headers::from_bytes(h.as_bytes().to_vec()), Some(h.clone()));
        let mut cut = h.as_bytes().to_vec();
        cut.pop();
        assert_eq!(Headers::from_bytes(cut), None);
        assert_eq!(Headers::default().iter().count(), 0);
    }
}
