//! `meridian.admin.v1.AdminService`: operating a region (platform
//! principals, SRE) and exporting a tenant's audit trail (its
//! administrator, or SRE); nothing returned carries PHI.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use meridian_auth::grpc::{permission_denied, principal};
use meridian_auth::{Action, Resource, authorize};
use meridian_events::envelope::Body;
use meridian_events::{DataClass, UnixMicros};
use meridian_log::{LogReader, Position, Record, TopicName};
use meridian_proto::admin::v1 as pb;
use meridian_proto::admin::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use crate::node::Region;

pub struct Admin {
    region: Arc<Region>,
}

impl Admin {
    pub fn new(region: Arc<Region>) -> Admin {
        Admin { region }
    }

    fn allow<T>(&self, request: &Request<T>, action: Action) -> Result<(), Status> {
        let p = principal(request)?;
        authorize(p, action, &Resource::Region { region: &self.region.name }).map_err(|d| permission_denied(&d))
    }
}

fn render(record: &Record) -> pb::TailLogResponse {
    let mut out = pb::TailLogResponse {
        topic: record.topic.to_string(),
        partition: record.partition,
        offset: record.offset,
        ..Default::default()
    };
    let envelope = match record.envelope() {
        Ok(e) => e,
        Err(e) => {
            out.error = e.to_string();
            return out;
        }
    };
    out.event_id = envelope.meta.event_id.to_string();
    out.payload_type = envelope.payload_type.clone();
    out.data_class = envelope.data_class.as_str().to_owned();
    out.aggregate_type = envelope.meta.aggregate_type.clone();
    out.aggregate_id = envelope.meta.aggregate_id.to_string();
    out.aggregate_version = envelope.meta.aggregate_version;
    out.tenant = envelope.meta.tenant.clone();
    out.occurred_at = Some(envelope.meta.occurred_at.to_timestamp());
    out.traceparent = envelope.meta.traceparent.clone().unwrap_or_default();
    out.payload_text = match &envelope.body {
        // PHI stays sealed: the tail shows that it is there, not what it says.
        Body::Sealed { .. } => "(sealed)".to_owned(),
        Body::Plain(bytes) => match envelope.open_plain() {
            Ok(p) => {
                out.payload_json = canonical_json(&envelope.payload_type, bytes).unwrap_or_else(|e| {
                    tracing::warn!(payload_type = %envelope.payload_type, error = %e, "payload without a JSON form");
                    String::new()
                });
                format!("{p:?}")
            }
            Err(e) => {
                out.error = e.to_string();
                String::new()
            }
        },
    };
    out
}

/// The descriptors of every Meridian message (the set gRPC reflection
/// serves), for payloads in protobuf's canonical JSON mapping.
static DESCRIPTORS: std::sync::LazyLock<Result<prost_reflect::DescriptorPool, String>> =
    std::sync::LazyLock::new(|| {
        prost_reflect::DescriptorPool::decode(meridian_proto::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string())
    });

/// `bytes`, a `type_name` message, in protobuf's canonical JSON mapping.
fn canonical_json(type_name: &str, bytes: &[u8]) -> Result<String, String> {
    let pool = DESCRIPTORS.as_ref()?;
    let descriptor = pool.get_message_by_name(type_name).ok_or_else(|| format!("no descriptor for {type_name}"))?;
    let message = prost_reflect::DynamicMessage::decode(descriptor, bytes).map_err(|e| e.to_string())?;
    serde_json::to_string(&message).map_err(|e| e.to_string())
}

struct Tail {
    reader: Box<dyn LogReader>,
    buffer: VecDeque<Record>,
    study: Option<String>,
    follow: bool,
    idle: Duration,
}

type TailStream = Pin<Box<dyn Stream<Item = Result<pb::TailLogResponse, Status>> + Send>>;
type AuditStream = Pin<Box<dyn Stream<Item = Result<pb::ExportAuditResponse, Status>> + Send>>;
type SurveyStream = Pin<Box<dyn Stream<Item = Result<pb::SurveyResidencyResponse, Status>> + Send>>;

/// A time bound of an export, in microseconds.
fn bound(t: Option<prost_types::Timestamp>, open: i64) -> i64 {
    t.map_or(open, |t| t.seconds.saturating_mul(1_000_000).saturating_add(i64::from(t.nanos / 1_000)))
}

/// The export of one tenant's audit records of `[from, to)`: the audit
/// topic read to where it ended when the export began.
struct AuditExport {
    reader: Box<dyn LogReader>,
    buffer: VecDeque<Record>,
    tenant: String,
    from: i64,
    to: i64,
    idle: Duration,
}

impl AuditExport {
    fn message(&self, record: &Record) -> Option<String> {
        let envelope = record.envelope().ok()?;
        let at = envelope.meta.occurred_at.0;
        if envelope.meta.tenant != self.tenant || at < self.from || at >= self.to {
            return None;
        }
        let payload = envelope.open_plain().ok()?;
        meridian_audit::atna::message(&envelope, &payload).map(|m| m.to_string())
    }
}

#[tonic::async_trait]
impl AdminService for Admin {
    type TailLogStream = TailStream;
    type ExportAuditStream = AuditStream;

    async fn export_audit(&self, request: Request<pb::ExportAuditRequest>) -> Result<Response<AuditStream>, Status> {
        let p = principal(&request)?;
        let req = request.get_ref();
        if req.tenant.is_empty() {
            return Err(meridian_auth::grpc::invalid_argument(
                "tenant",
                "is empty: name the tenant whose trail to export",
            ));
        }
        authorize(p, Action::ExportAudit, &Resource::Tenant { tenant: &req.tenant })
            .map_err(|d| permission_denied(&d))?;
        let req = request.into_inner();
        let (from, to) = (bound(req.from, i64::MIN), bound(req.to, i64::MAX));
        if from >= to {
            return Err(meridian_auth::grpc::invalid_argument("to", "is not after from"));
        }
        let positions =
            self.region.start_positions().into_iter().filter(|p| p.topic.stream() == "audit").collect::<Vec<_>>();
        let reader = self.region.log.reader(positions).await.map_err(|e| Status::internal(e.to_string()))?;
        let idle = self.region.context.idle;
        let state = AuditExport { reader, buffer: VecDeque::new(), tenant: req.tenant, from, to, idle };
        let stream = futures_util::stream::unfold(state, |mut export| async move {
            loop {
                if let Some(record) = export.buffer.pop_front() {
                    match export.message(&record) {
                        Some(atna_json) => return Some((Ok(pb::ExportAuditResponse { atna_json }), export)),
                        None => continue,
                    }
                }
                match export.reader.catch_up_batch(512, export.idle).await {
                    Ok(batch) if batch.is_empty() => return None,
                    Ok(batch) => export.buffer.extend(batch),
                    Err(e) => return Some((Err(Status::internal(e.to_string())), export)),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    type SurveyResidencyStream = SurveyStream;

    async fn survey_residency(
        &self,
        request: Request<pb::SurveyResidencyRequest>,
    ) -> Result<Response<SurveyStream>, Status> {
        self.allow(&request, Action::ReadResidencyReport)?;
        let req = request.into_inner();
        let (from, to) = (bound(req.from, i64::MIN), bound(req.to, i64::MAX));
        if from >= to {
            return Err(meridian_auth::grpc::invalid_argument("to", "is not after from"));
        }
        let scope = crate::residency::Scope {
            tenant: Some(req.tenant).filter(|t| !t.is_empty()),
            from: req.from.map(|_| UnixMicros(from)),
            to: req.to.map(|_| UnixMicros(to)),
            objects: req.objects,
        };
        let context = &self.region.context;
        let grace = Duration::from_secs(context.config().housekeeping.orphan_grace.seconds);
        #[allow(clippy::disallowed_methods)] // the edge: the report's moment
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let now = UnixMicros(i64::try_from(now.as_micros()).unwrap_or(i64::MAX));
        let survey = crate::residency::survey(
            &context.name,
            &context.platform,
            context.log.as_ref(),
            context.keys.as_ref(),
            context.blobs.as_ref(),
            &scope,
            now,
            grace,
            context.idle,
        )
        .await
        .map_err(|e| Status::unavailable(format!("surveying {}: {e}", context.name)))?;
        use pb::survey_residency_response::Finding;
        let region = context.name.clone();
        let mut findings = Vec::new();
        for ((kind, tenant), count) in survey.held {
            findings.push(Finding::Held(pb::HeldObjects { kind: kind.into(), tenant, count }));
        }
        findings.extend(
            survey
                .objects
                .into_iter()
                .map(|(key, kind, tenant)| Finding::Object(pb::StoredObject { key, kind: kind.into(), tenant })),
        );
        findings.extend(survey.violations.into_iter().map(|v| {
            Finding::Violation(pb::ResidencyViolation {
                region: region.clone(),
                key: v.key,
                rule: v.rule.as_str().into(),
                detail: v.detail,
            })
        }));
        findings.extend(survey.accesses.into_iter().map(|a| {
            Finding::Access(pb::PhiAccess {
                at: Some(a.at.to_timestamp()),
                tenant: a.tenant,
                study_id: a.study,
                principal: a.principal,
                principal_kind: a.principal_kind,
                from_region: a.from_region,
                action: a.action,
            })
        }));
        findings.extend(survey.refusals.into_iter().map(|r| {
            Finding::Refusal(pb::RefusedWrite {
                at: Some(r.at.to_timestamp()),
                tenant: r.tenant,
                region: r.region,
                contract: r.contract,
                study_id: r.study,
                reason: r.reason,
            })
        }));
        let stream = futures_util::stream::iter(
            findings.into_iter().map(|f| Ok(pb::SurveyResidencyResponse { finding: Some(f) })),
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn tail_log(&self, request: Request<pb::TailLogRequest>) -> Result<Response<TailStream>, Status> {
        self.allow(&request, Action::TailLog)?;
        let req = request.into_inner();
        let own = self.region.start_positions();
        let from: Vec<Position> = if req.copies_of.is_empty() || req.copies_of == self.region.name {
            own
        } else {
            // The replicator's copies: the source's operational topics, by
            // the names they have in this log, where any came.
            let mut copies = Vec::new();
            for p in own.iter().filter(|p| p.topic.class() == DataClass::Operational) {
                let Ok(topic) = TopicName::new(&req.copies_of, DataClass::Operational, p.topic.stream()) else {
                    return Err(Status::invalid_argument(format!(
                        "copies_of {:?} is not a region name",
                        req.copies_of
                    )));
                };
                if self.region.log.partitions(&topic).await.is_ok_and(|n| p.partition < n) {
                    copies.push(Position { topic, partition: p.partition, offset: 0 });
                }
            }
            copies
        };
        let from = from
            .into_iter()
            .filter(|p| req.streams.is_empty() || req.streams.iter().any(|s| s == p.topic.stream()))
            .collect();
        let reader = self.region.log.reader(from).await.map_err(|e| Status::internal(e.to_string()))?;
        let study = (!req.study_id.is_empty()).then_some(req.study_id);
        let state = Tail { reader, buffer: VecDeque::new(), study, follow: req.follow, idle: self.region.context.idle };
        let stream = futures_util::stream::unfold(state, |mut t| async move {
            loop {
                if let Some(record) = t.buffer.pop_front() {
                    let item = render(&record);
                    if t.study.as_ref().is_some_and(|s| *s != item.aggregate_id) {
                        continue;
                    }
                    return Some((Ok(item), t));
                }
                // Without follow, until a read stays empty as long as the
                // region's catch-up waits (a broker's first fetch after it
                // restarted takes longer than a local read). Not to the
                // offsets a broker names as its ends: tansu names them
                // wrongly after a restart of its s3 engine.
                let wait = if t.follow { Duration::from_secs(1) } else { t.idle.max(Duration::from_millis(200)) };
                let batch = t.reader.next_batch(512, wait).await;
                match batch {
                    Ok(batch) if batch.is_empty() && !t.follow => return None,
                    Ok(batch) => t.buffer.extend(batch),
                    Err(e) => return Some((Err(Status::internal(e.to_string())), t)),
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn rebuild_projection(
        &self,
        request: Request<pb::RebuildProjectionRequest>,
    ) -> Result<Response<pb::RebuildProjectionResponse>, Status> {
        self.allow(&request, Action::RebuildProjection)?;
        let name = request.into_inner().name;
        let Some(done) = self.region.rebuild(&name).await.map_err(|e| Status::internal(e.to_string()))? else {
            return Err(Status::not_found(format!(
                "no projection {name:?} in region {}; known: {}",
                self.region.name,
                self.region.rebuildable().join(", ")
            )));
        };
        let r = done.rebuilt;
        Ok(Response::new(pb::RebuildProjectionResponse {
            name,
            events_applied: r.applied,
            duplicates: r.duplicates,
            skipped: r.skipped,
            duration_micros: r.duration.as_micros() as u64,
            matches_previous: r.matches_previous,
            summary: done.summary,
        }))
    }

    async fn list_topics(
        &self,
        request: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        self.allow(&request, Action::TailLog)?;
        let mut topics = Vec::new();
        for name in self.region.topics() {
            let partitions = self.region.log.partitions(name).await.map_err(|e| Status::internal(e.to_string()))?;
            topics.push(pb::TopicInfo { name: name.to_string(), partitions });
        }
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }
}
