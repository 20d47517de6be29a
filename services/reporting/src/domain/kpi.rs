//! A tenant's reporting figures for a month: turnaround (study complete →
//! read signed) by percentile, SLA compliance (signed by the read's
//! deadline), and critical results (how many, how many reached someone
//! within their window, the median time to do so). Folded from what
//! reporting holds; no clock.

use meridian_events::UnixMicros;

use super::model::State;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kpis {
    /// Reads signed in the period.
    pub reads: u64,
    /// Turnaround percentiles, in seconds (p50, p90, p99).
    pub turnaround: Option<(u64, u64, u64)>,
    /// Reads signed by their deadline, of those with one.
    pub within_sla: u64,
    pub with_sla: u64,
    /// Critical results flagged in the period, closed in their window,
    /// closed late, and the median seconds from flag to someone reached.
    pub critical: u64,
    pub critical_in_time: u64,
    pub critical_late: u64,
    pub critical_median: Option<u64>,
}

/// The month ("2026-11", UTC) of `t`.
pub fn month(t: UnixMicros) -> String {
    jiff::Timestamp::from_microsecond(t.0).map(|t| t.strftime("%Y-%m").to_string()).unwrap_or_default()
}

fn percentile(sorted: &[u64], p: u64) -> u64 {
    let i = (sorted.len().saturating_sub(1) as u64 * p).div_ceil(100);
    sorted[usize::try_from(i).unwrap_or(0).min(sorted.len() - 1)]
}

/// `tenant`'s figures for `period`.
pub fn kpis(state: &State, tenant: &str, period: &str) -> Kpis {
    let mut k = Kpis::default();
    let mut turnarounds = Vec::new();
    let mut reached = Vec::new();
    for s in state.studies.values().filter(|s| s.facts.tenant == tenant) {
        for r in &s.reports {
            // A peer review is quality work, not a read of the hospital's.
            if r.read_type == "peer_review" {
                continue;
            }
            let Some(signed) = r.signed.as_ref().filter(|sig| month(sig.at) == period) else { continue };
            k.reads += 1;
            if s.facts.completed_at.0 > 0 && signed.at >= s.facts.completed_at {
                turnarounds.push(u64::try_from((signed.at.0 - s.facts.completed_at.0) / 1_000_000).unwrap_or(0));
            }
            if let Some(deadline) = s.facts.deadlines.get(&r.read_type).filter(|d| d.0 > 0) {
                k.with_sla += 1;
                k.within_sla += u64::from(signed.at <= *deadline);
            }
        }
        if let Some(c) = s.critical.as_ref().filter(|c| month(c.flagged_at) == period) {
            k.critical += 1;
            match c.closed {
                Some((at, true)) => {
                    k.critical_in_time += 1;
                    reached.push(u64::try_from((at.0 - c.flagged_at.0).max(0) / 1_000_000).unwrap_or(0));
                }
                Some((at, false)) => {
                    k.critical_late += 1;
                    reached.push(u64::try_from((at.0 - c.flagged_at.0).max(0) / 1_000_000).unwrap_or(0));
                }
                None => {}
            }
        }
    }
    turnarounds.sort_unstable();
    reached.sort_unstable();
    if !turnarounds.is_empty() {
        k.turnaround = Some((percentile(&turnarounds, 50), percentile(&turnarounds, 90), percentile(&turnarounds, 99)));
    }
    if !reached.is_empty() {
        k.critical_median = Some(percentile(&reached, 50));
    }
    k
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::domain::critical::Critical;
    use crate::domain::model::{Report, Signature, Study, StudyFacts};

    const NOV: i64 = 1_793_768_400 * 1_000_000;

    fn study(n: u128, tenant: &str, turnaround_s: i64, deadline_s: i64) -> (Uuid, Study) {
        let completed = UnixMicros(NOV + n as i64 * 60_000_000);
        let signed = UnixMicros(completed.0 + turnaround_s * 1_000_000);
        let facts = StudyFacts {
            tenant: tenant.into(),
            completed_at: completed,
            deadlines: [("final".to_string(), UnixMicros(completed.0 + deadline_s * 1_000_000))].into(),
            ..Default::default()
        };
        let signature = Signature {
            version: 1,
            reader: "ortiz".into(),
            at: signed,
            discrepancy: String::new(),
            event_id: meridian_events::EventId(Uuid::nil()),
        };
        let report = Report {
            id: Uuid::from_u128(n),
            read_type: "final".into(),
            versions: vec![],
            signed: Some(signature),
            amendments: vec![],
        };
        (Uuid::from_u128(n), Study { facts, reports: vec![report], ..Default::default() })
    }

    #[test]
    fn turnaround_percentiles_sla_compliance_and_critical_results_of_a_month() {
        let mut state = State::default();
        // 1 to 100 minutes, deadline one hour: 60 within.
        for n in 1..=100u128 {
            let (id, s) = study(n, "acme", n as i64 * 60, 3_600);
            state.studies.insert(id, s);
        }
        let (id, other) = study(500, "northwind", 10, 3_600);
        state.studies.insert(id, other);
        let flagged = UnixMicros(NOV);
        state.studies.get_mut(&Uuid::from_u128(1)).unwrap().critical = Some(Critical {
            category: 1,
            read_type: "final".into(),
            flagged_by: "ortiz".into(),
            flagged_at: flagged,
            deadline: UnixMicros(flagged.0 + 3_600_000_000),
            closed: Some((UnixMicros(flagged.0 + 600_000_000), true)),
            escalated: false,
        });
        let k = kpis(&state, "acme", "2026-11");
        assert_eq!(k.reads, 100);
        assert_eq!(k.turnaround, Some((50 * 60 + 60, 90 * 60 + 60, 99 * 60 + 60)));
        assert_eq!((k.within_sla, k.with_sla), (60, 100));
        assert_eq!((k.critical, k.critical_in_time, k.critical_late, k.critical_median), (1, 1, 0, Some(600)));
        assert_eq!(kpis(&state, "acme", "2026-12"), Kpis::default(), "another month");
        assert_eq!(kpis(&state, "northwind", "2026-11").reads, 1, "only the tenant's");
    }
}
