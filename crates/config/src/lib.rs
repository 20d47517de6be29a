//! Meridian configuration.
pub mod value;
