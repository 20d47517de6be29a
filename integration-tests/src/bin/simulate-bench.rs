//! `meridian simulate` at scale (docs/benchmarks.md): the example scenario
//! (24 h, 3 regions) with its arrivals and roster scaled until the day
//! holds about 20,000 studies, run with Meridian's routing and with FIFO.
//!
//! Usage: cargo run --release -p meridian-integration-tests --bin simulate-bench [-- --studies N]

use std::path::Path;
use std::time::Instant;

use meridian_routing::simulate::{Scenario, Strategy, day, report, run};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let target: f64 =
        args.iter().position(|a| a == "--studies").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(20_000.0);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/simulate/scenario.toml");
    let mut scenario = Scenario::load(&path, &[])?;
    let per_day: f64 = scenario.arrivals.iter().map(|a| a.per_day).sum();
    let k = target / per_day;
    for a in &mut scenario.arrivals {
        a.per_day *= k;
    }
    for r in &mut scenario.readers {
        r.count = ((f64::from(r.count) * k).round() as u32).max(1);
    }
    let start = scenario.start().map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    let arrivals = day::arrivals(&scenario, start);
    let drawn = t.elapsed().as_secs_f64();
    println!(
        "simulate  {} h x {} regions, {} studies, {} readers (arrivals drawn in {drawn:.2} s)",
        scenario.day.hours,
        scenario.regions.len(),
        arrivals.len(),
        scenario.roster().len()
    );
    for strategy in [Strategy::Meridian, Strategy::Fifo] {
        let t = Instant::now();
        let outcome = run::run(&scenario, &arrivals, strategy, false);
        let secs = t.elapsed().as_secs_f64();
        let summary = report::summarise(&outcome, start);
        let stat = summary
            .compliance
            .iter()
            .find(|c| c.contract == "all" && c.priority == meridian_routing::domain::model::Priority::Stat)
            .map_or(0.0, |c| c.compliance_pct);
        println!(
            "simulate  {:<8} {secs:.2} s for the day ({} steps); STAT compliance {stat:.1}%",
            strategy.as_str(),
            outcome.samples.len()
        );
    }
    Ok(())
}
