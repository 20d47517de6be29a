//! Meridian's integration tests: one binary, so one link.

mod bounded_state;
mod contract_embedded;
mod contract_kafka;
mod deid_oracle;
mod durability;
mod inference_model;
mod ingest_dimse;
mod region_kafka;
mod report_messages;
mod s3_moto;
mod shredding;
