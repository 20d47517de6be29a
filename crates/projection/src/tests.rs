//! Snapshot + tail == full replay, as a property, with a deliberately broken
//! snapshot as the control the property must catch.

use std::collections::BTreeMap;

use meridian_events::seal::MemoryKeyStore;
use meridian_events::{DataClass, Envelope};
use meridian_log::contract::event;
use meridian_log::partitioner::partition_for;
use meridian_log::{Outgoing, Position, Record, TopicName};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestError, TestRunner};
use uuid::Uuid;

use super::*;

/// Order-sensitive per aggregate: a hash chain over each aggregate's events.
struct Chain;

impl Projection for Chain {
    type State = BTreeMap<String, u64>;
    const NAME: &'static str = "test.chain";

    fn apply(mut state: Self::State, event: &Event<'_>) -> Self::State {
        let Payload::StudyStarted(s) = event.payload else {
            return state;
        };
        let h = state.entry(event.envelope.meta.aggregate_id.to_string()).or_insert(17);
        for b in s.modality.bytes() {
            *h = h.wrapping_mul(1_000_003).wrapping_add(u64::from(b));
        }
        *h = h.wrapping_mul(31).wrapping_add(event.envelope.meta.aggregate_version);
        state
    }
}

const PARTITIONS: u32 = 2;

fn topic() -> TopicName {
    TopicName::new("test", DataClass::Operational, "chain").unwrap()
}

/// What a reader does next.
#[derive(Clone, Debug)]
enum Step {
    Read(u32),
    Rewind(u32, u64),
    Snapshot,
    Crash,
}

#[derive(Clone, Debug)]
struct Scenario {
    partitions: Vec<Vec<Record>>,
    steps: Vec<Step>,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let writes = prop::collection::vec((0usize..4, prop::option::weighted(0.2, any::<prop::sample::Index>())), 1..40);
    let steps = prop::collection::vec(
        prop_oneof![
            6 => (0..PARTITIONS).prop_map(Step::Read),
            1 => (0..PARTITIONS, 1u64..4).prop_map(|(p, k)| Step::Rewind(p, k)),
            2 => Just(Step::Snapshot),
            2 => Just(Step::Crash),
        ],
        0..80,
    );
    (writes, steps).prop_map(|(writes, steps)| {
        let aggregates: Vec<Uuid> = (0..4).map(|i| Uuid::from_u128(0x1000 + i)).collect();
        let mut versions = [0u64; 4];
        let mut written: Vec<Envelope> = Vec::new();
        let mut partitions: Vec<Vec<Record>> = vec![Vec::new(); PARTITIONS as usize];
        let push = |e: &Envelope, partitions: &mut Vec<Vec<Record>>| {
            let out = Outgoing::new(topic(), e).unwrap();
            let p = partition_for(&out.key, PARTITIONS);
            let part = &mut partitions[p as usize];
            part.push(Record {
                topic: topic(),
                partition: p,
                offset: part.len() as u64,
                key: out.key,
                value: out.value,
                headers: Default::default(),
            });
        };
        for (agg, reappend) in writes {
            versions[agg] += 1;
            let e = event(aggregates[agg], versions[agg], &format!("m{}", versions[agg] * 7 + agg as u64));
            push(&e, &mut partitions);
            written.push(e);
            // A producer that crashed re-appends an event it already wrote.
            if let Some(index) = reappend {
                let again = written[index.index(written.len())].clone();
                push(&again, &mut partitions);
            }
        }
        Scenario { partitions, steps }
    })
}

fn start() -> Vec<Position> {
    (0..PARTITIONS).map(|p| Position::start(topic(), p)).collect()
}

fn full_replay(s: &Scenario) -> Projector<Chain> {
    let keys = MemoryKeyStore::default();
    let mut projector = Projector::<Chain>::new(start());
    for partition in &s.partitions {
        for r in partition {
            projector.feed(r, &keys).unwrap();
        }
    }
    projector
}

/// Runs the scenario's reader with snapshots and crashes. With `broken`,
/// a snapshot takes the state before a read and the positions after it: the
/// bug of writing state and positions separately.
fn with_crashes(s: &Scenario, broken: bool) -> Projector<Chain> {
    let keys = MemoryKeyStore::default();
    let mut projector = Projector::<Chain>::new(start());
    let mut cursors = vec![0u64; PARTITIONS as usize];
    let mut saved: Option<String> = None;
    let mut snapshot_pending = false;
    for step in &s.steps {
        match step {
            Step::Read(p) => {
                let before = projector.snapshot();
                if let Some(r) = s.partitions[*p as usize].get(cursors[*p as usize] as usize) {
                    projector.feed(r, &keys).unwrap();
                    cursors[*p as usize] += 1;
                }
                if snapshot_pending {
                    let mut snap = before;
                    snap.positions = projector.snapshot().positions;
                    saved = Some(serde_json::to_string(&snap).unwrap());
                    snapshot_pending = false;
                }
            }
            Step::Rewind(p, k) => cursors[*p as usize] = cursors[*p as usize].saturating_sub(*k),
            Step::Snapshot if broken => snapshot_pending = true,
            Step::Snapshot => saved = Some(serde_json::to_string(&projector.snapshot()).unwrap()),
            Step::Crash => {
                projector = match &saved {
                    Some(json) => Projector::restore(serde_json::from_str(json).unwrap()).unwrap(),
                    None => Projector::new(start()),
                };
                for p in projector.positions() {
                    cursors[p.partition as usize] = p.offset;
                }
                snapshot_pending = false;
            }
        }
    }
    // The tail: read everything that is left.
    for (p, partition) in s.partitions.iter().enumerate() {
        for r in &partition[cursors[p] as usize..] {
            projector.feed(r, &keys).unwrap();
        }
    }
    projector
}

fn check(s: Scenario, broken: bool) -> Result<(), TestCaseError> {
    let replayed = full_replay(&s);
    let resumed = with_crashes(&s, broken);
    prop_assert_eq!(resumed.state(), replayed.state());
    prop_assert_eq!(resumed.positions(), replayed.positions());
    Ok(())
}

#[test]
fn snapshot_plus_tail_equals_full_replay() {
    let mut runner = TestRunner::new(Config { cases: 512, ..Config::default() });
    runner.run(&scenario(), |s| check(s, false)).unwrap();
}

#[test]
fn the_property_catches_a_snapshot_that_is_not_atomic() {
    let mut runner = TestRunner::new(Config { cases: 512, ..Config::default() });
    match runner.run(&scenario(), |s| check(s, true)) {
        Err(TestError::Fail(_, minimal)) => {
            // The shrunk counterexample really loses an event.
            assert_ne!(with_crashes(&minimal, true).state(), full_replay(&minimal).state());
        }
        other => panic!("a non-atomic snapshot went unnoticed: {other:?}"),
    }
}

#[test]
fn unreadable_events_are_skipped_counted_and_not_applied_twice() {
    let keys = MemoryKeyStore::default();
    let mut projector = Projector::<Chain>::new(start());
    let good = event(Uuid::from_u128(1), 1, "ok");
    let mut unknown = event(Uuid::from_u128(2), 1, "x");
    unknown.payload_type = "meridian.events.v1.FromTheFuture".into();
    let record = |e: &Envelope, offset| Record {
        topic: topic(),
        partition: 0,
        offset,
        key: vec![],
        value: e.encode_to_vec(),
        headers: Default::default(),
    };
    let corrupt = Record { value: b"garbage".to_vec(), ..record(&good, 2) };
    assert_eq!(projector.feed(&record(&good, 0), &keys).unwrap(), Outcome::Applied);
    assert_eq!(projector.feed(&record(&unknown, 1), &keys).unwrap(), Outcome::Skipped);
    assert_eq!(projector.feed(&corrupt, &keys).unwrap(), Outcome::Skipped);
    assert_eq!(projector.feed(&record(&unknown, 3), &keys).unwrap(), Outcome::Duplicate);
    assert_eq!(projector.feed(&record(&good, 1), &keys).unwrap(), Outcome::BehindPosition);
    let stats = projector.stats();
    assert_eq!((stats.applied, stats.unreadable_payloads, stats.corrupt_envelopes, stats.duplicates), (1, 1, 1, 1));
    assert_eq!(projector.positions()[0].offset, 4);
}
