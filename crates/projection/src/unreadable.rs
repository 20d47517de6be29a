//! Events a projection folds but cannot read: counted by what was wrong,
//! never a stop (one bad event must not halt a service's state).

use std::collections::BTreeMap;

use meridian_events::EventId;
use uuid::Uuid;

/// Why an event could not be read: its payload, the field, and what.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{payload}.{field}: {reason}")]
pub struct Unreadable {
    pub payload: &'static str,
    pub field: &'static str,
    pub reason: String,
}

/// `text`, a payload's id field, as a UUID.
pub fn uuid(payload: &'static str, field: &'static str, text: &str) -> Result<Uuid, Unreadable> {
    Uuid::parse_str(text).map_err(|e| Unreadable { payload, field, reason: format!("{text:?} is not a UUID: {e}") })
}

/// `payload.field` → how many were unreadable, and the last reason with
/// its event: a bounded set, shown by the summary.
pub type Unreadables = BTreeMap<String, (u64, String)>;

/// Counts `why` (of `event`) in `seen`.
pub fn count(seen: &mut Unreadables, why: &Unreadable, event: EventId) {
    let entry = seen.entry(format!("{}.{}", why.payload, why.field)).or_default();
    entry.0 += 1;
    entry.1 = format!("{why} (event {event})");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_events_are_counted_by_payload_and_field_with_the_last_reason() {
        let mut seen = Unreadables::default();
        let e = uuid("StudyQueued", "study_id", "nope").unwrap_err();
        count(&mut seen, &e, EventId(Uuid::from_u128(1)));
        count(&mut seen, &e, EventId(Uuid::from_u128(2)));
        let (n, last) = &seen["StudyQueued.study_id"];
        assert_eq!(*n, 2);
        assert!(last.contains("\"nope\" is not a UUID") && last.contains("00000000-0000-0000-0000-000000000002"));
    }
}
