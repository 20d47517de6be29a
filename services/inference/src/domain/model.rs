//! What inference knows: each study's instances as ingest recorded them
//! (opaque ids and where the object is, never patient data), its
//! completion, and which models have read it. Studies leave the state a
//! day after their completion (counted by later completions, so the fold
//! stays pure): a triage that has not happened by then no longer helps.
//!
//! A study may grow after its completion (StudyUpdated): each model's
//! answer remembers what it answered (the StudyCompleted or StudyUpdated
//! that caused it) and a digest of the instances it read, so an update
//! reruns only the models whose input would change.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use meridian_events::{EventId, UnixMicros};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One instance of a study.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: Uuid,
    pub series: Uuid,
    /// Where its Part-10 bytes are in the region's object store.
    pub object_key: String,
    pub transfer_syntax: String,
    pub modality: String,
    pub body_part: String,
}

/// A study's completion, as ingest said it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    /// The StudyCompleted's id: outcomes' ids derive from it.
    pub cause: EventId,
    pub tenant: String,
    #[serde(default)]
    pub facility: String,
    pub contract: String,
    pub modality: String,
    pub body_part: String,
    pub instance_count: u32,
    pub completed_at: UnixMicros,
}

/// The latest StudyUpdated of a completed study: the count it brings the
/// study up to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub cause: EventId,
    pub instance_count: u32,
}

/// A model's latest outcome for a study: what it answered and what it read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The StudyCompleted or StudyUpdated it answered.
    pub cause: Option<EventId>,
    /// [`input_digest`] of the instances read (empty when none were).
    pub digest: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Study {
    pub instances: Vec<Instance>,
    pub completion: Option<Completion>,
    /// Models (`name@version`) with an outcome, completed or failed.
    pub read_by: BTreeSet<String>,
    /// When it was first seen: a study never completed is let go too.
    pub first_seen: UnixMicros,
    #[serde(default)]
    pub update: Option<Update>,
    /// Model → its latest outcome's cause and input.
    #[serde(default)]
    pub answered: BTreeMap<String, Answer>,
    /// `model/cause` of the scores folded (each counted once).
    #[serde(default)]
    pub scored: BTreeSet<String>,
}

/// An opaque digest of the instances a model read: equal digests, equal
/// input. A UUID over their opaque ids, in the order read.
pub fn input_digest(instances: &[Uuid]) -> String {
    let parts: Vec<&[u8]> = instances.iter().map(|i| i.as_bytes().as_slice()).collect();
    meridian_events::id::aggregate_id("inference.input", &parts).to_string()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub studies: BTreeMap<Uuid, Study>,
    /// What each model said of each study (codes only): one small entry
    /// per study read, kept after the study leaves `studies`.
    #[serde(default)]
    pub outcomes: BTreeMap<Uuid, Vec<Summary>>,
    /// Models turned off (by name).
    #[serde(default)]
    pub disabled: BTreeSet<String>,
    /// How each model (`name@version`) has done here.
    #[serde(default)]
    pub stats: BTreeMap<String, ModelStats>,
}

/// Upper bounds (ms) of the latency histogram's buckets; a last bucket
/// counts what is above them.
pub const LATENCY_BOUNDS: [u32; 10] = [10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000];
/// Bins of a score distribution: ten of width 0.1 over [0, 1] (1.0 in the
/// last).
pub const SCORE_BINS: usize = 10;
/// The most recent outcomes kept for the drift check.
pub const MAX_WINDOW: usize = 1_000;

/// A model's outcomes here: counts, a latency histogram, the last
/// outcomes' flags (for drift) and the drift alerts raised.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelStats {
    pub completed: u64,
    pub flagged: u64,
    pub failed: u64,
    pub latency: Vec<u64>,
    pub recent: VecDeque<bool>,
    pub drift_alerts: u64,
    /// `completed` when the last alert was raised (one a window).
    pub alerted_at: u64,
    /// Output → how its study scores fell in [`SCORE_BINS`] bins.
    #[serde(default)]
    pub scores: BTreeMap<String, Vec<u64>>,
    /// Failures by reason code.
    #[serde(default)]
    pub failures: BTreeMap<String, u64>,
}

impl ModelStats {
    /// The share flagged over the last `window` outcomes, once there are
    /// that many.
    pub fn recent_rate(&self, window: usize) -> Option<f64> {
        let n = window.min(self.recent.len());
        if n == 0 || self.recent.len() < window {
            return None;
        }
        let flagged = self.recent.iter().rev().take(n).filter(|f| **f).count();
        Some(flagged as f64 / n as f64)
    }

    /// The latency (ms, a bucket's upper bound) under which `p` of the
    /// reads fell; `None` before any.
    pub fn latency_percentile(&self, p: f64) -> Option<u32> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = (total as f64 * p).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= wanted {
                return Some(LATENCY_BOUNDS.get(i).copied().unwrap_or(u32::MAX));
            }
        }
        None
    }
}

/// A model's outcome for a study, as the API shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Whose study it is.
    pub tenant: String,
    /// `name@version`.
    pub model: String,
    /// "completed" or "failed".
    pub outcome: String,
    pub flagged: bool,
    pub suggested: String,
    pub findings: Vec<String>,
    pub latency_ms: u32,
    pub instances_used: u32,
    pub reason: String,
    pub detail: String,
    /// The StudyCompleted or StudyUpdated it answered.
    #[serde(default)]
    pub cause: Option<EventId>,
    /// [`input_digest`] of what it read.
    #[serde(default)]
    pub input_digest: String,
}

/// How long a study is kept after its completion (or its first instance).
pub const KEPT: i64 = 86_400_000_000;

#[derive(Clone, Debug, PartialEq)]
pub enum Fact {
    /// InstanceReceived.
    Instance { study: Uuid, instance: Instance, at: UnixMicros },
    /// StudyCompleted (its `completed_at`).
    Completed { study: Uuid, completion: Completion },
    /// StudyUpdated: instances came after the completion.
    Updated { study: Uuid, update: Update, at: UnixMicros },
    /// AiTriageScored: each output's score (the study's highest).
    Scored { study: Uuid, model: String, cause: Option<EventId>, scores: Vec<(String, f32)>, at: UnixMicros },
    /// AiTriageCompleted or AiTriageFailed, when it was appended.
    Read { study: Uuid, summary: Summary, at: UnixMicros },
    /// ModelEnabled or ModelDisabled.
    Switched { model: String, enabled: bool },
    /// ModelDriftDetected (`name@version`, its completed outcomes then).
    Drifted { model: String, outcomes: u64 },
}

pub fn apply(mut state: State, fact: &Fact) -> State {
    match fact {
        Fact::Instance { study, instance, at } => {
            let s = state.studies.entry(*study).or_insert_with(|| Study { first_seen: *at, ..Study::default() });
            if !s.instances.iter().any(|i| i.id == instance.id) {
                s.instances.push(instance.clone());
            }
        }
        Fact::Completed { study, completion } => {
            let at = completion.completed_at;
            let s = state.studies.entry(*study).or_insert_with(|| Study { first_seen: at, ..Study::default() });
            if s.completion.is_none() {
                s.completion = Some(completion.clone());
            }
            // Let go of what is a day older than this completion.
            let cutoff = UnixMicros(at.0.saturating_sub(KEPT));
            state.studies.retain(|_, s| s.completion.as_ref().map_or(s.first_seen, |c| c.completed_at) >= cutoff);
        }
        Fact::Updated { study, update, at } => {
            let s = state.studies.entry(*study).or_insert_with(|| Study { first_seen: *at, ..Study::default() });
            if s.update.as_ref().is_none_or(|u| update.instance_count >= u.instance_count) {
                s.update = Some(update.clone());
            }
        }
        Fact::Scored { study, model, cause, scores, at } => {
            let s = state.studies.entry(*study).or_insert_with(|| Study { first_seen: *at, ..Study::default() });
            let key = format!("{model}/{}", cause.map(|c| c.0.to_string()).unwrap_or_default());
            if s.scored.insert(key) {
                let stats = state.stats.entry(model.clone()).or_default();
                for (output, score) in scores {
                    let bins = stats.scores.entry(output.clone()).or_insert_with(|| vec![0; SCORE_BINS]);
                    let bin = ((score.clamp(0.0, 1.0) * SCORE_BINS as f32) as usize).min(SCORE_BINS - 1);
                    bins[bin] += 1;
                }
            }
        }
        Fact::Read { study, summary, at } => {
            // Folded in any order with ingest's topics (a restart may read
            // this topic first): the study is made here if need be, so a
            // completion folded later finds it read.
            let s = state.studies.entry(*study).or_insert_with(|| Study { first_seen: *at, ..Study::default() });
            s.read_by.insert(summary.model.clone());
            s.answered
                .insert(summary.model.clone(), Answer { cause: summary.cause, digest: summary.input_digest.clone() });
            let outcomes = state.outcomes.entry(*study).or_default();
            let earlier = outcomes.iter().position(|o| o.model == summary.model);
            // A rerun (another cause) takes its model's place; the same
            // outcome folded again changes nothing.
            if earlier.is_none_or(|at| outcomes[at].cause != summary.cause) {
                match earlier {
                    Some(at) => outcomes[at] = summary.clone(),
                    None => outcomes.push(summary.clone()),
                }
                let stats = state.stats.entry(summary.model.clone()).or_default();
                if summary.outcome == "failed" {
                    stats.failed += 1;
                    *stats.failures.entry(summary.reason.clone()).or_default() += 1;
                } else {
                    stats.completed += 1;
                    stats.flagged += u64::from(summary.flagged);
                    stats.latency.resize(LATENCY_BOUNDS.len() + 1, 0);
                    let bucket =
                        LATENCY_BOUNDS.iter().position(|b| summary.latency_ms <= *b).unwrap_or(LATENCY_BOUNDS.len());
                    stats.latency[bucket] += 1;
                    stats.recent.push_back(summary.flagged);
                    if stats.recent.len() > MAX_WINDOW {
                        stats.recent.pop_front();
                    }
                }
            }
        }
        Fact::Drifted { model, outcomes } => {
            let stats = state.stats.entry(model.clone()).or_default();
            if *outcomes > stats.alerted_at || stats.drift_alerts == 0 {
                stats.drift_alerts += 1;
                stats.alerted_at = *outcomes;
            }
        }
        Fact::Switched { model, enabled } => {
            if *enabled {
                state.disabled.remove(model);
            } else {
                state.disabled.insert(model.clone());
            }
        }
    }
    state
}
