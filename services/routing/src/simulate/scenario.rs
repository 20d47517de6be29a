//! A simulated day, as an operator writes it: regions, contracts, study
//! arrivals with time-of-day curves, and a roster of readers. Read from
//! TOML; every error names the file and the field.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use meridian_events::UnixMicros;
use serde::Deserialize;

use crate::domain::model::{
    Availability, Credential, DeliveryModel, Licence, LocalTime, Priority, ReadType, Reader, Shift,
};
use crate::domain::policy::{AssignmentMode, ContractPolicy, Policy, RegionInfo, SubspecialtyRule};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{file}: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}: {field}: {reason}")]
    Invalid { file: String, field: String, reason: String },
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub day: Day,
    #[serde(default)]
    pub regions: Vec<RegionSpec>,
    #[serde(default)]
    pub contracts: Vec<ContractSpec>,
    #[serde(default)]
    pub arrivals: Vec<ArrivalSpec>,
    #[serde(default)]
    pub readers: Vec<RosterSpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Day {
    /// RFC 3339, e.g. "2026-11-25T05:00:00Z".
    pub start: String,
    #[serde(default = "default_hours")]
    pub hours: u32,
    /// After the last arrival, how long reads may still finish (and breach).
    #[serde(default = "default_drain")]
    pub drain_hours: u32,
    #[serde(default)]
    pub seed: u64,
    /// How often readers act and timers run, in simulated seconds.
    #[serde(default = "default_step")]
    pub step_seconds: u32,
}

fn default_hours() -> u32 {
    24
}
fn default_drain() -> u32 {
    12
}
fn default_step() -> u32 {
    60
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub name: String,
    pub country: String,
    #[serde(default)]
    pub nearshore: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractSpec {
    pub name: String,
    pub tenant: String,
    pub groups: Vec<String>,
    /// "push" or "pull".
    pub mode: String,
    /// Read type → delivery models ("onshore", "nearshore", "offshore").
    pub delivery: BTreeMap<String, Vec<String>>,
    /// Priority → turnaround in minutes.
    pub sla_minutes: BTreeMap<String, u64>,
    /// Fractions of the SLA at which an unread study escalates.
    #[serde(default)]
    pub escalation: Vec<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrivalSpec {
    /// Names the stream (and its procedure code) in results.
    pub name: String,
    pub tenant: String,
    pub facility: String,
    pub home_region: String,
    /// ISO 3166-2 jurisdiction of the facility.
    pub jurisdiction: String,
    /// The facility's time zone: `curve` is by its local hour.
    pub time_zone: String,
    pub modality: String,
    pub body_part: String,
    #[serde(default)]
    pub subspecialty: Option<String>,
    pub per_day: f64,
    /// Share of each priority; the rest is routine.
    #[serde(default)]
    pub stat: f64,
    #[serde(default)]
    pub urgent: f64,
    /// 24 weights, one per local hour; flat when absent.
    #[serde(default)]
    pub curve: Vec<f64>,
    /// Mean minutes a reader takes to read one (drawn per study, ±50%).
    pub read_minutes: f64,
    /// Work RVUs of the procedure.
    #[serde(default = "default_rvu")]
    pub rvu: f64,
}

fn default_rvu() -> f64 {
    1.0
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterSpec {
    /// Readers are named "<prefix>-1" .. "<prefix>-<count>".
    pub prefix: String,
    #[serde(default = "one")]
    pub count: u32,
    pub group: String,
    pub region: String,
    pub time_zone: String,
    /// Jurisdictions, licensed for the whole day.
    #[serde(default)]
    pub licences: Vec<String>,
    /// "tenant/facility" pairs.
    pub credentials: Vec<String>,
    #[serde(default)]
    pub subspecialties: Vec<String>,
    pub modalities: Vec<String>,
    pub read_types: Vec<String>,
    /// Local "HH:MM"; an end before the start crosses midnight.
    pub shift_start: String,
    pub shift_end: String,
    /// ISO weekdays (1 = Monday); every day when absent.
    #[serde(default)]
    pub days: Vec<u8>,
    #[serde(default = "three")]
    pub capacity: u32,
}

fn one() -> u32 {
    1
}
fn three() -> u32 {
    3
}

/// `[[readers]]` alone: what `--add` brings to a scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RosterFile {
    pub readers: Vec<RosterSpec>,
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read { file: file.clone(), source })?;
    let de = toml::Deserializer::parse(&text).map_err(|e| Error::Invalid {
        file: file.clone(),
        field: String::new(),
        reason: e.to_string(),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| Error::Invalid {
        file,
        field: e.path().to_string(),
        reason: e.inner().message().to_owned(),
    })
}

impl Scenario {
    /// Reads a scenario and the rosters added to it.
    pub fn load(path: &Path, added: &[&Path]) -> Result<Scenario, Error> {
        let mut scenario: Scenario = parse(path)?;
        for extra in added {
            let roster: RosterFile = parse(extra)?;
            scenario.readers.extend(roster.readers);
        }
        scenario.check(&path.display().to_string())?;
        Ok(scenario)
    }

    pub fn from_toml(text: &str) -> Result<Scenario, Error> {
        let invalid = |field: String, reason: String| Error::Invalid { file: "<scenario>".into(), field, reason };
        let de = toml::Deserializer::parse(text).map_err(|e| invalid(String::new(), e.to_string()))?;
        let scenario: Scenario = serde_path_to_error::deserialize(de)
            .map_err(|e| invalid(e.path().to_string(), e.inner().message().to_owned()))?;
        scenario.check("<scenario>")?;
        Ok(scenario)
    }

    fn check(&self, file: &str) -> Result<(), Error> {
        let bad = |field: String, reason: String| Error::Invalid { file: file.into(), field, reason };
        self.start().map_err(|reason| bad("day.start".into(), reason))?;
        if self.day.step_seconds == 0 {
            return Err(bad("day.step_seconds".into(), "must be at least 1".into()));
        }
        let regions: BTreeSet<&str> = self.regions.iter().map(|r| r.name.as_str()).collect();
        for (i, c) in self.contracts.iter().enumerate() {
            mode(&c.mode).ok_or_else(|| bad(format!("contracts[{i}].mode"), "expected push or pull".into()))?;
            for (read, models) in &c.delivery {
                read_type(read)
                    .ok_or_else(|| bad(format!("contracts[{i}].delivery.{read}"), "not a read type".into()))?;
                for m in models {
                    DeliveryModel::parse(m).ok_or_else(|| {
                        bad(format!("contracts[{i}].delivery.{read}"), format!("{m:?} is not a delivery model"))
                    })?;
                }
            }
            for p in c.sla_minutes.keys() {
                Priority::parse(p)
                    .ok_or_else(|| bad(format!("contracts[{i}].sla_minutes.{p}"), "not a priority".into()))?;
            }
        }
        for (i, a) in self.arrivals.iter().enumerate() {
            let field = |f: &str| format!("arrivals[{i}].{f}");
            if !regions.contains(a.home_region.as_str()) {
                return Err(bad(field("home_region"), format!("{:?} is not a region of the scenario", a.home_region)));
            }
            jiff::tz::TimeZone::get(&a.time_zone)
                .map_err(|_| bad(field("time_zone"), format!("{:?} is not an IANA time zone", a.time_zone)))?;
            if !a.curve.is_empty() && (a.curve.len() != 24 || a.curve.iter().any(|w| *w < 0.0)) {
                return Err(bad(field("curve"), "needs 24 weights of zero or more".into()));
            }
            if a.stat < 0.0 || a.urgent < 0.0 || a.stat + a.urgent > 1.0 {
                return Err(bad(field("stat"), "stat and urgent are shares of at most 1 together".into()));
            }
            if a.per_day < 0.0 || a.read_minutes <= 0.0 {
                return Err(bad(field("per_day"), "per_day must be ≥ 0 and read_minutes > 0".into()));
            }
        }
        for (i, r) in self.readers.iter().enumerate() {
            let field = |f: &str| format!("readers[{i}].{f}");
            if !regions.contains(r.region.as_str()) {
                return Err(bad(field("region"), format!("{:?} is not a region of the scenario", r.region)));
            }
            jiff::tz::TimeZone::get(&r.time_zone)
                .map_err(|_| bad(field("time_zone"), format!("{:?} is not an IANA time zone", r.time_zone)))?;
            minute(&r.shift_start).ok_or_else(|| bad(field("shift_start"), "expected HH:MM".into()))?;
            minute(&r.shift_end).ok_or_else(|| bad(field("shift_end"), "expected HH:MM".into()))?;
            for t in &r.read_types {
                read_type(t).ok_or_else(|| bad(field("read_types"), format!("{t:?} is not a read type")))?;
            }
            for c in &r.credentials {
                if c.split_once('/').is_none() {
                    return Err(bad(field("credentials"), format!("{c:?} is not tenant/facility")));
                }
            }
            if r.days.iter().any(|d| !(1..=7).contains(d)) {
                return Err(bad(field("days"), "ISO weekdays are 1 to 7".into()));
            }
        }
        Ok(())
    }

    pub fn start(&self) -> Result<UnixMicros, String> {
        self.day
            .start
            .parse::<jiff::Timestamp>()
            .map(|t| UnixMicros(t.as_microsecond()))
            .map_err(|e| format!("{:?} is not an RFC 3339 time: {e}", self.day.start))
    }

    /// The routing policy of the scenario. Each arrival stream is a
    /// procedure (its name) with its work RVUs and, where given, a
    /// subspecialty for its modality and body part.
    pub fn policy(&self) -> Policy {
        let contracts = self
            .contracts
            .iter()
            .map(|c| {
                let policy = ContractPolicy {
                    name: c.name.clone(),
                    tenant: c.tenant.clone(),
                    groups: c.groups.iter().cloned().collect(),
                    mode: mode(&c.mode).unwrap_or(AssignmentMode::Pull),
                    delivery: c
                        .delivery
                        .iter()
                        .filter_map(|(t, ms)| {
                            Some((read_type(t)?, ms.iter().filter_map(|m| DeliveryModel::parse(m)).collect()))
                        })
                        .collect(),
                    sla_seconds: c
                        .sla_minutes
                        .iter()
                        .filter_map(|(p, m)| Some((Priority::parse(p)?, m * 60)))
                        .collect(),
                    escalation_per_mille: c.escalation.iter().map(|f| (f * 1_000.0).round() as u32).collect(),
                    service: None,
                    subspecialty_required: false,
                    language: "en".into(),
                };
                (c.name.clone(), policy)
            })
            .collect();
        let regions = self
            .regions
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    RegionInfo { country: r.country.clone(), nearshore: r.nearshore.iter().cloned().collect() },
                )
            })
            .collect();
        let subspecialty_rules = self
            .arrivals
            .iter()
            .filter_map(|a| {
                Some(SubspecialtyRule {
                    modality: a.modality.clone(),
                    body_part: Some(a.body_part.clone()),
                    subspecialty: a.subspecialty.clone()?,
                })
            })
            .collect();
        let rvu_milli = self.arrivals.iter().map(|a| (a.name.clone(), (a.rvu * 1_000.0).round() as u32)).collect();
        Policy { contracts, regions, subspecialty_rules, rvu_milli }
    }

    /// The roster, every reader available.
    pub fn roster(&self) -> Vec<Reader> {
        let mut readers = Vec::new();
        for r in &self.readers {
            let days: Vec<u8> = if r.days.is_empty() { (1..=7).collect() } else { r.days.clone() };
            let (start, end) = (minute(&r.shift_start).unwrap_or(0), minute(&r.shift_end).unwrap_or(0));
            for n in 1..=r.count {
                readers.push(Reader {
                    id: format!("{}-{n}", r.prefix),
                    group: r.group.clone(),
                    region: r.region.clone(),
                    time_zone: r.time_zone.clone(),
                    licences: r
                        .licences
                        .iter()
                        .map(|j| Licence { jurisdiction: j.clone(), expires: UnixMicros(i64::MAX) })
                        .collect(),
                    credentials: r
                        .credentials
                        .iter()
                        .filter_map(|c| c.split_once('/'))
                        .map(|(t, f)| Credential {
                            tenant: t.into(),
                            facility: f.into(),
                            expires: UnixMicros(i64::MAX),
                        })
                        .collect(),
                    subspecialties: r.subspecialties.iter().cloned().collect(),
                    modalities: r.modalities.iter().cloned().collect(),
                    read_types: r.read_types.iter().filter_map(|t| read_type(t)).collect(),
                    shifts: days.iter().map(|d| Shift { weekday: *d, start_minute: start, end_minute: end }).collect(),
                    capacity: r.capacity,
                    availability: Availability::Available,
                });
            }
        }
        readers
    }

    /// The arrival curve's weight at `at`, in the stream's local time.
    pub fn weight(a: &ArrivalSpec, at: UnixMicros) -> f64 {
        if a.curve.is_empty() {
            return 1.0;
        }
        let hour = LocalTime::of(&a.time_zone, at).map_or(0, |t| (t.minute / 60) as usize);
        a.curve[hour.min(23)]
    }
}

fn mode(text: &str) -> Option<AssignmentMode> {
    match text {
        "push" => Some(AssignmentMode::Push),
        "pull" => Some(AssignmentMode::Pull),
        _ => None,
    }
}

fn read_type(text: &str) -> Option<ReadType> {
    ReadType::parse(text)
}

fn minute(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}
