//! Adapters between routing's domain and the outside.

pub mod config;
pub mod events;
pub mod grpc;
