//! Records a consumer took in but could not use (undecodable, shredded,
//! under a data key this region lacks, naming a missing object), counted
//! by reason and logged with their coordinates, so that nothing is dropped
//! silently. Counts are this process's (since it started); the log lines
//! name topic, partition and offset, never PHI.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::Record;

#[derive(Debug, Default)]
pub struct Skips {
    consumer: &'static str,
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Skips {
    pub fn new(consumer: &'static str) -> Skips {
        Skips { consumer, counts: Mutex::default() }
    }

    /// Counts `record` as skipped for `reason` and logs where it is.
    pub fn skip(&self, record: &Record, reason: &'static str, error: &dyn std::fmt::Display) {
        log(self.consumer, record, reason, error);
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *counts.entry(reason).or_default() += 1;
    }

    pub fn consumer(&self) -> &'static str {
        self.consumer
    }

    /// Skipped records by reason.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        let counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.iter().map(|(reason, n)| ((*reason).to_owned(), *n)).collect()
    }

    pub fn total(&self) -> u64 {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().sum()
    }

    /// The consumer and its counts, as `/v1/summary` shows them.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"consumer": self.consumer, "skipped": self.counts(), "skipped_total": self.total()})
    }
}

/// Logs that `consumer` skipped `record`: opaque coordinates only (error
/// texts name event ids, never PHI).
pub fn log(consumer: &str, record: &Record, reason: &str, error: &dyn std::fmt::Display) {
    tracing::warn!(
        consumer,
        topic = %record.topic,
        partition = record.partition,
        offset = record.offset,
        reason,
        %error,
        "skipping record"
    );
}

/// Why a decoded envelope could not be opened, as every consumer (and the
/// projection runtime's stats) names it. A record that is not an envelope
/// at all is `corrupt_envelope`.
pub fn reason(error: &meridian_events::envelope::Error) -> &'static str {
    use meridian_events::envelope::Error as E;
    match error {
        E::Shredded { .. } => "shredded",
        E::UnknownKey { .. } => "unknown_data_key",
        _ => "unreadable_payload",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_counted_by_reason() {
        let skips = Skips::new("test");
        let record = Record {
            topic: "meridian.us-east.ops.ingest".parse().unwrap(),
            partition: 1,
            offset: 7,
            key: Vec::new(),
            value: Vec::new(),
            headers: Default::default(),
        };
        skips.skip(&record, "shredded", &"gone");
        skips.skip(&record, "shredded", &"gone");
        skips.skip(&record, "corrupt_envelope", &"bad");
        assert_eq!(skips.counts(), BTreeMap::from([("corrupt_envelope".into(), 1), ("shredded".into(), 2)]));
        assert_eq!(skips.total(), 3);
    }
}
