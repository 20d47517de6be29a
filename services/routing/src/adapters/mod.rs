//! Adapters between routing's domain and the outside.

pub mod events;
