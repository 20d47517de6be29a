//! Reporting's edges: events in and out ([`events`]), gRPC ([`grpc`]),
//! what a report is to a receiver ([`fhir`], [`hl7`]) and how it is sent
//! ([`receivers`]); orders in over MLLP and FHIR ([`orders`], read by
//! [`hl7_order`]).

pub mod events;
pub mod fhir;
pub mod grpc;
pub mod hl7;
pub mod hl7_order;
pub mod orders;
pub mod receivers;
