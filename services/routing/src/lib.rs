//! Routing: the right study reaches a radiologist who may legally and
//! competently read it, in time.
//!
//! # Layout
//! - [`domain`]: pure code, no I/O, no clock. Readers and worklist studies
//!   ([`domain::model`]), the contract and region facts it decides with
//!   ([`domain::policy`]), the named eligibility rules ([`domain::rules`]),
//!   the one total order ([`domain::order`]), the index of unassigned
//!   studies that keeps queries and decisions off a full scan
//!   ([`domain::queue`]), `decide`/`apply` ([`domain::worklist`]), and what
//!   a completed study queues ([`domain::intake`]).
//! - [`app`]: routing on a region's event log: replay into the state,
//!   decide commands under one lock, append their events with
//!   deterministic ids, then apply them; take in ingest's StudyCompleted as
//!   consume-transform-produce steps; tell watchers the state changed.
//! - [`adapters`]: the domain's events to and from their protobuf payloads
//!   in `meridian.events.v1` ([`adapters::events`]), the policy and readers
//!   from configuration ([`adapters::config`]), and `meridian.routing.v1`
//!   over gRPC ([`adapters::grpc`]).
//! - [`serve`]: routing as a service of a region's process (its gRPC API,
//!   the configured readers' registration, intake and timers).
//!
//! Its intake folds reporting's ReportSigned (a read completed; after a
//! preliminary, the final queued) and inference's AiTriageCompleted (a
//! priority raised); nothing writes the latter yet (issue 19).

#![forbid(unsafe_code)]

pub mod adapters;
pub mod answers;
pub mod app;
pub mod domain;
pub mod serve;
pub mod simulate;

#[cfg(test)]
mod replay_tests;
