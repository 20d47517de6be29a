//! Failpoints: named places in the write path where a test makes the log
//! fail or the process die, so durability claims are tested, not assumed.
//!
//! Set per log instance ([`FailPoints::set`]) or for a whole process from the
//! `MERIDIAN_FAILPOINTS` environment variable (`point=action[@n][,…]`,
//! actions `error` and `abort`, firing on the n-th hit, default the first),
//! which is how a test arms a child process.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The records of a write are in the storage transaction, not yet committed.
pub const BEFORE_COMMIT: &str = "log.before_commit";
/// The write is committed (durable) but not yet acknowledged to the caller.
pub const AFTER_COMMIT: &str = "log.after_commit";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// The operation fails with [`crate::Error::Injected`].
    Error,
    /// The process aborts on the spot: no destructors, no flush, like a crash.
    Abort,
}

#[derive(Clone, Default, Debug)]
pub struct FailPoints {
    /// point → (action, hits to let pass before it fires)
    armed: Arc<Mutex<HashMap<String, (Action, u64)>>>,
}

impl FailPoints {
    /// Failpoints armed from `MERIDIAN_FAILPOINTS`, read by the caller (tests
    /// never set environment variables in-process).
    pub fn from_spec(spec: &str) -> Result<FailPoints, String> {
        let points = FailPoints::default();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (point, action) =
                item.split_once('=').ok_or_else(|| format!("failpoint {item:?}: expected point=action"))?;
            let (action, nth) = match action.split_once('@') {
                Some((a, n)) => {
                    (a, n.parse::<u64>().map_err(|_| format!("failpoint {point}: {n:?} is not a hit count"))?)
                }
                None => (action, 1),
            };
            let action = match action {
                "error" => Action::Error,
                "abort" => Action::Abort,
                other => {
                    return Err(format!("failpoint {point}: unknown action {other:?}, expected error or abort"));
                }
            };
            points
                .armed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(point.to_owned(), (action, nth.saturating_sub(1)));
        }
        Ok(points)
    }

    pub fn set(&self, point: &str, action: Option<Action>) {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        match action {
            Some(a) => armed.insert(point.to_owned(), (a, 0)),
            None => armed.remove(point),
        };
    }

    /// Called at a failpoint: aborts the process or returns an error when armed.
    pub fn hit(&self, point: &'static str) -> Result<(), crate::Error> {
        let action = match self.armed.lock().unwrap_or_else(|p| p.into_inner()).get_mut(point) {
            None => None,
            Some((_, skip)) if *skip > 0 => {
                *skip -= 1;
                None
            }
            Some((action, _)) => Some(*action),
        };
        match action {
            None => Ok(()),
            Some(Action::Error) => Err(crate::Error::Injected { point }),
            Some(Action::Abort) => std::process::abort(),
        }
    }
}
