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
//!   ids, then apply them.
//! - [`adapters`]: the domain's events to and from their protobuf payloads
//!   in `meridian.events.v1` ([`adapters::events`]).
//!
//! Not built yet (see the issue): the gRPC service, consuming ingest's
//! StudyStarted/StudyCompleted, the `meridian worklist`/`claim` commands,
//! the benchmark.

#![forbid(unsafe_code)]

pub mod adapters;
pub mod app;
pub mod domain;
