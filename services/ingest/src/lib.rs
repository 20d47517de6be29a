//! Ingest: studies in over DIMSE C-STORE, through the PHI write path, into
//! the event log; and study completeness.
//!
//! - [`dataset`]: what ingest reads of a data set, the refusals with their
//!   DIMSE statuses, and the Part-10 file it stores.
//! - [`studies`]: the region's studies as a fold of ingest's events, and
//!   the decisions on them (started, updated, completed after the quiet
//!   period). Pure.
//! - [`app`]: [`app::Ingest`], the region's `StoreService`: acknowledgement
//!   order, rejections, completion.
//!
//! - [`grpc`]: `meridian.ingest.v1` for tenants: `ListRejections`,
//!   `CompleteStudy`.
//!
//! Not built yet (issue 5 continues): the study index and QIDO-RS/WADO-RS,
//! and S3.

#![forbid(unsafe_code)]

pub mod app;
pub mod dataset;
pub mod grpc;
pub mod studies;
