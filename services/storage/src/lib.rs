//! Storage: the region's object store, the one way PHI gets into it, the
//! study index and DICOMweb out.
//!
//! - [`blobs`]: object stores the PHI path writes to. [`blobs::LocalBlobs`]
//!   is `meridian dev`'s: a write returns only after the file and its
//!   directory are on disk.
//! - [`phi`]: the PHI write path. Every write of patient data in a region
//!   goes through [`phi::PhiWriter::put`], which refuses (and records
//!   PhiWriteRefused) when the tenant's data may not live in this region.
//! - [`index`]: the study index (redb), a projection of InstanceReceived
//!   updated in ingest's acknowledgement path.
//! - [`dicomweb`]: QIDO-RS and WADO-RS over the index and the objects, with
//!   PhiAccessed before any PHI goes out.

#![forbid(unsafe_code)]

pub mod blobs;
pub mod dicomweb;
pub mod index;
pub mod phi;
