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
    channel: Channel,
    token: String,
}

fn read_json(path: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (is `meridian dev` running?)", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// The token to use and the principal's entry in tokens.json (if `--as`).
fn credentials(target: &Target) -> anyhow::Result<(String, serde_json::Value)> {
    match &target.token {
        Some(t) => Ok((t.clone(), serde_json::Value::Null)),
        None => {
            let tokens = read_json(&target.data_dir.join("tokens.json"))?;
            let entry = tokens["principals"][&target.as_principal].clone();
            match entry["token"].as_str() {
                Some(t) => Ok((t.to_owned(), entry)),
                None => bail!("no principal {:?} in tokens.json", target.as_principal),
            }
        }
    }
}

/// A region's gRPC endpoint at `url`; over TLS (https://) trusting `ca`.
fn endpoint(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<tonic::transport::Endpoint> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())?;
    if !url.starts_with("https://") {
        return Ok(endpoint);
    }
    let Some(ca) = ca else {
        bail!("{url} speaks TLS: name the CA that signs its certificate with --ca FILE (PEM)");
    };
    let pem = std::fs::read(ca).with_context(|| format!("--ca {}", ca.display()))?;
    let tls = tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(pem));
    endpoint.tls_config(tls).with_context(|| format!("--ca {}", ca.display()))
}

async fn connect(target: &Target) -> anyhow::Result<Connection> {
    let url = match &target.endpoint {
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => url.clone(),
        Some(url) if url.contains("://") => {
            bail!("--endpoint {url:?}: a region's gRPC port is http:// or, with TLS, https://")
        }
        Some(host_port) => format!("http://{host_port}"),
        None => {
            let endpoints = read_json(&target.data_dir.join("endpoints.json"))?;
            let region = &endpoints["regions"][&target.region];
            let Some(grpc) = region["grpc"].as_str() else {
                let known: Vec<String> =
                    endpoints["regions"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
                bail!("region {:?} is not in endpoints.json (regions: {})", target.region, known.join(", "));
            };
            let scheme = if region["tls"].as_bool() == Some(true) { "https" } else { "http" };
            format!("{scheme}://{grpc}")
        }
    };
    let grpc = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest).to_owned();
    let (token, _) = credentials(target)?;
    let channel =
        endpoint(&url, target.ca.as_deref())?.connect().await.with_context(|| format!("connecting to {grpc}"))?;
    Ok(Connection { client: AdminServiceClient::new(channel.clone()), channel, token })
}

fn authorized<T>(message: T, token: &str) -> anyhow::Result<Request<T>> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub async fn tail(target: &Target, request: pb::TailLogRequest, json: bool) -> anyhow::Result<ExitCode> {
    let mut c = connect(target).await?;
    let mut stream = c.client.tail_log(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    while let Some(event) = stream.message().await.map_err(status_error)? {
        if json {
            say!("{}", tail_json(&event));
        } else {
            say!("{}", tail_line(&event));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// An instant (RFC 3339) or a day (YYYY-MM-DD, its start in UTC), for `flag`.
fn instant(flag: &str, text: &str) -> anyhow::Result<prost_types::Timestamp> {
    let at = match text.parse::<jiff::Timestamp>() {
        Ok(t) => t,
        Err(_) => match text.parse::<jiff::civil::Date>() {
            Ok(day) => day.to_zoned(jiff::tz::TimeZone::UTC)?.timestamp(),
            Err(_) => bail!("{flag} {text:?}: expected an instant (2026-12-01T08:00:00Z) or a day (2026-12-01)"),
        },
    };
    Ok(prost_types::Timestamp { seconds: at.as_second(), nanos: at.subsec_nanosecond() })
}

pub async fn export_audit(
    target: &Target,
    tenant: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let request = pb::ExportAuditRequest {
        tenant: tenant.to_owned(),
        from: from.map(|f| instant("--from", f)).transpose()?,
        to: to.map(|t| instant("--to", t)).transpose()?,
    };
    let mut c = connect(target).await?;
    let mut stream = c.client.export_audit(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    while let Some(record) = stream.message().await.map_err(status_error)? {
        say!("{}", record.atna_json);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whose objects and records, and when, the residency report covers.
pub struct ResidencyScope {
    pub tenant: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub objects: bool,
}

/// The residency report: each region's survey (its admin RPC reads its own
/// store and log), put together. A region that does not answer is a
/// finding too; the report goes on to the next.
pub async fn residency_report(
    target: &Target,
    endpoints: &[String],
    scope: &ResidencyScope,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use pb::survey_residency_response::Finding;
    let regions: Vec<(String, Option<String>)> = if endpoints.is_empty() {
        let known = read_json(&target.data_dir.join("endpoints.json"))?;
        known["regions"].as_object().map(|m| m.keys().map(|r| (r.clone(), None)).collect()).unwrap_or_default()
    } else {
        let mut named = Vec::new();
        for e in endpoints {
            let Some((region, url)) = e.split_once('=') else {
                bail!("--endpoint {e:?}: expected REGION=URL, e.g. us-east=https://us-east.example:50051");
            };
            named.push((region.to_owned(), Some(url.to_owned())));
        }
        named
    };
    let request = pb::SurveyResidencyRequest {
        tenant: scope.tenant.clone().unwrap_or_default(),
        from: scope.from.as_deref().map(|f| instant("--from", f)).transpose()?,
        to: scope.to.as_deref().map(|t| instant("--to", t)).transpose()?,
        objects: scope.objects,
    };
    let mut report = serde_json::json!({
        "regions": {}, "violations": [], "accesses": [], "refusals": [], "unanswered": {}, "objects": [],
    });
    for (region, url) in &regions {
        let t = Target { region: region.clone(), endpoint: url.clone(), ..target.clone() };
        let survey = async {
            let mut c = connect(&t).await?;
            let mut stream = c
                .client
                .survey_residency(authorized(request.clone(), &c.token)?)
                .await
                .map_err(status_error)?
                .into_inner();
            let mut findings = Vec::new();
            while let Some(f) = stream.message().await.map_err(status_error)? {
                findings.extend(f.finding);
            }
            anyhow::Ok(findings)
        };
        let findings = match survey.await {
            Ok(f) => f,
            Err(e) => {
                report["unanswered"][region] = format!("{e:#}").into();
                continue;
            }
        };
        report["regions"][region] = serde_json::json!({});
        let at = |t: &Option<prost_types::Timestamp>| {
            t.as_ref().and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok()).map(|t| t.to_string())
        };
        for f in findings {
            match f {
                Finding::Held(h) => {
                    let held = &mut report["regions"][region][&h.kind];
                    held[&h.tenant] = h.count.into();
                }
                Finding::Object(o) => push(
                    &mut report["objects"],
                    serde_json::json!({ "region": region, "key": o.key, "kind": o.kind, "tenant": o.tenant }),
                ),
                Finding::Violation(v) => push(
                    &mut report["violations"],
                    serde_json::json!({
                        "region": v.region, "key": v.key, "rule": v.rule, "detail": v.detail,
                    }),
                ),
                Finding::Access(a) => push(
                    &mut report["accesses"],
                    serde_json::json!({
                        "region": region, "at": at(&a.at), "tenant": a.tenant, "study_id": a.study_id,
                        "principal": a.principal, "principal_kind": a.principal_kind,
                        "from_region": a.from_region, "action": a.action,
                    }),
                ),
                Finding::Refusal(r) => push(
                    &mut report["refusals"],
                    serde_json::json!({
                        "region": region, "at": at(&r.at), "tenant": r.tenant, "to_region": r.region,
                        "contract": r.contract, "study_id": r.study_id, "reason": r.reason,
                    }),
                ),
            }
        }
    }
    let count = |name: &str| report[name].as_array().map_or(0, Vec::len);
    let (violations, unanswered) = (count("violations"), report["unanswered"].as_object().map_or(0, |m| m.len()));
    if json {
        say!("{report}");
    } else {
        print_residency(&report);
    }
    let clean = violations == 0 && unanswered == 0;
    let asked = regions.len();
    if clean {
        eprintln!("residency: {asked} regions, no object where it may not be");
    } else {
        eprintln!("residency: {violations} violations, {unanswered} of {asked} regions unanswered");
    }
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn push(list: &mut serde_json::Value, item: serde_json::Value) {
    if let Some(items) = list.as_array_mut() {
        items.push(item);
    }
}

/// The report as an operator reads it: holdings by region, then each
/// violation, access and refusal on a line.
fn print_residency(report: &serde_json::Value) {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    if let Some(regions) = report["regions"].as_object() {
        for (region, kinds) in regions {
            let mut held = Vec::new();
            for (kind, tenants) in kinds.as_object().into_iter().flatten() {
                for (tenant, n) in tenants.as_object().into_iter().flatten() {
                    let whose = if tenant.is_empty() { String::new() } else { format!(" of {tenant}") };
                    let n = n.as_u64().unwrap_or_default();
                    let what = match (kind.as_str(), n) {
                        ("phi", 1) => "PHI object",
                        ("phi", _) => "PHI objects",
                        ("derivative", 1) => "derivative",
                        ("derivative", _) => "derivatives",
                        ("data_key", 1) => "data key",
                        ("data_key", _) => "data keys",
                        (_, 1) => "object outside the key scheme",
                        _ => "objects outside the key scheme",
                    };
                    held.push(format!("{n} {what}{whose}"));
                }
            }
            let held = if held.is_empty() { "nothing".to_owned() } else { held.join(", ") };
            say!("{region:<9} holds {held}");
        }
    }
    for o in report["objects"].as_array().into_iter().flatten() {
        let whose = text(&o["tenant"]);
        let whose = if whose.is_empty() { String::new() } else { format!(" of {whose}") };
        say!("{:<9} object {} ({}{whose})", text(&o["region"]), text(&o["key"]), text(&o["kind"]));
    }
    for (region, why) in report["unanswered"].as_object().into_iter().flatten() {
        say!("{region:<9} UNANSWERED {}", text(why));
    }
    for v in report["violations"].as_array().into_iter().flatten() {
        say!("{:<9} VIOLATION {} {}: {}", text(&v["region"]), text(&v["rule"]), text(&v["key"]), text(&v["detail"]));
    }
    for a in report["accesses"].as_array().into_iter().flatten() {
        say!(
            "{:<9} access {} {} study {} by {} ({}) from {}: {}",
            text(&a["region"]),
            text(&a["at"]),
            text(&a["tenant"]),
            text(&a["study_id"]),
            text(&a["principal"]),
            text(&a["principal_kind"]),
            text(&a["from_region"]),
            text(&a["action"])
        );
    }
    for r in report["refusals"].as_array().into_iter().flatten() {
        say!(
            "{:<9} refused {} {} write to {} (contract {}, study {}): {}",
            text(&r["region"]),
            text(&r["at"]),
            text(&r["tenant"]),
            text(&r["to_region"]),
            text(&r["contract"]),
            text(&r["study_id"]),
            text(&r["reason"])
        );
    }
}

fn occurred_at(event: &pb::TailLogResponse) -> Option<String> {
    let t = event.occurred_at.as_ref()?;
    jiff::Timestamp::new(t.seconds, t.nanos).ok().map(|t| t.to_string())
}

/// One event as a line an operator reads: when, where in the log, what,
/// of which aggregate, and the payload's fields as `name=value`.
pub fn tail_line(event: &pb::TailLogResponse) -> String {
    let place = format!("{}/{}@{}", event.topic, event.partition, event.offset);
    if !event.error.is_empty() && event.payload_type.is_empty() {
        return format!("{place} unreadable: {}", event.error);
    }
    let short = event.payload_type.rsplit('.').next().unwrap_or_default();
    let mut line = format!(
        "{} {place} {short} {}/{} v{} tenant={}",
        occurred_at(event).unwrap_or_default(),
        event.aggregate_type,
        event.aggregate_id,
        event.aggregate_version,
        event.tenant
    );
    if event.data_class == "phi" {
        line.push_str(" (sealed)");
    } else if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&event.payload_json) {
        for (name, value) in fields {
            let value = match value {
                serde_json::Value::String(s) if !s.is_empty() && !s.contains(char::is_whitespace) => s,
                other => other.to_string(),
            };
            line.push_str(&format!(" {name}={value}"));
        }
    }
    if !event.error.is_empty() {
        line.push_str(&format!(" unreadable: {}", event.error));
    }
    line
}

/// One event as a JSON object: the envelope's fields and the payload in
/// protobuf's canonical JSON mapping (`null` when sealed or unreadable).
pub fn tail_json(event: &pb::TailLogResponse) -> serde_json::Value {
    let payload: serde_json::Value = serde_json::from_str(&event.payload_json).unwrap_or(serde_json::Value::Null);
    let mut out = serde_json::json!({
        "topic": event.topic,
        "partition": event.partition,
        "offset": event.offset,
        "event_id": event.event_id,
        "payload_type": event.payload_type,
        "data_class": event.data_class,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "aggregate_version": event.aggregate_version,
        "tenant": event.tenant,
        "occurred_at": occurred_at(event),
        "sealed": event.data_class == "phi",
        "payload": payload,
    });
    if !event.traceparent.is_empty() {
        out["traceparent"] = event.traceparent.clone().into();
    }
    if !event.error.is_empty() {
        out["error"] = event.error.clone().into();
    }
    out
}

pub async fn rebuild(target: &Target, name: String) -> anyhow::Result<ExitCode> {
    let mut c = connect(target).await?;
    let request = pb::RebuildProjectionRequest { name };
    let r = c.client.rebuild_projection(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    say!(
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

/// The reader id the principal acts as.
fn reader_of(target: &Target, reader: &Option<String>) -> anyhow::Result<String> {
    if let Some(r) = reader {
        return Ok(r.clone());
    }
    let (_, entry) = credentials(target)?;
    match entry["reader"].as_str() {
        Some(r) => Ok(r.to_owned()),
        None if target.token.is_some() => bail!("with --token, name the reader: pass --reader ID"),
        None => bail!("principal {:?} is not a reader: pass --reader ID", target.as_principal),
    }
}

fn print_entry(region: &str, e: &meridian_proto::routing::v1::WorklistEntry) {
    let deadline = e
        .deadline
        .as_ref()
        .and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok())
        .map(|t| t.to_string())
        .unwrap_or_default();
    say!(
        "{region:<9} {} {:<7} {:<11} {:<3} {:<8} {:<10} due {deadline} {}{}",
        e.study_id,
        e.priority,
        e.read_type,
        e.modality,
        e.body_part,
        e.delivery_model,
        e.tenant,
        if e.ai_flagged { " [AI]" } else { "" }
    );
}

/// The reader's worklist, from the region they sit in: it shows the
/// studies of every region whose contracts reach them (entries carry no
/// PHI; the replicator copies each home region's worklist events there),
/// each naming its home region, where commands about it go. Any region
/// says where the reader sits (readers' events are copied to every region
/// whose studies they read).
pub async fn worklist(target: &Target, reader: Option<String>, limit: u32) -> anyhow::Result<ExitCode> {
    use meridian_proto::routing::v1::GetReaderRequest;
    use meridian_proto::routing::v1::routing_service_client::RoutingServiceClient;
    let reader = reader_of(target, &reader)?;
    if target.endpoint.is_some() {
        // A deployment: the caller names the reader's region's address.
        return worklist_in(target, "the given endpoint", &reader, limit).await;
    }
    let endpoints = read_json(&target.data_dir.join("endpoints.json"))?;
    let regions: Vec<String> =
        endpoints["regions"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let mut sits_in = None;
    let mut last_error = None;
    for region in &regions {
        let t = Target { region: region.clone(), ..target.clone() };
        let c = connect(&t).await?;
        let request = GetReaderRequest { reader_id: reader.clone() };
        match RoutingServiceClient::new(c.channel).get_reader(authorized(request, &c.token)?).await {
            Ok(r) => {
                sits_in = r.into_inner().reader.map(|r| r.region);
                break;
            }
            Err(e) if e.code() == tonic::Code::NotFound => last_error = Some(status_error(e)),
            Err(e) => return Err(status_error(e)),
        }
    }
    let Some(region) = sits_in else {
        return Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no region runs in {}", target.data_dir.display())));
    };
    if !regions.contains(&region) {
        bail!("reader {reader} sits in {region}, which {} does not run", target.data_dir.display());
    }
    let t = Target { region: region.clone(), ..target.clone() };
    worklist_in(&t, &region, &reader, limit).await
}

/// `reader`'s assignments and worklist from `target`'s region (`region`
/// names it in what is printed).
async fn worklist_in(target: &Target, region: &str, reader: &str, limit: u32) -> anyhow::Result<ExitCode> {
    use meridian_proto::routing::v1::routing_service_client::RoutingServiceClient;
    use meridian_proto::routing::v1::{GetWorklistRequest, ListAssignmentsRequest};
    let reader = reader.to_owned();
    let c = connect(target).await?;
    let mut client = RoutingServiceClient::new(c.channel);
    let request = ListAssignmentsRequest { reader_id: reader.clone() };
    let held = client.list_assignments(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    for e in &held.entries {
        print_entry(&e.home_region, e);
    }
    if !held.entries.is_empty() {
        eprintln!("{} studies assigned to {reader}", held.entries.len());
    }
    let request = GetWorklistRequest { reader_id: reader.clone(), page_size: limit as i32, page_token: String::new() };
    let list = client.get_worklist(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    for e in &list.entries {
        print_entry(&e.home_region, e);
    }
    let shown = list.entries.len();
    if list.next_page_token.is_empty() {
        eprintln!("{shown} studies on {reader}'s worklist (from {region}, where they sit)");
    } else {
        eprintln!(
            "the first {shown} studies of {reader}'s worklist (from {region}, where they sit; --limit shows more)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The tenant's unroutable studies in `target`'s region, newest first.
pub async fn unroutable(target: &Target, limit: u32) -> anyhow::Result<ExitCode> {
    use meridian_proto::routing::v1 as pb;
    use meridian_proto::routing::v1::routing_service_client::RoutingServiceClient;
    let c = connect(target).await?;
    let mut client = RoutingServiceClient::new(c.channel);
    let request = pb::ListUnroutableRequest { page_size: limit.min(i32::MAX as u32) as i32 };
    let r = client.list_unroutable(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    for s in &r.studies {
        let at = s.completed_at.and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok());
        let at = at.map(|t| t.to_string()).unwrap_or_default();
        say!("{} {at} facility={} {}", s.study_id, s.facility, s.reason);
    }
    eprintln!("{} unroutable studies in {}", r.studies.len(), target.region);
    Ok(ExitCode::SUCCESS)
}

/// An amount in minor units as its major-unit decimal (ISO 4217 exponent).
fn amount(m: &Option<meridian_proto::common::v1::Money>) -> String {
    let Some(m) = m else { return String::new() };
    let exp = meridian_config::value::currency_exponent(&m.currency_code).unwrap_or(2);
    let (sign, units) = (if m.minor_units < 0 { "-" } else { "" }, m.minor_units.unsigned_abs());
    if exp == 0 {
        return format!("{sign}{units} {}", m.currency_code);
    }
    let scale = 10u64.pow(exp);
    format!("{sign}{}.{:0width$} {}", units / scale, units % scale, m.currency_code, width = exp as usize)
}

pub async fn ledger(target: &Target, tenant: &str, period: &str) -> anyhow::Result<ExitCode> {
    use meridian_proto::billing::v1 as pb;
    use meridian_proto::billing::v1::billing_service_client::BillingServiceClient;
    let c = connect(target).await?;
    let mut client = BillingServiceClient::new(c.channel);
    let request = pb::GetLedgerRequest { tenant: tenant.to_owned(), period: period.to_owned() };
    let r = client.get_ledger(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    for e in &r.entries {
        let extra = if e.included {
            " included".to_owned()
        } else if e.missing.is_empty() {
            String::new()
        } else {
            format!(" missing {}", e.missing)
        };
        say!(
            "{} {:<8} {} {} {} {} {}{extra}",
            e.event_id,
            e.kind,
            e.study_id,
            e.contract,
            e.read_type,
            e.modality,
            amount(&e.amount)
        );
    }
    eprintln!("{} ledger entries of {tenant} for {period} in {}", r.entries.len(), target.region);
    Ok(ExitCode::SUCCESS)
}

/// The columns of an invoice's lines as CSV: whose (the contract of a
/// preview, the number of an issued invoice), the line's place, its
/// contract field, the earlier period it is carried from, and its figures.
const LINES_CSV_HEADER: &str = "invoice,line_no,line,period,quantity,unit_price,amount,currency,event_ids";

/// An invoice's (or a preview's) lines, as text or CSV rows.
fn print_lines(owner: &str, lines: &[meridian_proto::billing::v1::InvoiceLine], csv: bool) {
    for (n, l) in lines.iter().enumerate() {
        let currency = l.amount.as_ref().map_or("", |m| m.currency_code.as_str());
        if csv {
            say!(
                "{owner},{},{},{},{},{},{},{currency},{}",
                n + 1,
                l.line,
                l.period,
                l.quantity,
                minor(&l.unit_price),
                minor(&l.amount),
                l.event_ids.join(" ")
            );
        } else {
            let from = if l.period.is_empty() { String::new() } else { format!(" (from {})", l.period) };
            say!(
                "{owner} {:>3} {:<44} {:>6} × {:>14} = {:>16}{from}",
                n + 1,
                l.line,
                l.quantity,
                amount(&l.unit_price),
                amount(&l.amount)
            );
        }
    }
}

pub async fn invoice_preview(target: &Target, tenant: &str, period: &str, csv: bool) -> anyhow::Result<ExitCode> {
    use meridian_proto::billing::v1 as pb;
    use meridian_proto::billing::v1::billing_service_client::BillingServiceClient;
    let c = connect(target).await?;
    let mut client = BillingServiceClient::new(c.channel);
    let request = pb::PreviewInvoiceRequest { tenant: tenant.to_owned(), period: period.to_owned() };
    let r = client.preview_invoice(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    if csv {
        say!("{LINES_CSV_HEADER}");
    }
    for invoice in &r.invoices {
        print_lines(&invoice.contract, &invoice.lines, csv);
        if !csv {
            say!(
                "{} total {} (charges {}, credits {})",
                invoice.contract,
                amount(&invoice.total),
                amount(&invoice.charges),
                amount(&invoice.credits)
            );
            for b in &invoice.blocking {
                say!("{} blocked: a read needs {b}", invoice.contract);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A group's payouts of a month in every region, by currency.
pub async fn payouts(target: &Target, group: &str, period: &str) -> anyhow::Result<ExitCode> {
    use meridian_proto::billing::v1 as pb;
    use meridian_proto::billing::v1::billing_service_client::BillingServiceClient;
    let endpoints = read_json(&target.data_dir.join("endpoints.json"))?;
    let regions: Vec<String> =
        endpoints["regions"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default();
    let mut by_currency: std::collections::BTreeMap<String, (i64, u64)> = std::collections::BTreeMap::new();
    let asked = regions.len();
    for region in regions {
        let t = Target { region: region.clone(), ..target.clone() };
        let c = connect(&t).await?;
        let mut client = BillingServiceClient::new(c.channel);
        let request = pb::ListPayoutsRequest { reading_group: group.to_owned(), period: period.to_owned() };
        let r = client.list_payouts(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
        for p in r.payouts {
            say!("{region} {} for {} reads", amount(&p.amount), p.reads);
            if let Some(m) = p.amount {
                let sum = by_currency.entry(m.currency_code).or_default();
                sum.0 += m.minor_units;
                sum.1 += p.reads;
            }
        }
    }
    for (currency, (minor_units, reads)) in &by_currency {
        let money =
            Some(meridian_proto::common::v1::Money { currency_code: currency.clone(), minor_units: *minor_units });
        say!("all regions {} for {reads} reads", amount(&money));
    }
    eprintln!("payouts of {group} for {period} from {asked} regions");
    Ok(ExitCode::SUCCESS)
}

/// Issues (`issue`) or lists a tenant's invoices of a month.
pub async fn invoices(target: &Target, tenant: &str, period: &str, issue: bool) -> anyhow::Result<ExitCode> {
    use meridian_proto::billing::v1 as pb;
    use meridian_proto::billing::v1::billing_service_client::BillingServiceClient;
    let c = connect(target).await?;
    let mut client = BillingServiceClient::new(c.channel);
    let (tenant, period) = (tenant.to_owned(), period.to_owned());
    let invoices = if issue {
        let request = pb::IssueInvoiceRequest { tenant: tenant.clone(), period: period.clone() };
        client.issue_invoice(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().invoices
    } else {
        let request = pb::ListInvoicesRequest { tenant: tenant.clone(), period: period.clone() };
        client.list_invoices(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().invoices
    };
    for i in &invoices {
        say!("{} {} {} {} {}", i.number, i.contract, i.period, amount(&i.total), i.event_id);
    }
    eprintln!("{} invoices of {tenant} for {period} in {}", invoices.len(), target.region);
    Ok(ExitCode::SUCCESS)
}

/// `--line 2:1` (line 2, one unit) or `--line 2` (all that is left).
pub fn credit_line(text: &str) -> Result<(u32, u64), String> {
    let (line, quantity) = text.split_once(':').unwrap_or((text, "0"));
    let line: u32 = line.parse().map_err(|_| format!("{line:?} is not a line number (1, 2, …)"))?;
    let quantity: u64 = quantity.parse().map_err(|_| format!("{quantity:?} is not a quantity"))?;
    if line == 0 {
        return Err("lines are counted from 1".into());
    }
    Ok((line, quantity))
}

/// RFC 3339, or nothing when absent.
fn time(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok()).map(|t| t.to_string()).unwrap_or_default()
}

fn minor(m: &Option<meridian_proto::common::v1::Money>) -> i64 {
    m.as_ref().map_or(0, |m| m.minor_units)
}

/// An issued invoice: text, CSV (one row per line) or JSON.
pub async fn invoice_show(target: &Target, number: &str, csv: bool, json: bool) -> anyhow::Result<ExitCode> {
    use meridian_proto::billing::v1 as pb;
    use meridian_proto::billing::v1::billing_service_client::BillingServiceClient;
    let c = connect(target).await?;
    let mut client = BillingServiceClient::new(c.channel);
    let request = pb::GetInvoiceRequest { number: number.to_owned() };
    let r = client.get_invoice(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    let i = r.invoice.context("the region answered without the invoice")?;
    let currency = i.total.as_ref().map_or(String::new(), |m| m.currency_code.clone());
    if json {
        let lines: Vec<serde_json::Value> = i
            .lines
            .iter()
            .enumerate()
            .map(|(n, l)| {
                serde_json::json!({
                    "line_no": n + 1, "line": l.line, "period": l.period, "quantity": l.quantity,
                    "unit_price": minor(&l.unit_price), "amount": minor(&l.amount), "event_ids": l.event_ids,
                })
            })
            .collect();
        let notes: Vec<serde_json::Value> = i
            .credit_notes
            .iter()
            .map(|n| {
                let lines: Vec<serde_json::Value> = n
                    .lines
                    .iter()
                    .map(|l| {
                        serde_json::json!({
                            "invoice_line": l.invoice_line, "line": l.line, "period": l.period,
                            "quantity": l.quantity, "unit_price": minor(&l.unit_price), "amount": minor(&l.amount),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "number": n.number, "reason": n.reason, "total": minor(&n.total), "lines": lines,
                    "issued_at": time(&n.issued_at), "event_id": n.event_id,
                })
            })
            .collect();
        let document = serde_json::json!({
            "number": i.number, "issuer": i.issuer, "tenant": i.tenant, "period": i.period,
            "contract": i.contract, "currency": currency,
            "minor_unit_exponent": meridian_config::value::currency_exponent(&currency).unwrap_or(2),
            "lines": lines, "charges": minor(&i.charges), "credits": minor(&i.credits), "total": minor(&i.total),
            "issued_at": time(&i.issued_at), "event_id": i.event_id, "credit_notes": notes, "rounding": i.rounding,
        });
        say!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(ExitCode::SUCCESS);
    }
    if csv {
        say!("{LINES_CSV_HEADER}");
    } else {
        say!(
            "{} issued by {} to {} for {} ({}; lines rounded {})",
            i.number,
            i.issuer,
            i.tenant,
            i.period,
            i.contract,
            i.rounding
        );
    }
    print_lines(&i.number, &i.lines, csv);
    if !csv {
        say!("total {} (charges {}, credits {})", amount(&i.total), amount(&i.charges), amount(&i.credits));
        for note in &i.credit_notes {
            say!("credit note {} {}: {}", note.number, amount(&note.total), note.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Explains a charge, credit or unpriced read.
pub async fn explain_charge(target: &Target, tenant: &str, event: &str) -> anyhow::Result<ExitCode> {
    use meridian_proto::billing::v1 as pb;
    use meridian_proto::billing::v1::billing_service_client::BillingServiceClient;
    use pb::explain_charge_response::Fact;
    let c = connect(target).await?;
    let mut client = BillingServiceClient::new(c.channel);
    let request = pb::ExplainChargeRequest { event_id: event.to_owned(), tenant: tenant.to_owned() };
    let r = client.explain_charge(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    match r.fact.context("the region answered without the fact")? {
        Fact::Charge(c) => {
            say!("charge {event} of {} for study {} in {} ({})", r.tenant, c.study_id, c.period, c.model);
            say!(
                "read: {} {} {} at {}, ordered {}, signed by {} at {}",
                c.contract,
                c.read_type,
                c.modality,
                c.facility,
                c.priority,
                c.reader_id,
                time(&c.signed_at)
            );
            if c.included {
                say!("within the period's included studies: no price");
            }
            for l in &c.lines {
                say!("  {:<12} {:<44} {:>14}", l.kind, l.line, amount(&l.amount));
            }
            say!("  {:<12} {:<44} {:>14}", "total", "", amount(&c.amount));
            say!("caused by {}", c.cause_event_id);
        }
        Fact::Credit(c) => {
            say!("credit {event} of {} for study {} in {}", r.tenant, c.study_id, c.period);
            say!("breach: {} {} read of {}, late at {}", c.priority, c.read_type, c.contract, time(&c.breached_at));
            say!("  {:<44} {:>14}", c.line, amount(&c.amount));
            say!("caused by {}", c.cause_event_id);
        }
        Fact::Unpriced(u) => {
            say!("unpriced read {event} of {} for study {} in {}", r.tenant, u.study_id, u.period);
            say!("read: {} {} {} at {}, ordered {}", u.contract, u.read_type, u.modality, u.facility, u.priority);
            say!("needs {} in the contract", u.missing);
            say!("caused by {}", u.cause_event_id);
        }
    }
    if r.invoiced {
        say!("invoiced");
    } else if r.carried {
        say!("came after its period's invoice: goes on the contract's next one");
    } else {
        say!("to be invoiced");
    }
    Ok(ExitCode::SUCCESS)
}

/// Issues a credit note against an invoice.
pub async fn credit_note(
    target: &Target,
    number: &str,
    lines: &[(u32, u64)],
    reason: &str,
    key: Option<String>,
) -> anyhow::Result<ExitCode> {
    use meridian_proto::billing::v1 as pb;
    use meridian_proto::billing::v1::billing_service_client::BillingServiceClient;
    let key = key.unwrap_or_else(|| {
        let asked: Vec<String> = lines.iter().map(|(l, q)| format!("{l}:{q}")).collect();
        let id = meridian_events::id::aggregate_id(
            "cli.credit_note",
            &[number.as_bytes(), asked.join(",").as_bytes(), reason.as_bytes()],
        );
        id.simple().to_string()
    });
    let c = connect(target).await?;
    let mut client = BillingServiceClient::new(c.channel);
    let request = pb::IssueCreditNoteRequest {
        invoice_number: number.to_owned(),
        lines: lines
            .iter()
            .map(|&(invoice_line, quantity)| pb::CreditNoteLineRequest { invoice_line, quantity })
            .collect(),
        reason: reason.to_owned(),
        idempotency_key: key,
    };
    let r = client.issue_credit_note(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    let note = r.credit_note.context("the region answered without the credit note")?;
    for l in &note.lines {
        say!(
            "{} line {} {} × {} = {}",
            note.number,
            l.invoice_line,
            l.quantity,
            amount(&l.unit_price),
            amount(&l.amount)
        );
    }
    say!("{} against {} total {} {}", note.number, note.invoice_number, amount(&note.total), note.event_id);
    Ok(ExitCode::SUCCESS)
}

/// One key per invocation (a UUIDv7: its time and random bits): a
/// transport retry of this request saves nothing new.
fn invocation_key() -> String {
    #[allow(clippy::disallowed_methods)] // the edge: a key's time part
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    meridian_events::EventId::new_at(meridian_events::UnixMicros(now.as_micros() as i64)).to_string()
}

/// Saves a draft of the caller's read of `study`.
pub async fn report_draft(
    target: &Target,
    study: &str,
    findings: &str,
    impression: &str,
    fields: Vec<(String, String)>,
    base_version: u32,
) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let fields = fields.into_iter().collect();
    let sections = pb::Sections { findings: findings.to_owned(), impression: impression.to_owned(), fields };
    let request = pb::SaveDraftRequest {
        study_id: study.to_owned(),
        sections: Some(sections),
        base_version,
        idempotency_key: invocation_key(),
    };
    let r = client.save_draft(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    say!("{study} {} draft version {} saved (report {})", r.read_type, r.version, r.report_id);
    Ok(ExitCode::SUCCESS)
}

/// Signs the caller's read of `study`.
pub async fn report_sign(
    target: &Target,
    study: &str,
    read_type: &str,
    version: u32,
    discrepancy: &str,
) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let request = pb::SignRequest {
        study_id: study.to_owned(),
        read_type: read_type.to_owned(),
        version,
        discrepancy: discrepancy.to_owned(),
    };
    let r = client.sign(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    say!("{study} {read_type} signed with version {} at {} ({})", r.version, time(&r.signed_at), r.event_id);
    Ok(ExitCode::SUCCESS)
}

/// An amendment of a signed report.
pub enum Amend {
    Addendum { read_type: String, text: String },
    Correct { read_type: String, findings: String, impression: String, reason: String },
    EnteredInError { read_type: String, reason: String },
}

/// Amends the caller's signed report of `study`.
pub async fn report_amend(target: &Target, study: &str, amend: Amend) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let study_id = study.to_owned();
    let amended = match amend {
        Amend::Addendum { read_type, text } => {
            let request = pb::AddAddendumRequest { study_id, read_type, text, idempotency_key: invocation_key() };
            client.add_addendum(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().amended
        }
        Amend::Correct { read_type, findings, impression, reason } => {
            let sections = Some(pb::Sections { findings, impression, ..Default::default() });
            let request =
                pb::CorrectRequest { study_id, read_type, sections, reason, idempotency_key: invocation_key() };
            client.correct(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().amended
        }
        Amend::EnteredInError { read_type, reason } => {
            let request = pb::EnterInErrorRequest { study_id, read_type, reason };
            client.enter_in_error(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().amended
        }
    };
    let a = amended.context("the region answered without the amendment")?;
    say!("{study} report {} is {} (version {})", a.report_id, a.status, a.version);
    Ok(ExitCode::SUCCESS)
}

/// The DICOMweb URL of a study the caller reads, under the HTTP root of the
/// region that serves it (the home, or where a de-identified contract's
/// derivative landed), from endpoints.json; the path alone with
/// `--endpoint`.
pub async fn open_study(target: &Target, study: &str) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let request = pb::OpenStudyRequest { study_id: study.to_owned() };
    let r = client.open_study(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    let root = if target.endpoint.is_some() {
        None
    } else {
        let endpoints = read_json(&target.data_dir.join("endpoints.json"))?;
        let region = if r.region.is_empty() { &target.region } else { &r.region };
        endpoints["regions"][region]["http"].as_str().map(str::to_owned)
    };
    if !r.region.is_empty() && r.region != target.region {
        eprintln!("served by {} (the contract gives readers de-identified images there)", r.region);
    }
    say!("{}{}", root.unwrap_or_default(), r.dicomweb_path);
    Ok(ExitCode::SUCCESS)
}

/// A tenant's reporting figures for a month.
pub async fn kpis(target: &Target, tenant: &str, period: &str) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let request = pb::GetKpisRequest { tenant: tenant.to_owned(), period: period.to_owned() };
    let k = client.get_kpis(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    let minutes = |s: u64| format!("{:.1} min", s as f64 / 60.0);
    say!("{tenant} {period} in {}: {} reads signed", target.region, k.reads);
    if k.reads > 0 {
        say!(
            "turnaround p50 {}, p90 {}, p99 {}",
            minutes(k.turnaround_p50_seconds),
            minutes(k.turnaround_p90_seconds),
            minutes(k.turnaround_p99_seconds)
        );
    }
    if k.with_sla > 0 {
        say!("SLA met {} of {} ({:.1}%)", k.within_sla, k.with_sla, 100.0 * k.within_sla as f64 / k.with_sla as f64);
    }
    say!(
        "critical results {}: {} reached in time, {} late{}",
        k.critical,
        k.critical_in_time,
        k.critical_late,
        if k.critical_in_time + k.critical_late > 0 {
            format!(", median {} to reach someone", minutes(k.critical_median_seconds))
        } else {
            String::new()
        }
    );
    if k.readers.is_empty() {
        say!("peer reviews scored: none");
    }
    for (what, of) in [("reader", &k.readers), ("group", &k.groups)] {
        for c in of {
            let scores: Vec<String> = c.by_score.iter().map(|(s, n)| format!("{s}: {n}")).collect();
            say!(
                "peer review of {what} {}: {} reviewed, concordant {:.1}% ({}){}",
                c.name,
                c.reviewed,
                c.concordant_per_mille as f64 / 10.0,
                scores.join(", "),
                if c.awaiting_arbitration > 0 {
                    format!(", {} awaiting arbitration", c.awaiting_arbitration)
                } else {
                    String::new()
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Scores a study's peer review (its reviewer), or arbitrates the score
/// (an admin of the reviewed reader's group).
pub async fn peer_review(target: &Target, study: &str, score: &str, arbitrate: bool) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let (study_id, score) = (study.to_owned(), score.to_owned());
    let review = if arbitrate {
        let request = pb::ArbitrateRequest { study_id, score };
        client.arbitrate(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().review
    } else {
        let request = pb::ScorePeerReviewRequest { study_id, score };
        client.score_peer_review(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().review
    };
    let r = review.context("the region answered without the review")?;
    let standing = if r.standing_score.is_empty() {
        "awaits arbitration".to_owned()
    } else {
        format!("stands at {}", r.standing_score)
    };
    say!("{study} peer review of {} ({}): scored {}, {standing}", r.reviewed_reader_id, r.reviewed_group, r.score);
    Ok(ExitCode::SUCCESS)
}

/// A step of a critical result.
pub enum CriticalStep {
    Flag { category: u32 },
    Communicated { recipient: String, method: String },
}

/// Flags a study's critical result, or records its communication.
pub async fn critical(target: &Target, study: &str, step: CriticalStep) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let study_id = study.to_owned();
    let result = match step {
        CriticalStep::Flag { category } => {
            let request = pb::FlagCriticalRequest { study_id, category };
            client.flag_critical(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().critical
        }
        CriticalStep::Communicated { recipient, method } => {
            let request = pb::RecordCommunicationRequest { study_id, recipient, method, communicated_at: None };
            let r = client.record_communication(authorized(request, &c.token)?).await.map_err(status_error)?;
            r.into_inner().critical
        }
    };
    let r = result.context("the region answered without the critical result")?;
    let escalated = if r.escalated { ", escalated" } else { "" };
    say!("{study} critical result, category {}: {} (due {}){escalated}", r.category, r.state, time(&r.deadline));
    Ok(ExitCode::SUCCESS)
}

/// Lists a tenant's deliveries not yet taken, or sends one again.
pub async fn deliveries(target: &Target, tenant: Option<&str>, again: Option<&str>) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let listed = match (tenant, again) {
        (_, Some(id)) => {
            let request = pb::RedeliverRequest { delivery_id: id.to_owned() };
            let r = client.redeliver(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
            r.delivery.into_iter().collect::<Vec<_>>()
        }
        (Some(tenant), None) => {
            let request = pb::ListDeliveriesRequest { tenant: tenant.to_owned() };
            client.list_deliveries(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner().deliveries
        }
        (None, None) => bail!("name a tenant or a delivery"),
    };
    for d in &listed {
        let why = if d.last_error.is_empty() { String::new() } else { format!(": {}", d.last_error) };
        say!(
            "{} {} {} {} {} {} to {} ({} attempts){why}",
            d.delivery_id,
            d.state,
            d.study_id,
            d.read_type,
            d.status,
            d.kind,
            d.endpoint,
            d.attempts
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A study's reports.
pub async fn report_show(target: &Target, study: &str) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let request = pb::GetReportRequest { study_id: study.to_owned() };
    let r = client.get_report(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
    for report in &r.reports {
        let signed = if report.status == "draft" {
            "draft".to_owned()
        } else {
            let at = time(&report.signed_at);
            format!("{}, signed by {} at {at} (version {})", report.status, report.signed_by, report.signed_version)
        };
        say!("{} report {} ({} versions): {signed}", report.read_type, report.report_id, report.versions);
        if let Some(text) = &report.text {
            let sections = text.sections.clone().unwrap_or_default();
            say!("  version {} by {}", text.version, text.author_id);
            if !text.title.is_empty() {
                say!("  {} [{}, {}]", text.title, text.template, text.language);
            }
            say!("  FINDINGS: {}", sections.findings);
            let fields: std::collections::BTreeMap<_, _> = sections.fields.into_iter().collect();
            for (name, value) in fields {
                say!("  {name}: {value}");
            }
            say!("  IMPRESSION: {}", sections.impression);
        }
        for a in &report.amendments {
            let reason = if a.reason.is_empty() { String::new() } else { format!(": {}", a.reason) };
            say!("  {} by {} at {} (version {}){reason}", a.kind, a.reader_id, time(&a.at), a.version);
            if let Some(text) = &a.sections {
                say!("    {} {}", text.findings, text.impression);
            }
        }
    }
    if r.reports.is_empty() {
        eprintln!("no report of {study} yet");
    }
    Ok(ExitCode::SUCCESS)
}

/// Lists reports (every page), one line each.
pub async fn report_list(target: &Target, tenant: &str, status: &str) -> anyhow::Result<ExitCode> {
    use meridian_proto::reporting::v1 as pb;
    use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
    let c = connect(target).await?;
    let mut client = ReportingServiceClient::new(c.channel);
    let mut page_token = String::new();
    let mut listed = 0;
    loop {
        let request = pb::ListReportsRequest {
            tenant: tenant.to_owned(),
            status: status.to_owned(),
            page_size: 500,
            page_token: page_token.clone(),
            read_type: String::new(),
        };
        let r = client.list_reports(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
        for s in &r.reports {
            let signed = if s.signed_by.is_empty() {
                String::new()
            } else {
                format!(", signed by {} at {}", s.signed_by, time(&s.signed_at))
            };
            say!("{} {} {} ({} versions, by {}){signed}", s.study_id, s.read_type, s.status, s.versions, s.author_id);
        }
        listed += r.reports.len();
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    if listed == 0 {
        eprintln!("no reports");
    }
    Ok(ExitCode::SUCCESS)
}

/// An AI triage call.
pub enum AiStep {
    Models,
    Switch { name: String, enabled: bool, reason: String },
    Triage(String),
}

/// Lists the models, turns one on or off, or shows a study's triage.
pub async fn ai(target: &Target, step: AiStep) -> anyhow::Result<ExitCode> {
    use meridian_proto::inference::v1 as pb;
    use meridian_proto::inference::v1::inference_service_client::InferenceServiceClient;
    let c = connect(target).await?;
    let mut client = InferenceServiceClient::new(c.channel);
    let show = |m: &pb::Model| {
        let on = if m.enabled { "on" } else { "off" };
        say!(
            "{}@{} {on}: {} {} ({})",
            m.name,
            m.version,
            m.modalities.join("/"),
            m.body_parts.join("/"),
            m.intended_use
        );
        say!(
            "  {} read, {} flagged, {} failed; recent share flagged {:.2}; latency p50 <= {} ms, p99 <= {} ms; {} drift alerts",
            m.completed,
            m.flagged,
            m.failed,
            m.recent_positive_rate,
            m.latency_p50_ms,
            m.latency_p99_ms,
            m.drift_alerts
        );
        say!("  runtime: {}", m.runtime);
        for h in &m.score_histograms {
            let counts: Vec<String> = h.counts.iter().map(u64::to_string).collect();
            say!("  {} scores by tenths, 0 to 1: {}", h.output, counts.join(" "));
        }
        if !m.failures_by_reason.is_empty() {
            let mut failures: Vec<(&String, &u64)> = m.failures_by_reason.iter().collect();
            failures.sort();
            let failures: Vec<String> = failures.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
            say!("  failures: {}", failures.join(", "));
        }
    };
    match step {
        AiStep::Models => {
            let r = client.list_models(authorized(pb::ListModelsRequest {}, &c.token)?).await.map_err(status_error)?;
            r.into_inner().models.iter().for_each(show);
        }
        AiStep::Switch { name, enabled: true, reason } => {
            let request = pb::EnableModelRequest { name, reason };
            let r = client.enable_model(authorized(request, &c.token)?).await.map_err(status_error)?;
            r.into_inner().model.iter().for_each(show);
        }
        AiStep::Switch { name, enabled: false, reason } => {
            let request = pb::DisableModelRequest { name, reason };
            let r = client.disable_model(authorized(request, &c.token)?).await.map_err(status_error)?;
            r.into_inner().model.iter().for_each(show);
        }
        AiStep::Triage(study) => {
            let request = pb::GetTriageRequest { study_id: study };
            let r = client.get_triage(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
            for t in &r.triages {
                if t.outcome == "failed" {
                    say!("{} {}: failed, {}: {}", r.study_id, t.model, t.reason, t.detail);
                } else {
                    let flag = if t.flagged {
                        format!("flagged {} ({})", t.findings.join(", "), t.suggested_priority)
                    } else {
                        "not flagged".into()
                    };
                    say!("{} {}: {flag}, {} instances in {} ms", r.study_id, t.model, t.instances_used, t.latency_ms);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which routing command to send.
pub enum RoutingCommand {
    Claim(String),
    ClaimNext,
    Release { study: String, reason: String },
    ShowReader,
    SetAvailability(String),
}

/// A reader as a line an operator reads.
fn print_reader(r: &meridian_proto::routing::v1::Reader) {
    let licences: Vec<String> = r
        .licences
        .iter()
        .map(|l| {
            let until = l.expires_at.and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok());
            format!("{} until {}", l.jurisdiction, until.map(|t| t.to_string()).unwrap_or_default())
        })
        .collect();
    let capacity = r.profile.as_ref().map_or(0, |p| p.capacity);
    say!(
        "{} of {} sits in {} ({}): {}, {} open of {}, licences {}",
        r.reader_id,
        r.reading_group,
        r.region,
        r.time_zone,
        r.status,
        r.open_assignments,
        capacity,
        licences.join(", ")
    );
}

pub async fn routing(target: &Target, reader: Option<String>, command: RoutingCommand) -> anyhow::Result<ExitCode> {
    use meridian_proto::routing::v1 as pb;
    use meridian_proto::routing::v1::routing_service_client::RoutingServiceClient;
    let reader = reader_of(target, &reader)?;
    let c = connect(target).await?;
    let mut client = RoutingServiceClient::new(c.channel);
    // One key per invocation: a transport retry of this request appends nothing new.
    let key = format!("cli-{}", std::process::id());
    match command {
        RoutingCommand::Claim(study) => {
            let request = pb::ClaimRequest { reader_id: reader, study_id: study, idempotency_key: key };
            let r = client.claim(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
            if let Some(e) = r.entry {
                print_entry(&e.home_region, &e);
            }
        }
        RoutingCommand::ClaimNext => {
            let request = pb::ClaimNextRequest { reader_id: reader, idempotency_key: key };
            let r = client.claim_next(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
            if let Some(e) = r.entry {
                print_entry(&e.home_region, &e);
            }
        }
        RoutingCommand::Release { study, reason } => {
            let request =
                pb::ReleaseRequest { reader_id: reader, study_id: study.clone(), reason, idempotency_key: key };
            client.release(authorized(request, &c.token)?).await.map_err(status_error)?;
            say!("released {study}");
        }
        RoutingCommand::ShowReader => {
            let request = pb::GetReaderRequest { reader_id: reader };
            let r = client.get_reader(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
            if let Some(r) = r.reader {
                print_reader(&r);
            }
        }
        RoutingCommand::SetAvailability(status) => {
            let request = pb::SetAvailabilityRequest { reader_id: reader.clone(), status };
            client.set_availability(authorized(request, &c.token)?).await.map_err(status_error)?;
            let request = pb::GetReaderRequest { reader_id: reader };
            let r = client.get_reader(authorized(request, &c.token)?).await.map_err(status_error)?.into_inner();
            if let Some(r) = r.reader {
                print_reader(&r);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Files to send: each path, directories walked (sorted), `.dcm` or not.
fn files_of(paths: Vec<std::path::PathBuf>) -> anyhow::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    let mut pending: Vec<_> = paths.into_iter().rev().collect();
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(&path)?.filter_map(Result::ok).map(|e| e.path()).collect();
            entries.sort();
            entries.reverse();
            pending.extend(entries);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// `meridian send`: uploads files over `UploadInstances`, one stream,
/// with a progress line on stderr and a summary; exit status 1 when any
/// instance was refused.
pub async fn send(target: &Target, paths: Vec<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    use meridian_proto::ingest::v1 as ingest;
    use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
    use meridian_proto::ingest::v1::upload_instances_response::Result as Answer;
    use std::io::Write as _;
    const CHUNK: usize = 1 << 20;
    let files = files_of(paths)?;
    if files.is_empty() {
        bail!("no files to send");
    }
    let c = connect(target).await?;
    let mut client = IngestServiceClient::new(c.channel.clone())
        .max_decoding_message_size(8 << 20)
        .max_encoding_message_size(8 << 20);
    let total = files.len();
    let (tx, rx) = tokio::sync::mpsc::channel::<ingest::UploadInstancesRequest>(16);
    let reading = {
        let files = files.clone();
        tokio::spawn(async move {
            use ingest::upload_instances_request::Part;
            for file in &files {
                let bytes = tokio::fs::read(file).await.with_context(|| format!("reading {}", file.display()))?;
                let modified = std::fs::metadata(file)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                let header = ingest::InstanceHeader {
                    // The file as it is on disk: a resend of it is answered, not stored again.
                    idempotency_key: format!("{}:{}:{modified}", file.display(), bytes.len()),
                    size_bytes: bytes.len() as u64,
                    label: file.display().to_string(),
                };
                let message = |part| ingest::UploadInstancesRequest { part: Some(part) };
                if tx.send(message(Part::Header(header))).await.is_err() {
                    return Ok(());
                }
                for chunk in bytes.chunks(CHUNK) {
                    if tx.send(message(Part::Chunk(chunk.to_vec()))).await.is_err() {
                        return Ok(());
                    }
                }
            }
            anyhow::Ok(())
        })
    };
    let started = std::time::Instant::now();
    let request = authorized(tokio_stream::wrappers::ReceiverStream::new(rx), &c.token)?;
    let mut answers = client.upload_instances(request).await.map_err(status_error)?.into_inner();
    let (mut stored, mut refused, mut bytes) = (0usize, Vec::new(), 0u64);
    while let Some(answer) = answers.message().await.map_err(status_error)? {
        bytes += std::fs::metadata(&answer.label).map(|m| m.len()).unwrap_or(0);
        match answer.result {
            Some(Answer::Stored(_)) => stored += 1,
            Some(Answer::Refused(r)) => refused.push((answer.label, r)),
            None => {}
        }
        let done = stored + refused.len();
        if done % 25 != 0 && done != total {
            continue;
        }
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let _ = write!(
            std::io::stderr(),
            "\rsent {done}/{total} instances, {:.1} MB, {rate:.0}/s, {} refused ",
            bytes as f64 / 1e6,
            refused.len()
        );
    }
    let _ = writeln!(std::io::stderr());
    reading.await.context("the reading task")??;
    say!(
        "{stored} of {total} instances stored, {} refused, in {:.1} s",
        refused.len(),
        started.elapsed().as_secs_f64()
    );
    for (label, r) in &refused {
        say!("refused {label}: 0x{:04X} {}: {}", r.dimse_status, r.reason_code, r.reason);
    }
    if stored + refused.len() < total {
        bail!(
            "the region answered {} of {total} instances; send again (stored ones are answered, not stored twice)",
            stored + refused.len()
        );
    }
    Ok(if refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// grpc.health.v1 Check of `service` ("" for the process) at `endpoint`:
/// exit 0 when SERVING, 1 otherwise (named), within `timeout` seconds.
pub async fn health(at: &str, ca: Option<&std::path::Path>, service: &str, timeout: u64) -> anyhow::Result<ExitCode> {
    let endpoint = at;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let bound = std::time::Duration::from_secs(timeout);
    let asked = async {
        let channel = self::endpoint(endpoint, ca)?.connect_timeout(bound).connect().await?;
        let request = tonic_health::pb::HealthCheckRequest { service: service.to_owned() };
        anyhow::Ok(HealthClient::new(channel).check(request).await?.into_inner().status())
    };
    let what = if service.is_empty() { "the process".to_owned() } else { service.to_owned() };
    match tokio::time::timeout(bound, asked).await {
        Ok(Ok(ServingStatus::Serving)) => {
            say!("{endpoint}: {what} SERVING");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Ok(status)) => {
            say!("{endpoint}: {what} {}", status.as_str_name());
            Ok(ExitCode::FAILURE)
        }
        Ok(Err(e)) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(status) => say!("{endpoint}: {what}: {:?}: {}", status.code(), status.message()),
                None => say!("{endpoint}: {what}: {e:#}"),
            }
            Ok(ExitCode::FAILURE)
        }
        Err(_) => {
            say!("{endpoint}: {what}: no answer in {timeout} s");
            Ok(ExitCode::FAILURE)
        }
    }
}
