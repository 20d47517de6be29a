//! `meridian dev`: every region of a configuration in one process, each with
//! its own embedded log, key store and object-store folder under one data
//! directory. Generates what a fresh machine lacks (the token signing key,
//! tenant id secrets) into `<data-dir>/secrets`, never into the repository.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use meridian_auth::token::generate_ed25519;
use meridian_auth::{Authenticator, Principal, TokenSigner};
use meridian_config::{Platform, SecretRef};
use meridian_events::UnixMicros;
use meridian_region::{Listeners, RegionContext};

use crate::compose::ServiceName;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Args)]
pub struct DevArgs {
    /// The configuration directory.
    #[arg(long, default_value = "deploy/examples/dev")]
    config: PathBuf,
    /// Where logs, keys, objects, snapshots, secrets and tokens live.
    #[arg(long, default_value = ".meridian-dev")]
    data_dir: PathBuf,
    /// Ports from N: region i gets gRPC N+10i, DICOM N+10i+1, HTTP N+10i+2,
    /// MLLP (HL7 v2 orders) N+10i+3.
    #[arg(long, conflicts_with = "ports")]
    port_base: Option<u16>,
    /// `auto`: every listener on a free port (for tests).
    #[arg(long, value_parser = ["auto"])]
    ports: Option<String>,
    /// Lifetime of the tokens written to tokens.json, in hours.
    #[arg(long, default_value_t = 24 * 30)]
    token_hours: i64,
}

/// The regions in the order the default ports follow: the documented three
/// first (us-east 50051/11112/8080, eu-west 50061/…, in-south 50071/…),
/// then any other in name order.
fn region_order(platform: &Platform) -> Vec<String> {
    let documented = ["us-east", "eu-west", "in-south"];
    let mut order: Vec<String> =
        documented.iter().filter(|r| platform.regions.contains_key(**r)).map(|r| r.to_string()).collect();
    order.extend(platform.regions.keys().filter(|r| !documented.contains(&r.as_str())).cloned());
    order
}

struct Ports {
    grpc: u16,
    dicom: u16,
    http: u16,
    mllp: u16,
}

fn ports(args: &DevArgs, i: u16) -> Ports {
    match (&args.ports, args.port_base) {
        (Some(_), _) => Ports { grpc: 0, dicom: 0, http: 0, mllp: 0 },
        (None, Some(base)) => {
            Ports { grpc: base + 10 * i, dicom: base + 10 * i + 1, http: base + 10 * i + 2, mllp: base + 10 * i + 3 }
        }
        (None, None) => Ports { grpc: 50051 + 10 * i, dicom: 11112 + 10 * i, http: 8080 + 10 * i, mllp: 2575 + 10 * i },
    }
}

/// A listener on `ip:port` (port 0: any free one), for `region`'s `what`.
pub(crate) async fn bind(ip: IpAddr, port: u16, what: &str, region: &str) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    TcpListener::bind(addr).await.with_context(|| format!("region {region}: binding the {what} port {addr}"))
}

/// How long `meridian dev` waits for each region to be ready before it
/// writes endpoints.json anyway.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(60);
/// How long a replicator's read of its source waits for new records.
pub(crate) const REPLICATE_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// Writes `bytes` to `path` atomically (temp file, fsync, rename), with
/// owner-only permissions when `private`.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

fn random_hex(bytes: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; bytes];
    getrandom::getrandom(&mut buf).map_err(|e| anyhow::anyhow!("random bytes: {e}"))?;
    Ok(hex::encode(buf))
}

/// Creates the secrets the configuration names by file and a fresh machine
/// does not have yet; returns the token signer.
fn ensure_secrets(platform: &Platform, secrets: &Path) -> anyhow::Result<TokenSigner> {
    std::fs::create_dir_all(secrets).with_context(|| format!("creating {}", secrets.display()))?;
    for tenant in platform.tenants.values() {
        if let SecretRef::File(rel) = &tenant.id_secret {
            let path = secrets.join(rel);
            if !path.exists() {
                write_atomic(&path, random_hex(32)?.as_bytes(), true)?;
                tracing::info!(tenant = %tenant.name, path = %path.display(), "generated the tenant's id secret");
            }
        }
    }
    let mut signer = None;
    for key in &platform.auth.keys {
        let SecretRef::File(rel) = &key.public_key else {
            continue;
        };
        let public = secrets.join(rel);
        let private = secrets.join(format!("{}.key.pem", rel.trim_end_matches(".pem").trim_end_matches(".pub")));
        if !public.exists() || !private.exists() {
            let (private_pem, public_pem) = generate_ed25519()?;
            write_atomic(&private, private_pem.as_bytes(), true)?;
            write_atomic(&public, public_pem.as_bytes(), false)?;
            tracing::info!(key = %key.id, path = %private.display(), "generated a token signing key");
        }
        if signer.is_none() {
            let pem = std::fs::read(&private).with_context(|| format!("reading {}", private.display()))?;
            signer = Some(TokenSigner::new(&key.id, &pem, &platform.auth.issuer, &platform.auth.audience)?);
        }
    }
    signer.context("auth.toml names no verifying key held in a file: `meridian dev` signs tokens with one")
}

/// The region's key-encryption key, where its `[keys]` names one.
pub(crate) fn key_encryption_key(
    platform: &Platform,
    secrets: &Path,
    region: &str,
) -> anyhow::Result<Option<meridian_objects::keys::Kek>> {
    let env = |name: &str| std::env::var(name).ok();
    let Some(secret) = platform.regions.get(region).and_then(|r| r.keys.key_encryption_key.as_ref()) else {
        return Ok(None);
    };
    let what = || format!("regions/{region}.toml: keys.key_encryption_key");
    let text = secret.read(secrets, &env).with_context(what)?;
    let kek = meridian_objects::keys::Kek::from_hex(&text).map_err(anyhow::Error::msg).with_context(what)?;
    Ok(Some(kek))
}

/// The id secrets of the tenants whose PHI `region` holds.
pub(crate) fn tenant_secrets(
    platform: &Platform,
    secrets: &Path,
    region: &str,
) -> anyhow::Result<meridian_region::Secrets> {
    let env = |name: &str| std::env::var(name).ok();
    platform
        .tenants
        .values()
        .filter(|t| t.home_regions.iter().any(|r| r == region))
        .map(|t| {
            let bytes = t.id_secret.read(secrets, &env).with_context(|| format!("tenant {}: id secret", t.name))?;
            let secret = meridian_events::TenantSecret::new(bytes).with_context(|| format!("tenant {}", t.name))?;
            Ok((t.name.clone(), secret))
        })
        .collect()
}

/// The bearer tokens of the enabled FHIR receivers of the tenants homed in
/// `region`, read from the secrets their `bearer_token` names.
pub(crate) fn delivery_tokens(
    platform: &Platform,
    secrets: &Path,
    region: &str,
) -> anyhow::Result<meridian_region::DeliveryTokens> {
    let env = |name: &str| std::env::var(name).ok();
    let mut tokens = meridian_region::DeliveryTokens::new();
    for t in platform.tenants.values().filter(|t| t.home_regions.iter().any(|r| r == region)) {
        for (i, d) in t.delivery.iter().enumerate().filter(|(_, d)| d.enabled) {
            let Some(secret) = &d.bearer_token else { continue };
            let bytes = secret
                .read(secrets, &env)
                .with_context(|| format!("tenants/{}.toml: delivery[{i}].bearer_token", t.name))?;
            let token = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("tenants/{}.toml: delivery[{i}].bearer_token: not UTF-8", t.name))?;
            tokens.insert((t.name.clone(), d.name.clone()), token.trim().to_owned());
        }
    }
    Ok(tokens)
}

/// The region's certificate from `[tls]` (files under `secrets`), or
/// none; an error names the file and field, for an operator to fix.
pub(crate) fn region_tls(
    platform: &Platform,
    secrets: &Path,
    region: &str,
) -> Result<Option<meridian_region::tls::ServerTls>, String> {
    let Some(tls) = platform.regions.get(region).and_then(|r| r.tls.as_ref()) else { return Ok(None) };
    let file = |field: &str, reference: &SecretRef| match reference {
        SecretRef::File(rel) => Ok(secrets.join(rel)),
        SecretRef::Env(_) => Err(format!(
            "regions/{region}.toml: tls.{field}: a certificate is read from a file, so that it can be rotated; \
             name one with {{ file = \"...\" }}"
        )),
    };
    let client_ca = tls.client_ca.as_ref().map(|ca| file("client_ca", ca)).transpose()?;
    let files =
        meridian_region::tls::TlsFiles { cert: file("cert", &tls.cert)?, key: file("key", &tls.key)?, client_ca };
    meridian_region::tls::ServerTls::load(files).map(Some).map_err(|e| format!("regions/{region}.toml: {e}"))
}

pub(crate) fn verifier(platform: &Platform, secrets: &Path) -> anyhow::Result<Authenticator> {
    let env = |name: &str| std::env::var(name).ok();
    let mut keys = Vec::new();
    for key in &platform.auth.keys {
        let pem = key.public_key.read(secrets, &env).with_context(|| format!("auth.toml: key {}", key.id))?;
        keys.push((key.id.clone(), pem));
    }
    let certificates = meridian_auth::ClientCertificates::new(&platform.auth.client_certificates);
    let mut issuers = Vec::new();
    for (i, issuer) in platform.auth.oidc_issuers.iter().enumerate() {
        let source = match &issuer.jwks {
            SecretRef::File(rel) => meridian_auth::oidc::JwksSource::File(secrets.join(rel)),
            SecretRef::Env(_) => meridian_auth::oidc::JwksSource::Fixed(
                issuer.jwks.read(secrets, &env).with_context(|| format!("auth.toml: oidc_issuers[{i}].jwks"))?,
            ),
        };
        issuers.push(
            meridian_auth::oidc::Issuer::new(issuer, source)
                .with_context(|| format!("auth.toml: oidc_issuers[{i}].jwks"))?,
        );
    }
    Ok(Authenticator::new(&platform.auth.issuer, &platform.auth.audience, &keys)?
        .with_certificates(certificates)
        .with_issuers(issuers))
}

/// The identity providers readers sign in to the reading room through
/// (`[oidc_issuers.room]`), their client secrets read.
pub(crate) fn room_providers(
    platform: &Platform,
    secrets: &Path,
) -> anyhow::Result<Vec<meridian_reading_room::oidc::Provider>> {
    let env = |name: &str| std::env::var(name).ok();
    let mut providers = Vec::new();
    for (i, issuer) in platform.auth.oidc_issuers.iter().enumerate() {
        let Some(room) = &issuer.room else { continue };
        let client_secret = match &room.client_secret {
            Some(secret) => Some(
                String::from_utf8(
                    secret
                        .read(secrets, &env)
                        .with_context(|| format!("auth.toml: oidc_issuers[{i}].room.client_secret"))?,
                )
                .with_context(|| format!("auth.toml: oidc_issuers[{i}].room.client_secret is not UTF-8"))?
                .trim()
                .to_owned(),
            ),
            None => None,
        };
        providers.push(meridian_reading_room::oidc::Provider {
            issuer: issuer.issuer.clone(),
            label: room.label.clone(),
            client_id: room.client_id.clone(),
            client_secret,
            scopes: room.scopes.clone(),
        });
    }
    Ok(providers)
}

fn tokens(platform: &Platform, signer: &TokenSigner, now: i64, ttl: i64) -> anyhow::Result<serde_json::Value> {
    let mut principals = BTreeMap::new();
    for p in &platform.auth.principals {
        let token = signer.mint(&Principal::from(p), now, ttl)?;
        principals.insert(
            p.name.clone(),
            json!({
                "token": token,
                "kind": p.kind.as_str(),
                "tenant": p.tenant,
                "facility": p.facility,
                "group": p.group,
                "reader": p.reader,
                "roles": p.roles,
            }),
        );
    }
    Ok(json!({ "principals": principals }))
}

/// Where the reading room's viewer (OHIF's built `dist/`) is: the
/// `MERIDIAN_VIEWER` folder, else where `scripts/install-viewer` puts it.
fn viewer_dist() -> Option<PathBuf> {
    let dist = match std::env::var_os("MERIDIAN_VIEWER") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").map(PathBuf::from)?;
            home.join(".cache/meridian/viewer")
                .join(format!("ohif-{}-room", meridian_reading_room::viewer::OHIF_VERSION))
        }
    };
    if dist.join("index.html").is_file() {
        Some(dist)
    } else {
        eprintln!(
            "meridian dev: the reading room's viewer is not installed ({}): scripts/install-viewer installs it",
            dist.display()
        );
        None
    }
}

/// Every region's gRPC address, the example readers with their tokens, and
/// every region's HTTP root: what each region's reading room needs in
/// `meridian dev`.
#[allow(clippy::type_complexity)]
fn reading_rooms(
    platform: &Platform,
    endpoints: &BTreeMap<String, serde_json::Value>,
    tokens: &serde_json::Value,
) -> (BTreeMap<String, String>, Vec<(meridian_reading_room::DevPrincipal, String)>, BTreeMap<String, String>) {
    let grpc = endpoints
        .iter()
        .filter_map(|(name, e)| {
            let scheme = if e["tls"] == true { "https" } else { "http" };
            e["grpc"].as_str().map(|address| (name.clone(), format!("{scheme}://{address}")))
        })
        .collect();
    let readers = platform
        .auth
        .principals
        .iter()
        .filter_map(|p| {
            let token = tokens["principals"][&p.name]["token"].as_str()?;
            let principal = meridian_reading_room::DevPrincipal {
                name: p.name.clone(),
                reader: p.reader.clone()?,
                group: p.group.clone().unwrap_or_default(),
            };
            Some((principal, token.to_owned()))
        })
        .collect();
    let http = endpoints
        .iter()
        .filter_map(|(name, e)| e["http"].as_str().map(|root| (name.clone(), root.to_owned())))
        .collect();
    (grpc, readers, http)
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

pub async fn run(args: DevArgs) -> anyhow::Result<ExitCode> {
    let platform = match Platform::load(&args.config) {
        Ok(p) => Arc::new(p),
        Err(problems) => {
            eprintln!("{problems}");
            eprintln!("{} problem(s) in {}: not starting", problems.0.len(), args.config.display());
            // EX_USAGE: the configuration, not the platform, is at fault.
            return Ok(ExitCode::from(64));
        }
    };
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let secrets = args.data_dir.join("secrets");
    let signer = ensure_secrets(&platform, &secrets)?;
    let verifier = Arc::new(verifier(&platform, &secrets)?);
    // Tests arm crash points in the child process through the environment.
    let failpoints =
        meridian_log::failpoint::FailPoints::from_spec(&std::env::var("MERIDIAN_FAILPOINTS").unwrap_or_default())
            .map_err(anyhow::Error::msg)?;
    #[allow(clippy::disallowed_methods)]
    // the edge: the start time stamps bootstrap events and tokens
    let wall = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let now = UnixMicros(wall.as_micros() as i64);

    let mut endpoints = BTreeMap::new();
    let mut servers = Vec::new();
    let region_failed = Arc::new(tokio::sync::Notify::new());
    let (stop, stopped) = watch::channel(false);
    let mut opened = Vec::new();
    let mut listening = Vec::new();
    for (i, name) in region_order(&platform).iter().enumerate() {
        let p = ports(&args, i as u16);
        let loopback = IpAddr::from([127, 0, 0, 1]);
        let grpc = bind(loopback, p.grpc, "gRPC", name).await?;
        let http = bind(loopback, p.http, "HTTP", name).await?;
        let dicom = bind(loopback, p.dicom, "DICOM", name).await?;
        let mllp = bind(loopback, p.mllp, "MLLP", name).await?;
        let tls = match region_tls(&platform, &secrets, name) {
            Ok(tls) => tls,
            Err(e) => {
                eprintln!("meridian dev: {e}");
                return Ok(ExitCode::from(64));
            }
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mllp_addr = mllp.local_addr()?;
        let grpc_addr = grpc.local_addr()?;
        let http_addr = http.local_addr()?;
        let dicom_addr = dicom.local_addr()?;
        let options = meridian_region::RegionOptions {
            secrets: tenant_secrets(&platform, &secrets, name)?,
            delivery_tokens: delivery_tokens(&platform, &secrets, name)?,
            failpoints: failpoints.clone(),
            key_encryption_key: key_encryption_key(&platform, &secrets, name)?,
            process: "dev".into(),
            ownership: Default::default(),
            peers: Vec::new(),
        };
        let context = RegionContext::open(name, &args.data_dir.join(name), platform.clone(), verifier.clone(), options)
            .await
            .with_context(|| format!("opening region {name}"))?;
        context.record_configuration(&args.config, now).await?;
        let region = crate::compose::open(Arc::new(context), &ServiceName::ALL, now).await?;
        endpoints.insert(
            name.clone(),
            json!({
                "grpc": grpc_addr.to_string(),
                "tls": tls.is_some(),
                "dicom": { "host": dicom_addr.ip().to_string(), "port": dicom_addr.port() },
                "mllp": { "host": mllp_addr.ip().to_string(), "port": mllp_addr.port() },
                "http": format!("{scheme}://{http_addr}"),
            }),
        );
        let region = Arc::new(region);
        opened.push(region.clone());
        listening.push((region, Listeners { grpc, http, dicom: Some(dicom), mllp: Some(mllp), tls, room: None }));
    }
    if listening.is_empty() {
        bail!("{} configures no region", args.config.display());
    }
    // The replicator, between this process's regions: each route the
    // configuration needs copies its source's operational events into its
    // destination's log. A first pass before any region serves: each
    // region's routing then knows the readers who sit elsewhere (their
    // regions registered them) by the time it is ready.
    for route in meridian_config::replication::routes(&platform) {
        let region = |name: &str| opened.iter().find(|r| r.name == name).map(|r| r.log.clone());
        let (Some(source), Some(destination)) = (region(&route.source), region(&route.destination)) else { continue };
        let what = format!("replicating {} to {}", route.source, route.destination);
        let replication =
            meridian_replicator::app::Replication::open(route, source, destination).await.context(what.clone())?;
        replication.pass(meridian_replicator::app::BATCH, std::time::Duration::from_millis(50)).await.context(what)?;
        let mut rx = stopped.clone();
        tokio::spawn(replication.run(REPLICATE_EVERY, async move {
            let _ = rx.wait_for(|s| *s).await;
        }));
    }
    let tokens = tokens(&platform, &signer, wall.as_secs() as i64, args.token_hours * 3_600)?;
    // Each region's reading room, its development sign-in offering the
    // example readers.
    let rooms = reading_rooms(&platform, &endpoints, &tokens);
    let viewer = viewer_dist();
    let providers = room_providers(&platform, &secrets)?;
    for (region, listeners) in &mut listening {
        let config = meridian_reading_room::RoomConfig {
            region: region.name.clone(),
            // One gRPC port serves every service of a region here.
            routing: rooms.0.clone(),
            reporting: rooms.0.clone(),
            http_endpoints: rooms.2.clone(),
            ca: None,
            viewer: viewer.clone(),
            dev_principals: rooms.1.clone(),
            secure_cookie: listeners.tls.is_some(),
            public_url: None,
            providers: providers.clone(),
            verifier: Some(verifier.clone()),
        };
        listeners.room = Some(meridian_reading_room::ReadingRoom::new(config).router());
    }
    for (region, listeners) in listening {
        let mut rx = stopped.clone();
        let serving = meridian_region::serve(region, listeners, async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        let failed = region_failed.clone();
        servers.push(tokio::spawn(async move {
            let served = serving.await;
            // A region that stops on its own (its log lost) stops the rest.
            if served.is_err() {
                failed.notify_one();
            }
            served
        }));
    }
    write_atomic(&args.data_dir.join("tokens.json"), serde_json::to_vec_pretty(&tokens)?.as_slice(), true)?;
    // Ready first: its log and objects answer and its consumers have read
    // what came in while it was down. Bounded: a region that is not is
    // named, and its /readyz says why.
    for region in &opened {
        if tokio::time::timeout(READY_WITHIN, region.until_ready()).await.is_err() {
            eprintln!(
                "meridian dev: region {} is not ready after {} s: {}",
                region.name,
                READY_WITHIN.as_secs(),
                region.unready().join("; ")
            );
        }
    }
    // Written last and atomically: its presence means every listener is up.
    let endpoints = json!({ "regions": endpoints });
    write_atomic(&args.data_dir.join("endpoints.json"), serde_json::to_vec_pretty(&endpoints)?.as_slice(), false)?;
    for (name, e) in endpoints["regions"].as_object().into_iter().flatten() {
        eprintln!(
            "meridian dev: region {name:<9} gRPC {}  HTTP {}",
            e["grpc"].as_str().unwrap_or(""),
            e["http"].as_str().unwrap_or("")
        );
    }
    eprintln!("meridian dev: endpoints and tokens in {} (Ctrl-C stops)", args.data_dir.display());

    tokio::select! {
        () = shutdown_signal() => {}
        () = region_failed.notified() => eprintln!("meridian dev: a region stopped on its own; stopping the others"),
    }
    let _ = stop.send(true);
    let mut failed = false;
    for server in servers {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("error: {e}");
                failed = true;
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    let _ = std::fs::remove_file(args.data_dir.join("endpoints.json"));
    eprintln!("meridian dev: stopped");
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
