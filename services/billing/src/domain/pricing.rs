//! What a read costs under its contract, and what a reading group earns
//! for it: the contracts' and groups' prices in minor units, and the rules
//! that pick a price and its surcharges. Pure: the facility's time zone and
//! the times are arguments.

use std::collections::BTreeMap;

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};

use super::money::{self, Rounding};

/// How a contract bills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Model {
    #[default]
    Transaction,
    Subscription,
    ProjectBased,
}

impl Model {
    pub fn as_str(self) -> &'static str {
        match self {
            Model::Transaction => "transaction",
            Model::Subscription => "subscription",
            Model::ProjectBased => "project_based",
        }
    }
}

/// An SLA credit rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreditRule {
    /// Millionths of the breached read's price.
    Share(u32),
    /// A fixed amount in minor units.
    Fixed(i64),
}

/// Office hours' end (`from`) and start (`to`), minutes of the day in the
/// facility's time zone; weekends are after hours when `weekends`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AfterHours {
    pub surcharge: i64,
    pub from: u32,
    pub to: u32,
    pub weekends: bool,
}

/// One contract's prices, in minor units of `currency`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractPrices {
    pub tenant: String,
    pub model: Model,
    pub currency: String,
    pub per_study: BTreeMap<String, i64>,
    pub per_read_type: BTreeMap<String, BTreeMap<String, i64>>,
    pub priority_surcharge: BTreeMap<String, i64>,
    pub after_hours: Option<AfterHours>,
    pub subspecialty_surcharge: Option<i64>,
    pub bills_preliminary: bool,
    pub included_studies: u32,
    /// Subscription: the monthly fee.
    pub monthly_fee: i64,
    /// Project: the fixed fee, and the parts of it billed in each period
    /// (its milestones; the whole fee when the project ends without).
    pub project_fee: i64,
    pub project_ends: Option<String>,
    #[serde(default)]
    pub milestones: Vec<MilestoneDue>,
    /// The most an invoice credits, in millionths of its charges.
    pub credit_cap: Option<u32>,
    pub sla_credit: BTreeMap<String, CreditRule>,
    pub rounding: Rounding,
    /// IANA zone of the billing periods.
    pub billing_time_zone: String,
}

/// A part of a project's fee, billed in `period`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MilestoneDue {
    /// The invoice line: "engagement.milestones.<name>", or
    /// "engagement.project_fee" for a fee billed whole when the project ends.
    pub line: String,
    pub period: String,
    pub amount: i64,
}

/// A reading group's rate per work RVU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRate {
    pub currency: String,
    pub per_wrvu: i64,
}

/// Every price billing decides with, built from the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricebook {
    pub contracts: BTreeMap<String, ContractPrices>,
    pub groups: BTreeMap<String, GroupRate>,
    /// `tenant/facility` → the facility's IANA time zone.
    pub facility_zones: BTreeMap<String, String>,
}

/// The prices in force over the routing topic, as billing's PricesInForce
/// recorded them: each change applies from its positions on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub changes: Vec<PricesFrom>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricesFrom {
    /// Routing partition → the first offset they price.
    pub from: BTreeMap<u32, u64>,
    pub pricebook: Pricebook,
}

impl Schedule {
    /// Which change priced the routing record at `partition`/`offset`: the
    /// last one starting at or before it (`None` before the first: a log
    /// older than the schedule).
    pub fn at(&self, partition: u32, offset: u64) -> Option<usize> {
        self.changes.iter().rposition(|c| c.from.get(&partition).copied().unwrap_or(0) <= offset)
    }

    /// The prices last put in force.
    pub fn latest(&self) -> Option<&Pricebook> {
        self.changes.last().map(|c| &c.pricebook)
    }
}

/// What billing knows of a read waiting to be signed (from StudyQueued).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub tenant: String,
    pub facility: String,
    pub contract: String,
    pub modality: String,
    pub read_type: String,
    /// The order's priority.
    pub priority: String,
    pub subspecialty: Option<String>,
    pub rvu_milli: u32,
    pub completed_at: UnixMicros,
}

/// One priced part of a charge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// "base", "priority", "after_hours" or "subspecialty".
    pub kind: String,
    /// The contract field it comes from.
    pub line: String,
    pub amount: i64,
}

/// The configuration field a read's price needs and lacks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Missing(pub String);

impl Pricebook {
    /// The lines of a read's price (base first, then surcharges), or the
    /// field that is missing. The surcharges use the order's priority and
    /// the study's completion in its facility's time zone.
    pub fn price(&self, read: &Read) -> Result<Vec<Line>, Missing> {
        let c =
            self.contracts.get(&read.contract).ok_or_else(|| Missing(format!("contracts/{}.toml", read.contract)))?;
        let modality = read.modality.as_str();
        let by_type = c.per_read_type.get(&read.read_type);
        let base = by_type
            .and_then(|p| {
                p.get(modality).map(|a| (format!("engagement.per_read_type.{}.{modality}", read.read_type), *a))
            })
            .or_else(|| {
                by_type.and_then(|p| {
                    p.get("default").map(|a| (format!("engagement.per_read_type.{}.default", read.read_type), *a))
                })
            })
            .or_else(|| c.per_study.get(modality).map(|a| (format!("engagement.per_study.{modality}"), *a)))
            .or_else(|| c.per_study.get("default").map(|a| ("engagement.per_study.default".to_owned(), *a)));
        let Some((line, amount)) = base else {
            return Err(Missing(format!("engagement.per_study.{modality}")));
        };
        let mut lines = vec![Line { kind: "base".into(), line, amount }];
        if let Some(a) = c.priority_surcharge.get(&read.priority) {
            lines.push(Line {
                kind: "priority".into(),
                line: format!("engagement.priority_surcharge.{}", read.priority),
                amount: *a,
            });
        }
        if let Some(after) = &c.after_hours
            && self.after_hours(read, after)
        {
            lines.push(Line {
                kind: "after_hours".into(),
                line: "engagement.after_hours.surcharge".into(),
                amount: after.surcharge,
            });
        }
        if let (Some(a), Some(_)) = (c.subspecialty_surcharge, &read.subspecialty) {
            lines.push(Line {
                kind: "subspecialty".into(),
                line: "engagement.subspecialty_surcharge".into(),
                amount: a,
            });
        }
        Ok(lines)
    }

    /// Whether the study completed outside office hours at its facility.
    fn after_hours(&self, read: &Read, after: &AfterHours) -> bool {
        let zone = self.facility_zones.get(&format!("{}/{}", read.tenant, read.facility));
        let Some(tz) = zone.and_then(|z| jiff::tz::TimeZone::get(z).ok()) else { return false };
        let Ok(at) = jiff::Timestamp::from_microsecond(read.completed_at.0) else { return false };
        let local = at.to_zoned(tz);
        let weekend = matches!(local.weekday(), jiff::civil::Weekday::Saturday | jiff::civil::Weekday::Sunday);
        let minute = u32::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
        let night = if after.from <= after.to {
            minute >= after.from && minute < after.to
        } else {
            minute >= after.from || minute < after.to
        };
        night || (after.weekends && weekend)
    }

    /// The billing period ("2026-11") of `at` under `contract`.
    pub fn period(&self, contract: &str, at: UnixMicros) -> String {
        let zone = self.contracts.get(contract).map_or("UTC", |c| c.billing_time_zone.as_str());
        let tz = jiff::tz::TimeZone::get(zone).unwrap_or(jiff::tz::TimeZone::UTC);
        let date = jiff::Timestamp::from_microsecond(at.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH).to_zoned(tz).date();
        format!("{:04}-{:02}", date.year(), date.month())
    }

    /// What `group` earns for `rvu_milli`, when it has a rate.
    pub fn payout(&self, group: &str, rvu_milli: u32) -> Option<(String, i64)> {
        let rate = self.groups.get(group)?;
        Some((rate.currency.clone(), money::per_rvu(rvu_milli, rate.per_wrvu, Rounding::HalfUp)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Acme's transaction contract as the example configuration prices it.
    pub(crate) fn pricebook() -> Pricebook {
        let acme = ContractPrices {
            tenant: "acme".into(),
            model: Model::Transaction,
            currency: "USD".into(),
            per_study: BTreeMap::from([("CT".into(), 4_500), ("default".into(), 3_000)]),
            per_read_type: BTreeMap::from([(
                "preliminary".into(),
                BTreeMap::from([("CT".into(), 3_000), ("default".into(), 2_000)]),
            )]),
            priority_surcharge: BTreeMap::from([("stat".into(), 2_500)]),
            after_hours: Some(AfterHours { surcharge: 1_500, from: 19 * 60, to: 7 * 60, weekends: true }),
            subspecialty_surcharge: Some(1_250),
            bills_preliminary: true,
            included_studies: 0,
            monthly_fee: 0,
            project_fee: 0,
            project_ends: None,
            milestones: Vec::new(),
            credit_cap: Some(200_000),
            sla_credit: BTreeMap::from([
                ("stat".into(), CreditRule::Share(500_000)),
                ("routine".into(), CreditRule::Fixed(500)),
            ]),
            rounding: Rounding::HalfUp,
            billing_time_zone: "America/New_York".into(),
        };
        let northwind = ContractPrices {
            tenant: "northwind".into(),
            model: Model::Subscription,
            currency: "EUR".into(),
            per_study: BTreeMap::from([("default".into(), 950)]),
            included_studies: 2,
            billing_time_zone: "UTC".into(),
            ..Default::default()
        };
        Pricebook {
            contracts: BTreeMap::from([("acme-atlantic".into(), acme), ("northwind-lotus".into(), northwind)]),
            groups: BTreeMap::from([("atlantic-rads".into(), GroupRate { currency: "USD".into(), per_wrvu: 3_250 })]),
            facility_zones: BTreeMap::from([("acme/acme-general".into(), "America/New_York".into())]),
        }
    }

    /// 2026-11-04 (a Wednesday) at `hour`:00 in New York (UTC-5).
    pub(crate) fn ny(hour: i64) -> UnixMicros {
        UnixMicros((1_793_768_400 + hour * 3_600) * 1_000_000)
    }

    pub(crate) fn ct(read_type: &str, priority: &str, completed_at: UnixMicros) -> Read {
        Read {
            tenant: "acme".into(),
            facility: "acme-general".into(),
            contract: "acme-atlantic".into(),
            modality: "CT".into(),
            read_type: read_type.into(),
            priority: priority.into(),
            subspecialty: None,
            rvu_milli: 850,
            completed_at,
        }
    }

    fn total(lines: &[Line]) -> i64 {
        lines.iter().map(|l| l.amount).sum()
    }

    #[test]
    fn a_read_is_priced_by_read_type_then_modality_then_default() {
        let book = pricebook();
        assert_eq!(total(&book.price(&ct("final", "routine", ny(10))).unwrap()), 4_500);
        assert_eq!(total(&book.price(&ct("preliminary", "routine", ny(10))).unwrap()), 3_000);
        let mr = Read { modality: "MR".into(), ..ct("final", "routine", ny(10)) };
        let lines = book.price(&mr).unwrap();
        assert_eq!((lines[0].line.as_str(), lines[0].amount), ("engagement.per_study.default", 3_000));
        let prelim_mr = Read { modality: "MR".into(), ..ct("preliminary", "routine", ny(10)) };
        assert_eq!(book.price(&prelim_mr).unwrap()[0].line, "engagement.per_read_type.preliminary.default");
    }

    #[test]
    fn surcharges_follow_the_order_the_clock_at_the_facility_and_the_subspecialty() {
        let book = pricebook();
        // STAT at 22:00 New York with a neuro subspecialist: 45 + 25 + 15 + 12.50.
        let read = Read { subspecialty: Some("neuro".into()), ..ct("final", "stat", ny(22)) };
        let lines = book.price(&read).unwrap();
        let kinds: Vec<&str> = lines.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(kinds, ["base", "priority", "after_hours", "subspecialty"]);
        assert_eq!(total(&lines), 9_750);
        // 10:00 on a weekday is office hours; 06:59 is not.
        assert_eq!(book.price(&ct("final", "routine", ny(10))).unwrap().len(), 1);
        assert_eq!(book.price(&ct("final", "routine", ny(6))).unwrap().len(), 2);
        // Saturday at noon is after hours where weekends count.
        assert_eq!(book.price(&ct("final", "routine", ny(3 * 24 + 12))).unwrap().len(), 2);
    }

    #[test]
    fn a_contract_that_cannot_price_a_read_names_the_missing_field() {
        let mut book = pricebook();
        book.contracts.get_mut("acme-atlantic").unwrap().per_study.remove("default");
        let mr = Read { modality: "MR".into(), ..ct("final", "routine", ny(10)) };
        assert_eq!(book.price(&mr).unwrap_err(), Missing("engagement.per_study.MR".into()));
        let other = Read { contract: "gone".into(), ..mr };
        assert_eq!(book.price(&other).unwrap_err(), Missing("contracts/gone.toml".into()));
    }

    #[test]
    fn periods_are_months_in_the_billing_time_zone() {
        let book = pricebook();
        // 2026-12-01 02:00 UTC is still November in New York.
        let at = UnixMicros(1_796_090_400 * 1_000_000);
        assert_eq!(book.period("acme-atlantic", at), "2026-11");
        assert_eq!(book.period("northwind-lotus", at), "2026-12");
    }
}
