//! Inference: AI triage of completed studies in their home region. The
//! models a study's contract buys read its slices (embedded ONNX, run by
//! tract); the outcome is a suggestion routing judges (AiTriageCompleted,
//! operational, codes only), with the scores sealed beside it
//! (AiTriageScored, PHI). A model that cannot read a study says why
//! (AiTriageFailed); the study is routed at its normal priority either way.

pub mod adapters;
pub mod app;
pub mod domain;
pub mod serve;
