//! The audit trail as IHE ATNA audit messages (DICOM PS3.15 A.5, the
//! RFC 3881 shape): EventIdentification, ActiveParticipant,
//! AuditSourceIdentification and ParticipantObjectIdentification, as JSON
//! for a security team's SIEM. Participants are named by Meridian's opaque
//! ids, never by a DICOM UID or a patient's id.

use meridian_events::Envelope;
use meridian_events::payload::Payload;
use serde_json::{Value, json};

fn code(code: &str, system: &str, text: &str) -> Value {
    json!({ "csd-code": code, "codeSystemName": system, "originalText": text })
}

fn dcm(code_value: &str, text: &str) -> Value {
    code(code_value, "DCM", text)
}

/// An address without its port (NetworkAccessPointTypeCode 2: an IP address).
fn address(point: &str) -> &str {
    match point.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.ends_with(':') => {
            host.trim_start_matches('[').trim_end_matches(']')
        }
        _ => point,
    }
}

fn requestor(user: &str, kind: &str, point: &str) -> Value {
    let mut p = json!({
        "UserID": if user.is_empty() { "(not established)" } else { user },
        "UserIsRequestor": true,
        "RoleIDCode": [code(kind, "Meridian principal kind", kind)],
    });
    if !point.is_empty() {
        p["NetworkAccessPointID"] = address(point).into();
        p["NetworkAccessPointTypeCode"] = "2".into();
    }
    p
}

fn application(region: &str) -> Value {
    json!({
        "UserID": format!("meridian/{region}"),
        "UserIsRequestor": false,
        "RoleIDCode": [dcm("110153", "Source Role ID")],
    })
}

/// The audit message of an event of the audit topic, or None for an
/// event that is not an audit record.
pub fn message(envelope: &Envelope, payload: &Payload) -> Option<Value> {
    let meta = &envelope.meta;
    let when = jiff::Timestamp::from_microsecond(meta.occurred_at.0).map(|t| t.to_string()).unwrap_or_default();
    let region = meta.home_region.as_str();
    let (event_id, action_code, outcome, type_code, participants, objects) = match payload {
        Payload::PhiAccessed(a) => {
            let query = a.action.contains("qido") || a.action.contains("search") || a.action.contains("list");
            let event = if query { dcm("110112", "Query") } else { dcm("110103", "DICOM Instances Accessed") };
            let details: Vec<Value> = a.instance_ids.iter().map(|id| json!({ "type": "item", "value": id })).collect();
            let study = json!({
                "ParticipantObjectID": a.study_id,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectTypeCodeRole": "3",
                "ParticipantObjectIDTypeCode": code("study", "Meridian opaque id", "Meridian study id"),
                "ParticipantObjectDetail": details,
            });
            let user = requestor(&a.principal, &a.principal_kind, "");
            (event, if query { "E" } else { "R" }, "0", Some(a.action.as_str()), vec![user], vec![study])
        }
        Payload::AccessDenied(d) => {
            let authentication = matches!(d.action.as_str(), "authenticate" | "associate");
            let event =
                if authentication { dcm("110114", "User Authentication") } else { dcm("110113", "Security Alert") };
            let mut objects = Vec::new();
            if !d.resource.is_empty() {
                objects.push(json!({
                    "ParticipantObjectID": d.resource,
                    "ParticipantObjectTypeCode": "2",
                    "ParticipantObjectIDTypeCode": code(&d.resource_kind, "Meridian resource kind", &d.resource_kind),
                    "ParticipantObjectDetail": [
                        { "type": "code", "value": d.code },
                        { "type": "reason", "value": d.reason },
                    ],
                }));
            }
            let user = requestor(&d.principal, &d.principal_kind, &d.network_access_point);
            // 4: minor failure — the call was refused, nothing was done.
            (event, "E", "4", Some(d.action.as_str()), vec![user], objects)
        }
        Payload::ConfigurationLoaded(c) => {
            let configuration = json!({
                "ParticipantObjectID": c.digest,
                "ParticipantObjectTypeCode": "2",
                "ParticipantObjectIDTypeCode": code("configuration", "Meridian", "configuration directory SHA-256"),
                "ParticipantObjectDetail": [
                    { "type": "files", "value": c.files.to_string() },
                    { "type": "process", "value": c.process },
                ],
            });
            (dcm("110100", "Application Activity"), "E", "0", Some("application start"), vec![], vec![configuration])
        }
        _ => return None,
    };
    let mut identification = json!({
        "EventID": event_id,
        "EventActionCode": action_code,
        "EventDateTime": when,
        "EventOutcomeIndicator": outcome,
    });
    if let Some(t) = type_code {
        let code_value = if matches!(payload, Payload::ConfigurationLoaded(_)) { "110120" } else { t };
        let system = if code_value == "110120" { "DCM" } else { "Meridian action" };
        identification["EventTypeCode"] = json!([code(code_value, system, t)]);
    }
    let mut active = participants;
    active.push(application(region));
    Some(json!({
        "EventIdentification": identification,
        "ActiveParticipant": active,
        "AuditSourceIdentification": {
            "AuditSourceID": format!("meridian/{region}"),
            "AuditEnterpriseSiteID": meta.tenant,
            "AuditSourceTypeCode": [code("4", "RFC-3881", "Application Server Process")],
        },
        "ParticipantObjectIdentification": objects,
        "MeridianEventID": meta.event_id.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use meridian_events::{EventId, EventMeta, UnixMicros};
    use meridian_proto::events::v1 as pb;
    use uuid::Uuid;

    use super::*;

    fn envelope(payload: &Payload, tenant: &str) -> Envelope {
        let event_id = EventId::new_at(UnixMicros(1_764_700_000_000_000));
        let meta = EventMeta {
            event_id,
            aggregate_type: payload.info().aggregate_type.into(),
            aggregate_id: event_id.as_uuid(),
            aggregate_version: 1,
            tenant: tenant.into(),
            home_region: "us-east".into(),
            occurred_at: UnixMicros(1_764_700_000_000_000),
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        };
        payload.plain_envelope(meta).unwrap()
    }

    #[test]
    fn an_access_a_refusal_and_a_start_are_atna_messages_with_opaque_ids() {
        let study = Uuid::from_u128(7).to_string();
        let read = Payload::PhiAccessed(pb::PhiAccessed {
            study_id: study.clone(),
            principal: "dr-nair".into(),
            principal_kind: "group".into(),
            from_region: "us-east".into(),
            action: "wado-rs.retrieve".into(),
            instance_ids: vec!["i-1".into()],
        });
        let m = message(&envelope(&read, "acme"), &read).unwrap();
        assert_eq!(m["EventIdentification"]["EventID"]["csd-code"], "110103");
        assert_eq!(m["EventIdentification"]["EventActionCode"], "R");
        assert_eq!(m["EventIdentification"]["EventDateTime"], "2025-12-02T18:26:40Z");
        assert_eq!(m["ActiveParticipant"][0]["UserID"], "dr-nair");
        assert_eq!(m["ActiveParticipant"][1]["UserID"], "meridian/us-east");
        assert_eq!(m["ParticipantObjectIdentification"][0]["ParticipantObjectID"], study);
        assert_eq!(m["AuditSourceIdentification"]["AuditEnterpriseSiteID"], "acme");

        let refused = Payload::AccessDenied(pb::AccessDenied {
            principal: String::new(),
            principal_kind: "anonymous".into(),
            action: "authenticate".into(),
            resource_kind: "region".into(),
            code: "TOKEN_EXPIRED".into(),
            reason: "the token expired".into(),
            network_access_point: "[::1]:5000".into(),
            region: "us-east".into(),
            ..Default::default()
        });
        let m = message(&envelope(&refused, "platform"), &refused).unwrap();
        assert_eq!(m["EventIdentification"]["EventID"]["csd-code"], "110114");
        assert_eq!(m["EventIdentification"]["EventOutcomeIndicator"], "4");
        assert_eq!(m["ActiveParticipant"][0]["NetworkAccessPointID"], "::1");
        assert_eq!(m["ParticipantObjectIdentification"].as_array().unwrap().len(), 0);

        let started = Payload::ConfigurationLoaded(pb::ConfigurationLoaded {
            digest: "ab".repeat(32),
            files: 12,
            process: "dev".into(),
            region: "us-east".into(),
        });
        let m = message(&envelope(&started, "platform"), &started).unwrap();
        assert_eq!(m["EventIdentification"]["EventTypeCode"][0]["csd-code"], "110120");
        assert_eq!(m["ParticipantObjectIdentification"][0]["ParticipantObjectID"], "ab".repeat(32));
        assert_eq!(address("10.1.2.3:4"), "10.1.2.3");
        assert_eq!(address("10.1.2.3"), "10.1.2.3");
    }
}
