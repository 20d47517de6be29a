//! The reading room: what a radiologist uses in a browser. A thin adapter
//! over the same gRPC services the CLI calls (routing's worklist, claim
//! and release; reporting's drafts and signatures), mounted at `/room` on
//! a region's HTTP port: HTML rendered on the server ([`page`]), a small
//! script for live updates and deadlines counting down, sessions held
//! here ([`session`]) so the browser never holds a bearer token.
//!
//! Where things go: the worklist is asked of the region the reader sits
//! in (it gathers every region's studies that reach them), a command
//! about a study goes to its home region, as the worklist names it.
//!
//! What it does: sign-in through an identity provider ([`oidc`]) or, in
//! `meridian dev`, as an example reader; the worklist live, claim, claim
//! next, release; the report editor (the template's coded fields, drafts
//! saved as the reader types, sign, addenda, corrections, critical
//! results, priors); peer review scored by RADPEER; the OHIF viewer
//! ([`viewer`]) through a DICOMweb proxy on the session. Not yet: priors'
//! images (see ARCHITECTURE.md, "The reading room").

#![forbid(unsafe_code)]

pub mod oidc;
pub mod page;
pub mod session;
pub mod viewer;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use meridian_proto::reporting::v1 as reporting;
use meridian_proto::reporting::v1::reporting_service_client::ReportingServiceClient;
use meridian_proto::routing::v1 as routing;
use meridian_proto::routing::v1::routing_service_client::RoutingServiceClient;
use serde::Deserialize;
use tonic::transport::Channel;

pub use page::DevPrincipal;
use page::Signed;
use session::{Grant, Session, Sessions};

/// The session cookie's name.
pub const COOKIE: &str = "meridian_room";

/// The cookie that binds a sign-in through a provider to this browser.
const LOGIN_COOKIE: &str = "meridian_room_login";
/// A provider's access token is renewed this long before it ends.
const RENEW_BEFORE_SECONDS: i64 = 60;

const CSS: &str = include_str!("room.css");
const SCRIPT: &str = include_str!("room.js");

/// What a region's reading room is opened with.
pub struct RoomConfig {
    /// The region whose HTTP port serves it.
    pub region: String,
    /// Every region's routing, by gRPC address (`http://host:port`, or
    /// `https://` trusting `ca`): where worklists are asked and claims sent.
    pub routing: BTreeMap<String, String>,
    /// Every region's reporting, by gRPC address: drafts and signatures.
    pub reporting: BTreeMap<String, String>,
    /// Every region's HTTP root (`http://host:port`): whose DICOMweb the
    /// viewer's requests are passed to, and whose `/readyz` says whether
    /// the region answers.
    pub http_endpoints: BTreeMap<String, String>,
    /// The CA (PEM) that signs the regions' certificates, for `https://`
    /// addresses.
    pub ca: Option<Vec<u8>>,
    /// OHIF's built `dist/` folder, when the viewer is installed.
    pub viewer: Option<std::path::PathBuf>,
    /// Development sign-in: the example readers and their tokens. Empty
    /// where none is offered.
    pub dev_principals: Vec<(DevPrincipal, String)>,
    /// The cookie's `Secure` attribute: set when the port speaks TLS, or
    /// readers reach the room over https through a proxy (`public_url`).
    pub secure_cookie: bool,
    /// Where readers' browsers reach the room (`https://room.example`),
    /// when a proxy stands between: the identity provider sends them back
    /// there. Else the request's own scheme and Host.
    pub public_url: Option<String>,
    /// Identity providers readers sign in through (`auth.toml`'s
    /// `[oidc_issuers.room]`), in order.
    pub providers: Vec<oidc::Provider>,
    /// Verifies the access tokens providers issue, as the platform does:
    /// who signed in, and as which reader.
    pub verifier: Option<Arc<meridian_auth::Authenticator>>,
}

pub struct ReadingRoom {
    config: RoomConfig,
    sessions: Sessions,
    logins: oidc::Logins,
    channels: Mutex<HashMap<String, Channel>>,
    /// The viewer's DICOMweb requests, passed on to the regions.
    http: reqwest::Client,
}

#[derive(Debug)]
enum Failure {
    /// No live session: back to sign-in.
    SignIn,
    /// A state-changing request without the session's CSRF token, or from
    /// another origin.
    Forbidden(&'static str),
    /// The platform refused or failed: shown to the reader.
    Platform(String),
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Failure {
        Failure::Platform(said(&status))
    }
}

/// What the platform said, as a reader reads it: the code and the message
/// (which names the rule that refused).
fn said(status: &tonic::Status) -> String {
    let code = match status.code() {
        tonic::Code::FailedPrecondition => "Refused",
        tonic::Code::PermissionDenied => "Not permitted",
        tonic::Code::NotFound => "Not found",
        tonic::Code::InvalidArgument => "Not accepted",
        tonic::Code::Unavailable => "Unreachable",
        tonic::Code::Unauthenticated => "Signed out",
        _ => "Failed",
    };
    format!("{code}: {}", status.message())
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::SignIn => Redirect::to("/room/sign-in").into_response(),
            Failure::Forbidden(why) => (StatusCode::FORBIDDEN, Html(page::layout("Refused", None, &format!(
                "<h1>Refused</h1><p role=\"alert\">{}</p><p><a href=\"/room/worklist\">Back to the worklist</a></p>",
                page::escape(why)
            ))))
                .into_response(),
            Failure::Platform(message) => (StatusCode::BAD_GATEWAY, Html(page::layout("Failed", None, &format!(
                "<h1>The platform did not answer as asked</h1><p role=\"alert\">{}</p>\
                 <p><a href=\"/room/worklist\">Back to the worklist</a></p>",
                page::escape(&message)
            ))))
                .into_response(),
        }
    }
}

#[allow(clippy::disallowed_methods)] // the edge: a session's clock
fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl ReadingRoom {
    pub fn new(config: RoomConfig) -> Arc<ReadingRoom> {
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(120));
        if let Some(ca) = config.ca.as_deref().and_then(|pem| reqwest::Certificate::from_pem(pem).ok()) {
            http = http.add_root_certificate(ca);
        }
        let http = http.build().unwrap_or_else(|_| reqwest::Client::new());
        Arc::new(ReadingRoom {
            config,
            sessions: Sessions::default(),
            logins: oidc::Logins::default(),
            channels: Mutex::new(HashMap::new()),
            http,
        })
    }

    /// The room's routes, to be nested at `/room`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/", get(|| async { Redirect::to("/room/worklist") }))
            .route("/sign-in", get(sign_in_page).post(sign_in))
            .route("/sign-out", post(sign_out))
            .route("/oidc/{provider}/start", get(oidc_start))
            .route("/oidc/callback", get(oidc_callback))
            .route("/worklist", get(worklist))
            .route("/worklist/rows", get(worklist_rows))
            .route("/worklist/events", get(worklist_events))
            .route("/why", get(why))
            .route("/claim", post(claim))
            .route("/claim-next", post(claim_next))
            .route("/release", post(release))
            .route("/studies/{study}", get(study))
            .route("/studies/{study}/draft", post(draft))
            .route("/studies/{study}/sign", post(sign))
            .route("/studies/{study}/addendum", post(addendum))
            .route("/studies/{study}/critical", post(critical))
            .route("/studies/{study}/communication", post(communication))
            .route("/studies/{study}/score", post(score))
            .route("/studies/{study}/correct", post(correct))
            .route("/studies/{study}/entered-in-error", post(entered_in_error))
            .route("/assets/room.css", get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS) }))
            .route(
                "/assets/room.js",
                get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT) }),
            )
            .route("/dicomweb/{region}/{*path}", get(dicomweb))
            .layer(axum::middleware::from_fn(hardened))
            .merge(
                Router::new()
                    .route("/viewer", get(viewer_file))
                    .route("/viewer/{*path}", get(viewer_file))
                    .layer(axum::middleware::from_fn(viewer_policy)),
            )
            .with_state(self)
    }

    /// The channel to `service` of `region` (one per address, kept).
    fn channel(&self, service: &str, addresses: &BTreeMap<String, String>, region: &str) -> Result<Channel, Failure> {
        let address = addresses
            .get(region)
            .ok_or_else(|| Failure::Platform(format!("region {region}'s {service} is not one this room knows")))?;
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let unusable =
            |e: &dyn std::fmt::Display| Failure::Platform(format!("region {region}'s {service} at {address}: {e}"));
        let mut endpoint = tonic::transport::Endpoint::from_shared(address.clone()).map_err(|e| unusable(&e))?;
        if address.starts_with("https://") {
            let Some(ca) = &self.config.ca else {
                return Err(unusable(&"speaks TLS, and the room was given no CA to trust it by"));
            };
            let tls =
                tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(ca));
            endpoint = endpoint.tls_config(tls).map_err(|e| unusable(&e))?;
        }
        let channel = endpoint.connect_lazy();
        channels.insert(address.clone(), channel.clone());
        Ok(channel)
    }

    fn routing(&self, region: &str) -> Result<RoutingServiceClient<Channel>, Failure> {
        Ok(RoutingServiceClient::new(self.channel("routing", &self.config.routing, region)?))
    }

    fn reporting(&self, region: &str) -> Result<ReportingServiceClient<Channel>, Failure> {
        Ok(ReportingServiceClient::new(self.channel("reporting", &self.config.reporting, region)?))
    }

    /// The live session the request's cookie names. A token that ends within a minute is renewed first (its refresh
    /// token); one that cannot be renewed ends the session (drafts are on
    /// the log).
    async fn session(&self, headers: &HeaderMap) -> Result<(String, Session), Failure> {
        let id = cookie(headers, COOKIE).ok_or(Failure::SignIn)?;
        let now = now();
        let mut session = self.sessions.get(&id, now).ok_or(Failure::SignIn)?;
        if session.expires_at.is_some_and(|at| at - RENEW_BEFORE_SECONDS <= now) {
            match self.renew(&session, now).await {
                Ok(grant) => {
                    self.sessions.renew(&id, grant.clone());
                    (session.token, session.expires_at, session.refresh) =
                        (grant.token, grant.expires_at, grant.refresh);
                }
                Err(why) => {
                    tracing::info!(principal = %session.principal, %why, "a reading-room session's token ended");
                    self.sessions.close(&id);
                    return Err(Failure::SignIn);
                }
            }
        }
        Ok((id, session))
    }

    /// A new access token for the session, from its refresh token.
    async fn renew(&self, session: &Session, now: i64) -> Result<Grant, String> {
        let (provider, refresh) = session.refresh.as_ref().ok_or("no refresh token")?;
        let p = self.config.providers.get(*provider).ok_or("the provider is no longer configured")?;
        let endpoints = self.endpoints(*provider).await?;
        let tokens =
            oidc::tokens(&self.http, &endpoints, p, &[("grant_type", "refresh_token"), ("refresh_token", refresh)])
                .await?;
        Ok(Grant {
            expires_at: Some(tokens.expires_at(now)),
            // A provider that rotates refresh tokens sends the next one.
            refresh: Some((*provider, tokens.refresh_token.clone().unwrap_or_else(|| refresh.clone()))),
            token: tokens.access_token,
            signed_in_with: session.signed_in_with.clone(),
        })
    }

    /// The provider's endpoints, read from its discovery document once.
    async fn endpoints(&self, provider: usize) -> Result<oidc::Endpoints, String> {
        if let Some(e) = self.logins.endpoints(provider) {
            return Ok(e);
        }
        let p = self.config.providers.get(provider).ok_or("no such provider")?;
        let endpoints = oidc::discover(&self.http, &p.issuer).await?;
        self.logins.keep_endpoints(provider, endpoints.clone());
        Ok(endpoints)
    }

    /// The session, for a state-changing request: same origin, and the
    /// form's CSRF token is the session's.
    async fn changing(&self, headers: &HeaderMap, csrf: &str) -> Result<(String, Session), Failure> {
        same_origin(headers)?;
        let (id, session) = self.session(headers).await?;
        if !session::same_token(csrf, &session.csrf) {
            return Err(Failure::Forbidden("the form's CSRF token is not this session's: reload the page"));
        }
        Ok((id, session))
    }

    /// Where the reader sits (their worklist is asked there).
    async fn sits_in(&self, token: &str, reader: &str) -> Result<String, Failure> {
        let request = authorized(routing::GetReaderRequest { reader_id: reader.to_owned() }, token)?;
        let answer = self.routing(&self.config.region)?.get_reader(request).await?.into_inner();
        Ok(answer.reader.map(|r| r.region).unwrap_or_else(|| self.config.region.clone()))
    }

    /// Whether each region answers (its `/readyz`, a second at most, all at
    /// once).
    async fn regions(&self) -> Vec<page::RegionState> {
        let asks = self.config.http_endpoints.iter().map(|(name, root)| async move {
            let ready = self.http.get(format!("{root}/readyz")).timeout(std::time::Duration::from_secs(1)).send();
            let answers = matches!(ready.await, Ok(r) if r.status().is_success());
            page::RegionState { name: name.clone(), answers }
        });
        futures_util::future::join_all(asks).await
    }

    /// The peer reviews the reader read blind and signed but has not
    /// scored, in every region (a region that does not answer lists none):
    /// their own peer review reads, page after page.
    async fn to_score(&self, session: &Session) -> Vec<page::ToScore> {
        let asks = self.config.reporting.keys().map(|region| async move {
            let mut client = self.reporting(region).ok()?;
            let (mut open, mut page_token) = (Vec::new(), String::new());
            loop {
                let request = reporting::ListReportsRequest {
                    read_type: "peer_review".into(),
                    page_size: 1_000,
                    page_token,
                    ..Default::default()
                };
                let answer = client.list_reports(authorized(request, &session.token).ok()?).await.ok()?.into_inner();
                open.extend(
                    answer
                        .reports
                        .into_iter()
                        .filter(|r| r.signed_by == session.reader && r.review_score.is_empty())
                        .map(|r| page::ToScore { study: r.study_id, region: region.clone() }),
                );
                if answer.next_page_token.is_empty() {
                    return Some(open);
                }
                page_token = answer.next_page_token;
            }
        });
        futures_util::future::join_all(asks).await.into_iter().flatten().flatten().collect()
    }

    async fn rows(&self, session: &Session) -> Result<String, Failure> {
        let region = session.region.clone();
        let mut client = self.routing(&region)?;
        let request =
            authorized(routing::ListAssignmentsRequest { reader_id: session.reader.clone() }, &session.token)?;
        let held = client.list_assignments(request).await?.into_inner().entries;
        let request = routing::GetWorklistRequest {
            reader_id: session.reader.clone(),
            page_size: 100,
            page_token: String::new(),
        };
        let offered = client.get_worklist(authorized(request, &session.token)?).await?.into_inner().entries;
        Ok(page::worklist_rows(&held, &offered, &session.csrf))
    }
}

fn signed(session: &Session) -> Signed<'_> {
    Signed { principal: &session.principal, reader: &session.reader, csrf: &session.csrf }
}

fn authorized<T>(message: T, token: &str) -> Result<tonic::Request<T>, Failure> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| Failure::Platform("the session's token is not a header value".into()))?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// The named cookie's value.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A state-changing request from another origin is refused: its `Origin`
/// (or, without one, its `Referer`) must name this host.
fn same_origin(headers: &HeaderMap) -> Result<(), Failure> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).ok_or(Failure::Forbidden("no Host header"))?;
    let from = headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER)).and_then(|v| v.to_str().ok());
    let Some(from) = from else { return Ok(()) };
    let authority = from.split_once("://").map(|(_, rest)| rest.split('/').next().unwrap_or_default());
    if authority == Some(host) { Ok(()) } else { Err(Failure::Forbidden("a request from another site: refused")) }
}

/// Every page: no framing by other sites, no sniffing, scripts and styles
/// from this origin only, no caching of what a reader saw.
async fn hardened(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = [
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'; form-action 'self'"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The viewer's pages: OHIF runs its own scripts inline, compiles
/// WebAssembly codecs and starts workers from blobs; it still talks only
/// to this origin and is never framed.
async fn viewer_policy(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let policy = "default-src 'self' blob: data:; script-src 'self' 'unsafe-inline' 'unsafe-eval' \
                  'wasm-unsafe-eval' blob:; worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; \
                  img-src 'self' blob: data:; connect-src 'self' blob: data:; frame-ancestors 'none'";
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(policy));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// OHIF's files; its configuration, written for this room; its index for
/// any other path (OHIF routes in the page).
async fn viewer_file(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    path: Option<Path<String>>,
) -> Result<Response, Failure> {
    // Only a signed-in reader gets the viewer (it shows patient data).
    room.session(&headers).await?;
    let Some(dist) = room.config.viewer.as_deref() else {
        let body = "<h1>The viewer is not installed</h1><p>Run <code>scripts/install-viewer</code> (it installs \
                    OHIF into <code>~/.cache/meridian/viewer</code>) and start <code>meridian dev</code> again.</p>";
        return Ok((StatusCode::NOT_FOUND, Html(page::layout("Viewer", None, body))).into_response());
    };
    let path = path.map(|Path(p)| p).unwrap_or_default();
    if path == "app-config.js" {
        let regions: Vec<&str> = room.config.http_endpoints.keys().map(String::as_str).collect();
        let config = viewer::app_config(&regions);
        return Ok(([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], config).into_response());
    }
    if let Some(file) = viewer::file_in(dist, &path)
        && path != "index.html"
    {
        // Streamed: OHIF's bundles are tens of megabytes.
        let opened =
            tokio::fs::File::open(&file).await.map_err(|e| Failure::Platform(format!("the viewer's {path}: {e}")))?;
        let body = axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(opened));
        let cache = if path.contains(".bundle.") || path.ends_with(".wasm") { "max-age=86400" } else { "no-cache" };
        return Ok(([(header::CONTENT_TYPE, viewer::content_type(&file)), (header::CACHE_CONTROL, cache)], body)
            .into_response());
    }
    let index = tokio::fs::read_to_string(dist.join("index.html"))
        .await
        .map_err(|e| Failure::Platform(format!("the viewer's index.html: {e}")))?;
    Ok(([(header::CACHE_CONTROL, "no-store")], Html(index)).into_response())
}

/// The viewer's DICOMweb requests, passed to `region`'s DICOMweb with the
/// session's token: that region authorises the reader and audits the
/// access. Only reads (GET), only under `/dicomweb`.
async fn dicomweb(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path((region, path)): Path<(String, String)>,
    uri: axum::http::Uri,
) -> Result<Response, Failure> {
    let (_, session) = match room.session(&headers).await {
        Ok(s) => s,
        Err(_) => return Ok(StatusCode::UNAUTHORIZED.into_response()),
    };
    let Some(root) = room.config.http_endpoints.get(&region) else {
        return Ok((StatusCode::NOT_FOUND, format!("region {region} is not one this room knows")).into_response());
    };
    // Only DICOMweb resources: a path that climbs out of `/dicomweb` is
    // not passed on.
    if path.split('/').any(|segment| segment == "." || segment == ".." || segment.contains('\\')) {
        return Ok((StatusCode::BAD_REQUEST, format!("{path:?} is not a DICOMweb resource path")).into_response());
    }
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let mut request = room.http.get(format!("{root}/dicomweb/{path}{query}")).bearer_auth(&session.token);
    if let Some(accept) = headers.get(header::ACCEPT) {
        request = request.header(header::ACCEPT, accept);
    }
    let answer = match request.send().await {
        Ok(a) => a,
        Err(e) => {
            let why = format!("region {region}'s DICOMweb did not answer: {e}");
            return Ok((StatusCode::BAD_GATEWAY, why).into_response());
        }
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut out = HeaderMap::new();
    for name in [header::CONTENT_TYPE, header::WARNING, header::CONTENT_LOCATION] {
        if let Some(v) = answer.headers().get(name.as_str()).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok()) {
            out.insert(name, v);
        }
    }
    // Streamed as it comes: a study's retrieve may be hundreds of
    // megabytes, never held here.
    Ok((status, out, axum::body::Body::from_stream(answer.bytes_stream())).into_response())
}

async fn sign_in_page(State(room): State<Arc<ReadingRoom>>) -> Html<String> {
    Html(room.sign_in_page(None))
}

impl ReadingRoom {
    /// Where readers' browsers reach the room: its public address, or the
    /// request's scheme and Host. The provider checks what is built on it
    /// against the URIs registered for the client: a forged Host header
    /// only gets its refusal.
    fn origin(&self, headers: &HeaderMap) -> String {
        match &self.config.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.config.secure_cookie { "https" } else { "http" };
                let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
                format!("{scheme}://{host}")
            }
        }
    }

    fn sign_in_page(&self, error: Option<&str>) -> String {
        let principals: Vec<DevPrincipal> = self.config.dev_principals.iter().map(|(p, _)| p.clone()).collect();
        let providers: Vec<&str> = self.config.providers.iter().map(|p| p.label.as_str()).collect();
        page::sign_in(&providers, &principals, error)
    }

    /// Opens a session for `principal` reading as `reader` with `grant`:
    /// the cookie that names it, and to the worklist.
    async fn open_session(&self, principal: &str, reader: &str, grant: Grant) -> Result<Response, Failure> {
        // Where the reader sits, asked once: their worklist is asked there.
        let region = self.sits_in(&grant.token, reader).await?;
        let id = self
            .sessions
            .open(principal, (reader, &region), grant, now())
            .map_err(|e| Failure::Platform(format!("no randomness for a session id: {e}")))?;
        let secure = if self.config.secure_cookie { "; Secure" } else { "" };
        let cookie = format!(
            "{COOKIE}={id}; Path=/room; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            session::LONGEST_SECONDS
        );
        tracing::info!(region = %self.config.region, %principal, "signed in to the reading room");
        let mut response = Redirect::to("/room/worklist").into_response();
        response.headers_mut().append(header::SET_COOKIE, header_value(&cookie)?);
        Ok(response)
    }
}

fn header_value(text: &str) -> Result<HeaderValue, Failure> {
    HeaderValue::from_str(text).map_err(|_| Failure::Platform("a header the room could not write".into()))
}

/// Sends the browser to the provider to sign in: PKCE's verifier, the
/// state and the nonce stay here; the state is bound to this browser by a
/// cookie that the provider's redirect back brings (SameSite=Lax: a
/// top-level navigation from the provider's site).
async fn oidc_start(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(provider): Path<usize>,
) -> Result<Response, Failure> {
    let Some(p) = room.config.providers.get(provider) else {
        return Ok((StatusCode::NOT_FOUND, Html(room.sign_in_page(Some("No such identity provider")))).into_response());
    };
    let endpoints = match room.endpoints(provider).await {
        Ok(e) => e,
        Err(why) => {
            let why = format!("{} cannot be reached to sign in: {why}", p.label);
            return Ok((StatusCode::BAD_GATEWAY, Html(room.sign_in_page(Some(&why)))).into_response());
        }
    };
    let random = || session::random_token().map_err(|e| Failure::Platform(format!("no randomness: {e}")));
    let (state, verifier, nonce) = (random()?, random()?, random()?);
    let origin = room.origin(&headers);
    let pending =
        oidc::Pending { provider, verifier, nonce, redirect_uri: format!("{origin}/room/oidc/callback"), at: now() };
    let url = oidc::authorization_url(&endpoints, p, &pending, &state);
    room.logins.begin(&state, pending);
    let secure = if room.config.secure_cookie { "; Secure" } else { "" };
    let cookie = format!(
        "{LOGIN_COOKIE}={state}; Path=/room/oidc; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
        oidc::PENDING_SECONDS
    );
    let mut response = Redirect::to(&url).into_response();
    response.headers_mut().append(header::SET_COOKIE, header_value(&cookie)?);
    Ok(response)
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

/// The provider sends the browser back: the code is exchanged (with the
/// verifier), the nonce checked, the access token verified as the
/// platform verifies it, and a session opened for the reader it names.
async fn oidc_callback(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Query(back): Query<Callback>,
) -> Result<Response, Failure> {
    let refused = |why: String| -> Result<Response, Failure> {
        tracing::info!(region = %room.config.region, %why, "a reading-room sign-in was refused");
        let clear = format!("{LOGIN_COOKIE}=; Path=/room/oidc; HttpOnly; SameSite=Lax; Max-Age=0");
        let mut response = (StatusCode::UNAUTHORIZED, Html(room.sign_in_page(Some(&why)))).into_response();
        response.headers_mut().append(header::SET_COOKIE, header_value(&clear)?);
        Ok(response)
    };
    let state = back.state.unwrap_or_default();
    let bound = cookie(&headers, LOGIN_COOKIE).is_some_and(|c| !state.is_empty() && session::same_token(&c, &state));
    let pending = if bound { room.logins.finish(&state, now()) } else { None };
    let Some(pending) = pending else {
        return refused(
            "This sign-in was not begun in this browser, or took longer than ten minutes: sign in again".into(),
        );
    };
    if let Some(error) = back.error {
        let description = back.error_description.unwrap_or_default();
        return refused(format!("The identity provider refused the sign-in: {error} {description}").trim_end().into());
    }
    let Some(code) = back.code.filter(|c| !c.is_empty()) else {
        return refused("The identity provider sent no authorization code".into());
    };
    let Some(provider) = room.config.providers.get(pending.provider) else {
        return refused("The identity provider is no longer configured".into());
    };
    let endpoints = match room.endpoints(pending.provider).await {
        Ok(e) => e,
        Err(why) => return refused(format!("{} cannot be reached: {why}", provider.label)),
    };
    let grant = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", pending.redirect_uri.as_str()),
        ("code_verifier", pending.verifier.as_str()),
    ];
    let tokens = match oidc::tokens(&room.http, &endpoints, provider, &grant).await {
        Ok(t) => t,
        Err(why) => return refused(format!("{} did not give a token: {why}", provider.label)),
    };
    let nonce = tokens.id_token.as_deref().and_then(oidc::nonce_of);
    if !nonce.is_some_and(|n| session::same_token(&n, &pending.nonce)) {
        return refused("The identity provider's ID token does not carry this sign-in's nonce".into());
    }
    let Some(verifier) = &room.config.verifier else {
        return refused("This room cannot verify an identity provider's tokens".into());
    };
    let now = now();
    let principal = match verifier.verify(&tokens.access_token, now) {
        Ok(p) => p,
        Err(e) => return refused(format!("The platform does not accept {}'s access token: {e}", provider.label)),
    };
    let Some(reader) = principal.reader.clone() else {
        return refused(format!(
            "Signed in as {}, but {}'s access token names no reader (its `reader` claim): only readers use the              reading room",
            principal.subject, provider.label
        ));
    };
    let grant = Grant {
        expires_at: Some(tokens.expires_at(now)),
        refresh: tokens.refresh_token.clone().map(|r| (pending.provider, r)),
        signed_in_with: tokens.id_token.clone().map(|t| (pending.provider, t)),
        token: tokens.access_token,
    };
    let mut response = room.open_session(&principal.subject, &reader, grant).await?;
    let clear = format!("{LOGIN_COOKIE}=; Path=/room/oidc; HttpOnly; SameSite=Lax; Max-Age=0");
    response.headers_mut().append(header::SET_COOKIE, header_value(&clear)?);
    Ok(response)
}

#[derive(Deserialize)]
struct SignInForm {
    principal: String,
}

async fn sign_in(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Result<Response, Failure> {
    same_origin(&headers)?;
    let Some((p, token)) = room.config.dev_principals.iter().find(|(p, _)| p.name == form.principal) else {
        let why = format!("{} is not a principal this room signs in", form.principal);
        return Ok((StatusCode::UNAUTHORIZED, Html(room.sign_in_page(Some(&why)))).into_response());
    };
    room.open_session(&p.name, &p.reader, Grant::from(token.as_str())).await
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn sign_out(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Failure> {
    let (id, session) = room.changing(&headers, &form.csrf).await?;
    room.sessions.close(&id);
    let cookie = format!("{COOKIE}=; Path=/room; HttpOnly; SameSite=Strict; Max-Age=0");
    // Signed in through a provider: its session ends too, so the next
    // person at a shared reading-room workstation signs in as themselves.
    if let Some((index, id_token)) = &session.signed_in_with
        && let Some(provider) = room.config.providers.get(*index)
        && let Ok(endpoints) = room.endpoints(*index).await
        && let Some(end_session) = &endpoints.end_session_endpoint
    {
        let back = format!("{}/room/sign-in", room.origin(&headers));
        let to = oidc::end_session_url(end_session, provider, id_token, &back);
        // A page that moves on, not a redirect: the room's CSP lets forms
        // post only to itself, and a browser holds a form's redirect to
        // that too.
        let page = page::signing_out(&provider.label, &to);
        return Ok(([(header::SET_COOKIE, cookie)], Html(page)).into_response());
    }
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/room/sign-in")).into_response())
}

#[derive(Deserialize, Default)]
struct Said {
    error: Option<String>,
    saved: Option<String>,
    region: Option<String>,
}

async fn worklist(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Query(said): Query<Said>,
) -> Result<Html<String>, Failure> {
    let (_, session) = room.session(&headers).await?;
    let (rows, message) = match room.rows(&session).await {
        Ok(rows) => (rows, said.error),
        // What the page can still show: the region that did not answer.
        Err(Failure::Platform(why)) => (String::new(), Some(why)),
        Err(other) => return Err(other),
    };
    let (regions, to_score) = tokio::join!(room.regions(), room.to_score(&session));
    let page = page::worklist(&signed(&session), &rows, message.as_deref(), said.saved.as_deref(), &regions, &to_score);
    Ok(Html(page))
}

async fn worklist_rows(State(room): State<Arc<ReadingRoom>>, headers: HeaderMap) -> Result<Response, Failure> {
    let (_, session) = match room.session(&headers).await {
        Ok(s) => s,
        // The script sees the 401 and goes to sign-in.
        Err(_) => return Ok(StatusCode::UNAUTHORIZED.into_response()),
    };
    Ok(Html(room.rows(&session).await?).into_response())
}

/// Server-sent events: one `worklist` event each time routing reports the
/// reader's page changed (the page then asks for its rows again).
async fn worklist_events(State(room): State<Arc<ReadingRoom>>, headers: HeaderMap) -> Result<Response, Failure> {
    let (_, session) = match room.session(&headers).await {
        Ok(s) => s,
        Err(_) => return Ok(StatusCode::UNAUTHORIZED.into_response()),
    };
    let region = session.region.clone();
    let request = routing::WatchWorklistRequest { reader_id: session.reader.clone(), page_size: 100 };
    let stream = room.routing(&region)?.watch_worklist(authorized(request, &session.token)?).await?.into_inner();
    let events = stream.map(|change| {
        Ok::<_, std::convert::Infallible>(match change {
            // The studies the reader holds: an open editor learns that its
            // study was taken away (released, reassigned) as it happens.
            Ok(change) => {
                let held: Vec<&str> = change.held.iter().map(|e| e.study_id.as_str()).collect();
                let data = serde_json::json!({"offered": change.entries.len(), "held": held});
                Event::default().event("worklist").data(data.to_string())
            }
            Err(status) => Event::default().event("failed").data(said(&status)),
        })
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[derive(Deserialize)]
struct WhyQuery {
    study: String,
}

/// Each eligibility rule for the reader and a study, as routing in the
/// region they sit in explains it (it knows other regions' studies too).
async fn why(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Query(WhyQuery { study }): Query<WhyQuery>,
) -> Result<Html<String>, Failure> {
    let (_, session) = room.session(&headers).await?;
    let region = session.region.clone();
    let request =
        routing::ExplainEligibilityRequest { reader_id: session.reader.clone(), study_id: study.trim().to_owned() };
    let answer = room.routing(&region)?.explain_eligibility(authorized(request, &session.token)?).await?.into_inner();
    let checks: Vec<(String, bool, String)> = answer.checks.into_iter().map(|c| (c.rule, c.passed, c.reason)).collect();
    Ok(Html(page::why(&signed(&session), study.trim(), answer.eligible, &checks)))
}

#[derive(Deserialize)]
struct StudyForm {
    csrf: String,
    study: String,
    region: String,
    #[serde(default)]
    reason: String,
}

fn back_with_error(message: &str) -> Response {
    Redirect::to(&format!("/room/worklist?error={}", page::query_part(message))).into_response()
}

async fn claim(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Form(form): Form<StudyForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = routing::ClaimRequest {
        reader_id: session.reader.clone(),
        study_id: form.study.clone(),
        idempotency_key: String::new(),
    };
    match room.routing(&form.region)?.claim(authorized(request, &session.token)?).await {
        Ok(_) => Ok(Redirect::to(&format!(
            "/room/studies/{}?region={}",
            page::query_part(&form.study),
            page::query_part(&form.region)
        ))
        .into_response()),
        Err(status) => Ok(back_with_error(&said(&status))),
    }
}

/// Claims the first study routing offers the reader, in routing's order
/// across every region (the worklist is that order): a study another
/// reader took in between is passed over for the next.
async fn claim_next(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = routing::GetWorklistRequest {
        reader_id: session.reader.clone(),
        page_size: CLAIM_NEXT_TRIES as i32,
        page_token: String::new(),
    };
    let offered =
        room.routing(&session.region)?.get_worklist(authorized(request, &session.token)?).await?.into_inner().entries;
    let mut refused = None;
    for entry in offered.iter().take(CLAIM_NEXT_TRIES) {
        let request = routing::ClaimRequest {
            reader_id: session.reader.clone(),
            study_id: entry.study_id.clone(),
            idempotency_key: String::new(),
        };
        match room.routing(&entry.home_region)?.claim(authorized(request, &session.token)?).await {
            Ok(_) => return Ok(to_study(&entry.study_id, &entry.home_region, "saved", "Claimed: the next study")),
            // Taken in between, or no longer eligible: the next one.
            Err(status) if matches!(status.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound) => {
                refused = Some(said(&status));
            }
            Err(status) => return Ok(back_with_error(&said(&status))),
        }
    }
    Ok(back_with_error(&refused.unwrap_or_else(|| "Nothing to claim: no study is offered to you now".into())))
}

/// How many of the first offered studies "claim next" tries.
const CLAIM_NEXT_TRIES: usize = 5;

async fn release(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Form(form): Form<StudyForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = routing::ReleaseRequest {
        reader_id: session.reader.clone(),
        study_id: form.study.clone(),
        reason: form.reason.clone(),
        idempotency_key: String::new(),
    };
    match room.routing(&form.region)?.release(authorized(request, &session.token)?).await {
        Ok(_) => Ok(Redirect::to("/room/worklist").into_response()),
        Err(status) => Ok(back_with_error(&said(&status))),
    }
}

/// The report editor: the reader's held read of the study, the last draft
/// of it, where its images are.
async fn study(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(said_before): Query<Said>,
) -> Result<Html<String>, Failure> {
    let (_, session) = room.session(&headers).await?;
    let region = said_before.region.clone().unwrap_or_else(|| room.config.region.clone());
    let sits_in = session.region.clone();
    let request = authorized(routing::ListAssignmentsRequest { reader_id: session.reader.clone() }, &session.token)?;
    let held = room.routing(&sits_in)?.list_assignments(request).await?.into_inner().entries;
    let read_type = held.iter().find(|e| e.study_id == study).map(|e| e.read_type.clone());
    let mut message = said_before.error.clone();
    let mut images = None;
    let (mut template, mut language, mut fields, mut order) = (None, String::new(), BTreeMap::new(), None);
    let (mut findings, mut impression, mut version) = (String::new(), String::new(), 0);
    // The study's reports: the reader's signed reads (open to an
    // addendum) and the held read's last draft.
    let request = authorized(reporting::GetReportRequest { study_id: study.clone() }, &session.token)?;
    let reports = match room.reporting(&region)?.get_report(request).await {
        Ok(r) => {
            let r = r.into_inner();
            (r.reports, r.review, r.critical)
        }
        Err(_) => (Vec::new(), None, None),
    };
    let (reports, review, critical) = reports;
    // The patient's priors, for a reader who holds or read the study.
    let request = authorized(reporting::ListPriorsRequest { study_id: study.clone() }, &session.token)?;
    let priors = match room.reporting(&region)?.list_priors(request).await {
        Ok(p) => p.into_inner().priors,
        Err(_) => Vec::new(),
    };
    let signed_reads: Vec<(String, String, usize)> = reports
        .iter()
        .filter(|r| r.signed_by == session.reader && r.signed_version > 0)
        .map(|r| (r.read_type.clone(), r.status.clone(), r.amendments.len()))
        .collect();
    if let Some(read) = &read_type {
        let mut reporting = room.reporting(&region)?;
        let request = authorized(reporting::OpenStudyRequest { study_id: study.clone() }, &session.token)?;
        match reporting.open_study(request).await {
            Ok(open) => {
                let open = open.into_inner();
                images = Some((open.region, open.dicomweb_path));
                (template, language, order) = (open.template, open.language, open.order);
            }
            Err(status) => message = Some(said(&status)),
        }
        let open = reports.iter().find(|r| &r.read_type == read);
        if let Some(last) = open.and_then(|r| r.text.clone()) {
            let sections = last.sections.unwrap_or_default();
            (findings, impression, version) = (sections.findings, sections.impression, last.version);
            fields = sections.fields.into_iter().collect();
        }
    }
    let images = images.as_ref().map(|(r, p)| (r.as_str(), p.as_str()));
    // What the reviewer scores: the read signed by the reader reviewed.
    let reviewed = review.as_ref().and_then(|review| {
        let read = reports.iter().find(|r| r.read_type != "peer_review" && r.signed_by == review.reviewed_reader_id)?;
        let sections = read.text.as_ref().and_then(|t| t.sections.as_ref());
        Some(page::Reviewed {
            review,
            read_type: &read.read_type,
            findings: sections.map_or("", |s| s.findings.as_str()),
            impression: sections.map_or("", |s| s.impression.as_str()),
        })
    });
    let editor = page::Editor {
        study: &study,
        region: &region,
        read_type: read_type.as_deref(),
        findings: &findings,
        impression: &impression,
        version,
        images,
        message: message.as_deref(),
        saved: said_before.saved.as_deref(),
        template: template.as_ref(),
        language: &language,
        fields: &fields,
        signed: signed_reads,
        order: order.as_ref(),
        review: reviewed,
        critical: critical.as_ref().map(critical_said),
        priors: &priors,
    };
    Ok(Html(page::editor(&signed(&session), &editor)))
}

/// The editor's form: its sections, coded fields (`field.<name>`, those
/// given), the version it was edited from, and the read signed.
#[derive(Default)]
struct ReportForm {
    csrf: String,
    findings: String,
    impression: String,
    version: u32,
    read_type: String,
    fields: BTreeMap<String, String>,
}

impl ReportForm {
    fn from_pairs(pairs: Vec<(String, String)>) -> ReportForm {
        let mut form = ReportForm::default();
        for (name, value) in pairs {
            match name.as_str() {
                "csrf" => form.csrf = value,
                "findings" => form.findings = value,
                "impression" => form.impression = value,
                "version" => form.version = value.parse().unwrap_or(0),
                "read_type" => form.read_type = value,
                _ => {
                    if let Some(field) = name.strip_prefix("field.").filter(|_| !value.is_empty()) {
                        form.fields.insert(field.to_owned(), value);
                    }
                }
            }
        }
        form
    }
}

#[derive(Deserialize)]
struct InRegion {
    region: String,
}

async fn save(
    room: &ReadingRoom,
    session: &Session,
    study: &str,
    region: &str,
    form: &ReportForm,
) -> Result<u32, tonic::Status> {
    let sections = reporting::Sections {
        findings: form.findings.clone(),
        impression: form.impression.clone(),
        fields: form.fields.clone().into_iter().collect(),
    };
    let request = reporting::SaveDraftRequest {
        study_id: study.to_owned(),
        sections: Some(sections),
        base_version: form.version,
        idempotency_key: String::new(),
    };
    let request = authorized(request, &session.token).map_err(|_| tonic::Status::internal("the session's token"))?;
    let mut client = room.reporting(region).map_err(|_| tonic::Status::unavailable(format!("region {region}")))?;
    Ok(client.save_draft(request).await?.into_inner().version)
}

/// Back to the study's page, saying what reporting answered: `said` of
/// its answer, or why it refused.
fn back_to_study<T>(
    study: &str,
    region: &str,
    answer: Result<tonic::Response<T>, tonic::Status>,
    said_ok: impl FnOnce(T) -> String,
) -> Response {
    match answer {
        Ok(r) => to_study(study, region, "saved", &said_ok(r.into_inner())),
        Err(status) => to_study(study, region, "error", &said(&status)),
    }
}

fn to_study(study: &str, region: &str, key: &str, text: &str) -> Response {
    Redirect::to(&format!(
        "/room/studies/{}?region={}&{key}={}",
        page::query_part(study),
        page::query_part(region),
        page::query_part(text)
    ))
    .into_response()
}

async fn draft(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(InRegion { region }): Query<InRegion>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Failure> {
    let form = ReportForm::from_pairs(pairs);
    // The page's script saves as the reader types and asks for JSON; a
    // plain form post is answered with the page.
    let json = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("json"));
    let session = match room.changing(&headers, &form.csrf).await {
        Ok((_, session)) => session,
        Err(Failure::SignIn) if json => return Ok(autosaved(StatusCode::UNAUTHORIZED, None, "your session ended")),
        Err(Failure::Forbidden(why)) if json => return Ok(autosaved(StatusCode::FORBIDDEN, None, why)),
        Err(other) => return Err(other),
    };
    Ok(match (save(&room, &session, &study, &region, &form).await, json) {
        (Ok(version), true) => autosaved(StatusCode::OK, Some(version), ""),
        (Err(status), true) => autosaved(StatusCode::CONFLICT, None, &said(&status)),
        (Ok(version), false) => to_study(&study, &region, "saved", &format!("Draft version {version} saved.")),
        (Err(status), false) => to_study(&study, &region, "error", &said(&status)),
    })
}

/// The answer to a save the page's script made: the version saved, or why not.
fn autosaved(status: StatusCode, version: Option<u32>, error: &str) -> Response {
    let body = match version {
        Some(v) => format!("{{\"version\":{v}}}"),
        None => format!("{{\"error\":{}}}", viewer::json_string(error)),
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Deserialize)]
struct AddendumForm {
    csrf: String,
    read_type: String,
    text: String,
}

/// An addendum to a read the reader signed.
async fn addendum(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(InRegion { region }): Query<InRegion>,
    Form(form): Form<AddendumForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = reporting::AddAddendumRequest {
        study_id: study.clone(),
        read_type: form.read_type.clone(),
        text: form.text.clone(),
        idempotency_key: String::new(),
    };
    let answer = room.reporting(&region)?.add_addendum(authorized(request, &session.token)?).await;
    Ok(back_to_study(&study, &region, answer, |_| format!("Addendum added to your {} read.", form.read_type)))
}

#[derive(Deserialize)]
struct CriticalForm {
    csrf: String,
    #[serde(default)]
    category: u32,
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    method: String,
}

/// A critical result as it stands, as a reader reads it (the study's page
/// shows it after every action).
fn critical_said(c: &reporting::CriticalResult) -> String {
    let deadline = c.deadline.and_then(|t| jiff::Timestamp::new(t.seconds, t.nanos).ok());
    let by = deadline.map(|t| format!(", to be communicated by {t}")).unwrap_or_default();
    format!("Critical result category {}: {}{by}.", c.category, c.state)
}

/// Flags a critical result on the study the reader holds.
async fn critical(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(InRegion { region }): Query<InRegion>,
    Form(form): Form<CriticalForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = reporting::FlagCriticalRequest { study_id: study.clone(), category: form.category };
    let answer = room.reporting(&region)?.flag_critical(authorized(request, &session.token)?).await;
    Ok(back_to_study(&study, &region, answer, |_| "Critical result flagged.".to_owned()))
}

/// Records that the critical result was told to someone, now.
async fn communication(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(InRegion { region }): Query<InRegion>,
    Form(form): Form<CriticalForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = reporting::RecordCommunicationRequest {
        study_id: study.clone(),
        recipient: form.recipient.clone(),
        method: form.method.clone(),
        communicated_at: None,
    };
    let answer = room.reporting(&region)?.record_communication(authorized(request, &session.token)?).await;
    Ok(back_to_study(&study, &region, answer, |_| "Communication recorded.".to_owned()))
}

/// Saves what the reader typed, then signs that version.
#[derive(Deserialize)]
struct CorrectionForm {
    csrf: String,
    read_type: String,
    #[serde(default)]
    findings: String,
    #[serde(default)]
    impression: String,
    reason: String,
}

/// A corrected text of a read the reader signed: current from now on, the
/// signed text kept on record.
async fn correct(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(InRegion { region }): Query<InRegion>,
    Form(form): Form<CorrectionForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = reporting::CorrectRequest {
        study_id: study.clone(),
        read_type: form.read_type.clone(),
        sections: Some(reporting::Sections {
            findings: form.findings.clone(),
            impression: form.impression.clone(),
            ..Default::default()
        }),
        reason: form.reason.clone(),
        idempotency_key: String::new(),
    };
    let answer = room.reporting(&region)?.correct(authorized(request, &session.token)?).await;
    Ok(back_to_study(&study, &region, answer, |_| format!("Your {} read is corrected.", form.read_type)))
}

/// Marks a read the reader signed entered in error: it takes no more
/// amendments.
async fn entered_in_error(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(InRegion { region }): Query<InRegion>,
    Form(form): Form<CorrectionForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = reporting::EnterInErrorRequest {
        study_id: study.clone(),
        read_type: form.read_type.clone(),
        reason: form.reason.clone(),
    };
    let answer = room.reporting(&region)?.enter_in_error(authorized(request, &session.token)?).await;
    Ok(back_to_study(&study, &region, answer, |_| format!("Your {} read is marked entered in error.", form.read_type)))
}

#[derive(Deserialize)]
struct ScoreForm {
    csrf: String,
    score: String,
}

/// The reviewer's RADPEER score of the read they reviewed.
async fn score(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(InRegion { region }): Query<InRegion>,
    Form(form): Form<ScoreForm>,
) -> Result<Response, Failure> {
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let request = reporting::ScorePeerReviewRequest { study_id: study.clone(), score: form.score.clone() };
    let answer = room.reporting(&region)?.score_peer_review(authorized(request, &session.token)?).await;
    Ok(back_to_study(&study, &region, answer, |_| format!("Scored {}", form.score)))
}

async fn sign(
    State(room): State<Arc<ReadingRoom>>,
    headers: HeaderMap,
    Path(study): Path<String>,
    Query(InRegion { region }): Query<InRegion>,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Failure> {
    let form = ReportForm::from_pairs(pairs);
    let (_, session) = room.changing(&headers, &form.csrf).await?;
    let version = match save(&room, &session, &study, &region, &form).await {
        Ok(version) => version,
        Err(status) => return Ok(to_study(&study, &region, "error", &said(&status))),
    };
    let request = reporting::SignRequest {
        study_id: study.clone(),
        read_type: form.read_type.clone(),
        version,
        discrepancy: String::new(),
    };
    match room.reporting(&region)?.sign(authorized(request, &session.token)?).await {
        Ok(_) => Ok(Redirect::to(&format!(
            "/room/worklist?saved={}",
            page::query_part(&format!("Signed {} of study {study}.", form.read_type))
        ))
        .into_response()),
        Err(status) => Ok(to_study(&study, &region, "error", &said(&status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_change_from_another_site_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&headers).is_ok(), "no Origin: a form post of this page's");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&headers).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert!(matches!(same_origin(&headers), Err(Failure::Forbidden(_))));
        headers.remove(header::ORIGIN);
        headers.insert(header::REFERER, HeaderValue::from_static("http://127.0.0.1:8080.evil.example/x"));
        assert!(matches!(same_origin(&headers), Err(Failure::Forbidden(_))));
    }

    #[test]
    fn the_session_cookie_is_read_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; meridian_room=abc; b=2"));
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("abc"));
        assert_eq!(page::query_part("Refused: a b/c"), "Refused%3A%20a%20b%2Fc");
    }
}
