//! Storage: the region's object store, the one way PHI gets into it, the
//! study index and DICOMweb out.
//!
//! - [`blobs`]: object stores the PHI path writes to (the
//!   `meridian-objects` crate, shared with the region's key store).
//!   [`blobs::LocalBlobs`] is `meridian dev`'s: a write returns only after
//!   the file and its directory are on disk.
//! - [`phi`]: the PHI write path. Every write of patient data in a region
//!   goes through [`phi::PhiWriter::put`], which refuses (and records
//!   PhiWriteRefused) when the tenant's data may not live in this region.
//! - [`index`]: the study index (redb), a projection of InstanceReceived:
//!   updated in ingest's acknowledgement path where both run in one
//!   process, followed from the log where storage runs on its own.
//! - [`assignments`]: who holds each study, folded from routing's events
//!   for DICOMweb when routing is another process.
//! - [`serve`]: storage as a service of a region's process.
//! - [`dicomweb`]: QIDO-RS and WADO-RS over the index and the objects, with
//!   PhiAccessed before any PHI goes out.
//! - [`deidentify`]: PS3.15 Annex E de-identification of one instance
//!   (pure), and [`derivatives`]: a completed study's de-identified copies
//!   written to the regions its contract allows, with DerivativeCreated.

#![forbid(unsafe_code)]

/// Meridian's implementation class UID (a UUID-derived `2.25` root) and
/// version name, written into every File Meta Information it builds.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.139612087498763419274622219745871396181";
pub const IMPLEMENTATION_VERSION_NAME: &str = "MERIDIAN_0_1";

pub mod assignments;
pub use meridian_objects::blobs;
pub mod deidentify;
pub mod derivatives;
pub mod dicomweb;
pub mod index;
pub mod landed;
pub mod phi;
pub mod retention;
pub mod serve;
