//! DICOMweb under `/dicomweb` on the region's HTTP port: QIDO-RS search
//! and WADO-RS retrieval (instances, metadata, frames), behind the bearer
//! token layer, with CORS for browser viewers.
//!
//! Who sees what: a tenant's principals (facility, tenant-admin) see their
//! tenant's studies; a reader sees a study assigned to them under a
//! contract that streams images from home. Every response that carries
//! PHI is preceded by PhiAccessed (principal, opaque study id, region,
//! time) appended to the home region's audit topic: no audit, no bytes.

pub mod query;
pub mod retrieve;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meridian_audit::{Accessed, Audit};
use meridian_auth::{Action, Denied, Principal, Resource, authorize};
use meridian_config::{ImageAccess, Platform, PrincipalKind};
use meridian_log::EventLog;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::blobs::Blobs;
use crate::index::{Attributes, InstanceEntry, Seek, StudyEntry, StudyIndex, series_key, study_key};
use query::{Level, MODALITIES_IN_STUDY};
use retrieve::{Acceptable, RetrieveError};

/// Who a study is assigned to: routing's answer, asked once per request.
#[async_trait::async_trait]
pub trait Assignments: Send + Sync {
    async fn assignee(&self, study: Uuid) -> Option<String>;
    /// Every study assigned to `reader` now.
    async fn assigned_to(&self, reader: &str) -> std::collections::BTreeSet<Uuid>;
}

pub struct DicomWeb {
    platform: Arc<Platform>,
    index: Arc<StudyIndex>,
    blobs: Arc<dyn Blobs>,
    assignments: Arc<dyn Assignments>,
    /// The region's audit writer.
    trail: Audit,
    /// The most results one search answers (`[dicomweb] max_results`).
    max_results: usize,
}

#[derive(Debug)]
pub enum WebError {
    BadRequest(String),
    NotFound(String),
    NotAcceptable(String),
    Denied(Denied),
    Unavailable(String),
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            WebError::Denied(d) => return d.into_response(),
            WebError::BadRequest(m) => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", m),
            WebError::NotFound(m) => (StatusCode::NOT_FOUND, "NOT_FOUND", m),
            WebError::NotAcceptable(m) => (StatusCode::NOT_ACCEPTABLE, "NOT_ACCEPTABLE", m),
            WebError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE", m),
        };
        (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
    }
}

impl From<crate::index::IndexError> for WebError {
    fn from(e: crate::index::IndexError) -> Self {
        tracing::error!(error = %e, "study index");
        WebError::Unavailable("the study index is unavailable; try again".into())
    }
}

impl From<RetrieveError> for WebError {
    fn from(e: RetrieveError) -> Self {
        match e {
            RetrieveError::NotAcceptable(m) => WebError::NotAcceptable(m),
            RetrieveError::Corrupt(m) => {
                tracing::error!(error = %m, "stored object");
                WebError::Unavailable("a stored object could not be read".into())
            }
        }
    }
}

/// A study a principal may see: its tenant, UID and index entry.
#[derive(Clone)]
struct Visible {
    tenant: String,
    uid: String,
    entry: StudyEntry,
}

impl DicomWeb {
    pub fn new(
        region: &str,
        platform: Arc<Platform>,
        index: Arc<StudyIndex>,
        blobs: Arc<dyn Blobs>,
        log: Arc<dyn EventLog>,
        assignments: Arc<dyn Assignments>,
    ) -> Result<DicomWeb, meridian_log::Error> {
        let trail = Audit::new(region, log.clone())
            .map_err(|e| meridian_log::Error::UnknownTopic { topic: e.to_string() })?
            .with_reader_regions(platform.reader_regions());
        let max_results = platform
            .regions
            .get(region)
            .map_or(1_000, |r| usize::try_from(r.dicomweb.max_results).unwrap_or(usize::MAX));
        Ok(DicomWeb { platform, index, blobs, assignments, trail, max_results })
    }

    /// The routes, to nest under `/dicomweb` behind the bearer-token layer.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/studies", get(search_studies))
            .route("/series", get(search_series))
            .route("/instances", get(search_instances))
            .route("/studies/{study}", get(retrieve_of))
            .route("/studies/{study}/metadata", get(metadata_of))
            .route("/studies/{study}/series", get(search_series))
            .route("/studies/{study}/instances", get(search_instances))
            .route("/studies/{study}/series/{series}", get(retrieve_of))
            .route("/studies/{study}/series/{series}/metadata", get(metadata_of))
            .route("/studies/{study}/series/{series}/instances", get(search_instances))
            .route("/studies/{study}/series/{series}/instances/{instance}", get(retrieve_of))
            .route("/studies/{study}/series/{series}/instances/{instance}/metadata", get(metadata_of))
            .route("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", get(retrieve_frames))
            .with_state(self)
    }

    /// The tenants whose studies `principal` may reach: its own tenant, or
    /// for a reader the tenants whose contracts name its group and stream
    /// images from home, or send de-identified derivatives here (where a
    /// tenant is not homed, only derivatives are indexed). Denied when
    /// there are none.
    fn tenants(&self, principal: &Principal) -> Result<Vec<String>, WebError> {
        let groups = |tenant: &str| -> Vec<String> {
            let contracts = self.platform.contracts.values().filter(|c| c.tenant == tenant);
            contracts.flat_map(|c| c.reading_groups.clone()).collect()
        };
        let tenants: Vec<String> = match principal.kind {
            PrincipalKind::Tenant => principal.tenant.iter().cloned().collect(),
            PrincipalKind::Group => {
                let group = principal.group.clone().unwrap_or_default();
                let mut t: Vec<String> = self
                    .platform
                    .contracts
                    .values()
                    .filter(|c| {
                        let lands_here = c.image_access == ImageAccess::Deidentified
                            && c.deidentification_destinations.iter().any(|d| d == self.trail.region());
                        c.reading_groups.contains(&group)
                            && (c.image_access == ImageAccess::StreamFromHome || lands_here)
                    })
                    .map(|c| c.tenant.clone())
                    .collect();
                t.dedup();
                t
            }
            PrincipalKind::Platform => Vec::new(),
        };
        // The role and contract checks, as if the study were assigned to
        // the caller; the assignment is checked per study.
        let probe = tenants.first().cloned().unwrap_or_default();
        let g = groups(&probe);
        let resource =
            Resource::Study { tenant: &probe, contract_groups: &g, assigned_reader: principal.reader.as_deref() };
        authorize(principal, Action::ReadImages, &resource).map_err(WebError::Denied)?;
        Ok(tenants)
    }

    async fn allowed(&self, principal: &Principal, tenant: &str, study: Uuid) -> Result<(), Denied> {
        let assignee =
            if principal.kind == PrincipalKind::Group { self.assignments.assignee(study).await } else { None };
        self.permits(principal, tenant, assignee.as_deref())
    }

    /// Whether `principal` may read images of `tenant`'s studies assigned
    /// to `assignee` (none: a tenant's own principals).
    fn permits(&self, principal: &Principal, tenant: &str, assignee: Option<&str>) -> Result<(), Denied> {
        let groups: Vec<String> = self
            .platform
            .contracts
            .values()
            .filter(|c| c.tenant == tenant)
            .flat_map(|c| c.reading_groups.clone())
            .collect();
        let resource = Resource::Study { tenant, contract_groups: &groups, assigned_reader: assignee };
        authorize(principal, Action::ReadImages, &resource)
    }

    /// Visits the studies `principal` may see, until `visit` says stop: the
    /// one `study` names, or those `seek` names in the index's order. A
    /// reader's are the studies assigned to them (asked of routing once,
    /// not per study); the permission is decided once per tenant. Nothing
    /// is gathered first, so a search costs the page it answers.
    async fn visit_visible(
        &self,
        principal: &Principal,
        study: Option<&str>,
        seek: &Seek,
        mut visit: impl FnMut(Visible) -> Result<bool, WebError>,
    ) -> Result<(), WebError> {
        if let Some(uid) = study {
            visit(self.study(principal, uid).await?)?;
            return Ok(());
        }
        let tenants = self.tenants(principal)?;
        let assigned = match (&principal.kind, &principal.reader) {
            (PrincipalKind::Group, Some(reader)) => Some(self.assignments.assigned_to(reader).await),
            (PrincipalKind::Group, None) => Some(Default::default()),
            _ => None,
        };
        for tenant in tenants {
            let assignee = assigned.as_ref().and(principal.reader.as_deref());
            if self.permits(principal, &tenant, assignee).is_err() {
                continue;
            }
            let seek = match &assigned {
                Some(ids) => {
                    let mut uids = Vec::new();
                    for id in ids {
                        uids.extend(self.index.study_uid(&tenant, *id)?);
                    }
                    uids.sort();
                    Seek::Uids(uids)
                }
                None => seek.clone(),
            };
            let (mut failed, mut stopped) = (None, false);
            self.index.visit_studies(&tenant, &seek, |uid, entry| {
                match visit(Visible { tenant: tenant.clone(), uid: uid.to_owned(), entry }) {
                    Ok(go_on) => stopped = !go_on,
                    Err(e) => failed = Some(e),
                }
                !stopped && failed.is_none()
            })?;
            if let Some(e) = failed {
                return Err(e);
            }
            if stopped {
                break;
            }
        }
        Ok(())
    }

    /// The study `uid` as `principal` may see it.
    async fn study(&self, principal: &Principal, uid: &str) -> Result<Visible, WebError> {
        for tenant in self.tenants(principal)? {
            if let Some(entry) = self.index.study(&tenant, uid)? {
                self.allowed(principal, &tenant, entry.study_id).await.map_err(WebError::Denied)?;
                return Ok(Visible { tenant, uid: uid.to_owned(), entry });
            }
        }
        Err(WebError::NotFound(format!("no study {uid} here for {}", principal.subject)))
    }

    /// Appends PhiAccessed for each study before any of their bytes go out
    /// (the region's one audit writer).
    async fn audit(
        &self,
        principal: &Principal,
        action: &str,
        accessed: &[(&str, Uuid, Vec<String>)],
    ) -> Result<(), WebError> {
        let accessed: Vec<Accessed<'_>> = accessed
            .iter()
            .map(|(tenant, study, items)| Accessed { tenant, study: *study, items: items.clone() })
            .collect();
        let at = meridian_auth::grpc::arrival_time();
        self.trail.record(principal, action, &accessed, at).await.map_err(|e| WebError::Unavailable(e.to_string()))
    }

    async fn object(&self, entry: &InstanceEntry) -> Result<Vec<u8>, WebError> {
        match self.blobs.get(&entry.object_key).await {
            Ok(Some(bytes)) => Ok(bytes),
            Ok(None) => Err(WebError::Unavailable(format!(
                "instance {} is indexed but its object is missing",
                entry.instance_id
            ))),
            Err(e) => Err(WebError::Unavailable(e.to_string())),
        }
    }
}

type Params = Query<Vec<(String, String)>>;
type Web = State<Arc<DicomWeb>>;

fn dicom_json(body: Vec<u8>, media: &'static str) -> Response {
    ([(header::CONTENT_TYPE, media)], body).into_response()
}

/// The JSON media type a search or metadata answer is sent as, from
/// `Accept` (PS3.18 8.7.3): `application/dicom+json`, `application/json`
/// (its alias; answered as that type when it is the one asked for), or a
/// wildcard; none acceptable is 406 naming what is served.
fn json_type(headers: &HeaderMap) -> Result<&'static str, WebError> {
    let Some(accept) = accept(headers).filter(|a| !a.trim().is_empty()) else { return Ok(DICOM_JSON) };
    for range in accept.split(',') {
        let (media, params) = retrieve::media_type(range);
        // A range the client refuses (q=0) is passed over.
        if params.iter().any(|(k, v)| k == "q" && v.parse::<f32>().is_ok_and(|q| q <= 0.0)) {
            continue;
        }
        match media.as_str() {
            "application/dicom+json" | "application/*" | "*/*" => return Ok(DICOM_JSON),
            "application/json" => return Ok("application/json"),
            _ => {}
        }
    }
    Err(WebError::NotAcceptable(format!(
        "Accept {accept:?} names nothing this resource is served as; it is served as application/dicom+json \
         (or application/json)"
    )))
}

const DICOM_JSON: &str = "application/dicom+json";

/// The DICOMweb root as the client addressed it, for RetrieveURLs.
pub fn base_url(headers: &HeaderMap) -> String {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = headers.get("x-forwarded-proto").and_then(|h| h.to_str().ok()).unwrap_or("http");
    format!("{scheme}://{host}/dicomweb")
}

fn is(value: u32) -> Value {
    json!({"vr": "IS", "Value": [value]})
}

fn url(u: String) -> Value {
    json!({"vr": "UR", "Value": [u]})
}

/// The study's attributes as QIDO-RS returns them.
fn study_attrs(entry: &StudyEntry, uid: &str, base: &str) -> Attributes {
    let mut a = entry.attrs.clone();
    a.insert(MODALITIES_IN_STUDY.into(), json!({"vr": "CS", "Value": entry.modalities}));
    a.insert("00201206".into(), is(entry.series));
    a.insert("00201208".into(), is(entry.instances));
    a.insert("00080056".into(), json!({"vr": "CS", "Value": ["ONLINE"]}));
    a.insert("00081190".into(), url(format!("{base}/studies/{uid}")));
    a.sort_keys();
    a
}

/// Adds what `includefield` asks for beyond the kept attributes, from the
/// first instance under `prefix` (a study or series key).
fn include(
    index: &StudyIndex,
    q: &query::Query,
    prefix: &str,
    skip: &[&[&str]],
    a: &mut Attributes,
) -> Result<(), WebError> {
    let missing = q.include.iter().any(|t| !a.contains_key(t));
    if !q.include_all && !missing {
        return Ok(());
    }
    // Beyond the kept attributes: the first instance's, as OHIF asks for
    // e.g. Modality or StudyDescription at the study level.
    if let Some(first) = index.first_metadata(prefix)? {
        for (tag, value) in first {
            let below = skip.iter().any(|level| level.contains(&tag.as_str()));
            let asked = q.include.contains(&tag) || (q.include_all && !below);
            if asked && !a.contains_key(&tag) {
                a.insert(tag, value);
            }
        }
    }
    a.sort_keys();
    Ok(())
}

/// One page of search results: `offset` matches skipped, at most `limit`
/// kept (the request's, capped at the region's `max_results`, which is also
/// the default), and whether the cap cut off more matches (PS3.18 8.3.4.2:
/// the response then says so in a Warning; a client's own smaller limit
/// is its paging, and gets none).
struct Pager<T> {
    skip: usize,
    limit: usize,
    capped: bool,
    items: Vec<T>,
    more: bool,
}

impl<T> Pager<T> {
    fn new(q: &query::Query, max_results: usize) -> Pager<T> {
        let capped = q.limit.is_none_or(|l| l > max_results);
        let limit = q.limit.unwrap_or(max_results).min(max_results);
        Pager { skip: q.offset, limit, capped, items: Vec::new(), more: false }
    }

    /// Takes one match; false once the page is full and one more was seen.
    fn offer(&mut self, item: T) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            return true;
        }
        if self.items.len() == self.limit {
            self.more = self.capped;
            return false;
        }
        self.items.push(item);
        true
    }
}

/// A search's DICOM JSON, with PS3.18's Warnings: parameters ignored,
/// fuzzy matching not performed, the page cut.
fn results(out: &[Value], more: bool, q: &query::Query, base: &str, media: &'static str) -> Response {
    let mut response = dicom_json(serde_json::to_vec(out).unwrap_or_default(), media);
    let mut warnings = q.warnings(base);
    if more {
        warnings.push(format!("299 {base} \"There are additional results that can be requested\""));
    }
    for warning in warnings {
        if let Ok(value) = HeaderValue::from_str(&warning) {
            response.headers_mut().append(header::WARNING, value);
        }
    }
    response
}

fn parsed(params: &[(String, String)], level: Level) -> Result<query::Query, WebError> {
    query::parse(params, level).map_err(WebError::BadRequest)
}

fn number(a: &Attributes, tag: &str) -> i64 {
    a.get(tag).and_then(|v| v.get("Value")).and_then(|v| v.get(0)).and_then(Value::as_i64).unwrap_or(i64::MAX)
}

async fn search_studies(
    State(web): Web,
    principal: Principal,
    headers: HeaderMap,
    Query(p): Params,
) -> Result<Response, WebError> {
    let q = parsed(&p, Level::Study)?;
    let media = json_type(&headers)?;
    let base = base_url(&headers);
    let mut page = Pager::new(&q, web.max_results);
    web.visit_visible(&principal, None, &q.seek(), |v| {
        let attrs = study_attrs(&v.entry, &v.uid, &base);
        Ok(!q.matches(&[&attrs]) || page.offer((v, attrs)))
    })
    .await?;
    web.audit(&principal, "qido-rs.search-studies", &accessed(page.items.iter().map(|(v, _)| v))).await?;
    let mut out = Vec::new();
    for (v, mut attrs) in page.items {
        include(
            &web.index,
            &q,
            &study_key(&v.tenant, &v.uid),
            &[crate::index::SERIES_TAGS, crate::index::INSTANCE_TAGS],
            &mut attrs,
        )?;
        out.push(Value::Object(attrs));
    }
    Ok(results(&out, page.more, &q, &base, media))
}

/// Series of the visible studies (all, or the one named): one page of them.
async fn series_of(
    web: &DicomWeb,
    principal: &Principal,
    study: Option<&str>,
    q: &query::Query,
    base: &str,
) -> Result<(Vec<Value>, bool), WebError> {
    let mut page = Pager::new(q, web.max_results);
    web.visit_visible(principal, study, &q.seek(), |v| {
        let sattrs = study_attrs(&v.entry, &v.uid, base);
        let mut series = web.index.series(&v.tenant, &v.uid)?;
        series.sort_by_key(|(_, s)| number(&s.attrs, "00200011"));
        for (suid, s) in series {
            let mut a = s.attrs.clone();
            a.insert("00201209".into(), is(s.instances));
            a.insert("00081190".into(), url(format!("{base}/studies/{}/series/{suid}", v.uid)));
            if q.matches(&[&a, &sattrs]) && !page.offer((v.clone(), suid, a)) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    web.audit(principal, "qido-rs.search-series", &accessed(page.items.iter().map(|(v, _, _)| v))).await?;
    let mut out = Vec::new();
    for (v, suid, mut a) in page.items {
        // A series result names its study too.
        a.insert("0020000D".into(), json!({"vr": "UI", "Value": [v.uid]}));
        include(&web.index, q, &series_key(&v.tenant, &v.uid, &suid), &[crate::index::INSTANCE_TAGS], &mut a)?;
        a.sort_keys();
        out.push(Value::Object(a));
    }
    Ok((out, page.more))
}

/// Each study behind `results` once, as the audit records it.
fn accessed<'a>(results: impl Iterator<Item = &'a Visible>) -> Vec<(&'a str, Uuid, Vec<String>)> {
    let mut out: Vec<(&str, Uuid, Vec<String>)> = Vec::new();
    for v in results {
        if !out.iter().any(|(_, s, _)| *s == v.entry.study_id) {
            out.push((&v.tenant, v.entry.study_id, Vec::new()));
        }
    }
    out
}

/// The study and series UIDs of a search route (`/series`,
/// `/studies/{study}/series`, `/instances`, …), where it names them.
type Scope = Option<Path<std::collections::HashMap<String, String>>>;

fn scope_of(path: Scope) -> (Option<String>, Option<String>) {
    let mut path = path.map(|Path(p)| p).unwrap_or_default();
    (path.remove("study"), path.remove("series"))
}

async fn search_series(
    State(web): Web,
    principal: Principal,
    headers: HeaderMap,
    path: Scope,
    Query(p): Params,
) -> Result<Response, WebError> {
    let q = parsed(&p, Level::Series)?;
    let media = json_type(&headers)?;
    let (study, _) = scope_of(path);
    let base = base_url(&headers);
    let (out, more) = series_of(&web, &principal, study.as_deref(), &q, &base).await?;
    Ok(results(&out, more, &q, &base, media))
}

async fn search_instances(
    State(web): Web,
    principal: Principal,
    headers: HeaderMap,
    path: Scope,
    Query(p): Params,
) -> Result<Response, WebError> {
    let q = parsed(&p, Level::Instance)?;
    let media = json_type(&headers)?;
    let (study, series) = scope_of(path);
    let base = base_url(&headers);
    let (out, more) = instances_of(&web, &principal, study.as_deref(), series.as_deref(), &q, &base).await?;
    Ok(results(&out, more, &q, &base, media))
}

/// Instances of the visible studies, of one study, or of one series: one
/// page of them.
async fn instances_of(
    web: &DicomWeb,
    principal: &Principal,
    study: Option<&str>,
    series: Option<&str>,
    q: &query::Query,
    base: &str,
) -> Result<(Vec<Value>, bool), WebError> {
    let mut page = Pager::new(q, web.max_results);
    web.visit_visible(principal, study, &q.seek(), |v| {
        let sattrs = study_attrs(&v.entry, &v.uid, base);
        let series_attrs: Vec<(String, Attributes)> =
            web.index.series(&v.tenant, &v.uid)?.into_iter().map(|(uid, s)| (uid, s.attrs)).collect();
        if let Some(s) = series
            && !series_attrs.iter().any(|(uid, _)| uid == s)
        {
            return Err(WebError::NotFound(format!("study {} has no series {s}", v.uid)));
        }
        let mut instances = web.index.instances(&v.tenant, &v.uid, series)?;
        instances.sort_by_key(|(s, sop, e)| (s.clone(), number(&e.attrs, "00200013"), sop.clone()));
        for (suid, sop, e) in instances {
            let empty = Attributes::new();
            let seriesa = series_attrs.iter().find(|(u, _)| *u == suid).map_or(&empty, |(_, a)| a);
            if q.matches(&[&e.attrs, seriesa, &sattrs]) && !page.offer((v.clone(), suid, sop, e)) {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;
    let (found, page_more) = (page.items, page.more);
    web.audit(principal, "qido-rs.search-instances", &accessed(found.iter().map(|(v, _, _, _)| v))).await?;
    let mut out = Vec::with_capacity(found.len());
    for (v, suid, sop, e) in found {
        let mut a = e.attrs;
        a.insert("0020000D".into(), json!({"vr": "UI", "Value": [v.uid]}));
        a.insert("0020000E".into(), json!({"vr": "UI", "Value": [suid]}));
        a.insert("00080056".into(), json!({"vr": "CS", "Value": ["ONLINE"]}));
        a.insert("00081190".into(), url(format!("{base}/studies/{}/series/{suid}/instances/{sop}", v.uid)));
        if q.include_all || !q.include.is_empty() {
            let mut meta = Vec::new();
            web.index.metadata_into(&v.tenant, &v.uid, Some(&suid), Some(&sop), &mut meta)?;
            let all: Vec<Attributes> = serde_json::from_slice(&meta).unwrap_or_default();
            for (tag, value) in all.into_iter().flatten() {
                if (q.include_all || q.include.contains(&tag)) && !a.contains_key(&tag) {
                    a.insert(tag, value);
                }
            }
        }
        a.sort_keys();
        out.push(Value::Object(a));
    }
    Ok((out, page_more))
}

/// Metadata of a study, series or instance: the stored DICOM JSON.
async fn metadata(
    web: &DicomWeb,
    principal: &Principal,
    media: &'static str,
    study: &str,
    series: Option<&str>,
    sop: Option<&str>,
) -> Result<Response, WebError> {
    let v = web.study(principal, study).await?;
    let mut body = Vec::new();
    let n = web.index.metadata_into(&v.tenant, &v.uid, series, sop, &mut body)?;
    if n == 0 {
        let what = match (series, sop) {
            (Some(s), Some(i)) => format!("study {study} has no instance {i} in series {s}"),
            (Some(s), None) => format!("study {study} has no series {s}"),
            _ => format!("study {study} has no instances"),
        };
        return Err(WebError::NotFound(what));
    }
    let instances = match (series, sop) {
        (Some(s), Some(i)) => web.index.instance(&v.tenant, &v.uid, s, i)?.map(|e| vec![e.instance_id.to_string()]),
        _ => None,
    };
    web.audit(principal, "wado-rs.metadata", &[(&v.tenant, v.entry.study_id, instances.unwrap_or_default())]).await?;
    Ok(dicom_json(body, media))
}

/// WADO-RS metadata of the study, series or instance the route names.
async fn metadata_of(
    State(web): Web,
    principal: Principal,
    headers: HeaderMap,
    path: Scope,
) -> Result<Response, WebError> {
    let media = json_type(&headers)?;
    let mut path = path.map(|Path(p)| p).unwrap_or_default();
    let study = path.remove("study").unwrap_or_default();
    let (series, sop) = (path.get("series").map(String::as_str), path.get("instance").map(String::as_str));
    metadata(&web, &principal, media, &study, series, sop).await
}

/// WADO-RS retrieval of the study, series or instance the route names.
async fn retrieve_of(
    State(web): Web,
    principal: Principal,
    headers: HeaderMap,
    path: Scope,
) -> Result<Response, WebError> {
    let mut path = path.map(|Path(p)| p).unwrap_or_default();
    let study = path.remove("study").unwrap_or_default();
    let (series, instance) = (path.get("series").map(String::as_str), path.get("instance").map(String::as_str));
    retrieve(web, &principal, &headers, &study, series, instance).await
}

fn accept(headers: &HeaderMap) -> Option<String> {
    let all: Vec<&str> = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect();
    (!all.is_empty()).then(|| all.join(","))
}

/// Instances of a study, series or one instance as multipart/related
/// application/dicom, streamed one object at a time.
async fn retrieve(
    web: Arc<DicomWeb>,
    principal: &Principal,
    headers: &HeaderMap,
    study: &str,
    series: Option<&str>,
    sop: Option<&str>,
) -> Result<Response, WebError> {
    let acceptable = retrieve::negotiate_single(accept(headers).as_deref(), &["application/dicom"], sop.is_some())
        .map_err(WebError::NotAcceptable)?;
    let v = web.study(principal, study).await?;
    let instances = match (series, sop) {
        // One instance: one lookup, not the whole series.
        (Some(s), Some(i)) => {
            web.index.instance(&v.tenant, &v.uid, s, i)?.map(|e| (s.to_owned(), i.to_owned(), e)).into_iter().collect()
        }
        _ => web.index.instances(&v.tenant, &v.uid, series)?,
    };
    if instances.is_empty() {
        return Err(WebError::NotFound(format!("nothing under study {study} matches the request")));
    }
    // One instance asked for: answer its transcoding error as 406 before
    // anything is sent.
    let first = if sop.is_some() {
        let e = &instances[0].2;
        let bytes = web.object(e).await?;
        Some(retrieve::in_syntax(bytes, &e.transfer_syntax, acceptable.wanted.resolve(&e.transfer_syntax))?)
    } else {
        None
    };
    let ids =
        if sop.is_some() { instances.iter().map(|(_, _, e)| e.instance_id.to_string()).collect() } else { Vec::new() };
    let action = match (series, sop) {
        (_, Some(_)) => "wado-rs.retrieve-instance",
        (Some(_), None) => "wado-rs.retrieve-series",
        _ => "wado-rs.retrieve-study",
    };
    web.audit(principal, action, &[(&v.tenant, v.entry.study_id, ids)]).await?;
    if acceptable.single_part
        && let Some(bytes) = first
    {
        let syntax = acceptable.wanted.resolve(&instances[0].2.transfer_syntax);
        let content_type = format!("application/dicom; transfer-syntax={syntax}");
        let mut response = Response::new(Body::from(bytes));
        if let Ok(ct) = HeaderValue::from_str(&content_type) {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(response);
    }
    let boundary = Uuid::now_v7().simple().to_string();
    let content_type = format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    let stream = instance_parts(web, instances.into_iter().map(|(_, _, e)| e).collect(), acceptable, boundary, first);
    let mut response = Response::new(Body::from_stream(stream));
    if let Ok(ct) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(response)
}

fn instance_parts(
    web: Arc<DicomWeb>,
    entries: Vec<InstanceEntry>,
    acceptable: Acceptable,
    boundary: String,
    first: Option<Vec<u8>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    let state = (entries.into_iter(), first, false);
    futures_util::stream::unfold(state, move |(mut rest, first, done)| {
        let (web, acceptable, boundary) = (web.clone(), acceptable.clone(), boundary.clone());
        async move {
            if done {
                return None;
            }
            let Some(e) = rest.next() else {
                return Some((Ok(Bytes::from(retrieve::closing(&boundary))), (rest, None, true)));
            };
            let ts = acceptable.wanted.resolve(&e.transfer_syntax).to_owned();
            let bytes = match first {
                Some(b) => Ok(b),
                None => match web.object(&e).await {
                    Ok(stored) => retrieve::in_syntax(stored, &e.transfer_syntax, &ts).map_err(WebError::from),
                    Err(err) => Err(err),
                },
            };
            match bytes {
                Ok(body) => {
                    let part =
                        retrieve::part(&boundary, &format!("application/dicom; transfer-syntax={ts}"), None, &body);
                    Some((Ok(Bytes::from(part)), (rest, None, false)))
                }
                // Headers are gone: the only honest signal left is to cut the body short.
                Err(err) => {
                    tracing::error!(instance = %e.instance_id, error = ?err, "a retrieve stopped mid-stream");
                    Some((Err(std::io::Error::other(format!("{err:?}"))), (rest, None, true)))
                }
            }
        }
    })
}

/// The image media type of an encapsulated transfer syntax's frames.
fn frame_media_type(ts: &str) -> Option<&'static str> {
    match ts {
        "1.2.840.10008.1.2.4.50" | "1.2.840.10008.1.2.4.51" | "1.2.840.10008.1.2.4.57" | "1.2.840.10008.1.2.4.70" => {
            Some("image/jpeg")
        }
        "1.2.840.10008.1.2.4.80" | "1.2.840.10008.1.2.4.81" => Some("image/jls"),
        "1.2.840.10008.1.2.4.90" | "1.2.840.10008.1.2.4.91" => Some("image/jp2"),
        "1.2.840.10008.1.2.5" => Some("image/dicom-rle"),
        _ => None,
    }
}

async fn retrieve_frames(
    State(web): Web,
    principal: Principal,
    headers: HeaderMap,
    Path((study, series, instance, list)): Path<(String, String, String, String)>,
) -> Result<Response, WebError> {
    let numbers: Vec<u32> =
        list.split(',').map(|n| n.trim().parse::<u32>().ok().filter(|n| *n > 0)).collect::<Option<_>>().ok_or_else(
            || WebError::BadRequest(format!("frame list {list:?} is not comma-separated frame numbers from 1")),
        )?;
    let v = web.study(&principal, &study).await?;
    let entry = web
        .index
        .instance(&v.tenant, &v.uid, &series, &instance)?
        .ok_or_else(|| WebError::NotFound(format!("study {study} has no instance {instance} in series {series}")))?;
    let media = frame_media_type(&entry.transfer_syntax);
    let mut part_types = vec!["application/octet-stream"];
    part_types.extend(media);
    let acceptable = retrieve::negotiate(accept(&headers).as_deref(), &part_types).map_err(WebError::NotAcceptable)?;
    // An image type asks for the frames as stored.
    let ts = if acceptable.part_type == "application/octet-stream" {
        acceptable.wanted.resolve(&entry.transfer_syntax).to_owned()
    } else {
        entry.transfer_syntax.clone()
    };
    let stored = web.object(&entry).await?;
    let frames = retrieve::frames(&stored, &entry.transfer_syntax, &ts, &numbers)?;
    web.audit(
        &principal,
        "wado-rs.retrieve-frames",
        &[(&v.tenant, v.entry.study_id, vec![entry.instance_id.to_string()])],
    )
    .await?;
    let boundary = Uuid::now_v7().simple().to_string();
    let part_type = if acceptable.part_type == "application/octet-stream" {
        format!("application/octet-stream; transfer-syntax={ts}")
    } else {
        format!("{}; transfer-syntax={ts}", acceptable.part_type)
    };
    let mut body = Vec::new();
    for f in &frames {
        body.extend(retrieve::part(&boundary, &part_type, None, f));
    }
    body.extend(retrieve::closing(&boundary));
    let content_type = format!("multipart/related; type=\"{}\"; boundary={boundary}", acceptable.part_type);
    let mut response = Response::new(Body::from(body));
    if let Ok(ct) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(response)
}
