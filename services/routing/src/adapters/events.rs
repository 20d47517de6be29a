//! Routing's domain events to and from their payloads in
//! `meridian.events.v1`. Wire types are not domain types: every conversion
//! that can fail names the field.

use std::collections::BTreeSet;

use meridian_events::payload::Payload;
use meridian_events::{ReaderKey, UnixMicros};
use meridian_proto::events::v1 as pb;
use uuid::Uuid;

use crate::domain::model::*;
use crate::domain::worklist::{Event, Profile, Unroutable};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{payload}.{field}: {reason}")]
pub struct Error {
    pub payload: &'static str,
    pub field: &'static str,
    pub reason: String,
}

/// The aggregate type of a reader's events.
pub const READER_AGGREGATE: &str = "routing.reader";

/// The aggregate an event belongs to: readers by their key, studies by id.
pub fn aggregate(e: &Event) -> (&'static str, Uuid) {
    match e {
        Event::ReaderRegistered(r) => (READER_AGGREGATE, ReaderKey::of(&r.id).0),
        Event::ReaderUpdated { reader, .. }
        | Event::AvailabilityChanged { reader, .. }
        | Event::LicenceUpdated { reader, .. }
        | Event::CredentialUpdated { reader, .. } => (READER_AGGREGATE, ReaderKey::of(reader).0),
        Event::StudyQueued(s) => ("routing.study", s.id),
        Event::StudyUnroutable(u) => ("routing.study", u.study),
        Event::StudyAssigned { study, .. }
        | Event::AssignmentClaimed { study, .. }
        | Event::AssignmentReleased { study, .. }
        | Event::AssignmentReassigned { study, .. }
        | Event::AssignmentEscalated { study, .. }
        | Event::SlaBreached { study, .. }
        | Event::AssignmentCompleted { study, .. }
        | Event::StudyTriaged { study, .. } => ("routing.study", *study),
    }
}

fn ts(t: UnixMicros) -> Option<prost_types::Timestamp> {
    Some(t.to_timestamp())
}

fn licences(ls: &[Licence]) -> Vec<pb::Licence> {
    ls.iter().map(|l| pb::Licence { jurisdiction: l.jurisdiction.clone(), expires_at: ts(l.expires) }).collect()
}

fn shifts(ss: &[Shift]) -> Vec<pb::Shift> {
    ss.iter()
        .map(|s| pb::Shift { weekday: u32::from(s.weekday), start_minute: s.start_minute, end_minute: s.end_minute })
        .collect()
}

fn from_shifts(f: &Fields, ss: &[pb::Shift]) -> Result<Vec<Shift>, Error> {
    ss.iter()
        .map(|s| {
            let weekday = u8::try_from(s.weekday)
                .ok()
                .filter(|d| (1..=7).contains(d))
                .ok_or_else(|| f.err("shifts.weekday", format!("{} is not an ISO weekday (1-7)", s.weekday)))?;
            if s.start_minute >= 1_440 || s.end_minute >= 1_440 {
                return Err(
                    f.err("shifts", format!("{}..{} is not within a day's minutes", s.start_minute, s.end_minute))
                );
            }
            Ok(Shift { weekday, start_minute: s.start_minute, end_minute: s.end_minute })
        })
        .collect()
}

fn read_types(ts: &BTreeSet<ReadType>) -> Vec<String> {
    ts.iter().map(|t| t.as_str().to_owned()).collect()
}

fn from_read_types(f: &Fields, ts: &[String]) -> Result<BTreeSet<ReadType>, Error> {
    ts.iter().map(|t| f.named("read_types", t, ReadType::parse)).collect()
}

fn credentials(cs: &[Credential]) -> Vec<pb::Credential> {
    cs.iter()
        .map(|c| pb::Credential { tenant: c.tenant.clone(), facility: c.facility.clone(), expires_at: ts(c.expires) })
        .collect()
}

/// The payload of a domain event.
pub fn to_payload(e: &Event) -> Payload {
    match e {
        Event::StudyUnroutable(u) => Payload::StudyUnroutable(pb::StudyUnroutable {
            study_id: u.study.to_string(),
            tenant: u.tenant.clone(),
            facility: u.facility.clone(),
            reason: u.reason.clone(),
            completed_at: ts(u.completed_at),
        }),
        Event::ReaderRegistered(r) => Payload::ReaderRegistered(pb::ReaderRegistered {
            reader_id: r.id.clone(),
            reading_group: r.group.clone(),
            region: r.region.clone(),
            display_name: String::new(),
            licences: licences(&r.licences),
            credentials: credentials(&r.credentials),
            subspecialties: r.subspecialties.iter().cloned().collect(),
            modalities: r.modalities.iter().cloned().collect(),
            read_types: read_types(&r.read_types),
            shifts: shifts(&r.shifts),
            time_zone: r.time_zone.clone(),
            capacity: r.capacity,
            status: r.availability.as_str().to_owned(),
        }),
        Event::ReaderUpdated { reader, profile } => Payload::ReaderUpdated(pb::ReaderUpdated {
            reader_id: reader.clone(),
            subspecialties: profile.subspecialties.iter().cloned().collect(),
            modalities: profile.modalities.iter().cloned().collect(),
            read_types: read_types(&profile.read_types),
            shifts: shifts(&profile.shifts),
            capacity: profile.capacity,
        }),
        Event::AvailabilityChanged { reader, availability } => Payload::AvailabilityChanged(pb::AvailabilityChanged {
            reader_id: reader.clone(),
            status: availability.as_str().to_owned(),
        }),
        Event::LicenceUpdated { reader, licences: ls } => {
            Payload::LicenceUpdated(pb::LicenceUpdated { reader_id: reader.clone(), licences: licences(ls) })
        }
        Event::CredentialUpdated { reader, credentials: cs } => Payload::CredentialUpdated(pb::CredentialUpdated {
            reader_id: reader.clone(),
            credentials: credentials(cs),
        }),
        Event::StudyQueued(s) => Payload::StudyQueued(pb::StudyQueued {
            study_id: s.id.to_string(),
            tenant: s.tenant.clone(),
            priority: s.priority.as_str().to_owned(),
            requested_priority: s.requested_priority.as_str().to_owned(),
            read_type: s.read_type.as_str().to_owned(),
            sla_deadline: ts(s.deadline),
            facility: s.facility.clone(),
            contract: s.contract.clone(),
            home_region: s.home_region.clone(),
            origin_jurisdiction: s.origin_jurisdiction.clone(),
            modality: s.modality.clone(),
            body_part: s.body_part.clone(),
            subspecialty: s.subspecialty.clone().unwrap_or_default(),
            subspecialty_required: s.subspecialty_required,
            service_type: s.service_type.as_str().to_owned(),
            patient_key: s.patient_key.map(|k| k.to_string()).unwrap_or_default(),
            rvu_milli: s.rvu_milli,
            ai_flagged: s.ai_flagged,
            completed_at: ts(s.completed_at),
            prior_reader_id: s.prior_reader.clone().unwrap_or_default(),
            sequence: s.sequence,
        }),
        Event::StudyAssigned { study, reader, delivery_model } => Payload::StudyAssigned(pb::StudyAssigned {
            study_id: study.to_string(),
            reader_id: reader.clone(),
            read_type: String::new(),
            delivery_model: delivery_model.as_str().to_owned(),
        }),
        Event::AssignmentClaimed { study, reader, delivery_model } => {
            Payload::AssignmentClaimed(pb::AssignmentClaimed {
                study_id: study.to_string(),
                reader_id: reader.clone(),
                read_type: String::new(),
                delivery_model: delivery_model.as_str().to_owned(),
            })
        }
        Event::AssignmentReleased { study, reader, reason } => Payload::AssignmentReleased(pb::AssignmentReleased {
            study_id: study.to_string(),
            reader_id: reader.clone(),
            reason: reason.clone(),
        }),
        Event::AssignmentReassigned { study, from, to, by_group } => {
            Payload::AssignmentReassigned(pb::AssignmentReassigned {
                study_id: study.to_string(),
                from_reader_id: from.clone().unwrap_or_default(),
                to_reader_id: to.clone(),
                by_principal: String::new(),
                by_group: by_group.clone(),
            })
        }
        Event::AssignmentEscalated { study, level, per_mille, priority, widened } => {
            Payload::AssignmentEscalated(pb::AssignmentEscalated {
                study_id: study.to_string(),
                sla_fraction_per_mille: *per_mille,
                new_priority: priority.as_str().to_owned(),
                widened_to: widened.iter().map(|m| m.as_str().to_owned()).collect(),
                level: u32::from(*level),
            })
        }
        Event::SlaBreached { study, priority, deadline, read_type, contract } => {
            Payload::SlaBreached(pb::SlaBreached {
                study_id: study.to_string(),
                priority: priority.as_str().to_owned(),
                deadline: ts(*deadline),
                read_type: read_type.map(|r| r.as_str().to_owned()).unwrap_or_default(),
                contract: contract.clone(),
            })
        }
        Event::AssignmentCompleted { study, reader, read_type, signed_at, group } => {
            Payload::AssignmentCompleted(pb::AssignmentCompleted {
                study_id: study.to_string(),
                reader_id: reader.clone(),
                read_type: read_type.as_str().to_owned(),
                signed_at: ts(*signed_at),
                reading_group: group.clone(),
            })
        }
        Event::StudyTriaged { study, ai_flagged, priority, deadline, model } => {
            Payload::StudyTriaged(pb::StudyTriaged {
                study_id: study.to_string(),
                ai_flagged: *ai_flagged,
                priority: priority.as_str().to_owned(),
                sla_deadline: deadline.map(|d| d.to_timestamp()),
                model: model.clone(),
            })
        }
    }
}

struct Fields(&'static str);

impl Fields {
    fn err(&self, field: &'static str, reason: impl Into<String>) -> Error {
        Error { payload: self.0, field, reason: reason.into() }
    }

    fn uuid(&self, field: &'static str, text: &str) -> Result<Uuid, Error> {
        Uuid::parse_str(text).map_err(|e| self.err(field, format!("{text:?} is not a UUID: {e}")))
    }

    fn time(&self, field: &'static str, t: &Option<prost_types::Timestamp>) -> Result<UnixMicros, Error> {
        t.as_ref().map(UnixMicros::from_timestamp).ok_or_else(|| self.err(field, "is missing"))
    }

    fn named<T>(&self, field: &'static str, text: &str, parse: fn(&str) -> Option<T>) -> Result<T, Error> {
        parse(text).ok_or_else(|| self.err(field, format!("{text:?} is not a known value")))
    }

    fn opt(text: &str) -> Option<String> {
        (!text.is_empty()).then(|| text.to_owned())
    }
}

fn from_licences(f: &Fields, ls: &[pb::Licence]) -> Result<Vec<Licence>, Error> {
    ls.iter()
        .map(|l| {
            Ok(Licence { jurisdiction: l.jurisdiction.clone(), expires: f.time("licences.expires_at", &l.expires_at)? })
        })
        .collect()
}

fn from_credentials(f: &Fields, cs: &[pb::Credential]) -> Result<Vec<Credential>, Error> {
    cs.iter()
        .map(|c| {
            Ok(Credential {
                tenant: c.tenant.clone(),
                facility: c.facility.clone(),
                expires: f.time("credentials.expires_at", &c.expires_at)?,
            })
        })
        .collect()
}

/// The domain event of a payload; `None` for payloads routing does not write.
pub fn from_payload(p: &Payload) -> Result<Option<Event>, Error> {
    Ok(Some(match p {
        Payload::ReaderRegistered(r) => {
            let f = Fields("ReaderRegistered");
            let status = if r.status.is_empty() { "available" } else { &r.status };
            Event::ReaderRegistered(Reader {
                id: r.reader_id.clone(),
                group: r.reading_group.clone(),
                region: r.region.clone(),
                time_zone: r.time_zone.clone(),
                licences: from_licences(&f, &r.licences)?,
                credentials: from_credentials(&f, &r.credentials)?,
                subspecialties: r.subspecialties.iter().cloned().collect(),
                modalities: r.modalities.iter().cloned().collect(),
                read_types: from_read_types(&f, &r.read_types)?,
                shifts: from_shifts(&f, &r.shifts)?,
                capacity: r.capacity,
                availability: f.named("status", status, Availability::parse)?,
            })
        }
        Payload::ReaderUpdated(u) => {
            let f = Fields("ReaderUpdated");
            Event::ReaderUpdated {
                reader: u.reader_id.clone(),
                profile: Profile {
                    subspecialties: u.subspecialties.iter().cloned().collect(),
                    modalities: u.modalities.iter().cloned().collect(),
                    read_types: from_read_types(&f, &u.read_types)?,
                    shifts: from_shifts(&f, &u.shifts)?,
                    capacity: u.capacity,
                },
            }
        }
        Payload::AvailabilityChanged(a) => Event::AvailabilityChanged {
            reader: a.reader_id.clone(),
            availability: Fields("AvailabilityChanged").named("status", &a.status, Availability::parse)?,
        },
        Payload::LicenceUpdated(l) => Event::LicenceUpdated {
            reader: l.reader_id.clone(),
            licences: from_licences(&Fields("LicenceUpdated"), &l.licences)?,
        },
        Payload::CredentialUpdated(c) => Event::CredentialUpdated {
            reader: c.reader_id.clone(),
            credentials: from_credentials(&Fields("CredentialUpdated"), &c.credentials)?,
        },
        Payload::StudyUnroutable(u) => {
            let f = Fields("StudyUnroutable");
            Event::StudyUnroutable(Unroutable {
                study: f.uuid("study_id", &u.study_id)?,
                tenant: u.tenant.clone(),
                facility: u.facility.clone(),
                reason: u.reason.clone(),
                completed_at: f.time("completed_at", &u.completed_at)?,
            })
        }
        Payload::StudyQueued(s) => {
            let f = Fields("StudyQueued");
            Event::StudyQueued(Study {
                id: f.uuid("study_id", &s.study_id)?,
                tenant: s.tenant.clone(),
                facility: s.facility.clone(),
                contract: s.contract.clone(),
                home_region: s.home_region.clone(),
                origin_jurisdiction: s.origin_jurisdiction.clone(),
                modality: s.modality.clone(),
                body_part: s.body_part.clone(),
                subspecialty: Fields::opt(&s.subspecialty),
                subspecialty_required: s.subspecialty_required,
                priority: f.named("priority", &s.priority, Priority::parse)?,
                requested_priority: match Fields::opt(&s.requested_priority) {
                    Some(p) => f.named("requested_priority", &p, Priority::parse)?,
                    None => f.named("priority", &s.priority, Priority::parse)?,
                },
                service_type: f.named("service_type", &s.service_type, ServiceType::parse)?,
                read_type: f.named("read_type", &s.read_type, ReadType::parse)?,
                patient_key: Fields::opt(&s.patient_key).map(|k| f.uuid("patient_key", &k)).transpose()?,
                rvu_milli: s.rvu_milli,
                ai_flagged: s.ai_flagged,
                completed_at: f.time("completed_at", &s.completed_at)?,
                deadline: f.time("sla_deadline", &s.sla_deadline)?,
                prior_reader: Fields::opt(&s.prior_reader_id),
                escalations: 0,
                widened: BTreeSet::new(),
                assignee: None,
                sequence: s.sequence,
            })
        }
        Payload::StudyAssigned(a) => {
            let f = Fields("StudyAssigned");
            Event::StudyAssigned {
                study: f.uuid("study_id", &a.study_id)?,
                reader: a.reader_id.clone(),
                delivery_model: f.named("delivery_model", &a.delivery_model, DeliveryModel::parse)?,
            }
        }
        Payload::AssignmentClaimed(a) => {
            let f = Fields("AssignmentClaimed");
            Event::AssignmentClaimed {
                study: f.uuid("study_id", &a.study_id)?,
                reader: a.reader_id.clone(),
                delivery_model: f.named("delivery_model", &a.delivery_model, DeliveryModel::parse)?,
            }
        }
        Payload::AssignmentReleased(a) => Event::AssignmentReleased {
            study: Fields("AssignmentReleased").uuid("study_id", &a.study_id)?,
            reader: a.reader_id.clone(),
            reason: a.reason.clone(),
        },
        Payload::AssignmentReassigned(a) => Event::AssignmentReassigned {
            study: Fields("AssignmentReassigned").uuid("study_id", &a.study_id)?,
            from: Fields::opt(&a.from_reader_id),
            to: a.to_reader_id.clone(),
            by_group: a.by_group.clone(),
        },
        Payload::AssignmentEscalated(a) => {
            let f = Fields("AssignmentEscalated");
            Event::AssignmentEscalated {
                study: f.uuid("study_id", &a.study_id)?,
                level: u8::try_from(a.level).map_err(|_| f.err("level", format!("{} is not a level", a.level)))?,
                per_mille: a.sla_fraction_per_mille,
                priority: f.named("new_priority", &a.new_priority, Priority::parse)?,
                widened: a.widened_to.first().map(|m| f.named("widened_to", m, DeliveryModel::parse)).transpose()?,
            }
        }
        Payload::SlaBreached(b) => {
            let f = Fields("SlaBreached");
            Event::SlaBreached {
                study: f.uuid("study_id", &b.study_id)?,
                priority: f.named("priority", &b.priority, Priority::parse)?,
                deadline: f.time("deadline", &b.deadline)?,
                read_type: Fields::opt(&b.read_type).map(|r| f.named("read_type", &r, ReadType::parse)).transpose()?,
                contract: b.contract.clone(),
            }
        }
        Payload::AssignmentCompleted(a) => {
            let f = Fields("AssignmentCompleted");
            Event::AssignmentCompleted {
                study: f.uuid("study_id", &a.study_id)?,
                reader: a.reader_id.clone(),
                read_type: f.named("read_type", &a.read_type, ReadType::parse)?,
                signed_at: f.time("signed_at", &a.signed_at)?,
                group: a.reading_group.clone(),
            }
        }
        Payload::StudyTriaged(t) => {
            let f = Fields("StudyTriaged");
            Event::StudyTriaged {
                study: f.uuid("study_id", &t.study_id)?,
                ai_flagged: t.ai_flagged,
                priority: f.named("priority", &t.priority, Priority::parse)?,
                deadline: t.sla_deadline.as_ref().map(UnixMicros::from_timestamp),
                model: t.model.clone(),
            }
        }
        _ => return Ok(None),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn reader() -> Reader {
        Reader {
            id: "dr-x".into(),
            group: "g".into(),
            region: "us-east".into(),
            time_zone: "America/New_York".into(),
            licences: vec![Licence { jurisdiction: "US-NY".into(), expires: UnixMicros(1_900_000_000_000_000) }],
            credentials: vec![Credential {
                tenant: "acme".into(),
                facility: "f".into(),
                expires: UnixMicros(1_900_000_000_000_000),
            }],
            subspecialties: BTreeSet::from(["neuro".into()]),
            modalities: BTreeSet::from(["CT".into()]),
            read_types: BTreeSet::from([ReadType::Final, ReadType::PeerReview]),
            shifts: vec![Shift { weekday: 6, start_minute: 1_200, end_minute: 480 }],
            capacity: 4,
            availability: Availability::Busy,
        }
    }

    fn study() -> Study {
        Study {
            id: Uuid::from_u128(7),
            tenant: "acme".into(),
            facility: "f".into(),
            contract: "c".into(),
            home_region: "us-east".into(),
            origin_jurisdiction: "US-NY".into(),
            modality: "CT".into(),
            body_part: "HEAD".into(),
            subspecialty: Some("neuro".into()),
            subspecialty_required: true,
            priority: Priority::Urgent,
            requested_priority: Priority::Routine,
            service_type: ServiceType::Hybrid,
            read_type: ReadType::Final,
            patient_key: Some(Uuid::from_u128(9)),
            rvu_milli: 850,
            ai_flagged: true,
            completed_at: UnixMicros(1_800_000_000_000_000),
            deadline: UnixMicros(1_800_007_200_000_000),
            prior_reader: Some("dr-y".into()),
            escalations: 0,
            widened: BTreeSet::new(),
            assignee: None,
            sequence: 42,
        }
    }

    #[test]
    fn every_event_round_trips_through_its_payload() {
        let s = Uuid::from_u128(7);
        let events = vec![
            Event::ReaderRegistered(reader()),
            Event::ReaderUpdated {
                reader: "dr-x".into(),
                profile: Profile {
                    subspecialties: BTreeSet::from(["neuro".into(), "msk".into()]),
                    modalities: BTreeSet::from(["MR".into()]),
                    read_types: BTreeSet::from([ReadType::Secondary]),
                    shifts: vec![Shift { weekday: 1, start_minute: 60, end_minute: 120 }],
                    capacity: 9,
                },
            },
            Event::AvailabilityChanged { reader: "dr-x".into(), availability: Availability::Away },
            Event::LicenceUpdated { reader: "dr-x".into(), licences: reader().licences },
            Event::CredentialUpdated { reader: "dr-x".into(), credentials: reader().credentials },
            Event::StudyQueued(study()),
            Event::StudyAssigned { study: s, reader: "dr-x".into(), delivery_model: DeliveryModel::Offshore },
            Event::AssignmentClaimed { study: s, reader: "dr-x".into(), delivery_model: DeliveryModel::Nearshore },
            Event::AssignmentReleased { study: s, reader: "dr-x".into(), reason: "off shift".into() },
            Event::AssignmentReassigned { study: s, from: None, to: "dr-z".into(), by_group: "g".into() },
            Event::AssignmentEscalated {
                study: s,
                level: 2,
                per_mille: 800,
                priority: Priority::Stat,
                widened: Some(DeliveryModel::Offshore),
            },
            Event::SlaBreached {
                study: s,
                priority: Priority::Stat,
                deadline: UnixMicros(5),
                read_type: Some(ReadType::Final),
                contract: "c".into(),
            },
            Event::AssignmentCompleted {
                study: s,
                reader: "dr-x".into(),
                read_type: ReadType::Preliminary,
                signed_at: UnixMicros(1_800_000_000_000_000),
                group: "g".into(),
            },
            Event::StudyTriaged {
                study: s,
                ai_flagged: true,
                priority: Priority::Stat,
                deadline: Some(UnixMicros(1_800_001_800_000_000)),
                model: "ich-detect@2.1".into(),
            },
            Event::StudyTriaged {
                study: s,
                ai_flagged: false,
                priority: Priority::Urgent,
                deadline: None,
                model: String::new(),
            },
        ];
        for e in events {
            let payload = to_payload(&e);
            // Through the bytes too, as the log carries it.
            let back = Payload::decode(payload.type_name(), 1, &payload.encode_to_vec()).unwrap();
            assert_eq!(from_payload(&back).unwrap(), Some(e.clone()), "{}", payload.type_name());
            assert_eq!(payload.info().writer, "routing");
            assert_eq!(payload.info().aggregate_type, aggregate(&e).0);
        }
    }

    #[test]
    fn a_bad_field_is_named() {
        let mut p = match to_payload(&Event::StudyQueued(study())) {
            Payload::StudyQueued(p) => p,
            _ => unreachable!(),
        };
        p.priority = "asap".into();
        let err = from_payload(&Payload::StudyQueued(p)).unwrap_err();
        assert_eq!(err.to_string(), r#"StudyQueued.priority: "asap" is not a known value"#);
        assert_eq!(from_payload(&Payload::StudyStarted(Default::default())).unwrap(), None);
    }
}
