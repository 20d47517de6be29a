//! Meridian's events: opaque ids, the one envelope, the payload catalogue and
//! the sealing of PHI payloads that makes crypto-shredding possible.
//!
//! # Layout
//! - [`id`]: opaque ids. Study, series, instance and patient ids are keyed
//!   hashes (HMAC with the tenant secret) so a re-sent study gets the same id
//!   and the id reveals nothing; event ids are UUIDv7 at the edge and
//!   deterministic UUIDv8 when derived from a cause, a timer or an
//!   idempotency key.
//! - [`envelope`]: the envelope every event travels in, and its protobuf form.
//! - [`payload`]: the catalogue of payload types: for each, its schema
//!   version, data class, stream, aggregate type and writing service.
//! - [`seal`]: per-study data keys, the [`seal::KeyStore`] port, and AEAD
//!   sealing of PHI payloads. Deleting a key is the study's purge.
//!
//! Nothing here does I/O except through a `KeyStore` given by the caller, and
//! nothing reads the clock: times are arguments.

#![forbid(unsafe_code)]

pub mod envelope;
pub mod id;
pub mod payload;
pub mod seal;
pub mod time;

pub use envelope::{DataClass, Envelope, EventMeta};
pub use id::{AccessionKey, EventId, InstanceId, PatientKey, ReaderKey, SeriesId, StudyId, TenantSecret};
pub use payload::{EventPayload, Payload, PayloadInfo};
pub use seal::{DataKey, KeyState, KeyStore};
pub use time::UnixMicros;
