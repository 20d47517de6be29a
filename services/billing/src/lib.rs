//! Billing: one charge per billable read through any crash, every figure
//! traceable to the routing events behind it.
//!
//! # Layout
//! - [`domain`]: pure code, no I/O, no clock: integer money
//!   ([`domain::money`]), prices, milestones and payouts
//!   ([`domain::pricing`]), the ledger fold ([`domain::ledger`]), invoices
//!   and the periods they close ([`domain::invoice`]), credit notes
//!   ([`domain::credit_note`]).
//! - [`adapters`]: the pricebook from configuration, routing's payloads in
//!   and billing's out, `meridian.billing.v1` over gRPC.
//! - [`app`]: the ledger on a region's log, in consume-transform-produce
//!   steps over the routing topic; the invoice series.
//! - [`serve`]: billing as a service of a region's process.

#![forbid(unsafe_code)]

pub mod adapters;
pub mod app;
pub mod domain;
pub mod serve;

#[cfg(test)]
mod replay_tests;
