//! Billing's edges: the pricebook from configuration ([`config`]), routing's
//! payloads in and billing's out ([`events`]), `meridian.billing.v1` over
//! gRPC ([`grpc`]).

pub mod config;
pub mod events;
pub mod grpc;
