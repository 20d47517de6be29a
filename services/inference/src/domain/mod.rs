//! Inference's pure domain: what it folds from ingest and its own events
//! ([`model`]), and which models read a study and what their scores say
//! ([`triage`]).

pub mod model;
pub mod triage;
