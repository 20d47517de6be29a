//! The worklist: `decide(&state, &policy, command, now) -> events` and
//! `apply(state, &event) -> state`. No I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{Availability, Credential, DeliveryModel, Licence, Priority, ReadType, Reader, ServiceType, Study};
use super::order::{Rank, ReaderSituation, rank};
use super::policy::{AssignmentMode, Policy};
use super::rules::{self, Check, Context};

/// A reader's open work, kept by `apply` so decisions need no scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub open: u32,
    pub rvu_milli: u64,
    /// Patient key → open studies of that patient.
    pub patients: BTreeMap<Uuid, u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub readers: BTreeMap<String, Reader>,
    pub studies: BTreeMap<Uuid, Study>,
    pub load: BTreeMap<String, Load>,
    pub breached: BTreeSet<Uuid>,
    pub next_sequence: u64,
}

/// A study arriving on the worklist (from StudyCompleted and the contract).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewStudy {
    pub id: Uuid,
    pub tenant: String,
    pub facility: String,
    pub contract: String,
    pub home_region: String,
    pub origin_jurisdiction: String,
    pub modality: String,
    pub body_part: String,
    pub subspecialty: Option<String>,
    pub subspecialty_required: bool,
    pub priority: Priority,
    pub service_type: ServiceType,
    pub read_type: ReadType,
    pub patient_key: Option<Uuid>,
    pub rvu_milli: u32,
    pub ai_flagged: bool,
    pub completed_at: UnixMicros,
    pub prior_reader: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    RegisterReader(Reader),
    SetAvailability {
        reader: String,
        availability: Availability,
    },
    UpdateLicences {
        reader: String,
        licences: Vec<Licence>,
    },
    UpdateCredentials {
        reader: String,
        credentials: Vec<Credential>,
    },
    Queue(NewStudy),
    /// Push contracts: give every study that has an eligible reader the best one.
    AssignPending,
    Claim {
        reader: String,
        study: Uuid,
    },
    ClaimNext {
        reader: String,
    },
    Release {
        reader: String,
        study: Uuid,
        reason: String,
    },
    /// By an admin of `group`, to a reader of that group.
    Reassign {
        group: String,
        study: Uuid,
        to: String,
    },
    /// Escalations and SLA breaches due by `now`.
    Tick,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    ReaderRegistered(Reader),
    AvailabilityChanged {
        reader: String,
        availability: Availability,
    },
    LicenceUpdated {
        reader: String,
        licences: Vec<Licence>,
    },
    CredentialUpdated {
        reader: String,
        credentials: Vec<Credential>,
    },
    StudyQueued(Study),
    /// Push: the engine assigned.
    StudyAssigned {
        study: Uuid,
        reader: String,
        delivery_model: DeliveryModel,
    },
    /// Pull: the reader claimed.
    AssignmentClaimed {
        study: Uuid,
        reader: String,
        delivery_model: DeliveryModel,
    },
    AssignmentReleased {
        study: Uuid,
        reader: String,
        reason: String,
    },
    AssignmentReassigned {
        study: Uuid,
        from: Option<String>,
        to: String,
        by_group: String,
    },
    /// An SLA fraction passed unclaimed: priority raised, maybe widened.
    AssignmentEscalated {
        study: Uuid,
        level: u8,
        per_mille: u32,
        priority: Priority,
        widened: Option<DeliveryModel>,
    },
    SlaBreached {
        study: Uuid,
        priority: Priority,
        deadline: UnixMicros,
    },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("unknown reader {reader}")]
    UnknownReader { reader: String },
    #[error("unknown study {study}")]
    UnknownStudy { study: Uuid },
    #[error("study {study} names contract {contract}, which is not configured")]
    UnknownContract { study: Uuid, contract: String },
    #[error("study {study} is already on the worklist")]
    AlreadyQueued { study: Uuid },
    #[error("reader {reader} may not take study {study}: {} ({})", check.rule, check.reason)]
    NotEligible { reader: String, study: Uuid, check: Check },
    #[error("study {study} is already assigned to {assignee}")]
    AlreadyAssigned { study: Uuid, assignee: String },
    #[error("study {study} cannot be claimed while STAT study {earlier} with an earlier deadline is unclaimed")]
    CherryPick { study: Uuid, earlier: Uuid },
    #[error("no study on the worklist is eligible for {reader}")]
    NothingToClaim { reader: String },
    #[error("study {study} is not assigned to {reader}")]
    NotAssignee { study: Uuid, reader: String },
    #[error("study {study} is under a {mode:?} contract: it is not {action}")]
    WrongMode { study: Uuid, mode: AssignmentMode, action: &'static str },
    #[error("reader {reader} is not in reading group {group}")]
    NotInGroup { reader: String, group: String },
}

impl State {
    fn context<'a>(&self, policy: &'a Policy, now: UnixMicros, reader: &str) -> Context<'a> {
        let on_shift = self.readers.get(reader).is_some_and(|r| r.on_shift(now));
        Context { policy, now, open_assignments: self.load.get(reader).map_or(0, |l| l.open), on_shift }
    }

    fn situation(&self, policy: &Policy, reader: &Reader, study: &Study) -> ReaderSituation {
        let load = self.load.get(&reader.id);
        ReaderSituation {
            load_rvu_milli: load.map_or(0, |l| l.rvu_milli),
            holds_patient: study.patient_key.is_some_and(|p| load.is_some_and(|l| l.patients.contains_key(&p))),
            delivery_model: policy.delivery_model(reader, study),
        }
    }

    fn mode(&self, policy: &Policy, study: &Study) -> Option<AssignmentMode> {
        policy.contracts.get(&study.contract).map(|c| c.mode)
    }

    /// Every rule's verdict for `reader` on `study`.
    pub fn explain(&self, policy: &Policy, now: UnixMicros, reader: &str, study: Uuid) -> Result<Vec<Check>, Error> {
        let r = self.readers.get(reader).ok_or_else(|| Error::UnknownReader { reader: reader.to_owned() })?;
        let s = self.studies.get(&study).ok_or(Error::UnknownStudy { study })?;
        Ok(rules::explain(r, s, &self.context(policy, now, reader)))
    }

    /// The unassigned studies `reader` is eligible for, in the total order.
    pub fn worklist(&self, policy: &Policy, now: UnixMicros, reader: &str) -> Result<Vec<&Study>, Error> {
        let r = self.readers.get(reader).ok_or_else(|| Error::UnknownReader { reader: reader.to_owned() })?;
        let ctx = self.context(policy, now, reader);
        let mut ranked: Vec<(Rank, &Study)> = self
            .studies
            .values()
            .filter(|s| s.assignee.is_none() && rules::eligible(r, s, &ctx))
            .map(|s| (rank(s, r, &self.situation(policy, r, s)), s))
            .collect();
        ranked.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(ranked.into_iter().map(|(_, s)| s).collect())
    }

    fn reader(&self, id: &str) -> Result<&Reader, Error> {
        self.readers.get(id).ok_or_else(|| Error::UnknownReader { reader: id.to_owned() })
    }

    fn study(&self, id: Uuid) -> Result<&Study, Error> {
        self.studies.get(&id).ok_or(Error::UnknownStudy { study: id })
    }

    fn check_eligible(&self, policy: &Policy, now: UnixMicros, r: &Reader, s: &Study) -> Result<(), Error> {
        match rules::first_failure(r, s, &self.context(policy, now, &r.id)) {
            None => Ok(()),
            Some(check) => Err(Error::NotEligible { reader: r.id.clone(), study: s.id, check }),
        }
    }
}

/// Decides a command against the state at `now`.
pub fn decide(state: &State, policy: &Policy, command: Command, now: UnixMicros) -> Result<Vec<Event>, Error> {
    match command {
        Command::RegisterReader(r) => Ok(vec![Event::ReaderRegistered(r)]),
        Command::SetAvailability { reader, availability } => {
            state.reader(&reader)?;
            Ok(vec![Event::AvailabilityChanged { reader, availability }])
        }
        Command::UpdateLicences { reader, licences } => {
            state.reader(&reader)?;
            Ok(vec![Event::LicenceUpdated { reader, licences }])
        }
        Command::UpdateCredentials { reader, credentials } => {
            state.reader(&reader)?;
            Ok(vec![Event::CredentialUpdated { reader, credentials }])
        }
        Command::Queue(n) => {
            if state.studies.contains_key(&n.id) {
                return Err(Error::AlreadyQueued { study: n.id });
            }
            let contract = policy
                .contracts
                .get(&n.contract)
                .ok_or_else(|| Error::UnknownContract { study: n.id, contract: n.contract.clone() })?;
            let sla = contract.sla_seconds.get(&n.priority).copied().unwrap_or(0);
            Ok(vec![Event::StudyQueued(Study {
                id: n.id,
                tenant: n.tenant,
                facility: n.facility,
                contract: n.contract,
                home_region: n.home_region,
                origin_jurisdiction: n.origin_jurisdiction,
                modality: n.modality,
                body_part: n.body_part,
                subspecialty: n.subspecialty,
                subspecialty_required: n.subspecialty_required,
                priority: n.priority,
                service_type: n.service_type,
                read_type: n.read_type,
                patient_key: n.patient_key,
                rvu_milli: n.rvu_milli,
                ai_flagged: n.ai_flagged,
                completed_at: n.completed_at,
                deadline: UnixMicros(n.completed_at.0 + (sla as i64) * 1_000_000),
                prior_reader: n.prior_reader,
                escalations: 0,
                widened: BTreeSet::new(),
                assignee: None,
                sequence: state.next_sequence,
            })])
        }
        Command::AssignPending => Ok(assign_pending(state, policy, now)),
        Command::Claim { reader, study } => {
            let r = state.reader(&reader)?;
            let s = state.study(study)?;
            if let Some(assignee) = &s.assignee {
                return Err(Error::AlreadyAssigned { study, assignee: assignee.clone() });
            }
            if state.mode(policy, s) != Some(AssignmentMode::Pull) {
                return Err(Error::WrongMode {
                    study,
                    mode: AssignmentMode::Push,
                    action: "claimed: the engine assigns it",
                });
            }
            state.check_eligible(policy, now, r, s)?;
            // No cherry-picking: an eligible unclaimed STAT study that is due
            // sooner comes first.
            let ctx = state.context(policy, now, &reader);
            if let Some(earlier) = state.studies.values().find(|o| {
                o.id != s.id
                    && o.assignee.is_none()
                    && o.priority == Priority::Stat
                    && o.deadline < s.deadline
                    && rules::eligible(r, o, &ctx)
            }) {
                return Err(Error::CherryPick { study, earlier: earlier.id });
            }
            Ok(vec![Event::AssignmentClaimed { study, reader, delivery_model: policy.delivery_model(r, s) }])
        }
        Command::ClaimNext { reader } => {
            let r = state.reader(&reader)?;
            let next = state
                .worklist(policy, now, &reader)?
                .into_iter()
                .find(|s| state.mode(policy, s) == Some(AssignmentMode::Pull))
                .ok_or_else(|| Error::NothingToClaim { reader: reader.clone() })?;
            Ok(vec![Event::AssignmentClaimed {
                study: next.id,
                reader,
                delivery_model: policy.delivery_model(r, next),
            }])
        }
        Command::Release { reader, study, reason } => {
            let s = state.study(study)?;
            if s.assignee.as_deref() != Some(reader.as_str()) {
                return Err(Error::NotAssignee { study, reader });
            }
            Ok(vec![Event::AssignmentReleased { study, reader, reason }])
        }
        Command::Reassign { group, study, to } => {
            let target = state.reader(&to)?;
            if target.group != group {
                return Err(Error::NotInGroup { reader: to, group });
            }
            let s = state.study(study)?;
            if s.assignee.as_deref() == Some(to.as_str()) {
                return Err(Error::AlreadyAssigned { study, assignee: to });
            }
            state.check_eligible(policy, now, target, s)?;
            Ok(vec![Event::AssignmentReassigned { study, from: s.assignee.clone(), to, by_group: group }])
        }
        Command::Tick => Ok(timers(state, policy, now)),
    }
}

/// Push assignment: repeatedly the lowest eligible (study, reader) pair in
/// the total order, until no unassigned push study has an eligible reader.
fn assign_pending(state: &State, policy: &Policy, now: UnixMicros) -> Vec<Event> {
    let mut scratch = state.clone();
    let mut events = Vec::new();
    // Shifts do not change within one decision: each reader's once.
    let on_shift: BTreeMap<String, bool> = state.readers.values().map(|r| (r.id.clone(), r.on_shift(now))).collect();
    loop {
        let mut best: Option<(Rank, Uuid, String, DeliveryModel)> = None;
        let contexts: Vec<(&Reader, Context<'_>)> = scratch
            .readers
            .values()
            .map(|r| {
                let open = scratch.load.get(&r.id).map_or(0, |l| l.open);
                (r, Context { policy, now, open_assignments: open, on_shift: on_shift[&r.id] })
            })
            .collect();
        for s in scratch.studies.values() {
            if s.assignee.is_some() || scratch.mode(policy, s) != Some(AssignmentMode::Push) {
                continue;
            }
            for (r, ctx) in &contexts {
                if !rules::eligible(r, s, ctx) {
                    continue;
                }
                let situation = scratch.situation(policy, r, s);
                let rk = rank(s, r, &situation);
                if best.as_ref().is_none_or(|b| rk < b.0) {
                    best = Some((rk, s.id, r.id.clone(), situation.delivery_model));
                }
            }
        }
        let Some((_, study, reader, delivery_model)) = best else { return events };
        let event = Event::StudyAssigned { study, reader, delivery_model };
        scratch = apply(scratch, &event);
        events.push(event);
    }
}

/// Escalations (an SLA fraction passed with the study unclaimed) and
/// breaches (the deadline passed) due by `now`. Routing alone decides
/// breaches; billing turns them into credits.
fn timers(state: &State, policy: &Policy, now: UnixMicros) -> Vec<Event> {
    let mut events = Vec::new();
    for s in state.studies.values() {
        let Some(contract) = policy.contracts.get(&s.contract) else { continue };
        if s.assignee.is_none() {
            let span = s.deadline.0 - s.completed_at.0;
            let (mut level, mut priority) = (s.escalations, s.priority);
            for (i, per_mille) in contract.escalation_per_mille.iter().enumerate() {
                let target = i as u8 + 1;
                let due = s.completed_at.0 + span * i64::from(*per_mille) / 1_000;
                if level < target && now.0 >= due {
                    level = target;
                    priority = priority.raised();
                    events.push(Event::AssignmentEscalated {
                        study: s.id,
                        level,
                        per_mille: *per_mille,
                        priority,
                        widened: contract.widening(s.read_type, level),
                    });
                }
            }
        }
        if now >= s.deadline && !state.breached.contains(&s.id) {
            events.push(Event::SlaBreached { study: s.id, priority: s.priority, deadline: s.deadline });
        }
    }
    events
}

fn take(load: &mut BTreeMap<String, Load>, reader: &str, s: &Study) {
    let l = load.entry(reader.to_owned()).or_default();
    l.open += 1;
    l.rvu_milli += u64::from(s.rvu_milli);
    if let Some(p) = s.patient_key {
        *l.patients.entry(p).or_default() += 1;
    }
}

fn give_back(load: &mut BTreeMap<String, Load>, reader: &str, s: &Study) {
    if let Some(l) = load.get_mut(reader) {
        l.open = l.open.saturating_sub(1);
        l.rvu_milli = l.rvu_milli.saturating_sub(u64::from(s.rvu_milli));
        if let Some(p) = s.patient_key
            && let Some(n) = l.patients.get_mut(&p)
        {
            *n -= 1;
            if *n == 0 {
                l.patients.remove(&p);
            }
        }
    }
}

/// Folds one event into the state.
pub fn apply(mut state: State, event: &Event) -> State {
    match event {
        Event::ReaderRegistered(r) => {
            state.readers.insert(r.id.clone(), r.clone());
        }
        Event::AvailabilityChanged { reader, availability } => {
            if let Some(r) = state.readers.get_mut(reader) {
                r.availability = *availability;
            }
        }
        Event::LicenceUpdated { reader, licences } => {
            if let Some(r) = state.readers.get_mut(reader) {
                r.licences = licences.clone();
            }
        }
        Event::CredentialUpdated { reader, credentials } => {
            if let Some(r) = state.readers.get_mut(reader) {
                r.credentials = credentials.clone();
            }
        }
        Event::StudyQueued(s) => {
            state.next_sequence = state.next_sequence.max(s.sequence + 1);
            state.studies.insert(s.id, s.clone());
        }
        Event::StudyAssigned { study, reader, .. } | Event::AssignmentClaimed { study, reader, .. } => {
            if let Some(s) = state.studies.get_mut(study) {
                s.assignee = Some(reader.clone());
                let s = s.clone();
                take(&mut state.load, reader, &s);
            }
        }
        Event::AssignmentReleased { study, reader, .. } => {
            if let Some(s) = state.studies.get_mut(study) {
                s.assignee = None;
                let s = s.clone();
                give_back(&mut state.load, reader, &s);
            }
        }
        Event::AssignmentReassigned { study, from, to, .. } => {
            if let Some(s) = state.studies.get_mut(study) {
                s.assignee = Some(to.clone());
                let s = s.clone();
                if let Some(from) = from {
                    give_back(&mut state.load, from, &s);
                }
                take(&mut state.load, to, &s);
            }
        }
        Event::AssignmentEscalated { study, level, priority, widened, .. } => {
            if let Some(s) = state.studies.get_mut(study) {
                s.escalations = *level;
                s.priority = *priority;
                if let Some(w) = widened {
                    s.widened.insert(*w);
                }
            }
        }
        Event::SlaBreached { study, .. } => {
            state.breached.insert(*study);
        }
    }
    state
}
