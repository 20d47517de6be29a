//! Routing's policy from the platform configuration.

use std::collections::{BTreeMap, BTreeSet};

use meridian_config as cfg;

use meridian_events::UnixMicros;

use crate::domain::model::{
    Availability, Credential, DeliveryModel, Licence, Priority, ReadType, Reader, ServiceType, Shift,
};
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

/// A licence or credential dated in configuration is good through the end
/// of that day, UTC.
fn end_of_day(date: &cfg::value::Date) -> Result<UnixMicros, String> {
    let next = date.0.tomorrow().map_err(|e| format!("{}: {e}", date.0))?;
    let ts = next.to_zoned(jiff::tz::TimeZone::UTC).map_err(|e| format!("{}: {e}", date.0))?.timestamp();
    Ok(UnixMicros(ts.as_microsecond()))
}

fn iso_weekday(d: cfg::Weekday) -> u8 {
    match d {
        cfg::Weekday::Mon => 1,
        cfg::Weekday::Tue => 2,
        cfg::Weekday::Wed => 3,
        cfg::Weekday::Thu => 4,
        cfg::Weekday::Fri => 5,
        cfg::Weekday::Sat => 6,
        cfg::Weekday::Sun => 7,
    }
}

/// A configured reader of `group`, as routing registers them at first start.
pub fn reader(group: &str, r: &cfg::Reader) -> Result<Reader, String> {
    let licences = r
        .licences
        .iter()
        .map(|l| Ok(Licence { jurisdiction: l.jurisdiction.0.clone(), expires: end_of_day(&l.expires)? }))
        .collect::<Result<_, String>>()?;
    let credentials = r
        .credentials
        .iter()
        .map(|c| {
            Ok(Credential { tenant: c.tenant.clone(), facility: c.facility.clone(), expires: end_of_day(&c.expires)? })
        })
        .collect::<Result<_, String>>()?;
    let shifts = r
        .shifts
        .iter()
        .flat_map(|s| {
            s.days.iter().map(|d| Shift {
                weekday: iso_weekday(*d),
                start_minute: s.start.minute_of_day,
                end_minute: s.end.minute_of_day,
            })
        })
        .collect();
    Ok(Reader {
        id: r.id.clone(),
        group: group.to_owned(),
        region: r.region.clone(),
        time_zone: r.time_zone.0.clone(),
        licences,
        credentials,
        subspecialties: r.subspecialties.iter().cloned().collect(),
        modalities: r.modalities.iter().cloned().collect(),
        read_types: r.read_types.iter().map(|t| read_type(*t)).collect(),
        shifts,
        capacity: r.capacity,
        availability: Availability::Available,
    })
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
                service: c.service.map(|s| match s {
                    cfg::ServiceType::RealTime => ServiceType::RealTime,
                    cfg::ServiceType::StoreAndForward => ServiceType::StoreAndForward,
                    cfg::ServiceType::Hybrid => ServiceType::Hybrid,
                }),
                subspecialty_required: c.subspecialty_required,
                language: c.report_language.clone(),
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

    #[test]
    fn a_configured_reader_sits_in_their_own_region_with_licences_through_the_last_day() {
        let platform =
            cfg::Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap();
        for group in platform.groups.values() {
            for configured in &group.readers {
                let r = reader(&group.name, configured).unwrap();
                assert_eq!((r.region.as_str(), r.group.as_str()), (configured.region.as_str(), group.name.as_str()));
                for (l, c) in r.licences.iter().zip(&configured.licences) {
                    let last_day = c.expires.0.to_zoned(jiff::tz::TimeZone::UTC).unwrap().timestamp();
                    assert_eq!(l.expires.0 - last_day.as_microsecond(), 86_400_000_000, "{}", r.id);
                }
                assert!(!r.shifts.is_empty() && r.shifts.iter().all(|s| (1..=7).contains(&s.weekday)));
            }
        }
        let nair = platform.groups.values().flat_map(|g| &g.readers).find(|r| r.id == "dr-priya-nair").unwrap();
        assert_eq!(nair.region, "in-south");
    }
}
