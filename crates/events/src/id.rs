//! Meridian's opaque ids.
//!
//! DICOM UIDs, accession numbers and patient ids are PHI. Outside the home
//! region (record keys, headers, operational payloads, logs, metrics) a study
//! is named only by its [`StudyId`]. The id is a keyed hash of the Study
//! Instance UID, not a random number, so the same study sent over several
//! associations or again after a crash gets the same id, while without the
//! tenant secret (which never leaves the home region) the id cannot be tied
//! back to the UID, not even by hashing guessed UIDs.

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::time::UnixMicros;

type HmacSha256 = Hmac<Sha256>;

/// A tenant's secret for deriving opaque ids. Held only in the home region.
#[derive(Clone)]
pub struct TenantSecret(Vec<u8>);

/// The secret is too short to key an HMAC safely.
#[derive(Debug, thiserror::Error)]
#[error("tenant secret is {len} bytes, at least 32 are needed")]
pub struct ShortSecret {
    pub len: usize,
}

impl TenantSecret {
    /// At least 32 bytes (256 bits), as HMAC-SHA-256 wants a full-strength key.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, ShortSecret> {
        let bytes = bytes.into();
        if bytes.len() < 32 {
            return Err(ShortSecret { len: bytes.len() });
        }
        Ok(TenantSecret(bytes))
    }

    /// HMAC-SHA-256 of `parts` under this secret, in `domain`. A domain
    /// label ended by a NUL and length-prefixed parts, so that no two
    /// different inputs feed the MAC the same bytes.
    pub fn mac(&self, domain: &str, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// A secret for one purpose (e.g. one contract's de-identification),
    /// derived from this one: it lives where this one lives, and one
    /// purpose's secret tells nothing of another's.
    pub fn subkey(&self, domain: &str, name: &str) -> TenantSecret {
        TenantSecret(self.mac(domain, &[name.as_bytes()]).to_vec())
    }

    /// The key `contract`'s de-identification derives its replacements from
    /// (UIDs, pseudonyms, date shifts): one per tenant and contract.
    pub fn deidentification_key(&self, contract: &str) -> TenantSecret {
        self.subkey("meridian.deid.contract.v1", contract)
    }

    /// What a contract's de-identification replaces `uid` with, under its
    /// `deidentification_key`: `2.25.` and the decimal of a UUIDv8 made of
    /// the first 128 bits of HMAC(key, UID). The home region computes a
    /// derivative's UID with it as storage's de-identification writes it.
    pub fn deidentified_uid(&self, uid: &str) -> String {
        let uid = uid.trim_matches(|c: char| c == '\0' || c.is_ascii_whitespace());
        let mac = self.mac("meridian.deid.uid.v1", &[uid.as_bytes()]);
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&mac[..16]);
        format!("2.25.{}", uuid::Uuid::new_v8(bytes).as_u128())
    }

    fn uuid_v8(&self, domain: &str, parts: &[&[u8]]) -> Uuid {
        uuid_v8_from(&self.mac(domain, parts))
    }
}

impl fmt::Debug for TenantSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TenantSecret(..)")
    }
}

/// DICOM pads UI values to an even length with a NUL byte (PS3.5 6.2), and
/// other string values with spaces: neither is part of the identifier.
fn value(text: &str) -> &[u8] {
    text.trim_matches(|c: char| c == '\0' || c.is_ascii_whitespace()).as_bytes()
}

fn uuid_v8_from(digest: &[u8]) -> Uuid {
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Uuid::new_v8(bytes)
}

fn sha256_v8(domain: &str, parts: &[&[u8]]) -> Uuid {
    let mut hash = Sha256::new();
    hash.update(domain.as_bytes());
    hash.update([0]);
    for part in parts {
        hash.update((part.len() as u64).to_be_bytes());
        hash.update(part);
    }
    uuid_v8_from(&hash.finalize())
}

/// The id of an aggregate that other ids name (a study's derivative for one
/// contract and destination): the same parts give the same id anywhere.
pub fn aggregate_id(kind: &str, parts: &[&[u8]]) -> Uuid {
    sha256_v8(&format!("meridian.aggregate.{kind}.v1"), parts)
}

/// Error parsing an id from text.
#[derive(Debug, thiserror::Error)]
#[error("{kind} {text:?} is not a UUID: {source}")]
pub struct ParseIdError {
    pub kind: &'static str,
    pub text: String,
    #[source]
    pub source: uuid::Error,
}

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map($name).map_err(|source| ParseIdError {
                    kind: $kind,
                    text: text.to_owned(),
                    source,
                })
            }
        }
    };
}

opaque_id!(
    /// Meridian's id for a study: HMAC(tenant secret, Study Instance UID) as a UUIDv8.
    StudyId,
    "study id"
);
opaque_id!(
    /// Meridian's id for a series: HMAC(tenant secret, Series Instance UID).
    SeriesId,
    "series id"
);
opaque_id!(
    /// Meridian's id for an instance: HMAC(tenant secret, SOP Instance UID).
    InstanceId,
    "instance id"
);
opaque_id!(
    /// Meridian's key for a patient: HMAC(tenant secret, issuer + Patient ID),
    /// so routing can keep a patient's studies together without knowing who it is.
    PatientKey,
    "patient key"
);
opaque_id!(
    /// An accession number's opaque key: an order and its study's instances
    /// meet by it, within the tenant, without the accession number.
    AccessionKey,
    "accession key"
);
opaque_id!(
    /// The id of an event: UUIDv7 at the edge, deterministic UUIDv8 when derived.
    EventId,
    "event id"
);

opaque_id!(
    /// The aggregate id of a reader: a name-based UUIDv8 of the configured
    /// reader id (reader ids are not PHI; the UUID is the log's key form).
    ReaderKey,
    "reader key"
);

impl ReaderKey {
    pub fn of(reader_id: &str) -> Self {
        ReaderKey(sha256_v8("meridian.reader.v1", &[reader_id.as_bytes()]))
    }
}

impl StudyId {
    pub fn derive(secret: &TenantSecret, study_instance_uid: &str) -> Self {
        StudyId(secret.uuid_v8("meridian.study.v1", &[value(study_instance_uid)]))
    }
}

impl SeriesId {
    pub fn derive(secret: &TenantSecret, series_instance_uid: &str) -> Self {
        SeriesId(secret.uuid_v8("meridian.series.v1", &[value(series_instance_uid)]))
    }
}

impl InstanceId {
    pub fn derive(secret: &TenantSecret, sop_instance_uid: &str) -> Self {
        InstanceId(secret.uuid_v8("meridian.instance.v1", &[value(sop_instance_uid)]))
    }
}

impl PatientKey {
    /// The issuer qualifies the Patient ID (DICOM (0010,0021)): the same id
    /// from two issuers is two patients.
    pub fn derive(secret: &TenantSecret, issuer_of_patient_id: &str, patient_id: &str) -> Self {
        PatientKey(secret.uuid_v8("meridian.patient.v1", &[value(issuer_of_patient_id), value(patient_id)]))
    }
}

impl AccessionKey {
    pub fn derive(secret: &TenantSecret, accession_number: &str) -> Self {
        AccessionKey(secret.uuid_v8("meridian.accession.v1", &[value(accession_number)]))
    }
}

impl EventId {
    /// For an event caused by a request from outside with no idempotency key.
    /// `now` is the request's arrival time; the low bits are random.
    pub fn new_at(now: UnixMicros) -> Self {
        let millis = now.as_millis().max(0) as u64;
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, millis / 1_000, ((millis % 1_000) * 1_000_000) as u32);
        EventId(Uuid::new_v7(ts))
    }

    /// For the `ordinal`-th event of type `payload_type` derived from `cause`.
    /// A redelivered cause yields the same ids, so duplicates are recognisable.
    pub fn derived(cause: EventId, payload_type: &str, ordinal: u32) -> Self {
        EventId(sha256_v8(
            "meridian.event.derived.v1",
            &[cause.0.as_bytes(), payload_type.as_bytes(), &ordinal.to_be_bytes()],
        ))
    }

    /// For an event a timer caused (a quiet period ended, an SLA fraction
    /// passed): the same timer firing again after a restart gets the same id.
    pub fn timer(aggregate_id: Uuid, timer_kind: &str, deadline: UnixMicros) -> Self {
        EventId(sha256_v8(
            "meridian.event.timer.v1",
            &[aggregate_id.as_bytes(), timer_kind.as_bytes(), &deadline.0.to_be_bytes()],
        ))
    }

    /// For the `ordinal`-th event of a mutating RPC that carries an
    /// idempotency key: a retried RPC appends nothing new. Scoped by tenant
    /// so that two tenants' keys cannot collide.
    pub fn idempotent(tenant: &str, idempotency_key: &str, payload_type: &str, ordinal: u32) -> Self {
        EventId(sha256_v8(
            "meridian.event.idempotent.v1",
            &[tenant.as_bytes(), idempotency_key.as_bytes(), payload_type.as_bytes(), &ordinal.to_be_bytes()],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(byte: u8) -> TenantSecret {
        TenantSecret::new(vec![byte; 32]).unwrap()
    }

    #[test]
    fn a_study_gets_the_same_id_every_time_it_is_sent() {
        let uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320";
        let a = StudyId::derive(&secret(7), uid);
        assert_eq!(a, StudyId::derive(&secret(7), uid));
        // Padding DICOM adds to UIDs does not change the study.
        assert_eq!(a, StudyId::derive(&secret(7), &format!("{uid}\0")));
        assert_eq!(a.0.get_version_num(), 8);
    }

    #[test]
    fn ids_depend_on_the_tenant_secret_and_do_not_contain_the_uid() {
        let uid = "1.2.3.4";
        let a = StudyId::derive(&secret(1), uid);
        let b = StudyId::derive(&secret(2), uid);
        assert_ne!(a, b);
        assert!(!a.to_string().contains("1.2.3.4"));
        // Different kinds of id from the same text differ (domain separation).
        assert_ne!(a.0, SeriesId::derive(&secret(1), uid).0);
        assert_ne!(a.0, InstanceId::derive(&secret(1), uid).0);
    }

    #[test]
    fn patient_key_is_qualified_by_issuer_without_ambiguity() {
        let s = secret(3);
        assert_ne!(PatientKey::derive(&s, "A", "12"), PatientKey::derive(&s, "A1", "2"));
        assert_ne!(PatientKey::derive(&s, "HOSP1", "42"), PatientKey::derive(&s, "HOSP2", "42"));
        assert_eq!(PatientKey::derive(&s, "HOSP1", "42"), PatientKey::derive(&s, "HOSP1", "42"));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(TenantSecret::new(vec![0; 31]).unwrap_err().len, 31);
    }

    #[test]
    fn derived_and_timer_ids_are_deterministic_and_distinct() {
        let cause = EventId::new_at(UnixMicros(1_700_000_000_000_000));
        assert_eq!(cause.0.get_version_num(), 7);
        let d0 = EventId::derived(cause, "meridian.events.v1.StudyQueued", 0);
        assert_eq!(d0, EventId::derived(cause, "meridian.events.v1.StudyQueued", 0));
        assert_ne!(d0, EventId::derived(cause, "meridian.events.v1.StudyQueued", 1));
        assert_ne!(d0, EventId::derived(cause, "meridian.events.v1.StudyAssigned", 0));
        let study = Uuid::now_v7();
        let t = EventId::timer(study, "sla.fraction.500", UnixMicros(5));
        assert_eq!(t, EventId::timer(study, "sla.fraction.500", UnixMicros(5)));
        assert_ne!(t, EventId::timer(study, "sla.fraction.500", UnixMicros(6)));
        let k = EventId::idempotent("acme", "req-1", "T", 0);
        assert_ne!(k, EventId::idempotent("globex", "req-1", "T", 0));
    }

    #[test]
    fn ids_parse_back_from_text_and_reject_garbage_with_context() {
        let id = StudyId::derive(&secret(9), "1.2");
        assert_eq!(id.to_string().parse::<StudyId>().unwrap(), id);
        let err = "not-a-uuid".parse::<StudyId>().unwrap_err();
        assert!(err.to_string().starts_with("study id \"not-a-uuid\" is not a UUID"));
    }
}
