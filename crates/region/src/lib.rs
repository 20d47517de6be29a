//! The shared part of a region's process: what every service of a region
//! opens on, and the servers around them.
//!
//! A region's services meet only on its log. Each process opens the
//! region's context once (log, data keys, object store, secrets, token
//! verifier, snapshots) and the services it runs on it, each through its own
//! opener in its own crate (`services/*/src/serve.rs`); the `meridian`
//! binary is the one place that names them all (`meridian dev`: every
//! service of every region in one process; `meridian serve <service>`: one).
//! Listeners are passed in, so tests bind `127.0.0.1:0`.
//!
//! # Layout
//! - [`node`]: [`RegionContext`] (opening the log, topics, key store,
//!   object store) and [`Region`] (a context with this process's services
//!   and the summary projection).
//! - [`service`]: [`RegionService`], what a service brings to a process.
//! - [`summary`]: the `events.summary` projection (counts per event type
//!   and tenant, registered readers).
//! - [`admin`]: `meridian.admin.v1.AdminService` (tail the log, rebuild a
//!   projection, list topics): platform principals only.
//! - [`http`]: the HTTP router (`/healthz`, `/v1/whoami`, `/v1/summary`,
//!   and `/dicomweb` from the services that serve it).
//! - [`serve`]: running the servers and the services' tasks until shutdown.

#![forbid(unsafe_code)]

pub mod admin;
pub mod http;
pub mod node;
pub mod residency;
pub mod serve;
pub mod service;
pub mod summary;
pub mod tls;

pub use node::{DeliveryTokens, Region, RegionContext, RegionError, RegionOptions, Secrets};
pub use serve::{Listeners, every, serve};
pub use service::{RegionService, Stopping, Task};
