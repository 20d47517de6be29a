//! Readers and worklist studies. A worklist study carries no PHI: opaque
//! ids, codes, times and flags only, so an entry may be shown to a reader
//! in another region.

use std::collections::BTreeSet;

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReadType {
    Preliminary,
    Final,
    Secondary,
    PeerReview,
}

/// Most urgent first: `Stat < Urgent < Routine`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Priority {
    Stat,
    Urgent,
    Routine,
}

impl Priority {
    /// Routine: an order that names no priority (and events written before
    /// a priority field existed).
    pub fn routine() -> Priority {
        Priority::Routine
    }

    /// One step more urgent (escalation); STAT stays STAT.
    pub fn raised(self) -> Priority {
        match self {
            Priority::Routine => Priority::Urgent,
            _ => Priority::Stat,
        }
    }
}

/// Where the reader sits relative to the study's origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeliveryModel {
    Onshore,
    Nearshore,
    Offshore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ServiceType {
    /// STAT, synchronous.
    RealTime,
    /// Routine, asynchronous.
    StoreAndForward,
    /// Local first, remote overflow.
    Hybrid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Availability {
    Available,
    Busy,
    Away,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Licence {
    /// ISO 3166-2 ("US-NY") or, for a national licence, ISO 3166-1 ("GB").
    pub jurisdiction: String,
    pub expires: UnixMicros,
}

impl Licence {
    /// A national licence covers every subdivision of its country.
    pub fn covers(&self, patient_jurisdiction: &str) -> bool {
        self.jurisdiction == patient_jurisdiction
            || (!self.jurisdiction.contains('-')
                && patient_jurisdiction.split('-').next() == Some(self.jurisdiction.as_str()))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub tenant: String,
    pub facility: String,
    pub expires: UnixMicros,
}

/// A weekly shift in the reader's own time zone; `end_minute` before
/// `start_minute` crosses midnight into the next day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shift {
    /// ISO weekday, 1 = Monday.
    pub weekday: u8,
    pub start_minute: u32,
    pub end_minute: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reader {
    pub id: String,
    pub group: String,
    /// The region the reader sits in.
    pub region: String,
    /// IANA time zone of the reader's shifts.
    pub time_zone: String,
    pub licences: Vec<Licence>,
    pub credentials: Vec<Credential>,
    pub subspecialties: BTreeSet<String>,
    pub modalities: BTreeSet<String>,
    pub read_types: BTreeSet<ReadType>,
    pub shifts: Vec<Shift>,
    /// Most open assignments at once.
    pub capacity: u32,
    pub availability: Availability,
}

/// A moment as a reader's shifts see it: the ISO weekday and minute of the
/// day in one time zone. Worked out once per time zone, not per reader,
/// where many readers are asked at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalTime {
    pub weekday: u8,
    pub minute: u32,
}

impl LocalTime {
    /// `None` for an unknown time zone (config rejects one).
    pub fn of(time_zone: &str, now: UnixMicros) -> Option<LocalTime> {
        let tz = jiff::tz::TimeZone::get(time_zone).ok()?;
        let local = jiff::Timestamp::from_microsecond(now.0).ok()?.to_zoned(tz);
        Some(LocalTime {
            weekday: local.weekday().to_monday_one_offset() as u8,
            minute: local.hour() as u32 * 60 + local.minute() as u32,
        })
    }
}

impl Reader {
    /// Whether `now` falls in one of the reader's shifts, in their time zone.
    /// An unknown time zone means never on shift.
    pub fn on_shift(&self, now: UnixMicros) -> bool {
        LocalTime::of(&self.time_zone, now).is_some_and(|t| self.on_shift_at(t))
    }

    /// Whether local time `t` (in the reader's zone) falls in a shift.
    pub fn on_shift_at(&self, t: LocalTime) -> bool {
        let LocalTime { weekday, minute } = t;
        let yesterday = if weekday == 1 { 7 } else { weekday - 1 };
        self.shifts.iter().any(|s| {
            if s.start_minute < s.end_minute {
                s.weekday == weekday && (s.start_minute..s.end_minute).contains(&minute)
            } else {
                // Crosses midnight: the evening of its day, the morning of the next.
                (s.weekday == weekday && minute >= s.start_minute) || (s.weekday == yesterday && minute < s.end_minute)
            }
        })
    }
}

/// A study on the worklist, for one read type. No PHI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Study {
    pub id: Uuid,
    pub tenant: String,
    pub facility: String,
    pub contract: String,
    /// The region that holds the study's PHI and decides its commands.
    pub home_region: String,
    /// ISO 3166-2 jurisdiction of the facility: the patient's, for licensure.
    pub origin_jurisdiction: String,
    pub modality: String,
    pub body_part: String,
    pub subspecialty: Option<String>,
    /// When false, `subspecialty` is a preference that orders, not a rule.
    pub subspecialty_required: bool,
    pub priority: Priority,
    /// The order's priority, before a triage or an escalation raised
    /// `priority` (billing prices by it).
    #[serde(default = "Priority::routine")]
    pub requested_priority: Priority,
    pub service_type: ServiceType,
    pub read_type: ReadType,
    /// Opaque patient key, to keep a patient's concurrent studies together.
    pub patient_key: Option<Uuid>,
    /// Work RVU of the procedure, in thousandths.
    pub rvu_milli: u32,
    pub ai_flagged: bool,
    pub completed_at: UnixMicros,
    pub deadline: UnixMicros,
    /// The reader of the read this one follows: the preliminary read for a
    /// final, the reviewed read for a peer review. They may not do this one.
    pub prior_reader: Option<String>,
    /// Escalation fractions already passed.
    pub escalations: u8,
    /// Delivery models offered beyond the contract's first ones, by escalation.
    pub widened: BTreeSet<DeliveryModel>,
    pub assignee: Option<String>,
    /// Arrival order, the last tie-break.
    pub sequence: u64,
}

macro_rules! names {
    ($t:ident { $($v:ident => $s:literal),* $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),* }
            }

            pub fn parse(text: &str) -> Option<$t> {
                match text { $($s => Some($t::$v),)* _ => None }
            }
        }
    };
}

names!(ReadType { Preliminary => "preliminary", Final => "final", Secondary => "secondary", PeerReview => "peer_review" });
names!(Priority { Stat => "stat", Urgent => "urgent", Routine => "routine" });
names!(DeliveryModel { Onshore => "onshore", Nearshore => "nearshore", Offshore => "offshore" });
names!(ServiceType { RealTime => "real_time", StoreAndForward => "store_and_forward", Hybrid => "hybrid" });
names!(Availability { Available => "available", Busy => "busy", Away => "away" });
