//! The ledger as a projection: a snapshot plus the tail equals a full
//! replay, redelivered records change nothing, and the totals equal the
//! sum of the facts decided — whatever the snapshot point and the
//! redeliveries.
//!
//! Random sequences of routing events (studies queued, preliminaries and
//! finals signed, breaches) over several studies and partitions are
//! written as records, in per-study order, then read back: whole, cut at a
//! random snapshot (through JSON) with the tail after it, and with random
//! records delivered twice.

use std::collections::BTreeMap;

use meridian_events::payload::Payload;
use meridian_events::seal::MemoryKeyStore;
use meridian_events::{DataClass, UnixMicros};
use meridian_log::partitioner::partition_for;
use meridian_log::{Outgoing, Record, TopicName};
use meridian_projection::{Projector, Snapshot};
use meridian_proto::events::v1 as pb;
use proptest::prelude::*;
use uuid::Uuid;

use crate::app::LedgerProjection;
use crate::domain::ledger::{Ledger, What};
use crate::domain::pricing::tests::{ny, pricebook};

const PARTITIONS: u32 = 3;

fn topic() -> TopicName {
    TopicName::new("us-east", DataClass::Operational, "routing").unwrap()
}

/// One study's routing events: queued for a preliminary, maybe breached,
/// maybe signed, then maybe a final queued and signed.
#[derive(Clone, Debug)]
struct StudyPlan {
    priority: &'static str,
    modality: &'static str,
    breached: bool,
    prelim_signed: bool,
    final_signed: bool,
    hour: i64,
}

fn plans() -> impl Strategy<Value = Vec<StudyPlan>> {
    let plan = (
        prop::sample::select(vec!["stat", "urgent", "routine"]),
        prop::sample::select(vec!["CT", "MR", "CR"]),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0i64..48,
    )
        .prop_map(|(priority, modality, breached, prelim_signed, final_signed, hour)| StudyPlan {
            priority,
            modality,
            breached,
            prelim_signed,
            final_signed,
            hour,
        });
    prop::collection::vec(plan, 1..12)
}

fn event(study: Uuid, version: u64, payload: Payload) -> Record {
    let envelope = crate::app::tests::routing_event_at(study, version, payload, ny(0));
    let out = Outgoing::new(topic(), &envelope).unwrap();
    Record {
        topic: topic(),
        partition: partition_for(&out.key, PARTITIONS),
        offset: 0,
        key: out.key,
        value: out.value,
        headers: out.headers,
    }
}

/// Each study's events in order, the studies interleaved round-robin, and
/// offsets numbered per partition.
fn records(plans: &[StudyPlan]) -> Vec<Record> {
    let mut per_study: Vec<Vec<Record>> = Vec::new();
    for (n, p) in plans.iter().enumerate() {
        let study = Uuid::from_u128(1_000 + n as u128);
        let completed = ny(p.hour);
        let queued = |read_type: &str, version| {
            event(
                study,
                version,
                Payload::StudyQueued(pb::StudyQueued {
                    study_id: study.to_string(),
                    tenant: "acme".into(),
                    priority: p.priority.into(),
                    requested_priority: p.priority.into(),
                    read_type: read_type.into(),
                    facility: "acme-general".into(),
                    contract: "acme-atlantic".into(),
                    modality: p.modality.into(),
                    rvu_milli: 850,
                    completed_at: Some(completed.to_timestamp()),
                    ..Default::default()
                }),
            )
        };
        let signed = |read_type: &str, version| {
            event(
                study,
                version,
                Payload::AssignmentCompleted(pb::AssignmentCompleted {
                    study_id: study.to_string(),
                    reader_id: "dr-ortiz".into(),
                    read_type: read_type.into(),
                    signed_at: Some(UnixMicros(completed.0 + 3_600_000_000).to_timestamp()),
                    reading_group: "atlantic-rads".into(),
                }),
            )
        };
        let mut events = vec![queued("preliminary", 1)];
        if p.breached {
            events.push(event(
                study,
                2,
                Payload::SlaBreached(pb::SlaBreached {
                    study_id: study.to_string(),
                    priority: p.priority.into(),
                    deadline: Some(UnixMicros(completed.0 + 1_800_000_000).to_timestamp()),
                    read_type: "preliminary".into(),
                    contract: "acme-atlantic".into(),
                }),
            ));
        }
        if p.prelim_signed {
            events.push(signed("preliminary", 3));
            events.push(queued("final", 4));
            if p.final_signed {
                events.push(signed("final", 5));
            }
        }
        per_study.push(events);
    }
    let mut out = Vec::new();
    let longest = per_study.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..longest {
        for events in &per_study {
            if let Some(e) = events.get(i) {
                out.push(e.clone());
            }
        }
    }
    let mut next: BTreeMap<u32, u64> = BTreeMap::new();
    for r in &mut out {
        let offset = next.entry(r.partition).or_default();
        r.offset = *offset;
        *offset += 1;
    }
    out
}

fn start() -> Projector<LedgerProjection> {
    let mut p: Projector<LedgerProjection> =
        Projector::new((0..PARTITIONS).map(|n| meridian_log::Position::start(topic(), n)).collect());
    p.state_mut().pricebook = pricebook();
    p
}

fn fold(mut p: Projector<LedgerProjection>, records: &[Record]) -> Projector<LedgerProjection> {
    let keys = MemoryKeyStore::default();
    for r in records {
        p.feed(r, &keys).unwrap();
    }
    p
}

/// The ledger without its outbox (what a snapshot holds between steps).
fn settled(mut l: Ledger) -> Ledger {
    l.outbox.clear();
    l
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn snapshot_plus_tail_equals_full_replay_and_the_facts_are_the_same(
        plans in plans(),
        cut in 0usize..64,
    ) {
        let records = records(&plans);
        let cut = cut % (records.len() + 1);
        let full = fold(start(), &records);

        let head = fold(start(), &records[..cut]);
        let mut head_facts = head.state().outbox.clone();
        let snapshot: Snapshot<LedgerProjection> =
            serde_json::from_slice(&serde_json::to_vec(&head.snapshot()).unwrap()).unwrap();
        let mut resumed = Projector::restore(snapshot).unwrap();
        resumed.state_mut().outbox.clear();
        let resumed = fold(resumed, &records[cut..]);
        head_facts.extend(resumed.state().outbox.clone());

        prop_assert_eq!(&head_facts, &full.state().outbox, "the same facts, in the same order");
        prop_assert_eq!(settled(resumed.state().clone()), settled(full.state().clone()));
        prop_assert_eq!(resumed.positions(), full.positions());
    }

    #[test]
    fn redelivered_records_change_nothing_and_totals_are_the_sum_of_the_facts(
        plans in plans(),
        again in prop::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let records = records(&plans);
        let full = fold(start(), &records);
        // Deliver records again after the whole (a rewound reader).
        let repeated: Vec<Record> = again.iter().map(|i| records[i.index(records.len())].clone()).collect();
        let twice = fold(fold(start(), &records), &repeated);
        prop_assert_eq!(twice.state(), full.state());
        prop_assert_eq!(twice.stats().conflicts, 0);

        let ledger = full.state();
        let mut sums: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
        for f in &ledger.outbox {
            match &f.what {
                What::Charged(c) => sums.entry(format!("acme/{}/{}", c.period, c.currency)).or_default().0 += c.amount,
                What::Credited(c) => sums.entry(format!("acme/{}/{}", c.period, c.currency)).or_default().1 += c.amount,
                What::Accrued(p) => {
                    sums.entry(format!("group:{}/{}/{}", p.group, p.period, p.currency)).or_default().2 += p.amount;
                }
                What::Unpriced(_) => {}
            }
        }
        for (key, (charges, credits, payouts)) in sums {
            let t = &ledger.totals[&key];
            prop_assert_eq!((t.charges, t.credits, t.payouts), (charges, credits, payouts), "{}", key);
        }
        // Every invoice's total is the sum of its lines, each line a
        // quantity times a unit price (the capped credit aside).
        for period in ["2026-11", "2026-12"] {
            for invoice in crate::domain::invoice::preview(ledger, "acme", period) {
                prop_assert_eq!(invoice.total, invoice.lines.iter().map(|l| l.amount).sum::<i64>());
                prop_assert!(invoice.credits <= 0 && invoice.credits >= invoice.credits_uncapped);
                for l in invoice.lines.iter().filter(|l| l.line != "engagement.sla_credit") {
                    prop_assert_eq!(l.amount, l.unit * l.quantity as i64);
                }
            }
        }
        // One charge per billed read: every signed preliminary (the
        // contract bills them) and every signed final.
        let billed = plans.iter().map(|p| usize::from(p.prelim_signed) * (1 + usize::from(p.final_signed))).sum::<usize>();
        let charged = ledger.outbox.iter().filter(|f| matches!(f.what, What::Charged(_) | What::Unpriced(_))).count();
        prop_assert_eq!(charged, billed);
    }
}
