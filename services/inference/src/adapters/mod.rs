//! Inference's edges: events in and out ([`events`]), slices as tensors
//! ([`pixels`]), the embedded runtime ([`runtime`]).

pub mod events;
pub mod pixels;
pub mod runtime;
