//! The data keys of a region whose services run as separate processes.
//!
//! The embedded log keeps data keys in a table of its own file, which one
//! process holds. On Kafka every service process of a region must open the
//! PHI events the others sealed, so the keys live in the region's object
//! store (the bucket that already holds the region's PHI, under the same
//! residency), each wrapped by the region's key-encryption key (KEK):
//!
//! - `keys/v1/key/{key id}`: the study id and the data key, sealed with the
//!   KEK (AES-256-GCM-SIV, random nonce, the key id and study as associated
//!   data, so a wrapped key cannot be moved to another name).
//! - `keys/v1/study/{study id}`: the id of the study's current key, created
//!   with a conditional put: two processes that seal the same new study at
//!   once agree on one key (the loser deletes its unused one).
//! - `keys/v1/shredded/{key id}`: an empty tombstone, so that a shredded key
//!   reads as shredded (skipped and counted as such), not as unknown.
//!
//! Shredding deletes the key object and the study's pointer. On a bucket
//! with versioning, the deleted versions must expire too (a lifecycle rule
//! on `keys/` for non-current versions, or no versioning on that prefix):
//! the operator's part, named in ARCHITECTURE.md.
//!
//! Keys are cached for [`CACHE_FOR`]: a process that did not shred a study
//! itself may still open its events for that long after another did.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use meridian_events::KeyStore;
use meridian_events::id::StudyId;
use meridian_events::seal::{DataKey, DataKeyId, Error, KeyState};
use uuid::Uuid;

use crate::blobs::{BlobError, Blobs};

/// How long a process trusts a key it read without reading it again.
pub const CACHE_FOR: Duration = Duration::from_secs(30);

/// Keys kept in memory at most; past it, the expired ones go, then all.
const CACHE_ENTRIES: usize = 100_000;

const PREFIX: &str = "keys/v1";

/// The region's key-encryption key: 32 bytes.
#[derive(Clone)]
pub struct Kek(Aes256GcmSiv, ServiceKey);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

/// A key every process of a region derives from the region's
/// key-encryption key, to authenticate calls between its processes (one
/// ingest replica handing an arrival to another). Holding it grants
/// nothing the key-encryption key does not: that one opens every data key.
#[derive(Clone)]
pub struct ServiceKey([u8; 32]);

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(..)")
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

impl ServiceKey {
    /// HMAC-SHA-256 of a fixed label under the key-encryption key: a key
    /// for this purpose only, never the key-encryption key itself.
    fn derive(kek: &[u8; 32]) -> ServiceKey {
        use hmac::Mac;
        let mut mac = <HmacSha256 as Mac>::new_from_slice(kek).expect("HMAC takes a key of any length");
        mac.update(b"meridian/region-service-key/v1");
        ServiceKey(mac.finalize().into_bytes().into())
    }

    /// From raw bytes (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> ServiceKey {
        ServiceKey(bytes)
    }

    fn mac(&self, purpose: &str, sent_at: i64, body: &[u8]) -> HmacSha256 {
        use hmac::Mac;
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        // Length-prefixed, so no two different inputs MAC the same bytes.
        mac.update(&(purpose.len() as u64).to_be_bytes());
        mac.update(purpose.as_bytes());
        mac.update(&sent_at.to_be_bytes());
        mac.update(&(body.len() as u64).to_be_bytes());
        mac.update(body);
        mac
    }

    /// The MAC of `body`, sent for `purpose` at `sent_at` (microseconds).
    pub fn sign(&self, purpose: &str, sent_at: i64, body: &[u8]) -> Vec<u8> {
        use hmac::Mac;
        self.mac(purpose, sent_at, body).finalize().into_bytes().to_vec()
    }

    /// Checks `tag` (in constant time) and that `sent_at` is within
    /// `window` microseconds of `now`, either way: a copied request
    /// replays only briefly, and only what it said.
    pub fn verify(
        &self,
        purpose: &str,
        sent_at: i64,
        body: &[u8],
        tag: &[u8],
        now: i64,
        window: i64,
    ) -> Result<(), String> {
        use hmac::Mac;
        self.mac(purpose, sent_at, body)
            .verify_slice(tag)
            .map_err(|_| "the request's MAC does not verify under this region's service key".to_owned())?;
        if (now - sent_at).abs() > window {
            return Err(format!(
                "the request was sent {} ms from this process's clock, outside the {} ms window",
                (now - sent_at) / 1_000,
                window / 1_000
            ));
        }
        Ok(())
    }
}

impl Kek {
    /// From the secret's text: 64 hex digits (as `openssl rand -hex 32`
    /// prints), surrounding whitespace ignored.
    pub fn from_hex(text: &[u8]) -> Result<Kek, String> {
        let text = std::str::from_utf8(text).map_err(|_| "the key-encryption key is not text".to_owned())?.trim();
        let bytes: Vec<u8> = (0..text.len())
            .step_by(2)
            .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| "the key-encryption key is not hex".to_owned())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("the key-encryption key is {} bytes; it must be 32 (64 hex digits)", b.len())
        })?;
        Ok(Kek(Aes256GcmSiv::new((&bytes).into()), ServiceKey::derive(&bytes)))
    }

    /// The region's service key, derived from this key.
    pub fn service_key(&self) -> ServiceKey {
        self.1.clone()
    }

    /// `study (16 bytes, clear: an opaque id) | nonce (12) | sealed key`.
    fn wrap(&self, key: &DataKey, study: StudyId) -> Result<Vec<u8>, Error> {
        let mut nonce = [0u8; 12];
        getrandom::getrandom(&mut nonce).map_err(|e| Error::Random(e.to_string()))?;
        let aad = associated(key.id, study);
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: key.bytes(), aad: &aad })
            .map_err(|e| store("wrap", e.to_string()))?;
        Ok([study.0.as_bytes().as_slice(), &nonce, &sealed].concat())
    }

    fn unwrap_key(&self, id: DataKeyId, wrapped: &[u8]) -> Result<(StudyId, DataKey), Error> {
        let corrupt =
            || store("unwrap", format!("data key {} does not open with this region's key-encryption key", id.0));
        let (study, rest) = wrapped.split_at_checked(16).ok_or_else(corrupt)?;
        let (nonce, sealed) = rest.split_at_checked(12).ok_or_else(corrupt)?;
        let study = StudyId(Uuid::from_slice(study).map_err(|_| corrupt())?);
        let plain = self
            .0
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: &associated(id, study) })
            .map_err(|_| corrupt())?;
        let bytes: [u8; 32] = plain.as_slice().try_into().map_err(|_| corrupt())?;
        Ok((study, DataKey::from_parts(id, bytes)))
    }
}

fn associated(id: DataKeyId, study: StudyId) -> Vec<u8> {
    let mut aad = b"meridian.keys.v1\0".to_vec();
    aad.extend_from_slice(id.0.as_bytes());
    aad.extend_from_slice(study.0.as_bytes());
    aad
}

fn store(operation: &'static str, reason: impl Into<String>) -> Error {
    Error::Store { operation, reason: reason.into() }
}

fn blob(operation: &'static str) -> impl FnOnce(BlobError) -> Error {
    move |e| store(operation, e.to_string())
}

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Runs object-store calls for the synchronous [`KeyStore`] trait (folds
/// open events without I/O of their own) on a runtime of its own thread,
/// so that a caller on any runtime, or none, may wait for them.
struct Runner {
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl Runner {
    fn start() -> Result<Runner, Error> {
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| store("start", e.to_string()))?;
        std::thread::Builder::new()
            .name("meridian-keys".into())
            .spawn(move || {
                runtime.block_on(async move {
                    while let Some(job) = queue.recv().await {
                        tokio::spawn(job);
                    }
                });
            })
            .map_err(|e| store("start", e.to_string()))?;
        Ok(Runner { jobs })
    }

    fn run<T: Send + 'static>(&self, work: impl Future<Output = T> + Send + 'static) -> Result<T, Error> {
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        let job: Job = Box::pin(async move {
            let _ = done.send(work.await);
        });
        self.jobs.send(job).map_err(|_| store("run", "the key store's thread has stopped"))?;
        let wait = || answer.recv().map_err(|_| store("run", "the key store's task was dropped"));
        // On a multi-threaded runtime, let its other tasks move off this
        // worker while it waits; elsewhere (a current-thread runtime, a
        // plain thread) the wait is short and bounded by the store's own.
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            _ => wait(),
        }
    }
}

#[derive(Default)]
struct Cache {
    current: HashMap<StudyId, (DataKey, Instant)>,
    keys: HashMap<DataKeyId, (KeyState, Instant)>,
}

impl Cache {
    fn trim(&mut self, now: Instant) {
        if self.current.len() + self.keys.len() <= CACHE_ENTRIES {
            return;
        }
        self.current.retain(|_, (_, at)| now.duration_since(*at) < CACHE_FOR);
        self.keys.retain(|_, (state, at)| matches!(state, KeyState::Shredded) || now.duration_since(*at) < CACHE_FOR);
        if self.current.len() + self.keys.len() > CACHE_ENTRIES {
            self.current.clear();
            self.keys.clear();
        }
    }
}

/// Data keys in a region's object store, wrapped by its KEK.
pub struct ObjectKeyStore {
    blobs: Arc<dyn Blobs>,
    kek: Kek,
    runner: Runner,
    cache: Mutex<Cache>,
}

impl ObjectKeyStore {
    pub fn new(blobs: Arc<dyn Blobs>, kek: Kek) -> Result<ObjectKeyStore, Error> {
        Ok(ObjectKeyStore { blobs, kek, runner: Runner::start()?, cache: Mutex::default() })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, key: String, operation: &'static str) -> Result<Option<Vec<u8>>, Error> {
        let blobs = self.blobs.clone();
        self.runner.run(async move { blobs.get(&key).await })?.map_err(blob(operation))
    }

    fn put_once(&self, key: String, bytes: Vec<u8>, operation: &'static str) -> Result<bool, Error> {
        let blobs = self.blobs.clone();
        self.runner.run(async move { blobs.put_once(&key, bytes).await })?.map_err(blob(operation))
    }

    fn delete(&self, key: String, operation: &'static str) -> Result<(), Error> {
        let blobs = self.blobs.clone();
        self.runner.run(async move { blobs.delete(&key).await })?.map_err(blob(operation))
    }

    /// The study's current key id as its pointer names it.
    fn pointer(&self, study: StudyId) -> Result<Option<DataKeyId>, Error> {
        let Some(bytes) = self.get(study_path(study), "current_key")? else { return Ok(None) };
        let id = Uuid::from_slice(&bytes)
            .map_err(|_| store("current_key", format!("the key pointer of study {study} is not a key id")))?;
        Ok(Some(DataKeyId(id)))
    }

    /// Reads a key from the store (not the cache).
    fn load(&self, id: DataKeyId) -> Result<KeyState, Error> {
        match self.get(key_path(id), "key")? {
            Some(wrapped) => Ok(KeyState::Active(self.kek.unwrap_key(id, &wrapped)?.1)),
            None if self.get(tombstone_path(id), "key")?.is_some() => Ok(KeyState::Shredded),
            None => Ok(KeyState::Unknown),
        }
    }
}

fn key_path(id: DataKeyId) -> String {
    format!("{PREFIX}/key/{}", id.0)
}

fn study_path(study: StudyId) -> String {
    format!("{PREFIX}/study/{study}")
}

fn tombstone_path(id: DataKeyId) -> String {
    format!("{PREFIX}/shredded/{}", id.0)
}

impl KeyStore for ObjectKeyStore {
    fn current_key(&self, study: StudyId) -> Result<DataKey, Error> {
        let now = Instant::now();
        if let Some((key, at)) = self.cache().current.get(&study)
            && now.duration_since(*at) < CACHE_FOR
        {
            return Ok(key.clone());
        }
        let key = loop {
            if let Some(id) = self.pointer(study)? {
                match self.load(id)? {
                    KeyState::Active(key) => break key,
                    // A pointer whose key is gone: a shred in progress
                    // elsewhere. Its study gets a fresh key once it ends.
                    KeyState::Shredded | KeyState::Unknown => {
                        return Err(store("current_key", format!("study {study} is being shredded")));
                    }
                }
            }
            // The key first, then the pointer that makes it current: a
            // pointer never names a key that is not there.
            let fresh = DataKey::generate()?;
            self.put_once(key_path(fresh.id), self.kek.wrap(&fresh, study)?, "current_key")?;
            if self.put_once(study_path(study), fresh.id.0.as_bytes().to_vec(), "current_key")? {
                break fresh;
            }
            // Another process made the study's key first: use theirs.
            self.delete(key_path(fresh.id), "current_key")?;
        };
        let mut cache = self.cache();
        cache.trim(now);
        cache.current.insert(study, (key.clone(), now));
        cache.keys.insert(key.id, (KeyState::Active(key.clone()), now));
        Ok(key)
    }

    fn key(&self, id: DataKeyId) -> Result<KeyState, Error> {
        let now = Instant::now();
        if let Some((state, at)) = self.cache().keys.get(&id)
            && (matches!(state, KeyState::Shredded) || now.duration_since(*at) < CACHE_FOR)
        {
            return Ok(state.clone());
        }
        let state = self.load(id)?;
        // An unknown key may yet appear (sealed elsewhere a moment ago).
        if !matches!(state, KeyState::Unknown) {
            let mut cache = self.cache();
            cache.trim(now);
            cache.keys.insert(id, (state.clone(), now));
        }
        Ok(state)
    }

    fn shred(&self, study: StudyId) -> Result<usize, Error> {
        let Some(id) = self.pointer(study)? else { return Ok(0) };
        // Tombstone first: from here on the key reads as shredded even if
        // the deletes below are interrupted (they are retried by shredding
        // again).
        self.put_once(tombstone_path(id), Vec::new(), "shred")?;
        let existed = self.get(key_path(id), "shred")?.is_some();
        self.delete(key_path(id), "shred")?;
        self.delete(study_path(study), "shred")?;
        let mut cache = self.cache();
        cache.current.remove(&study);
        cache.keys.insert(id, (KeyState::Shredded, Instant::now()));
        Ok(usize::from(existed))
    }

    fn forget(&self, study: StudyId) {
        let mut cache = self.cache();
        if let Some((key, _)) = cache.current.remove(&study) {
            cache.keys.remove(&key.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::LocalBlobs;

    fn kek(byte: u8) -> Kek {
        Kek::from_hex(format!("{byte:02x}").repeat(32).as_bytes()).unwrap()
    }

    #[test]
    fn a_kek_is_64_hex_digits_and_says_so_otherwise() {
        assert!(Kek::from_hex(b"  00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n").is_ok());
        let short = Kek::from_hex(b"0011").unwrap_err();
        assert!(short.contains("2 bytes; it must be 32"), "{short}");
        assert!(Kek::from_hex(b"zz".repeat(32).as_slice()).unwrap_err().contains("not hex"));
    }

    #[test]
    fn a_service_key_authenticates_one_request_briefly_and_only_within_its_region() {
        let (key, other) = (kek(7).service_key(), kek(8).service_key());
        let tag = key.sign("ingest.arrival", 1_000_000, b"body");
        assert!(kek(7).service_key().verify("ingest.arrival", 1_000_000, b"body", &tag, 1_500_000, 60_000_000).is_ok());
        let refused = |r: Result<(), String>| r.unwrap_err();
        assert!(
            refused(other.verify("ingest.arrival", 1_000_000, b"body", &tag, 1_000_000, 60_000_000)).contains("MAC")
        );
        assert!(refused(key.verify("ingest.arrival", 1_000_000, b"bodz", &tag, 1_000_000, 60_000_000)).contains("MAC"));
        assert!(refused(key.verify("other.purpose", 1_000_000, b"body", &tag, 1_000_000, 60_000_000)).contains("MAC"));
        assert!(refused(key.verify("ingest.arrival", 1_000_001, b"body", &tag, 1_000_000, 60_000_000)).contains("MAC"));
        let late = refused(key.verify("ingest.arrival", 1_000_000, b"body", &tag, 62_000_000, 60_000_000));
        assert!(late.contains("outside the 60000 ms window"), "{late}");
    }

    #[test]
    fn two_processes_share_one_key_per_study_and_see_a_shred() {
        let dir = tempfile::TempDir::new().unwrap();
        let blobs: Arc<dyn Blobs> = Arc::new(LocalBlobs::new(dir.path()));
        let (a, b) =
            (ObjectKeyStore::new(blobs.clone(), kek(7)).unwrap(), ObjectKeyStore::new(blobs.clone(), kek(7)).unwrap());
        let study = StudyId(Uuid::from_u128(42));
        let key = a.current_key(study).unwrap();
        assert_eq!(b.current_key(study).unwrap().id, key.id, "the second process finds the first one's key");
        let KeyState::Active(opened) = b.key(key.id).unwrap() else { panic!("b cannot read a's key") };
        assert_eq!(opened.bytes(), key.bytes());
        assert!(matches!(a.key(DataKeyId(Uuid::from_u128(9))).unwrap(), KeyState::Unknown));

        // Wrapped: the key's bytes are nowhere in the store in clear.
        let stored = std::fs::read(dir.path().join(key_path(key.id))).unwrap();
        assert!(!stored.windows(32).any(|w| w == key.bytes()));
        // Another region's KEK cannot open it, and says why.
        let other = ObjectKeyStore::new(blobs.clone(), kek(8)).unwrap();
        let refused = other.key(key.id).unwrap_err().to_string();
        assert!(refused.contains("does not open with this region's key-encryption key"), "{refused}");

        assert_eq!(a.shred(study).unwrap(), 1);
        assert!(matches!(a.key(key.id).unwrap(), KeyState::Shredded));
        // A process that had not cached it sees the shred at once.
        let c = ObjectKeyStore::new(blobs.clone(), kek(7)).unwrap();
        assert!(matches!(c.key(key.id).unwrap(), KeyState::Shredded));
        // The study sent again gets a new key that cannot open the old events.
        assert_ne!(c.current_key(study).unwrap().id, key.id);
        assert_eq!(a.shred(StudyId(Uuid::from_u128(43))).unwrap(), 0, "nothing to shred");
    }

    #[test]
    fn processes_racing_on_a_new_study_agree_on_one_key() {
        let dir = tempfile::TempDir::new().unwrap();
        let blobs: Arc<dyn Blobs> = Arc::new(LocalBlobs::new(dir.path()));
        let study = StudyId(Uuid::from_u128(7));
        let ids: Vec<DataKeyId> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..8)
                .map(|_| {
                    let blobs = blobs.clone();
                    s.spawn(move || ObjectKeyStore::new(blobs, kek(1)).unwrap().current_key(study).unwrap().id)
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
        let kept = std::fs::read_dir(dir.path().join(PREFIX).join("key")).unwrap().count();
        assert_eq!(kept, 1, "the losers deleted their unused keys");
    }
}
