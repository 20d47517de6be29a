//! Billing: one charge per billable read through any crash, every figure
//! traceable to the routing events behind it.
//!
//! # Layout
//! - [`domain`]: pure code, no I/O, no clock: integer money
//!   ([`domain::money`]), prices and payouts ([`domain::pricing`]), the
//!   ledger fold ([`domain::ledger`]).
//! - [`adapters`]: the pricebook from configuration, routing's payloads in
//!   and billing's out.
//! - [`app`]: the ledger on a region's log, in consume-transform-produce
//!   steps over the routing topic.
//! - [`serve`]: billing as a service of a region's process.
//!
//! Not built yet: invoices and credit notes, the billing gRPC API and CLI,
//! project milestones, the crash-victim test and the bench (issue 18
//! continues).

#![forbid(unsafe_code)]

pub mod adapters;
pub mod app;
pub mod domain;
pub mod serve;

#[cfg(test)]
mod replay_tests;
