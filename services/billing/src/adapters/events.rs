//! Routing's payloads in, billing's payloads out.

use std::collections::BTreeMap;

use meridian_events::UnixMicros;
use meridian_events::envelope::EventMeta;
use meridian_events::payload::Payload;
use meridian_proto::common::v1::Money;
use meridian_proto::events::v1 as pb;
use uuid::Uuid;

pub use meridian_projection::unreadable::{Unreadable, uuid};

use crate::domain::credit_note::{CreditNote, CreditedLine};
use crate::domain::invoice::InvoiceLine;
use crate::domain::ledger::{Cause, Fact, Input, What};
use crate::domain::pricing::Read;

fn time(t: &Option<prost_types::Timestamp>) -> UnixMicros {
    t.as_ref().map_or(UnixMicros(0), |t| UnixMicros(t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000))
}

fn ts(t: UnixMicros) -> Option<prost_types::Timestamp> {
    Some(t.to_timestamp())
}

/// The input and cause of a routing event billing reads; `None` for the
/// events it does not need.
pub fn input(payload: &Payload, meta: &EventMeta) -> Result<Option<(Input, Cause)>, Unreadable> {
    let input = match payload {
        Payload::StudyQueued(q) => Input::Queued {
            study: uuid("StudyQueued", "study_id", &q.study_id)?,
            read: Read {
                tenant: q.tenant.clone(),
                facility: q.facility.clone(),
                contract: q.contract.clone(),
                modality: q.modality.clone(),
                read_type: q.read_type.clone(),
                // Events from before requested_priority: the priority then.
                priority: if q.requested_priority.is_empty() {
                    q.priority.clone()
                } else {
                    q.requested_priority.clone()
                },
                subspecialty: (!q.subspecialty.is_empty()).then(|| q.subspecialty.clone()),
                rvu_milli: q.rvu_milli,
                completed_at: time(&q.completed_at),
            },
        },
        Payload::AssignmentCompleted(c) => Input::Signed {
            study: uuid("AssignmentCompleted", "study_id", &c.study_id)?,
            reader: c.reader_id.clone(),
            group: c.reading_group.clone(),
            read_type: c.read_type.clone(),
            signed_at: time(&c.signed_at),
        },
        Payload::SlaBreached(b) => Input::Breached {
            study: uuid("SlaBreached", "study_id", &b.study_id)?,
            priority: b.priority.clone(),
            read_type: (!b.read_type.is_empty()).then(|| b.read_type.clone()),
            contract: b.contract.clone(),
            deadline: time(&b.deadline),
        },
        Payload::ReaderRegistered(r) => Input::Reader { reader: r.reader_id.clone(), group: r.reading_group.clone() },
        _ => return Ok(None),
    };
    let cause = Cause {
        event_id: meta.event_id,
        version: meta.aggregate_version,
        tenant: meta.tenant.clone(),
        occurred_at: meta.occurred_at,
    };
    Ok(Some((input, cause)))
}

fn money(currency: &str, minor_units: i64) -> Option<Money> {
    Some(Money { currency_code: currency.to_owned(), minor_units })
}

/// The payload of one of billing's facts.
pub fn payload(f: &Fact) -> Payload {
    let study_id = f.study.to_string();
    let cause_event_id = f.cause.to_string();
    match &f.what {
        What::Charged(c) => Payload::ChargePosted(pb::ChargePosted {
            study_id,
            contract: c.read.contract.clone(),
            facility: c.read.facility.clone(),
            reader_id: c.reader.clone(),
            read_type: c.read.read_type.clone(),
            modality: c.read.modality.clone(),
            priority: c.read.priority.clone(),
            lines: c
                .lines
                .iter()
                .map(|l| pb::ChargeLine {
                    kind: l.kind.clone(),
                    line: l.line.clone(),
                    amount: money(&c.currency, l.amount),
                })
                .collect(),
            amount: money(&c.currency, c.amount),
            model: c.model.as_str().to_owned(),
            included: c.included,
            period: c.period.clone(),
            signed_at: ts(c.signed_at),
            cause_event_id,
        }),
        What::Unpriced(u) => Payload::ChargeUnpriced(pb::ChargeUnpriced {
            study_id,
            contract: u.read.contract.clone(),
            facility: u.read.facility.clone(),
            reader_id: u.reader.clone(),
            read_type: u.read.read_type.clone(),
            modality: u.read.modality.clone(),
            priority: u.read.priority.clone(),
            missing: u.missing.clone(),
            period: u.period.clone(),
            signed_at: ts(u.signed_at),
            cause_event_id,
            completed_at: ts(u.read.completed_at),
            subspecialty: u.read.subspecialty.clone().unwrap_or_default(),
        }),
        What::Credited(c) => Payload::CreditPosted(pb::CreditPosted {
            study_id,
            contract: c.contract.clone(),
            read_type: c.read_type.clone(),
            priority: c.priority.clone(),
            line: c.line.clone(),
            amount: money(&c.currency, c.amount),
            period: c.period.clone(),
            breached_at: ts(c.breached_at),
            cause_event_id,
        }),
        What::Accrued(p) => Payload::PayoutAccrued(pb::PayoutAccrued {
            study_id,
            reader_id: p.reader.clone(),
            reading_group: p.group.clone(),
            rvu_milli: p.rvu_milli,
            amount: money(&p.currency, p.amount),
            period: p.period.clone(),
            signed_at: ts(p.signed_at),
            cause_event_id,
        }),
    }
}

/// An invoice to issue, as its event.
pub fn invoice_issued(
    to_issue: &crate::domain::invoice::ToIssue,
    issuer: &str,
    issued_at: UnixMicros,
) -> pb::InvoiceIssued {
    let (p, i) = (&to_issue.preview, &to_issue.issued);
    pb::InvoiceIssued {
        number: i.number.clone(),
        series: i.series.clone(),
        sequence: i.sequence,
        issuer: issuer.to_owned(),
        tenant: i.tenant.clone(),
        period: i.period.clone(),
        contract: i.contract.clone(),
        lines: p
            .lines
            .iter()
            .map(|l| pb::InvoiceLine {
                line: l.line.clone(),
                quantity: l.quantity,
                unit_price: money(&p.currency, l.unit),
                amount: money(&p.currency, l.amount),
                event_ids: l.events.iter().map(ToString::to_string).collect(),
                period: l.period.clone(),
            })
            .collect(),
        charges: money(&p.currency, p.charges),
        credits: money(&p.currency, p.credits),
        total: money(&p.currency, p.total),
        issued_at: ts(issued_at),
        rounding: p.rounding.to_owned(),
    }
}

/// An issued invoice as its series remembers it: its lines without their
/// events, and where its event is on the topic.
pub fn issued(
    i: &pb::InvoiceIssued,
    event_id: meridian_events::EventId,
    partition: u32,
    offset: u64,
) -> crate::domain::invoice::Issued {
    let lines = invoice_lines(i).into_iter().map(|l| InvoiceLine { events: Vec::new(), ..l }).collect();
    crate::domain::invoice::Issued {
        number: i.number.clone(),
        series: i.series.clone(),
        sequence: i.sequence,
        event_id,
        tenant: i.tenant.clone(),
        period: i.period.clone(),
        contract: i.contract.clone(),
        currency: i.total.as_ref().map_or(String::new(), |m| m.currency_code.clone()),
        total: i.total.as_ref().map_or(0, |m| m.minor_units),
        lines,
        partition,
        offset,
    }
}

/// An issued invoice's lines, with their events (ids that do not parse
/// are left out: billing wrote them, so none should).
pub fn invoice_lines(i: &pb::InvoiceIssued) -> Vec<InvoiceLine> {
    let minor = |m: &Option<Money>| m.as_ref().map_or(0, |m| m.minor_units);
    i.lines
        .iter()
        .map(|l| InvoiceLine {
            line: l.line.clone(),
            quantity: l.quantity,
            unit: minor(&l.unit_price),
            amount: minor(&l.amount),
            events: l.event_ids.iter().filter_map(|id| id.parse().ok()).collect(),
            period: l.period.clone(),
        })
        .collect()
}

/// A credit note to issue, as its event.
pub fn credit_note_issued(note: &CreditNote, issuer: &str) -> pb::CreditNoteIssued {
    pb::CreditNoteIssued {
        number: note.number.clone(),
        series: note.series.clone(),
        sequence: note.sequence,
        issuer: issuer.to_owned(),
        tenant: note.tenant.clone(),
        invoice_number: note.invoice.clone(),
        invoice_event_id: note.invoice_event_id.to_string(),
        contract: note.contract.clone(),
        period: note.period.clone(),
        lines: note
            .lines
            .iter()
            .map(|l| pb::CreditNoteLine {
                invoice_line: l.invoice_line,
                line: l.line.clone(),
                period: l.period.clone(),
                quantity: l.quantity,
                unit_price: money(&note.currency, l.unit),
                amount: money(&note.currency, l.amount),
            })
            .collect(),
        total: money(&note.currency, note.total),
        reason: note.reason.clone(),
        issued_at: ts(note.issued_at),
        idempotency_key: note.key.clone(),
    }
}

/// An issued credit note as its series remembers it.
pub fn credit_note(n: &pb::CreditNoteIssued, event_id: meridian_events::EventId) -> CreditNote {
    let minor = |m: &Option<Money>| m.as_ref().map_or(0, |m| m.minor_units);
    CreditNote {
        number: n.number.clone(),
        series: n.series.clone(),
        sequence: n.sequence,
        event_id,
        tenant: n.tenant.clone(),
        invoice: n.invoice_number.clone(),
        invoice_event_id: n.invoice_event_id.parse().unwrap_or(meridian_events::EventId(Uuid::nil())),
        contract: n.contract.clone(),
        period: n.period.clone(),
        currency: n.total.as_ref().map_or(String::new(), |m| m.currency_code.clone()),
        lines: n
            .lines
            .iter()
            .map(|l| CreditedLine {
                invoice_line: l.invoice_line,
                line: l.line.clone(),
                period: l.period.clone(),
                quantity: l.quantity,
                unit: minor(&l.unit_price),
                amount: minor(&l.amount),
            })
            .collect(),
        total: minor(&n.total),
        reason: n.reason.clone(),
        key: n.idempotency_key.clone(),
        issued_at: time(&n.issued_at),
    }
}

/// Prices put in force from the routing positions `from` on, as their event.
pub fn prices_in_force(
    pricebook: &crate::domain::pricing::Pricebook,
    from: &BTreeMap<u32, u64>,
    at: UnixMicros,
) -> Result<pb::PricesInForce, serde_json::Error> {
    Ok(pb::PricesInForce {
        pricebook: serde_json::to_string(pricebook)?,
        from: from
            .iter()
            .map(|(partition, offset)| pb::RoutingPosition { partition: *partition, offset: *offset })
            .collect(),
        in_force_at: ts(at),
    })
}

/// A PricesInForce as the schedule keeps it.
pub fn prices_from(p: &pb::PricesInForce) -> Result<crate::domain::pricing::PricesFrom, serde_json::Error> {
    Ok(crate::domain::pricing::PricesFrom {
        from: p.from.iter().map(|f| (f.partition, f.offset)).collect(),
        pricebook: serde_json::from_str(&p.pricebook)?,
    })
}
