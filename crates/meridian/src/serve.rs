//! `meridian serve <service>`: one service of one region, as a process of
//! its own, meeting the region's other services only on its Kafka log.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use meridian_config::{LogConfig, ObjectStoreConfig, Platform};
use meridian_events::UnixMicros;
use meridian_region::{Listeners, RegionContext};
use serde_json::json;

use crate::compose::ServiceName;
use crate::dev::{bind, delivery_tokens, key_encryption_key, shutdown_signal, tenant_secrets, verifier, write_atomic};

/// EX_USAGE: the command line or the configuration is at fault.
const USAGE: u8 = 64;

#[derive(Args)]
pub struct ServeArgs {
    /// The service to run.
    #[arg(value_enum)]
    service: ServiceName,
    /// The region it serves.
    #[arg(long)]
    region: String,
    /// The configuration directory.
    #[arg(long)]
    config: PathBuf,
    /// This process's own directory: snapshots, its study index, and (on
    /// `[objects] kind = "local"`) objects. One per process.
    #[arg(long, default_value = ".meridian-serve")]
    data_dir: PathBuf,
    /// Where secrets named by `{ file = … }` are (tenant id secrets, the
    /// token verifying keys, the key-encryption key). `<data-dir>/secrets`
    /// when absent.
    #[arg(long)]
    secrets: Option<PathBuf>,
    /// The address every listener binds (`0.0.0.0` in a pod).
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// The gRPC port (0: any free one).
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,
    /// The HTTP port (0: any free one).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// The DICOM port, for ingest (0: any free one).
    #[arg(long, default_value_t = 11112)]
    dicom_port: u16,
    /// The MLLP port (HL7 v2 orders), for reporting (0: any free one;
    /// 2575 is HL7's registered port).
    #[arg(long, default_value_t = 2575)]
    mllp_port: u16,
    /// Which replica this is (a StatefulSet's ordinal); part of its Kafka
    /// transactional id, so replicas never fence each other.
    #[arg(long)]
    instance: Option<u32>,
    /// How many replicas of this service the region runs: replica `I`
    /// owns the partitions p with p mod N = I of its partitioned consumers
    /// (storage's derivatives) and, for ingest, writes the events of the
    /// studies on them. Routing runs one per region.
    #[arg(long, default_value_t = 1)]
    replicas: u32,
    /// Every replica's gRPC URL in ordinal order, comma-separated (ingest
    /// with --replicas above 1: a replica hands each arrival to the owner
    /// of its study), e.g. `http://ingest-0.ingest:50051,http://ingest-1.ingest:50051`.
    #[arg(long, value_delimiter = ',')]
    peers: Vec<String>,
    /// Write the bound addresses here once every listener is up.
    #[arg(long)]
    endpoints: Option<PathBuf>,
}

/// The routes into `region` and a Kafka client for each source: a source
/// must be on Kafka; one on `region`'s own cluster is passed over (its
/// topics are already there, and a copy would land in the topic it was
/// read from).
fn replication_sources(
    platform: &Platform,
    region: &str,
) -> Result<Vec<(meridian_config::replication::Route, meridian_log::kafka::KafkaConfig)>, String> {
    let servers = |name: &str| match platform.regions.get(name).map(|r| &r.log) {
        Some(LogConfig::Kafka { bootstrap_servers, .. }) => Some(bootstrap_servers.clone()),
        _ => None,
    };
    let mut sources = Vec::new();
    for route in meridian_config::replication::routes(platform).into_iter().filter(|r| r.destination == region) {
        let source = route.source.clone();
        let Some(bootstrap) = servers(&source) else {
            return Err(format!(
                "regions/{source}.toml: [log] kind = \"embedded\": the replicator reads a source region over \
                 Kafka (`meridian dev` replicates between its embedded regions itself)"
            ));
        };
        if servers(region).as_deref() == Some(bootstrap.as_str()) {
            // A copy would land in the topic it was read from: the
            // source's topics are already on the cluster.
            eprintln!("meridian serve: {source} shares {region}'s Kafka cluster ({bootstrap}): nothing to copy");
            continue;
        }
        let log = &platform.regions[&source].log;
        let mut kafka =
            meridian_log::kafka::KafkaConfig::new(bootstrap, format!("meridian-{source}-replicator-{region}"));
        kafka.extra = log.kafka_client(|variable| std::env::var(variable).ok())?;
        sources.push((route, kafka));
    }
    Ok(sources)
}

fn refuse(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("meridian serve: {message}");
    Ok(ExitCode::from(USAGE))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let service = args.service;
    let platform = match Platform::load(&args.config) {
        Ok(p) => Arc::new(p),
        Err(problems) => {
            eprintln!("{problems}");
            return refuse(format!("{} problem(s) in {}: not starting", problems.0.len(), args.config.display()));
        }
    };
    let region = &args.region;
    let Some(config) = platform.regions.get(region) else {
        let known: Vec<&String> = platform.regions.keys().collect();
        return refuse(format!("no region {region:?} in {} (regions: {known:?})", args.config.display()));
    };
    if let LogConfig::Embedded { .. } = config.log {
        return refuse(format!(
            "regions/{region}.toml: [log] kind = \"embedded\" is one process's file; services run as separate \
             processes only on a Kafka log ([log] kind = \"kafka\"). `meridian dev` runs every service in one \
             process on the embedded log."
        ));
    }
    // The command line first: nothing is read before it makes sense.
    let ownership = match meridian_log::partitioner::Ownership::new(args.instance.unwrap_or(0), args.replicas) {
        Ok(o) => o,
        Err(e) => return refuse(format!("--instance and --replicas: {e}")),
    };
    if args.replicas > 1 && service == ServiceName::Routing {
        return refuse(format!(
            "--replicas {}: routing decides over the whole worklist of its region, so a region runs one; \
             a restarted one fences its predecessor",
            args.replicas
        ));
    }
    if service == ServiceName::Ingest && args.replicas > 1 && matches!(config.objects, ObjectStoreConfig::Local) {
        return refuse(format!(
            "--replicas {}: ingest replicas hand each other arrivals whose objects all must read, and \
             regions/{region}.toml's [objects] kind = \"local\" is a folder in each process's data directory; \
             use [objects] kind = \"s3\"",
            args.replicas
        ));
    }
    if service == ServiceName::Ingest && args.replicas > 1 && args.peers.len() != args.replicas as usize {
        return refuse(format!(
            "--replicas {} needs --peers with every replica's gRPC URL in ordinal order; {} given",
            args.replicas,
            args.peers.len()
        ));
    }
    for url in &args.peers {
        if let Err(e) = tonic::transport::Endpoint::from_shared(url.clone()) {
            return refuse(format!("--peers: {url:?} is not a gRPC address (like http://ingest-0.ingest:50051): {e}"));
        }
    }
    let secrets = args.secrets.clone().unwrap_or_else(|| args.data_dir.join("secrets"));
    // A secret that is not where the configuration says is the operator's
    // to fix: EX_USAGE, naming the file or variable.
    let verifier = match verifier(&platform, &secrets) {
        Ok(v) => Arc::new(v),
        Err(e) => return refuse(format!("{e:#}")),
    };
    let failpoints =
        meridian_log::failpoint::FailPoints::from_spec(&std::env::var("MERIDIAN_FAILPOINTS").unwrap_or_default())
            .map_err(anyhow::Error::msg)?;
    let process = match args.instance {
        Some(i) => format!("{}-{i}", service.as_str()),
        None => service.as_str().to_owned(),
    };
    // Only reporting sends reports; a token it cannot read is the
    // operator's to fix (EX_USAGE, naming the field).
    let delivery_tokens = match service {
        ServiceName::Reporting => match delivery_tokens(&platform, &secrets, region) {
            Ok(t) => t,
            Err(e) => return refuse(format!("{e:#}")),
        },
        _ => Default::default(),
    };
    let (tenant_secrets, kek) =
        match (tenant_secrets(&platform, &secrets, region), key_encryption_key(&platform, &secrets, region)) {
            (Ok(t), Ok(k)) => (t, k),
            (Err(e), _) | (_, Err(e)) => return refuse(format!("{e:#}")),
        };
    let options = meridian_region::RegionOptions {
        secrets: tenant_secrets,
        failpoints,
        key_encryption_key: kek,
        process,
        ownership,
        peers: args.peers.clone(),
        delivery_tokens,
    };
    // Secrets are read at start; the certificate's files are watched after.
    let tls = match crate::dev::region_tls(&platform, &secrets, region) {
        Ok(tls) => tls,
        Err(e) => return refuse(e),
    };
    let grpc = bind(args.listen, args.grpc_port, "gRPC", region).await?;
    let http = bind(args.listen, args.http_port, "HTTP", region).await?;
    let dicom = match service {
        ServiceName::Ingest => Some(bind(args.listen, args.dicom_port, "DICOM", region).await?),
        _ => None,
    };
    let mllp = match service {
        ServiceName::Reporting => Some(bind(args.listen, args.mllp_port, "MLLP", region).await?),
        _ => None,
    };
    #[allow(clippy::disallowed_methods)] // the edge: the start time stamps reader registrations
    let now = UnixMicros(SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64);
    let dir = args.data_dir.join(region);
    let context = match RegionContext::open(region, &dir, platform.clone(), verifier, options).await {
        Ok(context) => context,
        // A setting or variable the region needs: the operator's to fix.
        Err(e @ meridian_region::RegionError::Config { .. }) => return refuse(e),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("opening region {region}"))),
    };
    context.record_configuration(&args.config, now).await?;
    let opened = crate::compose::open(Arc::new(context), &[service], now).await?;
    if service == ServiceName::Replicator {
        // Into this region, from each source its configuration needs.
        let sources = match replication_sources(&platform, region) {
            Ok(sources) => sources,
            Err(reason) => return refuse(reason),
        };
        if sources.is_empty() {
            eprintln!("meridian serve: no region's contracts reach {region}: nothing to replicate into it");
        }
        for (route, kafka) in sources {
            let what = format!("replicating {} into {region}", route.source);
            let source = meridian_log::kafka::KafkaLog::connect(kafka).await.with_context(|| what.clone())?;
            let replication = meridian_replicator::app::Replication::open(route, Arc::new(source), opened.log.clone())
                .await
                .with_context(|| what.clone())?;
            // Ends with the process: a step is a Kafka transaction, so one
            // cut short is aborted and copied again from the same positions.
            tokio::spawn(replication.run(crate::dev::REPLICATE_EVERY, std::future::pending()));
        }
    }

    let mut endpoint = json!({
        "grpc": grpc.local_addr()?.to_string(),
        "http": format!("http://{}", http.local_addr()?),
    });
    if let Some(d) = &dicom {
        let addr = d.local_addr()?;
        endpoint["dicom"] = json!({"host": addr.ip().to_string(), "port": addr.port()});
    }
    if let Some(m) = &mllp {
        let addr = m.local_addr()?;
        endpoint["mllp"] = json!({"host": addr.ip().to_string(), "port": addr.port()});
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    endpoint["tls"] = tls.is_some().into();
    endpoint["http"] = format!("{scheme}://{}", http.local_addr()?).into();
    let serving = meridian_region::serve(
        Arc::new(opened),
        Listeners { grpc, http, dicom, mllp, tls, room: None },
        shutdown_signal(),
    );
    if let Some(path) = &args.endpoints {
        // Written atomically once every listener is bound: its presence
        // means the process is up.
        let endpoints = json!({"service": service.as_str(), "regions": {region.clone(): endpoint}});
        write_atomic(path, serde_json::to_vec_pretty(&endpoints)?.as_slice(), false)?;
    }
    eprintln!("meridian serve: {} in {region}: {endpoint}", service.as_str());
    match serving.await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
