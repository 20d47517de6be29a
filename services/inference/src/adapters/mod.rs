//! Inference's edges: events in and out ([`events`]), `meridian.inference.v1`
//! ([`grpc`]), slices as tensors ([`pixels`]), the embedded runtime
//! ([`runtime`]).

pub mod events;
pub mod grpc;
pub mod pixels;
pub mod runtime;
