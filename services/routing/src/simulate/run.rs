//! One policy over the simulated day: the routing domain's `decide` and
//! `apply` with the simulated clock, readers who read what they hold one
//! study at a time, and the day's arrivals. No sleeps, no I/O.
//!
//! Each step (`day.step_seconds`): studies that arrived are queued through
//! routing's own intake; reads that ended are signed (a signed preliminary
//! hands over to its final); then the policy decides — Meridian's: timers
//! (escalation, breach), push assignment and `ClaimNext` for every idle
//! on-shift reader; FIFO: every idle reader takes the oldest study the rules
//! let them read, with no priority order and no escalation. A reader who is
//! idle starts the study they hold that is due first; one off shift gives
//! back what they have not started.

use std::collections::{BTreeMap, BTreeSet};

use meridian_events::UnixMicros;
use serde::Serialize;
use uuid::Uuid;

use super::day::Arrival;
use super::scenario::Scenario;
use crate::domain::intake::{self, Completed};
use crate::domain::model::{Availability, LocalTime, Priority, ReadType};
use crate::domain::policy::Policy;
use crate::domain::rules::{self, Context};
use crate::domain::worklist::{self, Command, Event, State};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Meridian's routing: the total order, escalation, push and pull.
    Meridian,
    /// A naive shared worklist in arrival order, no escalation.
    Fifo,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Meridian => "meridian",
            Strategy::Fifo => "fifo",
        }
    }
}

/// What became of a study's first read.
#[derive(Clone, Debug, Serialize)]
pub struct StudyOutcome {
    pub study: Uuid,
    pub stream: String,
    pub contract: String,
    /// As ordered, before any escalation.
    pub priority: Priority,
    pub arrived: UnixMicros,
    pub deadline: UnixMicros,
    pub signed: Option<UnixMicros>,
}

impl StudyOutcome {
    pub fn met(&self) -> bool {
        self.signed.is_some_and(|s| s <= self.deadline)
    }
}

/// The worklist over the day, every step.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub at: UnixMicros,
    /// Unassigned studies.
    pub queue_depth: usize,
    /// First reads not yet signed and past half their SLA.
    pub at_risk: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReaderUse {
    pub reader: String,
    pub group: String,
    pub region: String,
    pub on_shift_minutes: f64,
    pub reading_minutes: f64,
    pub reads: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub strategy: Strategy,
    pub studies: Vec<StudyOutcome>,
    /// Arrivals whose tenant has no contract.
    pub unrouted: usize,
    pub finals_signed: usize,
    pub samples: Vec<Sample>,
    /// Escalation level → how many.
    pub escalations: BTreeMap<u8, u32>,
    pub readers: Vec<ReaderUse>,
    /// Every command decided, with its moment (for replaying elsewhere).
    #[serde(skip)]
    pub trace: Vec<(Command, UnixMicros)>,
    /// Every event decided, in order.
    #[serde(skip)]
    pub events: Vec<Event>,
}

/// A FIFO line: contract, facility, modality, read type.
type Line = (String, String, String, ReadType);

fn line(s: &crate::domain::model::Study) -> Line {
    (s.contract.clone(), s.facility.clone(), s.modality.clone(), s.read_type)
}

/// What one reader is doing.
#[derive(Default)]
struct Desk {
    reading: Option<(Uuid, UnixMicros)>,
    held: BTreeSet<Uuid>,
    use_: ReaderUse,
}

struct Day<'a> {
    policy: Policy,
    strategy: Strategy,
    state: State,
    desks: BTreeMap<String, Desk>,
    /// Unassigned studies by arrival, for FIFO, in one line per (contract,
    /// facility, modality, read type), so a reader walks only the lines
    /// they may read.
    arrival_order: BTreeMap<Line, BTreeMap<u64, Uuid>>,
    read_time: BTreeMap<Uuid, i64>,
    outcomes: BTreeMap<Uuid, usize>,
    out: Outcome,
    scenario: &'a Scenario,
    keep_trace: bool,
}

impl Day<'_> {
    /// Decides and applies one command, keeping the books. A refusal (no
    /// study to claim, say) is part of the day, not an error.
    fn exec(&mut self, command: Command, now: UnixMicros) {
        if self.keep_trace {
            self.out.trace.push((command.clone(), now));
        }
        if let Ok(events) = worklist::decide(&self.state, &self.policy, command, now) {
            for e in events {
                self.record(e);
            }
        }
    }

    fn record(&mut self, e: Event) {
        match &e {
            Event::StudyQueued(s) => {
                self.arrival_order.entry(line(s)).or_default().insert(s.sequence, s.id);
            }
            Event::StudyAssigned { study, reader, .. } | Event::AssignmentClaimed { study, reader, .. } => {
                self.take(*study, reader);
            }
            Event::AssignmentReassigned { study, from, to, .. } => {
                if let Some(d) = from.as_ref().and_then(|f| self.desks.get_mut(f)) {
                    d.held.remove(study);
                }
                self.take(*study, to);
            }
            Event::AssignmentReleased { study, reader, .. } => {
                if let Some(d) = self.desks.get_mut(reader) {
                    d.held.remove(study);
                }
                if let Some(s) = self.state.studies.get(study) {
                    self.arrival_order.entry(line(s)).or_default().insert(s.sequence, *study);
                }
            }
            Event::AssignmentCompleted { study, reader, read_type, signed_at, .. } => {
                if let Some(d) = self.desks.get_mut(reader) {
                    d.held.remove(study);
                    d.use_.reads += 1;
                }
                if let Some(i) = self.outcomes.get(study)
                    && self.out.studies[*i].signed.is_none()
                {
                    self.out.studies[*i].signed = Some(*signed_at);
                }
                if *read_type == ReadType::Final {
                    self.out.finals_signed += 1;
                }
            }
            Event::AssignmentEscalated { level, .. } => *self.out.escalations.entry(*level).or_default() += 1,
            _ => {}
        }
        self.state = worklist::apply(std::mem::take(&mut self.state), &e);
        if self.keep_trace {
            self.out.events.push(e);
        }
    }

    fn take(&mut self, study: Uuid, reader: &str) {
        if let Some(s) = self.state.studies.get(&study)
            && let Some(waiting) = self.arrival_order.get_mut(&line(s))
        {
            waiting.remove(&s.sequence);
        }
        if let Some(d) = self.desks.get_mut(reader) {
            d.held.insert(study);
        }
    }

    fn arrive(&mut self, a: &Arrival) {
        let spec = &self.scenario.arrivals[a.stream];
        let completed = Completed {
            study: a.study,
            tenant: spec.tenant.clone(),
            home_region: spec.home_region.clone(),
            facility: spec.facility.clone(),
            origin_jurisdiction: spec.jurisdiction.clone(),
            modality: spec.modality.clone(),
            body_part: spec.body_part.clone(),
            patient_key: Some(a.patient),
            procedure_code: spec.name.clone(),
            requested_priority: Some(a.priority),
            completed_at: a.at,
            // The scenario names no facility hours: a stream's study goes
            // to its tenant's first contract, as ingest would choose it
            // from a configuration with one contract per tenant.
            contract: self
                .policy
                .contracts
                .values()
                .find(|k| k.tenant == spec.tenant)
                .map(|k| k.name.clone())
                .unwrap_or_default(),
            unroutable_reason: String::new(),
        };
        // Routing's own intake decides the read, subspecialty, RVUs.
        let Ok(new) = intake::queue(&self.policy, &completed) else {
            self.out.unrouted += 1;
            return;
        };
        let contract = new.contract.clone();
        self.read_time.insert(a.study, a.read);
        self.exec(Command::Queue(new), a.at);
        if let Some(s) = self.state.studies.get(&a.study) {
            self.outcomes.insert(a.study, self.out.studies.len());
            self.out.studies.push(StudyOutcome {
                study: a.study,
                stream: spec.name.clone(),
                contract,
                priority: a.priority,
                arrived: a.at,
                deadline: s.deadline,
                signed: None,
            });
        }
    }

    /// FIFO: the oldest unassigned study the rules let `reader` read. Each
    /// line the reader's contracts, credentials and modalities reach gives
    /// its oldest eligible study; the oldest of those wins.
    fn fifo_claim(&mut self, reader: &str, now: UnixMicros) {
        let Some(r) = self.state.readers.get(reader) else { return };
        let open = self.state.load.get(reader).map_or(0, |l| l.open);
        let ctx = Context { policy: &self.policy, now, open_assignments: open, on_shift: true };
        let mut pick: Option<(u64, Uuid)> = None;
        for contract in self.policy.contracts.values().filter(|c| c.groups.contains(&r.group)) {
            for c in r.credentials.iter().filter(|c| c.tenant == contract.tenant) {
                for (modality, read_type) in r.modalities.iter().flat_map(|m| r.read_types.iter().map(move |t| (m, t)))
                {
                    let key = (contract.name.clone(), c.facility.clone(), modality.clone(), *read_type);
                    let Some(waiting) = self.arrival_order.get(&key) else { continue };
                    let first = waiting
                        .iter()
                        .take_while(|(seq, _)| pick.is_none_or(|(best, _)| **seq < best))
                        .find(|(_, id)| self.state.studies.get(id).is_some_and(|s| rules::eligible(r, s, &ctx)));
                    if let Some((seq, id)) = first {
                        pick = Some((*seq, *id));
                    }
                }
            }
        }
        if let Some((_, study)) = pick
            && let Some(s) = self.state.studies.get(&study)
        {
            let delivery_model = self.policy.delivery_model(r, s);
            self.record(Event::AssignmentClaimed { study, reader: reader.to_owned(), delivery_model });
        }
    }
}

/// Runs `strategy` over the scenario's day. With `keep_trace`, the outcome
/// carries every command and event (for replaying them elsewhere).
pub fn run(scenario: &Scenario, arrivals: &[Arrival], strategy: Strategy, keep_trace: bool) -> Outcome {
    let start = scenario.start().unwrap_or(UnixMicros(0));
    let step = i64::from(scenario.day.step_seconds) * 1_000_000;
    let last_arrival = UnixMicros(start.0 + i64::from(scenario.day.hours) * 3_600_000_000);
    let end = UnixMicros(last_arrival.0 + i64::from(scenario.day.drain_hours) * 3_600_000_000);
    let mut day = Day {
        policy: scenario.policy(),
        strategy,
        state: State::default(),
        desks: BTreeMap::new(),
        arrival_order: BTreeMap::new(),
        read_time: BTreeMap::new(),
        outcomes: BTreeMap::new(),
        out: Outcome {
            strategy,
            studies: Vec::new(),
            unrouted: 0,
            finals_signed: 0,
            samples: Vec::new(),
            escalations: BTreeMap::new(),
            readers: Vec::new(),
            trace: Vec::new(),
            events: Vec::new(),
        },
        scenario,
        keep_trace,
    };
    for r in scenario.roster() {
        let use_ =
            ReaderUse { reader: r.id.clone(), group: r.group.clone(), region: r.region.clone(), ..Default::default() };
        day.desks.insert(r.id.clone(), Desk { use_, ..Default::default() });
        day.exec(Command::RegisterReader(r), start);
    }
    let mut next = 0;
    let mut t = start;
    while t <= end {
        while let Some(a) = arrivals.get(next).filter(|a| a.at <= t) {
            day.arrive(a);
            next += 1;
        }
        // Reads that ended are signed at the moment they ended.
        let ended: Vec<(String, Uuid, UnixMicros)> = day
            .desks
            .iter()
            .filter_map(|(id, d)| d.reading.filter(|(_, until)| *until <= t).map(|(s, until)| (id.clone(), s, until)))
            .collect();
        for (reader, study, signed_at) in ended {
            if let Some(d) = day.desks.get_mut(&reader) {
                d.reading = None;
            }
            let Some(read_type) = day.state.studies.get(&study).map(|s| s.read_type) else { continue };
            day.exec(Command::ReadSigned { study, read_type, reader, signed_at }, signed_at);
        }
        // Who is on shift now: local time once per zone.
        let mut local: BTreeMap<String, Option<LocalTime>> = BTreeMap::new();
        let on_shift: BTreeMap<String, bool> = day
            .state
            .readers
            .values()
            .map(|r| {
                let lt = *local.entry(r.time_zone.clone()).or_insert_with(|| LocalTime::of(&r.time_zone, t));
                (r.id.clone(), r.availability == Availability::Available && lt.is_some_and(|lt| r.on_shift_at(lt)))
            })
            .collect();
        let idle: Vec<String> = day
            .desks
            .iter()
            .filter(|(id, d)| on_shift.get(*id).copied().unwrap_or(false) && d.reading.is_none() && d.held.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        match day.strategy {
            Strategy::Meridian => {
                day.exec(Command::Tick, t);
                day.exec(Command::AssignPending, t);
                for reader in idle {
                    day.exec(Command::ClaimNext { reader }, t);
                }
            }
            Strategy::Fifo => {
                for reader in idle {
                    day.fifo_claim(&reader, t);
                }
            }
        }
        // Idle readers start what they hold: Meridian the study due first,
        // FIFO the oldest. Off shift, they give back what they have not started.
        let ids: Vec<String> = day.desks.keys().cloned().collect();
        for id in ids {
            let working = on_shift.get(&id).copied().unwrap_or(false);
            let Some(desk) = day.desks.get(&id) else { continue };
            if desk.reading.is_some() || desk.held.is_empty() {
                continue;
            }
            if !working {
                let held: Vec<Uuid> = desk.held.iter().copied().collect();
                for study in held {
                    day.exec(Command::Release { reader: id.clone(), study, reason: "shift ended".into() }, t);
                }
                continue;
            }
            let studies = &day.state.studies;
            let first = desk.held.iter().filter_map(|s| studies.get(s)).min_by_key(|s| match day.strategy {
                Strategy::Meridian => (s.deadline, s.priority, s.sequence),
                Strategy::Fifo => (UnixMicros(0), Priority::Stat, s.sequence),
            });
            if let Some(s) = first {
                let until = UnixMicros(t.0 + day.read_time.get(&s.id).copied().unwrap_or(step));
                let study = s.id;
                if let Some(d) = day.desks.get_mut(&id) {
                    d.reading = Some((study, until));
                }
            }
        }
        // The books: time on shift and reading, the queue, the risk.
        for (id, d) in day.desks.iter_mut() {
            if on_shift.get(id).copied().unwrap_or(false) {
                d.use_.on_shift_minutes += step as f64 / 60e6;
            }
            if d.reading.is_some() {
                d.use_.reading_minutes += step as f64 / 60e6;
            }
        }
        let at_risk = day
            .out
            .studies
            .iter()
            .filter(|o| o.signed.is_none() && t.0 >= o.arrived.0 + (o.deadline.0 - o.arrived.0) / 2)
            .count();
        day.out.samples.push(Sample { at: t, queue_depth: day.state.queue().len(), at_risk });
        t = UnixMicros(t.0 + step);
    }
    day.out.readers = day.desks.into_values().map(|d| d.use_).collect();
    day.out
}
