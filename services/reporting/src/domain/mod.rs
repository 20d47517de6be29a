//! Reporting's pure domain: the facts it folds from routing and from its
//! own events ([`model`]), and what a draft or a signature decides
//! ([`report`]).

pub mod critical;
pub mod delivery;
pub mod kpi;
pub mod message;
pub mod model;
pub mod order;
pub mod peer_review;
pub mod report;
pub mod template;

#[cfg(test)]
mod tests;
