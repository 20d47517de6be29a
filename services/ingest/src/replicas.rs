//! Ingest as N replicas of one region. Every replica receives and stores
//! objects (the stateless edge scales out); a study's events have one
//! writer, the replica that owns the partition its id falls on (static
//! ownership by ordinal: partition p to replica p mod N). A replica that
//! stores an instance of a study another owns hands the arrival to the
//! owner (`meridian.ingest.v1.IngestReplicaService`) and answers its sender
//! with the owner's status, so an acknowledgement still means the object is
//! durable and its events are in the log. A tenant's CompleteStudy goes to
//! the study's owner with the caller's own credentials; ListRejections asks
//! every replica.

use std::time::Duration;

use meridian_log::partitioner::{Ownership, partition_for};
use meridian_objects::keys::ServiceKey;
use meridian_proto::ingest::v1 as pb;
use meridian_proto::ingest::v1::ingest_replica_service_client::IngestReplicaServiceClient;
use meridian_proto::ingest::v1::ingest_service_client::IngestServiceClient;
use prost::Message;
use tonic::transport::{Channel, Endpoint};
use uuid::Uuid;

/// What a handed-over arrival's MAC is for: no other call's MAC verifies
/// as one.
pub const ARRIVAL: &str = "meridian.ingest.v1.RecordArrival";

/// How far a handed-over arrival's send time may be from the owner's
/// clock: replicas of a region share NTP; a copied request replays only
/// this long (and would record the same bytes again: nothing new).
pub const WINDOW_MICROS: i64 = 60_000_000;

/// How long a replica waits for the owner's answer: a DIMSE peer is
/// answered "send again" after it, and the object waits for the sweep.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(
        "--replicas {replicas} needs one gRPC address per replica in ordinal order (--peers), \
         and {given} were given"
    )]
    Peers { replicas: u32, given: usize },
    #[error("--peers: {url:?} is not a gRPC address: {reason}")]
    Address { url: String, reason: String },
    #[error(
        "ingest replicas authenticate each other with the region's service key, which needs [keys] key_encryption_key"
    )]
    NoServiceKey,
    #[error(
        "ingest replicas need the same partition count on the region's ingest topics \
         (phi: {phi}, ops: {ops}): a study's events would have two owners"
    )]
    Partitions { phi: u32, ops: u32 },
}

/// This replica, its peers, and how a study finds its owner.
pub struct Replicas {
    ownership: Ownership,
    /// Of the region's ingest topics (equal for both).
    partitions: u32,
    /// Every replica's gRPC channel by ordinal (this one's too, unused).
    peers: Vec<Channel>,
    key: ServiceKey,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas").field("ownership", &self.ownership).field("partitions", &self.partitions).finish()
    }
}

impl Replicas {
    /// `peers`: every replica's gRPC URL (`http://ingest-0.ingest:50051`,
    /// …) in ordinal order. Channels connect on first use, so replicas can
    /// start in any order.
    pub fn new(
        ownership: Ownership,
        partitions: u32,
        peers: &[String],
        key: Option<ServiceKey>,
    ) -> Result<Replicas, ReplicaError> {
        if peers.len() != ownership.replicas as usize {
            return Err(ReplicaError::Peers { replicas: ownership.replicas, given: peers.len() });
        }
        let key = key.ok_or(ReplicaError::NoServiceKey)?;
        let peers = peers
            .iter()
            .map(|url| {
                let endpoint = Endpoint::from_shared(url.clone())
                    .map_err(|e| ReplicaError::Address { url: url.clone(), reason: e.to_string() })?;
                Ok(endpoint.connect_timeout(Duration::from_secs(3)).timeout(HANDOVER_TIMEOUT).connect_lazy())
            })
            .collect::<Result<_, ReplicaError>>()?;
        Ok(Replicas { ownership, partitions: partitions.max(1), peers, key })
    }

    pub fn ownership(&self) -> Ownership {
        self.ownership
    }

    /// Of the region's ingest topics, as ownership counts them.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The ordinal of the replica that writes `study`'s events: the owner
    /// of the partition its key (the study id, as every ingest record of
    /// the study is keyed) falls on.
    pub fn owner_of(&self, study: Uuid) -> u32 {
        let partition = partition_for(study.hyphenated().to_string().as_bytes(), self.partitions);
        partition % self.ownership.replicas
    }

    pub fn owns(&self, study: Uuid) -> bool {
        self.owner_of(study) == self.ownership.ordinal
    }

    /// Hands `arrival` to replica `owner`; its DIMSE status.
    pub async fn hand_over(&self, owner: u32, arrival: pb::Arrival, now: i64) -> Result<u16, tonic::Status> {
        let body = arrival.encode_to_vec();
        let mac = self.key.sign(ARRIVAL, now, &body);
        let request = pb::RecordArrivalRequest { arrival: body, sent_at_micros: now, mac };
        let mut client = IngestReplicaServiceClient::new(self.channel(owner)?);
        let answer = client.record_arrival(request).await?.into_inner();
        Ok(u16::try_from(answer.dimse_status).unwrap_or(u16::MAX))
    }

    /// Opens a handed-over request: its arrival when the MAC verifies
    /// within the window at `now`.
    pub fn open(&self, request: &pb::RecordArrivalRequest, now: i64) -> Result<pb::Arrival, String> {
        self.key.verify(ARRIVAL, request.sent_at_micros, &request.arrival, &request.mac, now, WINDOW_MICROS)?;
        pb::Arrival::decode(request.arrival.as_slice()).map_err(|e| format!("the arrival does not decode: {e}"))
    }

    /// A tenant-facing client of replica `ordinal`, for calls made with the
    /// caller's own credentials.
    pub fn tenant_client(&self, ordinal: u32) -> Result<IngestServiceClient<Channel>, tonic::Status> {
        Ok(IngestServiceClient::new(self.channel(ordinal)?))
    }

    /// Every other replica's ordinal.
    pub fn others(&self) -> impl Iterator<Item = u32> + '_ {
        (0..self.ownership.replicas).filter(|o| *o != self.ownership.ordinal)
    }

    fn channel(&self, ordinal: u32) -> Result<Channel, tonic::Status> {
        self.peers
            .get(ordinal as usize)
            .cloned()
            .ok_or_else(|| tonic::Status::internal(format!("no address for ingest replica {ordinal}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replicas(ordinal: u32, n: u32) -> Replicas {
        let peers: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{}", 50_000 + i)).collect();
        Replicas::new(Ownership::new(ordinal, n).unwrap(), 8, &peers, Some(ServiceKey::from_bytes([3; 32]))).unwrap()
    }

    #[tokio::test]
    async fn each_study_has_exactly_one_owner_and_its_records_are_on_an_owned_partition() {
        let (a, b) = (replicas(0, 2), replicas(1, 2));
        let mut owned = [0, 0];
        for i in 0..200u128 {
            let study = Uuid::from_u128(i * 7_919);
            assert_ne!(a.owns(study), b.owns(study), "study {study}: one owner");
            owned[a.owner_of(study) as usize] += 1;
            let partition = partition_for(study.hyphenated().to_string().as_bytes(), 8);
            let owner = if a.owns(study) { &a } else { &b };
            assert!(owner.ownership().owns(partition), "the owner folds the partition the study's records are on");
        }
        assert!(owned[0] > 50 && owned[1] > 50, "both replicas own studies: {owned:?}");
    }

    #[tokio::test]
    async fn a_handed_over_arrival_opens_only_as_sent() {
        let (a, b) = (replicas(0, 2), replicas(1, 2));
        let arrival = pb::Arrival { tenant: "northwind".into(), arrived_at_micros: 5, ..Default::default() };
        let body = arrival.encode_to_vec();
        let request =
            pb::RecordArrivalRequest { mac: a.key.sign(ARRIVAL, 1_000, &body), arrival: body, sent_at_micros: 1_000 };
        assert_eq!(b.open(&request, 2_000).unwrap(), arrival);
        let mut forged = request.clone();
        forged.arrival = pb::Arrival { tenant: "contoso".into(), ..arrival }.encode_to_vec();
        assert!(b.open(&forged, 2_000).unwrap_err().contains("MAC"));
        assert!(b.open(&request, 1_000 + WINDOW_MICROS + 1).unwrap_err().contains("window"));
    }

    #[test]
    fn peers_must_match_the_replicas_and_a_key_is_required() {
        let ownership = Ownership::new(0, 2).unwrap();
        let one = ["http://127.0.0.1:1".to_owned()];
        let err = Replicas::new(ownership, 8, &one, Some(ServiceKey::from_bytes([0; 32]))).unwrap_err();
        assert!(err.to_string().contains("1 were given"), "{err}");
        let two = ["http://127.0.0.1:1".to_owned(), "http://127.0.0.1:2".to_owned()];
        assert!(matches!(Replicas::new(ownership, 8, &two, None), Err(ReplicaError::NoServiceKey)));
    }
}
