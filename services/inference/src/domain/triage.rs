//! Which models read a study, on which slices, and what their scores say.
//! A model reads the studies of the contracts that buy it, of its
//! modalities and body parts; it reads one series (the one with the most
//! slices it takes), at most `max_slices` of them, evenly spaced. Each
//! output's score is its highest over the slices; at or over its threshold
//! it flags its finding and suggests its priority. Inference only
//! suggests: routing raises a study's priority, never lowers it.

use std::collections::BTreeMap;

use meridian_events::{EventId, UnixMicros};
use uuid::Uuid;

use super::model::{Completion, Instance, State, Study, input_digest};

/// A model as inference decides by it.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    pub name: String,
    pub version: String,
    pub modalities: Vec<String>,
    /// Any when empty.
    pub body_parts: Vec<String>,
    /// The facilities it reads for; any when empty.
    pub facilities: Vec<String>,
    pub max_slices: usize,
    pub outputs: Vec<OutputSpec>,
    /// The drift check: the positive rate validation saw, the window of
    /// recent outcomes compared, and the tolerance.
    pub drift: Option<Drift>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    pub baseline: f64,
    pub window: usize,
    pub tolerance: f64,
}

/// A model whose recent outcomes stray from its validation.
#[derive(Clone, Debug, PartialEq)]
pub struct Drifted {
    pub model: String,
    pub window: usize,
    pub statistic: f64,
    pub baseline: f64,
    pub outcomes: u64,
}

/// The drift alerts due: each model whose share flagged over its last
/// window is farther than its tolerance from its baseline, once a window.
pub fn drifted(state: &State, policy: &Policy) -> Vec<Drifted> {
    let mut out = Vec::new();
    for spec in policy.models.values() {
        let (Some(d), Some(stats)) = (&spec.drift, state.stats.get(&spec.id())) else { continue };
        let Some(rate) = stats.recent_rate(d.window) else { continue };
        let window_passed = stats.drift_alerts == 0 || stats.completed >= stats.alerted_at + d.window as u64;
        if window_passed && (rate - d.baseline).abs() > d.tolerance {
            out.push(Drifted {
                model: spec.id(),
                window: d.window,
                statistic: rate,
                baseline: d.baseline,
                outcomes: stats.completed,
            });
        }
    }
    out
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutputSpec {
    pub name: String,
    pub threshold: f64,
    pub finding: String,
    /// "stat", "urgent" or "routine".
    pub priority: String,
}

impl ModelSpec {
    /// `name@version`: how outcomes name it.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }

    fn takes(&self, modality: &str, body_part: &str) -> bool {
        self.modalities.iter().any(|m| m == modality)
            && (self.body_parts.is_empty() || self.body_parts.iter().any(|b| b.eq_ignore_ascii_case(body_part)))
    }
}

/// The models, and which contracts buy which.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub models: BTreeMap<String, ModelSpec>,
    /// Contract → the models it buys.
    pub contracts: BTreeMap<String, Vec<String>>,
    /// Tenant → its one contract, for a study whose completion names none.
    pub only_contract: BTreeMap<String, String>,
}

impl Policy {
    /// The models `c`'s contract buys that take its modality and body part
    /// and read for its facility.
    pub fn models_for(&self, c: &Completion) -> Vec<&ModelSpec> {
        let contract = if c.contract.is_empty() { self.only_contract.get(&c.tenant) } else { Some(&c.contract) };
        let names = contract.and_then(|k| self.contracts.get(k)).map(Vec::as_slice).unwrap_or_default();
        names
            .iter()
            .filter_map(|n| self.models.get(n))
            .filter(|m| m.takes(&c.modality, &c.body_part))
            .filter(|m| m.facilities.is_empty() || m.facilities.contains(&c.facility))
            .collect()
    }
}

/// A model's read of a study that is due, and what it answers (the
/// StudyCompleted, or the StudyUpdated of a rerun).
#[derive(Clone, Debug, PartialEq)]
pub enum Due {
    /// Read these instances.
    Run { study: Uuid, model: ModelSpec, instances: Vec<Instance>, cause: EventId },
    /// It cannot: why (a code) and what (no PHI).
    Fail { study: Uuid, model: ModelSpec, reason: &'static str, detail: String, cause: EventId },
}

impl Due {
    /// The study it is about.
    pub fn study(&self) -> Uuid {
        match self {
            Due::Run { study, .. } | Due::Fail { study, .. } => *study,
        }
    }
}

/// The reads due at `now`: each completed study's models not yet read it,
/// and the reruns its latest StudyUpdated makes due. A study whose
/// instances are not all here `incomplete_after` its completion fails
/// `incomplete_study` (the two topics have no order: the completion may
/// come first).
pub fn due(state: &State, policy: &Policy, now: UnixMicros, incomplete_after: i64) -> Vec<Due> {
    let mut out = Vec::new();
    for (id, s) in &state.studies {
        let Some(c) = &s.completion else { continue };
        for model in policy.models_for(c) {
            if state.disabled.contains(&model.name) {
                continue;
            }
            if s.read_by.contains(&model.id()) {
                out.extend(rerun(*id, s, model));
                continue;
            }
            let (study, model, cause) = (*id, model.clone(), c.cause);
            if (s.instances.len() as u64) < u64::from(c.instance_count) {
                if now.0 >= c.completed_at.0.saturating_add(incomplete_after) {
                    let detail = format!("{} of {} instances in hand", s.instances.len(), c.instance_count);
                    out.push(Due::Fail { study, model, reason: "incomplete_study", detail, cause });
                }
                continue;
            }
            let taken = slices(&s.instances, &model);
            if taken.is_empty() {
                let detail = format!(
                    "no series of {} {} (the model reads {} {})",
                    c.modality,
                    c.body_part,
                    model.modalities.join("/"),
                    if model.body_parts.is_empty() { "any body part".to_owned() } else { model.body_parts.join("/") }
                );
                out.push(Due::Fail { study, model, reason: "no_matching_series", detail, cause });
            } else {
                out.push(Due::Run { study, model, instances: taken, cause });
            }
        }
    }
    out
}

/// A rerun of `model` on a study it has read: due once the study's latest
/// update is answered by no outcome of the model, all the instances it
/// counts are here, and what the model would read now differs from what it
/// read (another series, more slices). An update that changes nothing the
/// model reads runs nothing.
fn rerun(study: Uuid, s: &Study, model: &ModelSpec) -> Option<Due> {
    let update = s.update.as_ref()?;
    let answer = s.answered.get(&model.id());
    if answer.is_some_and(|a| a.cause == Some(update.cause))
        || (s.instances.len() as u64) < u64::from(update.instance_count)
    {
        return None;
    }
    let taken = slices(&s.instances, model);
    let ids: Vec<Uuid> = taken.iter().map(|i| i.id).collect();
    if taken.is_empty() || answer.is_some_and(|a| a.digest == input_digest(&ids)) {
        return None;
    }
    Some(Due::Run { study, model: model.clone(), instances: taken, cause: update.cause })
}

/// The slices `model` reads of `instances`: of the series with the most it
/// takes (the last by its id on a tie), at most `max_slices`, evenly spaced.
pub fn slices(instances: &[Instance], model: &ModelSpec) -> Vec<Instance> {
    let mut by_series: BTreeMap<Uuid, Vec<&Instance>> = BTreeMap::new();
    for i in instances.iter().filter(|i| model.takes(&i.modality, &i.body_part)) {
        by_series.entry(i.series).or_default().push(i);
    }
    let Some(series) = by_series.values().max_by_key(|s| s.len()).cloned() else { return Vec::new() };
    let n = series.len();
    let take = n.min(model.max_slices.max(1));
    (0..take).map(|k| series[k * n / take].clone()).collect()
}

/// What a model's scores say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Judged {
    pub flagged: bool,
    /// The most urgent priority among the flagged outputs.
    pub suggested: Option<String>,
    pub findings: Vec<String>,
}

fn rank(priority: &str) -> u8 {
    match priority {
        "stat" => 0,
        "urgent" => 1,
        _ => 2,
    }
}

/// Judges `scores` (each output's highest score) by `model`'s thresholds.
pub fn judge(model: &ModelSpec, scores: &BTreeMap<String, f32>) -> Judged {
    let over: Vec<&OutputSpec> =
        model.outputs.iter().filter(|o| scores.get(&o.name).is_some_and(|s| f64::from(*s) >= o.threshold)).collect();
    let suggested = over.iter().map(|o| o.priority.as_str()).min_by_key(|p| rank(p)).map(str::to_owned);
    Judged { flagged: !over.is_empty(), suggested, findings: over.iter().map(|o| o.finding.clone()).collect() }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::domain::model::{Fact, apply};

    fn model(max_slices: usize) -> ModelSpec {
        ModelSpec {
            name: "ich-demo".into(),
            version: "1".into(),
            modalities: vec!["CT".into()],
            body_parts: vec!["HEAD".into()],
            facilities: vec![],
            max_slices,
            drift: Some(Drift { baseline: 0.1, window: 10, tolerance: 0.2 }),
            outputs: vec![
                OutputSpec { name: "ich".into(), threshold: 0.5, finding: "ICH".into(), priority: "stat".into() },
                OutputSpec { name: "mass".into(), threshold: 0.8, finding: "MASS".into(), priority: "urgent".into() },
            ],
        }
    }

    fn instance(n: u128, series: u128, modality: &str) -> Instance {
        Instance {
            id: Uuid::from_u128(n),
            series: Uuid::from_u128(series),
            object_key: format!("o/{n}"),
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            modality: modality.into(),
            body_part: "HEAD".into(),
        }
    }

    fn policy() -> Policy {
        Policy {
            models: [("ich-demo".to_string(), model(4))].into(),
            contracts: [("acme-atlantic".to_string(), vec!["ich-demo".to_string()])].into(),
            only_contract: [("acme".to_string(), "acme-atlantic".to_string())].into(),
        }
    }

    fn completion(count: u32, body_part: &str) -> Completion {
        Completion {
            cause: meridian_events::EventId(Uuid::from_u128(9)),
            tenant: "acme".into(),
            facility: "acme-general".into(),
            contract: String::new(),
            modality: "CT".into(),
            body_part: body_part.into(),
            instance_count: count,
            completed_at: UnixMicros(1_000),
        }
    }

    #[test]
    fn a_study_is_read_once_all_its_instances_are_here_and_by_each_model_once() {
        let study = Uuid::from_u128(1);
        let mut state = State::default();
        state = apply(state, &Fact::Completed { study, completion: completion(2, "HEAD") });
        assert!(due(&state, &policy(), UnixMicros(2_000), 1_000_000).is_empty(), "one of two instances");
        for n in 1..=2 {
            state = apply(state, &Fact::Instance { study, instance: instance(n, 7, "CT"), at: UnixMicros(0) });
        }
        let runs = due(&state, &policy(), UnixMicros(2_000), 1_000_000);
        assert!(matches!(&runs[..], [Due::Run { instances, .. }] if instances.len() == 2), "{runs:?}");
        let summary = crate::domain::model::Summary { model: "ich-demo@1".into(), ..Default::default() };
        state = apply(state, &Fact::Read { study, summary, at: UnixMicros(2_000) });
        assert!(due(&state, &policy(), UnixMicros(2_000), 1_000_000).is_empty(), "read once");
        assert_eq!(state.outcomes[&study].len(), 1);
    }

    #[test]
    fn an_update_reruns_a_model_only_when_what_it_reads_changes_and_once_an_update() {
        let study = Uuid::from_u128(1);
        let mut state = apply(State::default(), &Fact::Completed { study, completion: completion(2, "HEAD") });
        for n in 1..=2 {
            state = apply(state, &Fact::Instance { study, instance: instance(n, 7, "CT"), at: UnixMicros(0) });
        }
        let read = |state: State, cause: EventId, ids: &[u128]| {
            let ids: Vec<Uuid> = ids.iter().map(|n| Uuid::from_u128(*n)).collect();
            let summary = crate::domain::model::Summary {
                model: "ich-demo@1".into(),
                outcome: "completed".into(),
                cause: Some(cause),
                input_digest: crate::domain::model::input_digest(&ids),
                ..Default::default()
            };
            apply(state, &Fact::Read { study, summary, at: UnixMicros(2_000) })
        };
        let first = completion(2, "HEAD").cause;
        state = read(state, first, &[1, 2]);
        // A report (SR) arrives after completion: the head CT model reads the same slices.
        let sr = EventId(Uuid::from_u128(20));
        let update = |cause, instance_count| Fact::Updated {
            study,
            update: crate::domain::model::Update { cause, instance_count },
            at: UnixMicros(3_000),
        };
        state = apply(state, &update(sr, 3));
        assert!(due(&state, &policy(), UnixMicros(4_000), 1_000_000).is_empty(), "the update's instance is not here");
        state = apply(state, &Fact::Instance { study, instance: instance(3, 8, "SR"), at: UnixMicros(0) });
        assert!(due(&state, &policy(), UnixMicros(4_000), 1_000_000).is_empty(), "nothing the model reads changed");
        // Another CT slice of the series: a rerun answering that update.
        let slice = EventId(Uuid::from_u128(21));
        state = apply(state, &update(slice, 4));
        state = apply(state, &Fact::Instance { study, instance: instance(4, 7, "CT"), at: UnixMicros(0) });
        let runs = due(&state, &policy(), UnixMicros(4_000), 1_000_000);
        assert!(
            matches!(&runs[..], [Due::Run { instances, cause, .. }] if instances.len() == 3 && *cause == slice),
            "{runs:?}"
        );
        state = read(state, slice, &[1, 2, 4]);
        assert!(due(&state, &policy(), UnixMicros(4_000), 1_000_000).is_empty(), "that update is answered");
        assert_eq!(state.outcomes[&study].len(), 1, "the rerun takes its model's place");
        assert_eq!(state.outcomes[&study][0].cause, Some(slice));
        assert_eq!(state.stats["ich-demo@1"].completed, 2, "both reads counted");
        // The rerun folded again changes nothing.
        let again = read(state.clone(), slice, &[1, 2, 4]);
        assert_eq!(again, state);
    }

    #[test]
    fn scores_fall_into_tenths_once_per_outcome() {
        let study = Uuid::from_u128(1);
        let scored = |study: Uuid, cause: u128, score: f32| Fact::Scored {
            study,
            model: "ich-demo@1".into(),
            cause: Some(EventId(Uuid::from_u128(cause))),
            scores: vec![("ich".into(), score)],
            at: UnixMicros(0),
        };
        let mut state = State::default();
        for (n, score) in [(1, 0.05), (2, 0.95), (3, 1.0), (4, 0.5)] {
            state = apply(state, &scored(Uuid::from_u128(n), 9, score));
        }
        state = apply(state, &scored(study, 9, 0.05));
        assert_eq!(state.stats["ich-demo@1"].scores["ich"], vec![1, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
        // A rerun's scores count as another outcome.
        state = apply(state, &scored(study, 10, 0.15));
        assert_eq!(state.stats["ich-demo@1"].scores["ich"][1], 1);
        // Failures are counted by their reason.
        let failed = crate::domain::model::Summary {
            model: "ich-demo@1".into(),
            outcome: "failed".into(),
            reason: "unreachable".into(),
            ..Default::default()
        };
        state = apply(state, &Fact::Read { study: Uuid::from_u128(7), summary: failed, at: UnixMicros(0) });
        let stats = &state.stats["ich-demo@1"];
        assert_eq!((stats.failed, stats.failures.get("unreachable")), (1, Some(&1)));
    }

    #[test]
    fn an_outcome_folded_before_its_study_still_counts() {
        // A restart may fold inference's topic before ingest's.
        let study = Uuid::from_u128(1);
        let summary = crate::domain::model::Summary { model: "ich-demo@1".into(), ..Default::default() };
        let state = apply(State::default(), &Fact::Read { study, summary, at: UnixMicros(1_500) });
        let state = apply(state, &Fact::Instance { study, instance: instance(1, 7, "CT"), at: UnixMicros(0) });
        let state = apply(state, &Fact::Completed { study, completion: completion(1, "HEAD") });
        assert!(due(&state, &policy(), UnixMicros(2_000), 1_000_000).is_empty(), "read already");
    }

    #[test]
    fn drift_is_raised_when_the_recent_share_flagged_strays_once_a_window() {
        let read = |state: State, n: u128, flagged: bool| {
            let summary = crate::domain::model::Summary {
                model: "ich-demo@1".into(),
                outcome: "completed".into(),
                flagged,
                latency_ms: 40,
                ..Default::default()
            };
            apply(state, &Fact::Read { study: Uuid::from_u128(n), summary, at: UnixMicros(0) })
        };
        // Nine outcomes: not a window yet; then one in ten flagged: as validated.
        let mut state = State::default();
        for n in 0..9 {
            state = read(state, n, false);
        }
        assert!(drifted(&state, &policy()).is_empty());
        state = read(state, 9, true);
        assert!(drifted(&state, &policy()).is_empty(), "10% against 10%");
        // Then five in ten: 50% against 10% ± 20%.
        for n in 10..15 {
            state = read(state, n, true);
        }
        let alerts = drifted(&state, &policy());
        assert!(matches!(&alerts[..], [d] if (d.statistic - 0.6).abs() < 1e-9 && d.outcomes == 15), "{alerts:?}");
        state = apply(state, &Fact::Drifted { model: "ich-demo@1".into(), outcomes: 15 });
        assert!(drifted(&state, &policy()).is_empty(), "once a window");
        for n in 15..25 {
            state = read(state, n, true);
        }
        assert_eq!(drifted(&state, &policy()).len(), 1, "the next window, still astray");
        let stats = &state.stats["ich-demo@1"];
        assert_eq!((stats.completed, stats.latency_percentile(0.99)), (25, Some(50)));
    }

    #[test]
    fn a_model_turned_off_reads_nothing_until_turned_on() {
        let study = Uuid::from_u128(1);
        let state = apply(State::default(), &Fact::Completed { study, completion: completion(1, "HEAD") });
        let state = apply(state, &Fact::Instance { study, instance: instance(1, 7, "CT"), at: UnixMicros(0) });
        let off = apply(state, &Fact::Switched { model: "ich-demo".into(), enabled: false });
        assert!(due(&off, &policy(), UnixMicros(2_000), 1_000_000).is_empty());
        let on = apply(off, &Fact::Switched { model: "ich-demo".into(), enabled: true });
        assert_eq!(due(&on, &policy(), UnixMicros(2_000), 1_000_000).len(), 1);
    }

    #[test]
    fn a_study_missing_instances_past_the_bound_or_with_no_series_the_model_takes_fails_saying_why() {
        let study = Uuid::from_u128(1);
        let state = apply(State::default(), &Fact::Completed { study, completion: completion(3, "HEAD") });
        let failed = due(&state, &policy(), UnixMicros(1_000 + 1_000_000), 1_000_000);
        assert!(matches!(&failed[..], [Due::Fail { reason: "incomplete_study", .. }]), "{failed:?}");
        let state = apply(State::default(), &Fact::Completed { study, completion: completion(1, "HEAD") });
        let state = apply(state, &Fact::Instance { study, instance: instance(1, 7, "SR"), at: UnixMicros(0) });
        let failed = due(&state, &policy(), UnixMicros(2_000), 1_000_000);
        assert!(matches!(&failed[..], [Due::Fail { reason: "no_matching_series", .. }]), "{failed:?}");
        // A chest CT is not the head model's; a contract that buys nothing, nothing.
        let state = apply(State::default(), &Fact::Completed { study, completion: completion(1, "CHEST") });
        assert!(due(&state, &policy(), UnixMicros(2_000), 1_000_000).is_empty());
        // A model validated at other facilities reads nothing for this one.
        let mut elsewhere = policy();
        elsewhere.models.get_mut("ich-demo").unwrap().facilities = vec!["acme-north".into()];
        let state = apply(State::default(), &Fact::Completed { study, completion: completion(1, "HEAD") });
        let state = apply(state, &Fact::Instance { study, instance: instance(1, 7, "CT"), at: UnixMicros(0) });
        assert!(due(&state, &elsewhere, UnixMicros(2_000), 1_000_000).is_empty());
        assert_eq!(due(&state, &policy(), UnixMicros(2_000), 1_000_000).len(), 1);
    }

    #[test]
    fn a_study_leaves_the_state_a_day_after_its_completion() {
        let old = Uuid::from_u128(1);
        let state = apply(State::default(), &Fact::Completed { study: old, completion: completion(1, "HEAD") });
        let later =
            Completion { completed_at: UnixMicros(1_000 + crate::domain::model::KEPT + 1), ..completion(1, "HEAD") };
        let state = apply(state, &Fact::Completed { study: Uuid::from_u128(2), completion: later });
        assert!(!state.studies.contains_key(&old) && state.studies.len() == 1);
    }

    proptest! {
        #[test]
        fn flagged_exactly_when_a_score_reaches_its_threshold_and_the_most_urgent_is_suggested(
            ich in 0.0f32..1.0, mass in 0.0f32..1.0,
        ) {
            let scores = [("ich".to_string(), ich), ("mass".to_string(), mass)].into();
            let j = judge(&model(4), &scores);
            let (ich_over, mass_over) = (f64::from(ich) >= 0.5, f64::from(mass) >= 0.8);
            prop_assert_eq!(j.flagged, ich_over || mass_over);
            let expected = if ich_over { Some("stat") } else if mass_over { Some("urgent") } else { None };
            prop_assert_eq!(j.suggested.as_deref(), expected);
            prop_assert_eq!(j.findings.len(), usize::from(ich_over) + usize::from(mass_over));
        }

        #[test]
        fn slices_are_of_one_series_at_most_max_and_spread(n in 1usize..300, max in 1usize..64, other in 0usize..10) {
            let mut instances: Vec<Instance> = (0..n).map(|i| instance(i as u128, 7, "CT")).collect();
            instances.extend((0..other).map(|i| instance(1_000 + i as u128, 8, "CT")));
            let taken = slices(&instances, &model(max));
            prop_assert_eq!(taken.len(), n.max(other).min(max));
            let series = taken[0].series;
            prop_assert!(taken.iter().all(|i| i.series == series));
            let mut ids: Vec<Uuid> = taken.iter().map(|i| i.id).collect();
            ids.dedup();
            prop_assert_eq!(ids.len(), taken.len());
        }
    }
}
