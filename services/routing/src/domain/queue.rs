//! The unassigned studies, indexed by what narrows eligibility most.
//!
//! Five rules depend on a few of the study's fields alone against the
//! reader: contract (reading group), credential (tenant and facility),
//! modality, read type, and delivery model (the read type, service type,
//! widening, patient's country and home region of the study against the
//! reader's region). Keying the unassigned studies by those fields, in a
//! bucket per (contract, tenant, facility, modality, lane), lets a reader's
//! query visit only the buckets those five rules pass, and every
//! bucket keeps its studies in the study-level prefix of the total order
//! (deadline, then priority), so a query that wants the first few stops
//! early. The index narrows; the rules still decide every study it yields.
//! It is derived from the studies alone and rebuilt, never stored.

use std::cmp::Reverse;
use std::collections::btree_set;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use meridian_events::UnixMicros;
use uuid::Uuid;

use super::model::{DeliveryModel, Priority, ReadType, Reader, ServiceType, Study};
use super::policy::{ContractPolicy, Policy, country};

/// A study's place in its bucket: the order's study-level prefix, then the
/// arrival order and the id, which make it unique.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Place {
    pub deadline: UnixMicros,
    pub priority: Priority,
    pub sequence: u64,
    pub study: Uuid,
}

impl Place {
    pub fn of(s: &Study) -> Place {
        Place { deadline: s.deadline, priority: s.priority, sequence: s.sequence, study: s.id }
    }

    /// The part of the total order that belongs to the study alone.
    pub fn prefix(&self) -> (UnixMicros, Priority) {
        (self.deadline, self.priority)
    }
}

/// What the read type and delivery model rules look at in a study.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lane {
    pub read_type: ReadType,
    pub service_type: ServiceType,
    pub widened: BTreeSet<DeliveryModel>,
    pub patient_country: String,
    pub home_region: String,
}

impl Lane {
    pub fn of(s: &Study) -> Lane {
        Lane {
            read_type: s.read_type,
            service_type: s.service_type,
            widened: s.widened.clone(),
            patient_country: country(&s.origin_jurisdiction).to_owned(),
            home_region: s.home_region.clone(),
        }
    }

    /// Whether the read type and delivery model rules pass for `reader` on
    /// every study of this lane under `contract`.
    pub fn admits(&self, policy: &Policy, contract: &str, reader: &Reader) -> bool {
        reader.read_types.contains(&self.read_type) && self.offered_to(policy, contract, reader)
    }

    /// Whether the delivery model rule passes for `reader` on every study of
    /// this lane under `contract`. It depends on the reader's region alone.
    pub fn offered_to(&self, policy: &Policy, contract: &str, reader: &Reader) -> bool {
        let model = policy.delivery_model_from(reader, &self.patient_country, &self.home_region);
        policy.offers_to(contract, self.read_type, self.service_type, &self.widened, model)
    }
}

pub type Bucket = BTreeSet<Place>;

type ByLane = BTreeMap<Lane, Bucket>;
type ByModality = BTreeMap<String, ByLane>;
type ByFacility = BTreeMap<String, ByModality>;
type ByTenant = BTreeMap<String, ByFacility>;

/// A bucket's key, borrowed from the index.
#[derive(Clone, Copy, Debug)]
pub struct BucketKey<'a> {
    pub contract: &'a str,
    pub tenant: &'a str,
    pub facility: &'a str,
    pub modality: &'a str,
    pub lane: &'a Lane,
}

/// Contract → tenant → facility → modality → lane → the unassigned studies there.
/// Nested maps so that lookups by borrowed names allocate nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Queue {
    by_contract: BTreeMap<String, ByTenant>,
    len: usize,
}

impl Queue {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, s: &Study) {
        let bucket = self
            .by_contract
            .entry(s.contract.clone())
            .or_default()
            .entry(s.tenant.clone())
            .or_default()
            .entry(s.facility.clone())
            .or_default()
            .entry(s.modality.clone())
            .or_default()
            .entry(Lane::of(s))
            .or_default();
        if bucket.insert(Place::of(s)) {
            self.len += 1;
        }
    }

    /// Removes `s` as it was inserted (its place must not have changed
    /// since); empty buckets go, so iteration never visits them.
    pub fn remove(&mut self, s: &Study) {
        let Some(tenants) = self.by_contract.get_mut(&s.contract) else { return };
        let Some(facilities) = tenants.get_mut(&s.tenant) else { return };
        let Some(modalities) = facilities.get_mut(&s.facility) else { return };
        let Some(lanes) = modalities.get_mut(&s.modality) else { return };
        let lane = Lane::of(s);
        let Some(bucket) = lanes.get_mut(&lane) else { return };
        if bucket.remove(&Place::of(s)) {
            self.len -= 1;
        }
        if bucket.is_empty() {
            lanes.remove(&lane);
        }
        if lanes.is_empty() {
            modalities.remove(&s.modality);
            if modalities.is_empty() {
                facilities.remove(&s.facility);
                if facilities.is_empty() {
                    tenants.remove(&s.tenant);
                    if tenants.is_empty() {
                        self.by_contract.remove(&s.contract);
                    }
                }
            }
        }
    }

    /// The buckets whose studies pass the contract, credential, modality,
    /// read type and delivery model rules for `reader`, under the contracts
    /// `include` accepts. Credential expiry is left to the rules.
    pub fn for_reader<'a>(
        &'a self,
        policy: &Policy,
        reader: &Reader,
        include: impl Fn(&ContractPolicy) -> bool,
    ) -> Vec<&'a Bucket> {
        let credentials: BTreeSet<(&str, &str)> =
            reader.credentials.iter().map(|c| (c.tenant.as_str(), c.facility.as_str())).collect();
        let mut buckets = Vec::new();
        for contract in policy.contracts.values().filter(|c| c.groups.contains(&reader.group) && include(c)) {
            let Some(tenants) = self.by_contract.get(&contract.name) else { continue };
            for (tenant, facility) in &credentials {
                let Some(modalities) = tenants.get(*tenant).and_then(|f| f.get(*facility)) else { continue };
                for lanes in reader.modalities.iter().filter_map(|m| modalities.get(m)) {
                    buckets.extend(
                        lanes.iter().filter(|(lane, _)| lane.admits(policy, &contract.name, reader)).map(|(_, b)| b),
                    );
                }
            }
        }
        buckets
    }

    /// Every non-empty bucket with its key.
    pub fn buckets(&self) -> impl Iterator<Item = (BucketKey<'_>, &Bucket)> {
        self.by_contract.iter().flat_map(|(contract, tenants)| {
            tenants.iter().flat_map(move |(tenant, facilities)| {
                facilities.iter().flat_map(move |(facility, modalities)| {
                    modalities.iter().flat_map(move |(modality, lanes)| {
                        lanes.iter().map(move |(lane, bucket)| {
                            (BucketKey { contract, tenant, facility, modality, lane }, bucket)
                        })
                    })
                })
            })
        })
    }
}

/// The places of several buckets as one sequence in `Place` order.
pub struct Merged<'a> {
    heads: BinaryHeap<Reverse<(Place, usize)>>,
    rest: Vec<btree_set::Iter<'a, Place>>,
}

pub fn merged<'a>(buckets: impl IntoIterator<Item = &'a Bucket>) -> Merged<'a> {
    let mut rest: Vec<btree_set::Iter<'a, Place>> = buckets.into_iter().map(|b| b.iter()).collect();
    let heads = rest.iter_mut().enumerate().filter_map(|(i, it)| it.next().map(|p| Reverse((*p, i)))).collect();
    Merged { heads, rest }
}

impl Iterator for Merged<'_> {
    type Item = Place;

    fn next(&mut self) -> Option<Place> {
        let Reverse((place, i)) = self.heads.pop()?;
        if let Some(next) = self.rest[i].next() {
            self.heads.push(Reverse((*next, i)));
        }
        Some(place)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_buckets_yields_every_place_once_in_order() {
        let place = |d: i64, p: Priority, n: u64| Place {
            deadline: UnixMicros(d),
            priority: p,
            sequence: n,
            study: Uuid::from_u128(n as u128),
        };
        let a: Bucket = [place(5, Priority::Routine, 1), place(9, Priority::Stat, 2)].into();
        let b: Bucket =
            [place(5, Priority::Stat, 3), place(7, Priority::Urgent, 4), place(9, Priority::Stat, 5)].into();
        let c = Bucket::new();
        let got: Vec<u64> = merged([&a, &b, &c]).map(|p| p.sequence).collect();
        assert_eq!(got, [3, 1, 4, 2, 5]);
    }
}
