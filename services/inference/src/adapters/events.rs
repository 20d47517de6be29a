//! Ingest's payloads and inference's own as the facts inference folds; its
//! outcomes as payloads.

use meridian_events::payload::Payload;
use meridian_events::{EventId, UnixMicros};
use meridian_proto::events::v1 as pb;
use uuid::Uuid;

pub use meridian_projection::unreadable::{Unreadable, uuid};

use crate::domain::model::{Completion, Fact, Instance, Summary, Update, input_digest};

/// The fact of an event inference folds (`None` for the rest); `cause` is
/// its envelope's causation.
pub fn fact(
    payload: &Payload,
    event_id: EventId,
    cause: Option<EventId>,
    tenant: &str,
    at: UnixMicros,
) -> Result<Option<Fact>, Unreadable> {
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
                facility: c.facility.clone(),
                contract: c.contract.clone(),
                modality: c.modality.clone(),
                body_part: c.body_part.clone(),
                instance_count: c.instance_count,
                completed_at: c.completed_at.as_ref().map_or(at, UnixMicros::from_timestamp),
            },
        },
        Payload::StudyUpdated(u) => Fact::Updated {
            study: uuid("StudyUpdated", "study_id", &u.study_id)?,
            update: Update { cause: event_id, instance_count: u.instance_count },
            at,
        },
        Payload::AiTriageScored(t) => Fact::Scored {
            study: uuid("AiTriageScored", "study_id", &t.study_id)?,
            model: t.model.clone(),
            cause,
            scores: t.scores.iter().map(|s| (s.output.clone(), s.score)).collect(),
            at,
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
                cause,
                input_digest: t.input_digest.clone(),
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
                cause,
                input_digest: t.input_digest.clone(),
                ..Summary::default()
            },
        },
        Payload::ModelDriftDetected(d) => Fact::Drifted { model: d.model.clone(), outcomes: d.outcomes },
        Payload::ModelEnabled(m) => Fact::Switched { model: m.model.clone(), enabled: true },
        Payload::ModelDisabled(m) => Fact::Switched { model: m.model.clone(), enabled: false },
        _ => return Ok(None),
    }))
}

/// What a model's read of a study came to: each answers `cause` (the
/// StudyCompleted, or a rerun's StudyUpdated) and says what it read.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Completed {
        study: Uuid,
        model: String,
        cause: EventId,
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
        cause: EventId,
        reason: &'static str,
        detail: String,
        /// What it meant to read (empty: nothing chosen).
        input_digest: String,
    },
}

impl Outcome {
    pub fn study(&self) -> Uuid {
        match self {
            Outcome::Completed { study, .. } | Outcome::Failed { study, .. } => *study,
        }
    }

    pub fn model(&self) -> &str {
        match self {
            Outcome::Completed { model, .. } | Outcome::Failed { model, .. } => model,
        }
    }

    pub fn cause(&self) -> EventId {
        match self {
            Outcome::Completed { cause, .. } | Outcome::Failed { cause, .. } => *cause,
        }
    }
}

/// The payloads of an outcome: AiTriageScored (PHI) then AiTriageCompleted,
/// or AiTriageFailed.
pub fn payloads(outcome: &Outcome) -> Vec<Payload> {
    match outcome {
        Outcome::Completed { study, model, flagged, suggested, findings, latency_ms, scores, instances, .. } => vec![
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
                input_digest: input_digest(instances),
            }),
        ],
        Outcome::Failed { study, model, reason, detail, input_digest, .. } => {
            vec![Payload::AiTriageFailed(pb::AiTriageFailed {
                study_id: study.to_string(),
                model: model.clone(),
                reason: (*reason).to_owned(),
                detail: detail.clone(),
                input_digest: input_digest.clone(),
            })]
        }
    }
}
