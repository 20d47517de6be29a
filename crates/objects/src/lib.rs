//! A region's object stores and the data keys kept in them.
//!
//! - [`blobs`]: the [`blobs::Blobs`] trait, [`blobs::LocalBlobs`] (files,
//!   each fsynced with its directory before a put returns: `meridian dev`)
//!   and [`blobs::S3Blobs`] (an S3-API bucket), and [`blobs::open`], which
//!   builds the one a region's `[objects]` names.
//! - [`keys`]: [`keys::ObjectKeyStore`], the per-study data keys of a
//!   region whose services run as separate processes, wrapped by the
//!   region's key-encryption key and kept in its object store, so every
//!   process of the region opens the PHI events any of them sealed.

#![forbid(unsafe_code)]

pub mod blobs;
pub mod keys;
