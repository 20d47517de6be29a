//! `events.summary`: what a region's log holds, by event type and tenant,
//! and which readers are registered. Operational: it never opens PHI.

use std::collections::{BTreeMap, BTreeSet};

use meridian_events::payload::Payload;
use meridian_projection::{Event, Projection};
use serde::{Deserialize, Serialize};

pub struct EventSummary;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub by_type: BTreeMap<String, u64>,
    pub by_tenant: BTreeMap<String, u64>,
    pub readers: BTreeSet<String>,
}

impl Projection for EventSummary {
    type State = Summary;
    const NAME: &'static str = "events.summary";

    fn apply(mut state: Summary, event: &Event<'_>) -> Summary {
        let short = event.envelope.payload_type.rsplit('.').next().unwrap_or_default().to_owned();
        *state.by_type.entry(short).or_default() += 1;
        *state.by_tenant.entry(event.envelope.meta.tenant.clone()).or_default() += 1;
        if let Payload::ReaderRegistered(r) = event.payload {
            state.readers.insert(r.reader_id.clone());
        }
        state
    }
}

impl Summary {
    pub fn render(&self) -> String {
        let types: Vec<String> = self.by_type.iter().map(|(t, n)| format!("{t}={n}")).collect();
        format!("{} events ({}); {} readers", self.by_type.values().sum::<u64>(), types.join(", "), self.readers.len())
    }
}
