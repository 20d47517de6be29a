//! Routing: the right study reaches a radiologist who may legally and
//! competently read it, in time.
//!
//! # Layout
//! - [`domain`]: pure code, no I/O, no clock. Readers and worklist studies
//!   ([`domain::model`]), the contract and region facts it decides with
//!   ([`domain::policy`]), the named eligibility rules ([`domain::rules`]),
//!   the one total order ([`domain::order`]), and `decide`/`apply`
//!   ([`domain::worklist`]).
//! - [`app`]: routing on a region's event log: replay into the state,
//!   decide a command under one lock, append its events with deterministic
//!   ids, then apply them; take in ingest's StudyCompleted as
//!   consume-transform-produce steps.
//! - [`adapters`]: the domain's events to and from their protobuf payloads
//!   in `meridian.events.v1` ([`adapters::events`]).
//!
//! Not built yet (see the issue): `WatchWorklist`, reader registration
//! and update RPCs, the nighthawk/final hand-over from reporting, and the
//! benchmark at 10,000 readers and 100,000 studies (decisions are O(studies
//! × readers) today).

#![forbid(unsafe_code)]

pub mod adapters;
pub mod app;
pub mod domain;
