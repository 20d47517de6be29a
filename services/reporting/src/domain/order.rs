//! Orders in: the hospital's order for an imaging study (HL7 v2 ORM^O01 or
//! OMI^O23, FHIR ServiceRequest) meets its study by accession number within
//! the tenant, whichever comes first. Both sides carry only the accession's
//! opaque key (a keyed hash under the tenant's secret), so memory and the
//! operational log hold no accession number. A match raises the study's
//! priority to the order's in routing, never lowers it.

use std::collections::{BTreeMap, BTreeSet};

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::State;

/// An order as it came in (PHI: in flight and on the PHI topic only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderIn {
    pub tenant: String,
    pub facility: String,
    pub accession: String,
    pub placer_order: String,
    pub patient_id: String,
    pub issuer: String,
    pub ordering_clinician: String,
    /// "stat", "urgent" or "routine".
    pub priority: String,
    pub reason: String,
    pub procedure: String,
    /// "hl7v2" or "fhir".
    pub source: &'static str,
    pub message_id: String,
}

/// What reporting keeps of an order: its tenant, priority and where it is
/// on the PHI topic; never its content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub tenant: String,
    pub priority: String,
    pub received_at: UnixMicros,
    pub partition: u32,
    pub offset: u64,
    /// The study it met, once it has.
    pub matched: Option<Uuid>,
}

/// Orders by accession key, and the studies' accession keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orders {
    pub orders: BTreeMap<Uuid, Order>,
    /// Accession key → the study with that accession (its first).
    pub accessions: BTreeMap<Uuid, Uuid>,
    /// Orders whose study is known and not yet matched: what the next
    /// pass matches (so a pass walks these, not every study).
    pub unmatched: BTreeSet<Uuid>,
    /// Orders with no study yet, by when they came: one that waits past
    /// [`ORDER_WAIT`] is let go, so orders for studies done elsewhere do
    /// not pile up.
    #[serde(default)]
    pub waiting: BTreeSet<(UnixMicros, Uuid)>,
}

/// How long an order waits for its study (counted by the orders that come
/// after it, not the clock: the fold stays pure).
pub const ORDER_WAIT: i64 = 90 * 86_400_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderEvent {
    /// OrderReceived (PHI).
    Received { key: Uuid, order: Box<OrderIn>, received_at: UnixMicros },
    /// OrderMatched.
    Matched { study: Uuid, key: Uuid, priority: String, at: UnixMicros },
}

/// What reporting folds of its orders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OrderFact {
    Received {
        key: Uuid,
        tenant: String,
        priority: String,
        received_at: UnixMicros,
        partition: u32,
        offset: u64,
    },
    Matched {
        study: Uuid,
        key: Uuid,
    },
    /// A study's first instance names this accession key.
    Accession {
        study: Uuid,
        key: Uuid,
    },
}

/// The three priorities routing knows, from an order's.
pub fn priority(text: &str) -> Option<&'static str> {
    match text {
        "stat" => Some("stat"),
        "urgent" => Some("urgent"),
        "routine" => Some("routine"),
        _ => None,
    }
}

fn rank(priority: &str) -> u8 {
    match priority {
        "stat" => 0,
        "urgent" => 1,
        _ => 2,
    }
}

/// The events an order received at `now` makes: the order (unless the same
/// order came before with a priority as high: a resend), and its match
/// when its study is known.
pub fn receive(state: &State, key: Uuid, order: OrderIn, now: UnixMicros) -> Vec<OrderEvent> {
    let before = state.orders.orders.get(&key);
    if before.is_some_and(|b| rank(&b.priority) <= rank(&order.priority)) {
        return Vec::new();
    }
    let priority = order.priority.clone();
    let mut events = vec![OrderEvent::Received { key, order: Box::new(order), received_at: now }];
    if let Some(study) = state.orders.accessions.get(&key) {
        events.push(OrderEvent::Matched { study: *study, key, priority, at: now });
    }
    events
}

/// The matches due: orders whose study arrived after them.
pub fn due(state: &State, now: UnixMicros) -> Vec<OrderEvent> {
    state
        .orders
        .unmatched
        .iter()
        .filter_map(|key| {
            let order = state.orders.orders.get(key)?;
            let study = *state.orders.accessions.get(key)?;
            Some(OrderEvent::Matched { study, key: *key, priority: order.priority.clone(), at: now })
        })
        .collect()
}

pub fn apply(state: &mut State, fact: &OrderFact) {
    let o = &mut state.orders;
    match fact {
        OrderFact::Received { key, tenant, priority, received_at, partition, offset } => {
            let matched = o.orders.get(key).and_then(|b| b.matched);
            o.orders.insert(
                *key,
                Order {
                    tenant: tenant.clone(),
                    priority: priority.clone(),
                    received_at: *received_at,
                    partition: *partition,
                    offset: *offset,
                    matched,
                },
            );
            if o.accessions.contains_key(key) {
                o.unmatched.insert(*key);
            } else {
                o.waiting.insert((*received_at, *key));
            }
            // Let go of what waited too long for its study.
            let cutoff = (UnixMicros(received_at.0.saturating_sub(ORDER_WAIT)), Uuid::nil());
            let expired: Vec<(UnixMicros, Uuid)> = o.waiting.range(..cutoff).copied().collect();
            for (at, old) in expired {
                o.waiting.remove(&(at, old));
                if o.orders.get(&old).is_some_and(|order| order.matched.is_none()) {
                    o.orders.remove(&old);
                }
            }
        }
        OrderFact::Accession { study, key } => {
            o.accessions.entry(*key).or_insert(*study);
            if let Some(order) = o.orders.get(key).filter(|order| order.matched.is_none()) {
                o.waiting.remove(&(order.received_at, *key));
                o.unmatched.insert(*key);
            }
        }
        OrderFact::Matched { study, key } => {
            o.unmatched.remove(key);
            if let Some(order) = o.orders.get_mut(key) {
                order.matched = Some(*study);
            }
            state.studies.entry(*study).or_default().order = Some(*key);
        }
    }
}
