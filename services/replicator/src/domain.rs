//! Which regions' operational events may cross to which, and which of a
//! source's records may cross at all. Pure: the configuration and the
//! record in, a decision out.

pub use meridian_config::replication::{Route, routes};
use meridian_events::{DataClass, Envelope, EventId};
use meridian_log::{Record, TopicName};

/// Why a source record is not copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Skip {
    /// A `phi` topic (never read by the replicator; counted if met).
    PhiTopic,
    /// An envelope whose data class is PHI, whatever its topic says.
    PhiEnvelope,
    /// A topic of another region: a copy is never copied again.
    ForeignTopic,
    /// A value that does not decode as an envelope: nothing is forwarded
    /// that cannot be checked.
    Undecodable,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::PhiTopic => "phi_topic",
            Skip::PhiEnvelope => "phi_envelope",
            Skip::ForeignTopic => "foreign_topic",
            Skip::Undecodable => "undecodable",
        }
    }
}

/// Whether a record read from `source`'s log may cross (its event id when
/// it may): its topic is one of `source`'s operational topics and its
/// envelope is operational. Checked per record, not per topic name.
pub fn check(source: &str, record: &Record) -> Result<EventId, Skip> {
    check_topic(source, &record.topic)?;
    let envelope = Envelope::decode(&record.value).map_err(|_| Skip::Undecodable)?;
    if envelope.data_class != DataClass::Operational {
        return Err(Skip::PhiEnvelope);
    }
    Ok(envelope.meta.event_id)
}

/// Whether `topic` may be read for `source` at all.
pub fn check_topic(source: &str, topic: &TopicName) -> Result<(), Skip> {
    if topic.class() != DataClass::Operational {
        return Err(Skip::PhiTopic);
    }
    if topic.region() != source {
        return Err(Skip::ForeignTopic);
    }
    Ok(())
}

/// `source`'s operational topics: those the replicator reads.
pub fn source_topics(source: &str) -> Result<Vec<TopicName>, meridian_log::topic::ParseTopicError> {
    let mut topics: Vec<TopicName> = Vec::new();
    for info in meridian_events::payload::CATALOGUE.iter().filter(|i| i.data_class == DataClass::Operational) {
        let topic = TopicName::new(source, DataClass::Operational, info.stream)?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    Ok(topics)
}

/// The consumer whose positions in the destination log say how far
/// `source` was copied.
pub fn consumer(source: &str) -> String {
    format!("replicator.{source}")
}

#[cfg(test)]
mod tests {
    use meridian_events::{EventMeta, UnixMicros};
    use meridian_log::Headers;
    use meridian_proto::events::v1 as pb;
    use proptest::prelude::*;

    use super::*;

    fn record(topic: &str, class: DataClass) -> Record {
        let payload = pb::StudyAssigned { study_id: "s".into(), ..Default::default() };
        let meta = EventMeta {
            event_id: EventId::new_at(UnixMicros(1_800_000_000_000_000)),
            aggregate_type: "routing.study".into(),
            aggregate_id: uuid::Uuid::from_u128(7),
            aggregate_version: 1,
            tenant: "acme".into(),
            home_region: "us-east".into(),
            occurred_at: UnixMicros(1_800_000_000_000_000),
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        };
        let mut envelope = Envelope::plain(meta, &payload).unwrap();
        // What a foreign producer could write to a Kafka topic: the class
        // claimed by the envelope, whatever the topic's name says.
        envelope.data_class = class;
        Record {
            topic: topic.parse().unwrap(),
            partition: 0,
            offset: 0,
            key: b"k".to_vec(),
            value: envelope.encode_to_vec(),
            headers: Headers::default(),
        }
    }

    proptest! {
        /// Whatever the topic and the envelope claim, a record crosses only
        /// when both are operational and the topic is the source's own.
        #[test]
        fn nothing_phi_and_nothing_foreign_ever_crosses(
            source in prop::sample::select(vec!["us-east", "eu-west", "in-south"]),
            region in prop::sample::select(vec!["us-east", "eu-west", "in-south"]),
            topic_class in prop::sample::select(vec![DataClass::Operational, DataClass::Phi]),
            envelope_class in prop::sample::select(vec![DataClass::Operational, DataClass::Phi]),
            stream in prop::sample::select(vec!["routing", "ingest", "storage", "audit"]),
            garbage in any::<bool>(),
        ) {
            let mut r = record(&format!("meridian.{region}.{}.{stream}", topic_class.as_str()), envelope_class);
            if garbage {
                r.value = b"\x0a\xff\xff not an envelope".to_vec();
            }
            let crossed = check(source, &r).is_ok();
            let allowed = topic_class == DataClass::Operational
                && envelope_class == DataClass::Operational
                && region == source
                && !garbage;
            prop_assert_eq!(crossed, allowed);
            if topic_class == DataClass::Phi {
                prop_assert_eq!(check(source, &r), Err(Skip::PhiTopic));
            }
        }
    }

    #[test]
    fn the_topics_read_are_the_sources_operational_ones() {
        let topics = source_topics("in-south").unwrap();
        assert!(topics.iter().all(|t| t.region() == "in-south" && t.class() == DataClass::Operational));
        for stream in ["routing", "ingest", "storage", "audit", "reporting", "billing", "inference"] {
            assert!(topics.iter().any(|t| t.stream() == stream), "{stream} among {topics:?}");
        }
    }
}
