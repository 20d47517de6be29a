//! Talking to a running region: its address from `endpoints.json`, a token
//! from `tokens.json` (or `--token`).

use std::process::ExitCode;

use anyhow::{Context, bail};
use meridian_proto::admin::v1 as pb;
use meridian_proto::admin::v1::admin_service_client::AdminServiceClient;
use tonic::Request;
use tonic::transport::Channel;

use crate::Target;

struct Connection {
    client: AdminServiceClient<Channel>,
    token: String,
}

fn read_json(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (is `meridian dev` running?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

async fn connect(target: &Target) -> anyhow::Result<Connection> {
    let endpoints = read_json(&target.data_dir.join("endpoints.json"))?;
    let Some(grpc) = endpoints["regions"][&target.region]["grpc"].as_str() else {
        let known: Vec<String> =
            endpoints["regions"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
        bail!("region {:?} is not in endpoints.json (regions: {})", target.region, known.join(", "));
    };
    let token = match &target.token {
        Some(t) => t.clone(),
        None => {
            let tokens = read_json(&target.data_dir.join("tokens.json"))?;
            match tokens["principals"][&target.as_principal]["token"].as_str() {
                Some(t) => t.to_owned(),
                None => bail!("no principal {:?} in tokens.json", target.as_principal),
            }
        }
    };
    let channel = Channel::from_shared(format!("http://{grpc}"))?
        .connect()
        .await
        .with_context(|| format!("connecting to {grpc}"))?;
    Ok(Connection { client: AdminServiceClient::new(channel), token })
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub async fn tail(
    target: &Target,
    study: Option<String>,
    streams: Vec<String>,
    follow: bool,
) -> anyhow::Result<ExitCode> {
    let mut c = connect(target).await?;
    let request = pb::TailLogRequest { study_id: study.unwrap_or_default(), follow, streams };
    let mut stream = c.client.tail_log(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    while let Some(event) = stream.message().await.map_err(status_error)? {
        let at = event
            .occurred_at
            .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
            .map(|t| t.to_string())
            .unwrap_or_default();
        if !event.error.is_empty() {
            println!("{}/{}@{} unreadable: {}", event.topic, event.partition, event.offset, event.error);
            continue;
        }
        let short = event.payload_type.rsplit('.').next().unwrap_or_default();
        println!(
            "{}/{}@{} {at} {short} {}/{} v{} tenant={} {}",
            event.topic,
            event.partition,
            event.offset,
            event.aggregate_type,
            event.aggregate_id,
            event.aggregate_version,
            event.tenant,
            event.payload_text
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn rebuild(target: &Target, name: String) -> anyhow::Result<ExitCode> {
    let mut c = connect(target).await?;
    let request = pb::RebuildProjectionRequest { name };
    let r = c.client.rebuild_projection(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    println!(
        "{} rebuilt in region {}: {} events applied, {} duplicates, {} skipped, {:.1} ms; {} the state before the rebuild\n{}",
        r.name,
        target.region,
        r.events_applied,
        r.duplicates,
        r.skipped,
        r.duration_micros as f64 / 1e3,
        if r.matches_previous { "matches" } else { "DIFFERS FROM" },
        r.summary
    );
    Ok(if r.matches_previous { ExitCode::SUCCESS } else { ExitCode::from(3) })
}
