//! The writer of a region's refusals: [`RefusalWriter`] is the sink every
//! principal of the region carries ([`meridian_auth::Trail`]), and appends
//! one AccessDenied per refusal to `meridian.<region>.ops.audit`.
//!
//! Recording never waits for the log: a refusal is decided and answered at
//! once (nothing leaves on a refusal, so there is nothing to hold back), and
//! a task appends what was recorded in batches. A flood of refusals larger
//! than the queue is counted as lost rather than slowing every caller; a
//! failed append is logged and counted. Both counts are in [`Lost`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use meridian_auth::{Refusal, RefusalSink, Trail};
use meridian_events::{Envelope, UnixMicros};
use meridian_log::{EventLog, Outgoing, TopicName};
use meridian_proto::events::v1 as pb;
use tokio::sync::mpsc;

use crate::AuditError;

/// Aggregate type of refusals: each its own aggregate, keyed by its event id.
pub const DENIAL: &str = "audit.denial";
/// The tenant field of a refusal no tenant is party to.
const NO_TENANT: &str = "platform";
/// Refusals waiting for the writer before more are counted as lost.
const QUEUE: usize = 16_384;
/// Refusals appended in one batch at most.
const BATCH: usize = 512;

/// Refusals that were not written, and why.
#[derive(Debug, Default)]
pub struct Lost {
    /// Recorded while the queue was full.
    pub overflowed: AtomicU64,
    /// In a batch the log did not take.
    pub unappended: AtomicU64,
}

/// The sink of one region's refusals.
pub struct RefusalWriter {
    queue: mpsc::Sender<(Refusal, UnixMicros)>,
    lost: Arc<Lost>,
}

impl RefusalSink for RefusalWriter {
    fn record(&self, refusal: Refusal) {
        tracing::info!(
            principal = %refusal.subject,
            kind = %refusal.principal_kind,
            action = %refusal.action,
            resource = %refusal.resource,
            code = %refusal.code,
            reason = %refusal.reason,
            "refused"
        );
        if self.queue.try_send((refusal, meridian_auth::grpc::arrival_time())).is_err() {
            self.lost.overflowed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl RefusalWriter {
    /// Starts the writer of `region`'s refusals on `log` (on the current
    /// tokio runtime); the trail it returns is given to the region's
    /// principals. The task ends when every trail is dropped.
    pub fn start(region: &str, log: Arc<dyn EventLog>) -> Result<(Trail, Arc<Lost>), AuditError> {
        let topic = crate::audit_topic(region)?;
        let (queue, mut received) = mpsc::channel(QUEUE);
        let lost = Arc::new(Lost::default());
        let writer = RefusalWriter { queue, lost: lost.clone() };
        let (region, task_lost) = (region.to_owned(), lost.clone());
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            while received.recv_many(&mut batch, BATCH).await > 0 {
                let count = batch.len() as u64;
                let outgoing: Result<Vec<Outgoing>, String> =
                    batch.drain(..).map(|(refusal, at)| denial(&region, &topic, refusal, at)).collect();
                let appended = match outgoing {
                    Ok(outgoing) => log.append(outgoing).await.map(drop).map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                if let Err(e) = appended {
                    task_lost.unappended.fetch_add(count, Ordering::Relaxed);
                    tracing::error!(%region, error = %e, refusals = count, "refusals not written to the audit topic");
                }
            }
        });
        Ok((Trail::new(Arc::new(writer)), lost))
    }
}

fn denial(region: &str, topic: &TopicName, r: Refusal, at: UnixMicros) -> Result<Outgoing, String> {
    // An envelope names a tenant: the resource's, else the caller's, else the platform.
    let tenant = [&r.resource_tenant, &r.tenant].into_iter().flatten().find(|t| !t.is_empty()).cloned();
    let meta = crate::record_meta(DENIAL, tenant.unwrap_or_else(|| NO_TENANT.into()), region, at);
    let payload = pb::AccessDenied {
        principal: r.subject,
        principal_kind: r.principal_kind,
        tenant: r.tenant.unwrap_or_default(),
        reading_group: r.group.unwrap_or_default(),
        action: r.action,
        resource_kind: r.resource_kind,
        resource: r.resource,
        reason: r.reason,
        code: r.code,
        network_access_point: r.network_access_point.unwrap_or_default(),
        region: region.to_owned(),
        resource_tenant: r.resource_tenant.unwrap_or_default(),
    };
    let envelope = Envelope::plain(meta, &payload).map_err(|e| e.to_string())?;
    Outgoing::new(topic.clone(), &envelope).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::testing::{audit_log, audit_records, reader};
    use meridian_auth::{Action, Resource, authorize};
    use meridian_events::payload::Payload;

    #[tokio::test]
    async fn a_refused_authorize_is_an_access_denied_on_the_regions_audit_topic() {
        let dir = tempfile::TempDir::new().unwrap();
        let log = audit_log(dir.path(), "eu-west").await;
        let (trail, lost) = RefusalWriter::start("eu-west", log.clone()).unwrap();
        let reader = reader(trail);
        authorize(&reader, Action::ViewWorklist, &Resource::ReadingGroup { group: "atlantic-rads" }).unwrap();
        authorize(&reader, Action::ViewKpis, &Resource::Tenant { tenant: "acme" }).unwrap_err();
        authorize(&reader, Action::ViewWorklist, &Resource::ReadingGroup { group: "lotus" }).unwrap_err();
        let mut denials = Vec::new();
        for _ in 0..200 {
            denials = audit_records(&log, "eu-west")
                .await
                .into_iter()
                .map(|(tenant, payload)| match payload {
                    Payload::AccessDenied(d) => (tenant, d),
                    other => panic!("{other:?}"),
                })
                .collect();
            if denials.len() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(denials.len(), 2, "one AccessDenied per refusal, none for the allowed call");
        let (tenant, first) = &denials[0];
        assert_eq!(tenant, "acme", "a refusal on a tenant's resource is in that tenant's audit");
        assert_eq!(first.resource_tenant, "acme");
        assert_eq!(denials[1].0, "platform", "a group principal refused on no tenant's resource");
        assert_eq!(
            (first.principal.as_str(), first.principal_kind.as_str(), first.reading_group.as_str()),
            ("dr-ana-ortiz", "group", "atlantic-rads")
        );
        assert_eq!((first.action.as_str(), first.resource_kind.as_str()), ("view_kpis", "tenant"));
        assert_eq!((first.code.as_str(), first.region.as_str()), ("PERMISSION_DENIED", "eu-west"));
        assert!(first.reason.contains("cannot"), "{}", first.reason);
        assert_eq!(denials[1].1.resource, "reading group lotus");
        assert_eq!(lost.overflowed.load(Ordering::Relaxed) + lost.unappended.load(Ordering::Relaxed), 0);
    }
}
