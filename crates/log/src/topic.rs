//! Topic names: `meridian.<region>.<class>.<stream>`.
//!
//! The data class is part of the name, so a topic carries one class only and
//! replication between regions is an allow-list of topic names.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use meridian_events::DataClass;

/// A topic's name, parsed. Cheap to clone: every record read carries one.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<Parts>);

#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Parts {
    // `full` first, so names order as their text does.
    full: String,
    region: String,
    class: DataClass,
    stream: String,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("topic name {name:?}: {reason}")]
pub struct ParseTopicError {
    pub name: String,
    pub reason: String,
}

fn is_segment(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl TopicName {
    pub fn new(region: &str, class: DataClass, stream: &str) -> Result<TopicName, ParseTopicError> {
        format!("meridian.{region}.{}.{stream}", class.as_str()).parse()
    }

    pub fn region(&self) -> &str {
        &self.0.region
    }

    pub fn class(&self) -> DataClass {
        self.0.class
    }

    pub fn stream(&self) -> &str {
        &self.0.stream
    }

    pub fn as_str(&self) -> &str {
        &self.0.full
    }
}

impl FromStr for TopicName {
    type Err = ParseTopicError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ParseTopicError { name: name.to_owned(), reason: reason.to_owned() };
        let parts: Vec<&str> = name.split('.').collect();
        let [prefix, region, class, stream] = parts.as_slice() else {
            return Err(err("expected meridian.<region>.<class>.<stream>"));
        };
        if *prefix != "meridian" {
            return Err(err("must start with \"meridian.\""));
        }
        if !is_segment(region) || !is_segment(stream) {
            return Err(err("region and stream are lower-case letters, digits, '-' and '_'"));
        }
        let class = DataClass::parse(class).ok_or_else(|| err("class must be phi, deid or ops"))?;
        Ok(TopicName(Arc::new(Parts {
            region: (*region).to_owned(),
            class,
            stream: (*stream).to_owned(),
            full: name.to_owned(),
        })))
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.full)
    }
}

/// What a topic is created with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: TopicName,
    /// Fixed for the life of the topic: the partitioner depends on it.
    pub partitions: u32,
    /// `None` keeps records forever (the log is the source of truth).
    pub retention_ms: Option<u64>,
}

impl TopicSpec {
    pub fn new(name: TopicName, partitions: u32) -> TopicSpec {
        TopicSpec { name, partitions, retention_ms: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_say_what_is_wrong() {
        let t: TopicName = "meridian.us-east.phi.ingest".parse().unwrap();
        assert_eq!((t.region(), t.class(), t.stream()), ("us-east", DataClass::Phi, "ingest"));
        assert_eq!(
            TopicName::new("eu-west", DataClass::Operational, "routing").unwrap().as_str(),
            "meridian.eu-west.ops.routing"
        );
        assert!("meridian.us-east.secret.ingest".parse::<TopicName>().unwrap_err().reason.contains("class"));
        assert!("kafka.us-east.phi.ingest".parse::<TopicName>().is_err());
        assert!("meridian.US.phi.ingest".parse::<TopicName>().is_err());
        assert!("meridian.us-east.phi".parse::<TopicName>().is_err());
    }
}
