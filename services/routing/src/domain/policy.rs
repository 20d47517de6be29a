//! What routing decides with besides its own state: contracts and the
//! region topology, taken from configuration.

use std::collections::{BTreeMap, BTreeSet};

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};

use super::model::{DeliveryModel, Priority, ReadType, Reader, ServiceType, Study};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AssignmentMode {
    /// The engine assigns the best eligible reader.
    Push,
    /// Eligible readers claim from a shared worklist.
    Pull,
}

/// A contract as routing uses it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContractPolicy {
    pub name: String,
    pub tenant: String,
    pub groups: BTreeSet<String>,
    pub mode: AssignmentMode,
    /// Read type → the delivery models the contract allows for it.
    pub delivery: BTreeMap<ReadType, BTreeSet<DeliveryModel>>,
    /// Priority → turnaround in seconds (study completed → report signed).
    pub sla_seconds: BTreeMap<Priority, u64>,
    /// Fractions of the SLA, in per mille, at which an unread study escalates.
    pub escalation_per_mille: Vec<u32>,
    /// How its studies are served; `None`: real time for STAT, store and
    /// forward otherwise.
    #[serde(default)]
    pub service: Option<ServiceType>,
    /// Only readers of a study's subspecialty may read it.
    #[serde(default)]
    pub subspecialty_required: bool,
    /// The language its reports are written in (BCP 47): shown beside
    /// each study so a reader knows before claiming.
    #[serde(default)]
    pub language: String,
}

impl ContractPolicy {
    pub fn allowed(&self, read_type: ReadType) -> BTreeSet<DeliveryModel> {
        self.delivery.get(&read_type).cloned().unwrap_or_default()
    }

    /// When a read of `priority` that starts its clock at `from` is due.
    /// A priority the contract gives no turnaround is due at once.
    pub fn deadline(&self, priority: Priority, from: UnixMicros) -> UnixMicros {
        let seconds = self.sla_seconds.get(&priority).copied().unwrap_or(0);
        UnixMicros(from.0.saturating_add(i64::try_from(seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000)))
    }

    /// The delivery models offered when a study arrives: all the contract
    /// allows, except for hybrid service, which starts local (onshore) and
    /// widens by escalation.
    pub fn first_offered(&self, read_type: ReadType, service: ServiceType) -> BTreeSet<DeliveryModel> {
        let allowed = self.allowed(read_type);
        match service {
            ServiceType::Hybrid => allowed.into_iter().filter(|m| *m == DeliveryModel::Onshore).collect(),
            _ => allowed,
        }
    }

    /// What escalation level `level` (1-based) adds, as the contract
    /// allows: nearshore first, then offshore.
    pub fn widening(&self, read_type: ReadType, level: u8) -> Option<DeliveryModel> {
        let allowed = self.allowed(read_type);
        let next = match level {
            1 => DeliveryModel::Nearshore,
            _ => DeliveryModel::Offshore,
        };
        allowed.contains(&next).then_some(next)
    }
}

/// A region as routing needs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// ISO 3166-1 country: onshore means the same country.
    pub country: String,
    pub nearshore: BTreeSet<String>,
}

/// Modality (and body part) → subspecialty; first match wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubspecialtyRule {
    pub modality: String,
    pub body_part: Option<String>,
    pub subspecialty: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub contracts: BTreeMap<String, ContractPolicy>,
    pub regions: BTreeMap<String, RegionInfo>,
    #[serde(default)]
    pub subspecialty_rules: Vec<SubspecialtyRule>,
    /// Procedure code → work RVU in thousandths.
    #[serde(default)]
    pub rvu_milli: BTreeMap<String, u32>,
}

impl Policy {
    /// Where `reader` sits relative to `study`: onshore when the reader's
    /// region is in the patient's country, nearshore when the study's home
    /// region lists the reader's region as near, offshore otherwise.
    pub fn delivery_model(&self, reader: &Reader, study: &Study) -> DeliveryModel {
        self.delivery_model_from(reader, country(&study.origin_jurisdiction), &study.home_region)
    }

    /// `delivery_model` for a study from `patient_country`, held in `home_region`.
    pub fn delivery_model_from(&self, reader: &Reader, patient_country: &str, home_region: &str) -> DeliveryModel {
        match self.regions.get(&reader.region) {
            Some(r) if r.country == patient_country => DeliveryModel::Onshore,
            _ if self.regions.get(home_region).is_some_and(|h| h.nearshore.contains(&reader.region)) => {
                DeliveryModel::Nearshore
            }
            _ => DeliveryModel::Offshore,
        }
    }

    /// Whether a study is offered to readers of delivery model `model` now:
    /// `offered(study).contains(model)`, without building the set (it is
    /// asked once per candidate study of every query).
    pub fn offers(&self, study: &Study, model: DeliveryModel) -> bool {
        self.offers_to(&study.contract, study.read_type, study.service_type, &study.widened, model)
    }

    /// `offers` for a study of `contract`, read type, service and widening.
    pub fn offers_to(
        &self,
        contract: &str,
        read_type: ReadType,
        service: ServiceType,
        widened: &BTreeSet<DeliveryModel>,
        model: DeliveryModel,
    ) -> bool {
        let Some(contract) = self.contracts.get(contract) else { return false };
        contract.delivery.get(&read_type).is_some_and(|allowed| allowed.contains(&model))
            && (service != ServiceType::Hybrid || model == DeliveryModel::Onshore || widened.contains(&model))
    }

    /// The delivery models a study is offered to now.
    pub fn offered(&self, study: &Study) -> BTreeSet<DeliveryModel> {
        let Some(contract) = self.contracts.get(&study.contract) else { return BTreeSet::new() };
        let allowed = contract.allowed(study.read_type);
        let mut offered = contract.first_offered(study.read_type, study.service_type);
        offered.extend(study.widened.iter().filter(|m| allowed.contains(m)));
        offered
    }
}

/// The ISO 3166-1 country of an ISO 3166-2 jurisdiction ("US-NY" → "US").
pub fn country(jurisdiction: &str) -> &str {
    jurisdiction.split('-').next().unwrap_or_default()
}
