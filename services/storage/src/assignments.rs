//! `storage.assignments`: who holds each study, folded from routing's
//! events, so DICOMweb can tell a reader's own studies from the rest
//! without asking routing's memory (which may be another process).
//!
//! It follows `ops.routing` a moment behind routing: a reader who has just
//! claimed a study may get 403 until the claim is folded here (bounded by
//! the log's delivery, usually well under a second). In `meridian dev` the
//! composition gives DICOMweb routing's own answer instead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use meridian_events::payload::Payload;
use meridian_log::{EventLog, Position, TopicName};
use meridian_projection::live::Live;
use meridian_projection::run::Snapshotter;
use meridian_projection::{Event, Projection};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::dicomweb::Assignments;

/// Study → its assignee, for the studies held now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Held {
    pub assignee: BTreeMap<Uuid, String>,
}

pub struct StudyAssignees;

impl Projection for StudyAssignees {
    type State = Held;
    const NAME: &'static str = "storage.assignments";

    fn apply(mut state: Held, event: &Event<'_>) -> Held {
        let study = |id: &str| Uuid::parse_str(id).ok();
        match event.payload {
            Payload::StudyAssigned(e) => {
                if let Some(s) = study(&e.study_id) {
                    state.assignee.insert(s, e.reader_id.clone());
                }
            }
            Payload::AssignmentClaimed(e) => {
                if let Some(s) = study(&e.study_id) {
                    state.assignee.insert(s, e.reader_id.clone());
                }
            }
            Payload::AssignmentReassigned(e) => {
                if let Some(s) = study(&e.study_id) {
                    state.assignee.insert(s, e.to_reader_id.clone());
                }
            }
            // Released, signed, or queued again (a final after a
            // preliminary): nobody holds it.
            Payload::AssignmentReleased(e) => {
                if let Some(s) = study(&e.study_id) {
                    state.assignee.remove(&s);
                }
            }
            Payload::AssignmentCompleted(e) => {
                if let Some(s) = study(&e.study_id) {
                    state.assignee.remove(&s);
                }
            }
            Payload::StudyQueued(e) => {
                if let Some(s) = study(&e.study_id) {
                    state.assignee.remove(&s);
                }
            }
            _ => {}
        }
        state
    }
}

/// The projection, live in the storage process.
pub struct FoldedAssignments {
    live: Live<StudyAssignees>,
}

impl FoldedAssignments {
    /// Opens from the snapshot and the tail of the region's routing topic
    /// (`meridian.{region}.ops.routing`).
    pub async fn open(
        routing: &TopicName,
        log: &dyn EventLog,
        keys: &dyn meridian_events::KeyStore,
        snapshots: Snapshotter,
        idle: std::time::Duration,
    ) -> Result<FoldedAssignments, meridian_projection::Error> {
        let partitions = log
            .partitions(routing)
            .await
            .map_err(|source| meridian_projection::Error::Log { projection: StudyAssignees::NAME, source })?;
        let starts = (0..partitions).map(|p| Position::start(routing.clone(), p)).collect();
        Ok(FoldedAssignments { live: Live::open(snapshots, starts, log, keys, idle).await? })
    }

    pub fn live(&self) -> &Live<StudyAssignees> {
        &self.live
    }
}

#[async_trait::async_trait]
impl Assignments for FoldedAssignments {
    async fn assignee(&self, study: Uuid) -> Option<String> {
        self.live.lock().await.state().assignee.get(&study).cloned()
    }

    async fn assigned_to(&self, reader: &str) -> BTreeSet<Uuid> {
        let projector = self.live.lock().await;
        projector.state().assignee.iter().filter(|(_, r)| *r == reader).map(|(s, _)| *s).collect()
    }
}

/// Routing's answer through the shared trait, where one process runs both.
pub type SharedAssignments = Arc<dyn Assignments>;
