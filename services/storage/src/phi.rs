//! The PHI write path: the only way patient data enters a region's object
//! store. It checks residency on every write: a tenant's PHI lives only in
//! the tenant's home regions. A refused write appends PhiWriteRefused
//! (operational: tenant, region, contracts, the opaque study id) and
//! returns an error that names them; nothing is stored.
//!
//! Objects are keyed by opaque ids and the SHA-256 of their bytes (the
//! instance's version): `phi/<tenant>/<study>/<series>/<instance>.<sha256>.dcm`
//! (a series' instances share a directory: no directory, and no directory
//! sync, per instance).
//! The same bytes again store nothing new; different bytes for the same
//! instance are a new version beside the old one.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_config::Platform;
use meridian_events::{DataClass, EventId, EventMeta, InstanceId, SeriesId, StudyId, UnixMicros};
use meridian_log::{EventLog, Outgoing, TopicName};

use crate::blobs::{BlobError, Blobs};

/// One object of patient data to store.
pub struct PhiObject {
    pub tenant: String,
    pub study: StudyId,
    pub series: SeriesId,
    pub instance: InstanceId,
    /// The Part-10 bytes.
    pub bytes: Vec<u8>,
    /// The SHA-256 of the version of this instance the region already
    /// holds, if any: a re-send, most often of the same bytes, which are
    /// then recognised by hashing first, before anything is written.
    pub held: Option<String>,
}

/// One de-identified object (PS3.15 Annex E) for a destination region.
pub struct DeidentifiedObject {
    pub tenant: String,
    /// The contract that allows the destination.
    pub contract: String,
    pub destination: String,
    /// The derivative's opaque ids (of its replacement UIDs).
    pub study: StudyId,
    pub series: SeriesId,
    pub instance: InstanceId,
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    /// SHA-256 of the bytes, lower-case hex: the version.
    pub sha256: String,
    pub size: u64,
    /// False when these exact bytes were already stored.
    pub created: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PhiWriteError {
    #[error(
        "residency: PHI of tenant {tenant} may not be written in region {region} \
         (its home regions are {home_regions:?}; contracts {contracts:?})"
    )]
    Refused { tenant: String, region: String, home_regions: Vec<String>, contracts: Vec<String> },
    #[error("residency: tenant {tenant} is not configured; refusing to write its data in region {region}")]
    UnknownTenant { tenant: String, region: String },
    #[error(
        "residency: a de-identified derivative of tenant {tenant} may not be written in region {region} \
         under contract {contract} ({reason})"
    )]
    DerivativeRefused { tenant: String, region: String, contract: String, reason: String },
    #[error("no object store of region {region} is reachable from region {from}")]
    NoStore { region: String, from: String },
    #[error("PHI object store: {0}")]
    Blob(#[from] BlobError),
    #[error("PHI write path log: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("PHI write path event: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
}

pub use meridian_objects::blobs::sha256_hex;

pub struct PhiWriter {
    region: String,
    platform: Arc<Platform>,
    blobs: Arc<dyn Blobs>,
    log: Arc<dyn EventLog>,
    /// Other regions' object stores, for de-identified derivatives.
    destinations: BTreeMap<String, Arc<dyn Blobs>>,
}

impl PhiWriter {
    pub fn new(region: &str, platform: Arc<Platform>, blobs: Arc<dyn Blobs>, log: Arc<dyn EventLog>) -> PhiWriter {
        PhiWriter { region: region.to_owned(), platform, blobs, log, destinations: BTreeMap::new() }
    }

    /// The object stores of other regions derivatives may be written to.
    pub fn with_destinations(mut self, destinations: BTreeMap<String, Arc<dyn Blobs>>) -> PhiWriter {
        self.destinations = destinations;
        self
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn blobs(&self) -> &Arc<dyn Blobs> {
        &self.blobs
    }

    /// Whether `tenant`'s PHI may live in this region.
    pub fn check_residency(&self, tenant: &str) -> Result<(), PhiWriteError> {
        let Some(t) = self.platform.tenants.get(tenant) else {
            return Err(PhiWriteError::UnknownTenant { tenant: tenant.to_owned(), region: self.region.clone() });
        };
        if t.home_regions.contains(&self.region) {
            return Ok(());
        }
        Err(PhiWriteError::Refused {
            tenant: tenant.to_owned(),
            region: self.region.clone(),
            home_regions: t.home_regions.clone(),
            contracts: self
                .platform
                .contracts
                .values()
                .filter(|c| c.tenant == tenant)
                .map(|c| c.name.clone())
                .collect(),
        })
    }

    /// Stores `object` durably, or refuses it for residency (recording the
    /// refusal). Returns only once the bytes are on durable storage.
    pub async fn put(&self, object: PhiObject, now: UnixMicros) -> Result<Stored, PhiWriteError> {
        if let Err(refused) = self.check_residency(&object.tenant) {
            self.record_refusal(&object.tenant, &self.region, Some(object.study.as_uuid()), &refused, now).await?;
            tracing::warn!(region = %self.region, tenant = %object.tenant, study = %object.study, "PHI write refused");
            return Err(refused);
        }
        let folder = format!("phi/{}/{}/{}", object.tenant, object.study.as_uuid(), object.series.as_uuid());
        store(&self.blobs, &folder, object.instance, object.bytes, object.held.is_some()).await
    }

    /// Whether `contract` lets `tenant`'s de-identified derivatives live
    /// in `region`: it is the tenant's, gives readers de-identified images,
    /// and names the region among its destinations. Pseudonymised data is
    /// still personal data, so nothing else may hold it.
    pub fn check_derivative(&self, tenant: &str, contract: &str, region: &str) -> Result<(), PhiWriteError> {
        match self.platform.derivative_refusal(tenant, contract, region) {
            None => Ok(()),
            Some(reason) => Err(PhiWriteError::DerivativeRefused {
                tenant: tenant.to_owned(),
                region: region.to_owned(),
                contract: contract.to_owned(),
                reason,
            }),
        }
    }

    /// Stores a de-identified derivative's object in its destination
    /// region's store, or refuses it (recording PhiWriteRefused here, in
    /// the home region, which decided). Keys:
    /// `deid/<tenant>/<contract>/<study>/<series>/<instance>.<sha256>.dcm`.
    pub async fn put_deidentified(&self, object: DeidentifiedObject, now: UnixMicros) -> Result<Stored, PhiWriteError> {
        if let Err(refused) = self.check_derivative(&object.tenant, &object.contract, &object.destination) {
            self.record_refusal(&object.tenant, &object.destination, Some(object.study.as_uuid()), &refused, now)
                .await?;
            tracing::warn!(
                region = %self.region, tenant = %object.tenant, destination = %object.destination,
                study = %object.study, "derivative write refused"
            );
            return Err(refused);
        }
        let blobs = if object.destination == self.region {
            &self.blobs
        } else {
            self.destinations.get(&object.destination).ok_or_else(|| PhiWriteError::NoStore {
                region: object.destination.clone(),
                from: self.region.clone(),
            })?
        };
        let folder = format!(
            "deid/{}/{}/{}/{}",
            object.tenant,
            object.contract,
            object.study.as_uuid(),
            object.series.as_uuid()
        );
        store(blobs, &folder, object.instance, object.bytes, false).await
    }

    /// Whether `tenant`'s PHI may be written here, asked before anything
    /// else is known of the data (a region that may not hold the tenant's
    /// PHI does not hold its id secret either, so no opaque study id can be
    /// named). A refusal is recorded (PhiWriteRefused) and returned.
    pub async fn admit(&self, tenant: &str, now: UnixMicros) -> Result<(), PhiWriteError> {
        if let Err(refused) = self.check_residency(tenant) {
            self.record_refusal(tenant, &self.region, None, &refused, now).await?;
            tracing::warn!(region = %self.region, %tenant, "PHI write refused");
            return Err(refused);
        }
        Ok(())
    }

    async fn record_refusal(
        &self,
        tenant: &str,
        region: &str,
        study: Option<uuid::Uuid>,
        refused: &PhiWriteError,
        now: UnixMicros,
    ) -> Result<(), PhiWriteError> {
        let contracts = match refused {
            PhiWriteError::Refused { contracts, .. } => contracts.join(","),
            PhiWriteError::DerivativeRefused { contract, .. } => contract.clone(),
            _ => String::new(),
        };
        let payload = meridian_proto::events::v1::PhiWriteRefused {
            tenant: tenant.to_owned(),
            region: region.to_owned(),
            contract: contracts,
            study_id: study.map(|s| s.to_string()).unwrap_or_default(),
            reason: refused.to_string(),
        };
        // A refusal is not a step in any history: each is its own
        // aggregate (its event id), at version 1; the study is in the payload.
        let event_id = EventId::new_at(now);
        let aggregate = Aggregate { kind: "storage.refusal", id: event_id.as_uuid(), version: 1 };
        let (topic, meta) = storage_event(&self.region, tenant, aggregate, event_id, now, None)?;
        let envelope = meridian_events::Envelope::plain(meta, &payload)?;
        self.log.append(vec![Outgoing::new(topic, &envelope)?]).await?;
        Ok(())
    }
}

/// The aggregate a storage event belongs to, and its version there.
pub(crate) struct Aggregate {
    pub kind: &'static str,
    pub id: uuid::Uuid,
    pub version: u64,
}

/// Where storage's events go in `region` (its operational storage topic)
/// and their meta.
pub(crate) fn storage_event(
    region: &str,
    tenant: &str,
    aggregate: Aggregate,
    event_id: EventId,
    at: UnixMicros,
    cause: Option<EventId>,
) -> Result<(TopicName, EventMeta), meridian_log::Error> {
    let topic = TopicName::new(region, DataClass::Operational, "storage")
        .map_err(|e| meridian_log::Error::UnknownTopic { topic: e.name })?;
    let meta = EventMeta {
        event_id,
        aggregate_type: aggregate.kind.into(),
        aggregate_id: aggregate.id,
        aggregate_version: aggregate.version,
        tenant: tenant.to_owned(),
        home_region: region.to_owned(),
        occurred_at: at,
        causation_id: cause,
        correlation_id: None,
        // The span it was appended in: a DICOMweb request's, a consumer
        // step's; none when no trace is recorded.
        traceparent: meridian_telemetry::traceparent(),
    };
    Ok((topic, meta))
}

/// Puts `bytes` under `<folder>/<instance>.<sha256>.dcm`, once: the
/// version is the content, computed over every byte stored. A new
/// instance is hashed by the store while it writes; one with a version
/// `held` is hashed first, so that the same bytes again write nothing.
async fn store(
    blobs: &Arc<dyn Blobs>,
    folder: &str,
    instance: InstanceId,
    bytes: Vec<u8>,
    held: bool,
) -> Result<Stored, PhiWriteError> {
    let size = bytes.len() as u64;
    let prefix = format!("{folder}/{}", instance.as_uuid());
    if held {
        let sha256 = sha256_hex(&bytes);
        let key = format!("{prefix}.{sha256}.dcm");
        let created = blobs.put_once(&key, bytes).await?;
        return Ok(Stored { key, sha256, size, created });
    }
    let put = blobs.put_content(&prefix, ".dcm", bytes).await?;
    Ok(Stored { key: put.key, sha256: put.sha256, size, created: put.created })
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use meridian_events::TenantSecret;
    use meridian_events::payload::Payload;
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
    use meridian_log::{Position, TopicSpec};

    use super::*;
    use crate::blobs::LocalBlobs;

    fn platform() -> Arc<Platform> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev");
        Arc::new(Platform::load(&dir).unwrap())
    }

    fn object(bytes: &[u8]) -> PhiObject {
        let secret = TenantSecret::new(vec![7u8; 32]).unwrap();
        PhiObject {
            tenant: "acme".into(),
            study: StudyId::derive(&secret, "1.2.3"),
            series: SeriesId::derive(&secret, "1.2.3.4"),
            instance: InstanceId::derive(&secret, "1.2.3.4.5"),
            bytes: bytes.to_vec(),
            held: None,
        }
    }

    async fn writer(region: &str, dir: &Path) -> (PhiWriter, Arc<EmbeddedLog>) {
        let log = Arc::new(EmbeddedLog::open(&dir.join("log.redb"), EmbeddedOptions::default()).unwrap());
        let topic = TopicName::new(region, DataClass::Operational, "storage").unwrap();
        log.ensure_topic(&TopicSpec::new(topic, 2)).await.unwrap();
        let blobs: Arc<dyn Blobs> = Arc::new(LocalBlobs::new(dir.join("objects")));
        (PhiWriter::new(region, platform(), blobs, log.clone()), log)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn phi_is_stored_by_opaque_id_and_version_in_a_home_region() {
        let dir = tempfile::TempDir::new().unwrap();
        let (phi, _) = writer("us-east", dir.path()).await;
        let now = UnixMicros(1_795_000_000_000_000);
        let first = phi.put(object(b"DICM one"), now).await.unwrap();
        assert!(first.created);
        assert!(first.key.starts_with("phi/acme/") && first.key.ends_with(&format!(".{}.dcm", first.sha256)));
        assert!(!first.key.contains("1.2.3"), "no DICOM UID in the key");
        assert!(!phi.put(object(b"DICM one"), now).await.unwrap().created, "the same bytes store nothing new");
        let second = phi.put(object(b"DICM two"), now).await.unwrap();
        assert_ne!(second.key, first.key, "different bytes are a new version beside the first");
        assert_eq!(phi.blobs().list("phi/acme/").await.unwrap().len(), 2);
        assert_eq!(phi.blobs().get(&first.key).await.unwrap().unwrap(), b"DICM one");
    }

    /// A store that says which of its puts the write path asked for.
    struct Watched {
        inner: LocalBlobs,
        puts: std::sync::Mutex<Vec<&'static str>>,
    }

    #[async_trait::async_trait]
    impl Blobs for Watched {
        async fn put_once(&self, key: &str, bytes: Vec<u8>) -> Result<bool, BlobError> {
            self.puts.lock().unwrap().push("put_once");
            self.inner.put_once(key, bytes).await
        }
        async fn put_content(
            &self,
            prefix: &str,
            suffix: &str,
            bytes: Vec<u8>,
        ) -> Result<crate::blobs::ContentPut, BlobError> {
            self.puts.lock().unwrap().push("put_content");
            self.inner.put_content(prefix, suffix, bytes).await
        }
        async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BlobError> {
            self.inner.get(key).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, BlobError> {
            self.inner.list(prefix).await
        }
        async fn list_page(&self, prefix: &str, after: Option<&str>, limit: usize) -> Result<Vec<String>, BlobError> {
            self.inner.list_page(prefix, after, limit).await
        }
        async fn delete(&self, key: &str) -> Result<(), BlobError> {
            self.inner.delete(key).await
        }
        async fn modified(&self, key: &str) -> Result<Option<UnixMicros>, BlobError> {
            self.inner.modified(key).await
        }
    }

    /// A new instance is hashed by the store while it writes; one whose
    /// version the region holds (a re-send) is hashed first, so that the
    /// same bytes again are recognised before anything is written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_new_instance_is_hashed_while_written_and_a_held_one_before() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        let watched =
            Arc::new(Watched { inner: LocalBlobs::new(dir.path().join("objects")), puts: Default::default() });
        let phi = PhiWriter::new("us-east", platform(), watched.clone(), log);
        let now = UnixMicros(1_795_000_000_000_000);
        let first = phi.put(object(b"DICM one"), now).await.unwrap();
        let again = phi.put(PhiObject { held: Some(first.sha256.clone()), ..object(b"DICM one") }, now).await.unwrap();
        assert_eq!((again.key.as_str(), again.created), (first.key.as_str(), false), "the same bytes again");
        let other = phi.put(PhiObject { held: Some(first.sha256.clone()), ..object(b"DICM two") }, now).await.unwrap();
        assert!(other.created && other.sha256 == sha256_hex(b"DICM two"), "new bytes of a held instance are stored");
        assert_eq!(*watched.puts.lock().unwrap(), ["put_content", "put_once", "put_once"]);
        assert_eq!(phi.blobs().list("phi/acme/").await.unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_outside_the_tenants_home_regions_is_refused_recorded_and_stores_nothing() {
        let dir = tempfile::TempDir::new().unwrap();
        let (phi, log) = writer("eu-west", dir.path()).await;
        let now = UnixMicros(1_795_000_000_000_000);
        let err = phi.put(object(b"DICM one"), now).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("tenant acme") && text.contains("region eu-west") && text.contains("acme-atlantic"),
            "{text}"
        );
        assert!(phi.blobs().list("").await.unwrap().is_empty());
        let unknown = PhiObject { tenant: "nobody".into(), ..object(b"x") };
        assert!(matches!(phi.put(unknown, now).await, Err(PhiWriteError::UnknownTenant { .. })));

        let topic = TopicName::new("eu-west", DataClass::Operational, "storage").unwrap();
        let mut reader = log.reader((0..2).map(|p| Position::start(topic.clone(), p)).collect()).await.unwrap();
        let records = reader.next_batch(10, Duration::from_millis(200)).await.unwrap();
        assert_eq!(records.len(), 2, "one PhiWriteRefused per refused write");
        let envelope = records[0].envelope().unwrap();
        let Ok(Payload::PhiWriteRefused(p)) = envelope.open_plain() else { panic!("{envelope:?}") };
        assert_eq!((p.region.as_str(), p.study_id), ("eu-west", object(b"").study.as_uuid().to_string()));
        // Each refusal is its own aggregate: two refusals of one study never
        // claim one version.
        let meta = &envelope.meta;
        assert_eq!((meta.aggregate_type.as_str(), meta.aggregate_version), ("storage.refusal", 1));
        assert_eq!(meta.aggregate_id, meta.event_id.as_uuid());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_derivative_goes_only_where_its_contract_allows_and_a_refusal_is_recorded_at_home() {
        let dir = tempfile::TempDir::new().unwrap();
        let (home, log) = writer("eu-west", dir.path()).await;
        let in_south: Arc<dyn Blobs> = Arc::new(LocalBlobs::new(dir.path().join("in-south")));
        let phi = home.with_destinations(BTreeMap::from([("in-south".to_owned(), in_south.clone())]));
        let now = UnixMicros(1_795_000_000_000_000);
        let derivative = |tenant: &str, contract: &str, destination: &str| {
            let o = object(b"DICM de-identified");
            DeidentifiedObject {
                tenant: tenant.into(),
                contract: contract.into(),
                destination: destination.into(),
                study: o.study,
                series: o.series,
                instance: o.instance,
                bytes: o.bytes,
            }
        };
        let stored = phi.put_deidentified(derivative("northwind", "northwind-lotus", "in-south"), now).await.unwrap();
        assert!(stored.key.starts_with("deid/northwind/northwind-lotus/"), "{}", stored.key);
        assert_eq!(in_south.get(&stored.key).await.unwrap().unwrap(), b"DICM de-identified");
        assert!(phi.blobs().list("").await.unwrap().is_empty(), "nothing in the home store");

        // Not a destination; another tenant's contract; a contract that
        // streams from home: each refused with its reason, nothing stored.
        for (tenant, contract, destination, reason) in [
            ("northwind", "northwind-lotus", "us-east", "sends derivatives only to [\"in-south\"]"),
            ("acme", "northwind-lotus", "in-south", "is tenant northwind's, not acme's"),
            ("acme", "acme-atlantic", "in-south", "streams images from home"),
        ] {
            let err = phi.put_deidentified(derivative(tenant, contract, destination), now).await.unwrap_err();
            assert!(
                matches!(err, PhiWriteError::DerivativeRefused { .. }) && err.to_string().contains(reason),
                "{err}"
            );
        }
        assert_eq!(in_south.list("").await.unwrap().len(), 1);
        let topic = TopicName::new("eu-west", DataClass::Operational, "storage").unwrap();
        let mut reader = log.reader((0..2).map(|p| Position::start(topic.clone(), p)).collect()).await.unwrap();
        let records = reader.next_batch(10, Duration::from_millis(200)).await.unwrap();
        assert_eq!(records.len(), 3, "one PhiWriteRefused per refused derivative");
        let regions: Vec<String> = records
            .iter()
            .map(|r| match r.envelope().unwrap().open_plain() {
                Ok(Payload::PhiWriteRefused(p)) => p.region,
                other => panic!("{other:?}"),
            })
            .collect();
        assert!(regions.contains(&"us-east".to_owned()) && regions.contains(&"in-south".to_owned()));
    }
}
