//! Inference's edges: events in and out ([`events`]), `meridian.inference.v1`
//! ([`grpc`]), slices as tensors ([`pixels`]), and the runtimes
//! ([`runtime`]): embedded ([`onnx`], tract) and remote ([`oip`], the
//! Open Inference Protocol v2).

pub mod events;
pub mod grpc;
pub mod oip;
pub mod onnx;
pub mod pixels;
pub mod runtime;
