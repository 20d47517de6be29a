//! A tenant's invoice for a period, built from its ledger entries: one
//! invoice per contract (each in its contract's currency). Each line is a
//! quantity times a unit price, and names the events behind it; credits
//! are capped per invoice; a read no price covers blocks the invoice.

use std::collections::{BTreeMap, BTreeSet};

use meridian_events::EventId;
use serde::{Deserialize, Serialize};

use super::ledger::{Entry, Ledger, What};
use super::money;
use super::pricing::Model;

/// One line: `quantity` × `unit` = `amount` (minor units).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    /// The contract field that prices it, e.g. "engagement.per_study.CT".
    pub line: String,
    pub quantity: u64,
    pub unit: i64,
    pub amount: i64,
    /// The ChargePosted (or CreditPosted) events behind it.
    pub events: Vec<EventId>,
    /// The earlier period its entries belong to, when they came after that
    /// period's invoice; empty for the invoice's own period.
    pub period: String,
}

/// What an invoice would say now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    pub contract: String,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    /// The sum of the lines.
    pub charges: i64,
    /// SLA credits after the contract's cap (zero or negative).
    pub credits: i64,
    /// Credits before the cap.
    pub credits_uncapped: i64,
    pub total: i64,
    /// The configuration fields reads still need before this can be issued.
    pub blocking: Vec<String>,
    /// How its amounts were rounded ("half_up", "half_even", "down").
    pub rounding: &'static str,
}

/// `tenant`'s invoices for `period` ("2026-11"), one per contract: the
/// period's entries, and those of earlier periods that came after their
/// period's invoice was issued (carried to the contract's next invoice).
pub fn preview(ledger: &Ledger, tenant: &str, period: &str) -> Vec<Preview> {
    let entries = billable(ledger, tenant, period);
    let mut contracts: Vec<&str> =
        ledger.pricebook.contracts.iter().filter(|(_, c)| c.tenant == tenant).map(|(name, _)| name.as_str()).collect();
    for (_, e) in &entries {
        if let Some(contract) = e.contract()
            && !contracts.contains(&contract)
        {
            contracts.push(contract);
        }
    }
    contracts.into_iter().map(|contract| invoice(ledger, contract, period, &entries)).collect()
}

/// The entries an invoice of `tenant`'s `period` bills, each with the
/// period it belongs to: the period's own (not carried) and the carried
/// ones of earlier periods.
fn billable<'l>(ledger: &'l Ledger, tenant: &str, period: &str) -> Vec<(&'l str, &'l Entry)> {
    let (first, last) = (format!("{tenant}/"), format!("{tenant}/{period}"));
    let mut out = Vec::new();
    for (key, entries) in ledger.entries.range(first..=last) {
        let Some(of) = key.strip_prefix(tenant).and_then(|k| k.strip_prefix('/')) else { continue };
        // The period's closed contracts, looked up once (not per entry).
        let prefix = format!("{key}/");
        let closed: Vec<&str> = ledger
            .closed
            .range(prefix.clone()..)
            .take_while(|k| k.starts_with(&prefix))
            .map(|k| &k[prefix.len()..])
            .collect();
        let own = of == period;
        let carried = |e: &Entry| e.contract().is_some_and(|c| closed.contains(&c));
        out.extend(entries.iter().filter(|e| carried(e) != own).map(|e| (of, e)));
    }
    out
}

fn invoice(ledger: &Ledger, contract: &str, period: &str, entries: &[(&str, &Entry)]) -> Preview {
    let prices = ledger.pricebook.contracts.get(contract);
    let currency = prices.map_or(String::new(), |c| c.currency.clone());
    // (carried from, line field, unit) → (quantity, events)
    let mut grouped: BTreeMap<(String, String, i64), (u64, Vec<EventId>)> = BTreeMap::new();
    let (mut credits_uncapped, mut blocking) = (0i64, Vec::new());
    let mut credit_events = Vec::new();
    for (of, e) in entries {
        let from = if *of == period { String::new() } else { (*of).to_owned() };
        match &e.what {
            What::Charged(c) if c.read.contract == contract => {
                // Reads at no price are counted on a line of their own.
                let counted = if c.included {
                    Some("engagement.included_studies")
                } else if c.model == Model::ProjectBased {
                    Some("engagement.project_reads")
                } else {
                    None
                };
                if let Some(counted) = counted {
                    let slot = grouped.entry((from.clone(), counted.into(), 0)).or_default();
                    slot.0 += 1;
                    slot.1.push(e.id);
                }
                for l in &c.lines {
                    let slot = grouped.entry((from.clone(), l.line.clone(), l.amount)).or_default();
                    slot.0 += 1;
                    slot.1.push(e.id);
                }
            }
            What::Unpriced(u) if u.read.contract == contract && !blocking.contains(&u.missing) => {
                blocking.push(u.missing.clone());
            }
            What::Credited(c) if c.contract == contract => {
                credits_uncapped += c.amount;
                credit_events.push(e.id);
            }
            _ => {}
        }
    }
    let mut lines = Vec::new();
    if let Some(p) = prices
        && p.model == Model::Subscription
    {
        lines.push(InvoiceLine {
            line: "engagement.monthly_fee".into(),
            quantity: 1,
            unit: p.monthly_fee,
            amount: p.monthly_fee,
            events: Vec::new(),
            period: String::new(),
        });
    }
    // A project's fee is billed at its milestones (or whole when it ends).
    if let Some(p) = prices
        && p.model == Model::ProjectBased
    {
        for m in p.milestones.iter().filter(|m| m.period == period) {
            lines.push(InvoiceLine {
                line: m.line.clone(),
                quantity: 1,
                unit: m.amount,
                amount: m.amount,
                events: Vec::new(),
                period: String::new(),
            });
        }
    }
    // The period's own lines first, then those carried, oldest first.
    for ((period, line, unit), (quantity, events)) in grouped {
        let amount = unit.saturating_mul(i64::try_from(quantity).unwrap_or(i64::MAX));
        lines.push(InvoiceLine { line, quantity, unit, amount, events, period });
    }
    let charges: i64 = lines.iter().map(|l| l.amount).sum();
    let rounding = prices.map(|p| p.rounding).unwrap_or_default();
    let credits = match prices.and_then(|p| p.credit_cap) {
        Some(cap) => credits_uncapped.max(-money::share(charges, cap, rounding)),
        None => credits_uncapped,
    };
    if credits != 0 || !credit_events.is_empty() {
        lines.push(InvoiceLine {
            line: "engagement.sla_credit".into(),
            quantity: credit_events.len() as u64,
            unit: 0,
            amount: credits,
            events: credit_events,
            period: String::new(),
        });
    }
    Preview {
        contract: contract.to_owned(),
        currency,
        lines,
        charges,
        credits,
        credits_uncapped,
        total: charges + credits,
        blocking,
        rounding: rounding.as_str(),
    }
}

/// An issued invoice, as its series remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    pub number: String,
    pub series: String,
    pub sequence: u64,
    pub event_id: EventId,
    pub tenant: String,
    pub period: String,
    pub contract: String,
    pub currency: String,
    pub total: i64,
    /// Its lines, without their events (those are in the document).
    #[serde(default)]
    pub lines: Vec<InvoiceLine>,
    /// Where its InvoiceIssued is on the billing topic: the document, with
    /// every line's events, is read from there.
    #[serde(default)]
    pub partition: u32,
    #[serde(default)]
    pub offset: u64,
}

/// The region's issued invoices: each series' last number, and which
/// tenant, period and contract has which invoice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issuance {
    pub last: BTreeMap<String, u64>,
    /// `tenant/period/contract` → its invoice.
    pub issued: BTreeMap<String, Issued>,
    /// The credit notes, by their event's id.
    #[serde(default)]
    pub credit_notes: BTreeMap<EventId, super::credit_note::CreditNote>,
    /// The prices in force over the routing topic, change by change.
    #[serde(default)]
    pub prices: super::pricing::Schedule,
    /// PricesInForce events that could not be read (a newer billing's?).
    #[serde(default)]
    pub unreadable_prices: u64,
}

impl Issuance {
    pub fn apply_credit_note(mut self, note: super::credit_note::CreditNote) -> Issuance {
        let last = self.last.entry(note.series.clone()).or_default();
        *last = (*last).max(note.sequence);
        self.credit_notes.insert(note.event_id, note);
        self
    }

    /// An issued invoice by its number.
    pub fn by_number(&self, number: &str) -> Option<&Issued> {
        self.issued.values().find(|i| i.number == number)
    }

    pub fn apply(mut self, issued: Issued) -> Issuance {
        let last = self.last.entry(issued.series.clone()).or_default();
        *last = (*last).max(issued.sequence);
        self.issued.insert(format!("{}/{}/{}", issued.tenant, issued.period, issued.contract), issued);
        self
    }

    /// `tenant`'s invoices of `period`, by contract.
    pub fn of(&self, tenant: &str, period: &str) -> Vec<&Issued> {
        let prefix = format!("{tenant}/{period}/");
        self.issued.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(_, i)| i).collect()
    }
}

/// Why a period's invoices cannot be issued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueRefused {
    #[error("period {period} of contract {contract} is open until {ends}: an invoice is issued once it has ended")]
    Open { period: String, contract: String, ends: String },
    #[error("contract {contract}'s reads need {fields:?} before its invoice can be issued")]
    Blocked { contract: String, fields: Vec<String> },
    #[error("{period:?} is not a month, expected like \"2026-11\"")]
    Period { period: String },
}

/// The first instant after `period` ("2026-11") in `zone`.
pub fn period_end(zone: &str, period: &str) -> Option<jiff::Timestamp> {
    let (year, month) = period.split_once('-')?;
    let (year, month): (i16, i8) = (year.parse().ok()?, month.parse().ok()?);
    let first = jiff::civil::Date::new(year, month, 1).ok()?;
    let next = first.checked_add(jiff::Span::new().months(1)).ok()?;
    let tz = jiff::tz::TimeZone::get(zone).ok()?;
    next.to_zoned(tz).ok().map(|z| z.timestamp())
}

/// One invoice to issue: what it says and its number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToIssue {
    pub preview: Preview,
    pub issued: Issued,
}

/// Which of `tenant`'s invoices of `period` are issued already, and which
/// to issue now in `series` (numbers following its last, in contract
/// order). A contract with nothing billed gets none; an open period or a
/// blocked invoice refuses the whole request, naming why.
pub fn issue(
    issuance: &Issuance,
    ledger: &Ledger,
    series: &str,
    tenant: &str,
    period: &str,
    now: jiff::Timestamp,
) -> Result<(Vec<Issued>, Vec<ToIssue>), IssueRefused> {
    let mut existing = Vec::new();
    let mut new = Vec::new();
    let mut sequence = issuance.last.get(series).copied().unwrap_or(0);
    for preview in super::invoice::preview(ledger, tenant, period) {
        if let Some(done) = issuance.issued.get(&format!("{tenant}/{period}/{}", preview.contract)) {
            existing.push(done.clone());
            continue;
        }
        let zone = ledger.pricebook.contracts.get(&preview.contract).map_or("UTC", |c| c.billing_time_zone.as_str());
        let ends = period_end(zone, period).ok_or_else(|| IssueRefused::Period { period: period.to_owned() })?;
        if now < ends {
            let ends = ends.to_zoned(jiff::tz::TimeZone::get(zone).unwrap_or(jiff::tz::TimeZone::UTC)).to_string();
            return Err(IssueRefused::Open { period: period.to_owned(), contract: preview.contract.clone(), ends });
        }
        if !preview.blocking.is_empty() {
            return Err(IssueRefused::Blocked { contract: preview.contract.clone(), fields: preview.blocking.clone() });
        }
        // Nothing billed (no reads, or only reads at no price): no invoice.
        if preview.lines.iter().all(|l| l.amount == 0) {
            continue;
        }
        sequence += 1;
        let issued = Issued {
            number: format!("{series}-{sequence:06}"),
            series: series.to_owned(),
            sequence,
            event_id: EventId(meridian_events::id::aggregate_id(
                "billing.invoice",
                &[tenant.as_bytes(), period.as_bytes(), preview.contract.as_bytes()],
            )),
            tenant: tenant.to_owned(),
            period: period.to_owned(),
            contract: preview.contract.clone(),
            currency: preview.currency.clone(),
            total: preview.total,
            lines: preview.lines.iter().map(|l| InvoiceLine { events: Vec::new(), ..l.clone() }).collect(),
            // Where the log puts it, once appended.
            partition: 0,
            offset: 0,
        };
        new.push(ToIssue { preview, issued });
    }
    Ok((existing, new))
}

/// Closes `tenant`'s `period` of `contract` in the ledger once its invoice
/// is issued: the entries it `invoiced` leave the ledger (an issued invoice
/// is immutable and in the log, so the ledger keeps only what is still to
/// be invoiced), and what comes for the period after this is carried to
/// the contract's next invoice. Exactly by event id, so an entry that came
/// after the invoice stays whenever the ledger learns of the invoice.
pub fn close(ledger: &mut Ledger, tenant: &str, period: &str, contract: &str, invoiced: &BTreeSet<EventId>) {
    let (first, last) = (format!("{tenant}/"), format!("{tenant}/{period}"));
    let keys: Vec<String> = ledger.entries.range(first..=last).map(|(k, _)| k.clone()).collect();
    for key in keys {
        if let Some(entries) = ledger.entries.get_mut(&key) {
            entries.retain(|e| !invoiced.contains(&e.id));
            if entries.is_empty() {
                ledger.entries.remove(&key);
            }
        }
    }
    ledger.closed.insert(format!("{tenant}/{period}/{contract}"));
}

/// The events an invoice's lines name.
pub fn invoiced(lines: &[InvoiceLine]) -> BTreeSet<EventId> {
    lines.iter().flat_map(|l| l.events.iter().copied()).collect()
}

/// The issued invoices the ledger has not closed (issued after its
/// snapshot, or all of them when it was folded from the start): the
/// caller reads each one's document and [`close`]s it.
pub fn unclosed<'i>(ledger: &Ledger, issuance: &'i Issuance) -> Vec<&'i Issued> {
    issuance.issued.iter().filter(|(k, _)| !ledger.closed.contains(*k)).map(|(_, i)| i).collect()
}
