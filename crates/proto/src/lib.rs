//! Meridian's wire types, generated from `proto/meridian/<package>/v1`, and
//! the Open Inference Protocol's from `proto/inference`.
//!
//! This crate only holds generated code and the descriptor set for gRPC
//! reflection. Domain crates convert to and from these types with
//! `From`/`TryFrom`; they never use them as domain types.

#![forbid(unsafe_code)]

/// The encoded `FileDescriptorSet` of every Meridian proto, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/meridian_descriptor.bin"));

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod common {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meridian.common.v1.rs"));
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod events {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meridian.events.v1.rs"));
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod admin {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meridian.admin.v1.rs"));
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod ingest {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meridian.ingest.v1.rs"));
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod billing {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meridian.billing.v1.rs"));
    }
}

pub mod routing {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meridian.routing.v1.rs"));
    }
}

/// The Open Inference Protocol v2 (package `inference`), as published:
/// the client inference calls remote model servers with.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod open_inference {
    include!(concat!(env!("OUT_DIR"), "/inference.rs"));
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod inference {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meridian.inference.v1.rs"));
    }
}

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod reporting {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/meridian.reporting.v1.rs"));
    }
}
