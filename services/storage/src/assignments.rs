//! `storage.assignments`: who holds each study, folded from routing's
//! events, so DICOMweb can tell a reader's own studies from the rest
//! without asking routing's memory (which may be another process).
//!
//! It follows `ops.routing` a moment behind routing, in `meridian dev` as
//! in a process of its own: a reader who has just claimed a study may get
//! 403 until the claim is folded here (the log's delivery: a wake-up on the
//! embedded log, a fetch on Kafka).

use std::collections::{BTreeMap, BTreeSet};

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
    /// A de-identified derivative landed here → the study it was made
    /// from (its home's DerivativeCreated, copied here): a reader holding
    /// the study may read its derivative where it lands.
    #[serde(default)]
    pub derivative_of: BTreeMap<Uuid, Uuid>,
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
            Payload::DerivativeCreated(d) => {
                if let (Some(derivative), Some(original)) = (study(&d.derivative_study_id), study(&d.study_id)) {
                    state.derivative_of.insert(derivative, original);
                }
            }
            // Its home purged the study: the derivative goes with it.
            Payload::ObjectPurged(p) => {
                if let Some(derivative) = study(&p.derivative_study_id) {
                    state.derivative_of.remove(&derivative);
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
    /// (`meridian.{region}.ops.routing`) and of `copies`: other regions'
    /// routing topics (who holds their studies) and storage topics (the
    /// derivatives they wrote here), as the replicator copied them.
    pub async fn open(
        routing: &TopicName,
        copies: &[TopicName],
        log: &dyn EventLog,
        keys: &dyn meridian_events::KeyStore,
        snapshots: Snapshotter,
        idle: std::time::Duration,
    ) -> Result<FoldedAssignments, meridian_projection::Error> {
        let mut starts = Vec::new();
        for topic in std::iter::once(routing).chain(copies) {
            let partitions = log
                .partitions(topic)
                .await
                .map_err(|source| meridian_projection::Error::Log { projection: StudyAssignees::NAME, source })?;
            starts.extend((0..partitions).map(|p| Position::start(topic.clone(), p)));
        }
        Ok(FoldedAssignments { live: Live::open(routing.region(), snapshots, starts, log, keys, idle).await? })
    }

    pub fn live(&self) -> &Live<StudyAssignees> {
        &self.live
    }
}

#[async_trait::async_trait]
impl Assignments for FoldedAssignments {
    async fn assignee(&self, study: Uuid) -> Option<String> {
        let projector = self.live.lock().await;
        let held = projector.state();
        let original = held.derivative_of.get(&study).unwrap_or(&study);
        held.assignee.get(original).cloned()
    }

    async fn assigned_to(&self, reader: &str) -> BTreeSet<Uuid> {
        let projector = self.live.lock().await;
        let held = projector.state();
        let mut studies: BTreeSet<Uuid> = held.assignee.iter().filter(|(_, r)| *r == reader).map(|(s, _)| *s).collect();
        let derivatives = held.derivative_of.iter().filter(|(_, original)| studies.contains(original));
        let derivatives: Vec<Uuid> = derivatives.map(|(derivative, _)| *derivative).collect();
        studies.extend(derivatives);
        studies
    }
}

#[cfg(test)]
mod tests {
    use meridian_events::payload::Payload;
    use meridian_events::{Envelope, EventId};
    use meridian_proto::events::v1 as pb;

    use super::*;

    fn fold(events: &[Payload]) -> Held {
        let study = Uuid::from_u128(1);
        events.iter().enumerate().fold(Held::default(), |held, (i, payload)| {
            let meta = meridian_events::EventMeta {
                aggregate_type: "routing.study".into(),
                ..meridian_log::contract::meta(study, i as u64 + 1, EventId(Uuid::from_u128(100 + i as u128)))
            };
            let envelope = Envelope::plain(meta, &pb::StudyQueued::default()).unwrap();
            StudyAssignees::apply(
                held,
                &Event { envelope: &envelope, payload, partition: 0, offset: i as u64, copied: false },
            )
        })
    }

    #[test]
    fn a_study_is_held_by_whoever_routing_last_gave_it_to_and_by_nobody_once_it_is_done() {
        let s = Uuid::from_u128(7).to_string();
        let assigned = Payload::StudyAssigned(pb::StudyAssigned {
            study_id: s.clone(),
            reader_id: "ortiz".into(),
            ..Default::default()
        });
        let moved = Payload::AssignmentReassigned(pb::AssignmentReassigned {
            study_id: s.clone(),
            from_reader_id: "ortiz".into(),
            to_reader_id: "rao".into(),
            ..Default::default()
        });
        let held = fold(&[assigned.clone(), moved.clone()]);
        assert_eq!(held.assignee.get(&Uuid::from_u128(7)).map(String::as_str), Some("rao"));
        let released =
            Payload::AssignmentReleased(pb::AssignmentReleased { study_id: s.clone(), ..Default::default() });
        assert!(fold(&[assigned.clone(), released]).assignee.is_empty(), "released: nobody holds it");
        let signed =
            Payload::AssignmentCompleted(pb::AssignmentCompleted { study_id: s.clone(), ..Default::default() });
        assert!(fold(&[assigned.clone(), signed]).assignee.is_empty(), "signed: nobody holds it");
        // Queued again (the final after a preliminary): nobody, until the
        // next reader claims it.
        let again = Payload::StudyQueued(pb::StudyQueued { study_id: s.clone(), ..Default::default() });
        let claimed = Payload::AssignmentClaimed(pb::AssignmentClaimed {
            study_id: s.clone(),
            reader_id: "cole".into(),
            ..Default::default()
        });
        assert!(fold(&[assigned.clone(), again.clone()]).assignee.is_empty());
        let held = fold(&[assigned, again, claimed]);
        assert_eq!(held.assignee.get(&Uuid::from_u128(7)).map(String::as_str), Some("cole"));
        // Another service's events and malformed ids change nothing.
        let other = Payload::StudyAssigned(pb::StudyAssigned {
            study_id: "not-a-uuid".into(),
            reader_id: "x".into(),
            ..Default::default()
        });
        assert!(fold(&[other]).assignee.is_empty());
    }
}
