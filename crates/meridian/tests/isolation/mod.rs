//! Tenant isolation, proven for every RPC: every method of every Meridian
//! service in the descriptor set gRPC reflection serves is called by the
//! wrong tenant, the wrong reading group and the wrong role against a
//! region holding another tenant's study, read and report. A refusal must
//! be PERMISSION_DENIED with ErrorInfo and ResourceInfo; a list or search
//! must hold nothing of the other tenant. A method without a case fails
//! the suite, so a new RPC cannot ship unexamined.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::*;

/// Requests and responses as bytes: the suite builds requests from the
/// descriptors and reads answers back through them.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// What a wrong caller must get.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// PERMISSION_DENIED with ErrorInfo (reason PERMISSION_DENIED) and ResourceInfo.
    Denied,
    /// NOT_FOUND: another group's study is answered as one that is not
    /// here, so that its existence is not disclosed.
    Hidden,
    /// An answer, holding nothing of the other tenant.
    Nothing,
    /// UNIMPLEMENTED: a service this process does not serve.
    NotServed,
}

/// One method's case: a request (protobuf JSON, with `{study}`, `{period}`
/// and `{invoice}` filled in) and each wrong caller's expected answer.
struct Case {
    request: &'static str,
    callers: &'static [(&'static str, Expect)],
}

use Expect::*;

/// The principals: acme (tenant) reads through atlantic-rads (dr-ortiz,
/// atlantic-admin). Wrong tenant: northwind-*; wrong group: dr-nair and
/// lotus-admin of lotus-teleradiology (no contract with acme here); wrong
/// role: acme-pacs where its admin is needed, dr-ortiz where a group admin
/// is, sre and billing-clerk where patient data is.
fn cases() -> BTreeMap<&'static str, Case> {
    let c = |request, callers| Case { request, callers };
    BTreeMap::from([
        // Operating a region.
        ("meridian.admin.v1.AdminService/TailLog", c("{}", &[("acme-admin", Denied), ("dr-nair", Denied)])),
        (
            "meridian.admin.v1.AdminService/RebuildProjection",
            c(r#"{"name":"events.summary"}"#, &[("acme-admin", Denied), ("atlantic-admin", Denied)]),
        ),
        ("meridian.admin.v1.AdminService/ListTopics", c("{}", &[("northwind-admin", Denied), ("dr-ortiz", Denied)])),
        (
            "meridian.admin.v1.AdminService/SurveyResidency",
            c(r#"{"tenant":"acme"}"#, &[("acme-admin", Denied), ("dr-ortiz", Denied), ("billing-clerk", Denied)]),
        ),
        (
            "meridian.admin.v1.AdminService/ExportAudit",
            c(
                r#"{"tenant":"acme"}"#,
                &[("northwind-admin", Denied), ("acme-pacs", Denied), ("dr-ortiz", Denied), ("billing-clerk", Denied)],
            ),
        ),
        // Billing.
        (
            "meridian.billing.v1.BillingService/GetLedger",
            c(
                r#"{"tenant":"acme","period":"{period}"}"#,
                &[("northwind-admin", Denied), ("acme-pacs", Denied), ("dr-ortiz", Denied), ("sre", Denied)],
            ),
        ),
        (
            "meridian.billing.v1.BillingService/PreviewInvoice",
            c(r#"{"tenant":"acme","period":"{period}"}"#, &[("northwind-admin", Denied), ("atlantic-admin", Denied)]),
        ),
        (
            "meridian.billing.v1.BillingService/IssueInvoice",
            c(r#"{"tenant":"acme","period":"{period}"}"#, &[("acme-admin", Denied), ("sre", Denied)]),
        ),
        (
            "meridian.billing.v1.BillingService/ListInvoices",
            c(r#"{"tenant":"acme","period":"{period}"}"#, &[("northwind-admin", Denied), ("dr-ortiz", Denied)]),
        ),
        (
            "meridian.billing.v1.BillingService/GetInvoice",
            c(r#"{"number":"{invoice}"}"#, &[("northwind-admin", Hidden), ("acme-pacs", Denied), ("sre", Denied)]),
        ),
        (
            "meridian.billing.v1.BillingService/IssueCreditNote",
            c(
                r#"{"invoiceNumber":"{invoice}","reason":"x","idempotencyKey":"iso-1","lines":[{"invoiceLine":1}]}"#,
                &[("acme-admin", Denied), ("northwind-admin", Denied)],
            ),
        ),
        (
            "meridian.billing.v1.BillingService/ExplainCharge",
            c(r#"{"tenant":"acme","eventId":"{charge}"}"#, &[("northwind-admin", Denied), ("dr-ortiz", Denied)]),
        ),
        (
            "meridian.billing.v1.BillingService/ListPayouts",
            c(
                r#"{"readingGroup":"atlantic-rads","period":"{period}"}"#,
                &[("lotus-admin", Denied), ("dr-ortiz", Denied), ("acme-admin", Denied)],
            ),
        ),
        // Inference.
        ("meridian.inference.v1.InferenceService/ListModels", c("{}", &[("dr-nair", Denied), ("acme-pacs", Denied)])),
        (
            "meridian.inference.v1.InferenceService/EnableModel",
            c(r#"{"name":"ich-demo","reason":"x"}"#, &[("acme-admin", Denied), ("atlantic-admin", Denied)]),
        ),
        (
            "meridian.inference.v1.InferenceService/DisableModel",
            c(r#"{"name":"ich-demo","reason":"x"}"#, &[("acme-admin", Denied), ("billing-clerk", Denied)]),
        ),
        (
            "meridian.inference.v1.InferenceService/GetTriage",
            c(r#"{"studyId":"{study}"}"#, &[("northwind-admin", Hidden), ("dr-nair", Denied), ("sre", Denied)]),
        ),
        // Ingest.
        (
            "meridian.ingest.v1.IngestService/ListRejections",
            c("{}", &[("northwind-pacs", Nothing), ("northwind-admin", Nothing), ("dr-nair", Denied), ("sre", Denied)]),
        ),
        (
            "meridian.ingest.v1.IngestService/CompleteStudy",
            c(r#"{"studyId":"{study}"}"#, &[("northwind-pacs", Hidden), ("dr-ortiz", Denied), ("acme-admin", Denied)]),
        ),
        (
            "meridian.ingest.v1.IngestService/UploadInstances",
            c(
                r#"{"header":{"idempotencyKey":"iso-1"}}"#,
                &[("dr-nair", Denied), ("acme-admin", Denied), ("sre", Denied)],
            ),
        ),
        // Between ingest replicas only, under the region's service key; not
        // served by a process without replicas (`meridian dev`). Its MAC is
        // tested in `crates/objects` (keys) and on the replicas' process test.
        ("meridian.ingest.v1.IngestReplicaService/RecordArrival", c("{}", &[("acme-pacs", NotServed)])),
        // Reporting.
        (
            "meridian.reporting.v1.ReportingService/SaveDraft",
            c(
                r#"{"studyId":"{study}","sections":{"impression":"x"},"idempotencyKey":"iso-1"}"#,
                &[("dr-nair", Denied), ("acme-admin", Denied), ("sre", Denied)],
            ),
        ),
        (
            "meridian.reporting.v1.ReportingService/Sign",
            c(
                r#"{"studyId":"{study}","readType":"preliminary","version":1}"#,
                &[("dr-nair", Denied), ("atlantic-admin", Denied)],
            ),
        ),
        (
            "meridian.reporting.v1.ReportingService/GetReport",
            c(
                r#"{"studyId":"{study}"}"#,
                &[("dr-nair", Denied), ("northwind-admin", Denied), ("sre", Denied), ("billing-clerk", Denied)],
            ),
        ),
        (
            "meridian.reporting.v1.ReportingService/AddAddendum",
            c(
                r#"{"studyId":"{study}","readType":"preliminary","text":"x","idempotencyKey":"iso-1"}"#,
                &[("dr-nair", Denied), ("acme-admin", Denied)],
            ),
        ),
        (
            "meridian.reporting.v1.ReportingService/Correct",
            c(
                r#"{"studyId":"{study}","readType":"preliminary","sections":{"impression":"x"},"reason":"x","idempotencyKey":"iso-1"}"#,
                &[("dr-nair", Denied), ("northwind-admin", Denied)],
            ),
        ),
        (
            "meridian.reporting.v1.ReportingService/EnterInError",
            c(
                r#"{"studyId":"{study}","readType":"preliminary","reason":"x"}"#,
                &[("dr-nair", Denied), ("acme-pacs", Denied)],
            ),
        ),
        (
            "meridian.reporting.v1.ReportingService/ListDeliveries",
            c(r#"{"tenant":"acme"}"#, &[("northwind-admin", Denied), ("dr-ortiz", Denied), ("sre", Denied)]),
        ),
        (
            "meridian.reporting.v1.ReportingService/Redeliver",
            c(r#"{"deliveryId":"{delivery}"}"#, &[("northwind-admin", Denied), ("dr-ortiz", Denied)]),
        ),
        (
            "meridian.reporting.v1.ReportingService/FlagCritical",
            c(r#"{"studyId":"{study}","category":1}"#, &[("dr-nair", Denied), ("acme-admin", Denied)]),
        ),
        (
            "meridian.reporting.v1.ReportingService/RecordCommunication",
            c(
                r#"{"studyId":"{study}","recipient":"x","method":"phone"}"#,
                &[("dr-nair", Denied), ("northwind-admin", Denied)],
            ),
        ),
        (
            "meridian.reporting.v1.ReportingService/OpenStudy",
            c(r#"{"studyId":"{study}"}"#, &[("dr-nair", Denied), ("northwind-admin", Denied), ("sre", Denied)]),
        ),
        (
            "meridian.reporting.v1.ReportingService/GetKpis",
            c(
                r#"{"tenant":"acme","period":"{period}"}"#,
                &[("northwind-admin", Denied), ("dr-ortiz", Denied), ("acme-pacs", Denied)],
            ),
        ),
        (
            "meridian.reporting.v1.ReportingService/ScorePeerReview",
            c(r#"{"studyId":"{study}","score":"1"}"#, &[("dr-nair", Denied), ("acme-admin", Denied)]),
        ),
        (
            "meridian.reporting.v1.ReportingService/Arbitrate",
            c(r#"{"studyId":"{study}","score":"1"}"#, &[("lotus-admin", Hidden), ("dr-ortiz", Denied)]),
        ),
        (
            "meridian.reporting.v1.ReportingService/ListPriors",
            c(r#"{"studyId":"{study}"}"#, &[("dr-nair", Denied), ("northwind-admin", Denied), ("sre", Denied)]),
        ),
        (
            "meridian.reporting.v1.ReportingService/ListReports",
            c(r#"{"tenant":"acme"}"#, &[("northwind-admin", Denied), ("dr-nair", Denied), ("sre", Denied)]),
        ),
        // Routing.
        (
            "meridian.routing.v1.RoutingService/GetWorklist",
            c(
                r#"{"readerId":"dr-ana-ortiz"}"#,
                &[("dr-nair", Denied), ("acme-admin", Denied), ("lotus-admin", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/WatchWorklist",
            c(r#"{"readerId":"dr-ana-ortiz"}"#, &[("dr-nair", Denied), ("northwind-admin", Denied)]),
        ),
        (
            "meridian.routing.v1.RoutingService/Claim",
            // us-east does not know her: no contract of a tenant homed
            // there names her group, so her region's events never reach it.
            c(r#"{"readerId":"dr-priya-nair","studyId":"{study}","idempotencyKey":"iso-1"}"#, &[("dr-nair", Hidden)]),
        ),
        (
            "meridian.routing.v1.RoutingService/ClaimNext",
            c(
                r#"{"readerId":"dr-ana-ortiz","idempotencyKey":"iso-2"}"#,
                &[("dr-nair", Denied), ("acme-admin", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/Release",
            c(
                r#"{"readerId":"dr-ana-ortiz","studyId":"{study}","reason":"x","idempotencyKey":"iso-3"}"#,
                &[("dr-nair", Denied), ("lotus-admin", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/Reassign",
            c(
                r#"{"readingGroup":"lotus-teleradiology","studyId":"{study}","toReaderId":"dr-priya-nair","idempotencyKey":"iso-4"}"#,
                &[("lotus-admin", Hidden), ("dr-nair", Denied), ("atlantic-admin", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/ExplainEligibility",
            c(r#"{"readerId":"dr-priya-nair","studyId":"{study}"}"#, &[("dr-nair", Hidden), ("lotus-admin", Hidden)]),
        ),
        (
            "meridian.routing.v1.RoutingService/SetAvailability",
            c(
                r#"{"readerId":"dr-ana-ortiz","status":"away"}"#,
                &[("dr-nair", Denied), ("lotus-admin", Denied), ("acme-admin", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/RegisterReader",
            c(
                r#"{"reader":{"readerId":"dr-new","readingGroup":"atlantic-rads","region":"us-east"},"idempotencyKey":"iso-5"}"#,
                &[("lotus-admin", Denied), ("dr-ortiz", Denied), ("sre", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/UpdateReader",
            c(
                r#"{"readerId":"dr-ana-ortiz","profile":{},"idempotencyKey":"iso-6"}"#,
                &[("lotus-admin", Denied), ("dr-nair", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/UpdateLicences",
            c(
                r#"{"readerId":"dr-ana-ortiz","idempotencyKey":"iso-7"}"#,
                &[("lotus-admin", Denied), ("dr-ortiz", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/UpdateCredentials",
            c(
                r#"{"readerId":"dr-ana-ortiz","idempotencyKey":"iso-8"}"#,
                &[("lotus-admin", Denied), ("dr-ortiz", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/GetReader",
            c(r#"{"readerId":"dr-ana-ortiz"}"#, &[("dr-nair", Denied), ("northwind-admin", Denied)]),
        ),
        (
            "meridian.routing.v1.RoutingService/ListAssignments",
            c(
                r#"{"readerId":"dr-ana-ortiz"}"#,
                &[("dr-nair", Denied), ("lotus-admin", Denied), ("acme-admin", Denied)],
            ),
        ),
        (
            "meridian.routing.v1.RoutingService/ListUnroutable",
            c("{}", &[("northwind-admin", Nothing), ("dr-nair", Denied), ("sre", Denied)]),
        ),
    ])
}

/// Every method of every Meridian service, by `package.Service/Method`.
fn methods(pool: &DescriptorPool) -> Vec<MethodDescriptor> {
    pool.services()
        .filter(|s| s.full_name().starts_with("meridian."))
        .flat_map(|s| s.methods().collect::<Vec<_>>())
        .collect()
}

fn full_name(m: &MethodDescriptor) -> String {
    format!("{}/{}", m.parent_service().full_name(), m.name())
}

/// Calls `method` with `request` as `token`: the answers, or the status.
async fn call(channel: Channel, method: &MethodDescriptor, request: Bytes, token: &str) -> Result<Vec<Bytes>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Status::unknown(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_str(&format!("/{}", full_name(method))).unwrap();
    let header: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let mut answers = Vec::new();
    let mut stream = if method.is_client_streaming() {
        let mut r = tonic::Request::new(tokio_stream::iter(vec![request]));
        r.metadata_mut().insert("authorization", header);
        grpc.streaming(r, path, Raw).await?.into_inner()
    } else if method.is_server_streaming() {
        let mut r = tonic::Request::new(request);
        r.metadata_mut().insert("authorization", header);
        grpc.server_streaming(r, path, Raw).await?.into_inner()
    } else {
        let mut r = tonic::Request::new(request);
        r.metadata_mut().insert("authorization", header);
        return Ok(vec![grpc.unary(r, path, Raw).await?.into_inner()]);
    };
    // A stream that is allowed may never end (WatchWorklist): what came
    // within a few seconds is the answer.
    while let Ok(next) = tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
        match next? {
            Some(m) => answers.push(m),
            None => break,
        }
    }
    Ok(answers)
}

/// The request of `case` for `method`, with the placeholders filled.
fn request(method: &MethodDescriptor, case: &Case, fill: &BTreeMap<&str, String>) -> Bytes {
    let mut text = case.request.to_owned();
    for (name, value) in fill {
        text = text.replace(&format!("{{{name}}}"), value);
    }
    let mut de = serde_json::Deserializer::from_str(&text);
    let message = DynamicMessage::deserialize(method.input(), &mut de).unwrap_or_else(|e| {
        panic!("{}: the case's request {text} is not a {}: {e}", full_name(method), method.input().full_name())
    });
    Bytes::from(message.encode_to_vec())
}

/// Sets up acme's data in us-east (a study queued, assigned to dr-ortiz
/// of atlantic-rads, reported and charged; a rejected instance; an issued
/// invoice) and calls every method as every wrong caller of its case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_the_wrong_tenant_group_and_role_and_lists_nothing_of_another_tenant() {
    let pool = DescriptorPool::decode(meridian_proto::FILE_DESCRIPTOR_SET).unwrap();
    let cases = cases();
    let missing: Vec<String> =
        methods(&pool).iter().map(full_name).filter(|m| !cases.contains_key(m.as_str())).collect();
    assert!(missing.is_empty(), "every RPC needs an isolation case; none for: {missing:?}");
    let known: Vec<String> = methods(&pool).iter().map(full_name).collect();
    let stale: Vec<&&str> = cases.keys().filter(|k| !known.iter().any(|m| m == *k)).collect();
    assert!(stale.is_empty(), "cases for methods that do not exist: {stale:?}");
    // Every case's request is its method's message (checked before anything starts).
    let placeholders = ["study", "period", "charge", "delivery", "invoice"].map(|p| (p, String::new()));
    for method in methods(&pool) {
        request(&method, &cases[full_name(&method).as_str()], &BTreeMap::from(placeholders.clone()));
    }

    // Atlantic alone reads acme here; lotus (dr-nair, and an admin added
    // for the suite) has no contract with acme in us-east.
    let config = tempfile::TempDir::new().unwrap();
    meridian_integration_tests::one_reader_examples(&repo().join("deploy/examples/dev"), config.path());
    let auth = config.path().join("auth.toml");
    let mut text = std::fs::read_to_string(&auth).unwrap();
    text.push_str("\n[[principals]]\nname = \"lotus-admin\"\nkind = \"group\"\ngroup = \"lotus-teleradiology\"\nroles = [\"group-admin\"]\n");
    std::fs::write(&auth, text).unwrap();
    // Acme's RIS on (nothing listens): its report's delivery is requested
    // and waits, so there is a delivery of acme's to ask for.
    let tenant = config.path().join("tenants/acme.toml");
    let text = std::fs::read_to_string(&tenant).unwrap();
    let on = text.replacen("enabled = false", "enabled = true", 1);
    assert!(on.contains(
        "address = \"127.0.0.1:6661\"\nreceiving_application = \"RIS\"\nreceiving_facility = \"ACME\"\nenabled = true"
    ));
    std::fs::write(&tenant, on).unwrap();
    let data = tempfile::TempDir::new().unwrap();
    let dev = Dev::start_configured(config.path(), data.path(), "");
    let files = tempfile::TempDir::new().unwrap();
    let file = meridian_integration_tests::dicom::one_instance_study(
        files.path(),
        "1.2.826.0.1.3680043.10.543.901",
        "MRN-ISOLATION",
        "STAT",
    );
    let (ok, said) =
        meridian_integration_tests::dicom::storescu(dev.dicom_port("us-east"), "ACME_CT1", "MERIDIAN_ACME", &[file]);
    assert!(ok, "{said}");
    let junk = files.path().join("junk.dcm");
    std::fs::write(&junk, b"not a DICOM file").unwrap();
    let sent = meridian_send(data.path(), "us-east", "acme-pacs", &junk);
    assert_eq!(sent.status.code(), Some(1), "acme's refused instance: {}", String::from_utf8_lossy(&sent.stdout));
    let study = wait_for("acme's study assigned to dr-ana-ortiz", 30, || {
        let assigned = tail_payloads(data.path(), "routing", "StudyAssigned");
        assigned.first().map(|a| a["studyId"].as_str().unwrap().to_owned())
    });
    let cli = |args: &[&str]| us_east(data.path(), args);
    let (ok, said) = cli(&["report", "draft", &study, "--as", "dr-ortiz", "--impression", "No acute findings."]);
    assert!(ok, "{said}");
    let (ok, said) = cli(&["report", "sign", &study, "--as", "dr-ortiz", "--read-type", "preliminary"]);
    assert!(ok, "{said}");
    let delivery = wait_for("acme's report's delivery requested", 30, || {
        let requested = tail_payloads(data.path(), "reporting", "DeliveryRequested");
        requested.first().map(|d| d["deliveryId"].as_str().unwrap().to_owned())
    });
    let charge = wait_for("acme's read charged", 30, || {
        let charges = tail_events(data.path(), "us-east", "billing", "ChargePosted");
        charges.first().map(|e| e["event_id"].as_str().unwrap().to_owned())
    });
    #[allow(clippy::disallowed_methods)] // the month the read was charged in, on the machine's clock
    let period = jiff::Timestamp::now().strftime("%Y-%m").to_string();
    let fill = BTreeMap::from([
        ("study", study.clone()),
        ("period", period),
        ("charge", charge),
        ("delivery", delivery),
        // A month must end before its invoice is issued, so a fresh region
        // holds no invoice of acme's: the invoice calls ask for one that is
        // not there, and must not tell a wrong caller more than a right one.
        ("invoice", "US-2026-000001".to_owned()),
    ]);
    let channel = Channel::from_shared(dev.grpc("us-east")).unwrap().connect().await.unwrap();
    let mut failures = Vec::new();
    let mut calls = 0;
    for method in methods(&pool) {
        let name = full_name(&method);
        let case = &cases[name.as_str()];
        for (caller, expect) in case.callers {
            calls += 1;
            let body = request(&method, case, &fill);
            let answer = call(channel.clone(), &method, body, &dev.token(caller)).await;
            let verdict = judge(&method, *expect, answer, &study);
            if let Err(why) = verdict {
                failures.push(format!("{name} as {caller}: expected {expect:?}, {why}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {calls} calls broke isolation:\n{}", failures.len(), failures.join("\n"));
    dev.interrupt();
}

/// Whether `answer` is what `expect` asks of a wrong caller.
fn judge(
    method: &MethodDescriptor,
    expect: Expect,
    answer: Result<Vec<Bytes>, Status>,
    study: &str,
) -> Result<(), String> {
    match (expect, answer) {
        (Denied, Err(s)) if s.code() == Code::PermissionDenied => {
            let details = s.get_error_details();
            match (details.error_info(), details.resource_info()) {
                (Some(info), Some(_)) if info.reason == "PERMISSION_DENIED" => Ok(()),
                (info, resource) => Err(format!(
                    "got PERMISSION_DENIED without ErrorInfo+ResourceInfo ({info:?}, {resource:?}): {}",
                    s.message()
                )),
            }
        }
        (Hidden, Err(s)) if s.code() == Code::NotFound => Ok(()),
        (NotServed, Err(s)) if s.code() == Code::Unimplemented => Ok(()),
        (Nothing, Ok(answers)) => {
            for bytes in answers {
                let message = DynamicMessage::decode(method.output(), bytes).map_err(|e| e.to_string())?;
                let json = serde_json::to_string(&message).map_err(|e| e.to_string())?;
                if json.contains(study) || json.contains("\"acme\"") || json.contains("acme-") {
                    return Err(format!("the answer holds acme's data: {json}"));
                }
            }
            Ok(())
        }
        (_, Ok(answers)) => Err(format!("got an answer ({} messages)", answers.len())),
        (_, Err(s)) => Err(format!("got {:?}: {}", s.code(), s.message())),
    }
}
