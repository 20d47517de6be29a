//! The audit trail of a region: every access to patient data appends
//! PhiAccessed (who, which opaque study, which action, from which region,
//! when) to the region's audit topic before the data leaves. No audit, no
//! data: a caller that cannot append sends nothing. Storage (DICOMweb),
//! reporting (report text) and inference call this one writer.
//!
//! Every refusal appends AccessDenied ([`refusals`]): `authorize` records
//! it in the principal's trail, which this crate writes. Every process
//! appends ConfigurationLoaded ([`configuration`]) when it starts.

pub mod atna;
pub mod configuration;
pub mod refusals;

use std::sync::Arc;

use meridian_auth::Principal;
use meridian_events::{DataClass, Envelope, EventId, EventMeta, UnixMicros};
use meridian_log::{EventLog, Outgoing, TopicName};
use meridian_proto::events::v1 as pb;
use uuid::Uuid;

/// Aggregate type of the audit trail: each access is its own aggregate
/// (keyed by its event id), so concurrent reads never contend for a version.
pub const AUDIT: &str = "storage.audit";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit topic of region {region}: {reason}")]
    Topic { region: String, reason: String },
    #[error("the access could not be audited, so nothing is sent; try again ({0})")]
    Append(String),
}

/// The meta of an audit record: each its own aggregate (keyed by its
/// event id, version 1), so that records never contend for a version.
pub(crate) fn record_meta(aggregate_type: &str, tenant: String, region: &str, at: UnixMicros) -> EventMeta {
    let event_id = EventId::new_at(at);
    EventMeta {
        event_id,
        aggregate_type: aggregate_type.into(),
        aggregate_id: event_id.as_uuid(),
        aggregate_version: 1,
        tenant,
        home_region: region.to_owned(),
        occurred_at: at,
        causation_id: None,
        correlation_id: None,
        traceparent: meridian_telemetry::traceparent(),
    }
}

/// `meridian.<region>.ops.audit`.
pub(crate) fn audit_topic(region: &str) -> Result<TopicName, AuditError> {
    TopicName::new(region, DataClass::Operational, "audit")
        .map_err(|e| AuditError::Topic { region: region.to_owned(), reason: e.to_string() })
}

/// One study accessed: its tenant, opaque id, and the instances (or
/// reports) read, by opaque id.
pub struct Accessed<'a> {
    pub tenant: &'a str,
    pub study: Uuid,
    pub items: Vec<String>,
}

/// The region's audit writer.
pub struct Audit {
    region: String,
    log: Arc<dyn EventLog>,
    topic: TopicName,
    /// Reader id → the region they sit in: where a reader's access comes
    /// from (readers stream studies from their home region, elsewhere).
    readers: std::collections::BTreeMap<String, String>,
}

impl Audit {
    pub fn new(region: &str, log: Arc<dyn EventLog>) -> Result<Audit, AuditError> {
        let topic = audit_topic(region)?;
        Ok(Audit { region: region.to_owned(), log, topic, readers: Default::default() })
    }

    /// The same writer, knowing where each reader sits (reader id, region):
    /// a reader's access is recorded as coming from their region.
    pub fn with_reader_regions(mut self, readers: impl IntoIterator<Item = (String, String)>) -> Audit {
        self.readers = readers.into_iter().collect();
        self
    }

    /// The region it records in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Appends PhiAccessed for each of `accessed` (by `principal`, doing
    /// `action`, at `at`); returns once the log has them.
    pub async fn record(
        &self,
        principal: &Principal,
        action: &str,
        accessed: &[Accessed<'_>],
        at: UnixMicros,
    ) -> Result<(), AuditError> {
        // Where the caller is: a reader's region; anyone else calls here.
        let reader_region = principal.reader.as_deref().and_then(|id| self.readers.get(id));
        let from = reader_region.map_or(self.region.as_str(), String::as_str);
        self.record_from(principal, from, action, accessed, at).await
    }

    /// [`Audit::record`] of an access by a caller in `from_region`.
    async fn record_from(
        &self,
        principal: &Principal,
        from_region: &str,
        action: &str,
        accessed: &[Accessed<'_>],
        at: UnixMicros,
    ) -> Result<(), AuditError> {
        if accessed.is_empty() {
            return Ok(());
        }
        let mut batch = Vec::with_capacity(accessed.len());
        for a in accessed {
            let meta = record_meta(AUDIT, a.tenant.to_owned(), &self.region, at);
            let payload = pb::PhiAccessed {
                study_id: a.study.to_string(),
                principal: principal.subject.clone(),
                principal_kind: principal.kind.as_str().to_owned(),
                from_region: from_region.to_owned(),
                action: action.to_owned(),
                instance_ids: a.items.clone(),
            };
            let envelope = Envelope::plain(meta, &payload).map_err(|e| AuditError::Append(e.to_string()))?;
            batch.push(Outgoing::new(self.topic.clone(), &envelope).map_err(|e| AuditError::Append(e.to_string()))?);
        }
        self.log.append(batch).await.map_err(|e| {
            tracing::error!(region = %self.region, error = %e, "audit append failed; no PHI sent");
            AuditError::Append(e.to_string())
        })?;
        Ok(())
    }
}

/// What the audit tests share: a region's audit topic on an embedded log,
/// and what it holds.
#[cfg(test)]
pub(crate) mod testing {
    use meridian_events::payload::Payload;
    use meridian_log::embedded::{EmbeddedLog, EmbeddedOptions};
    use meridian_log::{Position, TopicSpec};

    use super::*;

    pub(crate) async fn audit_log(dir: &std::path::Path, region: &str) -> Arc<EmbeddedLog> {
        let log = Arc::new(EmbeddedLog::open(&dir.join("log.redb"), EmbeddedOptions::default()).unwrap());
        log.ensure_topic(&TopicSpec::new(audit_topic(region).unwrap(), 1)).await.unwrap();
        log
    }

    /// Atlantic's reader dr-ana-ortiz, recording in `trail`.
    pub(crate) fn reader(trail: meridian_auth::Trail) -> Principal {
        Principal {
            subject: "dr-ana-ortiz".into(),
            kind: meridian_config::PrincipalKind::Group,
            tenant: None,
            facility: None,
            group: Some("atlantic-rads".into()),
            reader: Some("dr-ana-ortiz".into()),
            roles: vec!["reader".into()],
            trail,
        }
    }

    /// Each record of the audit topic: its envelope's tenant and payload.
    pub(crate) async fn audit_records(log: &EmbeddedLog, region: &str) -> Vec<(String, Payload)> {
        let records =
            meridian_log::contract::read_to_end(log, vec![Position::start(audit_topic(region).unwrap(), 0)]).await;
        records
            .iter()
            .map(|r| {
                let envelope = r.envelope().unwrap();
                (envelope.meta.tenant.clone(), envelope.open_plain().unwrap())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use meridian_events::payload::Payload;

    use super::testing::{audit_log, audit_records, reader};
    use super::*;

    #[tokio::test]
    async fn each_study_accessed_is_one_phi_accessed_naming_who_what_and_where() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = audit_log(dir.path(), "us-east").await;
        let audit = Audit::new("us-east", log.clone()).unwrap();
        let reader = reader(Default::default());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let accessed = [
            Accessed { tenant: "acme", study: a, items: vec!["report-1".into()] },
            Accessed { tenant: "acme", study: b, items: vec![] },
        ];
        audit.record(&reader, "reporting.get-report", &accessed, UnixMicros(5)).await.unwrap();
        audit.record(&reader, "nothing", &[], UnixMicros(6)).await.unwrap();
        let trail: Vec<(String, String, Vec<String>)> = audit_records(&log, "us-east")
            .await
            .into_iter()
            .map(|(_, payload)| match payload {
                Payload::PhiAccessed(p) => (p.study_id, p.action, p.instance_ids),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            trail,
            [
                (a.to_string(), "reporting.get-report".to_owned(), vec!["report-1".to_owned()]),
                (b.to_string(), "reporting.get-report".to_owned(), vec![]),
            ]
        );
    }
}
