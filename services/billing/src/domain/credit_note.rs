//! Credit notes: the correction of an issued invoice. The invoice stays as
//! it was issued; a credit note names it and credits a quantity of some of
//! its lines at their unit price, in a gapless series of its own. What is
//! left to credit on a line is its quantity less what earlier credit notes
//! took, so an invoice is never credited past what it charged.

use std::collections::BTreeMap;

use meridian_events::{EventId, UnixMicros};
use serde::{Deserialize, Serialize};

use super::invoice::{Issuance, Issued};

/// One credited line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditedLine {
    /// The invoice line, counted from 1.
    pub invoice_line: u32,
    pub line: String,
    pub period: String,
    pub quantity: u64,
    pub unit: i64,
    /// Negative: `-(quantity × unit)`.
    pub amount: i64,
}

/// An issued credit note, as its series remembers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditNote {
    pub number: String,
    pub series: String,
    pub sequence: u64,
    pub event_id: EventId,
    pub tenant: String,
    /// The invoice it corrects.
    pub invoice: String,
    pub invoice_event_id: EventId,
    pub contract: String,
    pub period: String,
    pub currency: String,
    pub lines: Vec<CreditedLine>,
    pub total: i64,
    pub reason: String,
    /// The request's key, so a retry is told from a new request.
    pub key: String,
    pub issued_at: UnixMicros,
}

/// What a request asks to credit: (invoice line from 1, quantity; 0 for
/// all that is left).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ask {
    pub invoice: String,
    pub lines: Vec<(u32, u64)>,
    pub reason: String,
    pub key: String,
}

/// Why a credit note cannot be issued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CreditRefused {
    #[error("no invoice {number} was issued in this region")]
    UnknownInvoice { number: String },
    #[error("name at least one invoice line to credit")]
    NoLines,
    #[error("give the reason for the credit note: it is printed on it")]
    NoReason,
    #[error("give an idempotency key: the same key again returns the same credit note")]
    NoKey,
    #[error("invoice {number} has lines 1 to {count}, not {asked}")]
    NoSuchLine { number: String, count: usize, asked: u32 },
    #[error("line {index} ({line}) of invoice {number} charged nothing to credit")]
    NotACharge { number: String, index: u32, line: String },
    #[error("line {index} ({line}) of invoice {number} has {left} left to credit, not {asked}")]
    Exceeds { number: String, index: u32, line: String, left: u64, asked: u64 },
    #[error("line {index} ({line}) of invoice {number} is credited in full already")]
    FullyCredited { number: String, index: u32, line: String },
    #[error("idempotency key {key:?} was used for another credit note ({number})")]
    KeyReused { key: String, number: String },
}

/// The credit notes issued against `invoice`, oldest first.
pub fn against<'i>(issuance: &'i Issuance, invoice: &str) -> Vec<&'i CreditNote> {
    let mut notes: Vec<&CreditNote> = issuance.credit_notes.values().filter(|n| n.invoice == invoice).collect();
    notes.sort_by_key(|n| n.sequence);
    notes
}

/// The quantity of each line of `invoice` credited so far.
fn credited(issuance: &Issuance, invoice: &str) -> BTreeMap<u32, u64> {
    let mut taken = BTreeMap::new();
    for note in against(issuance, invoice) {
        for l in &note.lines {
            *taken.entry(l.invoice_line).or_default() += l.quantity;
        }
    }
    taken
}

/// The credit note `ask` makes, numbered next in `series`; or the one its
/// key made already (`Ok((note, false))`).
pub fn credit(
    issuance: &Issuance,
    series: &str,
    ask: &Ask,
    now: UnixMicros,
) -> Result<(CreditNote, bool), CreditRefused> {
    if ask.key.is_empty() {
        return Err(CreditRefused::NoKey);
    }
    let event_id = EventId(meridian_events::id::aggregate_id(
        "billing.credit_note",
        &[ask.invoice.as_bytes(), ask.key.as_bytes()],
    ));
    let refused_key =
        |note: &CreditNote| CreditRefused::KeyReused { key: ask.key.clone(), number: note.number.clone() };
    let invoice = issuance
        .by_number(&ask.invoice)
        .ok_or_else(|| CreditRefused::UnknownInvoice { number: ask.invoice.clone() })?;
    if ask.reason.trim().is_empty() {
        return Err(CreditRefused::NoReason);
    }
    if ask.lines.is_empty() {
        return Err(CreditRefused::NoLines);
    }
    if let Some(done) = issuance.credit_notes.get(&event_id) {
        // The same request again: the same answer. Anything else under the
        // key is a mistake the caller must hear of.
        let same = done.reason == ask.reason
            && done.lines.len() == ask.lines.len()
            && done
                .lines
                .iter()
                .zip(&ask.lines)
                .all(|(l, (index, q))| l.invoice_line == *index && (*q == 0 || l.quantity == *q));
        return if same { Ok((done.clone(), false)) } else { Err(refused_key(done)) };
    }
    let lines = credited_lines(issuance, invoice, &ask.lines)?;
    let sequence = issuance.last.get(series).copied().unwrap_or(0) + 1;
    let total = lines.iter().map(|l| l.amount).sum();
    let note = CreditNote {
        number: format!("{series}-{sequence:06}"),
        series: series.to_owned(),
        sequence,
        event_id,
        tenant: invoice.tenant.clone(),
        invoice: invoice.number.clone(),
        invoice_event_id: invoice.event_id,
        contract: invoice.contract.clone(),
        period: invoice.period.clone(),
        currency: invoice.currency.clone(),
        lines,
        total,
        reason: ask.reason.trim().to_owned(),
        key: ask.key.clone(),
        issued_at: now,
    };
    Ok((note, true))
}

fn credited_lines(
    issuance: &Issuance,
    invoice: &Issued,
    asked: &[(u32, u64)],
) -> Result<Vec<CreditedLine>, CreditRefused> {
    let mut taken = credited(issuance, &invoice.number);
    let mut lines = Vec::new();
    for &(index, quantity) in asked {
        let line =
            usize::try_from(index).ok().and_then(|i| i.checked_sub(1)).and_then(|i| invoice.lines.get(i)).ok_or_else(
                || CreditRefused::NoSuchLine {
                    number: invoice.number.clone(),
                    count: invoice.lines.len(),
                    asked: index,
                },
            )?;
        // Only what charged something: a fee, a priced read, a surcharge.
        if line.unit <= 0 || line.amount <= 0 {
            return Err(CreditRefused::NotACharge { number: invoice.number.clone(), index, line: line.line.clone() });
        }
        let already = taken.entry(index).or_default();
        let left = line.quantity.saturating_sub(*already);
        let quantity = if quantity == 0 { left } else { quantity };
        if left == 0 {
            return Err(CreditRefused::FullyCredited {
                number: invoice.number.clone(),
                index,
                line: line.line.clone(),
            });
        }
        if quantity > left {
            return Err(CreditRefused::Exceeds {
                number: invoice.number.clone(),
                index,
                line: line.line.clone(),
                left,
                asked: quantity,
            });
        }
        *already += quantity;
        let amount = -line.unit.saturating_mul(i64::try_from(quantity).unwrap_or(i64::MAX));
        lines.push(CreditedLine {
            invoice_line: index,
            line: line.line.clone(),
            period: line.period.clone(),
            quantity,
            unit: line.unit,
            amount,
        });
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::invoice::InvoiceLine;

    fn line(line: &str, quantity: u64, unit: i64, amount: i64) -> InvoiceLine {
        InvoiceLine { line: line.into(), quantity, unit, amount, events: Vec::new(), period: String::new() }
    }

    /// US-000007: three CT reads at 45.00, two STAT surcharges at 10.00,
    /// an included read, and an SLA credit.
    fn issuance() -> Issuance {
        let issued = Issued {
            number: "US-000007".into(),
            series: "US".into(),
            sequence: 7,
            event_id: EventId(Uuid::from_u128(7)),
            tenant: "acme".into(),
            period: "2026-11".into(),
            contract: "acme-atlantic".into(),
            currency: "USD".into(),
            total: 15_000,
            lines: vec![
                line("engagement.per_study.CT", 3, 4_500, 13_500),
                line("engagement.priority_surcharge.stat", 2, 1_000, 2_000),
                line("engagement.included_studies", 1, 0, 0),
                line("engagement.sla_credit", 1, 0, -500),
            ],
            partition: 0,
            offset: 0,
        };
        Issuance::default().apply(issued)
    }

    fn ask(lines: &[(u32, u64)], key: &str) -> Ask {
        Ask {
            invoice: "US-000007".into(),
            lines: lines.to_vec(),
            reason: "read twice by mistake".into(),
            key: key.into(),
        }
    }

    const NOW: UnixMicros = UnixMicros(1_796_200_000_000_000);

    #[test]
    fn a_credit_note_credits_units_of_lines_at_their_price_until_nothing_is_left() {
        let mut issuance = issuance();
        let (first, new) = credit(&issuance, "US-CN", &ask(&[(1, 1), (2, 0)], "a"), NOW).unwrap();
        assert!(new);
        assert_eq!(first.number, "US-CN-000001");
        let lines: Vec<(u32, u64, i64)> = first.lines.iter().map(|l| (l.invoice_line, l.quantity, l.amount)).collect();
        assert_eq!(lines, [(1, 1, -4_500), (2, 2, -2_000)], "line 2 in full: all that was left");
        assert_eq!(first.total, -6_500);
        issuance = issuance.apply_credit_note(first.clone());

        // The same request again is the same credit note; the key with
        // another request is refused.
        assert_eq!(credit(&issuance, "US-CN", &ask(&[(1, 1), (2, 0)], "a"), NOW).unwrap(), (first.clone(), false));
        let reused = credit(&issuance, "US-CN", &ask(&[(1, 2)], "a"), NOW).unwrap_err();
        assert_eq!(reused, CreditRefused::KeyReused { key: "a".into(), number: "US-CN-000001".into() });

        // What is left: two CT reads; nothing of the surcharge.
        let more = credit(&issuance, "US-CN", &ask(&[(1, 3)], "b"), NOW).unwrap_err();
        assert_eq!(
            more.to_string(),
            "line 1 (engagement.per_study.CT) of invoice US-000007 has 2 left to credit, not 3"
        );
        let done = credit(&issuance, "US-CN", &ask(&[(2, 1)], "b"), NOW).unwrap_err();
        assert!(matches!(done, CreditRefused::FullyCredited { index: 2, .. }), "{done}");
        let (second, _) = credit(&issuance, "US-CN", &ask(&[(1, 0)], "b"), NOW).unwrap();
        assert_eq!((second.number.as_str(), second.total), ("US-CN-000002", -9_000));
        issuance = issuance.apply_credit_note(second);
        assert!(matches!(
            credit(&issuance, "US-CN", &ask(&[(1, 1)], "c"), NOW),
            Err(CreditRefused::FullyCredited { index: 1, .. })
        ));
        // Never more than the invoice charged.
        let credited: i64 = against(&issuance, "US-000007").iter().map(|n| n.total).sum();
        assert_eq!(credited, -15_500);
    }

    #[test]
    fn a_credit_note_names_what_is_wrong_with_its_request() {
        let issuance = issuance();
        let refused = |a: Ask| credit(&issuance, "US-CN", &a, NOW).unwrap_err();
        assert_eq!(
            refused(Ask { invoice: "US-000099".into(), ..ask(&[(1, 1)], "k") }),
            CreditRefused::UnknownInvoice { number: "US-000099".into() }
        );
        assert_eq!(refused(ask(&[], "k")), CreditRefused::NoLines);
        assert_eq!(refused(ask(&[(1, 1)], "")), CreditRefused::NoKey);
        assert_eq!(refused(Ask { reason: "  ".into(), ..ask(&[(1, 1)], "k") }), CreditRefused::NoReason);
        assert_eq!(refused(ask(&[(5, 1)], "k")).to_string(), "invoice US-000007 has lines 1 to 4, not 5");
        assert_eq!(refused(ask(&[(0, 1)], "k")).to_string(), "invoice US-000007 has lines 1 to 4, not 0");
        // An included read and an SLA credit charged nothing.
        assert!(matches!(refused(ask(&[(3, 1)], "k")), CreditRefused::NotACharge { index: 3, .. }));
        assert!(matches!(refused(ask(&[(4, 1)], "k")), CreditRefused::NotACharge { index: 4, .. }));
        // One line asked twice counts both.
        assert!(matches!(refused(ask(&[(1, 2), (1, 2)], "k")), CreditRefused::Exceeds { left: 1, asked: 2, .. }));
    }
}
