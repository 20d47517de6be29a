//! The day's arrivals: for every stream and simulated hour, a Poisson count
//! with the stream's rate at that local hour, placed uniformly in the hour.
//! Seeded, so a scenario gives the same day every run and both policies
//! see the same studies.

use meridian_events::UnixMicros;
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use uuid::Uuid;

use super::scenario::Scenario;
use crate::domain::model::Priority;

const HOUR: i64 = 3_600_000_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Arrival {
    pub at: UnixMicros,
    /// Index into the scenario's arrival streams.
    pub stream: usize,
    pub study: Uuid,
    pub patient: Uuid,
    pub priority: Priority,
    /// How long this study takes to read, each read.
    pub read: i64,
}

/// A Poisson draw: Knuth's product method for small means, a rounded
/// normal approximation above 30 (the error there is far below the noise
/// of any real arrival curve).
fn poisson(rng: &mut SmallRng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 30.0 {
        // Box-Muller.
        let (u1, u2): (f64, f64) = (rng.random::<f64>().max(f64::MIN_POSITIVE), rng.random());
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        return (mean + z * mean.sqrt()).round().max(0.0) as u64;
    }
    let limit = (-mean).exp();
    let (mut k, mut p) = (0, 1.0);
    loop {
        p *= rng.random::<f64>();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

/// Every arrival of the day, in time order.
pub fn arrivals(scenario: &Scenario, start: UnixMicros) -> Vec<Arrival> {
    let mut rng = SmallRng::seed_from_u64(scenario.day.seed);
    let mut out = Vec::new();
    for (stream, a) in scenario.arrivals.iter().enumerate() {
        let total: f64 = if a.curve.is_empty() { 24.0 } else { a.curve.iter().sum() };
        for hour in 0..i64::from(scenario.day.hours) {
            let from = UnixMicros(start.0 + hour * HOUR);
            let mean = if total > 0.0 { a.per_day * Scenario::weight(a, from) / total } else { 0.0 };
            for _ in 0..poisson(&mut rng, mean) {
                let u: f64 = rng.random();
                let priority = if u < a.stat {
                    Priority::Stat
                } else if u < a.stat + a.urgent {
                    Priority::Urgent
                } else {
                    Priority::Routine
                };
                let read_minutes = a.read_minutes * (0.5 + rng.random::<f64>());
                out.push(Arrival {
                    at: UnixMicros(from.0 + rng.random_range(0..HOUR)),
                    stream,
                    study: Uuid::from_u128(rng.random()),
                    patient: Uuid::from_u128(rng.random()),
                    priority,
                    read: (read_minutes * 60_000_000.0) as i64,
                });
            }
        }
    }
    out.sort_by_key(|a| (a.at, a.study));
    out
}
