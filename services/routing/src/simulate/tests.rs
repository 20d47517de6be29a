//! The simulator against the live service, and what its results must show.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use meridian_events::{DataClass, KeyStore};
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::{EventLog, TopicName, TopicSpec};

use super::*;
use crate::app::{Cause, Routing};
use crate::domain::model::Priority;
use crate::domain::worklist::{self, State};

fn example(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/simulate").join(file)
}

fn stat_compliance(r: &Report, strategy: Strategy) -> (usize, usize) {
    let summary = r.policies.iter().find(|p| p.policy == strategy).unwrap();
    let all = summary.compliance.iter().find(|c| c.contract == "all" && c.priority == Priority::Stat).unwrap();
    (all.met, all.studies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_and_the_live_service_decide_the_same_day() {
    // Four hours of the example: the same commands, at the same moments,
    // through the live service on an embedded log.
    let mut scenario = Scenario::load(&example("scenario.toml"), &[]).unwrap();
    scenario.day.hours = 4;
    scenario.day.drain_hours = 1;
    let start = scenario.start().unwrap();
    let arrivals = day::arrivals(&scenario, start);
    let simulated = run::run(&scenario, &arrivals, Strategy::Meridian, true);
    assert!(simulated.studies.len() > 20 && simulated.studies.iter().any(|s| s.signed.is_some()));

    let dir = tempfile::TempDir::new().unwrap();
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
    let topic = TopicName::new("us-east", DataClass::Operational, "routing").unwrap();
    log.ensure_topic(&TopicSpec::new(topic, 4)).await.unwrap();
    let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
    let live = Routing::open(
        "us-east",
        Vec::new(),
        log.clone(),
        keys.clone(),
        scenario.policy(),
        Duration::from_millis(50),
        meridian_projection::run::Snapshotter::none(),
    )
    .await
    .unwrap();
    let mut decided = Vec::new();
    for (command, now) in &simulated.trace {
        if let Ok(events) = live.execute(command.clone(), *now, Cause::Unkeyed).await {
            decided.extend(events);
        }
    }
    assert_eq!(decided, simulated.events, "the live service decides what the simulator decided");

    // And its projection, rebuilt from the log, holds the simulator's day.
    drop(live);
    let folded = simulated.events.iter().fold(State::default(), worklist::apply);
    let rebuilt = Routing::open(
        "us-east",
        Vec::new(),
        log,
        keys,
        scenario.policy(),
        Duration::from_millis(50),
        meridian_projection::run::Snapshotter::none(),
    )
    .await
    .unwrap();
    assert_eq!(rebuilt.read(|s| s.clone()).await, folded);
}

#[test]
fn too_few_readers_breach_and_adding_readers_removes_the_breaches() {
    // Without Lotus nobody reads Acme's night: STAT studies breach.
    let mut short = Scenario::load(&example("scenario.toml"), &[]).unwrap();
    short.readers.retain(|r| !r.prefix.starts_with("lotus"));
    let (met, studies) = stat_compliance(&simulate(&short, &[Strategy::Meridian]), Strategy::Meridian);
    assert!(met < studies, "{met} of {studies} STAT studies met without night cover");

    // The example's roster covers the day: no STAT breach.
    let full = Scenario::load(&example("scenario.toml"), &[]).unwrap();
    let (met, studies) = stat_compliance(&simulate(&full, &[Strategy::Meridian]), Strategy::Meridian);
    assert!(studies > 50);
    assert_eq!(met, studies, "every STAT study met with the full roster");
}

#[test]
fn meridian_beats_a_fifo_worklist_on_stat_compliance_in_the_example() {
    let scenario = Scenario::load(&example("scenario.toml"), &[]).unwrap();
    let report = simulate(&scenario, &[Strategy::Meridian, Strategy::Fifo]);
    let (m_met, m_all) = stat_compliance(&report, Strategy::Meridian);
    let (f_met, f_all) = stat_compliance(&report, Strategy::Fifo);
    assert_eq!(m_all, f_all, "both policies see the same day");
    assert!(m_met > f_met, "Meridian {m_met}/{m_all}, FIFO {f_met}/{f_all}");
    // FIFO has no escalation; Meridian's escalations are reported.
    assert!(report.policies[1].escalations.is_empty());
    // The outputs a person reads: a table with both, JSON, an SVG.
    let table = report::table(&report.policies);
    assert!(table.contains("meridian") && table.contains("fifo") && table.contains("acme-atlantic"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
    assert_eq!(json["policies"][1]["policy"], "fifo");
    let svg = report::svg(&report.policies);
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 4, "two panels, two policies");
}

#[test]
fn a_day_is_the_same_every_run_and_an_added_roster_joins_it() {
    let scenario = Scenario::load(&example("scenario.toml"), &[]).unwrap();
    let start = scenario.start().unwrap();
    assert_eq!(day::arrivals(&scenario, start), day::arrivals(&scenario, start));
    let added = Scenario::load(&example("scenario.toml"), &[&example("two-offshore-neuro.toml")]).unwrap();
    assert_eq!(added.roster().len(), scenario.roster().len() + 2);
    assert!(added.roster().iter().any(|r| r.id == "lotus-neuro-2"));
}

#[test]
fn a_bad_scenario_names_the_field() {
    let text = std::fs::read_to_string(example("scenario.toml")).unwrap();
    let err = Scenario::from_toml(&text.replace("mode = \"pull\"", "mode = \"round-robin\"")).unwrap_err();
    assert_eq!(err.to_string(), "<scenario>: contracts[0].mode: expected push or pull");
    let err = Scenario::from_toml(&text.replace("time_zone = \"Asia/Kolkata\"", "time_zone = \"Asia/Bangalore\""))
        .unwrap_err();
    assert!(err.to_string().contains("readers[3].time_zone"), "{err}");
    let err = Scenario::from_toml(&text.replace("per_day = 170", "per_day = \"many\"")).unwrap_err();
    assert!(err.to_string().contains("arrivals[0].per_day"), "{err}");
}
