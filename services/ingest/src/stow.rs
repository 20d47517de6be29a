//! STOW-RS (PS3.18 10.5): `POST /dicomweb/studies[/{study}]` with
//! `multipart/related; type="application/dicom"`, each part one Part-10
//! instance, or one Part-10 file as a bare `application/dicom` body (as
//! Google's and Azure's servers take it). Every part goes through the same checks, PHI write path and
//! acknowledgement order as a C-STORE; the answer lists what was stored
//! (ReferencedSOPSequence) and what failed with its reason
//! (FailedSOPSequence): 200 when all were stored, 202 when some failed, 409
//! when none was stored.
//!
//! The body is streamed: one part is in memory at a time, at most the
//! region's per-instance limit (a larger part is read to its end, dropped
//! and answered 0xA700); the whole request is bounded too (413, naming
//! what was stored before the limit).

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dicom_dictionary_std::tags;
use meridian_auth::{Action, Principal, Resource, authorize};
use meridian_dimse::command::{
    STATUS_CANNOT_UNDERSTAND, STATUS_DATA_SET_MISMATCH, STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS,
};
use meridian_dimse::{Instance, STORED_TRANSFER_SYNTAXES, Sender};
use serde_json::{Value, json};

use meridian_auth::grpc::arrival_time;

use crate::app::{Ingest, Receipt};
use crate::dataset::{self, Rejection};

/// A transfer syntax this region does not store (PS3.18 table 10.5.3-4's
/// "Referenced Transfer Syntax not supported").
pub const STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED: u16 = 0xC122;

/// What one STOW-RS request may carry.
#[derive(Clone, Copy, Debug)]
pub struct StowLimits {
    pub max_instance_bytes: u64,
    pub max_request_bytes: u64,
}

struct Stow {
    ingest: Arc<Ingest>,
    limits: StowLimits,
    /// KiB of parts being stored at once, over every request.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// At most this many KiB of parts are stored at once (256 MiB).
const IN_FLIGHT_KIB: u32 = 256 * 1024;

async fn finish(tasks: Vec<tokio::task::JoinHandle<Outcome>>) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap_or_else(|_| Outcome::lost()));
    }
    out
}

/// The STOW-RS routes, to nest under `/dicomweb` behind the bearer-token
/// layer (beside the storage service's QIDO-RS and WADO-RS).
pub fn router(ingest: Arc<Ingest>, limits: StowLimits) -> Router {
    Router::new()
        .route("/studies", post(store))
        .route("/studies/{study}", post(store))
        // The request is streamed and bounded by `limits`, not buffered.
        .layer(DefaultBodyLimit::disable())
        .with_state(Arc::new(Stow {
            ingest,
            limits,
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_KIB as usize)),
        }))
}

/// What became of one Part-10 file: its receipt, and the UIDs its File
/// Meta Information and data set name (empty where unreadable). PHI: the
/// UIDs go back to the sender only.
pub(crate) struct Outcome {
    pub(crate) sop_class: String,
    pub(crate) sop_instance: String,
    pub(crate) study: String,
    pub(crate) series: String,
    pub(crate) receipt: Receipt,
}

impl Outcome {
    fn of(receipt: Receipt) -> Outcome {
        Outcome {
            sop_class: String::new(),
            sop_instance: String::new(),
            study: String::new(),
            series: String::new(),
            receipt,
        }
    }

    /// A part whose storing task died: not stored, as far as anyone knows.
    fn lost() -> Outcome {
        let reason = "the task storing it stopped; send it again".to_owned();
        Outcome::of(Receipt {
            status: STATUS_OUT_OF_RESOURCES,
            stored: None,
            refusal: Some(("not_stored".into(), reason)),
        })
    }

    pub(crate) fn status(&self) -> u16 {
        self.receipt.status
    }
}

fn problem(status: StatusCode, code: &str, message: String) -> Response {
    (status, axum::Json(json!({"error": {"code": code, "message": message}}))).into_response()
}

async fn store(
    State(stow): State<Arc<Stow>>,
    principal: Principal,
    headers: HeaderMap,
    study: Option<Path<String>>,
    body: Body,
) -> Response {
    let study = study.map(|Path(s)| s);
    let tenant = principal.tenant.clone().unwrap_or_default();
    if let Err(denied) = authorize(&principal, Action::SendStudy, &Resource::Tenant { tenant: &tenant }) {
        return denied.into_response();
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if meridian_storage::dicomweb::retrieve::media_type(content_type).0 == "application/dicom" {
        return single_part(&stow, &headers, study, sender_of(principal), body).await;
    }
    let mut parts = match PartReader::new(body.into_data_stream(), content_type, stow.limits) {
        Ok(parts) => parts,
        Err((status, message)) => return problem(status, "INVALID_ARGUMENT", message),
    };
    let sender = sender_of(principal.clone());
    let mut outcomes = Vec::new();
    loop {
        let Part { index, media_type: part_type, bytes } = match parts.next().await {
            Ok(Some(part)) => part,
            Ok(None) => break,
            Err(e) => return cut_short(&headers, study.as_deref(), finish(outcomes).await, parts.read(), &e),
        };
        let too_large = bytes.is_none();
        let bytes = bytes.unwrap_or_default();
        let now = arrival_time();
        let rejection = if too_large {
            let reason = format!("part {index} is over this region's per-instance limit");
            Some(Rejection { status: STATUS_OUT_OF_RESOURCES, code: "instance_too_large", reason })
        } else if part_type != "application/dicom" && !part_type.is_empty() {
            let reason = format!("part {index} is {part_type}, not application/dicom");
            Some(Rejection { status: STATUS_CANNOT_UNDERSTAND, code: "unsupported_media_type", reason })
        } else {
            None
        };
        // Parts are stored while the next ones are read, so one request's
        // instances share group commits; the bytes in flight are bounded.
        let cost = u32::try_from(bytes.len().div_ceil(1024).max(1)).unwrap_or(u32::MAX).min(IN_FLIGHT_KIB);
        let Ok(permit) = stow.in_flight.clone().acquire_many_owned(cost).await else { break };
        let (ingest, sender, study) = (stow.ingest.clone(), sender.clone(), study.clone());
        outcomes.push(tokio::spawn(async move {
            let _permit = permit;
            match rejection {
                Some(rejection) => refused(&ingest, &sender, rejection, now).await,
                None => store_file(&ingest, &sender, bytes, study.as_deref(), now).await,
            }
        }));
    }
    let outcomes = finish(outcomes).await;
    if outcomes.is_empty() {
        return problem(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "the request has no parts: nothing to store".into(),
        );
    }
    answer(&headers, study.as_deref(), &outcomes, None)
}

/// One part of a STOW-RS request, read whole.
#[derive(Debug)]
pub struct Part {
    /// From 1, as answers and refusals name parts.
    pub index: usize,
    /// The part's media type without parameters; empty when it names none.
    pub media_type: String,
    /// The part's bytes; `None` when it was over the per-instance limit
    /// (read to its end, nothing kept).
    pub bytes: Option<Vec<u8>>,
}

/// Reads a STOW-RS multipart body one part at a time, the whole request
/// bounded by the region's limits. Runtime-agnostic, so the fuzz target
/// drives it as the route does.
pub struct PartReader<'r> {
    parts: multer::Multipart<'r>,
    max_instance_bytes: u64,
    read: usize,
}

impl<'r> PartReader<'r> {
    /// Checks the request's Content-Type (see [`multipart_boundary`]) and
    /// starts reading `body`.
    pub fn new<S, O, E>(body: S, content_type: &str, limits: StowLimits) -> Result<PartReader<'r>, (StatusCode, String)>
    where
        S: futures_util::Stream<Item = Result<O, E>> + Send + 'r,
        O: Into<bytes::Bytes> + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + 'r,
    {
        let boundary = multipart_boundary(content_type)?;
        let constraints =
            multer::Constraints::new().size_limit(multer::SizeLimit::new().whole_stream(limits.max_request_bytes));
        let parts = multer::Multipart::with_constraints(body, boundary, constraints);
        Ok(PartReader { parts, max_instance_bytes: limits.max_instance_bytes, read: 0 })
    }

    /// How many parts were read whole so far.
    pub fn read(&self) -> usize {
        self.read
    }

    /// The next part, `None` after the last. An error ends the request:
    /// the body is malformed or over the request limit.
    pub async fn next(&mut self) -> Result<Option<Part>, multer::Error> {
        let Some(mut field) = self.parts.next_field().await? else { return Ok(None) };
        let media_type = field.content_type().map(|m| m.essence_str().to_owned()).unwrap_or_default();
        let mut bytes = Some(Vec::new());
        while let Some(chunk) = field.chunk().await? {
            if let Some(kept) = &mut bytes {
                if (kept.len() + chunk.len()) as u64 > self.max_instance_bytes {
                    bytes = None; // read to its end, keep nothing
                } else {
                    kept.extend_from_slice(&chunk);
                }
            }
        }
        self.read += 1;
        Ok(Some(Part { index: self.read, media_type, bytes }))
    }
}

/// One Part-10 body posted as `application/dicom` rather than multipart
/// (as Google's and Azure's DICOMweb servers take it): one instance
/// through the same checks, limits and response as one multipart part.
async fn single_part(stow: &Stow, headers: &HeaderMap, study: Option<String>, sender: Sender, body: Body) -> Response {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let (mut bytes, mut read, mut too_large) = (Vec::new(), 0u64, false);
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                let message = format!("the request body could not be read to its end: {e}; nothing was stored");
                return problem(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message);
            }
        };
        read += chunk.len() as u64;
        too_large |= read > stow.limits.max_instance_bytes;
        if too_large {
            bytes = Vec::new();
            // Past the request limit there is no point reading on.
            if read > stow.limits.max_request_bytes {
                break;
            }
        } else {
            bytes.extend_from_slice(&chunk);
        }
    }
    if read == 0 {
        let message = "the request body is empty: an application/dicom body is one Part-10 file".to_owned();
        return problem(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message);
    }
    let now = arrival_time();
    let outcome = if too_large {
        let reason = "the instance is over this region's per-instance limit".to_owned();
        let rejection = Rejection { status: STATUS_OUT_OF_RESOURCES, code: "instance_too_large", reason };
        refused(&stow.ingest, &sender, rejection, now).await
    } else {
        store_file(&stow.ingest, &sender, bytes, study.as_deref(), now).await
    };
    answer(headers, study.as_deref(), &[outcome], None)
}

/// Who sends over HTTP or gRPC: the token's principal. There is no DICOM
/// association, so no AE titles and no peer address.
pub(crate) fn sender_of(principal: Principal) -> Sender {
    Sender {
        principal,
        calling_ae_title: String::new(),
        called_ae_title: String::new(),
        peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
    }
}

/// Checks the request's Content-Type and returns its boundary.
pub fn multipart_boundary(content_type: &str) -> Result<String, (StatusCode, String)> {
    let (media, params) = meridian_storage::dicomweb::retrieve::media_type(content_type);
    if media != "multipart/related" {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Content-Type {content_type:?}: STOW-RS takes multipart/related; type=\"application/dicom\"; boundary=..., or one Part-10 file as application/dicom"
            ),
        ));
    }
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Some(t) = param("type")
        && !t.eq_ignore_ascii_case("application/dicom")
    {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "multipart/related of type {t:?}: this region takes Part-10 instances (type=\"application/dicom\")"
            ),
        ));
    }
    // RFC 2046: 1 to 70 characters.
    match param("boundary") {
        Some(b) if (1..=70).contains(&b.len()) => Ok(b),
        _ => Err((StatusCode::BAD_REQUEST, format!("Content-Type {content_type:?} has no usable boundary parameter"))),
    }
}

async fn refused(ingest: &Ingest, sender: &Sender, rejection: Rejection, now: meridian_events::UnixMicros) -> Outcome {
    let (code, reason) = (rejection.code.to_owned(), rejection.reason.clone());
    let status = ingest.refuse(sender, None, rejection, now).await;
    Outcome::of(Receipt { status, stored: None, refusal: Some((code, reason)) })
}

/// Stores one Part-10 file through ingest, as a C-STORE would (STOW-RS
/// and the gRPC upload).
pub(crate) async fn store_file(
    ingest: &Ingest,
    sender: &Sender,
    file: Vec<u8>,
    study: Option<&str>,
    now: meridian_events::UnixMicros,
) -> Outcome {
    let instance = match instance_of(&file) {
        Ok(i) => i,
        Err(rejection) => return refused(ingest, sender, rejection, now).await,
    };
    let mut outcome = Outcome {
        sop_class: instance.sop_class.clone(),
        sop_instance: instance.sop_instance.clone(),
        ..Outcome::of(Receipt { status: STATUS_SUCCESS, stored: None, refusal: None })
    };
    if !STORED_TRANSFER_SYNTAXES.contains(&instance.transfer_syntax.as_str()) {
        let reason = format!("transfer syntax {} is not one this region stores", instance.transfer_syntax);
        let rejection =
            Rejection { status: STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED, code: "transfer_syntax_not_supported", reason };
        outcome.receipt = refused(ingest, sender, rejection, now).await.receipt;
        return outcome;
    }
    // Read from the file ingest stores (its meta rebuilt from the instance),
    // never the file as sent: dicom-rs's meta reader may end the sender's
    // meta elsewhere than `instance_of` did, and the data set it would
    // then parse is one the length walk never saw.
    if let Ok(facts) = dataset::read(&instance) {
        (outcome.study, outcome.series) = (facts.study_uid, facts.series_uid);
        if let Some(wanted) = study
            && wanted != outcome.study
        {
            let reason = "the instance's Study Instance UID is not the study the request names".to_owned();
            let rejection = Rejection { status: STATUS_DATA_SET_MISMATCH, code: "study_mismatch", reason };
            outcome.receipt = refused(ingest, sender, rejection, now).await.receipt;
            return outcome;
        }
    }
    outcome.receipt = ingest.receipt(sender, instance, now).await;
    outcome
}

/// The instance a Part-10 file holds: its File Meta Information names the
/// SOP class and instance and the transfer syntax of the data set after it.
pub fn instance_of(file: &[u8]) -> Result<Instance, Rejection> {
    let unreadable =
        |reason: String| Rejection { status: STATUS_CANNOT_UNDERSTAND, code: "unreadable_data_set", reason };
    if file.get(128..132) != Some(b"DICM") {
        return Err(unreadable("not a DICOM Part-10 file (no \"DICM\" after the 128-byte preamble)".into()));
    }
    dataset::meta_lengths_fit(&file[132..]).map_err(unreadable)?;
    let meta = dicom_object::meta::FileMetaTable::from_reader(&file[128..])
        .map_err(|e| unreadable(format!("the File Meta Information does not parse: {e}")))?;
    let start = 132 + 12 + meta.information_group_length as usize;
    let data_set =
        file.get(start..).ok_or_else(|| unreadable("the file ends inside its File Meta Information".into()))?;
    let clean = |s: &str| s.trim_end_matches(['\0', ' ']).to_owned();
    Ok(Instance {
        sop_class: clean(&meta.media_storage_sop_class_uid),
        sop_instance: clean(&meta.media_storage_sop_instance_uid),
        transfer_syntax: clean(&meta.transfer_syntax),
        data_set: data_set.to_vec(),
    })
}

fn uid(value: &str) -> Value {
    json!({"vr": "UI", "Value": [value]})
}

/// The STOW-RS response (PS3.18 10.5.3.1): 200, 202 or 409 with the
/// Store Instances Response Module as DICOM JSON; with `limit`, 413.
fn answer(headers: &HeaderMap, study: Option<&str>, outcomes: &[Outcome], limit: Option<String>) -> Response {
    let base = meridian_storage::dicomweb::base_url(headers);
    let tag = |t: dicom_core::Tag| format!("{:04X}{:04X}", t.group(), t.element());
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    for o in outcomes {
        let mut item = serde_json::Map::new();
        if !o.sop_class.is_empty() {
            item.insert(tag(tags::REFERENCED_SOP_CLASS_UID), uid(&o.sop_class));
            item.insert(tag(tags::REFERENCED_SOP_INSTANCE_UID), uid(&o.sop_instance));
        }
        if o.status() == STATUS_SUCCESS {
            let url = format!("{base}/studies/{}/series/{}/instances/{}", o.study, o.series, o.sop_instance);
            item.insert(tag(tags::RETRIEVE_URL), json!({"vr": "UR", "Value": [url]}));
            stored.push(Value::Object(item));
        } else {
            item.insert(tag(tags::FAILURE_REASON), json!({"vr": "US", "Value": [o.status()]}));
            failed.push(Value::Object(item));
        }
    }
    let mut body = serde_json::Map::new();
    if let Some(s) = study.or_else(|| outcomes.iter().find(|o| o.status() == STATUS_SUCCESS).map(|o| o.study.as_str()))
    {
        body.insert(tag(tags::RETRIEVE_URL), json!({"vr": "UR", "Value": [format!("{base}/studies/{s}")]}));
    }
    if !stored.is_empty() {
        body.insert(tag(tags::REFERENCED_SOP_SEQUENCE), json!({"vr": "SQ", "Value": stored}));
    }
    if !failed.is_empty() {
        body.insert(tag(tags::FAILED_SOP_SEQUENCE), json!({"vr": "SQ", "Value": failed}));
    }
    let status = match (limit.is_some(), stored.is_empty(), failed.is_empty()) {
        (true, _, _) => StatusCode::PAYLOAD_TOO_LARGE,
        (false, false, true) => StatusCode::OK,
        (false, false, false) => StatusCode::ACCEPTED,
        (false, true, _) => StatusCode::CONFLICT,
    };
    let mut response = (status, serde_json::to_vec(&Value::Object(body)).unwrap_or_default()).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/dicom+json"));
    if let Some(message) = limit
        && let Ok(warning) = header::HeaderValue::from_str(&format!("299 meridian \"{message}\""))
    {
        response.headers_mut().insert(header::WARNING, warning);
    }
    response
}

/// The body ended badly or went over the request limit after `index`
/// parts: what was stored stays stored, and the answer says so.
fn cut_short(
    headers: &HeaderMap,
    study: Option<&str>,
    outcomes: Vec<Outcome>,
    index: usize,
    error: &multer::Error,
) -> Response {
    match error {
        multer::Error::StreamSizeExceeded { limit } => {
            let message = format!(
                "the request is over this region's limit of {limit} bytes at part {}; the parts before it are answered",
                index + 1
            );
            answer(headers, study, &outcomes, Some(message))
        }
        e => {
            let stored = outcomes.iter().filter(|o| o.status() == STATUS_SUCCESS).count();
            problem(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                format!(
                    "the multipart body is malformed after part {index}: {e}; {stored} instance(s) before it were stored"
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_content_type_must_be_multipart_related_of_dicom_with_a_boundary() {
        let ok = "multipart/related; type=\"application/dicom\"; boundary=abc";
        assert_eq!(multipart_boundary(ok).unwrap(), "abc");
        assert_eq!(multipart_boundary("multipart/related; boundary=xyz").unwrap(), "xyz");
        let (status, message) = multipart_boundary("application/dicom").unwrap_err();
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(message.contains("multipart/related"), "{message}");
        let (status, _) =
            multipart_boundary("multipart/related; type=\"application/dicom+json\"; boundary=a").unwrap_err();
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let (status, message) = multipart_boundary("multipart/related; type=\"application/dicom\"").unwrap_err();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(message.contains("boundary"), "{message}");
    }

    #[test]
    fn a_file_without_the_dicm_magic_is_not_understood() {
        let e = instance_of(b"hello").unwrap_err();
        assert_eq!(e.status, STATUS_CANNOT_UNDERSTAND);
        assert!(e.reason.contains("DICM"), "{}", e.reason);
    }

    /// dicom-rs's meta reader makes room for a declared length before
    /// reading it: a file meta element declaring 4 GiB is refused first.
    #[test]
    fn a_file_meta_element_declaring_more_than_the_file_holds_is_refused_before_it_is_read() {
        let mut file = vec![0u8; 128];
        file.extend_from_slice(b"DICM");
        file.extend_from_slice(&[0x02, 0x00, 0x00, 0x00, b'U', b'L', 4, 0, 30, 0, 0, 0]);
        file.extend_from_slice(&[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF, 0, 1]);
        let e = instance_of(&file).unwrap_err();
        assert_eq!((e.status, e.code), (STATUS_CANNOT_UNDERSTAND, "unreadable_data_set"));
        assert_eq!(
            e.reason,
            "File Meta Information element (0002,0001) at byte 24 declares 4294967280 bytes, but only 2 follow"
        );
    }
}
