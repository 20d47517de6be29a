//! Billing's edges: the pricebook from configuration ([`config`]), routing's
//! payloads in and billing's out ([`events`]).

pub mod config;
pub mod events;
