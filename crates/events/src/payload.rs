//! The payload catalogue: every event type Meridian writes, with its schema
//! version, data class, stream (the last part of its topic name), aggregate
//! type and the one service that writes it.
//!
//! Decoding is total: an unknown payload type or schema version is a typed
//! [`Error`], never a panic. Consumers skip such events with a metric and a
//! log line (see `meridian-projection`), so a newer writer cannot crash an
//! older reader.

use meridian_proto::events::v1 as pb;
use prost::Message;

use crate::envelope::DataClass;

/// A protobuf message that is an event payload.
pub trait EventPayload: Message + prost::Name + Default + Clone + PartialEq {
    /// Bumped whenever a change needs an upcast for old payloads.
    const SCHEMA_VERSION: u32;
    const DATA_CLASS: DataClass;
    /// The stream part of the topic name: `meridian.<region>.<class>.<stream>`.
    const STREAM: &'static str;
    const AGGREGATE_TYPE: &'static str;
    /// The one service that writes this event type.
    const WRITER: &'static str;

    fn into_payload(self) -> Payload;
}

/// Facts about one payload type, for routing and documentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PayloadInfo {
    pub type_name: &'static str,
    pub schema_version: u32,
    pub data_class: DataClass,
    pub stream: &'static str,
    pub aggregate_type: &'static str,
    pub writer: &'static str,
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("unknown payload type {type_name:?}")]
    UnknownType { type_name: String },
    #[error("payload type {type_name} has schema version {found}, this build reads up to {supported}")]
    UnsupportedSchemaVersion { type_name: String, found: u32, supported: u32 },
    #[error("payload of type {type_name} does not decode: {reason}")]
    Corrupt { type_name: String, reason: String },
}

macro_rules! catalogue {
    ($($name:ident => $version:literal, $class:ident, $stream:literal, $aggregate:literal, $writer:literal;)*) => {
        /// Every known payload, decoded.
        // One payload is decoded, folded and dropped at a time: boxing the
        // largest (InstanceReceived, the hot path's) would cost an
        // allocation per instance to save stack bytes nobody keeps.
        #[allow(clippy::large_enum_variant)]
        #[derive(Clone, Debug, PartialEq)]
        pub enum Payload {
            $($name(pb::$name),)*
        }

        $(
            impl EventPayload for pb::$name {
                const SCHEMA_VERSION: u32 = $version;
                const DATA_CLASS: DataClass = DataClass::$class;
                const STREAM: &'static str = $stream;
                const AGGREGATE_TYPE: &'static str = $aggregate;
                const WRITER: &'static str = $writer;
                fn into_payload(self) -> Payload {
                    Payload::$name(self)
                }
            }
        )*

        /// The catalogue, in the order ARCHITECTURE.md lists it.
        pub const CATALOGUE: &[PayloadInfo] = &[
            $(PayloadInfo {
                type_name: concat!("meridian.events.v1.", stringify!($name)),
                schema_version: $version,
                data_class: DataClass::$class,
                stream: $stream,
                aggregate_type: $aggregate,
                writer: $writer,
            },)*
        ];

        impl Payload {
            /// Decodes `bytes` as the payload named by `type_name` at `schema_version`.
            pub fn decode(type_name: &str, schema_version: u32, bytes: &[u8]) -> Result<Payload, Error> {
                $(
                    if type_name == concat!("meridian.events.v1.", stringify!($name)) {
                        if schema_version == 0 || schema_version > $version {
                            return Err(Error::UnsupportedSchemaVersion {
                                type_name: type_name.to_owned(),
                                found: schema_version,
                                supported: $version,
                            });
                        }
                        return pb::$name::decode(bytes).map(Payload::$name).map_err(|e| Error::Corrupt {
                            type_name: type_name.to_owned(),
                            reason: e.to_string(),
                        });
                    }
                )*
                Err(Error::UnknownType { type_name: type_name.to_owned() })
            }

            /// The full protobuf name of the payload type.
            pub fn type_name(&self) -> &'static str {
                match self {
                    $(Payload::$name(_) => concat!("meridian.events.v1.", stringify!($name)),)*
                }
            }

            pub fn encode_to_vec(&self) -> Vec<u8> {
                match self {
                    $(Payload::$name(m) => m.encode_to_vec(),)*
                }
            }

            /// An envelope around this payload when it is not PHI (a PHI
            /// payload needs [`crate::Envelope::sealed`]).
            pub fn plain_envelope(&self, meta: crate::EventMeta) -> Result<crate::Envelope, crate::envelope::Error> {
                match self {
                    $(Payload::$name(m) => crate::Envelope::plain(meta, m),)*
                }
            }

            pub fn info(&self) -> &'static PayloadInfo {
                info(self.type_name()).expect("every Payload variant is in the catalogue")
            }
        }
    };
}

catalogue! {
    // ingest
    InstanceReceived     => 1, Phi,         "ingest",  "ingest.instances", "ingest";
    InstanceRejected     => 1, Operational, "ingest",  "ingest.study",   "ingest";
    StudyStarted         => 1, Operational, "ingest",  "ingest.study",   "ingest";
    StudyCompleted       => 1, Operational, "ingest",  "ingest.study",   "ingest";
    StudyUpdated         => 1, Operational, "ingest",  "ingest.study",   "ingest";
    // storage
    PhiWriteRefused      => 1, Operational, "storage", "storage.refusal", "storage";
    PhiAccessed          => 1, Operational, "audit",   "storage.audit",  "audit";
    AccessDenied         => 1, Operational, "audit",   "audit.denial",   "audit";
    ConfigurationLoaded  => 1, Operational, "audit",   "audit.configuration", "audit";
    DerivativeCreated    => 1, Operational, "storage", "storage.derivative", "storage";
    ObjectPurged         => 1, Operational, "storage", "storage.object", "storage";
    // inference
    AiTriageCompleted    => 1, Operational, "inference", "inference.study", "inference";
    AiTriageFailed       => 1, Operational, "inference", "inference.study", "inference";
    AiTriageScored       => 1, Phi,         "inference", "inference.scores", "inference";
    ModelEnabled         => 1, Operational, "inference", "inference.model", "inference";
    ModelDisabled        => 1, Operational, "inference", "inference.model", "inference";
    ModelDriftDetected   => 1, Operational, "inference", "inference.model", "inference";
    // reporting
    ReportSigned         => 1, Operational, "reporting", "reporting.study", "reporting";
    ReportText           => 1, Phi,         "reporting", "reporting.text",  "reporting";
    ReportAmended        => 1, Operational, "reporting", "reporting.study", "reporting";
    DeliveryRequested    => 1, Operational, "reporting", "reporting.delivery", "reporting";
    ReportDelivered      => 1, Operational, "reporting", "reporting.delivery", "reporting";
    DeliveryFailed       => 1, Operational, "reporting", "reporting.delivery", "reporting";
    CriticalResultFlagged      => 1, Operational, "reporting", "reporting.critical", "reporting";
    CriticalResultCommunicated => 1, Phi,         "reporting", "reporting.critical.contact", "reporting";
    CriticalResultClosed       => 1, Operational, "reporting", "reporting.critical", "reporting";
    CriticalResultEscalated    => 1, Operational, "reporting", "reporting.critical", "reporting";
    PeerReviewRequested        => 1, Operational, "reporting", "reporting.peer_review", "reporting";
    PeerReviewScored           => 1, Operational, "reporting", "reporting.peer_review", "reporting";
    PeerReviewArbitrated       => 1, Operational, "reporting", "reporting.peer_review", "reporting";
    OrderReceived              => 1, Phi,         "reporting", "reporting.order", "reporting";
    OrderMatched               => 1, Operational, "reporting", "reporting.order.match", "reporting";
    // routing
    ReaderRegistered     => 1, Operational, "routing", "routing.reader", "routing";
    ReaderUpdated        => 1, Operational, "routing", "routing.reader", "routing";
    AvailabilityChanged  => 1, Operational, "routing", "routing.reader", "routing";
    LicenceUpdated       => 1, Operational, "routing", "routing.reader", "routing";
    CredentialUpdated    => 1, Operational, "routing", "routing.reader", "routing";
    StudyQueued          => 1, Operational, "routing", "routing.study",  "routing";
    StudyUnroutable      => 1, Operational, "routing", "routing.study",  "routing";
    StudyAssigned        => 1, Operational, "routing", "routing.study",  "routing";
    AssignmentClaimed    => 1, Operational, "routing", "routing.study",  "routing";
    AssignmentReleased   => 1, Operational, "routing", "routing.study",  "routing";
    AssignmentCompleted  => 1, Operational, "routing", "routing.study",  "routing";
    StudyTriaged         => 1, Operational, "routing", "routing.study",  "routing";
    AssignmentReassigned => 1, Operational, "routing", "routing.study",  "routing";
    AssignmentEscalated  => 1, Operational, "routing", "routing.study",  "routing";
    SlaBreached          => 1, Operational, "routing", "routing.study",  "routing";
    // billing
    ChargePosted         => 1, Operational, "billing", "billing.study",  "billing";
    ChargeUnpriced       => 1, Operational, "billing", "billing.study",  "billing";
    CreditPosted         => 1, Operational, "billing", "billing.study",  "billing";
    PayoutAccrued        => 1, Operational, "billing", "billing.study",  "billing";
    InvoiceIssued        => 1, Operational, "billing", "billing.series", "billing";
    CreditNoteIssued     => 1, Operational, "billing", "billing.series", "billing";
    PricesInForce        => 1, Operational, "billing", "billing.prices", "billing";
}

/// Looks a payload type up in the catalogue.
pub fn info(type_name: &str) -> Option<&'static PayloadInfo> {
    CATALOGUE.iter().find(|i| i.type_name == type_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_names_match_the_generated_protobuf_names() {
        assert_eq!(
            <pb::StudyStarted as prost::Name>::full_name(),
            info("meridian.events.v1.StudyStarted").unwrap().type_name
        );
        assert_eq!(<pb::InstanceReceived as EventPayload>::DATA_CLASS, DataClass::Phi);
    }

    #[test]
    fn unknown_types_and_versions_are_typed_errors() {
        assert_eq!(
            Payload::decode("meridian.events.v9.Nope", 1, &[]),
            Err(Error::UnknownType { type_name: "meridian.events.v9.Nope".into() })
        );
        assert!(matches!(
            Payload::decode("meridian.events.v1.StudyStarted", 2, &[]),
            Err(Error::UnsupportedSchemaVersion { found: 2, supported: 1, .. })
        ));
        assert!(matches!(
            Payload::decode("meridian.events.v1.StudyStarted", 1, &[0xff, 0xff, 0xff]),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn every_payload_round_trips() {
        let p = pb::StudyStarted { study_id: "s".into(), modality: "CT".into(), ..Default::default() }.into_payload();
        let back = Payload::decode(p.type_name(), 1, &p.encode_to_vec()).unwrap();
        assert_eq!(back, p);
    }
}
