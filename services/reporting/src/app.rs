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
use meridian_events::{DataClass, Envelope, EventId, KeyStore, StudyId, UnixMicros};
use meridian_log::{EventLog, Outgoing, Position, TopicName};
use meridian_projection::live::Live;
use meridian_projection::run::{Resumed, Snapshotter, catch_up};
use meridian_projection::{Event as Logged, Projection, Stats};
use meridian_proto::events::v1 as pb;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::adapters;
use crate::domain::model::{self, State, Study};
use crate::domain::report::{self, Command, Event};

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
    #[error("study {study}'s record (text version {version}; 0: its first instance): {reason}")]
    Text { study: Uuid, version: u32, reason: String },
}

/// Reporting's state with what the fold needs besides the domain's: each
/// study's last aggregate version, and the events it could not read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Folded {
    pub state: State,
    /// reporting.study → its last version.
    pub versions: BTreeMap<Uuid, u64>,
    /// `payload.field` → (how many, the last reason and event).
    pub unreadable: BTreeMap<String, (u64, String)>,
}

pub struct ReportingProjection;

impl Projection for ReportingProjection {
    type State = Folded;
    const NAME: &'static str = "reporting.reports";

    fn apply(mut folded: Folded, event: &Logged<'_>) -> Folded {
        let meta = &event.envelope.meta;
        if meta.aggregate_type == "reporting.study" {
            let last = folded.versions.entry(meta.aggregate_id).or_default();
            *last = (*last).max(meta.aggregate_version);
        }
        match adapters::events::fact(event.payload, meta.event_id, event.partition, event.offset) {
            Ok(Some(fact)) => folded.state = model::apply(std::mem::take(&mut folded.state), &fact),
            Ok(None) => {}
            Err(why) => {
                let seen = folded.unreadable.entry(format!("{}.{}", why.payload, why.field)).or_default();
                seen.0 += 1;
                seen.1 = format!("{why} (event {})", meta.event_id);
            }
        }
        folded
    }
}

/// A saved version's text, read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Text {
    pub findings: String,
    pub impression: String,
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
}

fn topic(region: &str, class: DataClass, stream: &str) -> Result<TopicName, Error> {
    TopicName::new(region, class, stream).map_err(|e| Error::Log(meridian_log::Error::UnknownTopic { topic: e.name }))
}

impl Reporting {
    /// Opens from the snapshot and the tail of routing's topic and its own.
    pub async fn open(
        region: &str,
        log: Arc<dyn EventLog>,
        keys: Arc<dyn KeyStore>,
        snapshots: Snapshotter,
        idle: Duration,
    ) -> Result<Reporting, Error> {
        let routing = topic(region, DataClass::Operational, "routing")?;
        let signed = topic(region, DataClass::Operational, "reporting")?;
        let text = topic(region, DataClass::Phi, "reporting")?;
        let ingest = topic(region, DataClass::Phi, "ingest")?;
        let mut starts = Vec::new();
        for t in [&routing, &signed, &text, &ingest] {
            starts.extend((0..log.partitions(t).await?).map(|p| Position::start(t.clone(), p)));
        }
        let live = Live::open(snapshots, starts, log.as_ref(), keys.as_ref(), idle).await?;
        Ok(Reporting { region: region.to_owned(), log, keys, live, signed, text, ingest, idle })
    }

    /// Decides `command` at `now` against the state caught up to the log's
    /// end, appends what it decides and folds it. Returns the events (none
    /// for a signature asked again) and the study as it now is.
    pub async fn execute(&self, command: Command, now: UnixMicros) -> Result<(Vec<Event>, Study), Error> {
        let mut projector = self.live.lock().await;
        catch_up(self.log.as_ref(), self.keys.as_ref(), &mut projector, self.idle).await?;
        let events = report::decide(&projector.state().state, &command, now)?;
        if !events.is_empty() {
            let batch = self.outgoing(projector.state(), &events, now)?;
            let appended = self.log.append(batch.clone()).await?;
            projector.feed_appended(batch, appended, self.keys.as_ref())?;
            for e in &events {
                let (study, what) = match e {
                    Event::Drafted { study, version, kind, .. } => (study, format!("{kind} version {version} saved")),
                    Event::Signed { study, read_type, .. } => (study, format!("{read_type} signed")),
                    Event::Amended { study, read_type, kind, .. } => (study, format!("{read_type} report {kind}")),
                };
                tracing::info!(region = %self.region, %study, "{what}");
            }
        }
        let study = command.study();
        let now_study = projector.state().state.studies.get(&study).cloned().unwrap_or_default();
        Ok((events, now_study))
    }

    fn outgoing(&self, folded: &Folded, events: &[Event], now: UnixMicros) -> Result<Vec<Outgoing>, Error> {
        let mut bumped: BTreeMap<Uuid, u64> = BTreeMap::new();
        let mut batch = Vec::new();
        for e in events {
            let (study, report, version, kind) = match e {
                Event::Drafted { study, report, version, .. } => (*study, *report, *version, "text"),
                Event::Signed { study, report, version, .. } => (*study, *report, *version, "signed"),
                Event::Amended { study, report, version, kind, .. } => (*study, *report, *version, *kind),
            };
            let last = bumped.get(&study).or_else(|| folded.versions.get(&study)).copied().unwrap_or(0);
            bumped.insert(study, last + 1);
            let tenant = folded.state.studies.get(&study).map(|s| s.facts.tenant.clone()).unwrap_or_default();
            let meta = EventMeta {
                // One per report version (and one signature per report).
                event_id: EventId::derived(EventId(report), kind, version),
                aggregate_type: "reporting.study".into(),
                aggregate_id: study,
                aggregate_version: last + 1,
                tenant,
                home_region: self.region.clone(),
                occurred_at: now,
                causation_id: None,
                correlation_id: None,
                traceparent: None,
            };
            let envelope = match adapters::events::payload(e) {
                // Report text is PHI: sealed under the study's data key.
                Payload::ReportText(text) => {
                    let sealed = Envelope::sealed(meta, &text, StudyId(study), self.keys.as_ref())?;
                    Outgoing::new(self.text.clone(), &sealed)?
                }
                other => Outgoing::new(self.signed.clone(), &other.plain_envelope(meta)?)?,
            };
            batch.push(envelope);
        }
        Ok(batch)
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

    /// A saved version's text, read at its place on the PHI topic.
    pub async fn text(&self, study: Uuid, version: &model::VersionRef) -> Result<Text, Error> {
        let missing = |reason: String| Error::Text { study, version: version.version, reason };
        let at = Position { topic: self.text.clone(), partition: version.partition, offset: version.offset };
        let mut reader = self.log.reader(vec![at]).await?;
        let batch = reader.next_batch(1, Duration::from_secs(5)).await?;
        let record = batch.first().ok_or_else(|| missing("nothing at its place on the topic".into()))?;
        let envelope = record.envelope().map_err(|e| missing(e.to_string()))?;
        match envelope.open(self.keys.as_ref())? {
            Payload::ReportText(pb::ReportText { study_id, version: v, findings, impression, .. })
                if study_id == study.to_string() && v == version.version =>
            {
                Ok(Text { findings, impression })
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
        let open = || Reporting::open("us-east", log.clone(), keys.clone(), snapshots(), Duration::from_millis(50));
        let reporting = open().await.unwrap();
        let draft = |impression: &str| Command::SaveDraft {
            study,
            reader: "dr-ana-ortiz".into(),
            findings: "No acute intracranial abnormality.".into(),
            impression: impression.into(),
            base_version: 0,
        };
        // The routing facts were appended after nothing was folded: the
        // command catches up first, so the holder is known.
        reporting.execute(draft("Normal head CT."), NOW).await.unwrap();
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
        // Signed: no more drafts of that read.
        let refused = reporting.execute(draft("Changed."), NOW).await.unwrap_err();
        assert!(matches!(refused, Error::Refused(report::Error::AlreadySigned { .. })), "{refused}");
    }
}
