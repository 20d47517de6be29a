//! The answers to keyed requests (claim, release, reassign), folded from
//! routing's own events so that they outlive a restart: a retry with the
//! same idempotency key gets the first call's answer again, and the same
//! key sent with a different request is refused, naming the key.
//!
//! A keyed request's events have ids derived from (caller, key, event
//! type, ordinal) (`EventId::idempotent`), so the answer to a retry is
//! found by computing the id its first event would have. Unkeyed requests'
//! events have time-ordered (v7) ids and are not kept.
//!
//! Bound: answers are kept for [`KEPT_FOR`] after they were given and at
//! most [`KEPT_AT_MOST`] of them, the oldest leaving first; a retry after
//! that is decided afresh (and refused if the first call took effect).

use std::collections::{BTreeMap, VecDeque};

use meridian_events::payload::Payload;
use meridian_events::{EventId, UnixMicros};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::worklist::{Command, Event};

/// How long an answer is kept: a client's retries come within minutes;
/// a day covers a reading room left open overnight.
pub const KEPT_FOR: i64 = 24 * 3_600 * 1_000_000;
/// At most this many answers (about 200 bytes each).
pub const KEPT_AT_MOST: usize = 100_000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Answers {
    /// First event id → the event that answered.
    by_id: BTreeMap<Uuid, Event>,
    /// When each was answered, oldest first.
    order: VecDeque<(UnixMicros, Uuid)>,
}

/// What a keyed command finds among the answers.
#[derive(Debug, PartialEq)]
pub enum Retry {
    /// Not answered before (or no longer kept): decide it.
    New,
    /// The same request, answered with this event: answer it again.
    Same(Event),
    /// The key answered another request, with this event.
    Different(Event),
}

/// The payload type of the first event a keyed command answers with.
fn answered_by(command: &Command) -> Option<&'static str> {
    let payload = match command {
        Command::Claim { .. } | Command::ClaimNext { .. } => Payload::AssignmentClaimed(Default::default()),
        Command::Release { .. } => Payload::AssignmentReleased(Default::default()),
        Command::Reassign { .. } => Payload::AssignmentReassigned(Default::default()),
        _ => return None,
    };
    Some(payload.type_name())
}

fn same(command: &Command, event: &Event) -> bool {
    match (command, event) {
        (Command::Claim { reader, study }, Event::AssignmentClaimed { study: s, reader: r, .. }) => {
            reader == r && study == s
        }
        (Command::ClaimNext { reader }, Event::AssignmentClaimed { reader: r, .. }) => reader == r,
        (Command::Release { reader, study, .. }, Event::AssignmentReleased { study: s, reader: r, .. }) => {
            reader == r && study == s
        }
        (Command::Reassign { group, study, to }, Event::AssignmentReassigned { study: s, to: t, by_group, .. }) => {
            study == s && to == t && group == by_group
        }
        _ => false,
    }
}

/// The request an answer answered, in words.
pub fn describe(event: &Event) -> String {
    match event {
        Event::AssignmentClaimed { study, reader, .. } => format!("a claim of study {study} by {reader}"),
        Event::AssignmentReleased { study, reader, .. } => format!("a release of study {study} by {reader}"),
        Event::AssignmentReassigned { study, to, .. } => format!("a reassignment of study {study} to {to}"),
        other => format!("{other:?}"),
    }
}

impl Answers {
    /// Keeps `event` (with id `id`, given at `at`) if it answers a keyed
    /// request, and lets go of answers past their time.
    pub fn record(&mut self, id: EventId, event: &Event, at: UnixMicros) {
        let answers = matches!(
            event,
            Event::AssignmentClaimed { .. } | Event::AssignmentReleased { .. } | Event::AssignmentReassigned { .. }
        );
        let id = id.as_uuid();
        if !answers || id.get_version_num() == 7 || self.by_id.contains_key(&id) {
            return;
        }
        self.by_id.insert(id, event.clone());
        self.order.push_back((at, id));
        while let Some(&(oldest, id)) = self.order.front() {
            if self.order.len() <= KEPT_AT_MOST && oldest.0 >= at.0 - KEPT_FOR {
                break;
            }
            self.order.pop_front();
            self.by_id.remove(&id);
        }
    }

    /// What `command`, sent by `caller` with `key`, was answered before.
    pub fn retry(&self, caller: &str, key: &str, command: &Command) -> Retry {
        let Some(type_name) = answered_by(command) else { return Retry::New };
        let id = EventId::idempotent(caller, key, type_name, 0).as_uuid();
        match self.by_id.get(&id) {
            None => Retry::New,
            Some(e) if same(command, e) => Retry::Same(e.clone()),
            Some(e) => Retry::Different(e.clone()),
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::DeliveryModel;

    fn claimed(study: u128, reader: &str) -> Event {
        Event::AssignmentClaimed {
            study: Uuid::from_u128(study),
            reader: reader.into(),
            delivery_model: DeliveryModel::Onshore,
        }
    }

    fn claim_id(key: &str) -> EventId {
        EventId::idempotent("reader:dr-x", key, "meridian.events.v1.AssignmentClaimed", 0)
    }

    #[test]
    fn a_retry_finds_its_answer_and_another_request_under_the_key_is_told_apart() {
        let mut answers = Answers::default();
        answers.record(claim_id("k1"), &claimed(1, "dr-x"), UnixMicros(0));
        let claim = |study: u128| Command::Claim { reader: "dr-x".into(), study: Uuid::from_u128(study) };
        assert_eq!(answers.retry("reader:dr-x", "k1", &claim(1)), Retry::Same(claimed(1, "dr-x")));
        let next = Command::ClaimNext { reader: "dr-x".into() };
        assert_eq!(answers.retry("reader:dr-x", "k1", &next), Retry::Same(claimed(1, "dr-x")));
        assert_eq!(answers.retry("reader:dr-x", "k1", &claim(2)), Retry::Different(claimed(1, "dr-x")));
        assert_eq!(answers.retry("reader:dr-x", "k2", &claim(1)), Retry::New, "another key");
        assert_eq!(answers.retry("reader:dr-y", "k1", &claim(1)), Retry::New, "another caller's key");
        let release = Command::Release { reader: "dr-x".into(), study: Uuid::from_u128(1), reason: String::new() };
        assert_eq!(answers.retry("reader:dr-x", "k1", &release), Retry::New, "keys are per kind of answer");
    }

    #[test]
    fn unkeyed_answers_are_not_kept_and_kept_ones_leave_by_age_and_count() {
        let mut answers = Answers::default();
        answers.record(EventId::new_at(UnixMicros(5)), &claimed(1, "dr-x"), UnixMicros(5));
        assert!(answers.is_empty(), "a v7 id is an unkeyed request's");
        answers.record(claim_id("old"), &claimed(1, "dr-x"), UnixMicros(0));
        answers.record(claim_id("new"), &claimed(2, "dr-x"), UnixMicros(KEPT_FOR));
        assert_eq!(answers.len(), 2, "exactly a day old is still kept");
        answers.record(claim_id("newer"), &claimed(3, "dr-x"), UnixMicros(KEPT_FOR + 1));
        assert_eq!(answers.len(), 2);
        let claim = Command::Claim { reader: "dr-x".into(), study: Uuid::from_u128(1) };
        assert_eq!(answers.retry("reader:dr-x", "old", &claim), Retry::New, "past its day");
        for i in 0..KEPT_AT_MOST + 10 {
            answers.record(claim_id(&format!("k{i}")), &claimed(9, "dr-x"), UnixMicros(KEPT_FOR + 2));
        }
        assert_eq!(answers.len(), KEPT_AT_MOST);
        let nine = Command::Claim { reader: "dr-x".into(), study: Uuid::from_u128(9) };
        assert_eq!(answers.retry("reader:dr-x", "k0", &nine), Retry::New, "the oldest left first");
        assert!(matches!(answers.retry("reader:dr-x", &format!("k{}", KEPT_AT_MOST + 9), &nine), Retry::Same(_)));
    }
}
