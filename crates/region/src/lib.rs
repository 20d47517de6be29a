//! One region of Meridian, as `meridian dev` hosts it (one per configured
//! region, in one process) and as a region's deployment runs it.
//!
//! A region owns its embedded event log, its data-key store (a table of the
//! same file), its object-store folder, and the projections it serves. It
//! listens on a gRPC port (health, reflection v1 and v1alpha, and
//! Meridian's services behind the auth interceptor) and an HTTP port.
//! Listeners are passed in, so tests bind `127.0.0.1:0`.
//!
//! # Layout
//! - [`node`]: opening a region: log, topics, key store, folders, the
//!   reader bootstrap, the projections and their followers.
//! - [`summary`]: the `events.summary` projection (counts per event type
//!   and tenant, registered readers).
//! - [`admin`]: `meridian.admin.v1.AdminService` (tail the log, rebuild a
//!   projection, list topics): platform principals only.
//! - [`http`]: the HTTP router (`/healthz`, `/v1/whoami`).
//! - [`serve`]: running the servers until shutdown.

#![forbid(unsafe_code)]

pub mod admin;
pub mod http;
pub mod node;
pub mod serve;
pub mod summary;

pub use meridian_ingest::app::Secrets;
pub use node::{Region, RegionError, RegionOptions};
pub use serve::{Listeners, serve};
