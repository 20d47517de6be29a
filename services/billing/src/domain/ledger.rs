//! The ledger fold: routing's facts in, billing's facts out.
//!
//! `decide` says what one routing event bills (a charge or an unpriced
//! read, a payout, a credit); `apply` folds the event and those facts into
//! the state, and puts the facts in the outbox for the log. Both are pure:
//! every id and time comes from the cause. A fact's id derives from its
//! cause's id, so the same input always yields the same facts, and its
//! aggregate version from the cause's (see [`Fact::version`]), so a
//! de-duplicating reader tells a copy from a conflict.

use std::collections::BTreeMap;

use meridian_events::{EventId, UnixMicros};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::money;
use super::pricing::{CreditRule, Line, Model, Pricebook, Read};

/// A routing event billing reads, as the domain sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// StudyQueued: the read that will be signed next.
    Queued { study: Uuid, read: Read },
    /// AssignmentCompleted: the read was signed by `reader` of `group`
    /// (empty in events from before routing recorded it).
    Signed { study: Uuid, reader: String, group: String, read_type: String, signed_at: UnixMicros },
    /// SlaBreached: routing judged the read late.
    Breached { study: Uuid, priority: String, read_type: Option<String>, contract: String, deadline: UnixMicros },
    /// ReaderRegistered: which group a reader reads for.
    Reader { reader: String, group: String },
}

/// Where an input came from: its event, for the ids and versions of what
/// it causes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    pub event_id: EventId,
    /// The routing aggregate's version of the cause (routing.study).
    pub version: u64,
    pub tenant: String,
    pub occurred_at: UnixMicros,
}

/// A signed read's charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub read: Read,
    pub reader: String,
    pub lines: Vec<Line>,
    pub currency: String,
    pub amount: i64,
    pub model: Model,
    pub included: bool,
    pub period: String,
    pub signed_at: UnixMicros,
}

/// A signed read the contract cannot price yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unpriced {
    pub read: Read,
    pub reader: String,
    pub missing: String,
    pub period: String,
    pub signed_at: UnixMicros,
}

/// An SLA credit (negative amount).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    pub contract: String,
    pub read_type: String,
    pub priority: String,
    pub line: String,
    pub currency: String,
    pub amount: i64,
    pub period: String,
    pub breached_at: UnixMicros,
}

/// What a group earns for a signed read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payout {
    pub reader: String,
    pub group: String,
    pub rvu_milli: u32,
    pub currency: String,
    pub amount: i64,
    pub period: String,
    pub signed_at: UnixMicros,
}

/// What billing records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum What {
    Charged(Charge),
    Unpriced(Unpriced),
    Credited(Credit),
    Accrued(Payout),
}

/// One fact for the log, with what its envelope needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fact {
    pub id: EventId,
    pub study: Uuid,
    pub tenant: String,
    /// billing.study's version: the cause's routing.study version × 8 plus
    /// the fact's slot, so the versions of one study rise with routing's and
    /// two facts never share one.
    pub version: u64,
    pub cause: EventId,
    pub occurred_at: UnixMicros,
    pub what: What,
}

/// The slot of each kind of fact in its cause's block of versions.
const CHARGE: u64 = 0;
const UNPRICED: u64 = 1;
const PAYOUT: u64 = 2;
const CREDIT: u64 = 3;
/// A charge priced later for an unpriced read.
const REPRICED: u64 = 4;

impl Fact {
    pub fn payload_type(&self) -> &'static str {
        match self.what {
            What::Charged(_) => "meridian.events.v1.ChargePosted",
            What::Unpriced(_) => "meridian.events.v1.ChargeUnpriced",
            What::Credited(_) => "meridian.events.v1.CreditPosted",
            What::Accrued(_) => "meridian.events.v1.PayoutAccrued",
        }
    }
}

/// Running totals of one tenant's (or group's) period in one currency.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub charges: i64,
    pub charged_reads: u64,
    pub credits: i64,
    pub unpriced: u64,
    pub payouts: i64,
    /// Signed reads paid for.
    #[serde(default)]
    pub paid_reads: u64,
}

/// Billing's state: the reads waiting to be signed (open work only), who
/// reads for which group, counts per contract and period, totals, the
/// reads waiting for a price, and the facts not yet in the log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub pricebook: Pricebook,
    pub reads: BTreeMap<Uuid, Read>,
    pub readers: BTreeMap<String, String>,
    /// `contract/period` → reads charged (a subscription's included ones first).
    pub charged: BTreeMap<String, u32>,
    /// `tenant/period/currency` and `group:G/period/currency` → totals.
    pub totals: BTreeMap<String, Totals>,
    /// The unpriced reads by their ChargeUnpriced's id.
    pub unpriced: BTreeMap<EventId, Fact>,
    /// Facts decided and not yet appended.
    pub outbox: Vec<Fact>,
    /// Routing events billing could not read, by payload and field (never
    /// a reason to stop: routing wrote them, and a newer routing may write
    /// more).
    /// `payload.field` → (how many, the last reason and event).
    pub unreadable: BTreeMap<String, (u64, String)>,
    /// `tenant/period` → its charges, credits and unpriced reads, for the
    /// ledger view and the invoice: periods not invoiced yet, and the
    /// entries that came after their period's invoice (carried to the
    /// contract's next one).
    pub entries: BTreeMap<String, Vec<Entry>>,
    /// `tenant/period/contract` of the invoices issued: an entry of one of
    /// these came late and goes on the contract's next invoice. Grows by
    /// one key per contract and month.
    #[serde(default)]
    pub closed: std::collections::BTreeSet<String>,
}

impl Ledger {
    /// Whether `entry` of `tenant/period` came after its period's invoice.
    pub fn carried(&self, tenant: &str, period: &str, entry: &Entry) -> bool {
        entry.contract().is_some_and(|c| self.closed.contains(&format!("{tenant}/{period}/{c}")))
    }
}

/// One fact of a tenant's period, as its ledger and invoice show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub id: EventId,
    pub study: Uuid,
    pub what: What,
    /// The event that caused it (AssignmentCompleted, SlaBreached, or the
    /// ChargeUnpriced a charge prices), for explaining it.
    #[serde(default = "no_cause")]
    pub cause: EventId,
}

fn no_cause() -> EventId {
    EventId(Uuid::nil())
}

impl Entry {
    /// The contract it is billed under (none for a payout).
    pub fn contract(&self) -> Option<&str> {
        match &self.what {
            What::Charged(c) => Some(&c.read.contract),
            What::Unpriced(u) => Some(&u.read.contract),
            What::Credited(c) => Some(&c.contract),
            What::Accrued(_) => None,
        }
    }
}

fn fact(cause: &Cause, study: Uuid, slot: u64, what: What) -> Fact {
    let mut f = Fact {
        id: EventId(Uuid::nil()),
        study,
        tenant: cause.tenant.clone(),
        version: cause.version * 8 + slot,
        cause: cause.event_id,
        occurred_at: cause.occurred_at,
        what,
    };
    f.id = EventId::derived(cause.event_id, f.payload_type(), 0);
    f
}

/// Whether a signed read of `read_type` is charged under `model`.
fn billable(read_type: &str, bills_preliminary: bool) -> bool {
    read_type == "final" || (read_type == "preliminary" && bills_preliminary)
}

/// What `input` bills, against `ledger` before it.
pub fn decide(ledger: &Ledger, input: &Input, cause: &Cause) -> Vec<Fact> {
    let book = &ledger.pricebook;
    match input {
        Input::Queued { .. } | Input::Reader { .. } => Vec::new(),
        Input::Signed { study, reader, group, read_type, signed_at } => {
            let Some(read) = ledger.reads.get(study) else { return Vec::new() };
            let read = Read { read_type: read_type.clone(), ..read.clone() };
            let period = book.period(&read.contract, *signed_at);
            let mut facts = Vec::new();
            let contract = book.contracts.get(&read.contract);
            if contract.is_none_or(|c| billable(read_type, c.bills_preliminary)) {
                facts.push(charge(ledger, cause, *study, read.clone(), reader, period.clone(), *signed_at, CHARGE));
            }
            // The group named by the event; for older events, the one the
            // reader registered with (another partition: it may come later).
            let group = if group.is_empty() { ledger.readers.get(reader) } else { Some(group) };
            if let Some(group) = group
                && read.rvu_milli > 0
                && let Some((currency, amount)) = book.payout(group, read.rvu_milli)
            {
                let payout = Payout {
                    reader: reader.clone(),
                    group: group.clone(),
                    rvu_milli: read.rvu_milli,
                    currency,
                    amount,
                    period,
                    signed_at: *signed_at,
                };
                facts.push(fact(cause, *study, PAYOUT, What::Accrued(payout)));
            }
            facts
        }
        Input::Breached { study, priority, read_type, contract, deadline } => {
            let read = ledger.reads.get(study);
            let contract = if contract.is_empty() { read.map_or("", |r| r.contract.as_str()) } else { contract };
            let Some(prices) = book.contracts.get(contract) else { return Vec::new() };
            let Some(rule) = prices.sla_credit.get(priority) else { return Vec::new() };
            let read_type = read_type.clone().or_else(|| read.map(|r| r.read_type.clone())).unwrap_or_default();
            let amount = match rule {
                CreditRule::Fixed(a) => *a,
                // A share of what the read costs (by the order's priority).
                CreditRule::Share(per_million) => {
                    let Some(read) = read else { return Vec::new() };
                    let priced = Read { read_type: read_type.clone(), ..read.clone() };
                    let Ok(lines) = book.price(&priced) else { return Vec::new() };
                    money::share(lines.iter().map(|l| l.amount).sum(), *per_million, prices.rounding)
                }
            };
            let credit = Credit {
                contract: contract.to_owned(),
                read_type,
                priority: priority.clone(),
                line: format!("engagement.sla_credit.{priority}"),
                currency: prices.currency.clone(),
                amount: -amount,
                period: book.period(contract, *deadline),
                breached_at: *deadline,
            };
            vec![fact(cause, *study, CREDIT, What::Credited(credit))]
        }
    }
}

/// The charge for a signed read, or why it cannot be priced.
#[allow(clippy::too_many_arguments)]
fn charge(
    ledger: &Ledger,
    cause: &Cause,
    study: Uuid,
    read: Read,
    reader: &str,
    period: String,
    signed_at: UnixMicros,
    slot: u64,
) -> Fact {
    let book = &ledger.pricebook;
    let unpriced = |missing: String| Unpriced {
        read: read.clone(),
        reader: reader.to_owned(),
        missing,
        period: period.clone(),
        signed_at,
    };
    let Some(contract) = book.contracts.get(&read.contract) else {
        return fact(cause, study, UNPRICED, What::Unpriced(unpriced(format!("contracts/{}.toml", read.contract))));
    };
    let charged = ledger.charged.get(&format!("{}/{period}", read.contract)).copied().unwrap_or(0);
    let (lines, included) = match contract.model {
        // A project is billed at its milestones: its reads count, at no price.
        Model::ProjectBased => (Vec::new(), false),
        Model::Subscription if charged < contract.included_studies => (Vec::new(), true),
        Model::Subscription | Model::Transaction => match book.price(&read) {
            Ok(lines) => (lines, false),
            Err(missing) => return fact(cause, study, UNPRICED, What::Unpriced(unpriced(missing.0))),
        },
    };
    let amount = lines.iter().map(|l| l.amount).sum();
    let charge = Charge {
        read,
        reader: reader.to_owned(),
        lines,
        currency: contract.currency.clone(),
        amount,
        model: contract.model,
        included,
        period,
        signed_at,
    };
    fact(cause, study, slot, What::Charged(charge))
}

/// Folds `input` and the facts decided for it.
pub fn apply(mut ledger: Ledger, input: &Input, facts: Vec<Fact>) -> Ledger {
    match input {
        Input::Queued { study, read } => {
            ledger.reads.insert(*study, read.clone());
        }
        // The next read of the study, if any, comes with its own StudyQueued.
        Input::Signed { study, .. } => {
            ledger.reads.remove(study);
        }
        Input::Reader { reader, group } => {
            ledger.readers.insert(reader.clone(), group.clone());
        }
        Input::Breached { .. } => {}
    }
    for f in facts {
        ledger = record(ledger, &f);
        ledger.outbox.push(f);
    }
    ledger
}

fn entry(f: &Fact) -> Entry {
    Entry { id: f.id, study: f.study, what: f.what.clone(), cause: f.cause }
}

/// Folds one fact into the counts and totals.
fn record(mut ledger: Ledger, f: &Fact) -> Ledger {
    let key = |owner: &str, period: &str, currency: &str| format!("{owner}/{period}/{currency}");
    match &f.what {
        What::Charged(c) => {
            *ledger.charged.entry(format!("{}/{}", c.read.contract, c.period)).or_default() += 1;
            let t = ledger.totals.entry(key(&f.tenant, &c.period, &c.currency)).or_default();
            t.charges += c.amount;
            t.charged_reads += 1;
            // A repriced read leaves the waiting list, and its period's.
            if let Some(unpriced) = ledger.unpriced.remove(&f.cause)
                && let What::Unpriced(u) = &unpriced.what
            {
                let currency = ledger.pricebook.contracts.get(&u.read.contract).map_or("", |c| c.currency.as_str());
                if let Some(t) = ledger.totals.get_mut(&key(&f.tenant, &u.period, currency)) {
                    t.unpriced = t.unpriced.saturating_sub(1);
                }
                if let Some(entries) = ledger.entries.get_mut(&format!("{}/{}", f.tenant, u.period)) {
                    entries.retain(|e| e.id != f.cause);
                }
            }
            ledger.entries.entry(format!("{}/{}", f.tenant, c.period)).or_default().push(entry(f));
        }
        What::Unpriced(u) => {
            let currency = ledger.pricebook.contracts.get(&u.read.contract).map_or("", |c| c.currency.as_str());
            ledger.totals.entry(key(&f.tenant, &u.period, currency)).or_default().unpriced += 1;
            ledger.unpriced.insert(f.id, f.clone());
            ledger.entries.entry(format!("{}/{}", f.tenant, u.period)).or_default().push(entry(f));
        }
        What::Credited(c) => {
            ledger.totals.entry(key(&f.tenant, &c.period, &c.currency)).or_default().credits += c.amount;
            ledger.entries.entry(format!("{}/{}", f.tenant, c.period)).or_default().push(entry(f));
        }
        What::Accrued(p) => {
            let t = ledger.totals.entry(key(&format!("group:{}", p.group), &p.period, &p.currency)).or_default();
            t.payouts += p.amount;
            t.paid_reads += 1;
        }
    }
    ledger
}

/// Charges for the unpriced reads the pricebook can price now, each derived
/// from its ChargeUnpriced (so doing it twice yields the same charge).
pub fn reprice(ledger: &Ledger) -> Vec<Fact> {
    let mut facts = Vec::new();
    for unpriced in ledger.unpriced.values() {
        let What::Unpriced(u) = &unpriced.what else { continue };
        let cause = Cause {
            event_id: unpriced.id,
            // Within the unpriced read's own block of versions.
            version: unpriced.version / 8,
            tenant: unpriced.tenant.clone(),
            occurred_at: unpriced.occurred_at,
        };
        let priced =
            charge(ledger, &cause, unpriced.study, u.read.clone(), &u.reader, u.period.clone(), u.signed_at, REPRICED);
        if matches!(priced.what, What::Charged(_)) {
            facts.push(priced);
        }
    }
    facts
}

/// Folds facts decided without an input (repricing).
pub fn apply_facts(mut ledger: Ledger, facts: Vec<Fact>) -> Ledger {
    for f in facts {
        ledger = record(ledger, &f);
        ledger.outbox.push(f);
    }
    ledger
}
