//! Routing figures (docs/benchmarks.md): with 10,000 readers and 100,000
//! open studies, the latency of one reader's worklist query and of one
//! claim decision; the same claim through the gRPC server on loopback
//! (token, authorization, decision, durable append, answer); and a full
//! rebuild of 1,000,000 routing events from the embedded log.
//!
//! Usage: cargo run --release -p meridian-integration-tests --bin routing-bench [-- --readers N --studies N --events N]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_events::{DataClass, EventId, EventMeta, KeyStore, UnixMicros};
use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
use meridian_log::{EventLog, Outgoing, TopicName, TopicSpec};
use meridian_routing::adapters::events::to_payload;
use meridian_routing::app::Routing;
use meridian_routing::domain::model::*;
use meridian_routing::domain::policy::*;
use meridian_routing::domain::worklist::{self, Command, Event, State};
use uuid::Uuid;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

const REGIONS: [(&str, &str, &str); 3] =
    [("us-east", "US", "America/New_York"), ("eu-west", "IE", "Europe/Dublin"), ("in-south", "IN", "Asia/Kolkata")];
const SUBS: [&str; 4] = ["neuro", "body", "chest", "msk"];
const MODALITIES: [&str; 4] = ["CT", "MR", "CR", "US"];

fn policy() -> Policy {
    let contracts = (0..10)
        .map(|i| {
            let mut prelim = BTreeSet::from([DeliveryModel::Onshore]);
            if i % 2 == 0 {
                prelim.insert(DeliveryModel::Offshore);
            }
            let c = ContractPolicy {
                name: format!("c{i}"),
                tenant: format!("t{i}"),
                groups: (0..5).map(|g| format!("g{}", (i + g) % 20)).collect(),
                mode: AssignmentMode::Pull,
                delivery: BTreeMap::from([
                    (ReadType::Preliminary, prelim),
                    (ReadType::Final, BTreeSet::from([DeliveryModel::Onshore])),
                ]),
                sla_seconds: BTreeMap::from([
                    (Priority::Stat, 1_800),
                    (Priority::Urgent, 7_200),
                    (Priority::Routine, 86_400),
                ]),
                escalation_per_mille: vec![500, 800],
                service: None,
                subspecialty_required: false,
                language: "en".into(),
            };
            (c.name.clone(), c)
        })
        .collect();
    let regions = REGIONS
        .iter()
        .map(|(n, c, _)| (n.to_string(), RegionInfo { country: c.to_string(), nearshore: BTreeSet::new() }))
        .collect();
    Policy { contracts, regions, ..Default::default() }
}

fn reader(i: usize) -> Reader {
    let (region, _, tz) = REGIONS[i % 3];
    Reader {
        id: format!("r{i}"),
        group: format!("g{}", i % 20),
        region: region.into(),
        time_zone: tz.into(),
        licences: vec![Licence { jurisdiction: "US".into(), expires: UnixMicros(i64::MAX) }],
        credentials: (0..10)
            .filter(|t| !(i + t).is_multiple_of(3))
            .map(|t| Credential { tenant: format!("t{t}"), facility: format!("f{t}"), expires: UnixMicros(i64::MAX) })
            .collect(),
        subspecialties: BTreeSet::from([SUBS[i % 4].to_string(), SUBS[(i / 4) % 4].to_string()]),
        modalities: BTreeSet::from([MODALITIES[i % 4].to_string(), MODALITIES[(i + 1) % 4].to_string()]),
        read_types: BTreeSet::from([ReadType::Preliminary, ReadType::Final]),
        shifts: (1..=7)
            .map(|d| Shift {
                weekday: d,
                start_minute: ((i % 24) * 60) as u32,
                end_minute: (((i + 10) % 24) * 60) as u32,
            })
            .collect(),
        capacity: 10,
        availability: Availability::Available,
    }
}

fn study(i: usize, now: UnixMicros) -> Study {
    Study {
        id: Uuid::from_u128(i as u128 + 1),
        tenant: format!("t{}", i % 10),
        facility: format!("f{}", i % 10),
        contract: format!("c{}", i % 10),
        home_region: "us-east".into(),
        origin_jurisdiction: "US-NY".into(),
        modality: MODALITIES[i % 4].into(),
        body_part: "HEAD".into(),
        subspecialty: Some(SUBS[i % 4].into()),
        subspecialty_required: i.is_multiple_of(5),
        priority: [Priority::Stat, Priority::Urgent, Priority::Routine][i % 3],
        requested_priority: [Priority::Stat, Priority::Urgent, Priority::Routine][i % 3],
        service_type: ServiceType::StoreAndForward,
        read_type: if i.is_multiple_of(4) { ReadType::Final } else { ReadType::Preliminary },
        patient_key: Some(Uuid::from_u128((i % 50_000) as u128)),
        rvu_milli: 500 + (i % 2_000) as u32,
        ai_flagged: i.is_multiple_of(7),
        completed_at: UnixMicros(now.0 - (i % 600) as i64 * 60_000_000),
        deadline: UnixMicros(now.0 + 3_600_000_000 + (i as i64 % 86_400) * 1_000_000),
        prior_reader: None,
        escalations: 0,
        widened: BTreeSet::new(),
        assignee: None,
        sequence: i as u64,
    }
}

fn percentiles(mut xs: Vec<Duration>) -> (f64, f64) {
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    xs.sort();
    let at = |p: f64| xs[((xs.len() as f64 * p).ceil() as usize).clamp(1, xs.len()) - 1].as_secs_f64() * 1e3;
    (at(0.5), at(0.99))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let (n_readers, n_studies, n_events) =
        (arg("--readers", 10_000), arg("--studies", 100_000), arg("--events", 1_000_000));
    let now = UnixMicros(1_795_000_000_000_000);
    let policy = policy();
    let mut state = State::default();
    for i in 0..n_readers {
        state = worklist::apply(state, &Event::ReaderRegistered(reader(i)));
    }
    for i in 0..n_studies {
        state = worklist::apply(state, &Event::StudyQueued(study(i, now)));
    }
    println!("routing   ({n_readers} readers, {n_studies} open studies, 10 contracts, 20 reading groups, 3 regions)");

    // The readers who can take work now (on shift, available): an off-shift
    // reader's query is answered before any study is looked at, and would
    // flatter the figures. A first pass warms the time-zone database.
    let sample: Vec<String> = (0..n_readers)
        .map(|i| format!("r{}", (i * 7_919) % n_readers))
        .filter(|r| state.readers[r].on_shift(now))
        .take(1_000)
        .collect();
    for r in sample.iter().take(50) {
        state.worklist(&policy, now, r)?;
    }
    let mut lat = Vec::new();
    let mut offered = 0;
    for r in &sample {
        let t = Instant::now();
        offered += state.worklist(&policy, now, r)?.len();
        lat.push(t.elapsed());
    }
    let (p50, p99) = percentiles(lat);
    println!(
        "routing   whole worklist of one on-shift reader ({} sampled): p50 {p50:.2} ms, p99 {p99:.2} ms (mean {} studies offered)",
        sample.len(),
        offered / sample.len()
    );
    let mut lat = Vec::new();
    for r in &sample {
        let t = Instant::now();
        state.offers(&policy, now, r, |_| true, 50)?;
        lat.push(t.elapsed());
    }
    let (p50, p99) = percentiles(lat);
    println!("routing   first page (50) of one on-shift reader's worklist: p50 {p50:.3} ms, p99 {p99:.3} ms");

    let (mut found, mut empty) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for r in &sample {
        let t = Instant::now();
        let decided = worklist::decide(&state, &policy, Command::ClaimNext { reader: r.clone() }, now).is_ok();
        if decided { found.push(t.elapsed()) } else { empty.push(t.elapsed()) }
    }
    let rate = sample.len() as f64 / started.elapsed().as_secs_f64();
    let decided = found.len();
    let (p50, p99) = percentiles(found);
    let (e50, e99) = percentiles(empty);
    println!(
        "routing   claim-next decision (pull), readers who found work ({decided} of {}): p50 {p50:.3} ms, p99 {p99:.3} ms; readers with none eligible: p50 {e50:.3} ms, p99 {e99:.3} ms; {rate:.0} decisions/s",
        sample.len()
    );

    // Push: a study arrives under a push contract and the engine assigns it,
    // with the 100,000 pull studies still open beside it.
    let mut push_policy = policy.clone();
    let mut push = push_policy.contracts["c0"].clone();
    push.name = "push".into();
    push.mode = AssignmentMode::Push;
    push_policy.contracts.insert("push".into(), push);
    let mut lat = Vec::new();
    let mut assigned = 0;
    let started = Instant::now();
    for k in 0..1_000 {
        let mut s = study(n_studies + k, now);
        s.contract = "push".into();
        s.tenant = "t0".into();
        s.facility = "f0".into();
        let id = s.id;
        let queued = worklist::apply(state, &Event::StudyQueued(s));
        let t = Instant::now();
        let events = worklist::decide(&queued, &push_policy, Command::Assign { study: id }, now)?;
        lat.push(t.elapsed());
        assigned += events.len();
        state = events.iter().fold(queued, worklist::apply);
    }
    let rate = 1_000.0 / started.elapsed().as_secs_f64();
    let (p50, p99) = percentiles(lat);
    println!(
        "routing   push assignment of an arriving study: p50 {p50:.3} ms, p99 {p99:.3} ms, {rate:.0} decisions/s ({assigned} of 1000 assigned)"
    );

    // A sweep: 1,000 push studies arrive at once and the timer's
    // AssignPending gives each its reader, beside the open pull studies.
    let mut swept = state.clone();
    for k in 0..1_000 {
        let mut s = study(n_studies + 10_000 + k, now);
        s.contract = "push".into();
        s.tenant = "t0".into();
        s.facility = "f0".into();
        swept = worklist::apply(swept, &Event::StudyQueued(s));
    }
    let t = Instant::now();
    let events = worklist::decide(&swept, &push_policy, Command::AssignPending, now)?;
    println!(
        "routing   push sweep (AssignPending) over 1000 arrivals: {:.1} ms for {} assignments",
        t.elapsed().as_secs_f64() * 1e3,
        events.len()
    );

    grpc_claims(n_readers, n_studies).await?;

    // Full rebuild of n_events routing events from the embedded log. The
    // input is written in large batches (as a busy region's routing would
    // append it over hours): per study, StudyQueued and AssignmentClaimed,
    // and for every fourth a release and a second claim.
    let dir = tempfile::TempDir::new()?;
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default())?);
    let topic = TopicName::new("us-east", DataClass::Operational, "routing")?;
    log.ensure_topic(&TopicSpec::new(topic.clone(), 8)).await?;
    let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
    let started = Instant::now();
    let (mut written, mut studies) = (0, 0);
    let mut batch = Vec::new();
    while written < n_events {
        let mut s = study(n_studies + 20_000 + studies, now);
        s.sequence = studies as u64;
        let reader = format!("r{}", studies % n_readers);
        let mut events = vec![
            Event::StudyQueued(s.clone()),
            Event::AssignmentClaimed { study: s.id, reader: reader.clone(), delivery_model: DeliveryModel::Onshore },
        ];
        if studies.is_multiple_of(4) {
            events.push(Event::AssignmentReleased { study: s.id, reader, reason: "shift ended".into() });
            events.push(Event::AssignmentClaimed {
                study: s.id,
                reader: format!("r{}", (studies + 1) % n_readers),
                delivery_model: DeliveryModel::Onshore,
            });
        }
        for (version, e) in events.iter().enumerate() {
            let meta = EventMeta {
                event_id: EventId::new_at(now),
                aggregate_type: "routing.study".into(),
                aggregate_id: s.id,
                aggregate_version: version as u64 + 1,
                tenant: s.tenant.clone(),
                home_region: "us-east".into(),
                occurred_at: now,
                causation_id: None,
                correlation_id: None,
                traceparent: None,
            };
            batch.push(Outgoing::new(topic.clone(), &to_payload(e).plain_envelope(meta)?)?);
        }
        written += events.len();
        studies += 1;
        if batch.len() >= 10_000 {
            log.append(std::mem::take(&mut batch)).await?;
        }
    }
    log.append(batch).await?;
    let write_secs = started.elapsed().as_secs_f64();
    let idle = Duration::from_millis(50);
    let started = Instant::now();
    let routing = Routing::open(
        "us-east",
        Vec::new(),
        log.clone(),
        keys,
        policy,
        idle,
        meridian_projection::run::Snapshotter::none(),
    )
    .await?;
    // The replay ends when a read stays empty for `idle`: not rebuild time.
    let secs = started.elapsed().as_secs_f64() - idle.as_secs_f64();
    let (rebuilt, assigned) =
        routing.read(|s| (s.studies.len(), s.studies.values().filter(|s| s.assignee.is_some()).count())).await;
    anyhow::ensure!(rebuilt == studies && assigned == studies, "rebuilt {rebuilt} of {studies} studies");
    println!(
        "routing   full rebuild of {written} routing events ({studies} studies) from the embedded log: {secs:.2} s ({:.0} events/s; writing them took {write_secs:.1} s)",
        written as f64 / secs
    );
    Ok(())
}

/// ClaimNext through `meridian.routing.v1` on loopback against a region's
/// routing holding `n_readers` readers and `n_studies` open studies (read
/// from its embedded log at open): each call carries a bearer token, is
/// authorized, decided, appended durably and answered, one at a time.
async fn grpc_claims(n_readers: usize, n_studies: usize) -> anyhow::Result<()> {
    use meridian_auth::grpc::Authenticate;
    use meridian_auth::{Authenticator, Principal, TokenSigner};
    use meridian_proto::routing::v1 as pb;
    use meridian_proto::routing::v1::routing_service_client::RoutingServiceClient;
    use meridian_proto::routing::v1::routing_service_server::RoutingServiceServer;
    use meridian_routing::adapters::events::aggregate;
    use meridian_routing::adapters::grpc::RoutingGrpc;

    // The server takes each call's time from the clock: so do the studies.
    let now = meridian_auth::grpc::arrival_time();
    let dir = tempfile::TempDir::new()?;
    let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default())?);
    let topic = TopicName::new("us-east", DataClass::Operational, "routing")?;
    log.ensure_topic(&TopicSpec::new(topic.clone(), 8)).await?;
    let events = (0..n_readers)
        .map(|i| Event::ReaderRegistered(reader(i)))
        .chain((0..n_studies).map(|i| Event::StudyQueued(study(i, now))));
    let mut batch = Vec::new();
    for e in events {
        let (aggregate_type, aggregate_id) = aggregate(&e);
        let meta = EventMeta {
            event_id: EventId::new_at(now),
            aggregate_type: aggregate_type.into(),
            aggregate_id,
            aggregate_version: 1,
            tenant: "t0".into(),
            home_region: "us-east".into(),
            occurred_at: now,
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        };
        batch.push(Outgoing::new(topic.clone(), &to_payload(&e).plain_envelope(meta)?)?);
        if batch.len() >= 10_000 {
            log.append(std::mem::take(&mut batch)).await?;
        }
    }
    log.append(batch).await?;
    let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
    let idle = Duration::from_millis(50);
    let routing = Arc::new(
        Routing::open("us-east", Vec::new(), log, keys, policy(), idle, meridian_projection::run::Snapshotter::none())
            .await?,
    );

    let (private, public) = meridian_auth::token::generate_ed25519()?;
    let signer = TokenSigner::new("k", private.as_bytes(), "iss", "aud")?;
    let verifier = Arc::new(Authenticator::new("iss", "aud", &[("k".into(), public.into_bytes())])?);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service =
        RoutingServiceServer::with_interceptor(RoutingGrpc::new(routing.clone()), Authenticate::new(verifier));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?.connect().await?;
    let mut client = RoutingServiceClient::new(channel);

    let sample: Vec<(String, String)> = routing
        .read(|s| {
            (0..n_readers)
                .map(|i| format!("r{}", (i * 7_919) % n_readers))
                .filter(|r| s.readers[r].on_shift(now))
                .take(1_000)
                .map(|r| (r.clone(), s.readers[&r].group.clone()))
                .collect()
        })
        .await;
    // The same readers' decisions alone, at the same moment: what the RPC
    // adds is the difference.
    let policy = policy();
    let decisions: Vec<(bool, Duration)> = routing
        .read(|s| {
            sample
                .iter()
                .map(|(r, _)| {
                    let t = Instant::now();
                    let found = worklist::decide(s, &policy, Command::ClaimNext { reader: r.clone() }, now).is_ok();
                    (found, t.elapsed())
                })
                .collect()
        })
        .await;
    let (d_found, d_empty): (Vec<_>, Vec<_>) = decisions.into_iter().partition(|(found, _)| *found);
    let (f50, f99) = percentiles(d_found.into_iter().map(|(_, d)| d).collect());
    let (n50, n99) = percentiles(d_empty.into_iter().map(|(_, d)| d).collect());
    println!(
        "routing   the same readers' claim-next decisions alone: found work p50 {f50:.3} ms, p99 {f99:.3} ms; none eligible p50 {n50:.3} ms, p99 {n99:.3} ms"
    );
    let mut calls = Vec::new();
    for (reader, group) in &sample {
        let p = Principal {
            subject: reader.clone(),
            kind: meridian_config::PrincipalKind::Group,
            tenant: None,
            facility: None,
            group: Some(group.clone()),
            reader: Some(reader.clone()),
            roles: vec!["reader".into()],
            trail: Default::default(),
        };
        let mut request = tonic::Request::new(pb::ClaimNextRequest {
            reader_id: reader.clone(),
            idempotency_key: format!("bench-{reader}"),
        });
        let token = signer.mint(&p, now.0 / 1_000_000, 3_600)?;
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
        calls.push(request);
    }
    // Warm the connection and the time-zone database with a few calls
    // that are then not counted.
    let warm = calls.split_off(calls.len().saturating_sub(20));
    for request in warm {
        let _ = client.claim_next(request).await;
    }
    let (mut found, mut empty) = (Vec::new(), Vec::new());
    let started = Instant::now();
    let count = calls.len();
    for request in calls {
        let t = Instant::now();
        match client.claim_next(request).await {
            Ok(_) => found.push(t.elapsed()),
            Err(s) if s.code() == tonic::Code::NotFound => empty.push(t.elapsed()),
            Err(s) => anyhow::bail!("ClaimNext: {s}"),
        }
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let claimed = found.len();
    let (a50, a99) = percentiles(found.iter().chain(&empty).copied().collect());
    println!("routing   ClaimNext over gRPC on loopback, every call: p50 {a50:.3} ms, p99 {a99:.3} ms");
    let (p50, p99) = percentiles(found);
    let (e50, e99) = percentiles(empty);
    println!(
        "routing   ClaimNext over gRPC on loopback, one at a time, readers who found work ({claimed} of {count}): p50 {p50:.3} ms, p99 {p99:.3} ms; none eligible: p50 {e50:.3} ms, p99 {e99:.3} ms; {rate:.0} calls/s"
    );
    Ok(())
}
