//! Routing's payloads and reporting's own, as the facts reporting folds;
//! reporting's events as payloads.

use meridian_events::payload::Payload;
use meridian_events::{EventId, UnixMicros};
use meridian_proto::events::v1 as pb;

pub use meridian_projection::unreadable::{Unreadable, uuid};

use crate::domain::critical::CriticalEvent;
use crate::domain::delivery::{Delivery, Standing};
use crate::domain::model::{Amendment, Fact, Licence, Signature, StudyFacts, VersionRef, text_digest};
use crate::domain::order::{OrderEvent, OrderFact};
use crate::domain::peer_review::{PeerEvent, needs_arbitration};
use crate::domain::report::Event;

fn time(t: &Option<prost_types::Timestamp>) -> UnixMicros {
    t.as_ref().map_or(UnixMicros(0), UnixMicros::from_timestamp)
}

fn licences(ls: &[pb::Licence]) -> Vec<Licence> {
    ls.iter().map(|l| Licence { jurisdiction: l.jurisdiction.clone(), expires: time(&l.expires_at) }).collect()
}

/// The fact of an event reporting folds (`None` for the rest). `partition`
/// and `offset` are the record's place, kept for a saved version's text.
pub fn fact(payload: &Payload, event_id: EventId, partition: u32, offset: u64) -> Result<Option<Fact>, Unreadable> {
    Ok(Some(match payload {
        Payload::StudyQueued(q) => Fact::Queued {
            study: uuid("StudyQueued", "study_id", &q.study_id)?,
            facts: StudyFacts {
                tenant: q.tenant.clone(),
                contract: q.contract.clone(),
                facility: q.facility.clone(),
                jurisdiction: q.origin_jurisdiction.clone(),
                modality: q.modality.clone(),
                body_part: q.body_part.clone(),
                subspecialty: q.subspecialty.clone(),
                rvu_milli: q.rvu_milli,
                completed_at: time(&q.completed_at),
                deadlines: [(q.read_type.clone(), time(&q.sla_deadline))].into(),
                patient_key: q.patient_key.clone(),
            },
            read_type: q.read_type.clone(),
        },
        Payload::StudyAssigned(a) => {
            Fact::Held { study: uuid("StudyAssigned", "study_id", &a.study_id)?, reader: a.reader_id.clone() }
        }
        Payload::AssignmentClaimed(a) => {
            Fact::Held { study: uuid("AssignmentClaimed", "study_id", &a.study_id)?, reader: a.reader_id.clone() }
        }
        Payload::AssignmentReassigned(a) => {
            Fact::Held { study: uuid("AssignmentReassigned", "study_id", &a.study_id)?, reader: a.to_reader_id.clone() }
        }
        Payload::AssignmentReleased(a) => {
            Fact::Released { study: uuid("AssignmentReleased", "study_id", &a.study_id)? }
        }
        Payload::AssignmentCompleted(a) => Fact::Completed {
            study: uuid("AssignmentCompleted", "study_id", &a.study_id)?,
            read_type: a.read_type.clone(),
        },
        Payload::ReaderRegistered(r) => Fact::Licences {
            reader: r.reader_id.clone(),
            group: Some(r.reading_group.clone()),
            licences: licences(&r.licences),
        },
        Payload::LicenceUpdated(l) => {
            Fact::Licences { reader: l.reader_id.clone(), group: None, licences: licences(&l.licences) }
        }
        Payload::DeliveryRequested(d) => Fact::Requested(Delivery {
            id: uuid("DeliveryRequested", "delivery_id", &d.delivery_id)?,
            study: uuid("DeliveryRequested", "study_id", &d.study_id)?,
            report: uuid("DeliveryRequested", "report_id", &d.report_id)?,
            read_type: d.read_type.clone(),
            endpoint: d.endpoint.clone(),
            kind: d.kind.clone(),
            status: d.status.clone(),
            requested_at: time(&d.requested_at),
            attempts: 0,
            standing: Standing::Due(time(&d.requested_at)),
            last_error: String::new(),
            supersedes: if d.supersedes.is_empty() {
                None
            } else {
                Some(uuid("DeliveryRequested", "supersedes", &d.supersedes)?)
            },
        }),
        Payload::ReportDelivered(d) => {
            Fact::Delivered { delivery: uuid("ReportDelivered", "delivery_id", &d.delivery_id)? }
        }
        Payload::DeliveryFailed(f) => Fact::Failed {
            delivery: uuid("DeliveryFailed", "delivery_id", &f.delivery_id)?,
            attempt: f.attempt,
            error: f.error.clone(),
            permanent: f.permanent,
            retry_at: time(&f.retry_at),
        },
        Payload::ReportText(t) => Fact::Saved {
            study: uuid("ReportText", "study_id", &t.study_id)?,
            report: uuid("ReportText", "report_id", &t.report_id)?,
            read_type: t.read_type.clone(),
            version: VersionRef {
                version: t.version,
                author: t.author_id.clone(),
                saved_at: time(&t.saved_at),
                partition,
                offset,
                has_impression: !t.impression.trim().is_empty(),
                kind: if t.kind.is_empty() { "draft".into() } else { t.kind.clone() },
                fields: {
                    let mut names: Vec<String> = t.fields.keys().cloned().collect();
                    names.sort();
                    names
                },
                template: t.template.clone(),
                event: event_id.as_uuid(),
                digest: text_digest(&t.findings, &t.impression, &t.fields.clone().into_iter().collect()),
            },
        },
        Payload::CriticalResultCommunicated(c) => Fact::Critical(CriticalEvent::Communicated {
            study: uuid("CriticalResultCommunicated", "study_id", &c.study_id)?,
            recipient: c.recipient.clone(),
            method: c.method.clone(),
            reader: c.reader_id.clone(),
            at: time(&c.communicated_at),
        }),
        Payload::CriticalResultFlagged(f) => Fact::Critical(CriticalEvent::Flagged {
            study: uuid("CriticalResultFlagged", "study_id", &f.study_id)?,
            read_type: f.read_type.clone(),
            category: u8::try_from(f.category).unwrap_or(0),
            reader: f.reader_id.clone(),
            at: time(&f.flagged_at),
            deadline: time(&f.deadline),
        }),
        Payload::CriticalResultClosed(c) => Fact::Critical(CriticalEvent::Closed {
            study: uuid("CriticalResultClosed", "study_id", &c.study_id)?,
            category: u8::try_from(c.category).unwrap_or(0),
            within_window: c.within_window,
            at: time(&c.closed_at),
        }),
        Payload::CriticalResultEscalated(e) => Fact::Critical(CriticalEvent::Escalated {
            study: uuid("CriticalResultEscalated", "study_id", &e.study_id)?,
            category: u8::try_from(e.category).unwrap_or(0),
            deadline: time(&e.deadline),
            reader: e.reader_id.clone(),
        }),
        Payload::PeerReviewRequested(r) => Fact::Peer(PeerEvent::Requested {
            study: uuid("PeerReviewRequested", "study_id", &r.study_id)?,
            report: uuid("PeerReviewRequested", "report_id", &r.report_id)?,
            reviewed_reader: r.reviewed_reader_id.clone(),
            reviewed_group: r.reviewed_group.clone(),
            facts: Box::new(StudyFacts {
                tenant: r.tenant.clone(),
                contract: r.contract.clone(),
                facility: r.facility.clone(),
                jurisdiction: r.origin_jurisdiction.clone(),
                modality: r.modality.clone(),
                body_part: r.body_part.clone(),
                subspecialty: r.subspecialty.clone(),
                rvu_milli: r.rvu_milli,
                ..StudyFacts::default()
            }),
            requested_at: time(&r.requested_at),
            due: time(&r.due),
        }),
        Payload::PeerReviewScored(r) => Fact::Peer(PeerEvent::Scored {
            study: uuid("PeerReviewScored", "study_id", &r.study_id)?,
            reviewed_reader: r.reviewed_reader_id.clone(),
            reviewed_group: r.reviewed_group.clone(),
            reviewer: r.reviewer_id.clone(),
            score: r.score.clone(),
            at: time(&r.scored_at),
        }),
        Payload::PeerReviewArbitrated(r) => Fact::Peer(PeerEvent::Arbitrated {
            study: uuid("PeerReviewArbitrated", "study_id", &r.study_id)?,
            reviewed_reader: r.reviewed_reader_id.clone(),
            arbiter: r.arbiter.clone(),
            scored: r.scored.clone(),
            score: r.score.clone(),
            at: time(&r.arbitrated_at),
        }),
        Payload::InstanceReceived(i) => Fact::Arrived {
            study: uuid("InstanceReceived", "study_id", &i.study_id)?,
            partition,
            offset,
            accession_key: if i.accession_key.is_empty() {
                None
            } else {
                Some(uuid("InstanceReceived", "accession_key", &i.accession_key)?)
            },
        },
        Payload::OrderReceived(o) => Fact::Order(OrderFact::Received {
            key: uuid("OrderReceived", "order_key", &o.order_key)?,
            tenant: o.tenant.clone(),
            priority: o.priority.clone(),
            received_at: time(&o.received_at),
            partition,
            offset,
        }),
        Payload::OrderMatched(m) => Fact::Order(OrderFact::Matched {
            study: uuid("OrderMatched", "study_id", &m.study_id)?,
            key: uuid("OrderMatched", "order_key", &m.order_key)?,
        }),
        Payload::ReportAmended(a) => Fact::Amended {
            study: uuid("ReportAmended", "study_id", &a.study_id)?,
            report: uuid("ReportAmended", "report_id", &a.report_id)?,
            read_type: a.read_type.clone(),
            amendment: Amendment {
                kind: a.kind.clone(),
                version: a.version,
                reader: a.reader_id.clone(),
                at: time(&a.amended_at),
                reason: a.reason.clone(),
            },
        },
        Payload::ReportSigned(s) => Fact::Signed {
            study: uuid("ReportSigned", "study_id", &s.study_id)?,
            report: uuid("ReportSigned", "report_id", &s.report_id)?,
            read_type: s.read_type.clone(),
            signature: Signature {
                version: s.report_version,
                reader: s.reader_id.clone(),
                at: time(&s.signed_at),
                discrepancy: s.discrepancy.clone(),
                event_id,
            },
        },
        _ => return Ok(None),
    }))
}

/// The payload of one of reporting's events.
pub fn payload(event: &Event) -> Payload {
    match event {
        Event::Drafted {
            study,
            report,
            version,
            read_type,
            author,
            findings,
            impression,
            saved_at,
            kind,
            fields,
            template,
            language,
            keyed: _,
        } => Payload::ReportText(pb::ReportText {
            fields: fields.clone().into_iter().collect(),
            template: template.clone(),
            language: language.clone(),
            study_id: study.to_string(),
            report_id: report.to_string(),
            version: *version,
            read_type: read_type.clone(),
            author_id: author.clone(),
            findings: findings.clone(),
            impression: impression.clone(),
            saved_at: Some(saved_at.to_timestamp()),
            kind: (*kind).to_owned(),
        }),
        Event::Requested(d) => Payload::DeliveryRequested(pb::DeliveryRequested {
            delivery_id: d.id.to_string(),
            study_id: d.study.to_string(),
            report_id: d.report.to_string(),
            read_type: d.read_type.clone(),
            endpoint: d.endpoint.clone(),
            kind: d.kind.clone(),
            status: d.status.clone(),
            requested_at: Some(d.requested_at.to_timestamp()),
            supersedes: d.supersedes.map(|s| s.to_string()).unwrap_or_default(),
        }),
        Event::Delivered { delivery, endpoint, attempt, answer } => Payload::ReportDelivered(pb::ReportDelivered {
            delivery_id: delivery.to_string(),
            endpoint: endpoint.clone(),
            attempt: *attempt,
            answer: answer.clone(),
        }),
        Event::DeliveryFailed { delivery, endpoint, attempt, error, permanent, retry_at } => {
            Payload::DeliveryFailed(pb::DeliveryFailed {
                delivery_id: delivery.to_string(),
                endpoint: endpoint.clone(),
                attempt: *attempt,
                error: error.clone(),
                permanent: *permanent,
                retry_at: Some(retry_at.to_timestamp()),
            })
        }
        Event::Amended { study, report, read_type, kind, version, reader, at, reason } => {
            Payload::ReportAmended(pb::ReportAmended {
                study_id: study.to_string(),
                report_id: report.to_string(),
                read_type: read_type.clone(),
                kind: (*kind).to_owned(),
                version: *version,
                reader_id: reader.clone(),
                amended_at: Some(at.to_timestamp()),
                reason: reason.clone(),
            })
        }
        Event::Peer(e) => peer_payload(e),
        Event::Signed { study, report, read_type, reader, version, signed_at, discrepancy } => {
            Payload::ReportSigned(pb::ReportSigned {
                study_id: study.to_string(),
                report_id: report.to_string(),
                read_type: read_type.clone(),
                reader_id: reader.clone(),
                signed_at: Some(signed_at.to_timestamp()),
                report_version: *version,
                discrepancy: discrepancy.clone(),
            })
        }
    }
}

/// The payload of a critical result's event.
pub fn critical_payload(event: &CriticalEvent) -> Payload {
    match event {
        CriticalEvent::Flagged { study, read_type, category, reader, at, deadline } => {
            Payload::CriticalResultFlagged(pb::CriticalResultFlagged {
                study_id: study.to_string(),
                read_type: read_type.clone(),
                category: u32::from(*category),
                reader_id: reader.clone(),
                flagged_at: Some(at.to_timestamp()),
                deadline: Some(deadline.to_timestamp()),
            })
        }
        CriticalEvent::Communicated { study, recipient, method, reader, at } => {
            Payload::CriticalResultCommunicated(pb::CriticalResultCommunicated {
                study_id: study.to_string(),
                recipient: recipient.clone(),
                method: method.clone(),
                reader_id: reader.clone(),
                communicated_at: Some(at.to_timestamp()),
            })
        }
        CriticalEvent::Closed { study, category, within_window, at } => {
            Payload::CriticalResultClosed(pb::CriticalResultClosed {
                study_id: study.to_string(),
                category: u32::from(*category),
                within_window: *within_window,
                closed_at: Some(at.to_timestamp()),
            })
        }
        CriticalEvent::Escalated { study, category, deadline, reader } => {
            Payload::CriticalResultEscalated(pb::CriticalResultEscalated {
                study_id: study.to_string(),
                category: u32::from(*category),
                deadline: Some(deadline.to_timestamp()),
                reader_id: reader.clone(),
            })
        }
    }
}

/// The payload of a peer review's event.
pub fn peer_payload(event: &PeerEvent) -> Payload {
    match event {
        PeerEvent::Requested { study, report, reviewed_reader, reviewed_group, facts, requested_at, due } => {
            Payload::PeerReviewRequested(pb::PeerReviewRequested {
                study_id: study.to_string(),
                report_id: report.to_string(),
                reviewed_reader_id: reviewed_reader.clone(),
                reviewed_group: reviewed_group.clone(),
                tenant: facts.tenant.clone(),
                contract: facts.contract.clone(),
                facility: facts.facility.clone(),
                origin_jurisdiction: facts.jurisdiction.clone(),
                modality: facts.modality.clone(),
                body_part: facts.body_part.clone(),
                subspecialty: facts.subspecialty.clone(),
                rvu_milli: facts.rvu_milli,
                requested_at: Some(requested_at.to_timestamp()),
                due: Some(due.to_timestamp()),
            })
        }
        PeerEvent::Scored { study, reviewed_reader, reviewed_group, reviewer, score, at } => {
            Payload::PeerReviewScored(pb::PeerReviewScored {
                study_id: study.to_string(),
                reviewed_reader_id: reviewed_reader.clone(),
                reviewed_group: reviewed_group.clone(),
                reviewer_id: reviewer.clone(),
                score: score.clone(),
                scored_at: Some(at.to_timestamp()),
                arbitration_required: needs_arbitration(score),
            })
        }
        PeerEvent::Arbitrated { study, reviewed_reader, arbiter, scored, score, at } => {
            Payload::PeerReviewArbitrated(pb::PeerReviewArbitrated {
                study_id: study.to_string(),
                reviewed_reader_id: reviewed_reader.clone(),
                arbiter: arbiter.clone(),
                scored: scored.clone(),
                score: score.clone(),
                arbitrated_at: Some(at.to_timestamp()),
            })
        }
    }
}

/// The payload of an order's event.
pub fn order_payload(event: &OrderEvent) -> Payload {
    match event {
        OrderEvent::Received { key, order, received_at } => Payload::OrderReceived(pb::OrderReceived {
            order_key: key.to_string(),
            tenant: order.tenant.clone(),
            facility: order.facility.clone(),
            accession_number: order.accession.clone(),
            placer_order_number: order.placer_order.clone(),
            patient_id: order.patient_id.clone(),
            issuer_of_patient_id: order.issuer.clone(),
            ordering_clinician: order.ordering_clinician.clone(),
            priority: order.priority.clone(),
            reason: order.reason.clone(),
            source: order.source.to_owned(),
            message_id: order.message_id.clone(),
            received_at: Some(received_at.to_timestamp()),
            procedure: order.procedure.clone(),
        }),
        OrderEvent::Matched { study, key, priority, at } => Payload::OrderMatched(pb::OrderMatched {
            study_id: study.to_string(),
            order_key: key.to_string(),
            priority: priority.clone(),
            matched_at: Some(at.to_timestamp()),
        }),
    }
}
