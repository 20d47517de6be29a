//! Reporting on a region's log: one projection of routing's topic and
//! reporting's own two (the operational one with signatures, the PHI one
//! with the text), behind one lock. A command catches the projection up
//! to the log's end first (so a signature is judged against the routing
//! facts as they are now), decides, appends, and folds what it appended.
//! Ids derive from the report and version, so a retried append is the
//! same event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use meridian_events::envelope::EventMeta;
use meridian_events::payload::Payload;
use meridian_events::{AccessionKey, DataClass, Envelope, EventId, KeyStore, StudyId, TenantSecret, UnixMicros};
use meridian_log::{EventLog, Outgoing, Position, TopicName};
use meridian_projection::live::Live;
use meridian_projection::run::{Resumed, Snapshotter, catch_up};
use meridian_projection::writers::OwnRegionWins;
use meridian_projection::{Event as Logged, Projection, Stats};
use meridian_proto::events::v1 as pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::adapters;
use crate::adapters::receivers::Receivers;
use crate::domain::critical::{self, Critical, CriticalEvent};
use crate::domain::delivery::{self, Delivery, Endpoint, Outcome, Policy};
use crate::domain::message::{Patient, ReportMessage, default_headings};
use crate::domain::model::{self, State, Study};
use crate::domain::order::{self, OrderEvent, OrderIn};
use crate::domain::peer_review::{self, PeerEvent, Review, Sample};
use crate::domain::report::{self, Command, Event};
use crate::domain::template::{Field, Template, in_language};
use meridian_config::{DeliveryEndpoint, Platform};
use meridian_log::failpoint::FailPoints;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reporting log: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("reporting state: {0}")]
    Projection(#[from] meridian_projection::Error),
    #[error("reporting event: {0}")]
    Envelope(#[from] meridian_events::envelope::Error),
    #[error("{0}")]
    Refused(#[from] report::Error),
    #[error("no delivery {0} is waiting or dead here")]
    NoDelivery(Uuid),
    #[error("{0}")]
    Critical(#[from] critical::CriticalError),
    #[error("{0}")]
    PeerReview(#[from] peer_review::PeerError),
    #[error("tenant {tenant} is not homed in region {region}: its orders (PHI) are not taken here")]
    NotHomed { tenant: String, region: String },
    #[error("study {study}'s record (text version {version}; 0: its first instance): {reason}")]
    Text { study: Uuid, version: u32, reason: String },
}

/// Reporting's state with what the fold needs besides the domain's: each
/// study's last aggregate version, and the events it could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folded {
    pub state: State,
    /// `reporting.study/<id>` and `reporting.text/<id>` → the aggregate's
    /// last version. Text (PHI topic) and signatures (operational topic)
    /// are two aggregates: one aggregate's versions must stay on one
    /// topic, or a reader that folds the topics in another order drops
    /// the lower versions as copies.
    pub versions: BTreeMap<String, u64>,
    /// `payload.field` → (how many, the last reason and event).
    pub unreadable: BTreeMap<String, (u64, String)>,
    /// Which reader events count: those of the region the reader sits in
    /// (copied here when that is another), once one arrived.
    #[serde(default)]
    pub readers_written: OwnRegionWins,
}

pub struct ReportingProjection;

impl Projection for ReportingProjection {
    type State = Folded;
    const NAME: &'static str = "reporting.reports";

    fn apply(mut folded: Folded, event: &Logged<'_>) -> Folded {
        let meta = &event.envelope.meta;
        // From other regions' routing, only their readers (a final needs a
        // licence where the patient is, wherever the reader sits).
        let reader = match event.payload {
            Payload::ReaderRegistered(r) => Some((&r.reader_id, Some(r.region.as_str()))),
            Payload::LicenceUpdated(l) => Some((&l.reader_id, None)),
            _ => None,
        };
        match reader {
            Some((reader, registered_in))
                if !folded.readers_written.takes(reader, registered_in, &meta.home_region, event.copied) =>
            {
                return folded;
            }
            Some(_) => {}
            None if event.copied => return folded,
            None => {}
        }
        if [STUDY, TEXT, CRITICAL, CONTACT, PEER, ORDER, ORDER_MATCH].contains(&meta.aggregate_type.as_str()) {
            let last = folded.versions.entry(format!("{}/{}", meta.aggregate_type, meta.aggregate_id)).or_default();
            *last = (*last).max(meta.aggregate_version);
        }
        match adapters::events::fact(event.payload, meta.event_id, event.partition, event.offset) {
            Ok(Some(fact)) => folded.state = model::apply(std::mem::take(&mut folded.state), &fact),
            Ok(None) => {}
            Err(why) => meridian_projection::unreadable::count(&mut folded.unreadable, &why, meta.event_id),
        }
        folded
    }
}

/// A saved version's text, read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    pub findings: String,
    pub impression: String,
    /// The template's coded fields, the template, the language.
    pub fields: BTreeMap<String, String>,
    pub template: String,
    pub language: String,
}

pub struct Reporting {
    region: String,
    log: Arc<dyn EventLog>,
    keys: Arc<dyn KeyStore>,
    live: Live<ReportingProjection>,
    /// Signatures (operational) and text (PHI).
    signed: TopicName,
    text: TopicName,
    /// Where the studies' instances (their patients) are.
    ingest: TopicName,
    idle: Duration,
    /// The tenants' receivers (configuration is read at start).
    platform: Arc<Platform>,
    policy: Policy,
    failpoints: FailPoints,
    /// Woken when a delivery is requested, so the worker sends at once
    /// rather than at its next tick.
    requested: tokio::sync::Notify,
    /// The id secrets of the tenants homed here: an order's accession key.
    secrets: BTreeMap<String, TenantSecret>,
}

/// What receiving an order did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderReceipt {
    /// The order's opaque key.
    pub key: Uuid,
    /// The study it met, if it has.
    pub matched: Option<Uuid>,
    /// The same order (or a less urgent one) came before: nothing new.
    pub repeated: bool,
}

/// The aggregates of a study's report: signatures and amendments on the
/// operational topic, text on the PHI one.
const STUDY: &str = "reporting.study";
const TEXT: &str = "reporting.text";
/// A study's critical results (operational) and who was reached (PHI).
const CRITICAL: &str = "reporting.critical";
const CONTACT: &str = "reporting.critical.contact";
/// A study's peer review: requested, scored, arbitrated.
const PEER: &str = "reporting.peer_review";
/// An order (PHI) and its match (operational), by accession key.
const ORDER: &str = "reporting.order";
const ORDER_MATCH: &str = "reporting.order.match";

/// A frame is sent, its answer not recorded yet.
pub const AFTER_SEND: &str = "reporting.after_send";

/// The next version of aggregate `aggregate/id`, counting those bumped in
/// this batch.
fn next_version(folded: &Folded, bumped: &mut BTreeMap<String, u64>, aggregate: &str, id: Uuid) -> u64 {
    let slot = format!("{aggregate}/{id}");
    let next = bumped.get(&slot).or_else(|| folded.versions.get(&slot)).copied().unwrap_or(0) + 1;
    bumped.insert(slot, next);
    next
}

/// The envelope facts of a report's event of `aggregate` (the study's
/// next version of it, counting those bumped in this batch), its id one per
/// report version and `kind`.
fn report_event(
    folded: &Folded,
    bumped: &mut BTreeMap<String, u64>,
    aggregate: &'static str,
    kind: &str,
    study: Uuid,
    report: Uuid,
    version: u32,
) -> (&'static str, Uuid, u64, EventId, Uuid) {
    let next = next_version(folded, bumped, aggregate, study);
    (aggregate, study, next, EventId::derived(EventId(report), kind, version), study)
}

/// MSH-10 of a delivery: the same for every attempt (a receiver tells a
/// resend by it), within HL7 2.5.1's 20 characters.
pub fn control_id(delivery: Uuid) -> String {
    delivery.simple().to_string()[..20].to_owned()
}

/// The enabled receivers of every tenant, as the domain decides by them.
fn policy(platform: &Platform) -> Policy {
    let endpoints = platform
        .tenants
        .values()
        .map(|t| {
            let enabled = t.delivery.iter().filter(|d| d.enabled).map(|d| Endpoint {
                name: d.name.clone(),
                kind: d.kind.as_str().to_owned(),
                read_types: d.read_types.iter().map(|r| r.as_str().to_owned()).collect(),
            });
            (t.name.clone(), enabled.collect())
        })
        .collect();
    let languages = platform.contracts.values().map(|c| (c.name.clone(), c.report_language.clone())).collect();
    let templates = platform
        .templates
        .values()
        .map(|t| Template {
            name: t.name.clone(),
            modalities: t.modalities.clone(),
            body_parts: t.body_parts.clone(),
            titles: t.titles.clone(),
            findings: t.sections.findings.clone(),
            impression: t.sections.impression.clone(),
            fields: t
                .fields
                .iter()
                .map(|f| Field {
                    name: f.name.clone(),
                    titles: f.titles.clone(),
                    values: f.values.clone(),
                    required: f.required,
                })
                .collect(),
        })
        .collect();
    let samples = platform
        .contracts
        .values()
        .filter_map(|c| {
            let p = c.peer_review.as_ref()?;
            let within = i64::try_from(p.within.seconds).unwrap_or(i64::MAX / 1_000_000) * 1_000_000;
            Some((c.name.clone(), Sample { fraction: p.fraction, seed: p.seed.clone(), within }))
        })
        .collect();
    Policy { endpoints, samples, languages, templates }
}

fn topic(region: &str, class: DataClass, stream: &str) -> Result<TopicName, Error> {
    TopicName::new(region, class, stream).map_err(|e| Error::Log(meridian_log::Error::UnknownTopic { topic: e.name }))
}

impl Reporting {
    /// Opens from the snapshot and the tail of routing's topic and its own.
    pub async fn open(
        region: &str,
        platform: Arc<Platform>,
        log: Arc<dyn EventLog>,
        keys: Arc<dyn KeyStore>,
        snapshots: Snapshotter,
        idle: Duration,
        failpoints: FailPoints,
    ) -> Result<Reporting, Error> {
        let routing = topic(region, DataClass::Operational, "routing")?;
        let signed = topic(region, DataClass::Operational, "reporting")?;
        let text = topic(region, DataClass::Phi, "reporting")?;
        let ingest = topic(region, DataClass::Phi, "ingest")?;
        let mut starts = Vec::new();
        for t in [&routing, &signed, &text, &ingest] {
            starts.extend((0..log.partitions(t).await?).map(|p| Position::start(t.clone(), p)));
        }
        // The copies of the routing topics of the regions whose readers
        // read here (their licences): the region's context makes them at
        // start, so one missing means nothing was ever routed from there.
        for source in meridian_config::replication::sources_into(&platform, region) {
            let copy = topic(&source, DataClass::Operational, "routing")?;
            match log.partitions(&copy).await {
                Ok(n) => starts.extend((0..n).map(|p| Position::start(copy.clone(), p))),
                Err(meridian_log::Error::UnknownTopic { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let live = Live::open(region, snapshots, starts, log.as_ref(), keys.as_ref(), idle).await?;
        let policy = policy(&platform);
        Ok(Reporting {
            region: region.to_owned(),
            log,
            keys,
            live,
            signed,
            text,
            ingest,
            idle,
            platform,
            policy,
            failpoints,
            requested: tokio::sync::Notify::new(),
            secrets: BTreeMap::new(),
        })
    }

    /// The id secret of `tenant`, when it is homed here.
    pub fn secret(&self, tenant: &str) -> Option<&TenantSecret> {
        self.secrets.get(tenant)
    }

    /// The region it runs in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The id secrets of the tenants homed here, which orders are keyed by
    /// (without them, orders are refused).
    pub fn with_secrets(mut self, secrets: BTreeMap<String, TenantSecret>) -> Reporting {
        self.secrets = secrets;
        self
    }

    /// Decides `command` at `now` against the state caught up to the log's
    /// end, appends what it decides and folds it. Returns the events (none
    /// for a signature asked again) and the study as it now is.
    pub async fn execute(&self, command: Command, now: UnixMicros) -> Result<(Vec<Event>, Study), Error> {
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let events = report::decide(&projector.state().state, &self.policy, &command, now)?;
        if !events.is_empty() {
            let batch = self.outgoing(projector.state(), &events, now)?;
            let appended = self.log.append(batch.clone()).await?;
            projector.feed_appended(batch, appended, self.keys.as_ref())?;
            if events.iter().any(|e| matches!(e, Event::Requested(_))) {
                self.requested.notify_one();
            }
            for e in &events {
                let (study, what) = match e {
                    Event::Drafted { study, version, kind, .. } => (study, format!("{kind} version {version} saved")),
                    Event::Signed { study, read_type, .. } => (study, format!("{read_type} signed")),
                    Event::Amended { study, read_type, kind, .. } => (study, format!("{read_type} report {kind}")),
                    Event::Requested(d) => (&d.study, format!("delivery to {} requested", d.endpoint)),
                    Event::Peer(p) => (&p.study(), "drawn for peer review".to_owned()),
                    Event::Delivered { .. } | Event::DeliveryFailed { .. } => continue,
                };
                tracing::info!(region = %self.region, %study, "{what}");
            }
        }
        let study = command.study();
        let now_study = projector.state().state.studies.get(&study).cloned().unwrap_or_default();
        Ok((events, now_study))
    }

    fn outgoing(&self, folded: &Folded, events: &[Event], now: UnixMicros) -> Result<Vec<Outgoing>, Error> {
        let mut bumped: BTreeMap<String, u64> = BTreeMap::new();
        let mut batch = Vec::new();
        for e in events {
            // (aggregate type, aggregate, its version, event id, whose study)
            let (aggregate_type, aggregate, version, event_id, tenant_of) = match e {
                Event::Requested(d) => {
                    ("reporting.delivery", d.id, 1, EventId::derived(EventId(d.id), "requested", 0), d.study)
                }
                Event::Delivered { delivery, attempt, .. } => {
                    let id = EventId::derived(EventId(*delivery), "delivered", *attempt);
                    let study = folded.state.deliveries.get(delivery).map_or(Uuid::nil(), |d| d.study);
                    ("reporting.delivery", *delivery, u64::from(*attempt) + 1, id, study)
                }
                Event::DeliveryFailed { delivery, attempt, .. } => {
                    let id = EventId::derived(EventId(*delivery), "failed", *attempt);
                    let study = folded.state.deliveries.get(delivery).map_or(Uuid::nil(), |d| d.study);
                    ("reporting.delivery", *delivery, u64::from(*attempt) + 1, id, study)
                }
                Event::Drafted { study, report, version, keyed, .. } => {
                    let mut e = report_event(folded, &mut bumped, TEXT, "text", *study, *report, *version);
                    // A keyed save's id is its key's: a retry is the same event.
                    if let Some(id) = keyed {
                        e.3 = *id;
                    }
                    e
                }
                Event::Signed { study, report, version, .. } => {
                    report_event(folded, &mut bumped, STUDY, "signed", *study, *report, *version)
                }
                Event::Amended { study, report, version, kind, .. } => {
                    report_event(folded, &mut bumped, STUDY, kind, *study, *report, *version)
                }
                // Each once per study.
                Event::Peer(p) => {
                    let kind = match p {
                        PeerEvent::Requested { .. } => "peer.requested",
                        PeerEvent::Scored { .. } => "peer.scored",
                        PeerEvent::Arbitrated { .. } => "peer.arbitrated",
                    };
                    report_event(folded, &mut bumped, PEER, kind, p.study(), p.study(), 0)
                }
            };
            let tenant = folded.state.studies.get(&tenant_of).map(|s| s.facts.tenant.clone()).unwrap_or_default();
            let meta = self.meta(event_id, aggregate_type, aggregate, version, tenant, now);
            batch.push(self.record(meta, adapters::events::payload(e), StudyId(aggregate))?);
        }
        Ok(batch)
    }

    fn meta(
        &self,
        event_id: EventId,
        aggregate_type: &str,
        aggregate_id: Uuid,
        aggregate_version: u64,
        tenant: String,
        now: UnixMicros,
    ) -> EventMeta {
        EventMeta {
            event_id,
            aggregate_type: aggregate_type.into(),
            aggregate_id,
            aggregate_version,
            tenant,
            home_region: self.region.clone(),
            occurred_at: now,
            causation_id: None,
            correlation_id: None,
            // A reader's draft or signature: its call's span.
            traceparent: meridian_telemetry::traceparent(),
        }
    }

    /// One of reporting's events on its topic: the PHI ones (text, who was
    /// reached, orders) sealed under `key`'s data key on the PHI topic, the
    /// rest plain on the operational one.
    fn record(&self, meta: EventMeta, payload: Payload, key: StudyId) -> Result<Outgoing, Error> {
        let keys = self.keys.as_ref();
        Ok(match payload {
            Payload::ReportText(p) => Outgoing::new(self.text.clone(), &Envelope::sealed(meta, &p, key, keys)?)?,
            Payload::CriticalResultCommunicated(p) => {
                Outgoing::new(self.text.clone(), &Envelope::sealed(meta, &p, key, keys)?)?
            }
            Payload::OrderReceived(p) => Outgoing::new(self.text.clone(), &Envelope::sealed(meta, &p, key, keys)?)?,
            other => Outgoing::new(self.signed.clone(), &other.plain_envelope(meta)?)?,
        })
    }

    /// Sends the deliveries due at `now` (a few at a time) and records
    /// each answer. Between a send and its record, a crash sends again on
    /// restart: the receiver may see a message twice (the same MSH-10, the
    /// same conditional update), the log one answer.
    pub async fn deliver_due(&self, receivers: &Receivers, now: UnixMicros) -> Result<usize, Error> {
        let due = {
            let mut projector = self.live.lock().await;
            catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
            delivery::due(&projector.state().state.deliveries, now, 16)
        };
        for d in &due {
            let attempt = d.attempts + 1;
            let outcome = match self.message(d).await {
                Ok((message, tenant)) => match self.endpoint(&tenant, &d.endpoint) {
                    Some(endpoint) => {
                        let sending = ("MERIDIAN", self.region.as_str());
                        receivers.send(endpoint, &message, &control_id(d.id), d.requested_at, sending).await
                    }
                    None => Outcome::Failed {
                        error: format!("endpoint {} is no longer configured (or is off)", d.endpoint),
                        permanent: true,
                    },
                },
                Err(e) => Outcome::Failed { error: e.to_string(), permanent: false },
            };
            self.failpoints.hit(AFTER_SEND)?;
            let mut projector = self.live.lock().await;
            // Recorded once: another pass may have recorded this attempt.
            let current = projector.state().state.deliveries.get(&d.id).map(|now| now.attempts);
            if current != Some(d.attempts) {
                continue;
            }
            let event = report::outcome(d, attempt, outcome, now);
            match &event {
                Event::Delivered { answer, .. } => {
                    tracing::info!(region = %self.region, endpoint = %d.endpoint, delivery = %d.id, %answer, "report delivered");
                }
                Event::DeliveryFailed { error, permanent, .. } => {
                    tracing::warn!(region = %self.region, endpoint = %d.endpoint, delivery = %d.id, %error, permanent, "delivery failed");
                    meridian_telemetry::metrics::delivery_failed(&self.region, &d.endpoint, *permanent);
                }
                _ => {}
            }
            let batch = self.outgoing(projector.state(), std::slice::from_ref(&event), now)?;
            let appended = self.log.append(batch.clone()).await?;
            projector.feed_appended(batch, appended, self.keys.as_ref())?;
        }
        Ok(due.len())
    }

    /// Sends delivery `id` again: a new request replacing it, due `now`.
    pub async fn redeliver(&self, id: Uuid, now: UnixMicros) -> Result<Delivery, Error> {
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let old = projector.state().state.deliveries.get(&id).cloned().ok_or(Error::NoDelivery(id))?;
        let again = delivery::redeliver(&old, now);
        let event = Event::Requested(again.clone());
        let batch = self.outgoing(projector.state(), std::slice::from_ref(&event), now)?;
        let appended = self.log.append(batch.clone()).await?;
        projector.feed_appended(batch, appended, self.keys.as_ref())?;
        self.requested.notify_one();
        tracing::info!(region = %self.region, delivery = %again.id, supersedes = %id, endpoint = %again.endpoint, "delivery requested again");
        Ok(again)
    }

    /// Flags `study`'s critical result of ACR `category`, due within the
    /// contract's window for it.
    pub async fn flag_critical(
        &self,
        study: Uuid,
        reader: &str,
        category: u8,
        now: UnixMicros,
    ) -> Result<Critical, Error> {
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let contract =
            projector.state().state.studies.get(&study).map(|s| s.facts.contract.clone()).unwrap_or_default();
        let windows = self.platform.contracts.get(&contract).map(|c| c.critical_results.clone()).unwrap_or_default();
        let event = critical::flag(&projector.state().state, study, reader, category, windows.window(category), now)?;
        self.append_critical(&mut projector, &[event], now).await?;
        let flagged = projector.state().state.studies.get(&study).and_then(|s| s.critical.clone());
        flagged.ok_or_else(|| Error::Text { study, version: 0, reason: "flagged, yet not folded".into() })
    }

    /// Records who was reached about `study`'s critical result: closes it.
    pub async fn communicate_critical(
        &self,
        study: Uuid,
        reader: &str,
        recipient: &str,
        method: &str,
        at: UnixMicros,
        now: UnixMicros,
    ) -> Result<Critical, Error> {
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let events = critical::communicate(&projector.state().state, study, reader, recipient, method, at, now)?;
        self.append_critical(&mut projector, &events, now).await?;
        let closed = projector.state().state.studies.get(&study).and_then(|s| s.critical.clone());
        closed.ok_or_else(|| Error::Text { study, version: 0, reason: "closed, yet not folded".into() })
    }

    /// Escalates the critical results whose window passed by `now` with no
    /// one reached (once each: the event's id is the timer's).
    pub async fn escalate_due(&self, now: UnixMicros) -> Result<usize, Error> {
        let mut projector = self.live.lock().await;
        let due = critical::due(&projector.state().state, now);
        if !due.is_empty() {
            for e in &due {
                if let CriticalEvent::Escalated { study, category, .. } = e {
                    tracing::warn!(region = %self.region, %study, category, "critical result not communicated within its window: escalated");
                }
            }
            self.append_critical(&mut projector, &due, now).await?;
        }
        Ok(due.len())
    }

    async fn append_critical(
        &self,
        projector: &mut meridian_projection::Projector<ReportingProjection>,
        events: &[CriticalEvent],
        now: UnixMicros,
    ) -> Result<(), Error> {
        let folded = projector.state();
        let mut bumped: BTreeMap<String, u64> = BTreeMap::new();
        let mut batch = Vec::new();
        for e in events {
            let (study, aggregate, kind) = match e {
                CriticalEvent::Flagged { study, .. } => (*study, CRITICAL, "critical.flagged"),
                CriticalEvent::Closed { study, .. } => (*study, CRITICAL, "critical.closed"),
                CriticalEvent::Escalated { study, .. } => (*study, CRITICAL, "critical.escalated"),
                CriticalEvent::Communicated { study, .. } => (*study, CONTACT, "critical.contact"),
            };
            let version = next_version(folded, &mut bumped, aggregate, study);
            let event_id = match e {
                // Fires once per deadline, whoever fires it.
                CriticalEvent::Escalated { deadline, .. } => EventId::timer(study, "critical", *deadline),
                _ => EventId::derived(EventId(study), kind, u32::try_from(version).unwrap_or(u32::MAX)),
            };
            let tenant = folded.state.studies.get(&study).map(|s| s.facts.tenant.clone()).unwrap_or_default();
            let meta = self.meta(event_id, aggregate, study, version, tenant, now);
            // Who was reached is PHI: sealed under the study's key.
            batch.push(self.record(meta, adapters::events::critical_payload(e), StudyId(study))?);
        }
        let appended = self.log.append(batch.clone()).await?;
        projector.feed_appended(batch, appended, self.keys.as_ref())?;
        Ok(())
    }

    /// The reviewer's RADPEER score of `study`'s reviewed report.
    pub async fn score_peer_review(
        &self,
        study: Uuid,
        reviewer: &str,
        score: &str,
        now: UnixMicros,
    ) -> Result<Review, Error> {
        self.decide_peer(study, now, |state| peer_review::score(state, study, reviewer, score, now)).await
    }

    /// An admin of `group` arbitrates `study`'s score.
    pub async fn arbitrate(
        &self,
        study: Uuid,
        group: &str,
        arbiter: &str,
        score: &str,
        now: UnixMicros,
    ) -> Result<Review, Error> {
        self.decide_peer(study, now, |state| peer_review::arbitrate(state, study, group, arbiter, score, now)).await
    }

    async fn decide_peer(
        &self,
        study: Uuid,
        now: UnixMicros,
        decide: impl FnOnce(&State) -> Result<Vec<PeerEvent>, peer_review::PeerError>,
    ) -> Result<Review, Error> {
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let events: Vec<Event> = decide(&projector.state().state)?.into_iter().map(Event::Peer).collect();
        if !events.is_empty() {
            let batch = self.outgoing(projector.state(), &events, now)?;
            let appended = self.log.append(batch.clone()).await?;
            projector.feed_appended(batch, appended, self.keys.as_ref())?;
            for e in &events {
                if let Event::Peer(PeerEvent::Scored { score, .. } | PeerEvent::Arbitrated { score, .. }) = e {
                    tracing::info!(region = %self.region, %study, %score, "peer review scored");
                }
            }
        }
        let review = projector.state().state.studies.get(&study).and_then(|s| s.review.clone());
        review.ok_or_else(|| Error::Text { study, version: 0, reason: "scored, yet no review folded".into() })
    }

    /// Records an order from the hospital (in the tenant's home region
    /// only), matched at once when its study is here.
    pub async fn receive_order(&self, order: OrderIn, now: UnixMicros) -> Result<OrderReceipt, Error> {
        let secret = self
            .secrets
            .get(&order.tenant)
            .ok_or_else(|| Error::NotHomed { tenant: order.tenant.clone(), region: self.region.clone() })?;
        let key = AccessionKey::derive(secret, &order.accession).as_uuid();
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let events = order::receive(&projector.state().state, key, order, now);
        self.append_orders(&mut projector, &events, now).await?;
        let matched = projector.state().state.orders.orders.get(&key).and_then(|o| o.matched);
        Ok(OrderReceipt { key, matched, repeated: events.is_empty() })
    }

    /// Matches the orders whose study arrived after them.
    pub async fn match_orders(&self, now: UnixMicros) -> Result<usize, Error> {
        let mut projector = self.live.lock().await;
        let due = order::due(&projector.state().state, now);
        if !due.is_empty() {
            self.append_orders(&mut projector, &due, now).await?;
        }
        Ok(due.len())
    }

    async fn append_orders(
        &self,
        projector: &mut meridian_projection::Projector<ReportingProjection>,
        events: &[OrderEvent],
        now: UnixMicros,
    ) -> Result<(), Error> {
        if events.is_empty() {
            return Ok(());
        }
        let folded = projector.state();
        let mut bumped: BTreeMap<String, u64> = BTreeMap::new();
        let mut batch = Vec::new();
        for e in events {
            let (key, aggregate, tenant) = match e {
                OrderEvent::Received { key, order, .. } => (*key, ORDER, order.tenant.clone()),
                OrderEvent::Matched { key, .. } => {
                    let tenant = folded.state.orders.orders.get(key).map(|o| o.tenant.clone()).unwrap_or_default();
                    (*key, ORDER_MATCH, tenant)
                }
            };
            let version = next_version(folded, &mut bumped, aggregate, key);
            let event_id = match e {
                // One match per order and priority, whoever makes it.
                OrderEvent::Matched { study, priority, .. } => EventId::derived(
                    EventId(meridian_events::id::aggregate_id(
                        "reporting.order.match",
                        &[key.as_bytes(), study.as_bytes()],
                    )),
                    priority,
                    0,
                ),
                OrderEvent::Received { .. } => {
                    EventId::derived(EventId(key), "order", u32::try_from(version).unwrap_or(u32::MAX))
                }
            };
            let meta = self.meta(event_id, aggregate, key, version, tenant, now);
            // The order is PHI: sealed under its own data key (it may come
            // before any study).
            batch.push(self.record(meta, adapters::events::order_payload(e), StudyId(key))?);
            if let OrderEvent::Matched { study, priority, .. } = e {
                tracing::info!(region = %self.region, %study, order = %key, %priority, "order matched to its study");
            }
        }
        let appended = self.log.append(batch.clone()).await?;
        projector.feed_appended(batch, appended, self.keys.as_ref())?;
        Ok(())
    }

    /// Waits until a delivery is requested, or `at_most`.
    pub async fn wait_for_requests(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.requested.notified()).await;
    }

    /// The tenant's enabled endpoint `name`.
    fn endpoint(&self, tenant: &str, name: &str) -> Option<&DeliveryEndpoint> {
        self.platform.tenants.get(tenant)?.delivery.iter().find(|e| e.name == name && e.enabled)
    }

    /// What `d` sends: the report as it stands, its patient and study
    /// (read from the log: memory holds neither text nor patient).
    async fn message(&self, d: &Delivery) -> Result<(ReportMessage, String), Error> {
        let missing = |reason: &str| Error::Text { study: d.study, version: 0, reason: reason.to_owned() };
        let (study, group) = self
            .read(|f| {
                let s = f.state.studies.get(&d.study).cloned();
                let signer = s.as_ref().and_then(|s| s.report(&d.read_type)).and_then(|r| r.signed.clone());
                let group = signer.and_then(|sig| f.state.groups.get(&sig.reader).cloned()).unwrap_or_default();
                (s, group)
            })
            .await;
        let study = study.ok_or_else(|| missing("unknown study"))?;
        let report = study.report(&d.read_type).ok_or_else(|| missing("no report of the read"))?;
        let signed = report.signed.as_ref().ok_or_else(|| missing("the report is not signed"))?;
        let current = report.current().ok_or_else(|| missing("no text"))?;
        let text = self.text(d.study, current).await?;
        let signed_text = match report.versions.iter().find(|v| v.version == signed.version) {
            Some(v) if v.version != current.version => self.text(d.study, v).await?,
            _ => text.clone(),
        };
        let language = self.policy.language(&study.facts.contract).to_owned();
        let template = self.policy.templates.iter().find(|t| t.name == signed_text.template);
        let (title, headings, fields) = match template {
            Some(t) => {
                let say =
                    |texts: &BTreeMap<String, String>, or: &str| in_language(texts, &language).unwrap_or(or).to_owned();
                let fields = t
                    .fields
                    .iter()
                    .filter_map(|f| Some((say(&f.titles, &f.name), signed_text.fields.get(&f.name)?.clone())))
                    .collect();
                (say(&t.titles, ""), (say(&t.findings, "Findings"), say(&t.impression, "Impression")), fields)
            }
            None => (String::new(), default_headings(), Vec::new()),
        };
        let mut addenda = Vec::new();
        for v in report.addenda() {
            addenda.push(self.text(d.study, v).await?.findings);
        }
        let arrival = match study.arrived {
            Some(at) => self.arrival(d.study, at).await?,
            None => pb::InstanceReceived::default(),
        };
        let order = match study.order {
            Some(key) => self.order(key).await?,
            None => pb::OrderReceived::default(),
        };
        let message = ReportMessage {
            report: report.id,
            study: d.study,
            tenant: study.facts.tenant.clone(),
            status: d.status.clone(),
            read_type: d.read_type.clone(),
            patient: Patient {
                id: arrival.patient_id,
                issuer: arrival.issuer_of_patient_id,
                name: arrival.patient_name,
                birth_date: arrival.patient_birth_date,
                sex: arrival.patient_sex,
            },
            accession: arrival.accession_number,
            study_uid: arrival.study_instance_uid,
            study_description: arrival.study_description,
            study_date: arrival.study_date,
            study_time: arrival.study_time,
            signed_at: signed.at,
            reader: signed.reader.clone(),
            group,
            findings: text.findings,
            impression: text.impression,
            addenda,
            language,
            title,
            headings,
            fields,
            placer_order: order.placer_order_number,
            ordering_clinician: order.ordering_clinician,
        };
        Ok((message, study.facts.tenant.clone()))
    }

    /// The title of `template` in `language` ("" for none).
    /// The template a study of `contract` with `modality` and `body_part`
    /// is reported to, and the contract's language.
    pub fn template_for(&self, contract: &str, modality: &str, body_part: &str) -> (Option<&Template>, String) {
        let language = self.policy.language(contract).to_owned();
        (Template::for_study(&self.policy.templates, modality, body_part), language)
    }

    pub fn title(&self, template: &str, language: &str) -> String {
        let t = self.policy.templates.iter().find(|t| t.name == template);
        t.and_then(|t| in_language(&t.titles, language)).unwrap_or_default().to_owned()
    }

    /// Reads the state under the lock.
    pub async fn read<T>(&self, f: impl FnOnce(&Folded) -> T) -> T {
        f(self.live.lock().await.state())
    }

    /// The state caught up to the log's end first.
    pub async fn read_current<T>(&self, f: impl FnOnce(&Folded) -> T) -> Result<T, Error> {
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        Ok(f(projector.state()))
    }

    /// The study's first instance as ingest recorded it (patient, accession,
    /// UIDs: PHI), read at its place on the PHI ingest topic.
    pub async fn arrival(&self, study: Uuid, at: (u32, u64)) -> Result<pb::InstanceReceived, Error> {
        let missing = |reason: String| Error::Text { study, version: 0, reason };
        let position = Position { topic: self.ingest.clone(), partition: at.0, offset: at.1 };
        let mut reader = self.log.reader(vec![position]).await?;
        let batch = reader.next_batch(1, Duration::from_secs(5)).await?;
        let record = batch.first().ok_or_else(|| missing("no instance at its place on the topic".into()))?;
        let envelope = record.envelope().map_err(|e| missing(e.to_string()))?;
        match envelope.open(self.keys.as_ref())? {
            Payload::InstanceReceived(i) if i.study_id == study.to_string() => Ok(i),
            other => Err(missing(format!("the record at its place is a {}", other.type_name()))),
        }
    }

    /// The order `key` as it was received (PHI), read at its place on the
    /// PHI topic.
    pub async fn order(&self, key: Uuid) -> Result<pb::OrderReceived, Error> {
        let missing = |reason: String| Error::Text { study: key, version: 0, reason };
        let at = self.read(|f| f.state.orders.orders.get(&key).map(|o| (o.partition, o.offset))).await;
        let (partition, offset) = at.ok_or_else(|| missing("no such order here".into()))?;
        let position = Position { topic: self.text.clone(), partition, offset };
        let mut reader = self.log.reader(vec![position]).await?;
        let batch = reader.next_batch(1, Duration::from_secs(5)).await?;
        let record = batch.first().ok_or_else(|| missing("no order at its place on the topic".into()))?;
        let envelope = record.envelope().map_err(|e| missing(e.to_string()))?;
        match envelope.open(self.keys.as_ref())? {
            Payload::OrderReceived(o) if o.order_key == key.to_string() => Ok(o),
            other => Err(missing(format!("the record at its place is a {}", other.type_name()))),
        }
    }

    /// A saved version's text, read at its place on the PHI topic.
    pub async fn text(&self, study: Uuid, version: &model::VersionRef) -> Result<Text, Error> {
        let missing = |reason: String| Error::Text { study, version: version.version, reason };
        let at = Position { topic: self.text.clone(), partition: version.partition, offset: version.offset };
        let mut reader = self.log.reader(vec![at]).await?;
        let batch = reader.next_batch(1, Duration::from_secs(5)).await?;
        let record = batch.first().ok_or_else(|| missing("nothing at its place on the topic".into()))?;
        let envelope = record.envelope().map_err(|e| missing(e.to_string()))?;
        match envelope.open(self.keys.as_ref())? {
            Payload::ReportText(pb::ReportText {
                study_id,
                version: v,
                findings,
                impression,
                fields,
                template,
                language,
                ..
            }) if study_id == study.to_string() && v == version.version => {
                Ok(Text { findings, impression, fields: fields.into_iter().collect(), template, language })
            }
            other => Err(missing(format!("the record at its place is a {}", other.type_name()))),
        }
    }

    pub fn opened(&self) -> &Resumed {
        self.live.opened()
    }

    pub async fn stats(&self) -> Stats {
        self.live.stats().await
    }

    pub async fn snapshot(&self, force: bool) -> Result<(), Error> {
        Ok(self.live.snapshot(force).await?)
    }

    /// Follows the log into the state until `stop` (between commands).
    pub async fn follow(&self, stop: impl std::future::Future<Output = ()>) {
        self.live.follow(self.log.as_ref(), self.keys.as_ref(), stop).await;
    }
}

#[cfg(test)]
mod tests {
    use meridian_log::TopicSpec;
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
    use meridian_projection::snapshot::FileSnapshots;

    use super::*;

    const NOW: UnixMicros = UnixMicros(1_796_000_000_000_000);

    fn routing_event(study: Uuid, version: u64, payload: Payload) -> Envelope {
        let meta = EventMeta {
            event_id: EventId::derived(EventId(study), payload.type_name(), version as u32),
            aggregate_type: payload.info().aggregate_type.into(),
            aggregate_id: study,
            aggregate_version: version,
            tenant: "acme".into(),
            home_region: "us-east".into(),
            occurred_at: NOW,
            causation_id: None,
            correlation_id: None,
            traceparent: None,
        };
        payload.plain_envelope(meta).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_read_is_drafted_sealed_signed_and_read_back_after_a_restart() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = Arc::new(EmbeddedLog::open(&dir.path().join("log.redb"), EmbeddedOptions::default()).unwrap());
        let keys: Arc<dyn KeyStore> = Arc::new(log.key_store());
        for (class, stream) in [
            (DataClass::Operational, "routing"),
            (DataClass::Operational, "reporting"),
            (DataClass::Phi, "reporting"),
            (DataClass::Phi, "ingest"),
        ] {
            log.ensure_topic(&TopicSpec::new(TopicName::new("us-east", class, stream).unwrap(), 2)).await.unwrap();
        }
        let study = Uuid::from_u128(42);
        let queued = pb::StudyQueued {
            study_id: study.to_string(),
            tenant: "acme".into(),
            read_type: "final".into(),
            contract: "acme-atlantic".into(),
            origin_jurisdiction: "US-NY".into(),
            ..Default::default()
        };
        let registered = pb::ReaderRegistered {
            reader_id: "dr-ana-ortiz".into(),
            licences: vec![pb::Licence {
                jurisdiction: "US".into(),
                expires_at: Some(UnixMicros(NOW.0 + 86_400_000_000).to_timestamp()),
            }],
            ..Default::default()
        };
        let assigned =
            pb::StudyAssigned { study_id: study.to_string(), reader_id: "dr-ana-ortiz".into(), ..Default::default() };
        let routing = TopicName::new("us-east", DataClass::Operational, "routing").unwrap();
        let events = [
            routing_event(Uuid::from_u128(1), 1, Payload::ReaderRegistered(registered)),
            routing_event(study, 1, Payload::StudyQueued(queued)),
            routing_event(study, 2, Payload::StudyAssigned(assigned)),
        ];
        log.append(events.iter().map(|e| Outgoing::new(routing.clone(), e).unwrap()).collect()).await.unwrap();

        let snapshots = || Snapshotter::new(FileSnapshots::new(dir.path().join("snapshots")), 1, Duration::ZERO);
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev");
        let platform = Arc::new(Platform::load(&examples).unwrap());
        let open = || {
            let (idle, failpoints) = (Duration::from_millis(50), FailPoints::default());
            Reporting::open("us-east", platform.clone(), log.clone(), keys.clone(), snapshots(), idle, failpoints)
        };
        let reporting = open().await.unwrap();
        let keyed = |impression: &str, key: &str| Command::SaveDraft {
            key: key.into(),
            study,
            reader: "dr-ana-ortiz".into(),
            findings: "No acute intracranial abnormality.".into(),
            impression: impression.into(),
            fields: Default::default(),
            base_version: 0,
        };
        // The routing facts were appended after nothing was folded: the
        // command catches up first, so the holder is known.
        let draft = |impression: &str| keyed(impression, "");
        let (saved, _) = reporting.execute(keyed("Normal head CT.", "save-1"), NOW).await.unwrap();
        assert!(matches!(&saved[..], [Event::Drafted { version: 1, .. }]), "{saved:?}");
        // Retried with its key: the same version, nothing new; the key
        // with other text is refused, naming it.
        let (retried, now) = reporting.execute(keyed("Normal head CT.", "save-1"), NOW).await.unwrap();
        assert!(retried.is_empty() && now.reports[0].versions.len() == 1, "{retried:?}");
        let reused = reporting.execute(keyed("Other text.", "save-1"), NOW).await.unwrap_err();
        assert!(matches!(reused, Error::Refused(report::Error::KeyReused { .. })), "{reused}");
        reporting.snapshot(true).await.unwrap();
        let sign = Command::Sign {
            study,
            reader: "dr-ana-ortiz".into(),
            read_type: "final".into(),
            version: 0,
            discrepancy: String::new(),
        };
        let (signed, _) = reporting.execute(sign.clone(), NOW).await.unwrap();
        assert!(matches!(&signed[..], [Event::Signed { version: 1, .. }]), "{signed:?}");
        let (again, _) = reporting.execute(sign, NOW).await.unwrap();
        assert!(again.is_empty(), "signed again: nothing new");

        // The text is sealed on the PHI topic; the signature plain on the operational one.
        let phi = TopicName::new("us-east", DataClass::Phi, "reporting").unwrap();
        let starts = (0..2).map(|p| Position::start(phi.clone(), p)).collect();
        let texts = meridian_log::contract::read_to_end(log.as_ref(), starts).await;
        assert_eq!(texts.len(), 1);
        let sealed = texts[0].envelope().unwrap();
        assert!(sealed.open_plain().is_err(), "report text is never plain on the log");
        let ops = TopicName::new("us-east", DataClass::Operational, "reporting").unwrap();
        let starts = (0..2).map(|p| Position::start(ops.clone(), p)).collect();
        let signatures = meridian_log::contract::read_to_end(log.as_ref(), starts).await;
        let Payload::ReportSigned(s) = signatures[0].envelope().unwrap().open_plain().unwrap() else { panic!() };
        assert_eq!((s.read_type.as_str(), s.report_version, s.reader_id.as_str()), ("final", 1, "dr-ana-ortiz"));

        // After a restart (snapshot before the signature, then the tail),
        // the same state, and the text read back from its place.
        let before = reporting.read(|f| f.clone()).await;
        drop(reporting);
        let reporting = open().await.unwrap();
        assert_eq!(reporting.read(|f| f.clone()).await, before);
        let study_now = before.state.studies[&study].clone();
        let report = study_now.report("final").unwrap();
        let text = reporting.text(study, &report.versions[0]).await.unwrap();
        assert_eq!(text.impression, "Normal head CT.");
        // The key is on the log: retried after the restart, still the
        // version it saved (even though signed since).
        let (retried, _) = reporting.execute(keyed("Normal head CT.", "save-1"), NOW).await.unwrap();
        assert!(retried.is_empty());
        // Signed: no more drafts of that read.
        let refused = reporting.execute(draft("Changed."), NOW).await.unwrap_err();
        assert!(matches!(refused, Error::Refused(report::Error::AlreadySigned { .. })), "{refused}");

        // A critical result nobody is reached about within its window (the
        // example contract's category 1: an hour) is escalated, once, by
        // the timer's id; after a restart, not again.
        let flagged = reporting.flag_critical(study, "dr-ana-ortiz", 1, NOW).await.unwrap();
        assert_eq!(flagged.deadline, UnixMicros(NOW.0 + 3_600_000_000));
        assert_eq!(reporting.escalate_due(UnixMicros(NOW.0 + 3_599_000_000)).await.unwrap(), 0);
        let late = UnixMicros(NOW.0 + 3_601_000_000);
        assert_eq!(reporting.escalate_due(late).await.unwrap(), 1);
        assert_eq!(reporting.escalate_due(late).await.unwrap(), 0);
        drop(reporting);
        let reporting = open().await.unwrap();
        assert_eq!(reporting.escalate_due(UnixMicros(late.0 + 1)).await.unwrap(), 0, "escalated once");
        let starts = (0..2).map(|p| Position::start(ops.clone(), p)).collect();
        let escalated: Vec<_> = meridian_log::contract::read_to_end(log.as_ref(), starts)
            .await
            .iter()
            .map(|r| r.envelope().unwrap())
            .filter(|e| e.payload_type.ends_with("CriticalResultEscalated"))
            .collect();
        assert_eq!(escalated.len(), 1);
        assert_eq!(escalated[0].meta.event_id, EventId::timer(study, "critical", flagged.deadline));
    }
}
