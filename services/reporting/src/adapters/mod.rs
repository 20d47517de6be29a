//! Reporting's edges: events in and out ([`events`]), gRPC ([`grpc`]).

pub mod events;
pub mod grpc;
