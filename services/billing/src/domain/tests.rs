//! The ledger fold: what each routing event bills.

use meridian_events::{EventId, UnixMicros};
use uuid::Uuid;

use super::ledger::{Cause, Input, Ledger, What, apply, apply_facts, decide, reprice};
use super::pricing::Read;
use super::pricing::tests::{ct, ny, pricebook};

fn cause(n: u128, version: u64, tenant: &str) -> Cause {
    Cause { event_id: EventId(Uuid::from_u128(n)), version, tenant: tenant.into(), occurred_at: ny(12) }
}

/// Folds `inputs` (each with its cause) and returns the ledger.
fn fold(mut ledger: Ledger, inputs: &[(Input, Cause)]) -> Ledger {
    for (input, cause) in inputs {
        let facts = decide(&ledger, input, cause);
        ledger = apply(ledger, input, facts);
    }
    ledger
}

fn given() -> Ledger {
    let ledger = Ledger { pricebook: pricebook(), ..Ledger::default() };
    fold(ledger, &[(Input::Reader { reader: "dr-ortiz".into(), group: "atlantic-rads".into() }, cause(1, 1, "acme"))])
}

fn signed(study: Uuid, read_type: &str, at: UnixMicros) -> Input {
    Input::Signed { study, reader: "dr-ortiz".into(), group: String::new(), read_type: read_type.into(), signed_at: at }
}

#[test]
fn a_signed_final_posts_one_charge_and_the_groups_payout_and_the_same_input_again_the_same_facts() {
    let study = Uuid::from_u128(7);
    let ledger = fold(given(), &[(Input::Queued { study, read: ct("final", "stat", ny(22)) }, cause(2, 1, "acme"))]);
    let input = signed(study, "final", ny(23));
    let facts = decide(&ledger, &input, &cause(3, 2, "acme"));
    assert_eq!(facts, decide(&ledger, &input, &cause(3, 2, "acme")), "deterministic: ids and versions from the cause");
    let [charge, payout] = &facts[..] else { panic!("{facts:?}") };
    let What::Charged(c) = &charge.what else { panic!() };
    // 45 base + 25 STAT + 15 after hours (22:00 in New York).
    assert_eq!((c.amount, c.currency.as_str(), c.period.as_str()), (8_500, "USD", "2026-11"));
    assert_eq!(charge.id, EventId::derived(EventId(Uuid::from_u128(3)), "meridian.events.v1.ChargePosted", 0));
    assert_eq!(charge.version, 16, "routing version 2 × 8 + the charge's slot");
    let What::Accrued(p) = &payout.what else { panic!() };
    // 0.85 wRVU × 32.50 = 27.625 → 27.63.
    assert_eq!((p.group.as_str(), p.amount), ("atlantic-rads", 2_763));
    assert_ne!(payout.version, charge.version);
    let ledger = apply(ledger, &input, facts);
    assert!(ledger.reads.is_empty(), "a signed read leaves the open work");
    assert_eq!(ledger.totals["acme/2026-11/USD"].charges, 8_500);
    assert_eq!(ledger.totals["group:atlantic-rads/2026-11/USD"].payouts, 2_763);
    assert_eq!(ledger.outbox.len(), 2);
}

#[test]
fn a_preliminary_is_charged_where_the_contract_bills_them_and_secondary_reads_are_not() {
    let study = Uuid::from_u128(8);
    let mut inputs = vec![
        (Input::Queued { study, read: ct("preliminary", "routine", ny(10)) }, cause(10, 1, "acme")),
        (signed(study, "preliminary", ny(11)), cause(11, 2, "acme")),
        (Input::Queued { study, read: ct("final", "routine", ny(10)) }, cause(12, 3, "acme")),
        (signed(study, "final", ny(13)), cause(13, 4, "acme")),
    ];
    let ledger = fold(given(), &inputs);
    let charges: Vec<i64> = ledger
        .outbox
        .iter()
        .filter_map(|f| if let What::Charged(c) = &f.what { Some(c.amount) } else { None })
        .collect();
    assert_eq!(charges, [3_000, 4_500]);
    let mut no_prelims = given();
    no_prelims.pricebook.contracts.get_mut("acme-atlantic").unwrap().bills_preliminary = false;
    let ledger = fold(no_prelims, &inputs);
    assert_eq!(ledger.outbox.iter().filter(|f| matches!(f.what, What::Charged(_))).count(), 1);
    inputs.truncate(0);
    let second = Uuid::from_u128(9);
    inputs.push((Input::Queued { study: second, read: ct("secondary", "routine", ny(10)) }, cause(20, 1, "acme")));
    inputs.push((signed(second, "secondary", ny(11)), cause(21, 2, "acme")));
    let ledger = fold(given(), &inputs);
    assert!(ledger.outbox.iter().all(|f| !matches!(f.what, What::Charged(_))), "{:?}", ledger.outbox);
}

#[test]
fn a_subscription_includes_its_first_studies_of_the_month_then_charges_overage() {
    let read = |n: u128| Read {
        tenant: "northwind".into(),
        facility: "northwind-dublin".into(),
        contract: "northwind-lotus".into(),
        modality: "CT".into(),
        read_type: "final".into(),
        priority: "routine".into(),
        subspecialty: None,
        rvu_milli: 0,
        completed_at: UnixMicros(n as i64),
    };
    let mut inputs = Vec::new();
    for n in 0..3u128 {
        let study = Uuid::from_u128(100 + n);
        inputs.push((Input::Queued { study, read: read(n) }, cause(200 + 2 * n, 1, "northwind")));
        inputs.push((signed(study, "final", ny(12)), cause(201 + 2 * n, 2, "northwind")));
    }
    let ledger = fold(given(), &inputs);
    let charges: Vec<(bool, i64)> = ledger
        .outbox
        .iter()
        .filter_map(|f| if let What::Charged(c) = &f.what { Some((c.included, c.amount)) } else { None })
        .collect();
    assert_eq!(charges, [(true, 0), (true, 0), (false, 950)]);
}

#[test]
fn an_unpriced_read_is_posted_as_such_and_priced_once_the_contract_names_its_price() {
    let mut start = given();
    start.pricebook.contracts.get_mut("acme-atlantic").unwrap().per_study.remove("default");
    let study = Uuid::from_u128(30);
    let mr = Read { modality: "MR".into(), ..ct("final", "routine", ny(10)) };
    let ledger = fold(
        start,
        &[
            (Input::Queued { study, read: mr }, cause(31, 1, "acme")),
            (signed(study, "final", ny(11)), cause(32, 2, "acme")),
        ],
    );
    let unpriced: Vec<_> = ledger.outbox.iter().filter(|f| matches!(f.what, What::Unpriced(_))).collect();
    let [unpriced] = &unpriced[..] else { panic!("{:?}", ledger.outbox) };
    let What::Unpriced(u) = &unpriced.what else { panic!() };
    assert_eq!(u.missing, "engagement.per_study.MR");
    assert_eq!(ledger.totals["acme/2026-11/USD"].unpriced, 1);
    assert!(reprice(&ledger).is_empty(), "still no price");

    let mut fixed = ledger.clone();
    fixed.pricebook.contracts.get_mut("acme-atlantic").unwrap().per_study.insert("MR".into(), 6_000);
    let priced = reprice(&fixed);
    assert_eq!(priced, reprice(&fixed), "repricing twice yields the same charge");
    let [charge] = &priced[..] else { panic!("{priced:?}") };
    assert_eq!(charge.id, EventId::derived(unpriced.id, "meridian.events.v1.ChargePosted", 0));
    assert_eq!(charge.version, 2 * 8 + 4);
    let fixed = apply_facts(fixed, priced);
    assert!(fixed.unpriced.is_empty());
    assert!(reprice(&fixed).is_empty());
    assert_eq!(fixed.totals["acme/2026-11/USD"].charges, 6_000);
}

#[test]
fn a_breach_credits_a_share_of_the_reads_price_or_a_fixed_amount() {
    let (stat, routine) = (Uuid::from_u128(40), Uuid::from_u128(41));
    let ledger = fold(
        given(),
        &[
            (Input::Queued { study: stat, read: ct("final", "stat", ny(10)) }, cause(42, 1, "acme")),
            (Input::Queued { study: routine, read: ct("final", "routine", ny(10)) }, cause(43, 1, "acme")),
        ],
    );
    let breach = |study, priority: &str| Input::Breached {
        study,
        priority: priority.into(),
        read_type: Some("final".into()),
        contract: "acme-atlantic".into(),
        deadline: ny(11),
    };
    let ledger = fold(
        ledger,
        &[(breach(stat, "stat"), cause(44, 2, "acme")), (breach(routine, "routine"), cause(45, 2, "acme"))],
    );
    let credits: Vec<i64> = ledger
        .outbox
        .iter()
        .filter_map(|f| if let What::Credited(c) = &f.what { Some(c.amount) } else { None })
        .collect();
    // 50% of (45 + 25 STAT) and a fixed 5.00.
    assert_eq!(credits, [-3_500, -500]);
    assert_eq!(ledger.totals["acme/2026-11/USD"].credits, -4_000);
    // Urgent has no credit rule: nothing.
    assert!(decide(&ledger, &breach(stat, "urgent"), &cause(46, 3, "acme")).is_empty());
}

#[test]
fn an_invoice_groups_lines_by_contract_field_caps_credits_and_names_its_events() {
    use super::invoice::preview;
    let mut start = given();
    start.pricebook.contracts.get_mut("acme-atlantic").unwrap().credit_cap = Some(100_000); // 10%
    let mut inputs = Vec::new();
    for n in 0..4u128 {
        let study = Uuid::from_u128(60 + n);
        let priority = if n == 0 { "stat" } else { "routine" };
        inputs.push((Input::Queued { study, read: ct("final", priority, ny(10)) }, cause(600 + 3 * n, 1, "acme")));
        if n < 2 {
            let breach = Input::Breached {
                study,
                priority: priority.into(),
                read_type: Some("final".into()),
                contract: "acme-atlantic".into(),
                deadline: ny(11),
            };
            inputs.push((breach, cause(601 + 3 * n, 2, "acme")));
        }
        inputs.push((signed(study, "final", ny(12)), cause(602 + 3 * n, 3, "acme")));
    }
    let ledger = fold(start, &inputs);
    let invoices = preview(&ledger, "acme", "2026-11");
    let [acme] = &invoices[..] else { panic!("{invoices:?}") };
    let line = |field: &str| acme.lines.iter().find(|l| l.line == field).unwrap_or_else(|| panic!("{field}: {acme:?}"));
    let base = line("engagement.per_study.CT");
    assert_eq!((base.quantity, base.unit, base.amount, base.events.len()), (4, 4_500, 18_000, 4));
    assert_eq!(line("engagement.priority_surcharge.stat").amount, 2_500);
    assert_eq!(acme.charges, 20_500);
    // Credits: 50% of the STAT read's 70.00 and 5.00 for the routine one;
    // capped at 10% of 205.00.
    assert_eq!(acme.credits_uncapped, -4_000);
    assert_eq!(acme.credits, -2_050);
    assert_eq!(line("engagement.sla_credit").events.len(), 2);
    assert_eq!(acme.total, acme.lines.iter().map(|l| l.amount).sum::<i64>());
    assert_eq!(acme.total, 20_500 - 2_050);
    assert!(acme.blocking.is_empty());
    assert!(acme.lines.iter().all(|l| l.line == "engagement.sla_credit" || l.amount == l.unit * l.quantity as i64));
}

#[test]
fn a_subscription_invoice_bills_its_fee_counts_included_reads_and_an_unpriced_read_blocks() {
    use super::invoice::preview;
    let mut start = given();
    start.pricebook.contracts.get_mut("northwind-lotus").unwrap().monthly_fee = 2_500_000;
    let read = |modality: &str| Read {
        tenant: "northwind".into(),
        facility: "northwind-dublin".into(),
        contract: "northwind-lotus".into(),
        modality: modality.into(),
        read_type: "final".into(),
        priority: "routine".into(),
        subspecialty: None,
        rvu_milli: 0,
        completed_at: ny(10),
    };
    let mut inputs = Vec::new();
    for n in 0..3u128 {
        let study = Uuid::from_u128(700 + n);
        inputs.push((Input::Queued { study, read: read("CT") }, cause(710 + 2 * n, 1, "northwind")));
        inputs.push((signed(study, "final", ny(12)), cause(711 + 2 * n, 2, "northwind")));
    }
    let ledger = fold(start, &inputs);
    let invoices = preview(&ledger, "northwind", "2026-11");
    let [nw] = &invoices[..] else { panic!("{invoices:?}") };
    let fields: Vec<(&str, u64, i64)> = nw.lines.iter().map(|l| (l.line.as_str(), l.quantity, l.amount)).collect();
    assert_eq!(
        fields,
        [
            ("engagement.monthly_fee", 1, 2_500_000),
            ("engagement.included_studies", 2, 0),
            ("engagement.per_study.default", 1, 950)
        ]
    );
    assert_eq!(nw.total, 2_500_950);

    let mut unpriced = ledger.clone();
    unpriced.pricebook.contracts.get_mut("northwind-lotus").unwrap().per_study.clear();
    let study = Uuid::from_u128(799);
    let unpriced = fold(
        unpriced,
        &[
            (Input::Queued { study, read: read("MR") }, cause(790, 1, "northwind")),
            (signed(study, "final", ny(12)), cause(791, 2, "northwind")),
        ],
    );
    let invoices = preview(&unpriced, "northwind", "2026-11");
    assert_eq!(invoices[0].blocking, ["engagement.per_study.MR"]);
}

#[test]
fn invoices_are_issued_once_a_period_ends_with_gapless_numbers_and_never_twice() {
    use super::invoice::{Issuance, IssueRefused, issue, period_end};
    let study = Uuid::from_u128(900);
    let ledger = fold(
        given(),
        &[
            (Input::Queued { study, read: ct("final", "routine", ny(10)) }, cause(901, 1, "acme")),
            (signed(study, "final", ny(12)), cause(902, 2, "acme")),
        ],
    );
    // November ends at midnight New York time (05:00 UTC).
    let ends = period_end("America/New_York", "2026-11").unwrap();
    assert_eq!(ends.to_string(), "2026-12-01T05:00:00Z");
    let before = ends.checked_sub(jiff::Span::new().seconds(1)).unwrap();
    let refused = issue(&Issuance::default(), &ledger, "US", "acme", "2026-11", before).unwrap_err();
    assert!(
        matches!(&refused, IssueRefused::Open { ends, .. } if ends.starts_with("2026-12-01T00:00:00-05:00")),
        "{refused}"
    );

    let (existing, new) = issue(&Issuance::default(), &ledger, "US", "acme", "2026-11", ends).unwrap();
    assert!(existing.is_empty());
    let [first] = &new[..] else { panic!("{new:?}") };
    assert_eq!((first.issued.number.as_str(), first.issued.total), ("US-000001", 4_500));
    // Issued: asking again returns it and issues nothing; the series goes on.
    let issuance = Issuance::default().apply(first.issued.clone());
    let (existing, new) = issue(&issuance, &ledger, "US", "acme", "2026-11", ends).unwrap();
    assert_eq!((existing.len(), new.len()), (1, 0));
    assert_eq!(issuance.last["US"], 1);
    assert!(issue(&issuance, &ledger, "US", "acme", "2026-13", ends).is_err());

    // A read no price covers blocks the invoice, naming the field.
    let mut blocked = given();
    blocked.pricebook.contracts.get_mut("acme-atlantic").unwrap().per_study.clear();
    let blocked = fold(
        blocked,
        &[
            (Input::Queued { study, read: ct("final", "routine", ny(10)) }, cause(903, 1, "acme")),
            (signed(study, "final", ny(12)), cause(904, 2, "acme")),
        ],
    );
    let refused = issue(&Issuance::default(), &blocked, "US", "acme", "2026-11", ends).unwrap_err();
    assert_eq!(
        refused,
        IssueRefused::Blocked { contract: "acme-atlantic".into(), fields: vec!["engagement.per_study.CT".into()] }
    );
}

#[test]
fn a_project_counts_its_reads_at_no_price_and_bills_its_fee_at_its_milestones() {
    use super::invoice::{Issuance, issue, preview};
    use super::pricing::{ContractPrices, MilestoneDue, Model};
    let mut start = given();
    start.pricebook.contracts.insert(
        "globex-backlog".into(),
        ContractPrices {
            tenant: "globex".into(),
            model: Model::ProjectBased,
            currency: "USD".into(),
            project_fee: 12_000_000,
            project_ends: Some("2027-01".into()),
            milestones: vec![
                MilestoneDue {
                    line: "engagement.milestones.started".into(),
                    period: "2026-12".into(),
                    amount: 3_600_000,
                },
                MilestoneDue {
                    line: "engagement.milestones.cleared".into(),
                    period: "2027-01".into(),
                    amount: 8_400_000,
                },
            ],
            billing_time_zone: "America/New_York".into(),
            ..Default::default()
        },
    );
    let read = Read { tenant: "globex".into(), contract: "globex-backlog".into(), ..ct("final", "routine", ny(10)) };
    let study = Uuid::from_u128(950);
    let ledger = fold(
        start,
        &[
            (Input::Queued { study, read }, cause(951, 1, "globex")),
            (signed(study, "final", ny(12)), cause(952, 2, "globex")),
        ],
    );
    let november = preview(&ledger, "globex", "2026-11");
    let fields: Vec<(&str, u64, i64)> =
        november[0].lines.iter().map(|l| (l.line.as_str(), l.quantity, l.amount)).collect();
    assert_eq!(fields, [("engagement.project_reads", 1, 0)]);
    let after = jiff::Timestamp::from_second(1_796_101_200).unwrap();
    let (_, none) = issue(&Issuance::default(), &ledger, "US", "globex", "2026-11", after).unwrap();
    assert!(none.is_empty(), "nothing billed in November: no invoice");
    let december = preview(&ledger, "globex", "2026-12");
    assert_eq!(december[0].lines[0].line, "engagement.milestones.started");
    assert_eq!(december[0].total, 3_600_000);
    let january = preview(&ledger, "globex", "2027-01");
    assert_eq!((january[0].lines[0].line.as_str(), january[0].total), ("engagement.milestones.cleared", 8_400_000));
}
