//! The replicator: what a region's readers, worklists and derivative
//! stores in other regions need of it crosses as copies of its
//! operational topics, `meridian.<src>.ops.*`, into the destination's log
//! under the same names. Names carry the source region, so copies never
//! collide and a copy is never copied again (the topology stays acyclic,
//! as MirrorMaker 2's IdentityReplicationPolicy has it).
//!
//! - [`domain`]: which (source, destination) pairs the configuration
//!   allows and why, and which records may cross (never a `phi` topic or
//!   a PHI-class envelope, whatever the topic says). Pure.
//! - [`app`]: one pass of copying, from the positions the destination log
//!   holds for `replicator.<src>`, committed with the copies in one step.
//!
//! Not built yet (issue 22 goes on): the opener `meridian serve
//! replicator` and `meridian dev`'s replicator between its regions, and
//! the consumers of the copies (readers known everywhere, worklists where
//! the reader is, derivatives served where they land).

#![forbid(unsafe_code)]

pub mod app;
pub mod domain;
