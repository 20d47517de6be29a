//! Per-study data keys and the sealing of PHI payloads.
//!
//! The log is forever; PHI must not be. Every PHI payload is sealed (AEAD,
//! AES-256-GCM-SIV) with a data key belonging to its study, held in the home
//! region's [`KeyStore`]. Shredding the study's keys is its purge: the events
//! stay in the log, unreadable, and projections rebuilt later skip them.
//!
//! The nonce is derived from the event id rather than drawn at random, so a
//! retried event seals to the same bytes (a derived event must reproduce byte
//! for byte). GCM-SIV is nonce-misuse resistant: were one event id ever
//! reused for different plaintext, only the equality of the two would leak,
//! not the keystream.

use std::collections::HashMap;
use std::sync::Mutex;

use aes_gcm_siv::aead::{Aead, KeyInit, Payload as AeadPayload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::id::{EventId, StudyId};

/// Identifies one data key. Random, so a study re-sent after its purge gets
/// a new key that cannot open the shredded events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataKeyId(pub Uuid);

/// A 256-bit data key. Its bytes never leave the home region.
#[derive(Clone)]
pub struct DataKey {
    pub id: DataKeyId,
    bytes: [u8; 32],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({:?}, ..)", self.id.0)
    }
}

/// What the key store knows of a key.
#[derive(Clone, Debug)]
pub enum KeyState {
    Active(DataKey),
    /// The study was purged: the key is gone for good.
    Shredded,
    /// Never seen here (e.g. a PHI event read outside its home region).
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a data key: {0}")]
    Random(String),
    #[error("key store {operation}: {reason}")]
    Store { operation: &'static str, reason: String },
    #[error("sealing payload of event {event_id}: {reason}")]
    Seal { event_id: EventId, reason: String },
    #[error("payload of event {event_id} does not open with data key {key_id:?}: wrong key or tampered bytes")]
    Open { event_id: EventId, key_id: DataKeyId },
}

/// The home region's store of data keys. The embedded implementation is a
/// table of the region's embedded store; in production the keys are wrapped
/// by a KMS key (same trait).
pub trait KeyStore: Send + Sync {
    /// The study's current key, created on first use.
    fn current_key(&self, study: StudyId) -> Result<DataKey, Error>;
    fn key(&self, id: DataKeyId) -> Result<KeyState, Error>;
    /// Deletes every key of the study; returns how many were deleted.
    fn shred(&self, study: StudyId) -> Result<usize, Error>;
    /// Drops what this process remembers of the study's keys (another
    /// process shredded them): the next use reads the store. A store that
    /// keeps nothing apart from the store does nothing.
    fn forget(&self, _study: StudyId) {}
}

impl DataKey {
    /// A fresh random key.
    pub fn generate() -> Result<DataKey, Error> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|e| Error::Random(e.to_string()))?;
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|e| Error::Random(e.to_string()))?;
        Ok(DataKey { id: DataKeyId(uuid::Builder::from_random_bytes(id).into_uuid()), bytes })
    }

    /// Rebuilds a key a store kept.
    pub fn from_parts(id: DataKeyId, bytes: [u8; 32]) -> DataKey {
        DataKey { id, bytes }
    }

    pub fn bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    fn nonce(event_id: EventId) -> [u8; 12] {
        let digest =
            Sha256::new().chain_update(b"meridian.seal.nonce.v1\0").chain_update(event_id.0.as_bytes()).finalize();
        let mut nonce = [0u8; 12];
        nonce.copy_from_slice(&digest[..12]);
        nonce
    }

    /// Seals `plaintext`; `aad` binds the ciphertext to its envelope.
    pub fn seal(&self, event_id: EventId, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        let cipher = Aes256GcmSiv::new((&self.bytes).into());
        let nonce = Self::nonce(event_id);
        cipher
            .encrypt(Nonce::from_slice(&nonce), AeadPayload { msg: plaintext, aad })
            .map_err(|e| Error::Seal { event_id, reason: e.to_string() })
    }

    pub fn open(&self, event_id: EventId, aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, Error> {
        let cipher = Aes256GcmSiv::new((&self.bytes).into());
        let nonce = Self::nonce(event_id);
        cipher
            .decrypt(Nonce::from_slice(&nonce), AeadPayload { msg: ciphertext, aad })
            .map_err(|_| Error::Open { event_id, key_id: self.id })
    }
}

/// An in-memory key store for unit tests and tools; not durable.
#[derive(Default)]
pub struct MemoryKeyStore {
    inner: Mutex<MemoryKeys>,
}

#[derive(Default)]
struct MemoryKeys {
    current: HashMap<StudyId, DataKeyId>,
    keys: HashMap<DataKeyId, (StudyId, Option<DataKey>)>,
}

impl MemoryKeyStore {
    fn keys(&self, operation: &'static str) -> Result<std::sync::MutexGuard<'_, MemoryKeys>, Error> {
        self.inner.lock().map_err(|_| Error::Store { operation, reason: "lock poisoned".into() })
    }
}

impl KeyStore for MemoryKeyStore {
    fn current_key(&self, study: StudyId) -> Result<DataKey, Error> {
        let mut inner = self.keys("current_key")?;
        if let Some(id) = inner.current.get(&study)
            && let Some((_, Some(key))) = inner.keys.get(id)
        {
            return Ok(key.clone());
        }
        let key = DataKey::generate()?;
        inner.current.insert(study, key.id);
        inner.keys.insert(key.id, (study, Some(key.clone())));
        Ok(key)
    }

    fn key(&self, id: DataKeyId) -> Result<KeyState, Error> {
        let inner = self.keys("key")?;
        Ok(match inner.keys.get(&id) {
            Some((_, Some(key))) => KeyState::Active(key.clone()),
            Some((_, None)) => KeyState::Shredded,
            None => KeyState::Unknown,
        })
    }

    fn shred(&self, study: StudyId) -> Result<usize, Error> {
        let mut inner = self.keys("shred")?;
        inner.current.remove(&study);
        let mut n = 0;
        for (owner, key) in inner.keys.values_mut() {
            if *owner == study && key.is_some() {
                *key = None;
                n += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::UnixMicros;

    #[test]
    fn sealing_is_deterministic_per_event_and_bound_to_its_aad() {
        let key = DataKey::generate().unwrap();
        let id = EventId::new_at(UnixMicros(1));
        let a = key.seal(id, b"aad", b"patient id 42").unwrap();
        assert_eq!(a, key.seal(id, b"aad", b"patient id 42").unwrap());
        assert_eq!(key.open(id, b"aad", &a).unwrap(), b"patient id 42");
        assert!(key.open(id, b"other aad", &a).is_err());
        assert!(key.open(EventId::new_at(UnixMicros(2)), b"aad", &a).is_err());
        assert!(DataKey::generate().unwrap().open(id, b"aad", &a).is_err());
    }

    #[test]
    fn shredding_a_study_forgets_its_keys_and_a_new_key_cannot_open_old_events() {
        let store = MemoryKeyStore::default();
        let study = StudyId(Uuid::now_v7());
        let key = store.current_key(study).unwrap();
        assert_eq!(store.current_key(study).unwrap().id, key.id);
        assert_eq!(store.shred(study).unwrap(), 1);
        assert!(matches!(store.key(key.id).unwrap(), KeyState::Shredded));
        let again = store.current_key(study).unwrap();
        assert_ne!(again.id, key.id);
    }
}
