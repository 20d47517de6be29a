//! `meridian room`: the reading room as a process of its own, for a
//! deployment where each service runs apart (`meridian serve`). It holds
//! no state of the platform's: it signs readers in through the identity
//! providers of `auth.toml` and calls each region's routing and reporting
//! over gRPC and its DICOMweb over HTTP, as `meridian dev` mounts it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use meridian_config::Platform;

use crate::dev::{bind, region_tls, room_providers, shutdown_signal, verifier, write_atomic};

/// EX_USAGE: the command line or the configuration is at fault.
const USAGE: u8 = 64;

#[derive(Args)]
pub struct RoomArgs {
    /// The region whose readers sign in here (its certificate, if it has
    /// `[tls]`, is the room's).
    #[arg(long)]
    region: String,
    /// The configuration directory (`auth.toml`'s identity providers).
    #[arg(long)]
    config: PathBuf,
    /// Where secrets named by `{ file = … }` are (the identity providers'
    /// key sets, a confidential client's secret, the region's certificate).
    #[arg(long, default_value = "secrets")]
    secrets: PathBuf,
    /// The address the HTTP port binds (`0.0.0.0` in a pod).
    #[arg(long, default_value = "127.0.0.1")]
    listen: IpAddr,
    /// The HTTP port (0: any free one).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// A region's routing, as REGION=URL (its gRPC address, e.g.
    /// `us-east=http://meridian-us-east-routing:50051`); one per region.
    #[arg(long = "routing", value_parser = region_address)]
    routing: Vec<(String, String)>,
    /// A region's reporting, as REGION=URL (gRPC); one per region.
    #[arg(long = "reporting", value_parser = region_address)]
    reporting: Vec<(String, String)>,
    /// A region's HTTP root serving DICOMweb, as REGION=URL (e.g.
    /// `us-east=http://meridian-us-east-storage:8080`); one per region.
    #[arg(long = "dicomweb", value_parser = region_address)]
    dicomweb: Vec<(String, String)>,
    /// The CA (PEM) that signs the regions' certificates, for https:// URLs.
    #[arg(long, env = "MERIDIAN_CA")]
    ca: Option<PathBuf>,
    /// OHIF's built `dist/` (scripts/install-viewer); no viewer when absent.
    #[arg(long, env = "MERIDIAN_VIEWER")]
    viewer: Option<PathBuf>,
    /// Where readers' browsers reach the room, when a proxy (an ingress
    /// ending TLS) stands between: `https://room.example`. The identity
    /// provider sends them back there, and an https one makes the session
    /// cookie Secure.
    #[arg(long)]
    public_url: Option<String>,
    /// Write the bound address here once the port is up.
    #[arg(long)]
    endpoints: Option<PathBuf>,
}

fn region_address(text: &str) -> Result<(String, String), String> {
    let (region, url) = text.split_once('=').ok_or_else(|| format!("{text:?}: REGION=URL"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{text:?}: the URL is http:// or, with TLS, https://"));
    }
    Ok((region.to_owned(), url.trim_end_matches('/').to_owned()))
}

fn refuse(message: impl std::fmt::Display) -> anyhow::Result<ExitCode> {
    eprintln!("meridian room: {message}");
    Ok(ExitCode::from(USAGE))
}

pub async fn run(args: RoomArgs) -> anyhow::Result<ExitCode> {
    let platform = match Platform::load(&args.config) {
        Ok(p) => Arc::new(p),
        Err(problems) => {
            eprintln!("{problems}");
            return refuse(format!("{} problem(s) in {}: not starting", problems.0.len(), args.config.display()));
        }
    };
    if !platform.regions.contains_key(&args.region) {
        let known: Vec<&String> = platform.regions.keys().collect();
        return refuse(format!("no region {:?} in {} (regions: {known:?})", args.region, args.config.display()));
    }
    // Every region of the configuration, for each of the three: a reader's
    // studies may be homed in any of them.
    let mut maps = Vec::new();
    for (flag, given) in
        [("--routing", &args.routing), ("--reporting", &args.reporting), ("--dicomweb", &args.dicomweb)]
    {
        let map: BTreeMap<String, String> = given.iter().cloned().collect();
        if let Some(unknown) = map.keys().find(|r| !platform.regions.contains_key(*r)) {
            return refuse(format!("{flag} {unknown}=…: no region {unknown:?} in {}", args.config.display()));
        }
        let missing: Vec<&String> = platform.regions.keys().filter(|r| !map.contains_key(*r)).collect();
        if !missing.is_empty() {
            return refuse(format!("{flag}: no address for region(s) {missing:?}: one REGION=URL per region"));
        }
        maps.push(map);
    }
    let [routing, reporting, dicomweb]: [BTreeMap<String, String>; 3] =
        maps.try_into().map_err(|_| anyhow::anyhow!("three maps"))?;
    let ca = match &args.ca {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("--ca {}", path.display()))?),
        None => None,
    };
    let tls_wanted =
        routing.values().chain(reporting.values()).chain(dicomweb.values()).any(|u| u.starts_with("https://"));
    if tls_wanted && ca.is_none() {
        return refuse("an https:// address needs --ca FILE (the PEM of the CA that signs the regions' certificates)");
    }
    let verifier = match verifier(&platform, &args.secrets) {
        Ok(v) => Arc::new(v),
        Err(e) => return refuse(format!("{e:#}")),
    };
    let providers = match room_providers(&platform, &args.secrets) {
        Ok(p) => p,
        Err(e) => return refuse(format!("{e:#}")),
    };
    if providers.is_empty() {
        return refuse(format!(
            "{}/auth.toml names no identity provider for the reading room ([oidc_issuers.room]): no reader could sign in",
            args.config.display()
        ));
    }
    let tls = match region_tls(&platform, &args.secrets, &args.region) {
        Ok(tls) => tls,
        Err(e) => return refuse(e),
    };
    let public_url = args.public_url.clone().map(|u| u.trim_end_matches('/').to_owned());
    if let Some(url) = &public_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        return refuse(format!("--public-url {url:?}: the room's address as browsers reach it, https://…"));
    }
    let viewer = args.viewer.clone().filter(|dist| dist.join("index.html").is_file());
    if let (Some(dist), None) = (&args.viewer, &viewer) {
        return refuse(format!(
            "--viewer {}: no index.html there (scripts/install-viewer installs OHIF)",
            dist.display()
        ));
    }
    let config = meridian_reading_room::RoomConfig {
        region: args.region.clone(),
        routing,
        reporting,
        http_endpoints: dicomweb,
        ca,
        viewer,
        dev_principals: Vec::new(),
        secure_cookie: tls.is_some() || public_url.as_deref().is_some_and(|u| u.starts_with("https://")),
        public_url,
        providers,
        verifier: Some(verifier),
    };
    let router = axum::Router::new()
        .nest("/room", meridian_reading_room::ReadingRoom::new(config).router())
        .route("/", axum::routing::get(|| async { axum::response::Redirect::to("/room/worklist") }))
        .route("/healthz", axum::routing::get(|| async { "ok" }));
    let http = bind(args.listen, args.http_port, "HTTP", &args.region).await?;
    let local = http.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(path) = &args.endpoints {
        let endpoints = serde_json::json!({"service": "room", "http": format!("{scheme}://{local}")});
        write_atomic(path, serde_json::to_vec_pretty(&endpoints)?.as_slice(), false)?;
    }
    eprintln!("meridian room: the reading room of {} on {scheme}://{local}/room", args.region);
    let served = match tls {
        None => axum::serve(http, router).with_graceful_shutdown(shutdown_signal()).await,
        Some(tls) => {
            let listener = meridian_region::tls::TlsListener { incoming: tls.incoming(http, "HTTP"), local };
            tokio::spawn(tls.watch(std::future::pending()));
            axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await
        }
    };
    served.context("the reading room's HTTP server")?;
    Ok(ExitCode::SUCCESS)
}
