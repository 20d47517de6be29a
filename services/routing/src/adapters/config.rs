//! Routing's policy from the platform configuration.

use std::collections::{BTreeMap, BTreeSet};

use meridian_config as cfg;

use crate::domain::model::{DeliveryModel, Priority, ReadType};
use crate::domain::policy::{AssignmentMode, ContractPolicy, Policy, RegionInfo, SubspecialtyRule};

fn read_type(t: cfg::ReadType) -> ReadType {
    match t {
        cfg::ReadType::Preliminary => ReadType::Preliminary,
        cfg::ReadType::Final => ReadType::Final,
        cfg::ReadType::Secondary => ReadType::Secondary,
        cfg::ReadType::PeerReview => ReadType::PeerReview,
    }
}

fn delivery(m: cfg::DeliveryModel) -> DeliveryModel {
    match m {
        cfg::DeliveryModel::Onshore => DeliveryModel::Onshore,
        cfg::DeliveryModel::Nearshore => DeliveryModel::Nearshore,
        cfg::DeliveryModel::Offshore => DeliveryModel::Offshore,
    }
}

fn priority(p: cfg::Priority) -> Priority {
    match p {
        cfg::Priority::Stat => Priority::Stat,
        cfg::Priority::Urgent => Priority::Urgent,
        cfg::Priority::Routine => Priority::Routine,
    }
}

/// Contracts and the region topology, as routing decides with them.
pub fn policy(platform: &cfg::Platform) -> Policy {
    let contracts = platform
        .contracts
        .values()
        .map(|c| {
            let policy = ContractPolicy {
                name: c.name.clone(),
                tenant: c.tenant.clone(),
                groups: c.reading_groups.iter().cloned().collect(),
                mode: match c.assignment {
                    cfg::AssignmentMode::Push => AssignmentMode::Push,
                    cfg::AssignmentMode::Pull => AssignmentMode::Pull,
                },
                delivery: c
                    .delivery
                    .iter()
                    .map(|(t, ms)| (read_type(*t), ms.iter().map(|m| delivery(*m)).collect::<BTreeSet<_>>()))
                    .collect::<BTreeMap<_, _>>(),
                sla_seconds: c.sla.iter().map(|(p, s)| (priority(*p), s.turnaround.seconds)).collect(),
                escalation_per_mille: c.escalation_fractions.iter().map(|f| (f * 1_000.0).round() as u32).collect(),
            };
            (c.name.clone(), policy)
        })
        .collect();
    let regions = platform
        .regions
        .values()
        .map(|r| {
            (
                r.name.clone(),
                RegionInfo { country: r.country.0.clone(), nearshore: r.nearshore.iter().cloned().collect() },
            )
        })
        .collect();
    let subspecialty_rules = platform
        .subspecialties
        .rules
        .iter()
        .map(|r| SubspecialtyRule {
            modality: r.modality.clone(),
            body_part: r.body_part.clone(),
            subspecialty: r.subspecialty.clone(),
        })
        .collect();
    let rvu_milli = platform.rvus.work_rvu.iter().map(|(code, rvu)| (code.clone(), rvu.milli)).collect();
    Policy { contracts, regions, subspecialty_rules, rvu_milli }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_dev_example_becomes_a_policy() {
        let platform =
            cfg::Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap();
        let p = policy(&platform);
        let acme = &p.contracts["acme-atlantic"];
        assert_eq!(acme.mode, AssignmentMode::Push);
        assert_eq!(acme.sla_seconds[&Priority::Stat], 1_800);
        assert_eq!(acme.escalation_per_mille, [500, 800]);
        assert!(acme.delivery[&ReadType::Preliminary].contains(&DeliveryModel::Offshore));
        assert!(!acme.delivery[&ReadType::Final].contains(&DeliveryModel::Offshore));
        assert_eq!(p.regions["in-south"].country, "IN");
        assert_eq!(p.rvu_milli["70450"], 850);
        assert_eq!(p.subspecialty_rules[0].subspecialty, "neuro");
    }
}
