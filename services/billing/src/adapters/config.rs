//! The pricebook from configuration: every amount in its currency's minor
//! units (validation already refused amounts with too many places).

use meridian_config::value::{Credit, Decimal, currency_exponent};
use meridian_config::{EngagementModel, Platform};

use crate::domain::money;
use crate::domain::pricing::{AfterHours, ContractPrices, CreditRule, GroupRate, MilestoneDue, Model, Pricebook};

fn minor(d: &Decimal, exponent: u32) -> i64 {
    d.minor_units(exponent).unwrap_or(0)
}

/// The prices of every contract and group of `platform`, and the time zone
/// of every facility.
pub fn pricebook(platform: &Platform) -> Pricebook {
    let mut book = Pricebook::default();
    for (name, contract) in &platform.contracts {
        let e = &contract.engagement;
        let exp = currency_exponent(&e.currency).unwrap_or(2);
        let prices = ContractPrices {
            tenant: contract.tenant.clone(),
            model: match e.model {
                EngagementModel::Transaction => Model::Transaction,
                EngagementModel::Subscription => Model::Subscription,
                EngagementModel::ProjectBased => Model::ProjectBased,
            },
            currency: e.currency.clone(),
            per_study: e.per_study.iter().map(|(k, d)| (k.clone(), minor(d, exp))).collect(),
            per_read_type: e
                .per_read_type
                .iter()
                .map(|(rt, prices)| (rt.clone(), prices.iter().map(|(k, d)| (k.clone(), minor(d, exp))).collect()))
                .collect(),
            priority_surcharge: e.priority_surcharge.iter().map(|(k, d)| (k.clone(), minor(d, exp))).collect(),
            after_hours: e.after_hours.as_ref().map(|a| AfterHours {
                surcharge: minor(&a.surcharge, exp),
                from: a.from.minute_of_day,
                to: a.to.minute_of_day,
                weekends: a.weekends,
            }),
            subspecialty_surcharge: e.subspecialty_surcharge.as_ref().map(|d| minor(d, exp)),
            bills_preliminary: e.bills_preliminary,
            included_studies: e.included_studies.unwrap_or(0),
            monthly_fee: e.monthly_fee.as_ref().map_or(0, |d| minor(d, exp)),
            project_fee: e.project_fee.as_ref().map_or(0, |d| minor(d, exp)),
            project_ends: e.project_ends.as_ref().map(month),
            milestones: milestones(e, exp),
            credit_cap: e.sla_credit_cap.map(|c| c.per_million),
            sla_credit: e
                .sla_credit
                .iter()
                .map(|(p, c)| {
                    let rule = match c {
                        Credit::Share(share) => CreditRule::Share(share.per_million),
                        Credit::Fixed(d) => CreditRule::Fixed(minor(d, exp)),
                    };
                    (p.clone(), rule)
                })
                .collect(),
            rounding: e.rounding.into(),
            billing_time_zone: e.billing_time_zone.as_ref().map_or_else(|| "UTC".to_owned(), |z| z.0.clone()),
        };
        book.contracts.insert(name.clone(), prices);
    }
    for (name, group) in &platform.groups {
        if let Some(p) = &group.payout {
            let exp = currency_exponent(&p.currency).unwrap_or(2);
            let rate = GroupRate { currency: p.currency.clone(), per_wrvu: minor(&p.rate_per_wrvu, exp) };
            book.groups.insert(name.clone(), rate);
        }
    }
    for (tenant, t) in &platform.tenants {
        for f in &t.facilities {
            book.facility_zones.insert(format!("{tenant}/{}", f.name), f.time_zone.0.clone());
        }
    }
    book
}

fn month(d: &meridian_config::value::Date) -> String {
    format!("{:04}-{:02}", d.0.year(), d.0.month())
}

/// A project's fee by period: split by its milestones' shares (largest
/// remainder, so the parts add up to the fee exactly), or whole in the
/// period the project ends.
fn milestones(e: &meridian_config::Engagement, exp: u32) -> Vec<MilestoneDue> {
    let fee = e.project_fee.as_ref().map_or(0, |d| minor(d, exp));
    if e.milestones.is_empty() {
        return e
            .project_ends
            .as_ref()
            .map(|ends| MilestoneDue { line: "engagement.project_fee".into(), period: month(ends), amount: fee })
            .into_iter()
            .collect();
    }
    let weights: Vec<u64> = e.milestones.iter().map(|m| u64::from(m.share.per_million)).collect();
    e.milestones
        .iter()
        .zip(money::split(fee, &weights))
        .map(|(m, amount)| MilestoneDue {
            line: format!("engagement.milestones.{}", m.name),
            period: month(&m.due),
            amount,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_example_configuration_prices_in_minor_units() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev");
        let book = pricebook(&Platform::load(&dir).unwrap());
        let acme = &book.contracts["acme-atlantic"];
        assert_eq!(
            (acme.currency.as_str(), acme.per_study["CT"], acme.per_read_type["preliminary"]["CT"]),
            ("USD", 4_500, 3_000)
        );
        assert_eq!(acme.sla_credit["stat"], CreditRule::Share(500_000));
        assert_eq!(acme.sla_credit["routine"], CreditRule::Fixed(500));
        assert_eq!(acme.after_hours.as_ref().map(|a| (a.from, a.to)), Some((19 * 60, 7 * 60)));
        assert_eq!(book.contracts["northwind-lotus"].model, Model::Subscription);
        let globex = &book.contracts["globex-backlog"];
        assert_eq!(
            (globex.model, globex.project_fee, globex.project_ends.as_deref()),
            (Model::ProjectBased, 12_000_000, Some("2027-03"))
        );
        // 30%, 30% and 40% of the fee, in the months they are due.
        let due: Vec<(&str, &str, i64)> =
            globex.milestones.iter().map(|m| (m.line.as_str(), m.period.as_str(), m.amount)).collect();
        assert_eq!(
            due,
            [
                ("engagement.milestones.started", "2026-12", 3_600_000),
                ("engagement.milestones.half-cleared", "2027-02", 3_600_000),
                ("engagement.milestones.cleared", "2027-03", 4_800_000),
            ]
        );
        assert_eq!(book.groups["atlantic-rads"], GroupRate { currency: "USD".into(), per_wrvu: 3_250 });
        assert!(book.facility_zones.keys().any(|k| k.starts_with("acme/")));
    }
}

#[cfg(test)]
mod milestone_tests {
    use super::*;

    const PROJECT: &str = r#"
        model = "project_based"
        currency = "USD"
        project_fee = "1000.00"
        project_ends = "2027-03-31"
    "#;

    #[test]
    fn a_fee_split_at_milestones_adds_up_to_the_fee_to_the_cent() {
        let text = format!(
            "{PROJECT}{}",
            r#"milestones = [
                { name = "a", due = "2027-01-31", share = "33.3333%" },
                { name = "b", due = "2027-02-28", share = "33.3333%" },
                { name = "c", due = "2027-03-31", share = "33.3334%" },
            ]"#
        );
        let e: meridian_config::Engagement = toml::from_str(&text).unwrap();
        let parts: Vec<(String, i64)> = milestones(&e, 2).into_iter().map(|m| (m.period, m.amount)).collect();
        assert_eq!(parts, [("2027-01".into(), 33_333), ("2027-02".into(), 33_333), ("2027-03".into(), 33_334)]);
        // Without milestones, the whole fee in the month the project ends.
        let e: meridian_config::Engagement = toml::from_str(PROJECT).unwrap();
        let whole = milestones(&e, 2);
        assert_eq!(
            whole,
            [MilestoneDue { line: "engagement.project_fee".into(), period: "2027-03".into(), amount: 100_000 }]
        );
    }
}
