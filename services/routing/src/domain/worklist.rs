//! The worklist: `decide(&state, &policy, command, now) -> events` and
//! `apply(state, &event) -> state`. No I/O, no clock.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use meridian_events::UnixMicros;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::model::{
    Availability, Credential, DeliveryModel, Licence, LocalTime, Priority, ReadType, Reader, ServiceType, Shift, Study,
};
use super::order::{Rank, ReaderSituation, rank};
use super::policy::{AssignmentMode, ContractPolicy, Policy};
use super::queue::{Bucket, Place, Queue, merged};
use super::rules::{self, Check, Context};

/// A reader's open work, kept by `apply` so decisions need no scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    pub open: u32,
    pub rvu_milli: u64,
    /// Patient key → open studies of that patient.
    pub patients: BTreeMap<Uuid, u32>,
}

impl Load {
    fn take(&mut self, s: &Study) {
        self.open += 1;
        self.rvu_milli += u64::from(s.rvu_milli);
        if let Some(p) = s.patient_key {
            *self.patients.entry(p).or_default() += 1;
        }
    }

    fn give_back(&mut self, s: &Study) {
        self.open = self.open.saturating_sub(1);
        self.rvu_milli = self.rvu_milli.saturating_sub(u64::from(s.rvu_milli));
        if let Some(p) = s.patient_key
            && let Some(n) = self.patients.get_mut(&p)
        {
            *n -= 1;
            if *n == 0 {
                self.patients.remove(&p);
            }
        }
    }
}

/// What AI triage said of a study, kept until the study is queued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triage {
    pub ai_flagged: bool,
    pub priority: Priority,
}

/// The worklist state. Only `apply` changes it, which keeps the derived
/// indexes (the unassigned-study queue, readers by group) true; they are
/// not serialized but rebuilt when a snapshot is read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct State {
    pub readers: HashMap<String, Reader>,
    pub studies: BTreeMap<Uuid, Study>,
    pub load: BTreeMap<String, Load>,
    pub breached: BTreeSet<Uuid>,
    pub next_sequence: u64,
    /// Triage results that came before their study was queued.
    #[serde(default)]
    pub pending_triage: BTreeMap<Uuid, Triage>,
    /// Tenant → its studies no contract takes, oldest first (at most
    /// [`UNROUTABLE_KEPT`] each): listed for the tenant, never dropped
    /// silently.
    #[serde(default)]
    pub unroutable: BTreeMap<String, VecDeque<Unroutable>>,
    #[serde(skip)]
    queue: Queue,
    /// Reading group → its readers.
    #[serde(skip)]
    groups: BTreeMap<String, BTreeSet<String>>,
}

/// The serialized part of `State`.
#[derive(Deserialize)]
struct Stored {
    readers: HashMap<String, Reader>,
    studies: BTreeMap<Uuid, Study>,
    load: BTreeMap<String, Load>,
    breached: BTreeSet<Uuid>,
    next_sequence: u64,
    #[serde(default)]
    pending_triage: BTreeMap<Uuid, Triage>,
    #[serde(default)]
    unroutable: BTreeMap<String, VecDeque<Unroutable>>,
}

impl From<Stored> for State {
    fn from(s: Stored) -> State {
        let mut queue = Queue::default();
        for study in s.studies.values().filter(|st| st.assignee.is_none()) {
            queue.insert(study);
        }
        let mut groups: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in s.readers.values() {
            groups.entry(r.group.clone()).or_default().insert(r.id.clone());
        }
        State {
            readers: s.readers,
            studies: s.studies,
            load: s.load,
            breached: s.breached,
            next_sequence: s.next_sequence,
            pending_triage: s.pending_triage,
            unroutable: s.unroutable,
            queue,
            groups,
        }
    }
}

/// Unroutable studies kept per tenant, newest last.
pub const UNROUTABLE_KEPT: usize = 1_000;

/// A completed study no contract of its tenant takes, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unroutable {
    pub study: Uuid,
    pub tenant: String,
    pub facility: String,
    pub reason: String,
    pub completed_at: UnixMicros,
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
    /// A deadline of its own (a peer review's window); else the contract's
    /// turnaround for its priority from `completed_at`.
    pub due: Option<UnixMicros>,
}

/// What a reader reads and when: the part of a reader their group's admin
/// changes after registration (licences and credentials have their own
/// commands, availability is the reader's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub subspecialties: BTreeSet<String>,
    pub modalities: BTreeSet<String>,
    pub read_types: BTreeSet<ReadType>,
    pub shifts: Vec<Shift>,
    pub capacity: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    RegisterReader(Reader),
    UpdateReader {
        reader: String,
        profile: Profile,
    },
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
    /// A completed study no contract takes: kept for the tenant to list.
    MarkUnroutable(Unroutable),
    /// Push contracts: give every study that has an eligible reader the best one.
    AssignPending,
    /// Push contracts: give this study its best eligible reader, if it has
    /// one (on arrival, without walking the rest of the queue).
    Assign {
        study: Uuid,
    },
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
    /// AI triage read the study (from inference's AiTriageCompleted).
    Triage {
        study: Uuid,
        flagged: bool,
        suggested: Option<Priority>,
        model: String,
    },
    /// The assignee signed the read (from reporting's ReportSigned).
    ReadSigned {
        study: Uuid,
        read_type: ReadType,
        reader: String,
        signed_at: UnixMicros,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    ReaderRegistered(Reader),
    StudyUnroutable(Unroutable),
    ReaderUpdated {
        reader: String,
        profile: Profile,
    },
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
        /// The read that breached and its contract (absent in events
        /// written before they were recorded).
        read_type: Option<ReadType>,
        contract: String,
    },
    /// The read was signed: the assignment ends; the study leaves the
    /// worklist unless a StudyQueued for the following read comes after.
    AssignmentCompleted {
        study: Uuid,
        reader: String,
        read_type: ReadType,
        signed_at: UnixMicros,
        /// The reader's reading group (empty in events from before it was
        /// recorded).
        group: String,
    },
    /// AI triage raised the study's urgency. `deadline` is the contract's for
    /// the new priority (never later than before); `None` when the study is
    /// not queued yet, and the triage waits for it.
    StudyTriaged {
        study: Uuid,
        ai_flagged: bool,
        priority: Priority,
        deadline: Option<UnixMicros>,
        model: String,
    },
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("unknown reader {reader}")]
    UnknownReader { reader: String },
    #[error("reader {reader} is already registered")]
    AlreadyRegistered { reader: String },
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
    #[error("study {study} has a {open:?} read open, not a {signed:?} read")]
    WrongRead { study: Uuid, signed: ReadType, open: ReadType },
    #[error("{holder} of reading group {holder_group} holds study {study}; only that group may move it")]
    HeldByAnotherGroup { study: Uuid, holder: String, holder_group: String },
}

/// Appends a run of equally-prefixed offers in the full order.
fn flush<'s>(tied: &mut Vec<(Rank<'_>, &'s Study)>, offered: &mut Vec<&'s Study>) {
    tied.sort_by(|a, b| a.0.cmp(&b.0));
    offered.extend(tied.drain(..).map(|(_, s)| s));
}

/// The reader's situation for the order, given their open work.
fn situation(policy: &Policy, reader: &Reader, study: &Study, load: Option<&Load>) -> ReaderSituation {
    ReaderSituation {
        load_rvu_milli: load.map_or(0, |l| l.rvu_milli),
        holds_patient: study.patient_key.is_some_and(|p| load.is_some_and(|l| l.patients.contains_key(&p))),
        delivery_model: policy.delivery_model(reader, study),
    }
}

/// How one priority's studies stand, for the people watching the queue.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// Waiting for a reader.
    pub queued: u64,
    /// Past at least one escalation fraction of their SLA, not breached.
    pub at_risk: u64,
    /// Past their deadline, unread.
    pub breached: u64,
}

impl State {
    /// Each priority's studies on the worklist: queued, at risk, breached.
    pub fn standing(&self) -> BTreeMap<Priority, Standing> {
        let mut by = BTreeMap::new();
        for study in self.studies.values() {
            let s: &mut Standing = by.entry(study.priority).or_default();
            s.queued += u64::from(study.assignee.is_none());
            if self.breached.contains(&study.id) {
                s.breached += 1;
            } else if study.escalations > 0 {
                s.at_risk += 1;
            }
        }
        by
    }

    fn context<'a>(&self, policy: &'a Policy, now: UnixMicros, reader: &str) -> Context<'a> {
        let on_shift = self.readers.get(reader).is_some_and(|r| r.on_shift(now));
        Context { policy, now, open_assignments: self.load.get(reader).map_or(0, |l| l.open), on_shift }
    }

    fn context_for<'a>(&self, policy: &'a Policy, now: UnixMicros, r: &Reader) -> Context<'a> {
        Context { policy, now, open_assignments: self.load.get(&r.id).map_or(0, |l| l.open), on_shift: r.on_shift(now) }
    }

    fn mode(&self, policy: &Policy, study: &Study) -> Option<AssignmentMode> {
        policy.contracts.get(&study.contract).map(|c| c.mode)
    }

    /// The unassigned studies, indexed.
    pub fn queue(&self) -> &Queue {
        &self.queue
    }

    /// Every rule's verdict for `reader` on `study`.
    pub fn explain(&self, policy: &Policy, now: UnixMicros, reader: &str, study: Uuid) -> Result<Vec<Check>, Error> {
        self.explain_to(policy, now, self.reader(reader)?, study)
    }

    /// [`State::explain`] for `r`, a reader as another state knows them
    /// (a study shown in the region the reader sits in).
    pub fn explain_to(&self, policy: &Policy, now: UnixMicros, r: &Reader, study: Uuid) -> Result<Vec<Check>, Error> {
        let s = self.study(study)?;
        Ok(rules::explain(r, s, &self.context_for(policy, now, r)))
    }

    /// The studies assigned to `reader`, due first first.
    pub fn assignments(&self, reader: &str) -> Result<Vec<&Study>, Error> {
        self.reader(reader)?;
        let mut held: Vec<&Study> = self.studies.values().filter(|s| s.assignee.as_deref() == Some(reader)).collect();
        held.sort_by_key(|s| (s.deadline, s.priority, s.sequence));
        Ok(held)
    }

    /// The unassigned studies `reader` is eligible for, in the total order.
    pub fn worklist(&self, policy: &Policy, now: UnixMicros, reader: &str) -> Result<Vec<&Study>, Error> {
        self.offers(policy, now, reader, |_| true, usize::MAX)
    }

    /// The first `limit` unassigned studies `reader` is eligible for, in the
    /// total order, under the contracts `include` accepts. The queue yields
    /// candidates in the order's study-level prefix; each run of equal
    /// prefixes is then ranked in full, so the walk stops at `limit`.
    pub fn offers(
        &self,
        policy: &Policy,
        now: UnixMicros,
        reader: &str,
        include: impl Fn(&ContractPolicy) -> bool,
        limit: usize,
    ) -> Result<Vec<&Study>, Error> {
        Ok(self.offers_to(policy, now, self.reader(reader)?, include, limit))
    }

    /// What this state's studies offer `r`, a reader as another state knows
    /// them: a reader's region shows them the studies homed elsewhere
    /// (folded from those regions' routing events), with the load those
    /// regions gave them.
    pub fn offers_to(
        &self,
        policy: &Policy,
        now: UnixMicros,
        r: &Reader,
        include: impl Fn(&ContractPolicy) -> bool,
        limit: usize,
    ) -> Vec<&Study> {
        let ctx = self.context_for(policy, now, r);
        let load = self.load.get(&r.id);
        let mut offered = Vec::new();
        if !rules::reader_can_take_work(r, &ctx) {
            return offered;
        }
        let mut tied: Vec<(Rank, &Study)> = Vec::new();
        for place in merged(self.queue.for_reader(policy, r, include)) {
            if tied.first().is_some_and(|(rk, _)| (rk.deadline, rk.priority) != place.prefix()) {
                flush(&mut tied, &mut offered);
                if offered.len() >= limit {
                    break;
                }
            }
            let Some(s) = self.studies.get(&place.study) else { continue };
            if rules::eligible(r, s, &ctx) {
                tied.push((rank(s, r, &situation(policy, r, s, load)), s));
            }
        }
        flush(&mut tied, &mut offered);
        offered.truncate(limit);
        offered
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

    /// Changes one study through `change`, keeping the queue true: a study
    /// is in the queue exactly while it is unassigned, at its current place.
    fn change_study(&mut self, id: &Uuid, change: impl FnOnce(&mut Study, &mut BTreeMap<String, Load>)) {
        if let Some(s) = self.studies.get_mut(id) {
            if s.assignee.is_none() {
                self.queue.remove(s);
            }
            change(s, &mut self.load);
            if s.assignee.is_none() {
                self.queue.insert(s);
            }
        }
    }
}

/// Decides a command against the state at `now`.
pub fn decide(state: &State, policy: &Policy, command: Command, now: UnixMicros) -> Result<Vec<Event>, Error> {
    match command {
        Command::RegisterReader(r) => {
            if state.readers.contains_key(&r.id) {
                return Err(Error::AlreadyRegistered { reader: r.id });
            }
            Ok(vec![Event::ReaderRegistered(r)])
        }
        Command::UpdateReader { reader, profile } => {
            state.reader(&reader)?;
            Ok(vec![Event::ReaderUpdated { reader, profile }])
        }
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
        Command::MarkUnroutable(u) => {
            let known = state.unroutable.get(&u.tenant).is_some_and(|l| l.iter().any(|x| x.study == u.study));
            if known || state.studies.contains_key(&u.study) {
                return Err(Error::AlreadyQueued { study: u.study });
            }
            Ok(vec![Event::StudyUnroutable(u)])
        }
        Command::Queue(n) => {
            if state.studies.contains_key(&n.id) {
                return Err(Error::AlreadyQueued { study: n.id });
            }
            let contract = policy
                .contracts
                .get(&n.contract)
                .ok_or_else(|| Error::UnknownContract { study: n.id, contract: n.contract.clone() })?;
            // A triage that came first raises the study as it arrives.
            let triage = state.pending_triage.get(&n.id);
            let priority = triage.map_or(n.priority, |t| t.priority.min(n.priority));
            let ai_flagged = n.ai_flagged || triage.is_some_and(|t| t.ai_flagged);
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
                priority,
                requested_priority: n.priority,
                service_type: n.service_type,
                read_type: n.read_type,
                patient_key: n.patient_key,
                rvu_milli: n.rvu_milli,
                ai_flagged,
                completed_at: n.completed_at,
                deadline: n.due.unwrap_or_else(|| contract.deadline(priority, n.completed_at)),
                prior_reader: n.prior_reader,
                escalations: 0,
                widened: BTreeSet::new(),
                assignee: None,
                sequence: state.next_sequence,
            })])
        }
        Command::AssignPending => Ok(assign_push(state, policy, now, None)),
        Command::Assign { study } => {
            let s = state.study(study)?;
            match (&s.assignee, state.mode(policy, s)) {
                (Some(assignee), _) => Err(Error::AlreadyAssigned { study, assignee: assignee.clone() }),
                (None, Some(AssignmentMode::Push)) => Ok(assign_push(state, policy, now, Some(s))),
                (None, mode) => Err(Error::WrongMode {
                    study,
                    mode: mode.unwrap_or(AssignmentMode::Pull),
                    action: "assigned: readers claim it",
                }),
            }
        }
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
            let earlier = merged(state.queue.for_reader(policy, r, |_| true))
                .take_while(|p| p.deadline < s.deadline)
                .filter(|p| p.priority == Priority::Stat && p.study != s.id)
                .find(|p| state.studies.get(&p.study).is_some_and(|o| rules::eligible(r, o, &ctx)));
            if let Some(earlier) = earlier {
                return Err(Error::CherryPick { study, earlier: earlier.study });
            }
            Ok(vec![Event::AssignmentClaimed { study, reader, delivery_model: policy.delivery_model(r, s) }])
        }
        Command::ClaimNext { reader } => {
            let r = state.reader(&reader)?;
            let next = state
                .offers(policy, now, &reader, |c| c.mode == AssignmentMode::Pull, 1)?
                .into_iter()
                .next()
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
            // A group moves its own readers' work, or work no one holds.
            if let Some(holder) = &s.assignee {
                let holder_group = state.readers.get(holder).map_or("", |r| r.group.as_str());
                if holder_group != group {
                    let (holder, holder_group) = (holder.clone(), holder_group.to_owned());
                    return Err(Error::HeldByAnotherGroup { study, holder, holder_group });
                }
            }
            state.check_eligible(policy, now, target, s)?;
            Ok(vec![Event::AssignmentReassigned { study, from: s.assignee.clone(), to, by_group: group }])
        }
        Command::Tick => Ok(timers(state, policy, now)),
        Command::Triage { study, flagged, suggested, model } => {
            let Some(s) = state.studies.get(&study) else {
                let before = state.pending_triage.get(&study);
                let priority =
                    suggested.unwrap_or(Priority::Routine).min(before.map_or(Priority::Routine, |t| t.priority));
                let priority = if flagged && suggested.is_none() { priority.raised() } else { priority };
                return Ok(vec![Event::StudyTriaged { study, ai_flagged: flagged, priority, deadline: None, model }]);
            };
            let priority = match suggested {
                Some(p) => p.min(s.priority),
                None if flagged => s.priority.raised(),
                None => s.priority,
            };
            if priority == s.priority && (s.ai_flagged || !flagged) {
                return Ok(vec![]);
            }
            let contract = policy
                .contracts
                .get(&s.contract)
                .ok_or_else(|| Error::UnknownContract { study, contract: s.contract.clone() })?;
            let deadline = contract.deadline(priority, s.completed_at).min(s.deadline);
            Ok(vec![Event::StudyTriaged {
                study,
                ai_flagged: s.ai_flagged || flagged,
                priority,
                deadline: Some(deadline),
                model,
            }])
        }
        Command::ReadSigned { study, read_type, reader, signed_at } => {
            let s = state.study(study)?;
            if s.read_type != read_type {
                return Err(Error::WrongRead { study, signed: read_type, open: s.read_type });
            }
            let contract = policy
                .contracts
                .get(&s.contract)
                .ok_or_else(|| Error::UnknownContract { study, contract: s.contract.clone() })?;
            let group = state.readers.get(&reader).map(|r| r.group.clone()).unwrap_or_default();
            // A signature is a clinical fact: the read is done even when the
            // signer lost the assignment to a racing release or reassignment.
            // Whoever holds it now is released first (their capacity freed).
            let mut events = Vec::new();
            if let Some(holder) = s.assignee.as_ref().filter(|h| **h != reader) {
                let reason = format!("the read was signed by {reader}");
                events.push(Event::AssignmentReleased { study, reader: holder.clone(), reason });
            }
            events.push(Event::AssignmentCompleted { study, reader: reader.clone(), read_type, signed_at, group });
            // A preliminary is followed by the final where the contract has
            // finals. The preliminary answered the urgent question: the final
            // is routine work, due the contract's routine turnaround after
            // the preliminary's signature, and never by the same reader.
            let finals = contract.delivery.get(&ReadType::Final).is_some_and(|m| !m.is_empty());
            if read_type == ReadType::Preliminary && finals {
                events.push(Event::StudyQueued(Study {
                    read_type: ReadType::Final,
                    priority: Priority::Routine,
                    deadline: contract.deadline(Priority::Routine, signed_at),
                    prior_reader: Some(reader),
                    escalations: 0,
                    widened: BTreeSet::new(),
                    assignee: None,
                    sequence: state.next_sequence,
                    ..s.clone()
                }));
            }
            Ok(events)
        }
    }
}

/// Push assignment: repeatedly the lowest eligible (study, reader) pair in
/// the total order, until no unassigned push study has an eligible reader.
///
/// Each push bucket of the queue gets its candidate readers once (reading
/// group, modality, credential, on shift: none of which an assignment
/// changes); the rules then decide each pair with the decision's own load.
/// A bucket is walked in the order's study-level prefix, so it stops at its
/// first run of equal prefixes with an eligible pair, or once it cannot beat
/// the best pair found so far. With `only`, that one study's bucket and
/// that study alone are considered.
fn assign_push(state: &State, policy: &Policy, now: UnixMicros, only: Option<&Study>) -> Vec<Event> {
    let only = only.map(Place::of);
    // Many readers are asked at one moment: local time once per time zone,
    // the lane's delivery model once per reader region.
    let mut local: BTreeMap<&str, Option<LocalTime>> = BTreeMap::new();
    let push: Vec<(&Bucket, Vec<&Reader>)> = state
        .queue
        .buckets()
        .filter(|(_, bucket)| only.is_none_or(|p| bucket.contains(&p)))
        .filter_map(|(key, bucket)| {
            let contract = policy.contracts.get(key.contract).filter(|c| c.mode == AssignmentMode::Push)?;
            let mut offered_to_region: BTreeMap<&str, bool> = BTreeMap::new();
            let readers: Vec<&Reader> = contract
                .groups
                .iter()
                .filter_map(|g| state.groups.get(g))
                .flatten()
                .filter_map(|id| state.readers.get(id))
                .filter(|r| {
                    r.availability == Availability::Available
                        && r.modalities.contains(key.modality)
                        && r.read_types.contains(&key.lane.read_type)
                        && local
                            .entry(r.time_zone.as_str())
                            .or_insert_with(|| LocalTime::of(&r.time_zone, now))
                            .is_some_and(|t| r.on_shift_at(t))
                        && *offered_to_region
                            .entry(r.region.as_str())
                            .or_insert_with(|| key.lane.offered_to(policy, key.contract, r))
                        && r.credentials.iter().any(|c| c.tenant == key.tenant && c.facility == key.facility)
                })
                .collect();
            (!readers.is_empty()).then_some((bucket, readers))
        })
        .collect();
    // What this decision has assigned so far, over the state.
    let mut taken: BTreeSet<Uuid> = BTreeSet::new();
    let mut load: BTreeMap<&str, Load> = BTreeMap::new();
    let mut events = Vec::new();
    loop {
        let mut best: Option<(Rank, &Study, &Reader, DeliveryModel)> = None;
        for (bucket, readers) in &push {
            let mut tie = None;
            for place in bucket.iter().filter(|p| !taken.contains(&p.study) && only.is_none_or(|o| o == **p)) {
                if tie.is_some_and(|t| t != place.prefix())
                    || best.as_ref().is_some_and(|b| place.prefix() > (b.0.deadline, b.0.priority))
                {
                    break;
                }
                let Some(s) = state.studies.get(&place.study) else { continue };
                for r in readers {
                    let l = load.get(r.id.as_str()).or_else(|| state.load.get(&r.id));
                    let ctx = Context { policy, now, open_assignments: l.map_or(0, |l| l.open), on_shift: true };
                    if !rules::eligible(r, s, &ctx) {
                        continue;
                    }
                    tie = Some(place.prefix());
                    let situation = situation(policy, r, s, l);
                    let rk = rank(s, r, &situation);
                    if best.as_ref().is_none_or(|b| rk < b.0) {
                        best = Some((rk, s, r, situation.delivery_model));
                    }
                }
            }
        }
        let Some((_, study, reader, delivery_model)) = best else { return events };
        load.entry(reader.id.as_str())
            .or_insert_with(|| state.load.get(&reader.id).cloned().unwrap_or_default())
            .take(study);
        taken.insert(study.id);
        events.push(Event::StudyAssigned { study: study.id, reader: reader.id.clone(), delivery_model });
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
            events.push(Event::SlaBreached {
                study: s.id,
                priority: s.priority,
                deadline: s.deadline,
                read_type: Some(s.read_type),
                contract: s.contract.clone(),
            });
        }
    }
    events
}

/// Folds one event into the state.
pub fn apply(mut state: State, event: &Event) -> State {
    match event {
        Event::StudyUnroutable(u) => {
            let list = state.unroutable.entry(u.tenant.clone()).or_default();
            if !list.iter().any(|x| x.study == u.study) {
                list.push_back(u.clone());
                while list.len() > UNROUTABLE_KEPT {
                    list.pop_front();
                }
            }
        }
        Event::ReaderRegistered(r) => {
            if let Some(old) = state.readers.get(&r.id)
                && let Some(members) = state.groups.get_mut(&old.group)
            {
                members.remove(&r.id);
            }
            state.groups.entry(r.group.clone()).or_default().insert(r.id.clone());
            state.readers.insert(r.id.clone(), r.clone());
        }
        Event::ReaderUpdated { reader, profile } => {
            if let Some(r) = state.readers.get_mut(reader) {
                r.subspecialties = profile.subspecialties.clone();
                r.modalities = profile.modalities.clone();
                r.read_types = profile.read_types.clone();
                r.shifts = profile.shifts.clone();
                r.capacity = profile.capacity;
            }
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
            state.pending_triage.remove(&s.id);
            if let Some(old) = state.studies.insert(s.id, s.clone())
                && old.assignee.is_none()
            {
                state.queue.remove(&old);
            }
            if s.assignee.is_none() {
                state.queue.insert(s);
            }
        }
        Event::StudyAssigned { study, reader, .. } | Event::AssignmentClaimed { study, reader, .. } => {
            state.change_study(study, |s, load| {
                s.assignee = Some(reader.clone());
                load.entry(reader.clone()).or_default().take(s);
            });
        }
        Event::AssignmentReleased { study, reader, .. } => {
            state.change_study(study, |s, load| {
                s.assignee = None;
                if let Some(l) = load.get_mut(reader) {
                    l.give_back(s);
                }
            });
        }
        Event::AssignmentReassigned { study, from, to, .. } => {
            state.change_study(study, |s, load| {
                s.assignee = Some(to.clone());
                if let Some(l) = from.as_ref().and_then(|f| load.get_mut(f)) {
                    l.give_back(s);
                }
                load.entry(to.clone()).or_default().take(s);
            });
        }
        Event::AssignmentEscalated { study, level, priority, widened, .. } => {
            state.change_study(study, |s, _| {
                s.escalations = *level;
                s.priority = *priority;
                if let Some(w) = widened {
                    s.widened.insert(*w);
                }
            });
        }
        Event::SlaBreached { study, .. } => {
            state.breached.insert(*study);
        }
        Event::AssignmentCompleted { study, reader, .. } => {
            if let Some(s) = state.studies.remove(study) {
                if s.assignee.is_none() {
                    state.queue.remove(&s);
                }
                // Only a holder gives work back (a signer who lost the read
                // holds none of it).
                if s.assignee.as_deref() == Some(reader.as_str())
                    && let Some(l) = state.load.get_mut(reader)
                {
                    l.give_back(&s);
                }
            }
            // The read that follows has an SLA of its own.
            state.breached.remove(study);
        }
        Event::StudyTriaged { study, ai_flagged, priority, deadline, .. } => {
            if state.studies.contains_key(study) {
                state.change_study(study, |s, _| {
                    s.ai_flagged = *ai_flagged;
                    s.priority = *priority;
                    if let Some(d) = deadline {
                        s.deadline = *d;
                    }
                });
            } else {
                state.pending_triage.insert(*study, Triage { ai_flagged: *ai_flagged, priority: *priority });
            }
        }
    }
    state
}
