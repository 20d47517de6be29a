//! Routing's projection: a snapshot plus the tail equals a full replay, and
//! both equal the domain's own fold of what it decided.
//!
//! Random command sequences (registrations, arrivals, claims, releases,
//! reassignments, availability, profile changes, escalation ticks) are
//! decided by the domain, written as records over several partitions, and
//! read back with snapshots, crashes, rewinds and re-appends. A snapshot
//! goes through JSON, which drops the derived indexes (the unassigned-study
//! queue, readers by group) and rebuilds them, so equality of whole states
//! also checks that `apply` keeps those indexes true.

use std::collections::{BTreeMap, BTreeSet};

use meridian_events::seal::MemoryKeyStore;
use meridian_events::{DataClass, EventId, EventMeta, UnixMicros};
use meridian_log::partitioner::partition_for;
use meridian_log::{Outgoing, Position, Record, TopicName};
use meridian_projection::Projector;
use proptest::prelude::*;
use uuid::Uuid;

use crate::adapters::events::{aggregate, to_payload};
use crate::app::RoutingProjection;
use crate::domain::model::*;
use crate::domain::policy::*;
use crate::domain::worklist::{self, Command, NewStudy, Profile, State};

const PARTITIONS: u32 = 3;
const READERS: [&str; 4] = ["dr-a", "dr-b", "dr-c", "dr-d"];

fn topic() -> TopicName {
    TopicName::new("us-east", DataClass::Operational, "routing").unwrap()
}

fn policy() -> Policy {
    let contract = |name: &str, mode| ContractPolicy {
        name: name.into(),
        tenant: "acme".into(),
        groups: BTreeSet::from(["g".to_string(), "h".to_string()]),
        mode,
        delivery: BTreeMap::from([
            (ReadType::Preliminary, BTreeSet::from([DeliveryModel::Onshore, DeliveryModel::Offshore])),
            (ReadType::Final, BTreeSet::from([DeliveryModel::Onshore])),
        ]),
        sla_seconds: BTreeMap::from([(Priority::Stat, 1_800), (Priority::Urgent, 7_200), (Priority::Routine, 86_400)]),
        escalation_per_mille: vec![500, 800],
        service: None,
        subspecialty_required: false,
        language: "en".into(),
    };
    let region = |country: &str| RegionInfo { country: country.into(), nearshore: BTreeSet::new() };
    Policy {
        contracts: BTreeMap::from([
            ("pull".to_string(), contract("pull", AssignmentMode::Pull)),
            ("push".to_string(), contract("push", AssignmentMode::Push)),
        ]),
        regions: BTreeMap::from([("us-east".to_string(), region("US")), ("in-south".to_string(), region("IN"))]),
        ..Default::default()
    }
}

fn reader(i: usize) -> Reader {
    Reader {
        id: READERS[i].into(),
        group: if i < 2 { "g".into() } else { "h".into() },
        region: if i.is_multiple_of(2) { "us-east".into() } else { "in-south".into() },
        time_zone: "UTC".into(),
        licences: vec![Licence { jurisdiction: "US".into(), expires: UnixMicros(i64::MAX) }],
        credentials: vec![Credential { tenant: "acme".into(), facility: "f".into(), expires: UnixMicros(i64::MAX) }],
        subspecialties: BTreeSet::from(["neuro".into()]),
        modalities: BTreeSet::from(["CT".into(), "MR".into()]),
        read_types: BTreeSet::from([ReadType::Preliminary, ReadType::Final]),
        shifts: (1..=7).map(|d| Shift { weekday: d, start_minute: 0, end_minute: 0 }).collect(),
        capacity: 2,
        availability: Availability::Available,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Register(usize),
    Queue {
        push: bool,
        priority: u8,
        final_read: bool,
        mr: bool,
    },
    ClaimNext(usize),
    AssignPending,
    Release(usize, usize),
    Reassign(usize, usize),
    Away(usize, bool),
    Capacity(usize, u32),
    /// Minutes pass, then timers run.
    Tick(u16),
    /// The assignee of a study signs their read.
    Sign(usize),
    /// AI triage of a study, queued or (past the last queued) not yet.
    Triage(usize, bool, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..READERS.len()).prop_map(Op::Register),
        4 => (any::<bool>(), 0u8..3, any::<bool>(), any::<bool>())
            .prop_map(|(push, priority, final_read, mr)| Op::Queue { push, priority, final_read, mr }),
        3 => (0..READERS.len()).prop_map(Op::ClaimNext),
        1 => Just(Op::AssignPending),
        2 => (0..READERS.len(), 0usize..12).prop_map(|(r, s)| Op::Release(r, s)),
        1 => (0..READERS.len(), 0usize..12).prop_map(|(r, s)| Op::Reassign(r, s)),
        1 => (0..READERS.len(), any::<bool>()).prop_map(|(r, away)| Op::Away(r, away)),
        1 => (0..READERS.len(), 1u32..4).prop_map(|(r, c)| Op::Capacity(r, c)),
        2 => (1u16..1_000).prop_map(Op::Tick),
        2 => (0usize..12).prop_map(Op::Sign),
        1 => (0usize..14, any::<bool>(), 0u8..4).prop_map(|(s, f, p)| Op::Triage(s, f, p)),
    ]
}

/// The domain's decisions for `ops`, as records on the partitions, and the
/// state the domain itself folded.
fn decided(ops: &[Op]) -> (Vec<Vec<Record>>, State) {
    let policy = policy();
    let mut state = State::default();
    let mut now = UnixMicros(1_795_000_000_000_000);
    let mut partitions: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
    let mut versions: BTreeMap<Uuid, u64> = BTreeMap::new();
    let mut queued = 0u128;
    let study = |n: usize, queued: u128| Uuid::from_u128(1 + (n as u128 % queued.max(1)));
    for op in ops {
        let command = match op {
            Op::Register(i) => Command::RegisterReader(reader(*i)),
            Op::Queue { push, priority, final_read, mr } => {
                queued += 1;
                Command::Queue(NewStudy {
                    id: Uuid::from_u128(queued),
                    tenant: "acme".into(),
                    facility: "f".into(),
                    contract: if *push { "push".into() } else { "pull".into() },
                    home_region: "us-east".into(),
                    origin_jurisdiction: "US-NY".into(),
                    modality: if *mr { "MR".into() } else { "CT".into() },
                    body_part: "HEAD".into(),
                    subspecialty: Some("neuro".into()),
                    subspecialty_required: false,
                    priority: [Priority::Stat, Priority::Urgent, Priority::Routine][*priority as usize],
                    service_type: if *priority == 2 { ServiceType::Hybrid } else { ServiceType::RealTime },
                    read_type: if *final_read { ReadType::Final } else { ReadType::Preliminary },
                    patient_key: Some(Uuid::from_u128(queued % 3)),
                    rvu_milli: 500 + queued as u32,
                    ai_flagged: false,
                    completed_at: now,
                    prior_reader: None,
                    due: None,
                })
            }
            Op::ClaimNext(i) => Command::ClaimNext { reader: READERS[*i].into() },
            Op::AssignPending => Command::AssignPending,
            Op::Release(i, s) => {
                Command::Release { reader: READERS[*i].into(), study: study(*s, queued), reason: "handover".into() }
            }
            Op::Reassign(i, s) => {
                Command::Reassign { group: reader(*i).group, study: study(*s, queued), to: READERS[*i].into() }
            }
            Op::Away(i, away) => Command::SetAvailability {
                reader: READERS[*i].into(),
                availability: if *away { Availability::Away } else { Availability::Available },
            },
            Op::Capacity(i, c) => {
                let r = reader(*i);
                Command::UpdateReader {
                    reader: r.id,
                    profile: Profile {
                        subspecialties: r.subspecialties,
                        modalities: r.modalities,
                        read_types: r.read_types,
                        shifts: r.shifts,
                        capacity: *c,
                    },
                }
            }
            Op::Tick(minutes) => {
                now = UnixMicros(now.0 + i64::from(*minutes) * 60_000_000);
                Command::Tick
            }
            Op::Sign(n) => {
                let id = study(*n, queued);
                let Some((read_type, Some(reader))) = state.studies.get(&id).map(|s| (s.read_type, s.assignee.clone()))
                else {
                    continue;
                };
                Command::ReadSigned { study: id, read_type, reader, signed_at: now }
            }
            Op::Triage(n, flagged, p) => Command::Triage {
                // Up to two ids past the last queued: triage that comes first.
                study: Uuid::from_u128(1 + (*n as u128 % (queued + 2))),
                flagged: *flagged,
                suggested: [Some(Priority::Stat), Some(Priority::Urgent), Some(Priority::Routine), None][*p as usize],
                model: "m".into(),
            },
        };
        let Ok(events) = worklist::decide(&state, &policy, command, now) else { continue };
        for e in &events {
            let (aggregate_type, aggregate_id) = aggregate(e);
            let version = versions.entry(aggregate_id).or_default();
            *version += 1;
            let meta = EventMeta {
                event_id: EventId::derived(EventId(aggregate_id), "replay", *version as u32),
                aggregate_type: aggregate_type.into(),
                aggregate_id,
                aggregate_version: *version,
                tenant: "acme".into(),
                home_region: "us-east".into(),
                occurred_at: now,
                causation_id: None,
                correlation_id: None,
                traceparent: None,
            };
            let out = Outgoing::new(topic(), &to_payload(e).plain_envelope(meta).unwrap()).unwrap();
            let p = partition_for(&out.key, PARTITIONS);
            let part = &mut partitions[p as usize];
            part.push(Record {
                topic: topic(),
                partition: p,
                offset: part.len() as u64,
                key: out.key,
                value: out.value,
                headers: out.headers,
            });
            state = worklist::apply(state, e);
        }
    }
    (partitions, state)
}

#[derive(Clone, Debug)]
enum Step {
    Read(u32),
    Rewind(u32, u64),
    Snapshot,
    Crash,
}

fn start() -> Vec<Position> {
    (0..PARTITIONS).map(|p| Position::start(topic(), p)).collect()
}

fn full_replay(partitions: &[Vec<Record>]) -> Projector<RoutingProjection> {
    full_replay_in(None, partitions)
}

/// The full replay by a projector of `region`'s log (`None`: us-east's own).
fn full_replay_in(region: Option<&str>, partitions: &[Vec<Record>]) -> Projector<RoutingProjection> {
    let keys = MemoryKeyStore::default();
    let mut projector = Projector::new(start()).in_region(region);
    for r in partitions.iter().flatten() {
        projector.feed(r, &keys).unwrap();
    }
    projector
}

fn with_crashes(partitions: &[Vec<Record>], steps: &[Step]) -> Projector<RoutingProjection> {
    with_crashes_in(None, partitions, steps)
}

fn with_crashes_in(region: Option<&str>, partitions: &[Vec<Record>], steps: &[Step]) -> Projector<RoutingProjection> {
    let keys = MemoryKeyStore::default();
    let mut projector = Projector::<RoutingProjection>::new(start()).in_region(region);
    let mut cursors = vec![0u64; PARTITIONS as usize];
    let mut saved: Option<String> = None;
    for step in steps {
        match step {
            Step::Read(p) => {
                if let Some(r) = partitions[*p as usize].get(cursors[*p as usize] as usize) {
                    projector.feed(r, &keys).unwrap();
                    cursors[*p as usize] += 1;
                }
            }
            // A consumer that re-reads: de-duplication must make it harmless.
            Step::Rewind(p, k) => cursors[*p as usize] = cursors[*p as usize].saturating_sub(*k),
            Step::Snapshot => saved = Some(serde_json::to_string(&projector.snapshot()).unwrap()),
            Step::Crash => {
                projector = match &saved {
                    Some(json) => Projector::restore(serde_json::from_str(json).unwrap()).unwrap(),
                    None => Projector::new(start()),
                }
                .in_region(region);
                for p in projector.positions() {
                    cursors[p.partition as usize] = p.offset;
                }
            }
        }
    }
    for (p, partition) in partitions.iter().enumerate() {
        for r in &partition[cursors[p] as usize..] {
            projector.feed(r, &keys).unwrap();
        }
    }
    projector
}

fn steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => (0..PARTITIONS).prop_map(Step::Read),
            1 => (0..PARTITIONS, 1u64..4).prop_map(|(p, k)| Step::Rewind(p, k)),
            2 => Just(Step::Snapshot),
            2 => Just(Step::Crash),
        ],
        0..120,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn routing_snapshot_plus_tail_equals_full_replay_and_the_domain_fold(
        ops in prop::collection::vec(op(), 1..60),
        steps in steps(),
    ) {
        let (partitions, folded) = decided(&ops);
        let replayed = full_replay(&partitions);
        let resumed = with_crashes(&partitions, &steps);
        prop_assert_eq!(&resumed.state().worklist, &replayed.state().worklist);
        prop_assert_eq!(&resumed.state().versions, &replayed.state().versions);
        prop_assert_eq!(resumed.positions(), replayed.positions());
        // Partition order differs from decision order: the fold must not care.
        prop_assert_eq!(&replayed.state().worklist, &folded);
        // The indexes `apply` kept are the ones a rebuild derives.
        let rebuilt: State = serde_json::from_str(&serde_json::to_string(&folded).unwrap()).unwrap();
        prop_assert_eq!(rebuilt.queue(), folded.queue());
        prop_assert_eq!(&rebuilt, &folded);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// us-east's routing records, copied into in-south's log by the
    /// replicator and folded there (with snapshots, crashes and rewinds):
    /// in-south holds us-east's studies exactly as us-east's domain folded
    /// them, the readers who sit in us-east as us-east has them, and none
    /// of us-east's copies of readers who sit in in-south (theirs are
    /// in-south's to write); it decides nothing about any of it.
    #[test]
    fn a_replicated_routing_stream_folds_to_the_home_regions_studies_and_readers(
        ops in prop::collection::vec(op(), 1..60),
        steps in steps(),
    ) {
        let (partitions, folded) = decided(&ops);
        let replayed = full_replay_in(Some("in-south"), &partitions);
        let resumed = with_crashes_in(Some("in-south"), &partitions, &steps);
        prop_assert_eq!(resumed.state(), replayed.state());
        prop_assert_eq!(resumed.positions(), replayed.positions());
        let here = replayed.state();
        // The domain's fold of what crossed, without readers: us-east's studies.
        let mut studies = State::default();
        for r in partitions.iter().flatten() {
            let e = crate::adapters::events::from_payload(&r.envelope().unwrap().open_plain().unwrap()).unwrap().unwrap();
            if !matches!(aggregate(&e).0, crate::adapters::events::READER_AGGREGATE)
                && !matches!(e, worklist::Event::StudyUnroutable(_))
            {
                studies = worklist::apply(studies, &e);
            }
        }
        let theirs = here.elsewhere.get("us-east").cloned().unwrap_or_default();
        prop_assert_eq!(&theirs.studies, &folded.studies);
        prop_assert_eq!(&theirs, &studies);
        let sitting_there: std::collections::HashMap<_, _> =
            folded.readers.iter().filter(|(_, r)| r.region == "us-east").map(|(k, r)| (k.clone(), r.clone())).collect();
        prop_assert_eq!(&here.worklist.readers, &sitting_there);
        prop_assert!(here.worklist.studies.is_empty() && here.versions.is_empty() && here.answers == Default::default());
    }
}

/// The property means something only if the sequences assign work, release
/// it and escalate: count how often they do.
#[test]
fn generated_sequences_assign_release_and_escalate() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut assigning, mut releasing, mut escalating, mut handing_over, n) = (0, 0, 0, 0, 200);
    for _ in 0..n {
        let ops = prop::collection::vec(op(), 1..60).new_tree(&mut runner).unwrap().current();
        let (partitions, folded) = decided(&ops);
        let types: BTreeSet<String> = partitions
            .iter()
            .flatten()
            .map(|r| r.envelope().unwrap().payload_type.rsplit('.').next().unwrap().to_owned())
            .collect();
        assigning += usize::from(folded.studies.values().any(|s| s.assignee.is_some()));
        releasing += usize::from(types.contains("AssignmentReleased") || types.contains("AssignmentReassigned"));
        escalating += usize::from(types.contains("AssignmentEscalated"));
        handing_over += usize::from(types.contains("AssignmentCompleted"));
    }
    assert!(assigning * 2 > n, "only {assigning} of {n} sequences assign");
    assert!(releasing * 5 > n, "only {releasing} of {n} sequences release or reassign");
    assert!(escalating * 5 > n, "only {escalating} of {n} sequences escalate");
    assert!(handing_over * 5 > n, "only {handing_over} of {n} sequences sign a read");
}

/// One routing event as `writer` appended it to its topic (so as a copy
/// when folded by another region), with the event id `id`.
fn written(writer: &str, e: &worklist::Event, version: u64, id: u128, offset: u64) -> Record {
    let (aggregate_type, aggregate_id) = aggregate(e);
    let meta = EventMeta {
        event_id: EventId(Uuid::from_u128(id)),
        aggregate_type: aggregate_type.into(),
        aggregate_id,
        aggregate_version: version,
        tenant: "platform".into(),
        home_region: writer.into(),
        occurred_at: UnixMicros(1_795_000_000_000_000),
        causation_id: None,
        correlation_id: None,
        traceparent: None,
    };
    let topic = TopicName::new(writer, DataClass::Operational, "routing").unwrap();
    let out = Outgoing::new(topic.clone(), &to_payload(e).plain_envelope(meta).unwrap()).unwrap();
    Record { topic, partition: 0, offset, key: out.key, value: out.value, headers: out.headers }
}

/// An in-south data directory from before readers were registered only
/// where they sit: in-south registered us-east's dr-a itself (the same
/// event id as us-east's own registration: both came from one idempotency
/// key) and changed her once. us-east's events, copied in, win from the
/// first: her registration is not a conflict with in-south's, her own
/// region's change stands, in-south's older change of her does not —
/// folded from the start, and from a snapshot whose de-duplication table
/// was stored before writers were kept.
#[test]
fn a_readers_own_region_wins_over_an_old_local_copy_of_them_even_from_an_old_snapshot() {
    let keys = MemoryKeyStore::default();
    let mut here = reader(0);
    here.licences = vec![Licence { jurisdiction: "US-NY".into(), expires: UnixMicros(1) }];
    let registered = |r: &Reader| worklist::Event::ReaderRegistered(r.clone());
    let availability = |a| worklist::Event::AvailabilityChanged { reader: "dr-a".into(), availability: a };
    let own_topic = TopicName::new("in-south", DataClass::Operational, "routing").unwrap();
    let copy_topic = TopicName::new("us-east", DataClass::Operational, "routing").unwrap();
    let starts: Vec<Position> = [own_topic, copy_topic].into_iter().map(|t| Position::start(t, 0)).collect();
    let old_local = [written("in-south", &registered(&here), 1, 7, 0)];
    let theirs = [
        written("us-east", &registered(&reader(0)), 1, 7, 0),
        written("us-east", &availability(Availability::Away), 2, 8, 1),
    ];
    let later_local = written("in-south", &availability(Availability::Busy), 2, 9, 1);

    let fold = |projector: &mut Projector<RoutingProjection>, records: &[&Record]| {
        for r in records {
            projector.feed(r, &keys).unwrap();
        }
    };
    // From the start.
    let mut fresh = Projector::<RoutingProjection>::new(starts.clone()).in_region(Some("in-south"));
    fold(&mut fresh, &[&old_local[0], &theirs[0], &theirs[1], &later_local]);
    // From a snapshot taken after the old local registration, its table
    // stored without writers (as the previous build stored it).
    let mut before = Projector::<RoutingProjection>::new(starts).in_region(Some("in-south"));
    fold(&mut before, &[&old_local[0]]);
    let mut stored = serde_json::to_value(before.snapshot()).unwrap();
    for entry in stored["dedup"]["entries"].as_array_mut().unwrap() {
        for applied in entry[1].as_array_mut().unwrap() {
            applied.as_object_mut().unwrap().remove("region");
        }
    }
    let mut resumed = Projector::<RoutingProjection>::restore(serde_json::from_value(stored).unwrap())
        .unwrap()
        .in_region(Some("in-south"));
    fold(&mut resumed, &[&theirs[0], &theirs[1], &later_local]);

    for folded in [&fresh, &resumed] {
        let r = &folded.state().worklist.readers["dr-a"];
        assert_eq!(r.licences, reader(0).licences, "us-east's registration, not in-south's copy");
        assert_eq!(r.availability, Availability::Away, "in-south's later change of her does not count");
        assert_eq!(folded.stats().conflicts, 0, "{:?}", folded.stats());
    }
    assert_eq!(fresh.state().worklist, resumed.state().worklist);
}
