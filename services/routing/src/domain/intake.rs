//! What routing queues when a study is completed: decided from the event
//! and the policy alone.

use meridian_events::UnixMicros;
use uuid::Uuid;

use super::model::{Priority, ReadType, ServiceType};
use super::policy::Policy;
use super::worklist::NewStudy;

/// A completed study, as ingest reports it (no PHI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completed {
    pub study: Uuid,
    pub tenant: String,
    pub home_region: String,
    pub facility: String,
    pub origin_jurisdiction: String,
    pub modality: String,
    pub body_part: String,
    pub patient_key: Option<Uuid>,
    pub procedure_code: String,
    pub requested_priority: Option<Priority>,
    pub completed_at: UnixMicros,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("tenant {tenant} has no contract: study {study} cannot be routed")]
    NoContract { tenant: String, study: Uuid },
}

/// The worklist entry for a completed study: the tenant's contract (the
/// first by name when there are several), the first read the contract
/// provides (a preliminary where it has them, else the final), the
/// subspecialty the catalogue prefers, the procedure's work RVUs, and the
/// order's priority (routine when it gave none).
pub fn queue(policy: &Policy, c: &Completed) -> Result<NewStudy, Skip> {
    let contract = policy
        .contracts
        .values()
        .find(|k| k.tenant == c.tenant)
        .ok_or_else(|| Skip::NoContract { tenant: c.tenant.clone(), study: c.study })?;
    let read_type = if contract.delivery.get(&ReadType::Preliminary).is_some_and(|m| !m.is_empty()) {
        ReadType::Preliminary
    } else {
        ReadType::Final
    };
    let subspecialty = policy
        .subspecialty_rules
        .iter()
        .find(|r| r.modality == c.modality && r.body_part.as_ref().is_none_or(|b| *b == c.body_part))
        .map(|r| r.subspecialty.clone());
    let priority = c.requested_priority.unwrap_or(Priority::Routine);
    Ok(NewStudy {
        id: c.study,
        tenant: c.tenant.clone(),
        facility: c.facility.clone(),
        contract: contract.name.clone(),
        home_region: c.home_region.clone(),
        origin_jurisdiction: c.origin_jurisdiction.clone(),
        modality: c.modality.clone(),
        body_part: c.body_part.clone(),
        subspecialty,
        subspecialty_required: false,
        priority,
        service_type: if priority == Priority::Stat { ServiceType::RealTime } else { ServiceType::StoreAndForward },
        read_type,
        patient_key: c.patient_key,
        rvu_milli: policy.rvu_milli.get(&c.procedure_code).copied().unwrap_or(0),
        ai_flagged: false,
        completed_at: c.completed_at,
        prior_reader: None,
    })
}
