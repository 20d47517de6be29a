//! Reporting's edges: events in and out ([`events`]), gRPC ([`grpc`]),
//! and what a report is to a receiver ([`fhir`], [`hl7`]).

pub mod events;
pub mod fhir;
pub mod grpc;
pub mod hl7;
