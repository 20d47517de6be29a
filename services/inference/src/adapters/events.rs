//! Ingest's payloads and inference's own as the facts inference folds; its
//! outcomes as payloads.

use meridian_events::payload::Payload;
use meridian_events::{EventId, UnixMicros};
use meridian_proto::events::v1 as pb;
use uuid::Uuid;

pub use meridian_projection::unreadable::{Unreadable, uuid};

use crate::domain::model::{Completion, Fact, Instance, Summary};

/// The fact of an event inference folds (`None` for the rest).
pub fn fact(payload: &Payload, event_id: EventId, tenant: &str, at: UnixMicros) -> Result<Option<Fact>, Unreadable> {
    Ok(Some(match payload {
        Payload::InstanceReceived(i) => Fact::Instance {
            study: uuid("InstanceReceived", "study_id", &i.study_id)?,
            instance: Instance {
                id: uuid("InstanceReceived", "instance_id", &i.instance_id)?,
                series: uuid("InstanceReceived", "series_id", &i.series_id)?,
                object_key: i.object_key.clone(),
                transfer_syntax: i.transfer_syntax_uid.clone(),
                modality: i.modality.clone(),
                body_part: i.body_part.clone(),
            },
            at,
        },
        Payload::StudyCompleted(c) => Fact::Completed {
            study: uuid("StudyCompleted", "study_id", &c.study_id)?,
            completion: Completion {
                cause: event_id,
                tenant: tenant.to_owned(),
                contract: c.contract.clone(),
                modality: c.modality.clone(),
                body_part: c.body_part.clone(),
                instance_count: c.instance_count,
                completed_at: c.completed_at.as_ref().map_or(at, UnixMicros::from_timestamp),
            },
        },
        Payload::AiTriageCompleted(t) => Fact::Read {
            at,
            study: uuid("AiTriageCompleted", "study_id", &t.study_id)?,
            summary: Summary {
                tenant: tenant.to_owned(),
                model: t.model.clone(),
                outcome: "completed".into(),
                flagged: t.flagged,
                suggested: t.suggested_priority.clone(),
                findings: t.findings.clone(),
                latency_ms: t.latency_ms,
                instances_used: t.instances_used,
                ..Summary::default()
            },
        },
        Payload::AiTriageFailed(t) => Fact::Read {
            at,
            study: uuid("AiTriageFailed", "study_id", &t.study_id)?,
            summary: Summary {
                tenant: tenant.to_owned(),
                model: t.model.clone(),
                outcome: "failed".into(),
                reason: t.reason.clone(),
                detail: t.detail.clone(),
                ..Summary::default()
            },
        },
        Payload::ModelDriftDetected(d) => Fact::Drifted { model: d.model.clone(), outcomes: d.outcomes },
        Payload::ModelEnabled(m) => Fact::Switched { model: m.model.clone(), enabled: true },
        Payload::ModelDisabled(m) => Fact::Switched { model: m.model.clone(), enabled: false },
        _ => return Ok(None),
    }))
}

/// What a model's read of a study came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Completed {
        study: Uuid,
        model: String,
        flagged: bool,
        suggested: Option<String>,
        findings: Vec<String>,
        latency_ms: u32,
        /// Output → (its highest score, its threshold).
        scores: Vec<(String, f32, f32)>,
        instances: Vec<Uuid>,
    },
    Failed {
        study: Uuid,
        model: String,
        reason: &'static str,
        detail: String,
    },
}

/// The payloads of an outcome: AiTriageScored (PHI) then AiTriageCompleted,
/// or AiTriageFailed.
pub fn payloads(outcome: &Outcome) -> Vec<Payload> {
    match outcome {
        Outcome::Completed { study, model, flagged, suggested, findings, latency_ms, scores, instances } => vec![
            Payload::AiTriageScored(pb::AiTriageScored {
                study_id: study.to_string(),
                model: model.clone(),
                scores: scores
                    .iter()
                    .map(|(output, score, threshold)| pb::AiScore {
                        output: output.clone(),
                        score: *score,
                        threshold: *threshold,
                    })
                    .collect(),
                instance_ids: instances.iter().map(Uuid::to_string).collect(),
            }),
            Payload::AiTriageCompleted(pb::AiTriageCompleted {
                study_id: study.to_string(),
                model: model.clone(),
                flagged: *flagged,
                suggested_priority: suggested.clone().unwrap_or_default(),
                latency_ms: *latency_ms,
                instances_used: u32::try_from(instances.len()).unwrap_or(u32::MAX),
                findings: findings.clone(),
            }),
        ],
        Outcome::Failed { study, model, reason, detail } => vec![Payload::AiTriageFailed(pb::AiTriageFailed {
            study_id: study.to_string(),
            model: model.clone(),
            reason: (*reason).to_owned(),
            detail: detail.clone(),
        })],
    }
}
