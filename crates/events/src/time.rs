//! Time as a value. Domain code never reads the clock: callers pass a
//! [`UnixMicros`] taken from a request or from the causing event.

use serde::{Deserialize, Serialize};

/// Microseconds since the Unix epoch, UTC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UnixMicros(pub i64);

impl UnixMicros {
    /// The protobuf form.
    pub fn to_timestamp(self) -> prost_types::Timestamp {
        prost_types::Timestamp {
            seconds: self.0.div_euclid(1_000_000),
            nanos: (self.0.rem_euclid(1_000_000) * 1_000) as i32,
        }
    }

    /// From the protobuf form; sub-microsecond precision is dropped.
    pub fn from_timestamp(ts: &prost_types::Timestamp) -> Self {
        UnixMicros(ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1_000)
    }

    /// Milliseconds since the epoch, as UUIDv7 wants them.
    pub fn as_millis(self) -> i64 {
        self.0.div_euclid(1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_round_trips_including_before_epoch() {
        for micros in [0, 1, 999_999, 1_700_000_000_123_456, -1, -1_500_001] {
            let t = UnixMicros(micros);
            assert_eq!(UnixMicros::from_timestamp(&t.to_timestamp()), t);
            assert!((0..1_000_000_000).contains(&t.to_timestamp().nanos));
        }
    }
}
