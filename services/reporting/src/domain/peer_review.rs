//! Peer review: a seeded, reproducible share of signed finals gets a
//! blinded second read by another reader, who then scores the reviewed
//! report by RADPEER 2016. Scores that say a significant miss (2b, 3a,
//! 3b) wait for an admin of the reviewed reader's group to arbitrate.
//! Concordance per reader and group is folded from the scores.

use std::collections::BTreeMap;

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{State, StudyFacts};

/// RADPEER 2016's scores: 1 concur; 2 a discrepancy not ordinarily expected
/// to be made, 3 one that should be made most of the time; a: unlikely to
/// be clinically significant, b: likely.
pub const SCORES: [&str; 5] = ["1", "2a", "2b", "3a", "3b"];

/// A score that needs a group admin's arbitration before it stands.
pub fn needs_arbitration(score: &str) -> bool {
    matches!(score, "2b" | "3a" | "3b")
}

/// A contract's sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub fraction: f64,
    pub seed: String,
    /// Microseconds a review may take.
    pub within: i64,
}

impl Sample {
    /// Whether `study`'s final is drawn: a hash of the seed and the study,
    /// below the fraction. The same seed draws the same studies, on any
    /// node, at any replay.
    pub fn draws(&self, study: Uuid) -> bool {
        let h = meridian_events::id::aggregate_id(
            "reporting.peer_review.sample",
            &[self.seed.as_bytes(), study.as_bytes()],
        );
        let bits = u64::from_be_bytes(h.as_bytes()[..8].try_into().unwrap_or_default());
        // 2^64 buckets: 0.05 draws the lowest twentieth.
        (bits as f64) < self.fraction * (u64::MAX as f64)
    }
}

/// A study's review.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    pub report: Uuid,
    pub reviewed_reader: String,
    pub reviewed_group: String,
    pub requested_at: UnixMicros,
    pub due: UnixMicros,
    pub scored: Option<Scored>,
    pub arbitrated: Option<Arbitrated>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scored {
    pub reviewer: String,
    pub score: String,
    pub at: UnixMicros,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Arbitrated {
    pub arbiter: String,
    pub score: String,
    pub at: UnixMicros,
}

impl Review {
    /// The score that stands: the arbiter's, else the reviewer's once it
    /// needs no arbitration.
    pub fn standing(&self) -> Option<&str> {
        match (&self.arbitrated, &self.scored) {
            (Some(a), _) => Some(a.score.as_str()),
            (None, Some(s)) if !needs_arbitration(&s.score) => Some(s.score.as_str()),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    Requested {
        study: Uuid,
        report: Uuid,
        reviewed_reader: String,
        reviewed_group: String,
        /// Boxed: the other events are a fraction of its size.
        facts: Box<StudyFacts>,
        requested_at: UnixMicros,
        due: UnixMicros,
    },
    Scored {
        study: Uuid,
        reviewed_reader: String,
        reviewed_group: String,
        reviewer: String,
        score: String,
        at: UnixMicros,
    },
    Arbitrated {
        study: Uuid,
        reviewed_reader: String,
        arbiter: String,
        scored: String,
        score: String,
        at: UnixMicros,
    },
}

impl PeerEvent {
    pub fn study(&self) -> Uuid {
        match self {
            PeerEvent::Requested { study, .. }
            | PeerEvent::Scored { study, .. }
            | PeerEvent::Arbitrated { study, .. } => *study,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("no study {study} is known to reporting in this region")]
    UnknownStudy { study: Uuid },
    #[error("study {study} was not drawn for peer review")]
    NotUnderReview { study: Uuid },
    #[error("score: {score:?} is not a RADPEER score (1, 2a, 2b, 3a, 3b)")]
    Score { score: String },
    #[error("{reader} has not signed a peer review read of study {study}: the blinded read comes before the score")]
    NotReviewer { study: Uuid, reader: String },
    #[error("study {study}'s review was scored {score} already")]
    AlreadyScored { study: Uuid, score: String },
    #[error("study {study}'s review needs no arbitration (scored {score})")]
    NoArbitration { study: Uuid, score: String },
    #[error("study {study}'s review is not scored yet")]
    NotScored { study: Uuid },
    #[error("study {study}'s review was arbitrated already ({score})")]
    AlreadyArbitrated { study: Uuid, score: String },
    #[error("the reviewed reader is of group {reviewed}; an admin of {group} may not arbitrate")]
    Group { reviewed: String, group: String },
}

impl PeerError {
    /// The rule a FAILED_PRECONDITION names, or None for a bad argument.
    pub fn rule(&self) -> Option<&'static str> {
        match self {
            PeerError::NotUnderReview { .. } => Some("PEER_REVIEW"),
            PeerError::NotReviewer { .. } => Some("REVIEWER"),
            PeerError::AlreadyScored { .. } => Some("SCORED"),
            PeerError::NoArbitration { .. } | PeerError::NotScored { .. } => Some("ARBITRATION"),
            PeerError::AlreadyArbitrated { .. } => Some("ARBITRATED"),
            PeerError::Group { .. } => Some("GROUP"),
            PeerError::UnknownStudy { .. } | PeerError::Score { .. } => None,
        }
    }
}

/// The request a signed final of `study` by `reader` makes, when the
/// contract's sample draws it.
pub fn drawn(
    state: &State,
    sample: Option<&Sample>,
    study: Uuid,
    report: Uuid,
    reader: &str,
    now: UnixMicros,
) -> Option<PeerEvent> {
    let sample = sample.filter(|s| s.draws(study))?;
    let s = state.studies.get(&study)?;
    if s.review.is_some() {
        return None;
    }
    Some(PeerEvent::Requested {
        study,
        report,
        reviewed_reader: reader.to_owned(),
        reviewed_group: state.groups.get(reader).cloned().unwrap_or_default(),
        facts: Box::new(s.facts.clone()),
        requested_at: now,
        due: UnixMicros(now.0.saturating_add(sample.within)),
    })
}

/// The reviewer's score of `study`'s reviewed report. The reviewer is who
/// signed the study's peer review read: blinded until then.
pub fn score(
    state: &State,
    study: Uuid,
    reader: &str,
    score: &str,
    now: UnixMicros,
) -> Result<Vec<PeerEvent>, PeerError> {
    if !SCORES.contains(&score) {
        return Err(PeerError::Score { score: score.to_owned() });
    }
    let s = state.studies.get(&study).ok_or(PeerError::UnknownStudy { study })?;
    let review = s.review.as_ref().ok_or(PeerError::NotUnderReview { study })?;
    let signed = s.report("peer_review").and_then(|r| r.signed.as_ref());
    if signed.is_none_or(|sig| sig.reader != reader) {
        return Err(PeerError::NotReviewer { study, reader: reader.to_owned() });
    }
    if let Some(done) = &review.scored {
        // The same score again is the same answer (a retry).
        if done.score == score && done.reviewer == reader {
            return Ok(Vec::new());
        }
        return Err(PeerError::AlreadyScored { study, score: done.score.clone() });
    }
    Ok(vec![PeerEvent::Scored {
        study,
        reviewed_reader: review.reviewed_reader.clone(),
        reviewed_group: review.reviewed_group.clone(),
        reviewer: reader.to_owned(),
        score: score.to_owned(),
        at: now,
    }])
}

/// An admin of `group` settles `study`'s score: upheld, or changed.
pub fn arbitrate(
    state: &State,
    study: Uuid,
    group: &str,
    arbiter: &str,
    score: &str,
    now: UnixMicros,
) -> Result<Vec<PeerEvent>, PeerError> {
    if !SCORES.contains(&score) {
        return Err(PeerError::Score { score: score.to_owned() });
    }
    let s = state.studies.get(&study).ok_or(PeerError::UnknownStudy { study })?;
    let review = s.review.as_ref().ok_or(PeerError::NotUnderReview { study })?;
    if review.reviewed_group != group {
        return Err(PeerError::Group { reviewed: review.reviewed_group.clone(), group: group.to_owned() });
    }
    let scored = review.scored.as_ref().ok_or(PeerError::NotScored { study })?;
    if let Some(done) = &review.arbitrated {
        if done.score == score && done.arbiter == arbiter {
            return Ok(Vec::new());
        }
        return Err(PeerError::AlreadyArbitrated { study, score: done.score.clone() });
    }
    if !needs_arbitration(&scored.score) {
        return Err(PeerError::NoArbitration { study, score: scored.score.clone() });
    }
    Ok(vec![PeerEvent::Arbitrated {
        study,
        reviewed_reader: review.reviewed_reader.clone(),
        arbiter: arbiter.to_owned(),
        scored: scored.score.clone(),
        score: score.to_owned(),
        at: now,
    }])
}

/// Folds a review's event.
pub fn apply(state: &mut State, event: &PeerEvent) {
    let s = state.studies.entry(event.study()).or_default();
    match event {
        PeerEvent::Requested { report, reviewed_reader, reviewed_group, requested_at, due, .. } => {
            if s.review.is_none() {
                s.review = Some(Review {
                    report: *report,
                    reviewed_reader: reviewed_reader.clone(),
                    reviewed_group: reviewed_group.clone(),
                    requested_at: *requested_at,
                    due: *due,
                    scored: None,
                    arbitrated: None,
                });
            }
        }
        PeerEvent::Scored { reviewer, score, at, .. } => {
            if let Some(r) = s.review.as_mut().filter(|r| r.scored.is_none()) {
                r.scored = Some(Scored { reviewer: reviewer.clone(), score: score.clone(), at: *at });
            }
        }
        PeerEvent::Arbitrated { arbiter, score, at, .. } => {
            if let Some(r) = s.review.as_mut().filter(|r| r.arbitrated.is_none()) {
                r.arbitrated = Some(Arbitrated { arbiter: arbiter.clone(), score: score.clone(), at: *at });
            }
        }
    }
}

/// One reader's or group's reviews in a period: how many stand scored, by
/// score, and how many wait for arbitration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Concordance {
    pub reviewed: u64,
    pub by_score: BTreeMap<String, u64>,
    pub awaiting_arbitration: u64,
}

impl Concordance {
    /// The share of standing scores that concur (score 1), in per mille.
    pub fn concordant_per_mille(&self) -> Option<u64> {
        let standing: u64 = self.by_score.values().sum();
        (standing > 0).then(|| self.by_score.get("1").copied().unwrap_or(0) * 1000 / standing)
    }
}

/// Concordance per reviewed reader and per reviewed group, of the reviews
/// of `tenant` scored in the month `period`.
pub fn concordance(
    state: &State,
    tenant: &str,
    in_period: impl Fn(UnixMicros) -> bool,
) -> (BTreeMap<String, Concordance>, BTreeMap<String, Concordance>) {
    let (mut readers, mut groups) = (BTreeMap::<String, Concordance>::new(), BTreeMap::<String, Concordance>::new());
    for s in state.studies.values().filter(|s| s.facts.tenant == tenant) {
        let Some(review) = &s.review else { continue };
        if !review.scored.as_ref().is_some_and(|sc| in_period(sc.at)) {
            continue;
        }
        for c in [
            readers.entry(review.reviewed_reader.clone()).or_default(),
            groups.entry(review.reviewed_group.clone()).or_default(),
        ] {
            c.reviewed += 1;
            match review.standing() {
                Some(score) => *c.by_score.entry(score.to_owned()).or_default() += 1,
                None => c.awaiting_arbitration += 1,
            }
        }
    }
    (readers, groups)
}
