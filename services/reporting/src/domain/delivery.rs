//! Deliveries: each signature or amendment of a report is requested for
//! every receiver the tenant names for that read (in the same append as
//! the signature, so a signed report is never left unrequested); a worker
//! sends what is due and records the answer. Delivered requests leave the
//! state; failed ones wait their backoff, or, refused for good, stay in the
//! dead-letter view until redelivered.

use std::collections::BTreeMap;

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A tenant's receiver, as reporting decides by it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    /// "fhir" or "hl7_mllp".
    pub kind: String,
    /// The reads it takes; all when empty.
    pub read_types: Vec<String>,
}

/// What reporting decides by from the configuration: the enabled
/// receivers of each tenant, each contract's peer review sample and report
/// language, and the report templates.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
    pub samples: BTreeMap<String, super::peer_review::Sample>,
    /// Contract → BCP 47 language its reports are written in ("en" when
    /// not named).
    pub languages: BTreeMap<String, String>,
    pub templates: Vec<super::template::Template>,
}

impl Policy {
    /// The language of reports under `contract`.
    pub fn language(&self, contract: &str) -> &str {
        self.languages.get(contract).map_or("en", String::as_str)
    }
}

/// Where a request stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Standing {
    /// To be sent at or after this time.
    Due(UnixMicros),
    /// Refused for good (an ACK's AR, an HTTP 4xx): why.
    Dead(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: Uuid,
    pub study: Uuid,
    pub report: Uuid,
    pub read_type: String,
    pub endpoint: String,
    pub kind: String,
    /// The report's status to send.
    pub status: String,
    pub requested_at: UnixMicros,
    /// Attempts made so far.
    pub attempts: u32,
    pub standing: Standing,
    /// The last failure's reason.
    #[serde(default)]
    pub last_error: String,
    /// The request this one sends again (a redelivery), which it replaces.
    #[serde(default)]
    pub supersedes: Option<Uuid>,
}

/// A request to send `d`'s report again (a dead letter, or one still
/// trying), replacing it: a new id, the attempts from zero, due `now`.
pub fn redeliver(d: &Delivery, now: UnixMicros) -> Delivery {
    let id = meridian_events::id::aggregate_id(
        "reporting.delivery.again",
        &[d.id.as_bytes(), &d.attempts.to_be_bytes(), &now.0.to_be_bytes()],
    );
    Delivery {
        id,
        requested_at: now,
        attempts: 0,
        standing: Standing::Due(now),
        last_error: String::new(),
        supersedes: Some(d.id),
        ..d.clone()
    }
}

/// The id of the request to send `report` to `endpoint` after `what`
/// ("signed", "addendum", …) of `version`.
pub fn delivery_id(report: Uuid, what: &str, version: u32, endpoint: &str) -> Uuid {
    meridian_events::id::aggregate_id(
        "reporting.delivery",
        &[report.as_bytes(), what.as_bytes(), &version.to_be_bytes(), endpoint.as_bytes()],
    )
}

/// How long after failed attempt `attempt` (from 1) the next is due:
/// 2, 4, 8 … seconds, at most five minutes.
pub fn backoff(attempt: u32) -> i64 {
    let seconds = 1i64 << attempt.clamp(1, 9);
    seconds.min(300) * 1_000_000
}

/// The requests due at `now`, oldest first, at most `limit`.
pub fn due(deliveries: &BTreeMap<Uuid, Delivery>, now: UnixMicros, limit: usize) -> Vec<Delivery> {
    let mut due: Vec<&Delivery> =
        deliveries.values().filter(|d| matches!(d.standing, Standing::Due(at) if at <= now)).collect();
    due.sort_by_key(|d| (d.requested_at, d.id));
    due.into_iter().take(limit).cloned().collect()
}

/// What a send came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver took it: its answer (MSA-1 AA, HTTP 200/201).
    Delivered(String),
    /// It did not: why, and whether to try again.
    Failed { error: String, permanent: bool },
}
