//! The region's studies as ingest knows them: a fold of its own events,
//! and the decisions that follow from it. Pure: time is an argument.
//!
//! A study starts with its first instance (StudyStarted), is complete when
//! no instance has come for its quiet period (StudyCompleted, carrying what
//! routing needs), and an instance after that appends StudyUpdated.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use meridian_events::payload::Payload;
use meridian_events::{EventMeta, UnixMicros};
use meridian_proto::events::v1 as pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A study still receiving instances: everything about it, until it
/// completes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Study {
    pub tenant: String,
    pub facility: String,
    pub first_at: UnixMicros,
    pub last_at: UnixMicros,
    pub series: BTreeSet<String>,
    /// Opaque instance id → SHA-256 of its latest stored version.
    pub instances: BTreeMap<String, String>,
    /// Modality → instances of it.
    pub modalities: BTreeMap<String, u32>,
    pub body_part: String,
    pub patient_key: String,
    pub procedure_code: String,
    pub requested_priority: String,
    /// The contract StudyStarted chose (empty: none, see `unroutable`).
    #[serde(default)]
    pub contract: String,
    #[serde(default)]
    pub unroutable: String,
    pub completed_at: Option<UnixMicros>,
    /// The last version of the study's operational stream (`ingest.study`).
    pub version: u64,
    /// The last version of its instance records (`ingest.instances`, PHI):
    /// a stream of its own, on its own topic, so that each stays in order.
    pub instances_version: u64,
    /// The trace its StudyStarted (or, reopened, StudyUpdated) was appended
    /// in: its completion continues it, so that routing's decisions join
    /// the trace of the C-STORE that began the study.
    #[serde(default)]
    pub traceparent: Option<String>,
}

impl Study {
    /// The modality most of its instances have (ties by name).
    pub fn primary_modality(&self) -> String {
        self.modalities
            .iter()
            .max_by_key(|(m, n)| (**n, std::cmp::Reverse((*m).clone())))
            .map(|(m, _)| m.clone())
            .unwrap_or_default()
    }
}

/// A completed study, compact: what StudyUpdated, CompleteStudy and the
/// next version of its streams need. Which instances and series it holds
/// is the study index's to say (read on demand when an instance comes
/// after completion), so memory follows open work, not history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Closed {
    pub tenant: String,
    pub completed_at: UnixMicros,
    pub last_at: UnixMicros,
    pub series: u32,
    pub instances: u32,
    pub version: u64,
    pub instances_version: u64,
}

impl Closed {
    /// The study as a decision sees it when an instance comes after its
    /// completion: the instances and series the index holds (opaque series
    /// id, opaque instance id, SHA-256).
    pub fn reopened(&self, indexed: impl IntoIterator<Item = (String, String, String)>) -> Study {
        let mut study = Study {
            tenant: self.tenant.clone(),
            first_at: self.last_at,
            last_at: self.last_at,
            completed_at: Some(self.completed_at),
            version: self.version,
            instances_version: self.instances_version,
            ..Study::default()
        };
        for (series, instance, sha256) in indexed {
            study.series.insert(series);
            study.instances.insert(instance, sha256);
        }
        study
    }
}

/// A refused instance, as its tenant may list it (no PHI).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejected {
    pub study_id: String,
    pub facility: String,
    pub dimse_status: u32,
    pub reason_code: String,
    pub reason: String,
    pub at: UnixMicros,
}

/// How many rejections per tenant the state keeps (the log keeps all).
pub const REJECTIONS_KEPT: usize = 1_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Studies {
    /// Studies receiving instances (the working set), by opaque id.
    pub open: BTreeMap<Uuid, Study>,
    /// Completed studies, compact, by opaque id (until retention purges
    /// them).
    pub closed: BTreeMap<Uuid, Closed>,
    /// Tenant → its latest rejections, oldest first.
    #[serde(default)]
    pub rejections: BTreeMap<String, VecDeque<Rejected>>,
}

impl Studies {
    /// The last version of the study's operational stream, open or closed.
    pub fn version(&self, id: &Uuid) -> Option<u64> {
        self.open.get(id).map(|s| s.version).or_else(|| self.closed.get(id).map(|c| c.version))
    }

    /// How many studies it holds, open and closed.
    pub fn len(&self) -> usize {
        self.open.len() + self.closed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.closed.is_empty()
    }
}

/// Folds one ingest event. Order across the two topics is not given (a
/// replay may read a StudyCompleted before instances that preceded it):
/// a study closes with the larger of its own counts and the completion's,
/// an instance folded into a closed study changes only its versions and
/// times, and StudyUpdated brings the counts up; so any interleaving of
/// the same events ends in the same state.
pub fn apply(mut state: Studies, payload: &Payload, meta: &EventMeta) -> Studies {
    if let Payload::InstanceRejected(r) = payload {
        let kept = state.rejections.entry(meta.tenant.clone()).or_default();
        kept.push_back(Rejected {
            study_id: r.study_id.clone(),
            facility: r.facility.clone(),
            dimse_status: r.dimse_status,
            reason_code: r.reason_code.clone(),
            reason: r.reason.clone(),
            at: meta.occurred_at,
        });
        if kept.len() > REJECTIONS_KEPT {
            kept.pop_front();
        }
        if r.study_id.is_empty() {
            return state;
        }
    }
    let Ok(id) = Uuid::parse_str(match payload {
        Payload::InstanceReceived(r) => &r.study_id,
        Payload::StudyStarted(s) => &s.study_id,
        Payload::StudyCompleted(c) => &c.study_id,
        Payload::StudyUpdated(u) => &u.study_id,
        Payload::InstanceRejected(r) => &r.study_id,
        _ => return state,
    }) else {
        return state;
    };
    let instances_stream = meta.aggregate_type == "ingest.instances";
    if let Some(closed) = state.closed.get_mut(&id) {
        if instances_stream {
            closed.instances_version = closed.instances_version.max(meta.aggregate_version);
        } else {
            closed.version = closed.version.max(meta.aggregate_version);
        }
        match payload {
            Payload::InstanceReceived(_) => closed.last_at = closed.last_at.max(meta.occurred_at),
            Payload::StudyUpdated(u) => {
                closed.series = closed.series.max(u.series_count);
                closed.instances = closed.instances.max(u.instance_count);
            }
            _ => {}
        }
        return state;
    }
    // A refusal under a study that has no instance here yet opens nothing:
    // its aggregate is the refusal's own (see the app's `reject`).
    if matches!(payload, Payload::InstanceRejected(_)) && !state.open.contains_key(&id) {
        return state;
    }
    let study = state.open.entry(id).or_default();
    if instances_stream {
        study.instances_version = study.instances_version.max(meta.aggregate_version);
    } else {
        study.version = study.version.max(meta.aggregate_version);
    }
    match payload {
        Payload::InstanceReceived(r) => {
            if study.instances.is_empty() {
                study.first_at = meta.occurred_at;
                study.tenant = meta.tenant.clone();
            }
            study.last_at = study.last_at.max(meta.occurred_at);
            study.facility = r.facility.clone();
            study.series.insert(r.series_id.clone());
            if study.instances.insert(r.instance_id.clone(), r.sha256.clone()).is_none() {
                *study.modalities.entry(r.modality.clone()).or_default() += 1;
            }
            let keep = |field: &mut String, value: &str| {
                if field.is_empty() && !value.is_empty() {
                    *field = value.to_owned();
                }
            };
            keep(&mut study.body_part, &r.body_part);
            keep(&mut study.patient_key, &r.patient_key);
            keep(&mut study.procedure_code, &r.procedure_code);
            keep(&mut study.requested_priority, &r.requested_priority);
        }
        Payload::StudyStarted(started) => {
            study.contract.clone_from(&started.contract);
            study.unroutable.clone_from(&started.unroutable_reason);
            study.traceparent.clone_from(&meta.traceparent);
        }
        Payload::StudyUpdated(_) if study.traceparent.is_none() => study.traceparent.clone_from(&meta.traceparent),
        Payload::StudyCompleted(c) => {
            let study = state.open.remove(&id).unwrap_or_default();
            let completed_at = c.completed_at.as_ref().map_or(meta.occurred_at, UnixMicros::from_timestamp);
            let closed = Closed {
                tenant: if study.tenant.is_empty() { meta.tenant.clone() } else { study.tenant },
                completed_at,
                last_at: study.last_at,
                series: (study.series.len() as u32).max(c.series_count),
                instances: (study.instances.len() as u32).max(c.instance_count),
                version: study.version,
                instances_version: study.instances_version,
            };
            state.closed.insert(id, closed);
        }
        _ => {}
    }
    state
}

/// What accompanies a new instance of `study`: StudyStarted for the first
/// of a study, StudyUpdated for one after its completion. `state` holds the
/// study open (a completed one reopened for the decision, see
/// [`Closed::reopened`]).
pub fn alongside(state: &Studies, study: Uuid, received: &pb::InstanceReceived) -> Option<Payload> {
    match state.open.get(&study).filter(|s| !s.instances.is_empty()) {
        None => Some(Payload::StudyStarted(pb::StudyStarted {
            study_id: study.to_string(),
            facility: received.facility.clone(),
            origin_jurisdiction: String::new(),
            modality: received.modality.clone(),
            body_part: received.body_part.clone(),
            patient_key: received.patient_key.clone(),
            procedure_code: received.procedure_code.clone(),
            requested_priority: received.requested_priority.clone(),
            // The caller chooses the contract (it knows the configuration).
            contract: String::new(),
            unroutable_reason: String::new(),
        })),
        Some(s) if s.completed_at.is_some() => {
            let new_series = !s.series.contains(&received.series_id);
            let new_instance = !s.instances.contains_key(&received.instance_id);
            Some(Payload::StudyUpdated(pb::StudyUpdated {
                study_id: study.to_string(),
                series_count: (s.series.len() + usize::from(new_series)) as u32,
                instance_count: (s.instances.len() + usize::from(new_instance)) as u32,
            }))
        }
        Some(_) => None,
    }
}

/// The StudyCompleted of `id` at `now`, if it is open.
pub fn completion(
    state: &Studies,
    id: Uuid,
    now: UnixMicros,
    jurisdiction: impl Fn(&str, &str) -> String,
) -> Option<pb::StudyCompleted> {
    let s = state.open.get(&id).filter(|s| s.completed_at.is_none() && !s.instances.is_empty())?;
    Some(pb::StudyCompleted {
        study_id: id.to_string(),
        series_count: s.series.len() as u32,
        instance_count: s.instances.len() as u32,
        modalities: s.modalities.keys().cloned().collect(),
        completed_at: Some(now.to_timestamp()),
        facility: s.facility.clone(),
        origin_jurisdiction: jurisdiction(&s.tenant, &s.facility),
        modality: s.primary_modality(),
        body_part: s.body_part.clone(),
        patient_key: s.patient_key.clone(),
        procedure_code: s.procedure_code.clone(),
        requested_priority: s.requested_priority.clone(),
        contract: s.contract.clone(),
        unroutable_reason: s.unroutable.clone(),
    })
}

/// The studies quiet for their period by `now`, each with its
/// StudyCompleted. `quiet` gives a study's quiet period in microseconds
/// (its contract's);
/// `jurisdiction` a facility's. It visits open studies only: the work at
/// hand, however many have completed before.
pub fn completions(
    state: &Studies,
    now: UnixMicros,
    quiet: impl Fn(&Study) -> i64,
    jurisdiction: impl Fn(&str, &str) -> String,
) -> Vec<(Uuid, pb::StudyCompleted)> {
    state
        .open
        .iter()
        .filter(|(_, s)| now.0 >= s.last_at.0.saturating_add(quiet(s)))
        .filter_map(|(id, _)| completion(state, *id, now, &jurisdiction).map(|c| (*id, c)))
        .collect()
}

#[cfg(test)]
mod tests {
    //! The fold reads two topics with no order between them: any
    //! interleaving of the same per-topic sequences must end in the same
    //! state, and a snapshot (serialized) plus the rest must equal folding
    //! everything at once.

    use proptest::prelude::*;

    use super::*;

    fn meta(study: Uuid, stream: &str, version: u64, at: i64) -> EventMeta {
        EventMeta {
            event_id: meridian_events::EventId(Uuid::from_u128(u128::from(version) << 64 | study.as_u128() & 0xffff)),
            aggregate_type: stream.into(),
            aggregate_id: study,
            aggregate_version: version,
            tenant: "acme".into(),
            home_region: "us-east".into(),
            occurred_at: UnixMicros(at),
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        }
    }

    type Logged = (Payload, EventMeta);

    /// One study's history as ingest writes it, on its two topics: `sent`
    /// instances (ids drawn from a few, so some are new versions), the
    /// completion after `before_completion` of them, updates after it,
    /// and a refusal.
    fn study(s: u128, sent: &[u8], before_completion: usize, refused: bool) -> (Vec<Logged>, Vec<Logged>) {
        let id = Uuid::from_u128(s);
        let (mut phi, mut ops) = (Vec::new(), Vec::new());
        let (mut instances, mut series) = (BTreeMap::new(), BTreeSet::new());
        let mut version = 0;
        for (n, i) in sent.iter().enumerate() {
            let at = 1_000 + n as i64;
            let received = pb::InstanceReceived {
                study_id: id.to_string(),
                series_id: format!("series-{}", i % 2),
                instance_id: format!("instance-{i}"),
                sha256: format!("sha-{n}"),
                replaces_earlier_version: instances.contains_key(i),
                modality: "CT".into(),
                ..Default::default()
            };
            let first = instances.is_empty();
            let completed = n >= before_completion;
            if n == before_completion && !instances.is_empty() {
                version += 1;
                let done = pb::StudyCompleted {
                    study_id: id.to_string(),
                    series_count: series.len() as u32,
                    instance_count: instances.len() as u32,
                    completed_at: Some(UnixMicros(at).to_timestamp()),
                    ..Default::default()
                };
                ops.push((Payload::StudyCompleted(done), meta(id, "ingest.study", version, at)));
            }
            instances.insert(*i, n);
            series.insert(i % 2);
            phi.push((Payload::InstanceReceived(received), meta(id, "ingest.instances", n as u64 + 1, at)));
            if first {
                version += 1;
                let started = pb::StudyStarted { study_id: id.to_string(), ..Default::default() };
                ops.push((Payload::StudyStarted(started), meta(id, "ingest.study", version, at)));
            } else if completed && before_completion > 0 {
                version += 1;
                let updated = pb::StudyUpdated {
                    study_id: id.to_string(),
                    series_count: series.len() as u32,
                    instance_count: instances.len() as u32,
                };
                ops.push((Payload::StudyUpdated(updated), meta(id, "ingest.study", version, at)));
            }
        }
        // A study whose completion comes after its last instance (the usual
        // case): no StudyUpdated follows to bring its counts up.
        if before_completion >= sent.len() && before_completion.is_multiple_of(2) {
            version += 1;
            let done = pb::StudyCompleted {
                study_id: id.to_string(),
                series_count: series.len() as u32,
                instance_count: instances.len() as u32,
                completed_at: Some(UnixMicros(1_500).to_timestamp()),
                ..Default::default()
            };
            ops.push((Payload::StudyCompleted(done), meta(id, "ingest.study", version, 1_500)));
        }
        if refused {
            version += 1;
            let r = pb::InstanceRejected { study_id: id.to_string(), reason_code: "x".into(), ..Default::default() };
            ops.push((Payload::InstanceRejected(r), meta(id, "ingest.study", version, 2_000)));
        }
        (phi, ops)
    }

    fn fold(events: &[&Logged], from: Studies) -> Studies {
        events.iter().fold(from, |state, (payload, meta)| apply(state, payload, meta))
    }

    fn histories() -> impl Strategy<Value = (Vec<Logged>, Vec<Logged>)> {
        let one = (prop::collection::vec(0u8..4, 1..8), 0usize..9, any::<bool>());
        prop::collection::vec(one, 1..4).prop_map(|studies| {
            let (mut phi, mut ops) = (Vec::new(), Vec::new());
            for (s, (sent, before, refused)) in studies.into_iter().enumerate() {
                let (p, o) = study(s as u128 + 1, &sent, before, refused);
                phi.extend(p);
                ops.extend(o);
            }
            (phi, ops)
        })
    }

    /// Merges the two topics in the order `picks` says (true: PHI next).
    fn interleave<'a>(phi: &'a [Logged], ops: &'a [Logged], picks: &[bool]) -> Vec<&'a Logged> {
        let (mut p, mut o, mut out) = (phi.iter(), ops.iter(), Vec::new());
        for pick in picks.iter().copied().chain(std::iter::repeat(true)) {
            let next = if pick { p.next().or_else(|| o.next()) } else { o.next().or_else(|| p.next()) };
            match next {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn any_interleaving_of_the_two_topics_and_any_snapshot_point_end_in_one_state(
            (phi, ops) in histories(),
            picks in prop::collection::vec(any::<bool>(), 0..64),
            other in prop::collection::vec(any::<bool>(), 0..64),
            cut in any::<prop::sample::Index>(),
        ) {
            let one = interleave(&phi, &ops, &picks);
            let expected = fold(&one, Studies::default());
            let two = interleave(&phi, &ops, &other);
            prop_assert_eq!(&fold(&two, Studies::default()), &expected);
            // A snapshot, serialized as the projector stores it, plus the tail.
            let at = cut.index(one.len() + 1);
            let snapshot = serde_json::to_vec(&fold(&one[..at], Studies::default())).unwrap();
            let restored: Studies = serde_json::from_slice(&snapshot).unwrap();
            prop_assert_eq!(&fold(&one[at..], restored), &expected);
        }

        #[test]
        fn a_completed_study_keeps_counts_not_instances(
            (phi, ops) in histories(),
            picks in prop::collection::vec(any::<bool>(), 0..64),
        ) {
            let state = fold(&interleave(&phi, &ops, &picks), Studies::default());
            for (id, closed) in &state.closed {
                prop_assert!(!state.open.contains_key(id));
                // Counts agree with the last word ingest wrote on them.
                let last = ops.iter().rev().find_map(|(p, m)| match p {
                    Payload::StudyUpdated(u) if m.aggregate_id == *id => Some((u.series_count, u.instance_count)),
                    Payload::StudyCompleted(c) if m.aggregate_id == *id => Some((c.series_count, c.instance_count)),
                    _ => None,
                });
                prop_assert_eq!(Some((closed.series, closed.instances)), last);
            }
        }
    }
}
