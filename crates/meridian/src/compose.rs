//! The one place that names every service: which services a process runs
//! on a region's context, and what they share when they run together.
//!
//! `meridian dev` opens all of them for every region; `meridian serve
//! <service>` opens one. Where ingest and storage run in one process they
//! share one study index (ingest writes it before acknowledging, so a
//! search right after a C-STORE finds the instance); apart, storage
//! follows InstanceReceived from the log. Who holds a study storage always
//! folds from routing's events, together or apart.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use meridian_events::UnixMicros;
use meridian_region::{Region, RegionContext, RegionService};
use meridian_storage::index::StudyIndex;
use meridian_storage::serve::{IndexFeed, StorageService};

/// A service `meridian serve` can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ServiceName {
    Ingest,
    Storage,
    Routing,
    Reporting,
    Billing,
    Inference,
    Replicator,
}

impl ServiceName {
    pub const ALL: [ServiceName; 7] = [
        ServiceName::Ingest,
        ServiceName::Storage,
        ServiceName::Routing,
        ServiceName::Reporting,
        ServiceName::Billing,
        ServiceName::Inference,
        // Opened by `meridian dev` between its regions and by `meridian
        // serve` against its sources' brokers, not on one region's context.
        ServiceName::Replicator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceName::Ingest => "ingest",
            ServiceName::Storage => "storage",
            ServiceName::Routing => "routing",
            ServiceName::Reporting => "reporting",
            ServiceName::Billing => "billing",
            ServiceName::Inference => "inference",
            ServiceName::Replicator => "replicator",
        }
    }
}

/// Opens `services` on `context`, and the summary projection at the same
/// time (on Kafka each catch-up waits for the log to stay quiet: in turn,
/// they would add up); `now` stamps the reader registrations of a first
/// start.
pub async fn open(context: Arc<RegionContext>, services: &[ServiceName], now: UnixMicros) -> anyhow::Result<Region> {
    let name = context.name.clone();
    let (summary, opened) = tokio::join!(Region::resume_summary(&context), open_services(&context, services, now));
    let summary = summary.with_context(|| format!("opening region {name}"))?;
    Ok(Region::assemble(context, opened?, summary))
}

async fn open_services(
    context: &Arc<RegionContext>,
    services: &[ServiceName],
    now: UnixMicros,
) -> anyhow::Result<Vec<Arc<dyn RegionService>>> {
    let runs = |s: ServiceName| services.contains(&s);
    let mut opened: Vec<Arc<dyn RegionService>> = Vec::new();
    if runs(ServiceName::Routing) {
        opened.push(meridian_routing::serve::RoutingService::open(context, now).await?);
    }
    let index =
        if runs(ServiceName::Ingest) || runs(ServiceName::Storage) { Some(open_index(&context.dir)?) } else { None };
    if let (true, Some(index)) = (runs(ServiceName::Ingest), &index) {
        opened.push(meridian_ingest::serve::IngestService::open(context, index.clone()).await?);
    }
    if let (true, Some(index)) = (runs(ServiceName::Storage), index) {
        let feed = if runs(ServiceName::Ingest) { IndexFeed::Ingest } else { IndexFeed::Log };
        opened.push(StorageService::open(context, index, feed).await?);
    }
    if runs(ServiceName::Reporting) {
        opened.push(meridian_reporting::serve::ReportingService::open(context).await?);
    }
    if runs(ServiceName::Billing) {
        opened.push(meridian_billing::serve::BillingService::open(context).await?);
    }
    if runs(ServiceName::Inference) {
        opened.push(meridian_inference::serve::InferenceService::open(context).await?);
    }
    Ok(opened)
}

fn open_index(dir: &Path) -> anyhow::Result<Arc<StudyIndex>> {
    let path = dir.join("index.redb");
    let index = StudyIndex::open(&path).with_context(|| format!("opening the study index {}", path.display()))?;
    Ok(Arc::new(index))
}
