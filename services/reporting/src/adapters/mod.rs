//! Reporting's edges: events in and out ([`events`]), gRPC ([`grpc`]),
//! what a report is to a receiver ([`fhir`], [`hl7`]) and how it is sent
//! ([`receivers`]).

pub mod events;
pub mod fhir;
pub mod grpc;
pub mod hl7;
pub mod receivers;
