//! A brute-force oracle for routing, written apart from the engine: the
//! rules restated plainly (shifts by walking calendar days, delivery
//! models by comparing countries) and the total order as a tuple. Property
//! tests check the engine's every choice against it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::ToSpan;
use meridian_events::UnixMicros;
use proptest::prelude::*;
use uuid::Uuid;

use super::model::*;
use super::policy::*;
use super::worklist::*;

fn oracle_on_shift(r: &Reader, now: UnixMicros) -> bool {
    let tz = jiff::tz::TimeZone::get(&r.time_zone).unwrap();
    let local = jiff::Timestamp::from_microsecond(now.0).unwrap().to_zoned(tz.clone());
    let today = local.date();
    // A shift starting yesterday may still run; walk both days.
    for date in [today.yesterday().unwrap(), today] {
        for s in &r.shifts {
            if date.weekday().to_monday_one_offset() as u8 != s.weekday {
                continue;
            }
            let start = date.to_zoned(tz.clone()).unwrap().checked_add((s.start_minute as i64).minutes()).unwrap();
            let mut end = date.to_zoned(tz.clone()).unwrap().checked_add((s.end_minute as i64).minutes()).unwrap();
            if s.end_minute <= s.start_minute {
                end = end.checked_add(1.day()).unwrap();
            }
            if start <= local && local < end {
                return true;
            }
        }
    }
    false
}

fn oracle_model(p: &Policy, r: &Reader, s: &Study) -> DeliveryModel {
    let patient_country = &s.origin_jurisdiction[..2];
    if p.regions[&r.region].country == patient_country {
        DeliveryModel::Onshore
    } else if p.regions[&s.home_region].nearshore.contains(&r.region) {
        DeliveryModel::Nearshore
    } else {
        DeliveryModel::Offshore
    }
}

fn oracle_eligible(p: &Policy, r: &Reader, s: &Study, open: u32, now: UnixMicros) -> bool {
    let c = &p.contracts[&s.contract];
    let allowed = c.delivery.get(&s.read_type).cloned().unwrap_or_default();
    let mut offered: BTreeSet<DeliveryModel> = if s.service_type == ServiceType::Hybrid {
        allowed.iter().copied().filter(|m| *m == DeliveryModel::Onshore).collect()
    } else {
        allowed.clone()
    };
    for w in &s.widened {
        if allowed.contains(w) {
            offered.insert(*w);
        }
    }
    let country = &s.origin_jurisdiction[..2];
    let licensed = r
        .licences
        .iter()
        .any(|l| (l.jurisdiction == s.origin_jurisdiction || l.jurisdiction == country) && l.expires > now);
    c.groups.contains(&r.group)
        && r.read_types.contains(&s.read_type)
        && offered.contains(&oracle_model(p, r, s))
        && (s.read_type != ReadType::Final || licensed)
        && r.credentials.iter().any(|k| k.tenant == s.tenant && k.facility == s.facility && k.expires > now)
        && r.modalities.contains(&s.modality)
        && (!s.subspecialty_required || s.subspecialty.as_ref().is_none_or(|x| r.subspecialties.contains(x)))
        && r.availability == Availability::Available
        && oracle_on_shift(r, now)
        && open < r.capacity
        && !(matches!(s.read_type, ReadType::Final | ReadType::PeerReview) && s.prior_reader.as_ref() == Some(&r.id))
}

type Key = (i64, u8, bool, u64, bool, bool, u64, Uuid, String);

#[derive(Default, Clone)]
struct OracleLoad {
    open: BTreeMap<String, u32>,
    rvu: BTreeMap<String, u64>,
    patients: BTreeMap<String, BTreeSet<Uuid>>,
}

fn oracle_key(p: &Policy, r: &Reader, s: &Study, load: &OracleLoad) -> Key {
    let priority = match s.priority {
        Priority::Stat => 0,
        Priority::Urgent => 1,
        Priority::Routine => 2,
    };
    let holds = s.patient_key.is_some_and(|k| load.patients.get(&r.id).is_some_and(|ps| ps.contains(&k)));
    (
        s.deadline.0,
        priority,
        s.subspecialty.as_ref().is_some_and(|x| !r.subspecialties.contains(x)),
        *load.rvu.get(&r.id).unwrap_or(&0),
        !holds,
        s.service_type == ServiceType::Hybrid && oracle_model(p, r, s) != DeliveryModel::Onshore,
        s.sequence,
        s.id,
        r.id.clone(),
    )
}

// ---- generated worlds ----

const REGIONS: [(&str, &str); 3] = [("us-east", "US"), ("eu-west", "IE"), ("in-south", "IN")];
const ZONES: [&str; 3] = ["America/New_York", "Europe/Dublin", "Asia/Kolkata"];
const JURISDICTIONS: [&str; 4] = ["US-NY", "US-CA", "IE-D", "IN-KA"];
const SUBS: [&str; 3] = ["neuro", "body", "chest"];

fn policy(nearshore: bool, modes: [bool; 2], offshore: [bool; 2]) -> Policy {
    let mut regions = BTreeMap::new();
    for (name, country) in REGIONS {
        let mut near = BTreeSet::new();
        if nearshore && name == "us-east" {
            near.insert("eu-west".to_string());
        }
        regions.insert(name.to_string(), RegionInfo { country: country.into(), nearshore: near });
    }
    let contracts = (0..2)
        .map(|i| {
            let mut prelim = BTreeSet::from([DeliveryModel::Onshore, DeliveryModel::Nearshore]);
            if offshore[i] {
                prelim.insert(DeliveryModel::Offshore);
            }
            let c = ContractPolicy {
                name: format!("c{i}"),
                tenant: format!("t{i}"),
                groups: BTreeSet::from(["g0".to_string(), format!("g{}", i + 1)]),
                mode: if modes[i] { AssignmentMode::Push } else { AssignmentMode::Pull },
                delivery: BTreeMap::from([
                    (ReadType::Preliminary, prelim),
                    (ReadType::Final, BTreeSet::from([DeliveryModel::Onshore])),
                ]),
                sla_seconds: BTreeMap::from([
                    (Priority::Stat, 1_800),
                    (Priority::Urgent, 7_200),
                    (Priority::Routine, 86_400),
                ]),
                escalation_per_mille: vec![500, 800],
                service: None,
                subspecialty_required: false,
                language: "en".into(),
            };
            (c.name.clone(), c)
        })
        .collect();
    Policy { contracts, regions, ..Default::default() }
}

prop_compose! {
    // Weighted so that most pairs pass most rules: a property over worlds
    // where nothing is eligible proves nothing (see the counting test below).
    fn a_reader(i: usize)(
        group in prop_oneof![3 => Just(0usize), 1 => 1..3usize],
        region in prop_oneof![2 => Just(0usize), 1 => 1..3usize],
        licences in prop::collection::vec((0..4usize, prop::bool::weighted(0.85)), 1..3),
        credentials in [prop::bool::weighted(0.85), prop::bool::weighted(0.85)],
        subs in prop::collection::btree_set(0..3usize, 0..3),
        ct in prop::bool::weighted(0.85),
        finals in prop::bool::weighted(0.6),
        start in 0..24u32,
        length in 8..20u32,
        days in prop::collection::btree_set(1..=7u8, 4..8),
        capacity in 1..4u32,
        away in prop::bool::weighted(0.1),
    ) -> Reader {
        let now_ish = 1_795_000_000_000_000i64;
        Reader {
            id: format!("r{i}"),
            group: format!("g{group}"),
            region: REGIONS[region].0.into(),
            time_zone: ZONES[region].into(),
            licences: licences.into_iter().map(|(j, current)| Licence {
                jurisdiction: if j == 3 { "US".into() } else { JURISDICTIONS[j].into() },
                expires: UnixMicros(if current { now_ish + 10_000_000_000_000 } else { now_ish - 1 }),
            }).collect(),
            credentials: credentials.iter().enumerate().map(|(t, current)| Credential {
                tenant: format!("t{t}"),
                facility: format!("f{t}"),
                expires: UnixMicros(if *current { now_ish + 10_000_000_000_000 } else { now_ish - 1 }),
            }).collect(),
            subspecialties: subs.into_iter().map(|s| SUBS[s].to_string()).collect(),
            modalities: if ct { BTreeSet::from(["CT".to_string(), "MR".to_string()]) } else { BTreeSet::from(["MR".to_string()]) },
            read_types: if finals { BTreeSet::from([ReadType::Preliminary, ReadType::Final]) } else { BTreeSet::from([ReadType::Preliminary]) },
            shifts: days.into_iter().map(|d| Shift { weekday: d, start_minute: start * 60, end_minute: ((start + length) % 24) * 60 }).collect(),
            capacity,
            availability: if away { Availability::Away } else { Availability::Available },
        }
    }
}

prop_compose! {
    fn a_study(i: usize)(
        contract in 0..2usize,
        jurisdiction in prop_oneof![3 => 0..2usize, 1 => 2..4usize],
        ct in prop::bool::weighted(0.7),
        sub in prop::option::of(0..3usize),
        required in prop::bool::weighted(0.3),
        priority in 0..3u8,
        hybrid in any::<bool>(),
        is_final in prop::bool::weighted(0.3),
        patient in prop::option::of(0..3u128),
        rvu in 100..3000u32,
        minutes_ago in 0..600i64,
        prior in prop::option::weighted(0.2, 0..6usize),
    ) -> (NewStudy, i64) {
        let s = NewStudy {
            id: Uuid::from_u128(1_000 + i as u128),
            tenant: format!("t{contract}"),
            facility: format!("f{contract}"),
            contract: format!("c{contract}"),
            home_region: "us-east".into(),
            origin_jurisdiction: JURISDICTIONS[jurisdiction].into(),
            modality: if ct { "CT".into() } else { "MR".into() },
            body_part: "HEAD".into(),
            subspecialty: sub.map(|s| SUBS[s].to_string()),
            subspecialty_required: required,
            priority: [Priority::Stat, Priority::Urgent, Priority::Routine][priority as usize],
            service_type: if hybrid { ServiceType::Hybrid } else { ServiceType::RealTime },
            read_type: if is_final { ReadType::Final } else { ReadType::Preliminary },
            patient_key: patient.map(Uuid::from_u128),
            rvu_milli: rvu,
            ai_flagged: false,
            completed_at: UnixMicros(0),
            prior_reader: prior.map(|p| format!("r{p}")),
            due: None,
        };
        (s, minutes_ago)
    }
}

#[derive(Debug, Clone)]
struct World {
    nearshore: bool,
    modes: [bool; 2],
    offshore: [bool; 2],
    readers: Vec<Reader>,
    studies: Vec<(NewStudy, i64)>,
    now: UnixMicros,
}

fn world() -> impl Strategy<Value = World> {
    (any::<bool>(), any::<[bool; 2]>(), any::<[bool; 2]>(), 0..(7 * 24 * 60i64), 1..7usize, 1..9usize)
        .prop_flat_map(|(nearshore, modes, offshore, minute, n_readers, n_studies)| {
            let readers: Vec<_> = (0..n_readers).map(a_reader).collect();
            let studies: Vec<_> = (0..n_studies).map(a_study).collect();
            (Just(nearshore), Just(modes), Just(offshore), Just(minute), readers, studies)
        })
        .prop_map(|(nearshore, modes, offshore, minute, readers, studies)| World {
            nearshore,
            modes,
            offshore,
            readers,
            studies,
            now: UnixMicros(1_795_000_000_000_000 + minute * 60_000_000),
        })
}

fn setup(w: &World) -> (Policy, State) {
    let p = policy(w.nearshore, w.modes, w.offshore);
    let mut state = State::default();
    for r in &w.readers {
        for e in decide(&state, &p, Command::RegisterReader(r.clone()), w.now).unwrap() {
            state = apply(state, &e);
        }
    }
    for (s, minutes_ago) in &w.studies {
        let mut s = s.clone();
        s.completed_at = UnixMicros(w.now.0 - minutes_ago * 60_000_000);
        for e in decide(&state, &p, Command::Queue(s), w.now).unwrap() {
            state = apply(state, &e);
        }
    }
    (p, state)
}

proptest! {
    // Most worlds push nothing (no reader on shift): the signature test
    // passes over those, so it may reject several times its cases.
    #![proptest_config(ProptestConfig { cases: 400, max_global_rejects: 16_384, ..ProptestConfig::default() })]

    /// Push: every assignment is the oracle's first eligible pair, in turn,
    /// and breaks no rule; no study gets two assignees.
    #[test]
    fn push_assignments_follow_the_oracle(w in world()) {
        let (p, state) = setup(&w);
        let events = decide(&state, &p, Command::AssignPending, w.now).unwrap();
        let mut load = OracleLoad::default();
        let mut taken = BTreeSet::new();
        let mut engine = events.iter().map(|e| match e {
            Event::StudyAssigned { study, reader, .. } => (*study, reader.clone()),
            other => panic!("push decided {other:?}"),
        });
        loop {
            let mut best: Option<Key> = None;
            for s in state.studies.values().filter(|s| !taken.contains(&s.id) && p.contracts[&s.contract].mode == AssignmentMode::Push) {
                for r in state.readers.values() {
                    if oracle_eligible(&p, r, s, *load.open.get(&r.id).unwrap_or(&0), w.now) {
                        let k = oracle_key(&p, r, s, &load);
                        if best.as_ref().is_none_or(|b| k < *b) {
                            best = Some(k);
                        }
                    }
                }
            }
            let next = engine.next();
            match (best, next) {
                (None, None) => break,
                (Some(k), Some((study, reader))) => {
                    prop_assert_eq!((k.7, k.8.clone()), (study, reader.clone()));
                    prop_assert!(taken.insert(study), "study {} assigned twice", study);
                    let s = &state.studies[&study];
                    *load.open.entry(reader.clone()).or_default() += 1;
                    *load.rvu.entry(reader.clone()).or_default() += u64::from(s.rvu_milli);
                    if let Some(pk) = s.patient_key {
                        load.patients.entry(reader).or_default().insert(pk);
                    }
                }
                (expected, got) => prop_assert!(false, "oracle {:?}, engine {:?}", expected, got),
            }
        }
        // On arrival, `Assign` gives one study the oracle's best reader for it.
        for s in state.studies.values().filter(|s| p.contracts[&s.contract].mode == AssignmentMode::Push) {
            let load = OracleLoad::default();
            let best = state
                .readers
                .values()
                .filter(|r| oracle_eligible(&p, r, s, 0, w.now))
                .map(|r| oracle_key(&p, r, s, &load))
                .min()
                .map(|k| k.8);
            let events = decide(&state, &p, Command::Assign { study: s.id }, w.now).unwrap();
            let got = match &events[..] {
                [] => None,
                [Event::StudyAssigned { study, reader, .. }] if *study == s.id => Some(reader.clone()),
                other => { prop_assert!(false, "Assign decided {:?}", other); None }
            };
            prop_assert_eq!(got, best);
        }
    }

    /// A signature ends the read whoever holds it: a signer who lost the
    /// read to a racing release or reassignment still completes it; the
    /// holder is released first and their load freed; no one else's
    /// load changes, and nobody holds the read after.
    #[test]
    fn a_signature_ends_the_read_whoever_holds_it(
        w in world(),
        pick in any::<prop::sample::Index>(),
        signer in any::<prop::sample::Index>(),
    ) {
        let (p, state) = setup(&w);
        let assigned = decide(&state, &p, Command::AssignPending, w.now).unwrap();
        let state = assigned.iter().fold(state, apply);
        let held: Vec<&Study> = state.studies.values().filter(|s| s.assignee.is_some()).collect();
        prop_assume!(!held.is_empty());
        let s = pick.get(&held);
        let holder = s.assignee.clone().unwrap();
        let readers: Vec<&String> = state.readers.keys().collect();
        let signer = signer.get(&readers).to_string();
        let sign = Command::ReadSigned { study: s.id, read_type: s.read_type, reader: signer.clone(), signed_at: w.now };
        let events = decide(&state, &p, sign, w.now).unwrap();
        let released: Vec<&String> = events
            .iter()
            .filter_map(|e| match e { Event::AssignmentReleased { reader, .. } => Some(reader), _ => None })
            .collect();
        if signer == holder {
            prop_assert!(released.is_empty());
        } else {
            prop_assert_eq!(released, vec![&holder]);
        }
        let completed = events.iter().any(|e| matches!(e, Event::AssignmentCompleted { reader, .. } if *reader == signer));
        prop_assert!(completed, "the signer completes the read: {:?}", events);
        let after = events.iter().fold(state.clone(), apply);
        for (r, l) in &state.load {
            let expected = if *r == holder { l.open - 1 } else { l.open };
            prop_assert_eq!(after.load.get(r).map_or(0, |l| l.open), expected, "{}", r);
        }
        prop_assert!(after.studies.get(&s.id).is_none_or(|n| n.assignee.is_none()));
    }

    /// Pull: a reader's worklist is exactly the studies the oracle finds
    /// eligible, in the oracle's order; ClaimNext takes the first.
    #[test]
    fn worklists_and_claim_next_follow_the_oracle(w in world()) {
        let (p, state) = setup(&w);
        for r in state.readers.values() {
            let load = OracleLoad::default();
            let mut expected: Vec<(Key, Uuid)> = state
                .studies
                .values()
                .filter(|s| oracle_eligible(&p, r, s, 0, w.now))
                .map(|s| (oracle_key(&p, r, s, &load), s.id))
                .collect();
            expected.sort();
            let got: Vec<Uuid> = state.worklist(&p, w.now, &r.id).unwrap().iter().map(|s| s.id).collect();
            prop_assert_eq!(&got, &expected.iter().map(|(_, id)| *id).collect::<Vec<_>>());
            // A page is the head of the whole worklist.
            let page: Vec<Uuid> = state.offers(&p, w.now, &r.id, |_| true, 2).unwrap().iter().map(|s| s.id).collect();
            prop_assert_eq!(&page[..], &got[..got.len().min(2)]);
            let first_pull = expected.iter().map(|(_, id)| *id).find(|id| p.contracts[&state.studies[id].contract].mode == AssignmentMode::Pull);
            match decide(&state, &p, Command::ClaimNext { reader: r.id.clone() }, w.now) {
                Ok(events) => {
                    let claimed = match &events[..] {
                        [Event::AssignmentClaimed { study, .. }] => Some(*study),
                        _ => None,
                    };
                    prop_assert_eq!(claimed, first_pull);
                }
                Err(Error::NothingToClaim { .. }) => prop_assert!(first_pull.is_none()),
                Err(e) => prop_assert!(false, "{}", e),
            }
        }
    }
}

/// The properties above mean something only if the generated worlds often
/// assign and offer work: count how often they do.
#[test]
fn generated_worlds_often_assign_and_offer_work() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut assigning, mut offering, n) = (0, 0, 400);
    for _ in 0..n {
        let w = world().new_tree(&mut runner).unwrap().current();
        let (p, state) = setup(&w);
        if !decide(&state, &p, Command::AssignPending, w.now).unwrap().is_empty() {
            assigning += 1;
        }
        if state.readers.keys().any(|r| !state.worklist(&p, w.now, r).unwrap().is_empty()) {
            offering += 1;
        }
    }
    assert!(assigning * 5 > n, "only {assigning} of {n} worlds assign anything");
    assert!(offering * 4 > n, "only {offering} of {n} worlds offer anything");
}
