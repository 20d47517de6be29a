//! Storage: the region's object store and the one way PHI gets into it.
//!
//! - [`blobs`]: object stores the PHI path writes to. [`blobs::LocalBlobs`]
//!   is `meridian dev`'s: a write returns only after the file and its
//!   directory are on disk.
//! - [`phi`]: the PHI write path. Every write of patient data in a region
//!   goes through [`phi::PhiWriter::put`], which refuses (and records
//!   PhiWriteRefused) when the tenant's data may not live in this region.
//!
//! Not built yet (issue 5): the study index, QIDO-RS/WADO-RS and the S3
//! store against moto. (Ingest sweeps objects whose event never landed.)

#![forbid(unsafe_code)]

pub mod blobs;
pub mod phi;
