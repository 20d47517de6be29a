//! Which of a tenant's studies a contract takes: by facility, modality,
//! body part and priority, and by the moment in the facility's time zone
//! (days of the week, hours of the day). A tenant with a day group and a
//! nighthawk group, or a stroke contract beside a general one, has one
//! contract for each; exactly one may apply to any study, which the
//! configuration check proves (`overlap`).

use serde::Deserialize;

use crate::model::{Contract, Priority, Weekday};
use crate::value::TimeOfDay;

/// `[applies]` of a contract; every list empty (the default) takes all.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Applies {
    /// The tenant's facilities (names in `tenants/<tenant>.toml`).
    #[serde(default)]
    pub facilities: Vec<String>,
    /// DICOM modality codes, e.g. "CT".
    #[serde(default)]
    pub modalities: Vec<String>,
    /// DICOM Body Part Examined values, e.g. "HEAD".
    #[serde(default)]
    pub body_parts: Vec<String>,
    /// The order's priority (a study without one is routine).
    #[serde(default)]
    pub priorities: Vec<Priority>,
    /// Days of the week, in the facility's time zone.
    #[serde(default)]
    pub days: Vec<Weekday>,
    /// Hours of the day in the facility's time zone, from `start` (in) to
    /// `end` (out); `end` before `start` crosses midnight.
    pub hours: Option<Hours>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hours {
    pub start: TimeOfDay,
    pub end: TimeOfDay,
}

/// What a study is, as contract selection sees it (no PHI).
#[derive(Clone, Copy, Debug)]
pub struct StudyFacts<'a> {
    pub facility: &'a str,
    pub modality: &'a str,
    pub body_part: &'a str,
    pub priority: Priority,
}

const MINUTES_A_WEEK: usize = 7 * 1_440;

fn listed<T: PartialEq>(list: &[T], value: &T) -> bool {
    list.is_empty() || list.contains(value)
}

/// Whether two lists can both take one value (an empty list takes all).
fn meet<T: PartialEq + Clone>(a: &[T], b: &[T]) -> Option<Option<T>> {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Some(None),
        (true, false) => Some(b.first().cloned()),
        (false, true) => Some(a.first().cloned()),
        (false, false) => a.iter().find(|x| b.contains(x)).map(|x| Some(x.clone())),
    }
}

fn weekday_index(d: Weekday) -> usize {
    d as usize
}

const DAY_NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

impl Applies {
    /// Whether the contract takes a study with `facts` that arrived at
    /// `local` (the facility's local time).
    pub fn matches(&self, facts: &StudyFacts<'_>, local: jiff::civil::DateTime) -> bool {
        let any_of =
            |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v.eq_ignore_ascii_case(value));
        (self.facilities.is_empty() || self.facilities.iter().any(|f| f == facts.facility))
            && any_of(&self.modalities, facts.modality)
            && any_of(&self.body_parts, facts.body_part)
            && listed(&self.priorities, &facts.priority)
            && self.takes(minute_of_week(local))
    }

    /// Whether the contract takes minute `m` of the week (Monday 00:00 is 0).
    fn takes(&self, m: usize) -> bool {
        let (day, minute) = (m / 1_440, (m % 1_440) as u32);
        let day_listed = self.days.is_empty() || self.days.iter().any(|d| weekday_index(*d) == day);
        day_listed
            && match self.hours {
                None => true,
                Some(Hours { start, end }) => {
                    let (s, e) = (start.minute_of_day, end.minute_of_day);
                    if s <= e { (s..e).contains(&minute) } else { minute >= s || minute < e }
                }
            }
    }

    /// A study both contracts would take, in words, or `None` when no
    /// study can be taken by both.
    pub fn overlap(&self, other: &Applies) -> Option<String> {
        let facility = meet(&self.facilities, &other.facilities)?;
        let upper = |l: &[String]| l.iter().map(|s| s.to_ascii_uppercase()).collect::<Vec<_>>();
        let modality = meet(&upper(&self.modalities), &upper(&other.modalities))?;
        let body_part = meet(&upper(&self.body_parts), &upper(&other.body_parts))?;
        let priority = meet(&self.priorities, &other.priorities)?;
        let minute = (0..MINUTES_A_WEEK).find(|m| self.takes(*m) && other.takes(*m))?;
        let any = |v: Option<String>| v.unwrap_or_else(|| "any".into());
        Some(format!(
            "facility {}, modality {}, body part {}, priority {}, {} {:02}:{:02} facility time",
            any(facility),
            any(modality),
            any(body_part),
            priority.map_or_else(|| "any".into(), |p| p.as_str().to_owned()),
            DAY_NAMES[minute / 1_440],
            (minute % 1_440) / 60,
            minute % 60
        ))
    }
}

fn minute_of_week(local: jiff::civil::DateTime) -> usize {
    let day = usize::from(local.weekday().to_monday_zero_offset().unsigned_abs());
    day * 1_440 + usize::from(local.hour().unsigned_abs()) * 60 + usize::from(local.minute().unsigned_abs())
}

/// Why no contract takes a study.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoContract {
    #[error("tenant {tenant} has no contract")]
    None { tenant: String },
    #[error("no contract of tenant {tenant} takes {study} (contracts: {contracts})")]
    NoneApplies { tenant: String, study: String, contracts: String },
}

impl crate::Platform {
    /// The contract of `tenant` that takes a study with `facts` arriving
    /// at `at`, judged in the facility's time zone. The configuration check
    /// refuses contracts that overlap, so at most one applies.
    pub fn contract_for(
        &self,
        tenant: &str,
        facts: &StudyFacts<'_>,
        at: jiff::Timestamp,
    ) -> Result<&Contract, NoContract> {
        let zone = self
            .tenants
            .get(tenant)
            .and_then(|t| t.facilities.iter().find(|f| f.name == facts.facility))
            .map_or(jiff::tz::TimeZone::UTC, |f| f.time_zone.time_zone());
        let local = at.to_zoned(zone).datetime();
        let mut of_tenant = self.contracts.values().filter(|c| c.tenant == tenant).peekable();
        if of_tenant.peek().is_none() {
            return Err(NoContract::None { tenant: tenant.to_owned() });
        }
        let names: Vec<&str> =
            self.contracts.values().filter(|c| c.tenant == tenant).map(|c| c.name.as_str()).collect();
        of_tenant.find(|c| c.applies.matches(facts, local)).ok_or_else(|| NoContract::NoneApplies {
            tenant: tenant.to_owned(),
            study: format!(
                "a {} {} {} study from facility {} at {} facility time",
                facts.priority.as_str(),
                facts.modality,
                facts.body_part,
                facts.facility,
                local.strftime("%a %H:%M")
            ),
            contracts: names.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> jiff::civil::DateTime {
        text.parse().unwrap()
    }

    fn time(text: &str) -> TimeOfDay {
        text.parse().unwrap()
    }

    const CT_HEAD: StudyFacts<'static> =
        StudyFacts { facility: "acme-general", modality: "CT", body_part: "HEAD", priority: Priority::Stat };

    #[test]
    fn a_contract_takes_studies_by_what_they_are_and_when_they_come() {
        let nights = Applies { hours: Some(Hours { start: time("19:00"), end: time("07:00") }), ..Default::default() };
        // 2026-12-02 is a Wednesday.
        assert!(nights.matches(&CT_HEAD, at("2026-12-02T02:00")));
        assert!(nights.matches(&CT_HEAD, at("2026-12-02T19:00")), "start is in");
        assert!(!nights.matches(&CT_HEAD, at("2026-12-02T07:00")), "end is out");
        assert!(!nights.matches(&CT_HEAD, at("2026-12-02T10:00")));
        let stroke = Applies {
            modalities: vec!["ct".into()],
            body_parts: vec!["HEAD".into()],
            priorities: vec![Priority::Stat],
            days: vec![Weekday::Sat, Weekday::Sun],
            ..Default::default()
        };
        assert!(stroke.matches(&CT_HEAD, at("2026-12-05T10:00")), "a Saturday; codes compare without case");
        assert!(!stroke.matches(&CT_HEAD, at("2026-12-02T10:00")), "a Wednesday");
        let routine = StudyFacts { priority: Priority::Routine, ..CT_HEAD };
        assert!(!stroke.matches(&routine, at("2026-12-05T10:00")));
        let elsewhere = Applies { facilities: vec!["acme-imaging-center".into()], ..Default::default() };
        assert!(!elsewhere.matches(&CT_HEAD, at("2026-12-02T10:00")));
    }

    #[test]
    fn overlap_names_a_study_both_would_take_or_proves_there_is_none() {
        let days = Applies { hours: Some(Hours { start: time("07:00"), end: time("19:00") }), ..Default::default() };
        let nights = Applies { hours: Some(Hours { start: time("19:00"), end: time("07:00") }), ..Default::default() };
        assert_eq!(days.overlap(&nights), None, "day and night split the week");
        let late = Applies { hours: Some(Hours { start: time("18:00"), end: time("20:00") }), ..Default::default() };
        let both = days.overlap(&late).unwrap();
        assert!(both.contains("Mon 18:00"), "{both}");
        let mr = Applies { modalities: vec!["MR".into()], ..Default::default() };
        let ct = Applies { modalities: vec!["CT".into()], ..Default::default() };
        assert_eq!(mr.overlap(&ct), None);
        assert!(mr.overlap(&Applies::default()).unwrap().contains("modality MR"));
        let weekend = Applies { days: vec![Weekday::Sat, Weekday::Sun], ..Default::default() };
        let weekdays = Applies {
            days: vec![Weekday::Mon, Weekday::Tue, Weekday::Wed, Weekday::Thu, Weekday::Fri],
            ..Default::default()
        };
        assert_eq!(weekend.overlap(&weekdays), None);
        let empty = Applies { hours: Some(Hours { start: time("07:00"), end: time("07:00") }), ..Default::default() };
        assert_eq!(empty.overlap(&Applies::default()), None, "an empty window takes nothing");
    }
}
