//! Given / when / then over the pure domain, with three regions and
//! readers on real time zones. Wednesday 2026-11-25 is the simulated day.

use std::collections::{BTreeMap, BTreeSet};

use meridian_events::UnixMicros;
use uuid::Uuid;

use super::model::*;
use super::policy::*;
use super::rules::Rule;
use super::worklist::*;

fn at(utc: &str) -> UnixMicros {
    UnixMicros(utc.parse::<jiff::Timestamp>().unwrap().as_microsecond())
}

const FOREVER: UnixMicros = UnixMicros(4_000_000_000_000_000);

fn contract(name: &str, tenant: &str, mode: AssignmentMode, offshore_prelims: bool) -> ContractPolicy {
    let mut prelim = BTreeSet::from([DeliveryModel::Onshore]);
    if offshore_prelims {
        prelim.insert(DeliveryModel::Offshore);
    }
    ContractPolicy {
        name: name.into(),
        tenant: tenant.into(),
        groups: BTreeSet::from(["atlantic".to_string(), "lotus".to_string()]),
        mode,
        delivery: BTreeMap::from([
            (ReadType::Preliminary, prelim),
            (ReadType::Final, BTreeSet::from([DeliveryModel::Onshore])),
        ]),
        sla_seconds: BTreeMap::from([(Priority::Stat, 1_800), (Priority::Urgent, 7_200), (Priority::Routine, 86_400)]),
        escalation_per_mille: vec![500, 800],
        service: None,
        subspecialty_required: false,
        language: "en".into(),
    }
}

fn policy() -> Policy {
    let region = |c: &str| RegionInfo { country: c.into(), nearshore: BTreeSet::new() };
    Policy {
        contracts: [
            contract("acme-push", "acme", AssignmentMode::Push, true),
            contract("acme-pull", "acme", AssignmentMode::Pull, true),
            contract("globex-onshore", "globex", AssignmentMode::Pull, false),
        ]
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect(),
        regions: [("us-east", region("US")), ("eu-west", region("IE")), ("in-south", region("IN"))]
            .into_iter()
            .map(|(n, r)| (n.to_string(), r))
            .collect(),
        ..Default::default()
    }
}

fn weekdays(start: u32, end: u32) -> Vec<Shift> {
    (1..=5).map(|d| Shift { weekday: d, start_minute: start, end_minute: end }).collect()
}

fn reader(id: &str, group: &str, region: &str, tz: &str, licence: &str, subs: &[&str], shifts: Vec<Shift>) -> Reader {
    let credentials = ["acme", "globex"]
        .iter()
        .map(|t| Credential { tenant: t.to_string(), facility: format!("{t}-general"), expires: FOREVER })
        .collect();
    Reader {
        id: id.into(),
        group: group.into(),
        region: region.into(),
        time_zone: tz.into(),
        licences: vec![Licence { jurisdiction: licence.into(), expires: FOREVER }],
        credentials,
        subspecialties: subs.iter().map(|s| s.to_string()).collect(),
        modalities: ["CT", "MR"].iter().map(|s| s.to_string()).collect(),
        read_types: BTreeSet::from([ReadType::Preliminary, ReadType::Final]),
        shifts,
        capacity: 3,
        availability: Availability::Available,
    }
}

/// Ortiz and Li read in New York office hours; Nair reads in Bangalore's
/// day (the US night), preliminaries only.
fn readers() -> Vec<Reader> {
    let mut nair = reader(
        "nair",
        "lotus",
        "in-south",
        "Asia/Kolkata",
        "IN-KA",
        &["neuro"],
        (1..=7).map(|d| Shift { weekday: d, start_minute: 7 * 60 + 30, end_minute: 16 * 60 + 30 }).collect(),
    );
    nair.read_types = BTreeSet::from([ReadType::Preliminary]);
    vec![
        reader(
            "ortiz",
            "atlantic",
            "us-east",
            "America/New_York",
            "US-NY",
            &["neuro", "body"],
            weekdays(8 * 60, 17 * 60),
        ),
        reader("li", "atlantic", "us-east", "America/New_York", "US", &["body"], weekdays(8 * 60, 17 * 60)),
        nair,
    ]
}

fn study(contract: &str, priority: Priority, read_type: ReadType, completed_at: UnixMicros) -> NewStudy {
    let tenant = contract.split('-').next().unwrap().to_string();
    NewStudy {
        id: Uuid::now_v7(),
        facility: format!("{tenant}-general"),
        tenant,
        contract: contract.into(),
        home_region: "us-east".into(),
        origin_jurisdiction: "US-NY".into(),
        modality: "CT".into(),
        body_part: "HEAD".into(),
        subspecialty: Some("neuro".into()),
        subspecialty_required: false,
        priority,
        service_type: ServiceType::RealTime,
        read_type,
        patient_key: None,
        rvu_milli: 850,
        ai_flagged: false,
        completed_at,
        prior_reader: None,
        due: None,
    }
}

/// Given readers, when each command is decided and applied in turn.
fn run(state: State, commands: Vec<Command>, now: UnixMicros) -> (State, Vec<Event>) {
    let policy = policy();
    let mut state = state;
    let mut all = Vec::new();
    for c in commands {
        let events = decide(&state, &policy, c, now).unwrap();
        for e in &events {
            state = apply(state, e);
        }
        all.extend(events);
    }
    (state, all)
}

fn given_readers() -> State {
    run(State::default(), readers().into_iter().map(Command::RegisterReader).collect(), UnixMicros(0)).0
}

// New York 10:00 EST on Wednesday = 15:00 UTC; 03:00 EST = 08:00 UTC (13:30 in Bangalore).
const NY_10AM: &str = "2026-11-25T15:00:00Z";
const NY_3AM: &str = "2026-11-25T08:00:00Z";

#[test]
fn each_failing_rule_is_named_with_its_reason() {
    let mut s = study("acme-pull", Priority::Routine, ReadType::Final, at(NY_10AM));
    s.origin_jurisdiction = "US-CA".into();
    s.facility = "acme-elsewhere".into();
    s.modality = "MG".into();
    let now = at(NY_10AM);
    let (state, _) = run(given_readers(), vec![Command::Queue(s.clone())], now);
    let checks = state.explain(&policy(), now, "ortiz", s.id).unwrap();
    let failed: Vec<Rule> = checks.iter().filter(|c| !c.passed).map(|c| c.rule).collect();
    assert_eq!(failed, [Rule::Licence, Rule::Credential, Rule::Modality]);
    let licence = checks.iter().find(|c| c.rule == Rule::Licence).unwrap();
    assert_eq!(licence.reason, "a final read needs a current licence in US-CA");
    // A national licence covers the subdivisions of its country.
    assert!(Licence { jurisdiction: "US".into(), expires: FOREVER }.covers("US-CA"));
    assert!(!Licence { jurisdiction: "US-NY".into(), expires: FOREVER }.covers("US-CA"));
}

#[test]
fn push_gives_each_study_the_best_reader_in_the_total_order() {
    let now = at(NY_10AM);
    let stat_neuro = study("acme-push", Priority::Stat, ReadType::Preliminary, now);
    let mut routine_body = study("acme-push", Priority::Routine, ReadType::Preliminary, now);
    routine_body.subspecialty = Some("body".into());
    let mut routine_body_2 = routine_body.clone();
    routine_body_2.id = Uuid::now_v7();
    let (state, events) = run(
        given_readers(),
        vec![
            Command::Queue(routine_body.clone()),
            Command::Queue(stat_neuro.clone()),
            Command::Queue(routine_body_2.clone()),
            Command::AssignPending,
        ],
        now,
    );
    let assigned: Vec<(Uuid, String)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StudyAssigned { study, reader, delivery_model } => {
                assert_eq!(*delivery_model, DeliveryModel::Onshore);
                Some((*study, reader.clone()))
            }
            _ => None,
        })
        .collect();
    // STAT first, to the neuro reader; then the body studies spread by RVU
    // load: li (empty) first, then whoever is lighter; nair is off shift.
    assert_eq!(assigned[0], (stat_neuro.id, "ortiz".to_string()));
    assert_eq!(assigned[1], (routine_body.id, "li".to_string()));
    assert_eq!(assigned.len(), 3);
    assert_eq!(state.load["ortiz"].open + state.load["li"].open, 3);
    assert!(!state.load.contains_key("nair"));
    // Nothing is left to push; deciding again assigns nothing.
    assert!(decide(&state, &policy(), Command::AssignPending, now).unwrap().is_empty());
}

#[test]
fn claim_next_takes_the_first_eligible_study_and_cherry_picking_is_refused() {
    let now = at(NY_10AM);
    let routine = study("acme-pull", Priority::Routine, ReadType::Preliminary, now);
    let stat = study("acme-pull", Priority::Stat, ReadType::Preliminary, now);
    let (state, _) = run(given_readers(), vec![Command::Queue(routine.clone()), Command::Queue(stat.clone())], now);
    let err = decide(&state, &policy(), Command::Claim { reader: "ortiz".into(), study: routine.id }, now).unwrap_err();
    assert_eq!(err, Error::CherryPick { study: routine.id, earlier: stat.id });
    let events = decide(&state, &policy(), Command::ClaimNext { reader: "ortiz".into() }, now).unwrap();
    assert!(
        matches!(&events[..], [Event::AssignmentClaimed { study, reader, .. }] if *study == stat.id && reader == "ortiz")
    );
    // A claim is exclusive.
    let state = apply(state, &events[0]);
    let err = decide(&state, &policy(), Command::Claim { reader: "li".into(), study: stat.id }, now).unwrap_err();
    assert_eq!(err, Error::AlreadyAssigned { study: stat.id, assignee: "ortiz".into() });
    // Now the routine study may be claimed.
    assert!(decide(&state, &policy(), Command::Claim { reader: "li".into(), study: routine.id }, now).is_ok());
    // Push contracts are not claimed.
    let pushed = study("acme-push", Priority::Routine, ReadType::Preliminary, now);
    let (state, _) = run(state, vec![Command::Queue(pushed.clone())], now);
    assert!(matches!(
        decide(&state, &policy(), Command::Claim { reader: "li".into(), study: pushed.id }, now),
        Err(Error::WrongMode { .. })
    ));
}

#[test]
fn a_licence_expiring_mid_shift_and_a_prior_read_make_a_reader_ineligible() {
    let now = at(NY_10AM);
    let mut final_read = study("acme-pull", Priority::Urgent, ReadType::Final, now);
    final_read.prior_reader = Some("ortiz".into());
    let (mut state, _) = run(given_readers(), vec![Command::Queue(final_read.clone())], now);
    let err =
        decide(&state, &policy(), Command::Claim { reader: "ortiz".into(), study: final_read.id }, now).unwrap_err();
    assert!(matches!(&err, Error::NotEligible { check, .. } if check.rule == Rule::Conflict), "{err}");
    // Li's licence ends at 10:30 New York time.
    let expiry = at("2026-11-25T15:30:00Z");
    state = apply(
        state,
        &Event::LicenceUpdated {
            reader: "li".into(),
            licences: vec![Licence { jurisdiction: "US".into(), expires: expiry }],
        },
    );
    assert_eq!(state.worklist(&policy(), now, "li").unwrap().len(), 1);
    let later = at("2026-11-25T16:00:00Z");
    assert!(state.worklist(&policy(), later, "li").unwrap().is_empty());
    let err =
        decide(&state, &policy(), Command::Claim { reader: "li".into(), study: final_read.id }, later).unwrap_err();
    assert!(matches!(&err, Error::NotEligible { check, .. } if check.rule == Rule::Licence), "{err}");
}

#[test]
fn unclaimed_studies_escalate_at_each_fraction_once_and_breach_once() {
    let done = at(NY_3AM);
    let mut s = study("globex-onshore", Priority::Urgent, ReadType::Preliminary, done);
    s.service_type = ServiceType::Hybrid;
    let (state, _) = run(given_readers(), vec![Command::Queue(s.clone())], done);
    // Urgent: 2 h SLA; 50% at +1 h, 80% at +96 min.
    let (state, events) = run(state, vec![Command::Tick], UnixMicros(done.0 + 3_600_000_000));
    assert_eq!(
        events,
        [Event::AssignmentEscalated { study: s.id, level: 1, per_mille: 500, priority: Priority::Stat, widened: None }]
    );
    let (state, again) = run(state, vec![Command::Tick], UnixMicros(done.0 + 3_600_000_000));
    assert!(again.is_empty(), "a timer fires once");
    let (state, events) = run(state, vec![Command::Tick], UnixMicros(done.0 + 7_200_000_000));
    assert!(
        matches!(&events[0], Event::AssignmentEscalated { level: 2, widened: None, .. }),
        "globex forbids offshore: {events:?}"
    );
    assert!(
        matches!(&events[1], Event::SlaBreached { study, read_type: Some(ReadType::Preliminary), contract, .. }
            if *study == s.id && contract == "globex-onshore"),
        "a breach names its read and contract: {events:?}"
    );
    let (_, never) = run(state, vec![Command::Tick], UnixMicros(done.0 + 9_000_000_000));
    assert!(never.is_empty());
}

#[test]
fn follow_the_sun_offers_us_night_stat_work_offshore_only_where_the_contract_allows() {
    let policy = policy();
    let day = at("2026-11-25T00:00:00Z").0;
    for hour in 0..24 {
        let now = UnixMicros(day + hour * 3_600_000_000);
        let allowed = study("acme-pull", Priority::Stat, ReadType::Preliminary, now);
        let onshore_only = study("globex-onshore", Priority::Stat, ReadType::Preliminary, now);
        let (state, _) =
            run(given_readers(), vec![Command::Queue(allowed.clone()), Command::Queue(onshore_only.clone())], now);
        for r in ["ortiz", "li", "nair"] {
            let offered: Vec<Uuid> = state.worklist(&policy, now, r).unwrap().iter().map(|s| s.id).collect();
            let reader = &state.readers[r];
            if !offered.is_empty() {
                assert!(reader.on_shift(now), "{r} is offered work off shift at {hour}:00 UTC");
            }
            if r == "nair" {
                assert!(!offered.contains(&onshore_only.id), "globex's study crossed offshore at {hour}:00 UTC");
                assert_eq!(offered.contains(&allowed.id), reader.on_shift(now), "{hour}:00 UTC");
            }
        }
        if now == at(NY_3AM) {
            // 03:00 in New York: the US readers are off shift, Bangalore is on.
            assert!(state.worklist(&policy, now, "ortiz").unwrap().is_empty());
            assert_eq!(state.worklist(&policy, now, "nair").unwrap()[0].id, allowed.id);
            // The onshore-only study escalates instead; it is never offered across.
            let (state, events) = run(state, vec![Command::Tick], UnixMicros(now.0 + 1_800_000_000));
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Event::AssignmentEscalated { study, .. } if *study == onshore_only.id))
            );
            assert!(
                !state
                    .worklist(&policy, UnixMicros(now.0 + 1_800_000_000), "nair")
                    .unwrap()
                    .iter()
                    .any(|s| s.id == onshore_only.id)
            );
        }
    }
}

#[test]
fn release_and_reassign_are_events_with_their_rules() {
    let now = at(NY_10AM);
    let s = study("acme-pull", Priority::Routine, ReadType::Preliminary, now);
    let (state, _) = run(
        given_readers(),
        vec![Command::Queue(s.clone()), Command::Claim { reader: "ortiz".into(), study: s.id }],
        now,
    );
    let err = decide(&state, &policy(), Command::Release { reader: "li".into(), study: s.id, reason: "x".into() }, now)
        .unwrap_err();
    assert_eq!(err, Error::NotAssignee { study: s.id, reader: "li".into() });
    let err = decide(&state, &policy(), Command::Reassign { group: "lotus".into(), study: s.id, to: "li".into() }, now)
        .unwrap_err();
    assert_eq!(err, Error::NotInGroup { reader: "li".into(), group: "lotus".into() });
    let (state, events) =
        run(state, vec![Command::Reassign { group: "atlantic".into(), study: s.id, to: "li".into() }], now);
    assert_eq!(
        events,
        [Event::AssignmentReassigned {
            study: s.id,
            from: Some("ortiz".into()),
            to: "li".into(),
            by_group: "atlantic".into()
        }]
    );
    assert_eq!((state.load["ortiz"].open, state.load["li"].open), (0, 1));
    let (state, _) = run(
        state,
        vec![Command::Release { reader: "li".into(), study: s.id, reason: "needs a neuro read".into() }],
        now,
    );
    assert_eq!(
        state.worklist(&policy(), now, "ortiz").unwrap()[0].id,
        s.id,
        "a released study is back on the worklist"
    );
    assert_eq!(state.load["li"].open, 0);
}

#[test]
fn a_shift_crossing_midnight_covers_both_days() {
    let mut r = readers().remove(0);
    r.shifts = vec![Shift { weekday: 6, start_minute: 20 * 60, end_minute: 8 * 60 }]; // Saturday 20:00 → Sunday 08:00
    assert!(r.on_shift(at("2026-11-29T02:00:00Z"))); // Saturday 21:00 in New York
    assert!(r.on_shift(at("2026-11-29T12:00:00Z"))); // Sunday 07:00
    assert!(!r.on_shift(at("2026-11-29T14:00:00Z"))); // Sunday 09:00
    assert!(!r.on_shift(at("2026-11-28T12:00:00Z"))); // Saturday 07:00
}

#[test]
fn nighthawk_offshore_preliminary_at_night_then_onshore_final_in_the_morning() {
    let policy = policy();
    let night = at(NY_3AM);
    let prelim = study("acme-pull", Priority::Stat, ReadType::Preliminary, night);
    let (state, _) = run(given_readers(), vec![Command::Queue(prelim.clone())], night);
    // Only Bangalore is on shift: nair claims the preliminary.
    let events = decide(&state, &policy, Command::ClaimNext { reader: "nair".into() }, night).unwrap();
    assert!(
        matches!(&events[..], [Event::AssignmentClaimed { study, delivery_model: DeliveryModel::Offshore, .. }] if *study == prelim.id)
    );
    let state = apply(state, &events[0]);
    // Only the assignee signs the read they hold.
    let signed = UnixMicros(night.0 + 20 * 60_000_000);
    let sign = |reader: &str, read_type| Command::ReadSigned {
        study: prelim.id,
        read_type,
        reader: reader.into(),
        signed_at: signed,
    };
    // A signature from a reader who does not hold the read (who lost it to
    // a racing release) is a clinical fact all the same: the read ends,
    // the holder released first, and only the holder's load is freed.
    let (raced, events) = run(state.clone(), vec![sign("ortiz", ReadType::Preliminary)], signed);
    assert!(
        matches!(
            &events[..],
            [Event::AssignmentReleased { reader: holder, .. }, Event::AssignmentCompleted { reader: signer, .. }, Event::StudyQueued(_)]
                if holder == "nair" && signer == "ortiz"
        ),
        "{events:?}"
    );
    assert_eq!(raced.load["nair"].open, 0);
    assert_eq!(raced.load.get("ortiz").map_or(0, |l| l.open), 0);
    assert!(matches!(decide(&state, &policy, sign("nair", ReadType::Final), signed), Err(Error::WrongRead { .. })));

    // nair signs: the preliminary ends and the final is queued, following it,
    // as routine work due a day after the signature.
    let (state, events) = run(state, vec![sign("nair", ReadType::Preliminary)], signed);
    let [Event::AssignmentCompleted { reader, read_type: ReadType::Preliminary, group, .. }, Event::StudyQueued(fin)] =
        &events[..]
    else {
        panic!("{events:?}")
    };
    assert_eq!(reader, "nair");
    assert_eq!(group, &state.readers["nair"].group, "the signing reader's group, for billing's payout");
    assert!(!group.is_empty());
    assert_eq!((fin.id, fin.read_type, fin.priority), (prelim.id, ReadType::Final, Priority::Routine));
    assert_eq!((fin.prior_reader.as_deref(), fin.deadline), (Some("nair"), UnixMicros(signed.0 + 86_400_000_000)));
    assert_eq!(state.load["nair"].open, 0, "the preliminary no longer counts against nair");

    // In the morning: finals are onshore only, and nair gave the preliminary.
    let morning = at(NY_10AM);
    assert!(state.worklist(&policy, morning, "nair").unwrap().is_empty());
    let checks = state.explain(&policy, morning, "nair", prelim.id).unwrap();
    for rule in [Rule::ReadType, Rule::DeliveryModel, Rule::Conflict] {
        assert!(checks.iter().any(|c| c.rule == rule && !c.passed), "{rule}: {checks:?}");
    }
    assert_eq!(state.worklist(&policy, morning, "ortiz").unwrap()[0].id, prelim.id);
    let (state, events) = run(state, vec![Command::ClaimNext { reader: "ortiz".into() }], morning);
    assert!(matches!(&events[..], [Event::AssignmentClaimed { delivery_model: DeliveryModel::Onshore, .. }]));

    // The final signed, the study leaves routing, saying so; no breach follows.
    let (state, events) = run(
        state,
        vec![Command::ReadSigned {
            study: prelim.id,
            read_type: ReadType::Final,
            reader: "ortiz".into(),
            signed_at: morning,
        }],
        morning,
    );
    assert!(matches!(&events[..], [Event::AssignmentCompleted { read_type: ReadType::Final, .. }]));
    assert!(!state.studies.contains_key(&prelim.id));
    assert_eq!(state.load["ortiz"].open, 0);
    assert!(run(state, vec![Command::Tick], UnixMicros(morning.0 + 7 * 86_400_000_000)).1.is_empty());
}

#[test]
fn ai_triage_raises_priority_and_brings_the_deadline_forward_even_before_the_study_arrives() {
    let policy = policy();
    let now = at(NY_10AM);
    let routine = study("acme-pull", Priority::Routine, ReadType::Preliminary, now);
    let urgent = study("acme-pull", Priority::Urgent, ReadType::Preliminary, now);
    let (state, _) = run(given_readers(), vec![Command::Queue(routine.clone()), Command::Queue(urgent.clone())], now);
    assert_eq!(state.worklist(&policy, now, "ortiz").unwrap()[0].id, urgent.id);

    // A bleed suspected on the routine head CT: STAT, due 30 minutes from completion.
    let later = UnixMicros(now.0 + 5 * 60_000_000);
    let triage = |study, flagged, suggested| Command::Triage { study, flagged, suggested, model: "ich@2".into() };
    let (state, events) = run(state, vec![triage(routine.id, true, Some(Priority::Stat))], later);
    assert_eq!(
        events,
        [Event::StudyTriaged {
            study: routine.id,
            ai_flagged: true,
            priority: Priority::Stat,
            deadline: Some(UnixMicros(now.0 + 1_800_000_000)),
            model: "ich@2".into(),
        }]
    );
    let head = state.worklist(&policy, later, "ortiz").unwrap()[0];
    assert_eq!((head.id, head.priority, head.ai_flagged), (routine.id, Priority::Stat, true));
    // Triage never lowers: a routine suggestion for a STAT study changes nothing.
    assert!(run(state.clone(), vec![triage(routine.id, false, Some(Priority::Routine))], later).1.is_empty());

    // A triage that comes before its study (another topic, no order) waits for it.
    let early = study("acme-pull", Priority::Routine, ReadType::Preliminary, later);
    let (state, events) = run(state, vec![triage(early.id, true, None)], later);
    assert!(matches!(&events[..], [Event::StudyTriaged { deadline: None, priority: Priority::Urgent, .. }]));
    let (state, _) = run(state, vec![Command::Queue(early.clone())], later);
    let arrived = &state.studies[&early.id];
    assert_eq!((arrived.priority, arrived.ai_flagged), (Priority::Urgent, true));
    // The order's priority is kept beside the raise: billing prices by it.
    assert_eq!(arrived.requested_priority, Priority::Routine);
    assert_eq!(arrived.deadline, UnixMicros(later.0 + 7_200_000_000));
    assert!(state.pending_triage.is_empty());
}

#[test]
fn hybrid_service_reads_locally_first_and_overflows_to_remote_readers_by_escalation() {
    let policy = policy();
    let night = at(NY_3AM);
    let mut s = study("acme-pull", Priority::Routine, ReadType::Preliminary, night);
    s.service_type = ServiceType::Hybrid;
    let (state, _) = run(given_readers(), vec![Command::Queue(s.clone())], night);
    assert!(state.worklist(&policy, night, "nair").unwrap().is_empty(), "hybrid starts onshore only");
    // Routine: 24 h SLA; at 50% (+12 h) it escalates and widens. acme has
    // no nearshore, so level 1 widens nothing and level 2 (80%) opens offshore.
    let half = UnixMicros(night.0 + 12 * 3_600_000_000);
    let (state, events) = run(state, vec![Command::Tick], half);
    assert!(matches!(
        &events[..],
        [Event::AssignmentEscalated { level: 1, widened: None, priority: Priority::Urgent, .. }]
    ));
    let later = UnixMicros(night.0 + 20 * 3_600_000_000);
    let (state, events) = run(state, vec![Command::Tick], later);
    assert!(matches!(
        &events[..],
        [Event::AssignmentEscalated { level: 2, widened: Some(DeliveryModel::Offshore), priority: Priority::Stat, .. }]
    ));
    // 23:00 in New York is 09:30 in Bangalore: the overflow reaches nair.
    assert_eq!(state.worklist(&policy, later, "nair").unwrap()[0].id, s.id);
}

#[test]
fn the_state_survives_a_snapshot_round_trip() {
    let now = at(NY_10AM);
    let (state, _) = run(
        given_readers(),
        vec![
            Command::Queue(study("acme-push", Priority::Stat, ReadType::Preliminary, now)),
            Command::AssignPending,
            Command::Tick,
        ],
        now,
    );
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(serde_json::from_str::<State>(&json).unwrap(), state);
}
