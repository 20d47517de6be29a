//! Ingest: studies in over DIMSE C-STORE, through the PHI write path, into
//! the event log; and study completeness.
//!
//! - [`dataset`]: what ingest reads of a data set, the refusals with their
//!   DIMSE statuses, and the Part-10 file it stores.
//! - [`studies`]: the region's studies as a fold of ingest's events, and
//!   the decisions on them (started, updated, completed after the quiet
//!   period). Pure.
//! - [`app`]: [`app::Ingest`], the region's `StoreService`: acknowledgement
//!   order (object, then a group commit of events and index), rejections,
//!   completion.
//! - [`grpc`]: `meridian.ingest.v1` for tenants: `ListRejections`,
//!   `CompleteStudy`.
//! - [`stow`]: STOW-RS, through the same checks and acknowledgement path.
//! - [`serve`]: ingest as a service of a region's process: the DICOM
//!   port, STOW-RS, its gRPC API and its ticks (completion, orphan sweep).
//!
//! The study index and DICOMweb out are the storage service's.

#![forbid(unsafe_code)]

pub mod app;
pub mod dataset;
pub mod grpc;
pub mod replicas;
pub mod serve;
pub mod stow;
pub mod studies;
