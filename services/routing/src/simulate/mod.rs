//! `meridian simulate`: capacity planning on the real routing engine.
//!
//! A scenario ([`scenario`]) names regions, contracts, arrival streams with
//! time-of-day curves and a roster of readers; [`day`] draws the day's
//! arrivals from a seed; [`run`] drives routing's own `decide`/`apply` over
//! simulated time for a policy (Meridian's, or a FIFO baseline); [`report`]
//! turns the outcome into compliance, utilisation and escalations, as a
//! table, JSON and an SVG. No sleeps and no I/O in the loop.

pub mod day;
pub mod report;
pub mod run;
pub mod scenario;

#[cfg(test)]
mod tests;

use serde::Serialize;

pub use run::{Outcome, Strategy};
pub use scenario::Scenario;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub start: String,
    pub hours: u32,
    pub arrivals: usize,
    pub readers: usize,
    pub policies: Vec<report::Summary>,
}

/// Runs each strategy over the same day.
pub fn simulate(scenario: &Scenario, strategies: &[Strategy]) -> Report {
    let start = scenario.start().unwrap_or(meridian_events::UnixMicros(0));
    let arrivals = day::arrivals(scenario, start);
    let policies =
        strategies.iter().map(|s| report::summarise(&run::run(scenario, &arrivals, *s, false), start)).collect();
    Report {
        start: scenario.day.start.clone(),
        hours: scenario.day.hours,
        arrivals: arrivals.len(),
        readers: scenario.roster().len(),
        policies,
    }
}
