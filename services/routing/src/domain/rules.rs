//! Eligibility: every rule must hold for a reader to be offered or given a
//! study. Each is named and says why when it fails, so `ExplainEligibility`
//! and a refused claim can name the rule.

use std::fmt;

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};

use super::model::{Availability, ReadType, Reader, Study};
use super::policy::Policy;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Rule {
    /// The reader's reading group is under the study's contract.
    Contract,
    /// The reader may give this read type.
    ReadType,
    /// The delivery model (reader region vs study origin) is offered for this read.
    DeliveryModel,
    /// A final read needs a current licence in the patient's jurisdiction.
    Licence,
    /// A current credential at the study's facility.
    Credential,
    Modality,
    /// The study's required subspecialty.
    Subspecialty,
    /// Available, and now within one of the reader's shifts.
    OnShift,
    /// Fewer open assignments than the reader's capacity.
    Capacity,
    /// Not the final of one's own preliminary, nor a review of one's own read.
    Conflict,
}

impl Rule {
    pub const ALL: [Rule; 10] = [
        Rule::Contract,
        Rule::ReadType,
        Rule::DeliveryModel,
        Rule::Licence,
        Rule::Credential,
        Rule::Modality,
        Rule::Subspecialty,
        Rule::OnShift,
        Rule::Capacity,
        Rule::Conflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Contract => "contract",
            Rule::ReadType => "read_type",
            Rule::DeliveryModel => "delivery_model",
            Rule::Licence => "licence",
            Rule::Credential => "credential",
            Rule::Modality => "modality",
            Rule::Subspecialty => "subspecialty",
            Rule::OnShift => "on_shift",
            Rule::Capacity => "capacity",
            Rule::Conflict => "conflict",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rule's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub rule: Rule,
    pub passed: bool,
    pub reason: String,
}

/// What eligibility needs besides the reader and the study.
pub struct Context<'a> {
    pub policy: &'a Policy,
    pub now: UnixMicros,
    /// The reader's open assignments.
    pub open_assignments: u32,
    /// Whether `now` is within one of the reader's shifts: decided once per
    /// reader, not once per study (it converts to the reader's time zone).
    pub on_shift: bool,
}

fn check(rule: Rule, passed: bool, reason: impl FnOnce() -> String) -> Check {
    Check { rule, passed, reason: if passed { String::new() } else { reason() } }
}

/// Whether the rules that look at the reader alone (availability, shift,
/// capacity) let them take any study now: when not, no study need be asked.
pub fn reader_can_take_work(reader: &Reader, ctx: &Context<'_>) -> bool {
    reader.availability == Availability::Available && ctx.on_shift && ctx.open_assignments < reader.capacity
}

/// Every rule, in order, with its verdict.
pub fn explain(reader: &Reader, study: &Study, ctx: &Context<'_>) -> Vec<Check> {
    Rule::ALL.iter().map(|rule| evaluate(*rule, reader, study, ctx)).collect()
}

/// The first rule that fails, if any.
pub fn first_failure(reader: &Reader, study: &Study, ctx: &Context<'_>) -> Option<Check> {
    Rule::ALL.iter().map(|rule| evaluate(*rule, reader, study, ctx)).find(|c| !c.passed)
}

pub fn eligible(reader: &Reader, study: &Study, ctx: &Context<'_>) -> bool {
    first_failure(reader, study, ctx).is_none()
}

fn evaluate(rule: Rule, r: &Reader, s: &Study, ctx: &Context<'_>) -> Check {
    let now = ctx.now;
    match rule {
        Rule::Contract => {
            let groups = ctx.policy.contracts.get(&s.contract).map(|c| &c.groups);
            check(rule, groups.is_some_and(|g| g.contains(&r.group)), || {
                format!("contract {} does not name reading group {}", s.contract, r.group)
            })
        }
        Rule::ReadType => check(rule, r.read_types.contains(&s.read_type), || {
            format!("{} does not give {:?} reads", r.id, s.read_type)
        }),
        Rule::DeliveryModel => {
            let model = ctx.policy.delivery_model(r, s);
            check(rule, ctx.policy.offers(s, model), || {
                let offered = ctx.policy.offered(s);
                format!("{model:?} {:?} reads are not offered for this study now (offered: {offered:?})", s.read_type)
            })
        }
        Rule::Licence => {
            let needed = s.read_type == ReadType::Final;
            let ok = !needed || r.licences.iter().any(|l| l.covers(&s.origin_jurisdiction) && l.expires > now);
            check(rule, ok, || format!("a final read needs a current licence in {}", s.origin_jurisdiction))
        }
        Rule::Credential => {
            let ok = r.credentials.iter().any(|c| c.tenant == s.tenant && c.facility == s.facility && c.expires > now);
            check(rule, ok, || format!("no current credential at {}/{}", s.tenant, s.facility))
        }
        Rule::Modality => {
            check(rule, r.modalities.contains(&s.modality), || format!("{} does not read {}", r.id, s.modality))
        }
        Rule::Subspecialty => {
            let ok = match (&s.subspecialty, s.subspecialty_required) {
                (Some(needed), true) => r.subspecialties.contains(needed),
                _ => true,
            };
            check(rule, ok, || format!("the study requires subspecialty {}", s.subspecialty.as_deref().unwrap_or("")))
        }
        Rule::OnShift => {
            let ok = r.availability == Availability::Available && ctx.on_shift;
            check(rule, ok, || {
                if r.availability != Availability::Available {
                    format!("{} is {:?}", r.id, r.availability)
                } else {
                    format!("{} is not on shift now", r.id)
                }
            })
        }
        Rule::Capacity => check(rule, ctx.open_assignments < r.capacity, || {
            format!("{} has {} open assignments of {}", r.id, ctx.open_assignments, r.capacity)
        }),
        Rule::Conflict => {
            let conflicted = matches!(s.read_type, ReadType::Final | ReadType::PeerReview)
                && s.prior_reader.as_deref() == Some(r.id.as_str());
            check(rule, !conflicted, || match s.read_type {
                ReadType::PeerReview => format!("{} cannot review their own read", r.id),
                _ => format!("{} gave the preliminary read and cannot give the final", r.id),
            })
        }
    }
}
