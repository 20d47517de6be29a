//! Routing on a region's event log.
//!
//! The state is a projection of the routing topic. A command is decided
//! against it under one lock (routing is the only writer of its events in
//! a region), its events get envelopes with deterministic ids and the next
//! version of their aggregate, are appended as one atomic batch, and only
//! then applied: a failed append changes nothing.
//!
//! Event ids: a request carrying an idempotency key derives its events'
//! ids from (tenant, key, type, ordinal), so a retried request appends
//! nothing new; timer events derive theirs from (study, timer, deadline),
//! so a restart cannot double an escalation or a breach.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_events::{DataClass, EventId, EventMeta, KeyStore, UnixMicros};
use meridian_log::skips::Skips;
use meridian_log::{EventLog, Outgoing, Position, TopicName};
use meridian_projection::live::Live;
use meridian_projection::run::{Rebuilt, Resumed, Snapshotter, catch_up};
use meridian_projection::writers::OwnRegionWins;
use meridian_projection::{Event as Logged, Projection};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::adapters::events::{READER_AGGREGATE, aggregate, from_payload, to_payload};
use crate::answers::{Answers, Retry};
use crate::domain::policy::Policy;
use crate::domain::worklist::{self, Command, Event, State};

/// The routing state as folded from the log, with each aggregate's version.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Folded {
    pub worklist: State,
    pub versions: BTreeMap<Uuid, u64>,
    /// Keyed requests' answers, for their retries (bounded: see [`Answers`]).
    #[serde(default)]
    pub answers: Answers,
    /// Each study's trace, as its StudyQueued carried it, while it is on
    /// the worklist: a timer's decision about it (a push, an escalation)
    /// is a step of that trace.
    #[serde(default)]
    pub traces: BTreeMap<Uuid, String>,
    /// Region → its studies on the worklist, folded from the copies of its
    /// routing topic: what this region shows its readers of studies homed
    /// there (opaque ids and codes only). Commands about them go to their
    /// home region; nothing here decides about them.
    #[serde(default)]
    pub elsewhere: BTreeMap<String, State>,
    /// Which reader events count: their own region's, once one arrived
    /// (a copy this region once registered from configuration no longer).
    #[serde(default)]
    pub readers_written: OwnRegionWins,
}

impl Folded {
    /// What `reader` is offered here, at most `limit`: this region's
    /// studies in the worklist's order and, placed among them by deadline
    /// and priority, the studies homed elsewhere that their regions would
    /// offer them (claimed in those regions).
    pub fn offers(
        &self,
        policy: &Policy,
        now: UnixMicros,
        reader: &str,
        limit: usize,
    ) -> Result<Vec<&crate::domain::model::Study>, worklist::Error> {
        let mut offered = self.worklist.offers(policy, now, reader, |_| true, limit)?;
        let Some(r) = self.worklist.readers.get(reader) else { return Ok(offered) };
        for theirs in self.elsewhere.values() {
            offered.extend(theirs.offers_to(policy, now, r, |_| true, limit));
        }
        // Stable: this region's order holds among its own.
        offered.sort_by_key(|s| (s.deadline, s.priority));
        offered.truncate(limit);
        Ok(offered)
    }

    /// The studies assigned to `reader`, here and shown here from their
    /// home regions, due first first.
    pub fn assignments(&self, reader: &str) -> Result<Vec<&crate::domain::model::Study>, worklist::Error> {
        let mut held = self.worklist.assignments(reader)?;
        for theirs in self.elsewhere.values() {
            held.extend(theirs.studies.values().filter(|s| s.assignee.as_deref() == Some(reader)));
        }
        held.sort_by_key(|s| (s.deadline, s.priority));
        Ok(held)
    }

    /// The region a study shown here is homed in, when that is another.
    pub fn homed_elsewhere(&self, id: &Uuid) -> Option<&str> {
        if self.worklist.studies.contains_key(id) {
            return None;
        }
        self.elsewhere.values().find_map(|s| s.studies.get(id)).map(|s| s.home_region.as_str())
    }

    /// A study on this region's worklist or shown here from its home region.
    pub fn study(&self, id: &Uuid) -> Option<&crate::domain::model::Study> {
        self.worklist.studies.get(id).or_else(|| self.elsewhere.values().find_map(|s| s.studies.get(id)))
    }
}

/// A reader event's reader, and the region a registration says they sit in.
fn reader_of(e: &Event) -> Option<(&str, Option<&str>)> {
    match e {
        Event::ReaderRegistered(r) => Some((&r.id, Some(&r.region))),
        Event::ReaderUpdated { reader, .. }
        | Event::AvailabilityChanged { reader, .. }
        | Event::LicenceUpdated { reader, .. }
        | Event::CredentialUpdated { reader, .. } => Some((reader, None)),
        _ => None,
    }
}

/// The projection of the routing topic.
pub struct RoutingProjection;

impl Projection for RoutingProjection {
    type State = Folded;
    const NAME: &'static str = "routing.worklist";

    fn apply(mut state: Folded, event: &Logged<'_>) -> Folded {
        let e = match from_payload(event.payload) {
            Ok(Some(e)) => e,
            Ok(None) => return state,
            // Routing wrote it, so this is a bug or a newer writer: counted by
            // the projector as applied, logged here, never a crash.
            Err(e) => {
                tracing::error!(error = %e, event = %event.envelope.meta.event_id, "routing event does not map");
                return state;
            }
        };
        let meta = &event.envelope.meta;
        // A reader's events are written by the region they sit in; a copy
        // another region once made from configuration counts only until
        // theirs arrive, and a copy of it is never taken.
        if let Some((reader, registered_in)) = reader_of(&e) {
            if !state.readers_written.takes(reader, registered_in, &meta.home_region, event.copied) {
                return state;
            }
            state.worklist = worklist::apply(state.worklist, &e);
            if !event.copied {
                state.versions.insert(meta.aggregate_id, meta.aggregate_version);
            }
            return state;
        }
        if event.copied {
            // Another region's study, shown to this region's readers.
            if !matches!(e, Event::StudyUnroutable(_)) {
                let theirs = state.elsewhere.remove(&meta.home_region).unwrap_or_default();
                state.elsewhere.insert(meta.home_region.clone(), worklist::apply(theirs, &e));
            }
            return state;
        }
        state.answers.record(meta.event_id, &e, meta.occurred_at);
        state.worklist = worklist::apply(state.worklist, &e);
        state.versions.insert(meta.aggregate_id, meta.aggregate_version);
        if let (Event::StudyQueued(_), Some(trace)) = (&e, &meta.traceparent)
            && state.worklist.studies.contains_key(&meta.aggregate_id)
        {
            state.traces.insert(meta.aggregate_id, trace.clone());
        }
        // A study leaves the worklist by its own events, usually;
        // whatever took it, its trace goes with it.
        if state.traces.len() > state.worklist.studies.len() {
            let held = &state.worklist.studies;
            state.traces.retain(|study, _| held.contains_key(study));
        } else if !state.worklist.studies.contains_key(&meta.aggregate_id) {
            state.traces.remove(&meta.aggregate_id);
        }
        state
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Domain(#[from] worklist::Error),
    #[error("routing log: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("routing projection: {0}")]
    Projection(#[from] meridian_projection::Error),
    #[error("routing envelope: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
    /// A change to a reader who sits in another region: only their region
    /// writes their events (the others fold its copies).
    #[error("reader {reader} sits in {region}: change them through {region}'s routing")]
    ReaderElsewhere { reader: String, region: String },
    /// An idempotency key sent again with another request.
    #[error("idempotency key {key:?} was already used for another request: {first}")]
    KeyReused { key: String, first: String },
}

/// Who asked, for event ids: an idempotency key makes a retry a no-op.
#[derive(Clone, Debug)]
pub enum Cause {
    Request {
        tenant: String,
        idempotency_key: String,
    },
    /// A timer or a background pass; ids come from the events themselves.
    Timer,
    /// A request without an idempotency key: fresh UUIDv7 ids.
    Unkeyed,
    /// Another event: ids derived from it, so a redelivery reproduces them.
    Derived(EventId),
}

/// Routing's consumer name on the ingest topic.
pub const INTAKE: &str = "routing.intake";

/// Inputs decided and committed as one step: a backlog of completed
/// studies is one commit (one sync) per this many, not one each.
const INTAKE_BATCH: usize = 256;

/// The streams routing takes input from, in its region.
const INPUTS: [&str; 3] = ["ingest", "inference", "reporting"];

/// The topics of [`INPUTS`] in `region`.
pub fn intake_topics(region: &str) -> Vec<TopicName> {
    INPUTS.iter().filter_map(|stream| TopicName::new(region, DataClass::Operational, stream).ok()).collect()
}

/// A command routing takes from an input: the cause, the command, and the
/// moment it is decided at.
type Input = (EventId, Command, UnixMicros);

/// Why an input record was passed without a command: a reason as skip
/// counts name it, and what was wrong.
type Passed = (&'static str, String);

/// What a record of routing's inputs asks of it: the command, the moment
/// it is decided at, and the event that caused it. StudyCompleted queues a
/// study, and so does StudyStarted when the order asked for STAT (it is
/// queued at its first instance, not after the quiet period);
/// AiTriageCompleted triages; ReportSigned ends a read. A completed study
/// no contract takes is marked unroutable. Other events ask nothing
/// (`Ok(None)`); a record that does not read, or names what
/// routing cannot use, is passed with the reason (`Err`), counted and
/// logged by the caller.
fn input(record: &meridian_log::Record, policy: &Policy, region: &str) -> Result<Option<Input>, Passed> {
    use crate::domain::intake::{Completed, queue};
    use crate::domain::model::Priority;
    use meridian_events::payload::Payload;
    let envelope = record.envelope().map_err(|e| ("corrupt_envelope", e.to_string()))?;
    let cause = envelope.meta.event_id;
    let at = envelope.meta.occurred_at;
    let payload = envelope.open_plain().map_err(|e| (meridian_log::skips::reason(&e), e.to_string()))?;
    let c = match payload {
        Payload::StudyCompleted(c) => c,
        // The same facts, queued now: the start's moment is the clock's.
        Payload::StudyStarted(c) if Priority::parse(&c.requested_priority) == Some(Priority::Stat) => {
            meridian_proto::events::v1::StudyCompleted {
                study_id: c.study_id,
                facility: c.facility,
                origin_jurisdiction: c.origin_jurisdiction,
                modality: c.modality,
                body_part: c.body_part,
                patient_key: c.patient_key,
                procedure_code: c.procedure_code,
                requested_priority: c.requested_priority,
                contract: c.contract,
                unroutable_reason: c.unroutable_reason,
                ..Default::default()
            }
        }
        other => return triaged_or_signed(other, cause, at, region),
    };
    let study = study_id(&c.study_id)?;
    let completed = Completed {
        study,
        tenant: envelope.meta.tenant.clone(),
        home_region: region.to_owned(),
        facility: c.facility,
        origin_jurisdiction: c.origin_jurisdiction,
        modality: c.modality,
        body_part: c.body_part,
        patient_key: Uuid::parse_str(&c.patient_key).ok(),
        procedure_code: c.procedure_code,
        requested_priority: Priority::parse(&c.requested_priority),
        completed_at: c.completed_at.as_ref().map(UnixMicros::from_timestamp).unwrap_or(at),
        contract: c.contract,
        unroutable_reason: c.unroutable_reason,
    };
    let command = match queue(policy, &completed) {
        Ok(new) => Command::Queue(new),
        // Kept, with why, for the tenant to list: never dropped.
        Err(skip) => Command::MarkUnroutable(crate::domain::worklist::Unroutable {
            study,
            tenant: completed.tenant.clone(),
            facility: completed.facility.clone(),
            reason: skip.to_string(),
            completed_at: completed.completed_at,
        }),
    };
    Ok(Some((cause, command, completed.completed_at)))
}

fn study_id(text: &str) -> Result<Uuid, Passed> {
    Uuid::parse_str(text).map_err(|e| ("malformed_ids", format!("study id {text:?}: {e}")))
}

/// AiTriageCompleted, PeerReviewRequested and ReportSigned as routing's
/// commands.
fn triaged_or_signed(
    payload: meridian_events::payload::Payload,
    cause: EventId,
    at: UnixMicros,
    region: &str,
) -> Result<Option<Input>, Passed> {
    use crate::domain::model::{Priority, ReadType};
    use meridian_events::payload::Payload;
    match payload {
        Payload::AiTriageCompleted(t) => {
            let command = Command::Triage {
                study: study_id(&t.study_id)?,
                flagged: t.flagged,
                suggested: Priority::parse(&t.suggested_priority),
                model: t.model,
            };
            Ok(Some((cause, command, at)))
        }
        // The hospital's order met its study: its priority, raised like a
        // triage's (never lowered).
        Payload::OrderMatched(m) => {
            let suggested = Priority::parse(&m.priority)
                .ok_or_else(|| ("unknown_priority", format!("order priority {:?}", m.priority)))?;
            let command = Command::Triage {
                study: study_id(&m.study_id)?,
                flagged: false,
                suggested: Some(suggested),
                model: "order".into(),
            };
            Ok(Some((cause, command, at)))
        }
        // A blinded second read of a signed final, by anyone but its reader:
        // routine, due by the review's window.
        Payload::PeerReviewRequested(r) => {
            use crate::domain::model::ServiceType;
            let requested_at = r.requested_at.as_ref().map(UnixMicros::from_timestamp).unwrap_or(at);
            let new = crate::domain::worklist::NewStudy {
                id: study_id(&r.study_id)?,
                tenant: r.tenant,
                facility: r.facility,
                contract: r.contract,
                home_region: region.to_owned(),
                origin_jurisdiction: r.origin_jurisdiction,
                modality: r.modality,
                body_part: r.body_part,
                subspecialty: Some(r.subspecialty).filter(|s| !s.is_empty()),
                subspecialty_required: false,
                priority: Priority::Routine,
                service_type: ServiceType::StoreAndForward,
                read_type: ReadType::PeerReview,
                patient_key: None,
                rvu_milli: r.rvu_milli,
                ai_flagged: false,
                completed_at: requested_at,
                prior_reader: Some(r.reviewed_reader_id).filter(|s| !s.is_empty()),
                due: r.due.as_ref().map(UnixMicros::from_timestamp),
            };
            Ok(Some((cause, Command::Queue(new), requested_at)))
        }
        Payload::ReportSigned(r) => {
            let signed_at = r.signed_at.as_ref().map(UnixMicros::from_timestamp).unwrap_or(at);
            let read_type = ReadType::parse(&r.read_type)
                .ok_or_else(|| ("unknown_read_type", format!("read type {:?}", r.read_type)))?;
            let command =
                Command::ReadSigned { study: study_id(&r.study_id)?, read_type, reader: r.reader_id, signed_at };
            Ok(Some((cause, command, signed_at)))
        }
        _ => Ok(None),
    }
}

pub struct Routing {
    region: String,
    topic: TopicName,
    log: Arc<dyn EventLog>,
    keys: Arc<dyn KeyStore>,
    policy: Policy,
    projector: Live<RoutingProjection>,
    /// Counts state changes, so watchers learn that the worklist moved.
    changed: watch::Sender<u64>,
    /// Set when the region stops: intake returns between steps.
    stopping: std::sync::atomic::AtomicBool,
    /// Inputs intake passed, by reason.
    intake_skips: Skips,
    /// Intake's reader, kept between passes at the committed positions.
    intake_reader: tokio::sync::Mutex<Option<Box<dyn meridian_log::LogReader>>>,
    /// Other regions' routing topics copied here.
    copies: Vec<TopicName>,
    /// The reader of `copies`, kept between passes at the projection's
    /// positions.
    copies_reader: tokio::sync::Mutex<Option<Box<dyn meridian_log::LogReader>>>,
    /// Refuses changes to readers who sit in another region (see
    /// [`Routing::only_its_readers`]).
    only_its_readers: bool,
}

impl Routing {
    /// Opens the state from its snapshot and the tail of the routing topic
    /// of `region` and of `copies`, other regions' routing topics copied
    /// into its log (their readers, and the studies they show this
    /// region's readers).
    pub async fn open(
        region: &str,
        copies: Vec<TopicName>,
        log: Arc<dyn EventLog>,
        keys: Arc<dyn KeyStore>,
        policy: Policy,
        idle: Duration,
        snapshots: Snapshotter,
    ) -> Result<Routing, Error> {
        let topic = TopicName::new(region, DataClass::Operational, "routing")
            .map_err(|e| meridian_log::Error::UnknownTopic { topic: e.name })?;
        let mut starts = Vec::new();
        for t in std::iter::once(&topic).chain(&copies) {
            starts.extend((0..log.partitions(t).await?).map(|p| Position::start(t.clone(), p)));
        }
        let projector = Live::open(region, snapshots, starts, log.as_ref(), keys.as_ref(), idle).await?;
        Ok(Routing {
            region: region.to_owned(),
            topic,
            log,
            keys,
            policy,
            projector,
            changed: watch::Sender::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            intake_skips: Skips::new(INTAKE),
            intake_reader: tokio::sync::Mutex::new(None),
            copies,
            copies_reader: tokio::sync::Mutex::new(None),
            only_its_readers: false,
        })
    }

    /// Writes only the events of readers who sit in this region, as a
    /// region of a platform must (each reader's region is the one writer of
    /// their events; the others fold its copies). Without it, one worklist
    /// holds readers of every region: the simulator's and the benches' world.
    pub fn only_its_readers(mut self) -> Routing {
        self.only_its_readers = true;
        self
    }

    /// What intake passed without a command, by reason.
    pub fn intake_skips(&self) -> &Skips {
        &self.intake_skips
    }

    /// Makes [`intake`](Self::intake) return after the step it is on: the
    /// region is stopping. A step is never cut between its commit and its
    /// fold, so no later decision sees a state missing its own events.
    pub fn stop_intake(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Rebuilds the state from the routing topic and snapshots it; commands
    /// wait meanwhile.
    pub async fn rebuild(&self, idle: Duration) -> Result<Rebuilt, Error> {
        let rebuilt = self.projector.rebuild(self.log.as_ref(), self.keys.as_ref(), idle).await?;
        self.announce();
        Ok(rebuilt)
    }

    /// How the state was opened (snapshot, tail, time).
    pub fn opened(&self) -> &Resumed {
        self.projector.opened()
    }

    /// What the projection did with its input, by reason.
    pub async fn stats(&self) -> meridian_projection::Stats {
        self.projector.stats().await
    }

    /// Writes the state's snapshot when one is due (`force`: whenever
    /// anything changed since the last, as at shutdown); commands wait only
    /// while it is encoded.
    pub async fn snapshot(&self, force: bool) -> Result<(), Error> {
        Ok(self.projector.snapshot(force).await?)
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Wakes on every change to the state (a command, intake, catch-up).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn announce(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    /// Each priority's standing when the worklist is free this instant (a
    /// gauge's read, which must not wait); `None` while a decision holds it.
    pub fn standing_now(&self) -> Option<BTreeMap<crate::domain::model::Priority, worklist::Standing>> {
        self.projector.try_lock().map(|p| p.state().worklist.standing())
    }

    /// Reads under the lock, for queries.
    pub async fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.projector.lock().await.state().worklist)
    }

    /// Reads the whole fold under the lock: the worklist and the studies
    /// shown here from other regions.
    pub async fn read_folded<T>(&self, f: impl FnOnce(&Folded) -> T) -> T {
        f(self.projector.lock().await.state())
    }

    /// Decides `command` at `now`, appends its events, applies them.
    pub async fn execute(&self, command: Command, now: UnixMicros, cause: Cause) -> Result<Vec<Event>, Error> {
        self.execute_all(vec![(command, cause)], now).await
    }

    /// Decides `commands` in turn, each against the state the ones before it
    /// leave, and appends all their events as one batch: all land, or none
    /// and nothing changes. A refused command refuses the batch.
    pub async fn execute_all(&self, commands: Vec<(Command, Cause)>, now: UnixMicros) -> Result<Vec<Event>, Error> {
        let mut projector = self.projector.lock().await;
        let commands = commands.into_iter().map(|(command, cause)| (command, cause, now, None)).collect();
        let (events, batch, _) = self.decide_in_turn(projector.state(), commands, |e| Err(e.into()))?;
        // Nothing new (or only retries answered again): nothing to append.
        if batch.is_empty() {
            return Ok(events);
        }
        let appended = self.log.append(batch.clone()).await?;
        projector.feed_appended(batch, appended, self.keys.as_ref())?;
        self.announce();
        Ok(events)
    }

    /// Decides `commands` in turn, each against `state` as the ones before
    /// it leave it (a scratch copy, made only when a later command needs
    /// it), and enveloped; with how many commands decided any event. A
    /// refused command decides nothing and goes to `refused`, which may end
    /// the whole decision with an error.
    fn decide_in_turn(
        &self,
        state: &Folded,
        commands: Vec<(Command, Cause, UnixMicros, Option<tracing::Span>)>,
        mut refused: impl FnMut(worklist::Error) -> Result<(), Error>,
    ) -> Result<(Vec<Event>, Vec<Outgoing>, usize), Error> {
        let (mut events, mut batch, mut deciding) = (Vec::new(), Vec::new(), 0);
        let mut scratch: Option<Folded> = None;
        let last = commands.len().saturating_sub(1);
        for (i, (command, cause, now, span)) in commands.into_iter().enumerate() {
            // An input's events are appended in the trace of the event that
            // caused them (a request's, in its call's).
            let _in_trace = span.as_ref().map(tracing::Span::enter);
            let folded = scratch.as_ref().unwrap_or(state);
            if let Cause::Request { tenant, idempotency_key } = &cause {
                match folded.answers.retry(tenant, idempotency_key, &command) {
                    Retry::New => {}
                    Retry::Same(answer) => {
                        events.push(answer);
                        continue;
                    }
                    Retry::Different(first) => {
                        let first = crate::answers::describe(&first);
                        return Err(Error::KeyReused { key: idempotency_key.clone(), first });
                    }
                }
            }
            if let Some((reader, region)) = self.sits_elsewhere(&folded.worklist, &command) {
                return Err(Error::ReaderElsewhere { reader, region });
            }
            let decided = match worklist::decide(&folded.worklist, &self.policy, command, now) {
                Ok(decided) => decided,
                Err(e) => {
                    refused(e)?;
                    continue;
                }
            };
            batch.extend(self.outgoing(folded, &decided, now, &cause)?);
            if i < last && !decided.is_empty() {
                let mut next = scratch.take().unwrap_or_else(|| state.clone());
                for e in &decided {
                    *next.versions.entry(aggregate(e).1).or_default() += 1;
                    next.worklist = worklist::apply(next.worklist, e);
                }
                scratch = Some(next);
            }
            deciding += usize::from(!decided.is_empty());
            events.extend(decided);
        }
        Ok((events, batch, deciding))
    }

    /// The reader `command` would change and the region they sit in, when
    /// that is not this one.
    fn sits_elsewhere(&self, state: &State, command: &Command) -> Option<(String, String)> {
        if !self.only_its_readers {
            return None;
        }
        let (reader, region) = match command {
            Command::RegisterReader(r) => (&r.id, r.region.as_str()),
            Command::UpdateReader { reader, .. }
            | Command::SetAvailability { reader, .. }
            | Command::UpdateLicences { reader, .. }
            | Command::UpdateCredentials { reader, .. } => (reader, state.readers.get(reader)?.region.as_str()),
            _ => return None,
        };
        (region != self.region).then(|| (reader.clone(), region.to_owned()))
    }

    /// Envelopes for `events`: the next version of each aggregate, ids from
    /// the cause (or, for timer events, from study, timer and deadline).
    fn outgoing(
        &self,
        folded: &Folded,
        events: &[Event],
        now: UnixMicros,
        cause: &Cause,
    ) -> Result<Vec<Outgoing>, Error> {
        // Only this batch's aggregates: copying every version ever folded
        // would make each command cost the length of history.
        let mut bumped: BTreeMap<Uuid, u64> = BTreeMap::new();
        let mut batch = Vec::with_capacity(events.len());
        for (ordinal, e) in events.iter().enumerate() {
            let (aggregate_type, aggregate_id) = aggregate(e);
            let last = bumped.get(&aggregate_id).or_else(|| folded.versions.get(&aggregate_id));
            let version = last.copied().unwrap_or(0) + 1;
            bumped.insert(aggregate_id, version);
            let mut payload = to_payload(e);
            // An assignment names the read it is for: the study's, as the
            // state (or a StudyQueued earlier in this batch) has it.
            let read_type = |study: &Uuid| {
                folded.worklist.studies.get(study).map(|s| s.read_type).or_else(|| {
                    events.iter().find_map(|q| match q {
                        Event::StudyQueued(s) if s.id == *study => Some(s.read_type),
                        _ => None,
                    })
                })
            };
            use meridian_events::payload::Payload as P;
            let named = |study: &Uuid| read_type(study).map(|t| t.as_str().to_owned()).unwrap_or_default();
            match (&mut payload, e) {
                (P::StudyAssigned(p), Event::StudyAssigned { study, .. }) => p.read_type = named(study),
                (P::AssignmentClaimed(p), Event::AssignmentClaimed { study, .. }) => p.read_type = named(study),
                _ => {}
            }
            let type_name = payload.type_name();
            let study = folded.worklist.studies.get(&aggregate_id);
            let event_id = match (cause, e) {
                (_, Event::AssignmentEscalated { study: id, level, .. }) => {
                    EventId::timer(*id, &format!("escalation.{level}"), study.map_or(UnixMicros(0), |s| s.deadline))
                }
                (_, Event::SlaBreached { study, deadline, .. }) => EventId::timer(*study, "sla.breach", *deadline),
                (Cause::Request { tenant, idempotency_key }, _) => {
                    EventId::idempotent(tenant, idempotency_key, type_name, ordinal as u32)
                }
                (Cause::Derived(cause), _) => EventId::derived(*cause, type_name, ordinal as u32),
                _ => EventId::new_at(now),
            };
            let tenant = match e {
                Event::StudyQueued(s) => s.tenant.clone(),
                _ => study.map(|s| s.tenant.clone()).unwrap_or_else(|| "platform".into()),
            };
            let causation_id = match cause {
                Cause::Derived(c) => Some(*c),
                _ => None,
            };
            let meta = EventMeta {
                event_id,
                aggregate_type: aggregate_type.into(),
                aggregate_id,
                aggregate_version: version,
                tenant,
                home_region: self.region.clone(),
                occurred_at: now,
                causation_id,
                correlation_id: causation_id,
                traceparent: meridian_telemetry::traceparent().or_else(|| {
                    let trace = folded.traces.get(&aggregate_id)?;
                    let short = type_name.rsplit('.').next().unwrap_or(type_name);
                    let step = meridian_telemetry::step(&format!("routing {short}"), Some(trace));
                    meridian_telemetry::traceparent_of(&step)
                }),
            };
            batch.push(Outgoing::new(self.topic.clone(), &payload.plain_envelope(meta)?)?);
        }
        Ok(batch)
    }

    /// Takes in what ingest, inference and reporting report (see
    /// [`input`]), from routing's committed positions on those topics until
    /// a read stays empty for `idle`. Inputs and the routing events they
    /// cause commit together (consume-transform-produce), a read batch (up
    /// to [`INTAKE_BATCH`] inputs, decided in turn) as one step: a backlog
    /// costs one sync per batch, and a stop between steps loses nothing.
    /// Event ids derive from the input event, and a decision that refuses
    /// (a study already queued, a read signed twice) commits the position
    /// alone, so a redelivery changes nothing. Returns how many inputs
    /// decided events.
    pub async fn intake(&self, idle: Duration) -> Result<usize, Error> {
        use meridian_log::Step;
        // One reader for every pass (a Kafka reader is a client with its
        // connections): it stays at the committed positions between
        // passes, and any error drops it, so the next pass starts again
        // from what was committed.
        let mut kept = self.intake_reader.lock().await;
        let mut reader = match kept.take() {
            Some(reader) => reader,
            None => {
                let mut from = Vec::new();
                for stream in INPUTS {
                    let topic = TopicName::new(&self.region, DataClass::Operational, stream)
                        .map_err(|e| meridian_log::Error::UnknownTopic { topic: e.name })?;
                    // A region without that service yet has no topic for it.
                    match self.log.resume(INTAKE, &topic).await {
                        Err(meridian_log::Error::UnknownTopic { .. }) => continue,
                        positions => from.extend(positions?),
                    }
                }
                self.log.reader(from).await?
            }
        };
        let mut decided = 0;
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                *kept = Some(reader);
                return Ok(decided);
            }
            let batch = reader.next_batch(INTAKE_BATCH, idle).await?;
            if batch.is_empty() {
                *kept = Some(reader);
                return Ok(decided);
            }
            let mut projector = self.projector.lock().await;
            let mut commands = Vec::new();
            for record in &batch {
                match input(record, &self.policy, &self.region) {
                    Ok(Some((cause, command, at))) => {
                        let traceparent = record.header(meridian_telemetry::TRACEPARENT);
                        let span = meridian_telemetry::consuming(
                            INTAKE,
                            record.topic.as_str(),
                            record.partition,
                            record.offset,
                            traceparent.and_then(|t| std::str::from_utf8(t).ok()),
                        );
                        commands.push((command, Cause::Derived(cause), at, Some(span)));
                    }
                    Ok(None) => {}
                    Err((reason, what)) => self.intake_skips.skip(record, reason, &what),
                }
            }
            let region = &self.region;
            let (_, outputs, deciding) = self.decide_in_turn(projector.state(), commands, |e| {
                if !matches!(e, worklist::Error::AlreadyQueued { .. }) {
                    tracing::warn!(%region, error = %e, "input not applied");
                }
                Ok(())
            })?;
            decided += deciding;
            // The batch's positions: the next offset of each partition read.
            let mut inputs: BTreeMap<(TopicName, u32), u64> = BTreeMap::new();
            for record in &batch {
                let next = inputs.entry((record.topic.clone(), record.partition)).or_default();
                *next = (*next).max(record.offset + 1);
            }
            let inputs =
                inputs.into_iter().map(|((topic, partition), offset)| Position { topic, partition, offset }).collect();
            let written = outputs.clone();
            let appended = self.log.commit(Step { consumer: INTAKE.into(), outputs, inputs }).await?;
            if !written.is_empty() {
                // The step's own events, folded where the log put them: no
                // read-back (which on a broker might not see them yet).
                projector.feed_appended(written, appended, self.keys.as_ref())?;
                self.announce();
            }
        }
    }

    /// Folds what the replicator copied from other regions' routing topics
    /// since the last pass, until a read waits `wait` with nothing. Returns
    /// how many of their readers' events it folded (a reader who came on
    /// may take a pending study).
    pub async fn follow_copies(&self, wait: Duration) -> Result<usize, Error> {
        if self.copies.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(0);
        }
        let mut kept = self.copies_reader.lock().await;
        let mut reader = match kept.take() {
            Some(reader) => reader,
            None => {
                let from = self.projector.lock().await.positions();
                let from = from.into_iter().filter(|p| self.copies.contains(&p.topic)).collect();
                self.log.reader(from).await?
            }
        };
        let mut readers = 0;
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                *kept = Some(reader);
                return Ok(readers);
            }
            let batch = reader.next_batch(INTAKE_BATCH, wait).await?;
            if batch.is_empty() {
                *kept = Some(reader);
                return Ok(readers);
            }
            let mut projector = self.projector.lock().await;
            for record in &batch {
                let applied = projector.feed(record, self.keys.as_ref())? == meridian_projection::Outcome::Applied;
                if applied && record.envelope().is_ok_and(|e| e.meta.aggregate_type == READER_AGGREGATE) {
                    readers += 1;
                }
            }
            drop(projector);
            self.announce();
        }
    }

    /// Reads what others appended to the routing topic since (none today:
    /// routing is the only writer), keeping the state current.
    pub async fn catch_up(&self, idle: Duration) -> Result<(), Error> {
        let mut projector = self.projector.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, idle).await?;
        self.announce();
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use meridian_log::TopicSpec;
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};

    use super::*;
    use crate::domain::model::*;
    use crate::domain::policy::*;
    use crate::domain::worklist::{NewStudy, Profile};

    pub(super) fn policy() -> Policy {
        let contract = ContractPolicy {
            name: "c".into(),
            tenant: "acme".into(),
            groups: BTreeSet::from(["g".to_string()]),
            mode: AssignmentMode::Pull,
            delivery: BTreeMap::from([
                (ReadType::Preliminary, BTreeSet::from([DeliveryModel::Onshore])),
                (ReadType::PeerReview, BTreeSet::from([DeliveryModel::Onshore])),
            ]),
            sla_seconds: BTreeMap::from([
                (Priority::Stat, 1_800),
                (Priority::Urgent, 7_200),
                (Priority::Routine, 86_400),
            ]),
            escalation_per_mille: vec![500],
            service: None,
            subspecialty_required: false,
            language: "en".into(),
        };
        Policy {
            contracts: BTreeMap::from([("c".to_string(), contract)]),
            regions: BTreeMap::from([(
                "us-east".to_string(),
                RegionInfo { country: "US".into(), nearshore: BTreeSet::new() },
            )]),
            ..Default::default()
        }
    }

    /// A reader of group "g" in us-east, on shift all week, reading CT.
    pub(crate) fn reader() -> Reader {
        Reader {
            id: "dr-x".into(),
            group: "g".into(),
            region: "us-east".into(),
            time_zone: "UTC".into(),
            licences: vec![],
            credentials: vec![Credential {
                tenant: "acme".into(),
                facility: "f".into(),
                expires: UnixMicros(i64::MAX),
            }],
            subspecialties: BTreeSet::new(),
            modalities: BTreeSet::from(["CT".into()]),
            read_types: BTreeSet::from([ReadType::Preliminary]),
            shifts: (1..=7).map(|d| Shift { weekday: d, start_minute: 0, end_minute: 0 }).collect(),
            capacity: 5,
            availability: Availability::Available,
        }
    }

    /// A STAT CT preliminary of acme under contract "c", completed `now`.
    pub(crate) fn study(id: u128, now: UnixMicros) -> NewStudy {
        NewStudy {
            id: Uuid::from_u128(id),
            tenant: "acme".into(),
            facility: "f".into(),
            contract: "c".into(),
            home_region: "us-east".into(),
            origin_jurisdiction: "US-NY".into(),
            modality: "CT".into(),
            body_part: "HEAD".into(),
            subspecialty: None,
            subspecialty_required: false,
            priority: Priority::Stat,
            service_type: ServiceType::RealTime,
            read_type: ReadType::Preliminary,
            patient_key: None,
            rvu_milli: 850,
            ai_flagged: false,
            completed_at: now,
            prior_reader: None,
            due: None,
        }
    }

    async fn open(log: &Arc<EmbeddedLog>) -> Routing {
        open_with(log, policy()).await
    }

    /// Routing of us-east on `log` under `policy`, without snapshots.
    pub(crate) async fn open_with(log: &Arc<EmbeddedLog>, policy: Policy) -> Routing {
        let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
        let none = meridian_projection::run::Snapshotter::none();
        Routing::open("us-east", Vec::new(), log.clone(), keys, policy, Duration::from_millis(50), none).await.unwrap()
    }

    fn completed_event(study: u128, tenant: &str, at: UnixMicros) -> meridian_events::Envelope {
        use meridian_proto::events::v1 as pb;
        let payload = pb::StudyCompleted {
            study_id: Uuid::from_u128(study).to_string(),
            completed_at: Some(at.to_timestamp()),
            facility: "f".into(),
            origin_jurisdiction: "US-NY".into(),
            modality: "CT".into(),
            body_part: "HEAD".into(),
            procedure_code: "70450".into(),
            requested_priority: "stat".into(),
            ..Default::default()
        };
        let meta = EventMeta {
            event_id: EventId::new_at(at),
            aggregate_type: "ingest.study".into(),
            aggregate_id: Uuid::from_u128(study),
            aggregate_version: 2,
            tenant: tenant.into(),
            home_region: "us-east".into(),
            occurred_at: at,
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        };
        meridian_events::Envelope::plain(meta, &payload).unwrap()
    }

    /// Intake keeps its reader between passes; a failed commit drops it, so
    /// the next pass reads the uncommitted input again and decides it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_intake_step_is_read_again_by_the_next_pass() {
        let dir = tempfile::TempDir::new().unwrap();
        let failpoints = meridian_log::failpoint::FailPoints::default();
        let options = EmbeddedOptions { failpoints: failpoints.clone() };
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), options).unwrap());
        let ingest = TopicName::new("us-east", DataClass::Operational, "ingest").unwrap();
        for t in [TopicName::new("us-east", DataClass::Operational, "routing").unwrap(), ingest.clone()] {
            log.ensure_topic(&TopicSpec::new(t, 4)).await.unwrap();
        }
        let routing = open(&log).await;
        let at = UnixMicros(1_795_000_000_000_000);
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 0, "a first pass over nothing");
        log.append(vec![Outgoing::new(ingest.clone(), &completed_event(1, "acme", at)).unwrap()]).await.unwrap();
        failpoints.set(meridian_log::failpoint::BEFORE_COMMIT, Some(meridian_log::failpoint::Action::Error));
        assert!(routing.intake(Duration::from_millis(50)).await.is_err());
        failpoints.set(meridian_log::failpoint::BEFORE_COMMIT, None);
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 1, "read again and decided");
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 0, "and only once");
        assert!(routing.read(|s| s.studies.contains_key(&Uuid::from_u128(1))).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completed_studies_are_queued_once_with_ids_derived_from_their_cause() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        let routing_topic = TopicName::new("us-east", DataClass::Operational, "routing").unwrap();
        let ingest = TopicName::new("us-east", DataClass::Operational, "ingest").unwrap();
        log.ensure_topic(&TopicSpec::new(routing_topic, 4)).await.unwrap();
        log.ensure_topic(&TopicSpec::new(ingest.clone(), 4)).await.unwrap();
        // No inference or reporting topic: intake reads what the region has.
        let mut policy = policy();
        policy.rvu_milli.insert("70450".into(), 850);
        policy.subspecialty_rules.push(SubspecialtyRule {
            modality: "CT".into(),
            body_part: Some("HEAD".into()),
            subspecialty: "neuro".into(),
        });
        let routing = open_with(&log, policy).await;
        let at = UnixMicros(1_795_000_000_000_000);
        let first = completed_event(1, "acme", at);
        let events = [first.clone(), completed_event(2, "acme", at), completed_event(3, "no-contract-tenant", at)];
        log.append(events.iter().map(|e| Outgoing::new(ingest.clone(), e).unwrap()).collect()).await.unwrap();

        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 3);
        // A tenant without a contract: kept as unroutable, with why, never dropped.
        let unroutable = routing.read(|s| s.unroutable.clone()).await;
        let kept = &unroutable["no-contract-tenant"];
        assert_eq!((kept.len(), kept[0].study), (1, Uuid::from_u128(3)));
        assert_eq!(kept[0].reason, "tenant no-contract-tenant has no contract");
        assert!(routing.intake_skips().counts().is_empty());
        let study = routing.read(|s| s.studies[&Uuid::from_u128(1)].clone()).await;
        assert_eq!(
            (study.contract.as_str(), study.priority, study.read_type),
            ("c", Priority::Stat, ReadType::Preliminary)
        );
        assert_eq!((study.subspecialty.as_deref(), study.rvu_milli), (Some("neuro"), 850));
        assert_eq!(study.deadline, UnixMicros(at.0 + 1_800_000_000), "STAT: 30 minutes from completion");
        let partition =
            meridian_log::partitioner::partition_for(Uuid::from_u128(3).hyphenated().to_string().as_bytes(), 4);
        assert!(
            log.committed(INTAKE, &ingest, partition).await.unwrap().is_some(),
            "positions commit with the outputs"
        );

        // Nothing new on a second pass; a re-appended StudyCompleted is recognised.
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 0);
        log.append(vec![Outgoing::new(ingest.clone(), &first).unwrap()]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 0);

        // Records intake cannot use are counted by reason, never dropped silently.
        let malformed = completed_event(4, "acme", at);
        let payload =
            meridian_proto::events::v1::StudyCompleted { study_id: "not-a-uuid".into(), ..Default::default() };
        let malformed = meridian_events::Envelope::plain(malformed.meta.clone(), &payload).unwrap();
        // (The log refuses to append what is not an envelope.)
        log.append(vec![Outgoing::new(ingest.clone(), &malformed).unwrap()]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 0);
        let skipped = routing.intake_skips().counts();
        assert_eq!(skipped, BTreeMap::from([("malformed_ids".to_string(), 1)]));

        // The StudyQueued id derives from the StudyCompleted that caused it.
        drop(routing);
        let routing = open(&log).await;
        assert_eq!(routing.read(|s| s.studies.len()).await, 2, "a restart keeps exactly the two queued studies");
        let from = (0..4)
            .map(|p| Position::start(TopicName::new("us-east", DataClass::Operational, "routing").unwrap(), p))
            .collect();
        let mut reader = log.reader(from).await.unwrap();
        let records = reader.next_batch(100, Duration::from_millis(100)).await.unwrap();
        let queued =
            records.iter().map(|r| r.envelope().unwrap()).find(|e| e.meta.aggregate_id == Uuid::from_u128(1)).unwrap();
        assert_eq!(queued.meta.event_id, EventId::derived(first.meta.event_id, "meridian.events.v1.StudyQueued", 0));
        assert_eq!(queued.meta.causation_id, Some(first.meta.event_id));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn commands_land_in_the_log_and_a_restart_rebuilds_the_same_state() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        let topic = TopicName::new("us-east", DataClass::Operational, "routing").unwrap();
        log.ensure_topic(&TopicSpec::new(topic.clone(), 4)).await.unwrap();
        // 2026-11-25 12:00 UTC; the reader's shift (00:00 to 00:00) is all day.
        let now = UnixMicros(1_795_000_000_000_000);
        let routing = open(&log).await;
        routing.execute(Command::RegisterReader(reader()), now, Cause::Unkeyed).await.unwrap();
        let keyed = Cause::Request { tenant: "acme".into(), idempotency_key: "queue-1".into() };
        let queued = routing.execute(Command::Queue(study(1, now)), now, keyed).await.unwrap();
        assert_eq!(queued.len(), 1);
        routing.execute(Command::Queue(study(2, now)), now, Cause::Unkeyed).await.unwrap();
        let claim = Cause::Request { tenant: "acme".into(), idempotency_key: "claim-1".into() };
        routing.execute(Command::ClaimNext { reader: "dr-x".into() }, now, claim).await.unwrap();
        // Half the STAT SLA later the unclaimed study escalates, once.
        let later = UnixMicros(now.0 + 900_000_000);
        let escalated = routing.execute(Command::Tick, later, Cause::Timer).await.unwrap();
        assert_eq!(escalated.len(), 1);
        let before = routing.read(|s| s.clone()).await;

        // The log holds each event once, versioned per aggregate, with
        // deterministic ids where a key or a timer made them.
        let from = (0..4).map(|p| Position::start(topic.clone(), p)).collect();
        let mut reader = log.reader(from).await.unwrap();
        let records = reader.next_batch(100, Duration::from_millis(100)).await.unwrap();
        assert_eq!(records.len(), 5, "registered, queued twice, claimed, escalated");
        let envelopes: Vec<_> = records.iter().map(|r| r.envelope().unwrap()).collect();
        let queue_1 = envelopes
            .iter()
            .find(|e| e.meta.aggregate_id == Uuid::from_u128(1) && e.meta.aggregate_version == 1)
            .unwrap();
        assert_eq!(queue_1.meta.event_id, EventId::idempotent("acme", "queue-1", "meridian.events.v1.StudyQueued", 0));
        assert_eq!(queue_1.meta.tenant, "acme");
        let escalation = envelopes.iter().find(|e| e.payload_type.ends_with("AssignmentEscalated")).unwrap();
        let deadline = before.studies[&escalation.meta.aggregate_id].deadline;
        assert_eq!(escalation.meta.event_id, EventId::timer(escalation.meta.aggregate_id, "escalation.1", deadline));
        let claimed = envelopes.iter().find(|e| e.payload_type.ends_with("AssignmentClaimed")).unwrap();
        assert_eq!(claimed.meta.aggregate_version, 2, "the study's second event");
        drop(reader);

        // A restart rebuilds the same state, and the timer does not fire again.
        drop(routing);
        let routing = open(&log).await;
        assert_eq!(routing.read(|s| s.clone()).await, before);
        assert!(routing.execute(Command::Tick, later, Cause::Timer).await.unwrap().is_empty());
        // A refused command appends nothing.
        let err =
            routing.execute(Command::ClaimNext { reader: "nobody".into() }, later, Cause::Unkeyed).await.unwrap_err();
        assert!(matches!(err, Error::Domain(worklist::Error::UnknownReader { .. })));
    }

    fn envelope<P: meridian_events::EventPayload>(
        study: u128,
        version: u64,
        at: UnixMicros,
        payload: &P,
    ) -> meridian_events::Envelope {
        let meta = EventMeta {
            event_id: EventId::new_at(at),
            aggregate_type: P::AGGREGATE_TYPE.into(),
            aggregate_id: Uuid::from_u128(study),
            aggregate_version: version,
            tenant: "acme".into(),
            home_region: "us-east".into(),
            occurred_at: at,
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        };
        meridian_events::Envelope::plain(meta, payload).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stat_studies_queue_at_their_first_instance_and_triage_and_signatures_flow_in() {
        use meridian_proto::events::v1 as pb;
        let dir = tempfile::TempDir::new().unwrap();
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        let topic = |stream: &str| TopicName::new("us-east", DataClass::Operational, stream).unwrap();
        for stream in ["routing", "ingest", "inference", "reporting"] {
            log.ensure_topic(&TopicSpec::new(topic(stream), 2)).await.unwrap();
        }
        let routing = open(&log).await;
        let at = UnixMicros(1_795_000_000_000_000);
        routing.execute(Command::RegisterReader(reader()), at, Cause::Unkeyed).await.unwrap();
        let started = |study: u128, priority: &str| {
            let payload = pb::StudyStarted {
                study_id: Uuid::from_u128(study).to_string(),
                facility: "f".into(),
                origin_jurisdiction: "US-NY".into(),
                modality: "CT".into(),
                body_part: "HEAD".into(),
                requested_priority: priority.into(),
                ..Default::default()
            };
            Outgoing::new(topic("ingest"), &envelope(study, 1, at, &payload)).unwrap()
        };
        log.append(vec![started(1, "stat"), started(2, "routine")]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 1, "only STAT queues at its start");
        assert_eq!(routing.read(|s| s.studies[&Uuid::from_u128(1)].deadline).await, UnixMicros(at.0 + 1_800_000_000));
        // Its StudyCompleted after the quiet period queues nothing new.
        let later = UnixMicros(at.0 + 90_000_000);
        log.append(vec![Outgoing::new(topic("ingest"), &completed_event(1, "acme", later)).unwrap()]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 0);
        assert!(routing.read(|s| s.studies.len() == 1).await);

        // Triage for the routine study, before it is queued: it waits for it.
        let triage = pb::AiTriageCompleted {
            study_id: Uuid::from_u128(2).to_string(),
            model: "ich@2".into(),
            flagged: true,
            suggested_priority: "stat".into(),
            ..Default::default()
        };
        log.append(vec![Outgoing::new(topic("inference"), &envelope(2, 1, later, &triage)).unwrap()]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 1);
        let mut c2 = completed_event(2, "acme", later);
        if let Ok(meridian_events::payload::Payload::StudyCompleted(mut p)) = c2.open_plain() {
            p.requested_priority = "routine".into();
            c2 = meridian_events::Envelope::plain(c2.meta.clone(), &p).unwrap();
        }
        log.append(vec![Outgoing::new(topic("ingest"), &c2).unwrap()]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 1);
        let raised = routing.read(|s| s.studies[&Uuid::from_u128(2)].clone()).await;
        assert_eq!((raised.priority, raised.ai_flagged), (Priority::Stat, true));

        // dr-x claims the first and signs it: the read ends (the contract has no finals).
        routing.execute(Command::ClaimNext { reader: "dr-x".into() }, later, Cause::Unkeyed).await.unwrap();
        let signed = pb::ReportSigned {
            study_id: Uuid::from_u128(1).to_string(),
            report_id: "r1".into(),
            read_type: "preliminary".into(),
            reader_id: "dr-x".into(),
            signed_at: Some(later.to_timestamp()),
            ..Default::default()
        };
        let signed = envelope(1, 1, later, &signed);
        log.append(vec![Outgoing::new(topic("reporting"), &signed).unwrap()]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 1);
        assert!(!routing.read(|s| s.studies.contains_key(&Uuid::from_u128(1))).await);
        assert_eq!(routing.read(|s| s.load["dr-x"].open).await, 0);
        // A redelivered signature changes nothing; a restart rebuilds the same state.
        log.append(vec![Outgoing::new(topic("reporting"), &signed).unwrap()]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 0);

        // Drawn for peer review: a routine blinded read, due by the review's
        // window, that dr-x (whose read it reviews) may not take.
        let due = UnixMicros(later.0 + 30 * 86_400_000_000);
        let review = pb::PeerReviewRequested {
            study_id: Uuid::from_u128(1).to_string(),
            report_id: Uuid::from_u128(77).to_string(),
            reviewed_reader_id: "dr-x".into(),
            tenant: "acme".into(),
            contract: "c".into(),
            facility: "f".into(),
            origin_jurisdiction: "US-NY".into(),
            modality: "CT".into(),
            body_part: "HEAD".into(),
            rvu_milli: 1_500,
            requested_at: Some(later.to_timestamp()),
            due: Some(due.to_timestamp()),
            ..Default::default()
        };
        log.append(vec![Outgoing::new(topic("reporting"), &envelope(1, 2, later, &review)).unwrap()]).await.unwrap();
        assert_eq!(routing.intake(Duration::from_millis(50)).await.unwrap(), 1);
        let queued = routing.read(|s| s.studies[&Uuid::from_u128(1)].clone()).await;
        assert_eq!(
            (queued.read_type, queued.priority, queued.deadline, queued.prior_reader.as_deref(), queued.rvu_milli),
            (ReadType::PeerReview, Priority::Routine, due, Some("dr-x"), 1_500)
        );
        // dr-x reads peer reviews too, but not of their own read.
        let r = reader();
        let profile = Profile {
            subspecialties: r.subspecialties.clone(),
            modalities: r.modalities.clone(),
            read_types: BTreeSet::from([ReadType::Preliminary, ReadType::PeerReview]),
            shifts: r.shifts.clone(),
            capacity: r.capacity,
        };
        let update = Command::UpdateReader { reader: "dr-x".into(), profile };
        routing.execute(update, later, Cause::Unkeyed).await.unwrap();
        let claim = |reader: &str| Command::Claim { reader: reader.into(), study: Uuid::from_u128(1) };
        let e = routing.execute(claim("dr-x"), later, Cause::Unkeyed).await.unwrap_err();
        assert!(e.to_string().contains("cannot review their own read"), "{e}");

        let before = routing.read(|s| s.clone()).await;
        drop(routing);
        assert_eq!(open(&log).await.read(|s| s.clone()).await, before);
    }
}
