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
    /// The contract ingest chose for the study at its first instance.
    pub contract: String,
    /// Why no contract takes it, when ingest found none.
    pub unroutable_reason: String,
}

/// Why a completed study is not queued: it is kept as unroutable, with this.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    #[error("{0}")]
    NoContractTakes(String),
    #[error("contract {contract} is not configured here")]
    UnknownContract { contract: String },
    #[error("tenant {tenant} has no contract")]
    NoContract { tenant: String },
    #[error(
        "completed before contracts were chosen per study, and tenant {tenant} has {count} contracts: \
         which one takes it is not known"
    )]
    Ambiguous { tenant: String, count: usize },
}

/// The worklist entry for a completed study: the contract ingest chose for
/// it (for a study completed before ingest chose, the tenant's only
/// contract), the first read the contract provides (a preliminary where
/// it has them, else the final), the subspecialty the catalogue prefers
/// (required when the contract says so), the service the contract names,
/// the procedure's work RVUs, and the order's priority (routine when it
/// gave none).
pub fn queue(policy: &Policy, c: &Completed) -> Result<NewStudy, Skip> {
    if !c.unroutable_reason.is_empty() {
        return Err(Skip::NoContractTakes(c.unroutable_reason.clone()));
    }
    let contract = if c.contract.is_empty() {
        let mut of_tenant = policy.contracts.values().filter(|k| k.tenant == c.tenant);
        match (of_tenant.next(), of_tenant.count()) {
            (None, _) => return Err(Skip::NoContract { tenant: c.tenant.clone() }),
            (Some(only), 0) => only,
            (Some(_), more) => return Err(Skip::Ambiguous { tenant: c.tenant.clone(), count: more + 1 }),
        }
    } else {
        policy.contracts.get(&c.contract).ok_or_else(|| Skip::UnknownContract { contract: c.contract.clone() })?
    };
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
    let service_type = contract.service.unwrap_or(if priority == Priority::Stat {
        ServiceType::RealTime
    } else {
        ServiceType::StoreAndForward
    });
    Ok(NewStudy {
        id: c.study,
        tenant: c.tenant.clone(),
        facility: c.facility.clone(),
        contract: contract.name.clone(),
        home_region: c.home_region.clone(),
        origin_jurisdiction: c.origin_jurisdiction.clone(),
        modality: c.modality.clone(),
        body_part: c.body_part.clone(),
        subspecialty_required: contract.subspecialty_required && subspecialty.is_some(),
        subspecialty,
        priority,
        service_type,
        read_type,
        patient_key: c.patient_key,
        rvu_milli: policy.rvu_milli.get(&c.procedure_code).copied().unwrap_or(0),
        ai_flagged: false,
        completed_at: c.completed_at,
        prior_reader: None,
        due: None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::domain::policy::{AssignmentMode, ContractPolicy, SubspecialtyRule};

    fn contract(name: &str, service: Option<ServiceType>, subspecialty_required: bool) -> (String, ContractPolicy) {
        let c = ContractPolicy {
            name: name.into(),
            tenant: "acme".into(),
            groups: BTreeSet::from(["g".to_string()]),
            mode: AssignmentMode::Pull,
            delivery: BTreeMap::new(),
            sla_seconds: BTreeMap::new(),
            escalation_per_mille: Vec::new(),
            service,
            subspecialty_required,
            language: "en".into(),
        };
        (name.to_owned(), c)
    }

    fn completed(contract: &str, reason: &str) -> Completed {
        Completed {
            study: Uuid::from_u128(1),
            tenant: "acme".into(),
            home_region: "us-east".into(),
            facility: "f".into(),
            origin_jurisdiction: "US-NY".into(),
            modality: "CT".into(),
            body_part: "HEAD".into(),
            patient_key: None,
            procedure_code: String::new(),
            requested_priority: Some(Priority::Urgent),
            completed_at: UnixMicros(0),
            contract: contract.into(),
            unroutable_reason: reason.into(),
        }
    }

    #[test]
    fn a_study_goes_to_the_contract_ingest_chose_with_its_service_and_subspecialty_rule() {
        let policy = Policy {
            contracts: BTreeMap::from([
                contract("day", None, false),
                contract("stroke", Some(ServiceType::Hybrid), true),
            ]),
            subspecialty_rules: vec![SubspecialtyRule {
                modality: "CT".into(),
                body_part: Some("HEAD".into()),
                subspecialty: "neuro".into(),
            }],
            ..Default::default()
        };
        let day = queue(&policy, &completed("day", "")).unwrap();
        assert_eq!(
            (day.contract.as_str(), day.service_type, day.subspecialty_required),
            ("day", ServiceType::StoreAndForward, false)
        );
        let stroke = queue(&policy, &completed("stroke", "")).unwrap();
        assert_eq!(
            (stroke.contract.as_str(), stroke.service_type, stroke.subspecialty_required),
            ("stroke", ServiceType::Hybrid, true),
            "hybrid service and a required subspecialty come from the contract"
        );
        let no_rule = Completed { modality: "XA".into(), ..completed("stroke", "") };
        assert!(!queue(&policy, &no_rule).unwrap().subspecialty_required, "nothing to require without a subspecialty");

        let none = queue(&policy, &completed("", "no contract of tenant acme takes it")).unwrap_err();
        assert_eq!(none.to_string(), "no contract of tenant acme takes it");
        let gone = queue(&policy, &completed("retired", "")).unwrap_err();
        assert_eq!(gone, Skip::UnknownContract { contract: "retired".into() });
        // Recorded before ingest chose: the only contract, or none when several could.
        assert_eq!(
            queue(&policy, &completed("", "")).unwrap_err(),
            Skip::Ambiguous { tenant: "acme".into(), count: 2 }
        );
        let one = Policy { contracts: BTreeMap::from([contract("day", None, false)]), ..Default::default() };
        assert_eq!(queue(&one, &completed("", "")).unwrap().contract, "day");
    }
}
