//! The routing domain: synchronous and pure. Time comes in as an argument.

pub mod intake;
pub mod model;
pub mod order;
pub mod policy;
pub mod queue;
pub mod rules;
pub mod worklist;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod oracle;
