//! Billing's pure domain: integer money and rounding ([`money`]), what a
//! read costs and what a group earns ([`pricing`]), and the ledger fold
//! ([`ledger`]: `decide` and `apply`, the outbox of facts for the log),
//! invoices ([`invoice`]) and their corrections ([`credit_note`]).

pub mod credit_note;
pub mod invoice;
pub mod ledger;
pub mod money;
pub mod pricing;

#[cfg(test)]
mod tests;
