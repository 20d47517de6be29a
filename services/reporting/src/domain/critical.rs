//! Critical results (ACR practice parameter for communication of
//! diagnostic imaging findings; Joint Commission NPSG.02.03.01): a reader
//! flags a critical finding with its ACR category, which sets how soon it
//! must reach a responsible person (the contract's window); recording who
//! was reached, how and when closes it, within its window or late; a
//! window that passes with no one reached escalates, once.

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::State;

/// A study's open (or closed) critical result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Critical {
    pub category: u8,
    pub read_type: String,
    pub flagged_by: String,
    pub flagged_at: UnixMicros,
    pub deadline: UnixMicros,
    /// When someone was reached, and whether within the window.
    pub closed: Option<(UnixMicros, bool)>,
    pub escalated: bool,
}

/// The ways a critical result may reach a person.
pub const METHODS: [&str; 3] = ["phone", "in_person", "secure_message"];

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CriticalError {
    #[error("no study {study} is known to reporting in this region")]
    UnknownStudy { study: Uuid },
    #[error("category: {category} is not an ACR category (1, 2 or 3)")]
    Category { category: u8 },
    #[error("{reader} neither holds study {study}'s read nor signed its report")]
    NotReader { study: Uuid, reader: String },
    #[error("study {study} has a critical result open since {since:?}: record its communication first")]
    Open { study: Uuid, since: UnixMicros },
    #[error("study {study} has no open critical result")]
    NoneOpen { study: Uuid },
    #[error("method: {method:?} is not one of phone, in_person, secure_message")]
    Method { method: String },
    #[error("recipient: name the person reached")]
    Recipient,
    #[error("communicated_at: {at:?} is after now ({now:?})")]
    Future { at: UnixMicros, now: UnixMicros },
}

impl CriticalError {
    /// The rule a FAILED_PRECONDITION names, or None for a bad argument.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            CriticalError::NotReader { .. } => Some("ASSIGNMENT"),
            CriticalError::Open { .. } => Some("CRITICAL_OPEN"),
            CriticalError::NoneOpen { .. } => Some("NO_CRITICAL"),
            _ => None,
        }
    }
}

/// What flagging, communicating and the clock decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CriticalEvent {
    Flagged {
        study: Uuid,
        read_type: String,
        category: u8,
        reader: String,
        at: UnixMicros,
        deadline: UnixMicros,
    },
    /// PHI: the recipient.
    Communicated {
        study: Uuid,
        recipient: String,
        method: String,
        reader: String,
        at: UnixMicros,
    },
    Closed {
        study: Uuid,
        category: u8,
        within_window: bool,
        at: UnixMicros,
    },
    Escalated {
        study: Uuid,
        category: u8,
        deadline: UnixMicros,
        reader: String,
    },
}

/// Whether `reader` reads `study`: holds its open read or signed one of its reports.
fn reads(state: &State, study: Uuid, reader: &str) -> Result<String, CriticalError> {
    let s = state.studies.get(&study).ok_or(CriticalError::UnknownStudy { study })?;
    if let Some(open) = s.open.as_ref().filter(|o| o.holder.as_deref() == Some(reader)) {
        return Ok(open.read_type.clone());
    }
    let signed = s.reports.iter().rev().find(|r| r.signed.as_ref().is_some_and(|sig| sig.reader == reader));
    signed.map(|r| r.read_type.clone()).ok_or_else(|| CriticalError::NotReader { study, reader: reader.to_owned() })
}

/// Flags `study`'s critical result of ACR `category`, due `window` seconds from `now`.
pub fn flag(
    state: &State,
    study: Uuid,
    reader: &str,
    category: u8,
    window: Option<u64>,
    now: UnixMicros,
) -> Result<CriticalEvent, CriticalError> {
    let window = window.filter(|_| (1..=3).contains(&category)).ok_or(CriticalError::Category { category })?;
    let read_type = reads(state, study, reader)?;
    if let Some(c) = state.studies.get(&study).and_then(|s| s.critical.as_ref()).filter(|c| c.closed.is_none()) {
        return Err(CriticalError::Open { study, since: c.flagged_at });
    }
    let deadline = UnixMicros(now.0.saturating_add(i64::try_from(window).unwrap_or(i64::MAX / 1_000_000) * 1_000_000));
    Ok(CriticalEvent::Flagged { study, read_type, category, reader: reader.to_owned(), at: now, deadline })
}

/// Records that `recipient` was reached by `method` at `at`: closes it.
pub fn communicate(
    state: &State,
    study: Uuid,
    reader: &str,
    recipient: &str,
    method: &str,
    at: UnixMicros,
    now: UnixMicros,
) -> Result<Vec<CriticalEvent>, CriticalError> {
    if !METHODS.contains(&method) {
        return Err(CriticalError::Method { method: method.to_owned() });
    }
    if recipient.trim().is_empty() {
        return Err(CriticalError::Recipient);
    }
    if at > now {
        return Err(CriticalError::Future { at, now });
    }
    reads(state, study, reader)?;
    let open = state.studies.get(&study).and_then(|s| s.critical.as_ref()).filter(|c| c.closed.is_none());
    let c = open.ok_or(CriticalError::NoneOpen { study })?;
    Ok(vec![
        CriticalEvent::Communicated {
            study,
            recipient: recipient.trim().to_owned(),
            method: method.to_owned(),
            reader: reader.to_owned(),
            at,
        },
        CriticalEvent::Closed { study, category: c.category, within_window: at <= c.deadline, at },
    ])
}

/// The escalations due at `now`: open critical results past their window,
/// not escalated yet.
pub fn due(state: &State, now: UnixMicros) -> Vec<CriticalEvent> {
    state
        .studies
        .iter()
        .filter_map(|(study, s)| s.critical.as_ref().map(|c| (study, c)))
        .filter(|(_, c)| c.closed.is_none() && !c.escalated && c.deadline <= now)
        .map(|(study, c)| CriticalEvent::Escalated {
            study: *study,
            category: c.category,
            deadline: c.deadline,
            reader: c.flagged_by.clone(),
        })
        .collect()
}

/// Folds one critical event into `state`.
pub fn apply(state: &mut State, event: &CriticalEvent) {
    match event {
        CriticalEvent::Flagged { study, read_type, category, reader, at, deadline } => {
            state.studies.entry(*study).or_default().critical = Some(Critical {
                category: *category,
                read_type: read_type.clone(),
                flagged_by: reader.clone(),
                flagged_at: *at,
                deadline: *deadline,
                closed: None,
                escalated: false,
            });
        }
        CriticalEvent::Communicated { .. } => {}
        CriticalEvent::Closed { study, within_window, at, .. } => {
            if let Some(c) = state.studies.get_mut(study).and_then(|s| s.critical.as_mut()) {
                c.closed = Some((*at, *within_window));
            }
        }
        CriticalEvent::Escalated { study, .. } => {
            if let Some(c) = state.studies.get_mut(study).and_then(|s| s.critical.as_mut()) {
                c.escalated = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::{Fact, StudyFacts, apply as fold};

    const NOW: UnixMicros = UnixMicros(1_796_000_000_000_000);
    const STUDY: Uuid = Uuid::from_u128(9);

    fn held() -> State {
        let state = fold(
            State::default(),
            &Fact::Queued { study: STUDY, facts: StudyFacts::default(), read_type: "preliminary".into() },
        );
        fold(state, &Fact::Held { study: STUDY, reader: "ortiz".into() })
    }

    #[test]
    fn a_critical_result_is_flagged_by_its_reader_closed_by_a_communication_and_escalated_once_when_late() {
        let mut state = held();
        assert_eq!(flag(&state, STUDY, "ortiz", 4, None, NOW).unwrap_err(), CriticalError::Category { category: 4 });
        assert_eq!(flag(&state, STUDY, "nair", 1, Some(3_600), NOW).unwrap_err().rule(), Some("ASSIGNMENT"));
        let flagged = flag(&state, STUDY, "ortiz", 1, Some(3_600), NOW).unwrap();
        let CriticalEvent::Flagged { deadline, .. } = &flagged else { panic!() };
        assert_eq!(*deadline, UnixMicros(NOW.0 + 3_600_000_000));
        apply(&mut state, &flagged);
        assert_eq!(flag(&state, STUDY, "ortiz", 2, Some(7_200), NOW).unwrap_err().rule(), Some("CRITICAL_OPEN"));
        // Nothing due inside the window; once past it, one escalation.
        assert!(due(&state, NOW).is_empty());
        let late = UnixMicros(NOW.0 + 3_600_000_001);
        let escalations = due(&state, late);
        assert!(matches!(&escalations[..], [CriticalEvent::Escalated { category: 1, .. }]), "{escalations:?}");
        apply(&mut state, &escalations[0]);
        assert!(due(&state, UnixMicros(late.0 * 2)).is_empty(), "escalated once");
        // Bad input names the field; then the communication closes it, late.
        let bad = communicate(&state, STUDY, "ortiz", "Dr Lee", "fax", late, late).unwrap_err();
        assert_eq!(bad.to_string(), "method: \"fax\" is not one of phone, in_person, secure_message");
        assert_eq!(
            communicate(&state, STUDY, "ortiz", " ", "phone", late, late).unwrap_err(),
            CriticalError::Recipient
        );
        let future = communicate(&state, STUDY, "ortiz", "Dr Lee", "phone", UnixMicros(late.0 + 1), late);
        assert!(matches!(future, Err(CriticalError::Future { .. })));
        let events = communicate(&state, STUDY, "ortiz", "Dr Lee, ED attending", "phone", late, late).unwrap();
        assert!(matches!(&events[1], CriticalEvent::Closed { within_window: false, .. }), "{events:?}");
        for e in &events {
            apply(&mut state, e);
        }
        assert_eq!(
            communicate(&state, STUDY, "ortiz", "Dr Lee", "phone", late, late).unwrap_err().rule(),
            Some("NO_CRITICAL")
        );
        // A new finding may be flagged now, and closed in time.
        let again = flag(&state, STUDY, "ortiz", 3, Some(86_400), late).unwrap();
        apply(&mut state, &again);
        let events = communicate(&state, STUDY, "ortiz", "Dr Lee", "secure_message", late, late).unwrap();
        assert!(matches!(&events[1], CriticalEvent::Closed { within_window: true, category: 3, .. }));
    }
}
