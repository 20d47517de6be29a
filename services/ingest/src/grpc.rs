//! `meridian.ingest.v1.IngestService`: a tenant uploads instances over a
//! stream, lists its refused instances and completes its studies. Every call resolves the principal
//! (Foundation B's interceptor) and asks `authorize` for the tenant.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use meridian_dimse::Sender;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use meridian_auth::grpc::{permission_denied, principal};
use meridian_auth::{Action, Denied, Principal, Resource, authorize};
use meridian_proto::ingest::v1 as pb;
use meridian_proto::ingest::v1::complete_study_request::Study;
use meridian_proto::ingest::v1::ingest_replica_service_server::IngestReplicaService;
use meridian_proto::ingest::v1::ingest_service_server::IngestService;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};
use uuid::Uuid;

use crate::app::Ingest;

/// The caller's credentials, passed on when a replica asks another.
const AUTHORIZATION: &str = "authorization";
/// Set when one replica asks another for its part of a tenant's list: it
/// answers with its own part only.
const REPLICA_ONLY: &str = "x-meridian-replica-only";

pub struct IngestGrpc {
    ingest: Arc<Ingest>,
    /// KiB of uploaded instances being stored at once, over every stream.
    in_flight: Arc<tokio::sync::Semaphore>,
    /// Idempotency keys already answered with a stored instance.
    answered: Arc<Answered>,
    limits: UploadLimits,
}

/// What one upload may carry.
#[derive(Clone, Copy, Debug)]
pub struct UploadLimits {
    /// The largest instance (the region's `dicom.max_instance_bytes`).
    pub max_instance_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        UploadLimits { max_instance_bytes: 1 << 30 }
    }
}

/// (tenant, key) → the SHA-256 of the bytes first sent under it and, once
/// stored, the answer; the newest [`KEYS_KEPT`] per region. A key is
/// claimed in stream order before its instance is stored, so a repeat in
/// the same stream is recognised too. A key older than that, retried, is
/// stored again by content: the same bytes store nothing new and get the
/// same ids.
#[derive(Default)]
struct Answered {
    keys: std::sync::Mutex<Keys>,
}

/// (tenant, key): the claims by key, and the keys oldest first.
type Key = (String, String);
#[derive(Default)]
struct Keys(HashMap<Key, (String, Option<pb::StoredInstance>)>, VecDeque<Key>);

/// What a key says about an instance arriving under it.
enum Claim {
    /// Not seen: claimed now.
    Fresh,
    /// Seen with the same bytes, still being stored.
    Same,
    /// Seen with the same bytes and stored: the answer.
    Answered(pb::StoredInstance),
    /// Seen with other bytes.
    Other,
}

const KEYS_KEPT: usize = 100_000;

impl Answered {
    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn claim(&self, tenant: &str, key: &str, sha: &str) -> Claim {
        let mut keys = self.lock();
        let id = (tenant.to_owned(), key.to_owned());
        match keys.0.get(&id) {
            Some((first, _)) if first != sha => Claim::Other,
            Some((_, Some(stored))) => Claim::Answered(stored.clone()),
            Some((_, None)) => Claim::Same,
            None => {
                keys.0.insert(id.clone(), (sha.to_owned(), None));
                keys.1.push_back(id);
                while keys.1.len() > KEYS_KEPT {
                    if let Some(old) = keys.1.pop_front() {
                        keys.0.remove(&old);
                    }
                }
                Claim::Fresh
            }
        }
    }

    fn answer(&self, tenant: &str, key: &str, stored: pb::StoredInstance) {
        if let Some(entry) = self.lock().0.get_mut(&(tenant.to_owned(), key.to_owned())) {
            entry.1 = Some(stored);
        }
    }

    /// A refused instance frees its key for a corrected retry.
    fn forget(&self, tenant: &str, key: &str) {
        let mut keys = self.lock();
        let id = (tenant.to_owned(), key.to_owned());
        if keys.0.get(&id).is_some_and(|(_, stored)| stored.is_none()) {
            keys.0.remove(&id);
            keys.1.retain(|k| *k != id);
        }
    }
}

impl IngestGrpc {
    pub fn new(ingest: Arc<Ingest>, limits: UploadLimits) -> IngestGrpc {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT_KIB as usize));
        IngestGrpc { ingest, in_flight, answered: Arc::default(), limits }
    }
}

/// At most this many KiB of uploaded instances are being stored at once.
const IN_FLIGHT_KIB: u32 = 128 * 1024;
/// A chunk larger than this is refused (the header comment says 4 MiB).
const MAX_CHUNK: usize = 4 << 20;

type Answer = tokio::task::JoinHandle<Result<pb::UploadInstancesResponse, Status>>;

fn stream_error(field: &str, message: String) -> Status {
    bad_request(field, message)
}

/// Stores one uploaded instance and says what became of it. `claim` is
/// what its idempotency key said when the instance arrived.
async fn upload_one(
    ingest: Arc<Ingest>,
    answered: Arc<Answered>,
    sender: Sender,
    header: pb::InstanceHeader,
    file: Vec<u8>,
    claim: Option<Claim>,
) -> pb::UploadInstancesResponse {
    use pb::upload_instances_response::Result as Outcome;
    let tenant = sender.principal.tenant.clone().unwrap_or_default();
    let key = header.idempotency_key.clone();
    let respond = |result| pb::UploadInstancesResponse {
        idempotency_key: header.idempotency_key.clone(),
        label: header.label.clone(),
        result: Some(result),
    };
    let replayed = match claim {
        Some(Claim::Answered(stored)) => {
            return respond(Outcome::Stored(pb::StoredInstance { replayed: true, ..stored }));
        }
        Some(Claim::Other) => {
            return respond(Outcome::Refused(pb::UploadRefusal {
                dimse_status: u32::from(meridian_dimse::command::STATUS_DATA_SET_MISMATCH),
                reason_code: "idempotency_key_reused".into(),
                reason: format!("idempotency key {key:?} was used for other bytes"),
            }));
        }
        Some(Claim::Same) => true,
        Some(Claim::Fresh) | None => false,
    };
    let outcome = crate::stow::store_file(&ingest, &sender, file, None, now()).await;
    match (outcome.receipt.stored, outcome.receipt.refusal) {
        (Some((study, series, instance)), _) => {
            let stored = pb::StoredInstance {
                study_id: study.to_string(),
                series_id: series.to_string(),
                instance_id: instance.to_string(),
                replayed,
            };
            if !key.is_empty() {
                answered.answer(&tenant, &key, pb::StoredInstance { replayed: false, ..stored.clone() });
            }
            respond(Outcome::Stored(stored))
        }
        (None, refusal) => {
            if !key.is_empty() && !replayed {
                answered.forget(&tenant, &key);
            }
            let (reason_code, reason) = refusal.unwrap_or_else(|| ("not_stored".into(), "not stored".into()));
            respond(Outcome::Refused(pb::UploadRefusal {
                dimse_status: u32::from(outcome.receipt.status),
                reason_code,
                reason,
            }))
        }
    }
}

use meridian_auth::grpc::arrival_time as now;

use meridian_auth::grpc::invalid_argument as bad_request;

/// The tenant the principal acts for, if it may take `action` for it.
fn tenant_for(p: &Principal, action: Action) -> Result<String, Status> {
    let tenant = p.tenant.clone().ok_or_else(|| {
        permission_denied(&p.refuse(Denied {
            subject: p.subject.clone(),
            action: action.as_str(),
            resource: "a tenant's studies".into(),
            resource_kind: "tenant",
            reason: "only a tenant's principals use this service".into(),
        }))
    })?;
    authorize(p, action, &Resource::Tenant { tenant: &tenant }).map_err(|d| permission_denied(&d))?;
    Ok(tenant)
}

#[tonic::async_trait]
impl IngestService for IngestGrpc {
    type UploadInstancesStream =
        std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<pb::UploadInstancesResponse, Status>> + Send>>;

    async fn upload_instances(
        &self,
        request: Request<Streaming<pb::UploadInstancesRequest>>,
    ) -> Result<Response<Self::UploadInstancesStream>, Status> {
        use pb::upload_instances_request::Part;
        let p = principal(&request)?.clone();
        let tenant = tenant_for(&p, Action::SendStudy)?;
        let sender = crate::stow::sender_of(p);
        let mut incoming = request.into_inner();
        let (ingest, answered, limits) = (self.ingest.clone(), self.answered.clone(), self.limits);
        let in_flight = self.in_flight.clone();
        // Instances are stored while the next ones arrive; answers go out in
        // the order the instances came, each as soon as it and those before
        // it are done.
        let (order, mut ordered) = mpsc::channel::<Answer>(256);
        let (out, answers) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(task) = ordered.recv().await {
                let answer = task.await.unwrap_or_else(|e| Err(Status::internal(format!("storing task: {e}"))));
                let last = answer.is_err();
                if out.send(answer).await.is_err() || last {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut current: Option<(pb::InstanceHeader, Vec<u8>)> = None;
            let mut count = 0usize;
            let fail = |status: Status| tokio::spawn(async move { Err(status) });
            loop {
                let part = match incoming.message().await {
                    Ok(Some(message)) => message.part,
                    Ok(None) => {
                        if let Some((h, bytes)) = current.take() {
                            let message = format!(
                                "the stream ended inside instance {count} ({:?}) after {} of {} bytes",
                                h.label,
                                bytes.len(),
                                h.size_bytes
                            );
                            let _ = order.send(fail(stream_error("chunk", message))).await;
                        }
                        return;
                    }
                    Err(_) => return, // the client went away
                };
                match part {
                    Some(Part::Header(h)) => {
                        count += 1;
                        if let Some((previous, bytes)) = &current {
                            let message = format!(
                                "instance {count} began before instance {} ({:?}) had its {} bytes (it had {})",
                                count - 1,
                                previous.label,
                                previous.size_bytes,
                                bytes.len()
                            );
                            let _ = order.send(fail(stream_error("header", message))).await;
                            return;
                        }
                        if h.size_bytes == 0 || h.size_bytes > limits.max_instance_bytes {
                            let message = format!(
                                "instance {count} ({:?}): size_bytes {} is not between 1 and this region's limit of {}",
                                h.label, h.size_bytes, limits.max_instance_bytes
                            );
                            let _ = order.send(fail(stream_error("header.size_bytes", message))).await;
                            return;
                        }
                        let capacity = usize::try_from(h.size_bytes).unwrap_or(0).min(64 << 20);
                        current = Some((h, Vec::with_capacity(capacity)));
                    }
                    Some(Part::Chunk(chunk)) => {
                        let Some((h, bytes)) = current.as_mut() else {
                            let message = format!("bytes after instance {count} without an InstanceHeader before them");
                            let _ = order.send(fail(stream_error("chunk", message))).await;
                            return;
                        };
                        if chunk.len() > MAX_CHUNK || (bytes.len() + chunk.len()) as u64 > h.size_bytes {
                            let message = format!(
                                "instance {count} ({:?}): a chunk of {} bytes is over 4 MiB or past its size_bytes {}",
                                h.label,
                                chunk.len(),
                                h.size_bytes
                            );
                            let _ = order.send(fail(stream_error("chunk", message))).await;
                            return;
                        }
                        bytes.extend_from_slice(&chunk);
                        if bytes.len() as u64 == h.size_bytes {
                            let Some((header, file)) = current.take() else { continue };
                            // Keys are claimed in stream order, before the store.
                            let claim = (!header.idempotency_key.is_empty()).then(|| {
                                let sha = meridian_storage::phi::sha256_hex(&file);
                                answered.claim(&tenant, &header.idempotency_key, &sha)
                            });
                            let cost =
                                u32::try_from(file.len().div_ceil(1024).max(1)).unwrap_or(u32::MAX).min(IN_FLIGHT_KIB);
                            let Ok(permit) = in_flight.clone().acquire_many_owned(cost).await else { return };
                            let (ingest, answered, sender) = (ingest.clone(), answered.clone(), sender.clone());
                            let task = tokio::spawn(async move {
                                let _permit = permit;
                                Ok(upload_one(ingest, answered, sender, header, file, claim).await)
                            });
                            if order.send(task).await.is_err() {
                                return;
                            }
                        }
                    }
                    None => {
                        let message = format!("message after instance {count} carries neither a header nor a chunk");
                        let _ = order.send(fail(stream_error("part", message))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(answers))))
    }

    async fn list_rejections(
        &self,
        request: Request<pb::ListRejectionsRequest>,
    ) -> Result<Response<pb::ListRejectionsResponse>, Status> {
        let p = principal(&request)?.clone();
        let tenant = tenant_for(&p, Action::ViewRejections)?;
        let credentials = request.metadata().get(AUTHORIZATION).cloned();
        let asked_by_replica = request.metadata().contains_key(REPLICA_ONLY);
        let page_size = request.get_ref().page_size;
        let size = match page_size {
            n if n <= 0 => 100,
            n => (n as usize).min(1_000),
        };
        let mut rejections: Vec<pb::Rejection> = self
            .ingest
            .read(|s| {
                s.rejections
                    .get(&tenant)
                    .map(|kept| {
                        kept.iter()
                            .rev()
                            .take(size)
                            .map(|r| pb::Rejection {
                                study_id: r.study_id.clone(),
                                facility: r.facility.clone(),
                                dimse_status: r.dimse_status,
                                reason_code: r.reason_code.clone(),
                                reason: r.reason.clone(),
                                rejected_at: Some(r.at.to_timestamp()),
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .await;
        // Each replica folds the rejections of its own partitions: the
        // tenant's list is all of theirs, newest first.
        if let Some(replicas) = self.ingest.replicas().filter(|_| !asked_by_replica) {
            for ordinal in replicas.others() {
                let mut ask = Request::new(pb::ListRejectionsRequest { page_size });
                if let Some(c) = &credentials {
                    ask.metadata_mut().insert(AUTHORIZATION, c.clone());
                }
                ask.metadata_mut().insert(REPLICA_ONLY, tonic::metadata::MetadataValue::from_static("1"));
                let answer = replicas.tenant_client(ordinal)?.list_rejections(ask).await.map_err(|e| {
                    Status::unavailable(format!(
                        "ingest replica {ordinal} did not list its rejections: {}",
                        e.message()
                    ))
                })?;
                rejections.extend(answer.into_inner().rejections);
            }
            rejections.sort_by_key(|r| std::cmp::Reverse(r.rejected_at.map(|t| (t.seconds, t.nanos))));
            rejections.truncate(size);
        }
        Ok(Response::new(pb::ListRejectionsResponse { rejections }))
    }

    async fn complete_study(
        &self,
        request: Request<pb::CompleteStudyRequest>,
    ) -> Result<Response<pb::CompleteStudyResponse>, Status> {
        let p = principal(&request)?.clone();
        let tenant = tenant_for(&p, Action::SendStudy)?;
        let credentials = request.metadata().get(AUTHORIZATION).cloned();
        let study = match request.into_inner().study {
            Some(Study::StudyInstanceUid(uid)) if crate::dataset::valid_uid(&uid) => self
                .ingest
                .study_id_of(&tenant, &uid)
                .ok_or_else(|| Status::failed_precondition(format!("tenant {tenant}'s studies are not held here")))?,
            Some(Study::StudyInstanceUid(_)) => {
                return Err(bad_request("study_instance_uid", "is not a valid UID"));
            }
            Some(Study::StudyId(id)) => {
                Uuid::parse_str(&id).map_err(|e| bad_request("study_id", format!("{id:?} is not a study id: {e}")))?
            }
            None => return Err(bad_request("study", "name the study by study_instance_uid or study_id")),
        };
        // The study's owner completes it, asked with the caller's own
        // credentials (it checks them again).
        if let Some(replicas) = self.ingest.replicas().filter(|r| !r.owns(study)) {
            let owner = replicas.owner_of(study);
            let mut ask = Request::new(pb::CompleteStudyRequest { study: Some(Study::StudyId(study.to_string())) });
            if let Some(c) = credentials {
                ask.metadata_mut().insert(AUTHORIZATION, c);
            }
            return replicas.tenant_client(owner)?.complete_study(ask).await;
        }
        let done =
            self.ingest.complete_now(&tenant, study, now()).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let Some((completed, completed_now)) = done else {
            let mut details = ErrorDetails::new();
            details.set_resource_info("study", study.to_string(), "", "no such study of the tenant in this region");
            return Err(Status::with_error_details(
                Code::NotFound,
                format!("no study {study} of {tenant} here"),
                details,
            ));
        };
        Ok(Response::new(pb::CompleteStudyResponse {
            study_id: completed.study_id,
            series_count: completed.series_count,
            instance_count: completed.instance_count,
            completed_now,
        }))
    }
}

/// `meridian.ingest.v1.IngestReplicaService`: arrivals handed over by the
/// region's other ingest replicas, authenticated by the region's service
/// key (see [`crate::replicas`]).
pub struct ReplicaGrpc {
    ingest: Arc<Ingest>,
}

impl ReplicaGrpc {
    pub fn new(ingest: Arc<Ingest>) -> ReplicaGrpc {
        ReplicaGrpc { ingest }
    }
}

#[tonic::async_trait]
impl IngestReplicaService for ReplicaGrpc {
    async fn record_arrival(
        &self,
        request: Request<pb::RecordArrivalRequest>,
    ) -> Result<Response<pb::RecordArrivalResponse>, Status> {
        let Some(replicas) = self.ingest.replicas() else {
            return Err(Status::failed_precondition(
                "this ingest is the region's only replica; nothing is handed to it",
            ));
        };
        let arrival = replicas.open(request.get_ref(), now().0).map_err(|reason| {
            tracing::warn!(%reason, "a handed-over arrival was refused");
            Status::unauthenticated(reason)
        })?;
        match self.ingest.record_handed_over(arrival).await {
            Ok(status) => Ok(Response::new(pb::RecordArrivalResponse { dimse_status: u32::from(status) })),
            Err(e @ crate::app::Error::Arrival(_)) => Err(Status::failed_precondition(e.to_string())),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}
