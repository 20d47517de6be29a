//! The envelope every event travels in, and its protobuf form.
//!
//! The log record's value is the encoded [`Envelope`]; it is authoritative.
//! A PHI payload is always sealed ([`crate::seal`]): building an envelope
//! around a PHI payload without a data key is impossible through this API.

use std::fmt;

use meridian_proto::common::v1 as common_pb;
use meridian_proto::events::v1 as pb;
use prost::Message;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::id::{EventId, StudyId};
use crate::payload::{self, EventPayload, Payload};
use crate::seal::{self, DataKey, DataKeyId, KeyState, KeyStore};
use crate::time::UnixMicros;

/// What an event or object may contain, and so where it may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DataClass {
    Phi,
    Deidentified,
    Operational,
}

impl DataClass {
    /// The class's part of a topic name.
    pub fn as_str(self) -> &'static str {
        match self {
            DataClass::Phi => "phi",
            DataClass::Deidentified => "deid",
            DataClass::Operational => "ops",
        }
    }

    pub fn parse(text: &str) -> Option<DataClass> {
        match text {
            "phi" => Some(DataClass::Phi),
            "deid" => Some(DataClass::Deidentified),
            "ops" => Some(DataClass::Operational),
            _ => None,
        }
    }
}

impl fmt::Display for DataClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<DataClass> for common_pb::DataClass {
    fn from(c: DataClass) -> Self {
        match c {
            DataClass::Phi => common_pb::DataClass::Phi,
            DataClass::Deidentified => common_pb::DataClass::Deidentified,
            DataClass::Operational => common_pb::DataClass::Operational,
        }
    }
}

/// Everything about an event but its payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventMeta {
    pub event_id: EventId,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub aggregate_version: u64,
    pub tenant: String,
    pub home_region: String,
    pub occurred_at: UnixMicros,
    pub causation_id: Option<EventId>,
    pub correlation_id: Option<EventId>,
    /// W3C Trace Context `traceparent`.
    pub traceparent: Option<String>,
}

/// The payload as carried: plain, or sealed with a data key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    Plain(Vec<u8>),
    Sealed { key_id: DataKeyId, ciphertext: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    pub meta: EventMeta,
    pub data_class: DataClass,
    pub payload_type: String,
    pub schema_version: u32,
    pub body: Body,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("envelope does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("envelope field {field}: {reason}")]
    Field { field: &'static str, reason: String },
    #[error("payload type {payload_type} is PHI and must be sealed with a data key")]
    PhiNotSealed { payload_type: &'static str },
    #[error("payload type {payload_type} belongs to aggregate type {expected}, not {found}")]
    WrongAggregate { payload_type: &'static str, expected: &'static str, found: String },
    #[error("event {event_id}: PHI payload's data key was shredded (study purged)")]
    Shredded { event_id: EventId },
    #[error("event {event_id}: data key {key_id:?} is not in this region's key store")]
    UnknownKey { event_id: EventId, key_id: DataKeyId },
    #[error("event {event_id}: {source}")]
    Payload { event_id: EventId, source: payload::Error },
    #[error(transparent)]
    Seal(#[from] seal::Error),
}

impl Error {
    /// True when the event can never be read again here: consumers skip it
    /// (counted) rather than stop.
    pub fn is_unreadable(&self) -> bool {
        !matches!(self, Error::Seal(seal::Error::Store { .. }))
    }
}

impl Envelope {
    fn check<P: EventPayload>(meta: &EventMeta) -> Result<(), Error> {
        if meta.aggregate_type != P::AGGREGATE_TYPE {
            return Err(Error::WrongAggregate {
                payload_type: P::full_name_static(),
                expected: P::AGGREGATE_TYPE,
                found: meta.aggregate_type.clone(),
            });
        }
        Ok(())
    }

    /// An envelope around a payload that is not PHI.
    pub fn plain<P: EventPayload>(meta: EventMeta, payload: &P) -> Result<Envelope, Error> {
        Self::check::<P>(&meta)?;
        if P::DATA_CLASS == DataClass::Phi {
            return Err(Error::PhiNotSealed { payload_type: P::full_name_static() });
        }
        Ok(Envelope {
            meta,
            data_class: P::DATA_CLASS,
            payload_type: P::full_name_static().to_owned(),
            schema_version: P::SCHEMA_VERSION,
            body: Body::Plain(payload.encode_to_vec()),
        })
    }

    /// An envelope around a PHI payload, sealed with the study's current key.
    pub fn sealed<P: EventPayload>(
        meta: EventMeta,
        payload: &P,
        study: StudyId,
        keys: &dyn KeyStore,
    ) -> Result<Envelope, Error> {
        let key = keys.current_key(study)?;
        Self::sealed_with(meta, payload, &key)
    }

    /// As [`Envelope::sealed`], with a key the caller already holds.
    pub fn sealed_with<P: EventPayload>(meta: EventMeta, payload: &P, key: &DataKey) -> Result<Envelope, Error> {
        Self::check::<P>(&meta)?;
        let mut envelope = Envelope {
            meta,
            data_class: P::DATA_CLASS,
            payload_type: P::full_name_static().to_owned(),
            schema_version: P::SCHEMA_VERSION,
            body: Body::Plain(Vec::new()),
        };
        let aad = envelope.aad(key.id);
        let ciphertext = key.seal(envelope.meta.event_id, &aad, &payload.encode_to_vec())?;
        envelope.body = Body::Sealed { key_id: key.id, ciphertext };
        Ok(envelope)
    }

    /// Binds a sealed payload to the identity of its event, so a ciphertext
    /// cannot be moved into another envelope.
    fn aad(&self, key_id: DataKeyId) -> Vec<u8> {
        let mut aad = Vec::with_capacity(96);
        aad.extend_from_slice(self.meta.event_id.0.as_bytes());
        aad.extend_from_slice(self.meta.aggregate_id.as_bytes());
        aad.extend_from_slice(&self.meta.aggregate_version.to_be_bytes());
        aad.extend_from_slice(key_id.0.as_bytes());
        aad.extend_from_slice(&self.schema_version.to_be_bytes());
        aad.extend_from_slice(self.payload_type.as_bytes());
        aad
    }

    /// Decodes the payload, opening it with `keys` when sealed.
    pub fn open(&self, keys: &dyn KeyStore) -> Result<Payload, Error> {
        let event_id = self.meta.event_id;
        let plain;
        let bytes = match &self.body {
            Body::Plain(bytes) => bytes,
            Body::Sealed { key_id, ciphertext } => match keys.key(*key_id)? {
                KeyState::Active(key) => {
                    plain = key.open(event_id, &self.aad(*key_id), ciphertext)?;
                    &plain
                }
                KeyState::Shredded => return Err(Error::Shredded { event_id }),
                KeyState::Unknown => {
                    return Err(Error::UnknownKey { event_id, key_id: *key_id });
                }
            },
        };
        let payload = Payload::decode(&self.payload_type, self.schema_version, bytes)
            .map_err(|source| Error::Payload { event_id, source })?;
        if payload.info().data_class != self.data_class {
            return Err(Error::Field {
                field: "data_class",
                reason: format!(
                    "{} is {} but the envelope says {}",
                    self.payload_type,
                    payload.info().data_class,
                    self.data_class
                ),
            });
        }
        Ok(payload)
    }

    /// Decodes a plain (non-PHI) payload; PHI needs [`Envelope::open`].
    pub fn open_plain(&self) -> Result<Payload, Error> {
        self.open(&seal::MemoryKeyStore::default())
    }

    pub fn encode_to_vec(&self) -> Vec<u8> {
        pb::Envelope::from(self).encode_to_vec()
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, Error> {
        Envelope::try_from(pb::Envelope::decode(bytes)?)
    }

    /// Digest of what the event says, `encoded` being this envelope's
    /// bytes: the same event id with another digest is a conflict that
    /// consumers report. The `traceparent` is left out: it names the span
    /// an event was appended in, so the same event appended again after a
    /// crash (by a retried consumer step, say) carries another one and is
    /// still the same event.
    pub fn digest(&self, encoded: &[u8]) -> [u8; 32] {
        if self.meta.traceparent.is_none() {
            return Sha256::digest(encoded).into();
        }
        let mut untraced = pb::Envelope::from(self);
        untraced.traceparent.clear();
        Sha256::digest(untraced.encode_to_vec()).into()
    }
}

trait FullNameStatic {
    fn full_name_static() -> &'static str;
}

impl<P: EventPayload> FullNameStatic for P {
    fn full_name_static() -> &'static str {
        // The catalogue holds every payload's name as a static string.
        let name = P::full_name();
        payload::CATALOGUE
            .iter()
            .find(|i| i.type_name == name)
            .map(|i| i.type_name)
            .unwrap_or("meridian.events.v1.Unknown")
    }
}

impl From<&Envelope> for pb::Envelope {
    fn from(e: &Envelope) -> Self {
        let (payload, data_key_id) = match &e.body {
            Body::Plain(bytes) => (bytes.clone(), String::new()),
            Body::Sealed { key_id, ciphertext } => (ciphertext.clone(), key_id.0.hyphenated().to_string()),
        };
        pb::Envelope {
            event_id: e.meta.event_id.to_string(),
            aggregate_type: e.meta.aggregate_type.clone(),
            aggregate_id: e.meta.aggregate_id.hyphenated().to_string(),
            aggregate_version: e.meta.aggregate_version,
            tenant: e.meta.tenant.clone(),
            home_region: e.meta.home_region.clone(),
            data_class: common_pb::DataClass::from(e.data_class) as i32,
            occurred_at: Some(e.meta.occurred_at.to_timestamp()),
            causation_id: e.meta.causation_id.map(|i| i.to_string()).unwrap_or_default(),
            correlation_id: e.meta.correlation_id.map(|i| i.to_string()).unwrap_or_default(),
            traceparent: e.meta.traceparent.clone().unwrap_or_default(),
            payload_type: e.payload_type.clone(),
            schema_version: e.schema_version,
            payload,
            data_key_id,
        }
    }
}

fn uuid_field(field: &'static str, text: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(text).map_err(|e| Error::Field { field, reason: format!("{text:?} is not a UUID: {e}") })
}

fn optional_event_id(field: &'static str, text: &str) -> Result<Option<EventId>, Error> {
    if text.is_empty() { Ok(None) } else { uuid_field(field, text).map(|u| Some(EventId(u))) }
}

fn required(field: &'static str, text: String) -> Result<String, Error> {
    if text.is_empty() { Err(Error::Field { field, reason: "is empty".into() }) } else { Ok(text) }
}

impl TryFrom<pb::Envelope> for Envelope {
    type Error = Error;

    fn try_from(p: pb::Envelope) -> Result<Self, Error> {
        let data_class = match common_pb::DataClass::try_from(p.data_class) {
            Ok(common_pb::DataClass::Phi) => DataClass::Phi,
            Ok(common_pb::DataClass::Deidentified) => DataClass::Deidentified,
            Ok(common_pb::DataClass::Operational) => DataClass::Operational,
            _ => {
                return Err(Error::Field {
                    field: "data_class",
                    reason: format!("{} is not a known data class", p.data_class),
                });
            }
        };
        let occurred_at = p
            .occurred_at
            .as_ref()
            .map(UnixMicros::from_timestamp)
            .ok_or(Error::Field { field: "occurred_at", reason: "is missing".into() })?;
        if p.aggregate_version == 0 {
            return Err(Error::Field { field: "aggregate_version", reason: "must be at least 1".into() });
        }
        let body = if p.data_key_id.is_empty() {
            Body::Plain(p.payload)
        } else {
            Body::Sealed { key_id: DataKeyId(uuid_field("data_key_id", &p.data_key_id)?), ciphertext: p.payload }
        };
        if data_class == DataClass::Phi && matches!(body, Body::Plain(_)) {
            return Err(Error::Field { field: "data_key_id", reason: "a PHI payload must be sealed".into() });
        }
        Ok(Envelope {
            meta: EventMeta {
                event_id: EventId(uuid_field("event_id", &p.event_id)?),
                aggregate_type: required("aggregate_type", p.aggregate_type)?,
                aggregate_id: uuid_field("aggregate_id", &p.aggregate_id)?,
                aggregate_version: p.aggregate_version,
                tenant: required("tenant", p.tenant)?,
                home_region: required("home_region", p.home_region)?,
                occurred_at,
                causation_id: optional_event_id("causation_id", &p.causation_id)?,
                correlation_id: optional_event_id("correlation_id", &p.correlation_id)?,
                traceparent: (!p.traceparent.is_empty()).then_some(p.traceparent),
            },
            data_class,
            payload_type: required("payload_type", p.payload_type)?,
            schema_version: p.schema_version,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::MemoryKeyStore;

    fn meta(aggregate_type: &str) -> EventMeta {
        EventMeta {
            event_id: EventId::new_at(UnixMicros(1_700_000_000_000_000)),
            aggregate_type: aggregate_type.into(),
            aggregate_id: Uuid::now_v7(),
            aggregate_version: 1,
            tenant: "acme".into(),
            home_region: "us-east".into(),
            occurred_at: UnixMicros(1_700_000_000_000_000),
            causation_id: None,
            correlation_id: None,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        }
    }

    /// The fuzz target's seeds are envelopes as the log holds them: they
    /// must stay decodable as the format moves, or the fuzzer starts from
    /// noise.
    #[test]
    fn the_fuzz_seeds_are_envelopes_that_decode() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/envelope");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let envelope = Envelope::decode(&std::fs::read(entry.path()).unwrap()).unwrap();
            assert_eq!(envelope.meta.tenant, "acme");
            let name = entry.file_name().to_string_lossy().into_owned();
            match envelope.body {
                Body::Sealed { .. } => assert!(name.ends_with("-sealed"), "{name}"),
                Body::Plain(_) => drop(envelope.open_plain().unwrap()),
            }
            names.push(name);
        }
        names.sort();
        assert_eq!(names, ["instance-received-sealed", "study-assigned", "study-completed"]);
    }

    #[test]
    fn operational_envelope_round_trips_through_protobuf() {
        let payload = pb::StudyStarted { study_id: "x".into(), modality: "MR".into(), ..Default::default() };
        let env = Envelope::plain(meta("ingest.study"), &payload).unwrap();
        let back = Envelope::decode(&env.encode_to_vec()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.open_plain().unwrap(), Payload::StudyStarted(payload));
    }

    /// An event appended again in another span (a retried step after a
    /// crash) is the same event; another payload under its id is not.
    #[test]
    fn the_digest_of_an_event_ignores_the_span_it_was_appended_in() {
        let payload = pb::StudyStarted { study_id: "x".into(), modality: "MR".into(), ..Default::default() };
        let first = Envelope::plain(meta("ingest.study"), &payload).unwrap();
        let mut again = first.clone();
        again.meta.traceparent = Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
        let mut untraced = first.clone();
        untraced.meta.traceparent = None;
        let digest = |e: &Envelope| e.digest(&e.encode_to_vec());
        assert_ne!(first.encode_to_vec(), again.encode_to_vec());
        assert_eq!(digest(&first), digest(&again));
        assert_eq!(digest(&first), digest(&untraced));
        let other = pb::StudyStarted { modality: "CT".into(), ..payload };
        let changed = Envelope::plain(first.meta.clone(), &other).unwrap();
        assert_ne!(digest(&first), digest(&changed));
    }

    #[test]
    fn phi_cannot_be_sent_plain_and_is_unreadable_after_shredding() {
        let payload = pb::InstanceReceived { patient_id: "MRN-123".into(), ..Default::default() };
        let err = Envelope::plain(meta("ingest.instances"), &payload).unwrap_err();
        assert!(matches!(err, Error::PhiNotSealed { .. }));

        let keys = MemoryKeyStore::default();
        let study = StudyId(Uuid::now_v7());
        let env = Envelope::sealed(meta("ingest.instances"), &payload, study, &keys).unwrap();
        let bytes = env.encode_to_vec();
        assert!(!bytes.windows(7).any(|w| w == b"MRN-123"), "PHI must not appear in clear");
        let back = Envelope::decode(&bytes).unwrap();
        assert_eq!(back.open(&keys).unwrap(), Payload::InstanceReceived(payload));
        assert!(matches!(back.open(&MemoryKeyStore::default()), Err(Error::UnknownKey { .. })));
        keys.shred(study).unwrap();
        assert!(matches!(back.open(&keys), Err(Error::Shredded { .. })));
    }

    #[test]
    fn wrong_aggregate_and_bad_fields_are_named() {
        let err = Envelope::plain(meta("routing.study"), &pb::StudyStarted::default()).unwrap_err();
        assert!(err.to_string().contains("belongs to aggregate type ingest.study"), "{err}");
        let mut p = pb::Envelope::from(&Envelope::plain(meta("ingest.study"), &pb::StudyStarted::default()).unwrap());
        p.aggregate_id = "nope".into();
        let err = Envelope::decode(&p.encode_to_vec()).unwrap_err();
        assert!(err.to_string().starts_with("envelope field aggregate_id"), "{err}");
        assert!(Envelope::decode(b"\xff\xff\xff").is_err());
    }
}
