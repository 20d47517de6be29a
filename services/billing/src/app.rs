//! Billing on a region's log: routing's topic in, billing's topic out, in
//! consume-transform-produce steps.
//!
//! The ledger is a projection of the routing topic whose fold decides
//! ([`crate::domain::ledger`]): each record's facts land in the state's
//! outbox, and one [`Step`] appends a batch's facts and commits the
//! batch's input positions atomically (a Kafka transaction with its
//! offsets; one redb transaction embedded). A crash before the commit
//! loses the step whole: the next start reads those inputs again and
//! decides the same facts (ids derive from the inputs). Snapshots are
//! taken between steps, so a snapshot's positions never pass the committed
//! ones; on opening, the inputs between the snapshot and the committed
//! positions are folded again without appending what they decide (it is in
//! the log already).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use meridian_config::Platform;
use meridian_events::UnixMicros;
use meridian_events::envelope::EventMeta;
use meridian_events::{DataClass, EventId, KeyStore};
use meridian_log::failpoint::FailPoints;
use meridian_log::{EventLog, LogReader, Outgoing, Position, Step, TopicName};
use meridian_projection::live::Live;
use meridian_projection::run::{Resumed, Snapshotter};
use meridian_projection::snapshot::Loaded;
use meridian_projection::{Event as Logged, Projection, Projector, Stats};
use tokio::sync::Mutex;

use crate::adapters;
use crate::domain::credit_note::{self, CreditNote};
use crate::domain::invoice::{self, Issuance, Issued, ToIssue};
use crate::domain::ledger::{self, Fact, Ledger, Totals};
use meridian_proto::events::v1 as pb;

/// Facts decided, not committed yet.
pub const AFTER_DECIDE: &str = "billing.after_decide";
/// The step built (facts and positions), just before the log commits it.
pub const BEFORE_COMMIT: &str = "billing.before_commit";
/// The consumer's name: its committed positions on the routing topic.
pub const CONSUMER: &str = "billing.ledger";
/// Routing records per step.
const BATCH: usize = 2_048;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("billing log: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("billing ledger: {0}")]
    Projection(#[from] meridian_projection::Error),
    #[error("billing event: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
    #[error("{0}")]
    Refused(#[from] invoice::IssueRefused),
    #[error("{0}")]
    CreditRefused(#[from] credit_note::CreditRefused),
    #[error("invoice {number}'s document cannot be read: {reason}")]
    Document { number: String, reason: String },
    #[error("billing's prices cannot be recorded: {0}")]
    Prices(String),
}

/// The ledger as a projection of the routing topic: the fold decides.
pub struct LedgerProjection;

impl Projection for LedgerProjection {
    type State = Ledger;
    const NAME: &'static str = "billing.ledger";

    fn apply(state: Ledger, event: &Logged<'_>) -> Ledger {
        match adapters::events::input(event.payload, &event.envelope.meta) {
            Ok(Some((input, cause))) => {
                let facts = ledger::decide(&state, &input, &cause);
                ledger::apply(state, &input, facts)
            }
            Ok(None) => state,
            Err(why) => {
                // Counted by payload and field (a bounded set), with the
                // last reason and event for each (the fold does no I/O:
                // the summary shows them).
                let mut state = state;
                meridian_projection::unreadable::count(&mut state.unreadable, &why, event.envelope.meta.event_id);
                state
            }
        }
    }
}

/// The region's issued invoices: a projection of billing's own topic
/// (InvoiceIssued only), so numbers go on after a restart.
pub struct IssuanceProjection;

impl Projection for IssuanceProjection {
    type State = Issuance;
    const NAME: &'static str = "billing.invoices";

    fn apply(state: Issuance, event: &Logged<'_>) -> Issuance {
        match event.payload {
            meridian_events::payload::Payload::InvoiceIssued(i) => {
                state.apply(adapters::events::issued(i, event.envelope.meta.event_id, event.partition, event.offset))
            }
            meridian_events::payload::Payload::CreditNoteIssued(n) => {
                state.apply_credit_note(adapters::events::credit_note(n, event.envelope.meta.event_id))
            }
            meridian_events::payload::Payload::PricesInForce(p) => {
                let mut state = state;
                match adapters::events::prices_from(p) {
                    Ok(change) => state.prices.changes.push(change),
                    Err(_) => state.unreadable_prices += 1,
                }
                state
            }
            _ => state,
        }
    }
}

/// A fact as [`Billing::explain`] finds it.
#[derive(Debug)]
pub struct Explained {
    pub tenant: String,
    pub payload: meridian_events::payload::Payload,
    /// Found on the topic, no longer in the ledger: invoiced.
    pub invoiced: bool,
    /// In the ledger, after its period's invoice: for the next one.
    pub carried: bool,
}

pub struct Billing {
    region: String,
    /// The region's invoice issuer and its number series.
    issuer: String,
    series: String,
    credit_note_series: String,
    issuance: Live<IssuanceProjection>,
    log: Arc<dyn EventLog>,
    keys: Arc<dyn KeyStore>,
    routing: TopicName,
    billing: TopicName,
    /// The prices this process started with (configuration is read at start).
    pricebook: crate::domain::pricing::Pricebook,
    /// How the ledger was opened: from a snapshot or not, and how many
    /// committed inputs it folded again.
    opened: Resumed,
    projector: Mutex<Projector<LedgerProjection>>,
    /// Kept between passes; dropped after an error.
    reader: Mutex<Option<Box<dyn LogReader>>>,
    snapshots: Snapshotter,
    failpoints: FailPoints,
    stopping: AtomicBool,
}

fn topic(region: &str, stream: &str) -> Result<TopicName, Error> {
    TopicName::new(region, DataClass::Operational, stream)
        .map_err(|e| Error::Log(meridian_log::Error::UnknownTopic { topic: e.name }))
}

impl Billing {
    /// Opens the ledger from its snapshot, folds the inputs committed since
    /// without appending again, and prices what it could not before.
    pub async fn open(
        region: &str,
        platform: &Platform,
        log: Arc<dyn EventLog>,
        keys: Arc<dyn KeyStore>,
        snapshots: Snapshotter,
        failpoints: FailPoints,
        idle: Duration,
    ) -> Result<Billing, Error> {
        let (routing, billing) = (topic(region, "routing")?, topic(region, "billing")?);
        let pricebook = adapters::config::pricebook(platform);
        let started = std::time::Instant::now();
        // Billing's own topic first: the prices each routing record was
        // priced with.
        let billing_starts =
            (0..log.partitions(&billing).await?).map(|p| Position::start(billing.clone(), p)).collect();
        let own = Snapshotter::new(snapshots.files().clone(), 1_000, Duration::from_secs(5));
        let issuance: Live<IssuanceProjection> =
            Live::open(region, own, billing_starts, log.as_ref(), keys.as_ref(), idle).await?;
        let schedule = issuance.lock().await.state().prices.clone();
        let (projector, from_snapshot, tail) =
            recover(region, log.as_ref(), keys.as_ref(), &routing, &snapshots, &schedule, &pricebook, idle).await?;
        let opened = Resumed { from_snapshot, tail, duration: started.elapsed() };
        let config = platform.regions.get(region);
        let issuer = config.map_or_else(|| region.to_owned(), meridian_config::Region::invoice_issuer);
        let series = config.map_or_else(|| region.to_ascii_uppercase(), meridian_config::Region::invoice_series);
        let credit_note_series =
            config.map_or_else(|| format!("{series}-CN"), meridian_config::Region::credit_note_series);
        let billing = Billing {
            region: region.to_owned(),
            issuer,
            series,
            credit_note_series,
            issuance,
            log,
            keys,
            routing,
            billing,
            pricebook,
            opened,
            projector: Mutex::new(projector),
            reader: Mutex::new(None),
            snapshots,
            failpoints,
            stopping: AtomicBool::new(false),
        };
        {
            // What was issued since the ledger's snapshot leaves it.
            let mut projector = billing.projector.lock().await;
            billing.close_issued(&mut projector).await?;
            billing.put_prices_in_force(&projector).await?;
        }
        billing.reprice().await?;
        Ok(billing)
    }

    /// Makes a running pass end after its current step.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// One pass: steps over the routing records that arrived, until a read
    /// waits `wait` with nothing. Returns how many records it took.
    pub async fn pass(&self, wait: Duration) -> Result<usize, Error> {
        let mut kept = self.reader.lock().await;
        let mut projector = self.projector.lock().await;
        let mut reader = match kept.take() {
            Some(reader) => reader,
            None => self.log.reader(projector.positions()).await?,
        };
        let mut taken = 0;
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                *kept = Some(reader);
                return Ok(taken);
            }
            let batch = reader.next_batch(BATCH, wait).await?;
            if batch.is_empty() {
                *kept = Some(reader);
                return Ok(taken);
            }
            taken += batch.len();
            match self.step(&mut projector, &batch).await {
                Ok(()) => {}
                Err(e) => {
                    // The state folded inputs the log did not take: start
                    // again from the snapshot and what was committed.
                    let snapshots = &self.snapshots;
                    let (log, keys) = (self.log.as_ref(), self.keys.as_ref());
                    let schedule = self.issuance.lock().await.state().prices.clone();
                    let (routing, prices) = (&self.routing, &self.pricebook);
                    (*projector, _, _) =
                        recover(&self.region, log, keys, routing, snapshots, &schedule, prices, wait).await?;
                    self.close_issued(&mut projector).await?;
                    return Err(e);
                }
            }
        }
    }

    /// Folds `batch` and commits its facts with its positions.
    async fn step(
        &self,
        projector: &mut Projector<LedgerProjection>,
        batch: &[meridian_log::Record],
    ) -> Result<(), Error> {
        for record in batch {
            projector.feed(record, self.keys.as_ref())?;
        }
        let facts = std::mem::take(&mut projector.state_mut().outbox);
        // The charges a step posts are appended in its span: in the study's
        // trace for one input, linked to each input's otherwise.
        let traceparents = batch.iter().map(|r| r.header(meridian_telemetry::TRACEPARENT));
        let step = meridian_telemetry::consuming_batch(
            CONSUMER,
            traceparents.map(|t| t.and_then(|t| std::str::from_utf8(t).ok())),
        );
        let outputs = step.in_scope(|| self.outgoing(&facts))?;
        self.failpoints.hit(AFTER_DECIDE)?;
        let inputs = projector.positions();
        self.failpoints.hit(BEFORE_COMMIT)?;
        self.log.commit(Step { consumer: CONSUMER.into(), outputs, inputs }).await?;
        if !facts.is_empty() {
            tracing::debug!(region = %self.region, facts = facts.len(), "billing step committed");
        }
        Ok(())
    }

    fn outgoing(&self, facts: &[Fact]) -> Result<Vec<Outgoing>, Error> {
        facts
            .iter()
            .map(|f| {
                let meta = EventMeta {
                    event_id: f.id,
                    aggregate_type: "billing.study".into(),
                    aggregate_id: f.study,
                    aggregate_version: f.version,
                    tenant: f.tenant.clone(),
                    home_region: self.region.clone(),
                    occurred_at: f.occurred_at,
                    causation_id: Some(f.cause),
                    correlation_id: None,
                    traceparent: meridian_telemetry::traceparent(),
                };
                let envelope = adapters::events::payload(f).plain_envelope(meta)?;
                Ok(Outgoing::new(self.billing.clone(), &envelope)?)
            })
            .collect()
    }

    /// Charges the unpriced reads the configuration prices now.
    pub async fn reprice(&self) -> Result<usize, Error> {
        let mut projector = self.projector.lock().await;
        let facts = ledger::reprice(projector.state());
        if facts.is_empty() {
            return Ok(0);
        }
        let outputs = self.outgoing(&facts)?;
        self.log.append(outputs).await?;
        let n = facts.len();
        let state = std::mem::take(projector.state_mut());
        let mut state = ledger::apply_facts(state, facts);
        state.outbox.clear();
        *projector.state_mut() = state;
        tracing::info!(region = %self.region, charges = n, "unpriced reads priced");
        Ok(n)
    }

    /// Issues `tenant`'s invoices of `period` that are due (see
    /// [`invoice::issue`]): the ones issued already and the new ones.
    pub async fn issue(&self, tenant: &str, period: &str, now: UnixMicros) -> Result<Vec<Issued>, Error> {
        // Take in what routing has written first: an invoice never leaves
        // out a read signed before it for want of a step not yet taken.
        self.pass(Duration::from_millis(50)).await?;
        let mut ledger = self.projector.lock().await;
        let mut issuance = self.issuance.lock().await;
        let at = jiff::Timestamp::from_microsecond(now.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let (mut issued, new) = invoice::issue(issuance.state(), ledger.state(), &self.series, tenant, period, at)?;
        if new.is_empty() {
            return Ok(issued);
        }
        let series_id = meridian_events::id::aggregate_id("billing.series", &[self.series.as_bytes()]);
        let mut batch = Vec::new();
        for to_issue in &new {
            let meta = EventMeta {
                event_id: to_issue.issued.event_id,
                aggregate_type: "billing.series".into(),
                aggregate_id: series_id,
                aggregate_version: to_issue.issued.sequence,
                tenant: tenant.to_owned(),
                home_region: self.region.clone(),
                occurred_at: now,
                causation_id: None,
                correlation_id: None,
                traceparent: meridian_telemetry::traceparent(),
            };
            let payload = adapters::events::invoice_issued(to_issue, &self.issuer, now);
            let envelope = meridian_events::Envelope::plain(meta, &payload)?;
            batch.push(Outgoing::new(self.billing.clone(), &envelope)?);
        }
        let appended = self.log.append(batch.clone()).await?;
        issuance.feed_appended(batch, appended, self.keys.as_ref())?;
        for ToIssue { preview, issued: new } in new {
            invoice::close(ledger.state_mut(), tenant, period, &preview.contract, &invoice::invoiced(&preview.lines));
            // As the series folded it: with its place on the topic.
            let key = format!("{tenant}/{period}/{}", new.contract);
            issued.push(issuance.state().issued.get(&key).cloned().unwrap_or(new));
        }
        tracing::info!(region = %self.region, %tenant, %period, invoices = issued.len(), "invoices issued");
        Ok(issued)
    }

    /// Puts this process's prices in force from the committed routing
    /// positions on, when they are not the prices last in force: appended
    /// before anything is decided with them, so folding the routing topic
    /// again prices every read as it was priced.
    async fn put_prices_in_force(&self, projector: &Projector<LedgerProjection>) -> Result<(), Error> {
        let mut issuance = self.issuance.lock().await;
        let schedule = &issuance.state().prices;
        if schedule.latest() == Some(&self.pricebook) {
            return Ok(());
        }
        let from: BTreeMap<u32, u64> = projector
            .positions()
            .into_iter()
            .filter(|p| p.topic == self.routing)
            .map(|p| (p.partition, p.offset))
            .collect();
        let version = schedule.changes.len() as u64 + 1;
        let id = meridian_events::id::aggregate_id("billing.prices", &[self.region.as_bytes()]);
        // When, for the record; the positions say what it prices.
        let now = meridian_auth::grpc::arrival_time();
        let meta = EventMeta {
            event_id: EventId::derived(EventId(id), "PricesInForce", u32::try_from(version).unwrap_or(u32::MAX)),
            aggregate_type: "billing.prices".into(),
            aggregate_id: id,
            aggregate_version: version,
            tenant: "platform".into(),
            home_region: self.region.clone(),
            occurred_at: now,
            causation_id: None,
            correlation_id: None,
            traceparent: meridian_telemetry::traceparent(),
        };
        let payload =
            adapters::events::prices_in_force(&self.pricebook, &from, now).map_err(|e| Error::Prices(e.to_string()))?;
        let envelope = meridian_events::Envelope::plain(meta, &payload)?;
        let batch = vec![Outgoing::new(self.billing.clone(), &envelope)?];
        let appended = self.log.append(batch.clone()).await?;
        issuance.feed_appended(batch, appended, self.keys.as_ref())?;
        tracing::info!(region = %self.region, change = version, "billing put its configured prices in force");
        Ok(())
    }

    /// Closes in the ledger the invoices it has not closed (issued after
    /// its snapshot, or all when it was folded from the start), each by the
    /// events its document names: what came after an invoice stays, to be
    /// carried to the contract's next one.
    async fn close_issued(&self, projector: &mut Projector<LedgerProjection>) -> Result<(), Error> {
        let issuance = self.issuance.lock().await;
        for issued in invoice::unclosed(projector.state(), issuance.state()) {
            let document = self.document(issued).await?;
            let lines = adapters::events::invoice_lines(&document);
            invoice::close(
                projector.state_mut(),
                &issued.tenant,
                &issued.period,
                &issued.contract,
                &invoice::invoiced(&lines),
            );
        }
        Ok(())
    }

    /// The InvoiceIssued of `issued`, read at its place on the topic.
    pub async fn document(&self, issued: &Issued) -> Result<pb::InvoiceIssued, Error> {
        let missing = |reason: String| Error::Document { number: issued.number.clone(), reason };
        let at = Position { topic: self.billing.clone(), partition: issued.partition, offset: issued.offset };
        let mut reader = self.log.reader(vec![at]).await?;
        let batch = reader.next_batch(1, Duration::from_secs(5)).await?;
        let record = batch.first().ok_or_else(|| missing("nothing at its place on the topic".into()))?;
        let envelope = record.envelope().map_err(|e| missing(e.to_string()))?;
        if record.offset != issued.offset || envelope.meta.event_id != issued.event_id {
            return Err(missing(format!("the record at its place is event {}", envelope.meta.event_id)));
        }
        match envelope.open_plain()? {
            meridian_events::payload::Payload::InvoiceIssued(document) => Ok(document),
            other => Err(missing(format!("the record at its place is a {}", other.type_name()))),
        }
    }

    /// The fact `id` (a charge, credit or unpriced read) and its tenant:
    /// from the ledger while it is to be invoiced (`invoiced` false), else
    /// read from billing's topic (the whole topic: an audit, not a hot path).
    pub async fn explain(&self, id: meridian_events::EventId) -> Result<Option<Explained>, Error> {
        let found = self
            .read(|l| {
                l.entries.iter().find_map(|(key, entries)| {
                    let e = entries.iter().find(|e| e.id == id)?;
                    let (tenant, period) = key.split_once('/')?;
                    let fact = Fact {
                        id: e.id,
                        study: e.study,
                        tenant: tenant.to_owned(),
                        version: 0,
                        cause: e.cause,
                        occurred_at: UnixMicros(0),
                        what: e.what.clone(),
                    };
                    let carried = l.carried(tenant, period, e);
                    Some(Explained {
                        tenant: tenant.to_owned(),
                        payload: adapters::events::payload(&fact),
                        invoiced: false,
                        carried,
                    })
                })
            })
            .await;
        if found.is_some() {
            return Ok(found);
        }
        let starts =
            (0..self.log.partitions(&self.billing).await?).map(|p| Position::start(self.billing.clone(), p)).collect();
        let mut reader = self.log.reader(starts).await?;
        loop {
            let batch = reader.catch_up_batch(BATCH, Duration::from_millis(200)).await?;
            if batch.is_empty() {
                return Ok(None);
            }
            for record in &batch {
                let Ok(envelope) = record.envelope() else { continue };
                if envelope.meta.event_id != id {
                    continue;
                }
                let payload = envelope.open_plain()?;
                use meridian_events::payload::Payload as P;
                if !matches!(payload, P::ChargePosted(_) | P::CreditPosted(_) | P::ChargeUnpriced(_)) {
                    return Ok(None);
                }
                return Ok(Some(Explained { tenant: envelope.meta.tenant, payload, invoiced: true, carried: false }));
            }
        }
    }

    /// An issued invoice by its number, and its credit notes.
    pub async fn invoice(&self, number: &str) -> Option<(Issued, Vec<CreditNote>)> {
        let issuance = self.issuance.lock().await;
        let issued = issuance.state().by_number(number)?.clone();
        Some((issued, credit_note::against(issuance.state(), number).into_iter().cloned().collect()))
    }

    /// Issues the credit note `ask` makes (or returns the one its key made).
    pub async fn credit(&self, ask: &credit_note::Ask, now: UnixMicros) -> Result<CreditNote, Error> {
        let mut issuance = self.issuance.lock().await;
        let (note, new) = credit_note::credit(issuance.state(), &self.credit_note_series, ask, now)?;
        if !new {
            return Ok(note);
        }
        let meta = EventMeta {
            event_id: note.event_id,
            aggregate_type: "billing.series".into(),
            aggregate_id: meridian_events::id::aggregate_id("billing.series", &[note.series.as_bytes()]),
            aggregate_version: note.sequence,
            tenant: note.tenant.clone(),
            home_region: self.region.clone(),
            occurred_at: now,
            causation_id: Some(note.invoice_event_id),
            correlation_id: None,
            traceparent: meridian_telemetry::traceparent(),
        };
        let payload = adapters::events::credit_note_issued(&note, &self.issuer);
        let batch = vec![Outgoing::new(self.billing.clone(), &meridian_events::Envelope::plain(meta, &payload)?)?];
        let appended = self.log.append(batch.clone()).await?;
        issuance.feed_appended(batch, appended, self.keys.as_ref())?;
        tracing::info!(region = %self.region, number = %note.number, invoice = %note.invoice, total = note.total, "credit note issued");
        Ok(note)
    }

    /// What `tenant`'s invoices of `period` not issued yet would say.
    pub async fn preview(&self, tenant: &str, period: &str) -> Vec<invoice::Preview> {
        let ledger = self.projector.lock().await;
        let issuance = self.issuance.lock().await;
        let issued = |contract: &str| issuance.state().issued.contains_key(&format!("{tenant}/{period}/{contract}"));
        invoice::preview(ledger.state(), tenant, period).into_iter().filter(|p| !issued(&p.contract)).collect()
    }

    /// `tenant`'s issued invoices of `period`.
    pub async fn invoices(&self, tenant: &str, period: &str) -> Vec<Issued> {
        self.issuance.lock().await.state().of(tenant, period).into_iter().cloned().collect()
    }

    /// Writes the snapshot when due (`force`: whenever anything changed).
    /// Taken between steps: the outbox is empty and the positions are
    /// committed ones.
    pub async fn snapshot(&self, force: bool) -> Result<(), Error> {
        let encoded = {
            let projector = self.projector.lock().await;
            self.snapshots.encode_if_due(&projector, force)?
        };
        if let Some((fed, bytes)) = encoded {
            self.snapshots.write::<LedgerProjection>(fed, bytes).await?;
        }
        self.issuance.snapshot(force).await?;
        Ok(())
    }

    pub fn opened(&self) -> &Resumed {
        &self.opened
    }

    pub async fn stats(&self) -> Stats {
        self.projector.lock().await.stats().clone()
    }

    /// Reads the ledger under the lock.
    pub async fn read<T>(&self, f: impl FnOnce(&Ledger) -> T) -> T {
        f(self.projector.lock().await.state())
    }

    /// A tenant's (or `group:G`'s) totals by `period/currency`.
    pub async fn totals(&self, owner: &str) -> BTreeMap<String, Totals> {
        let prefix = format!("{owner}/");
        self.read(|l| {
            l.totals
                .iter()
                .filter_map(|(k, t)| k.strip_prefix(&prefix).map(|rest| (rest.to_owned(), t.clone())))
                .collect()
        })
        .await
    }
}

/// The ledger at the committed positions: the snapshot (or nothing), then
/// the routing records up to where the consumer committed, their facts
/// dropped (they are in the log). Each record is priced with the prices
/// `schedule` says were in force at its place (so the ledger says what the
/// log says whatever the configuration now is), `pricebook` before the
/// schedule's first change (a log older than it); the ledger leaves with
/// `pricebook`, the prices this process decides with.
#[allow(clippy::too_many_arguments)] // the log, where to read, and the prices
async fn recover(
    region: &str,
    log: &dyn EventLog,
    keys: &dyn KeyStore,
    routing: &TopicName,
    snapshots: &Snapshotter,
    schedule: &crate::domain::pricing::Schedule,
    pricebook: &crate::domain::pricing::Pricebook,
    idle: Duration,
) -> Result<(Projector<LedgerProjection>, bool, u64), Error> {
    let starts: Vec<Position> =
        (0..log.partitions(routing).await?).map(|p| Position::start(routing.clone(), p)).collect();
    let (mut projector, from_snapshot) = match snapshots.files().load_or_set_aside::<LedgerProjection>()? {
        Loaded::Found(snapshot) => (Projector::restore(snapshot)?, true),
        Loaded::Missing => (Projector::new(starts.clone()), false),
        Loaded::SetAside { set_aside, reason } => {
            tracing::warn!(%region, path = %set_aside.display(), %reason, "billing's snapshot set aside; folding the routing topic again");
            (Projector::new(starts.clone()), false)
        }
    };
    projector.ensure_positions(starts);
    projector.state_mut().outbox.clear();
    projector.state_mut().pricebook = pricebook.clone();
    let committed: BTreeMap<u32, u64> =
        log.resume(CONSUMER, routing).await?.into_iter().map(|p| (p.partition, p.offset)).collect();
    let behind = |p: &Position| p.offset < committed.get(&p.partition).copied().unwrap_or(0);
    let from: Vec<Position> = projector.positions().into_iter().filter(|p| behind(p)).collect();
    if from.is_empty() {
        return Ok((projector, from_snapshot, 0));
    }
    let mut reader = log.reader(from).await?;
    let mut folded = 0u64;
    let mut in_force = None;
    loop {
        let batch = reader.catch_up_batch(BATCH, idle).await?;
        for record in &batch {
            // Only what was committed: the rest is decided afresh.
            if record.offset < committed.get(&record.partition).copied().unwrap_or(0) {
                let change = schedule.at(record.partition, record.offset);
                if change != in_force {
                    in_force = change;
                    projector.state_mut().pricebook =
                        change.map_or_else(|| pricebook.clone(), |c| schedule.changes[c].pricebook.clone());
                }
                projector.feed(record, keys)?;
                folded += 1;
            }
        }
        projector.state_mut().outbox.clear();
        let done = projector.positions().iter().all(|p| !behind(p));
        if batch.is_empty() || done {
            break;
        }
    }
    projector.state_mut().pricebook = pricebook.clone();
    if folded > 0 {
        tracing::info!(%region, records = folded, "billing folded the inputs committed after its snapshot");
    }
    Ok((projector, from_snapshot, folded))
}

#[cfg(test)]
pub(crate) mod tests {
    use meridian_events::payload::Payload;
    use meridian_events::{Envelope, EventId, UnixMicros};
    use meridian_log::TopicSpec;
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
    use meridian_log::failpoint::{Action, FailPoints};
    use meridian_projection::snapshot::FileSnapshots;
    use uuid::Uuid;

    use super::*;

    /// Routing's event `payload` of `study` at `version` (tenant acme,
    /// us-east), with an id derived from them.
    pub(crate) fn routing_event_at(study: Uuid, version: u64, payload: Payload, at: UnixMicros) -> Envelope {
        let meta = EventMeta {
            event_id: EventId::derived(EventId(study), payload.type_name(), version as u32),
            aggregate_type: payload.info().aggregate_type.into(),
            aggregate_id: study,
            aggregate_version: version,
            tenant: "acme".into(),
            home_region: "us-east".into(),
            occurred_at: at,
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        };
        payload.plain_envelope(meta).unwrap()
    }

    fn platform() -> Platform {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev");
        Platform::load(&dir).unwrap()
    }

    /// 2026-11-04 10:00 New York.
    const AT: i64 = (1_793_768_400 + 10 * 3_600) * 1_000_000;

    fn routing_event(study: Uuid, version: u64, payload: Payload) -> Envelope {
        routing_event_at(study, version, payload, UnixMicros(AT))
    }

    /// A final CT read of `study`, queued and signed by dr-ana-ortiz.
    fn read(study: Uuid) -> Vec<Envelope> {
        let queued = pb::StudyQueued {
            study_id: study.to_string(),
            tenant: "acme".into(),
            priority: "routine".into(),
            requested_priority: "routine".into(),
            read_type: "final".into(),
            facility: "acme-general".into(),
            contract: "acme-atlantic".into(),
            modality: "CT".into(),
            rvu_milli: 850,
            completed_at: Some(UnixMicros(AT).to_timestamp()),
            ..Default::default()
        };
        let signed = pb::AssignmentCompleted {
            study_id: study.to_string(),
            reader_id: "dr-ana-ortiz".into(),
            read_type: "final".into(),
            signed_at: Some(UnixMicros(AT + 3_600_000_000).to_timestamp()),
            reading_group: "atlantic-rads".into(),
        };
        vec![
            routing_event(study, 1, Payload::StudyQueued(queued)),
            routing_event(study, 2, Payload::AssignmentCompleted(signed)),
        ]
    }

    fn reader() -> Envelope {
        let registered = pb::ReaderRegistered {
            reader_id: "dr-ana-ortiz".into(),
            reading_group: "atlantic-rads".into(),
            ..Default::default()
        };
        routing_event(Uuid::from_u128(1), 1, Payload::ReaderRegistered(registered))
    }

    struct Region {
        _dir: tempfile::TempDir,
        log: Arc<EmbeddedLog>,
        routing: TopicName,
        billing: TopicName,
        failpoints: FailPoints,
        snapshots: std::path::PathBuf,
    }

    async fn region() -> Region {
        let dir = tempfile::TempDir::new().unwrap();
        let failpoints = FailPoints::default();
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        let (routing, billing) = (topic("us-east", "routing").unwrap(), topic("us-east", "billing").unwrap());
        for t in [&routing, &billing] {
            log.ensure_topic(&TopicSpec::new(t.clone(), 4)).await.unwrap();
        }
        let snapshots = dir.path().join("snapshots");
        Region { _dir: dir, log, routing, billing, failpoints, snapshots }
    }

    async fn open(r: &Region) -> Billing {
        let keys: Arc<dyn KeyStore> = Arc::new(r.log.key_store());
        let snapshots = Snapshotter::new(FileSnapshots::new(&r.snapshots), 1, Duration::ZERO);
        let idle = Duration::from_millis(50);
        Billing::open("us-east", &platform(), r.log.clone(), keys, snapshots, r.failpoints.clone(), idle).await.unwrap()
    }

    async fn append(r: &Region, events: &[Envelope]) {
        let batch = events.iter().map(|e| Outgoing::new(r.routing.clone(), e).unwrap()).collect();
        r.log.append(batch).await.unwrap();
    }

    /// Billing's topic: (payload type, event id) of every record.
    async fn posted(r: &Region) -> Vec<(String, EventId)> {
        let starts = (0..4).map(|p| Position::start(r.billing.clone(), p)).collect();
        let records = meridian_log::contract::read_to_end(r.log.as_ref(), starts).await;
        records
            .iter()
            .map(|rec| {
                let e = rec.envelope().unwrap();
                (e.payload_type.rsplit('.').next().unwrap().to_owned(), e.meta.event_id)
            })
            .collect()
    }

    fn count(posted: &[(String, EventId)], kind: &str) -> usize {
        posted.iter().filter(|(k, _)| k == kind).count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_signed_read_is_charged_and_paid_once_through_a_failed_step_and_restarts() {
        let r = region().await;
        append(&r, &[reader()]).await;
        let studies: Vec<Uuid> = (10..20u128).map(Uuid::from_u128).collect();
        for s in &studies[..5] {
            append(&r, &read(*s)).await;
        }
        let billing = open(&r).await;
        assert!(billing.pass(Duration::from_millis(50)).await.unwrap() > 0);
        billing.snapshot(true).await.unwrap();
        // A step dies after deciding, before committing: nothing of it lands.
        for s in &studies[5..8] {
            append(&r, &read(*s)).await;
        }
        r.failpoints.set(AFTER_DECIDE, Some(Action::Error));
        assert!(billing.pass(Duration::from_millis(50)).await.is_err());
        r.failpoints.set(AFTER_DECIDE, None);
        assert_eq!(count(&posted(&r).await, "ChargePosted"), 5);
        assert!(billing.pass(Duration::from_millis(50)).await.unwrap() > 0, "read again");
        // A restart from the snapshot (taken before the last two steps):
        // the committed inputs are folded again without appending again.
        drop(billing);
        for s in &studies[8..] {
            append(&r, &read(*s)).await;
        }
        let billing = open(&r).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        let posted = posted(&r).await;
        assert_eq!(count(&posted, "ChargePosted"), 10, "{posted:?}");
        assert_eq!(count(&posted, "PayoutAccrued"), 10, "{posted:?}");
        let mut ids: Vec<EventId> = posted.iter().map(|(_, id)| *id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), posted.len(), "no fact twice");
        // 45.00 each; 27.63 of payout each.
        let totals = billing.totals("acme").await;
        assert_eq!(totals["2026-11/USD"].charges, 45_000);
        assert_eq!(totals["2026-11/USD"].charged_reads, 10);
        assert_eq!(billing.totals("group:atlantic-rads").await["2026-11/USD"].payouts, 27_630);
        assert_eq!(billing.stats().await.conflicts, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn invoices_are_numbered_without_gaps_across_restarts_and_issued_once() {
        let r = region().await;
        append(&r, &read(Uuid::from_u128(70))).await;
        let billing = open(&r).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        // November (New York) is open until December 1st, 05:00 UTC.
        let open_until = UnixMicros(1_796_101_200 * 1_000_000);
        let refused = billing.issue("acme", "2026-11", UnixMicros(open_until.0 - 1)).await.unwrap_err();
        assert!(refused.to_string().contains("open until 2026-12-01T00:00:00-05:00"), "{refused}");
        let first = billing.issue("acme", "2026-11", open_until).await.unwrap();
        assert_eq!(first.iter().map(|i| (i.number.as_str(), i.total)).collect::<Vec<_>>(), [("US-000001", 4_500)]);
        assert_eq!(billing.issue("acme", "2026-11", open_until).await.unwrap(), first, "issued once");
        // Issued, the period leaves the ledger's memory and its preview.
        assert!(!billing.read(|l| l.entries.contains_key("acme/2026-11")).await);
        assert!(billing.preview("acme", "2026-11").await.is_empty());
        billing.snapshot(true).await.unwrap();
        drop(billing);
        // December's read, after a restart: the series goes on.
        let mut december = read(Uuid::from_u128(71));
        let Payload::AssignmentCompleted(mut signed) = december[1].open_plain().unwrap() else { panic!() };
        signed.signed_at = Some(UnixMicros(open_until.0 + 86_400_000_000).to_timestamp());
        december[1] = routing_event(Uuid::from_u128(71), 2, Payload::AssignmentCompleted(signed));
        append(&r, &december).await;
        let billing = open(&r).await;
        assert!(!billing.read(|l| l.entries.contains_key("acme/2026-11")).await, "and stays out after a restart");
        // No step taken since the restart: issuing takes December's read in first.
        let next = billing.issue("acme", "2026-12", UnixMicros(1_798_779_600 * 1_000_000)).await.unwrap();
        assert_eq!(next[0].number, "US-000002");
        assert_eq!(billing.invoices("acme", "2026-11").await, first);
        let posted = posted(&r).await;
        assert_eq!(count(&posted, "InvoiceIssued"), 2, "{posted:?}");
    }

    /// `study`'s final CT read, signed at `signed_at`.
    fn read_signed_at(study: Uuid, signed_at: UnixMicros) -> Vec<Envelope> {
        let mut events = read(study);
        let Payload::AssignmentCompleted(mut signed) = events[1].open_plain().unwrap() else { panic!() };
        signed.signed_at = Some(signed_at.to_timestamp());
        events[1] = routing_event(study, 2, Payload::AssignmentCompleted(signed));
        events
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_comes_after_its_months_invoice_goes_on_the_next_one_through_restarts() {
        let r = region().await;
        append(&r, &read(Uuid::from_u128(80))).await;
        let billing = open(&r).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        // The ledger's snapshot is from before the invoice: a restart must
        // learn of the invoice from its document, not from the snapshot.
        billing.snapshot(true).await.unwrap();
        let december = UnixMicros(1_796_101_200 * 1_000_000);
        let november = billing.issue("acme", "2026-11", december).await.unwrap();
        assert_eq!(november[0].total, 4_500);
        let document = billing.document(&november[0]).await.unwrap();
        assert_eq!(document.number, november[0].number);
        assert_eq!(document.lines[0].event_ids.len(), 1, "{document:?}");

        // A November read routing records only now (it was down, say).
        let late = Uuid::from_u128(81);
        append(&r, &read(late)).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        drop(billing);
        let billing = open(&r).await;
        assert!(billing.preview("acme", "2026-11").await.is_empty(), "November is issued");
        let ledger = billing.read(|l| l.entries.get("acme/2026-11").cloned().unwrap_or_default()).await;
        assert_eq!(ledger.len(), 1, "only the late read is left of November: {ledger:?}");
        assert_eq!(ledger[0].study, late);

        // December's invoice bills December's read and carries November's.
        append(&r, &read_signed_at(Uuid::from_u128(82), UnixMicros(december.0 + 86_400_000_000))).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        let preview = billing.preview("acme", "2026-12").await;
        let acme = preview.iter().find(|p| p.contract == "acme-atlantic").unwrap();
        let lines: Vec<(&str, &str, u64, i64)> =
            acme.lines.iter().map(|l| (l.line.as_str(), l.period.as_str(), l.quantity, l.amount)).collect();
        assert_eq!(
            lines,
            [("engagement.per_study.CT", "", 1, 4_500), ("engagement.per_study.CT", "2026-11", 1, 4_500)],
            "{preview:?}"
        );
        let january = UnixMicros(1_798_779_600 * 1_000_000);
        let issued = billing.issue("acme", "2026-12", january).await.unwrap();
        assert_eq!((issued[0].number.as_str(), issued[0].total), ("US-000002", 9_000));
        // Once carried, it is gone: not on January's, not after a restart.
        drop(billing);
        let billing = open(&r).await;
        assert!(!billing.read(|l| l.entries.contains_key("acme/2026-11")).await);
        let january = billing.preview("acme", "2027-01").await;
        assert!(january.iter().all(|p| p.lines.is_empty()), "{january:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn credit_notes_correct_an_issued_invoice_in_their_own_series_through_restarts() {
        let r = region().await;
        for study in 90..93u128 {
            append(&r, &read(Uuid::from_u128(study))).await;
        }
        let billing = open(&r).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        // A charge explained from the ledger, then (invoiced) from the topic.
        let charge = billing.read(|l| l.entries["acme/2026-11"][0].clone()).await;
        let explained = billing.explain(charge.id).await.unwrap().unwrap();
        let Payload::ChargePosted(charged) = &explained.payload else { panic!("{explained:?}") };
        assert_eq!((explained.tenant.as_str(), explained.invoiced), ("acme", false));
        assert_eq!(charged.lines[0].line, "engagement.per_study.CT");
        assert_eq!(charged.cause_event_id, charge.cause.to_string());
        assert_ne!(charge.cause, EventId(Uuid::nil()));
        let december = UnixMicros(1_796_101_200 * 1_000_000);
        let invoice = billing.issue("acme", "2026-11", december).await.unwrap().remove(0);
        let after = billing.explain(charge.id).await.unwrap().unwrap();
        assert!(after.invoiced);
        assert_eq!(after.payload, explained.payload, "the same charge, as the topic has it");
        assert!(billing.explain(EventId(Uuid::from_u128(12345))).await.unwrap().is_none());
        assert_eq!((invoice.number.as_str(), invoice.total), ("US-000001", 13_500));
        let ask = |lines: &[(u32, u64)], key: &str| credit_note::Ask {
            invoice: invoice.number.clone(),
            lines: lines.to_vec(),
            reason: "study read twice".into(),
            key: key.into(),
        };
        let first = billing.credit(&ask(&[(1, 1)], "first"), december).await.unwrap();
        assert_eq!((first.number.as_str(), first.total), ("US-CN-000001", -4_500));
        assert_eq!(billing.credit(&ask(&[(1, 1)], "first"), december).await.unwrap(), first, "a retry");
        drop(billing);

        let billing = open(&r).await;
        let (issued, notes) = billing.invoice("US-000001").await.unwrap();
        assert_eq!(notes, std::slice::from_ref(&first), "folded from the log again");
        let document = billing.document(&issued).await.unwrap();
        assert_eq!(document.lines[0].event_ids.len(), 3, "the invoice as issued: {document:?}");
        let refused = billing.credit(&ask(&[(1, 3)], "second"), december).await.unwrap_err();
        assert!(refused.to_string().contains("has 2 left to credit, not 3"), "{refused}");
        let second = billing.credit(&ask(&[(1, 0)], "second"), december).await.unwrap();
        assert_eq!((second.number.as_str(), second.total), ("US-CN-000002", -9_000));
        let posted = posted(&r).await;
        assert_eq!(count(&posted, "CreditNoteIssued"), 2, "{posted:?}");
        // The invoice series goes on apart from the credit notes'.
        append(&r, &read_signed_at(Uuid::from_u128(94), UnixMicros(december.0 + 86_400_000_000))).await;
        let next = billing.issue("acme", "2026-12", UnixMicros(1_798_779_600 * 1_000_000)).await.unwrap();
        assert_eq!(next[0].number, "US-000002");
    }

    /// The example platform with acme-atlantic's CT read at `price`.
    fn priced(price: &str) -> Platform {
        let mut platform = platform();
        let contract = platform.contracts.get_mut("acme-atlantic").unwrap();
        contract.engagement.per_study.insert("CT".into(), price.parse().unwrap());
        platform
    }

    async fn open_priced(r: &Region, price: &str) -> Billing {
        let keys: Arc<dyn KeyStore> = Arc::new(r.log.key_store());
        // No snapshot: every start folds the routing topic from its start.
        let (snapshots, idle) = (Snapshotter::none(), Duration::from_millis(50));
        let failpoints = r.failpoints.clone();
        Billing::open("us-east", &priced(price), r.log.clone(), keys, snapshots, failpoints, idle).await.unwrap()
    }

    /// Each ChargePosted's amount on billing's topic, in order of size.
    async fn charged_amounts(r: &Region) -> Vec<i64> {
        let starts = (0..4).map(|p| Position::start(r.billing.clone(), p)).collect();
        let records = meridian_log::contract::read_to_end(r.log.as_ref(), starts).await;
        let mut amounts: Vec<i64> = records
            .iter()
            .filter_map(|rec| match rec.envelope().unwrap().open_plain().unwrap() {
                Payload::ChargePosted(c) => Some(c.amount.unwrap().minor_units),
                _ => None,
            })
            .collect();
        amounts.sort_unstable();
        amounts
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_folded_again_after_the_prices_changed_keeps_the_price_it_was_charged() {
        let r = region().await;
        append(&r, &[reader()]).await;
        // Charged at $45, then the process stops.
        let billing = open_priced(&r, "45.00").await;
        append(&r, &read(Uuid::from_u128(60))).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        drop(billing);
        // The prices change; the routing topic is folded again from its
        // start (no snapshot): the first read stays at $45, a new one is $50.
        let billing = open_priced(&r, "50.00").await;
        assert_eq!(billing.totals("acme").await["2026-11/USD"].charges, 4_500, "folded again at its price");
        append(&r, &read(Uuid::from_u128(61))).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        drop(billing);
        // And again at $55: each read as it was charged, as the log says.
        let billing = open_priced(&r, "55.00").await;
        assert_eq!(billing.totals("acme").await["2026-11/USD"].charges, 9_500);
        let entries = billing.read(|l| l.entries["acme/2026-11"].clone()).await;
        let mut in_ledger: Vec<i64> = entries
            .iter()
            .filter_map(|e| match &e.what {
                ledger::What::Charged(c) => Some(c.amount),
                _ => None,
            })
            .collect();
        in_ledger.sort_unstable();
        assert_eq!(in_ledger, charged_amounts(&r).await, "the ledger says what the log says");
        assert_eq!(in_ledger, vec![4_500, 5_000]);
        // The prices in force were recorded once a change: three of them.
        assert_eq!(billing.issuance.lock().await.state().prices.changes.len(), 3);
        drop(billing);
        let billing = open_priced(&r, "55.00").await;
        assert_eq!(billing.issuance.lock().await.state().prices.changes.len(), 3, "unchanged prices add none");
        append(&r, &read(Uuid::from_u128(62))).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        assert_eq!(billing.totals("acme").await["2026-11/USD"].charges, 15_000);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_no_price_covers_is_posted_unpriced_and_charged_when_the_price_exists() {
        let r = region().await;
        let study = Uuid::from_u128(50);
        let mut events = read(study);
        // Northwind's subscription prices every modality by default; a
        // contract nobody configured prices nothing.
        let Payload::StudyQueued(mut q) = events[0].open_plain().unwrap() else { panic!() };
        q.contract = "acme-gone".into();
        events[0] = routing_event(study, 1, Payload::StudyQueued(q));
        append(&r, &events).await;
        let billing = open(&r).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        let posted = posted(&r).await;
        assert_eq!((count(&posted, "ChargeUnpriced"), count(&posted, "ChargePosted")), (1, 0), "{posted:?}");
        assert_eq!(billing.read(|l| l.unpriced.len()).await, 1);
        assert_eq!(billing.reprice().await.unwrap(), 0, "still no such contract");

        // A routing event billing cannot read is counted by payload and
        // field, with the reason, and passed; what follows is still read.
        let broken = Uuid::from_u128(51);
        let mut events = read(broken);
        let Payload::StudyQueued(mut q) = events[0].open_plain().unwrap() else { panic!() };
        q.study_id = "not-a-study".into();
        events[0] = routing_event(broken, 1, Payload::StudyQueued(q));
        append(&r, &events).await;
        append(&r, &read(Uuid::from_u128(52))).await;
        billing.pass(Duration::from_millis(50)).await.unwrap();
        let unreadable = billing.read(|l| l.unreadable.clone()).await;
        let (times, why) = &unreadable["StudyQueued.study_id"];
        assert_eq!(*times, 1);
        assert!(why.contains("\"not-a-study\" is not a UUID"), "{why}");
        let after = billing.totals("acme").await.values().map(|t| t.charged_reads).sum::<u64>();
        assert_eq!(after, 1, "the next read is charged");
    }
}
