//! Metrics for the people who run a region, exported beside spans over
//! OTLP: counters where the work happens, gauges read from a service's
//! state at each export. Attributes are the region, opaque tenant ids,
//! priorities, models, receivers and reason codes: never PHI.
//!
//! Without an exporter the global meter is OpenTelemetry's no-op one, and
//! every call here costs a branch.

use std::sync::{Mutex, OnceLock};

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram, Meter, ObservableGauge};

fn meter() -> Meter {
    opentelemetry::global::meter("meridian")
}

struct Instruments {
    instances: Counter<u64>,
    bytes: Counter<u64>,
    refused: Counter<u64>,
    triage: Histogram<f64>,
    deliveries_failed: Counter<u64>,
}

/// Made on first use: after `main` has installed the exporter, so a
/// process without one holds no-op instruments.
fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let m = meter();
        Instruments {
            instances: m
                .u64_counter("meridian.ingest.instances")
                .with_description("Instances stored and acknowledged (C-STORE, STOW-RS, the gRPC upload)")
                .with_unit("{instance}")
                .build(),
            bytes: m
                .u64_counter("meridian.ingest.bytes")
                .with_description("Bytes of the Part-10 objects stored")
                .with_unit("By")
                .build(),
            refused: m
                .u64_counter("meridian.ingest.refused")
                .with_description("Instances refused, by reason code")
                .with_unit("{instance}")
                .build(),
            triage: m
                .f64_histogram("meridian.inference.triage.duration")
                .with_description("A model's read of a study, from its slices loaded to its outcome")
                .with_unit("s")
                .with_boundaries(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0])
                .build(),
            deliveries_failed: m
                .u64_counter("meridian.reporting.deliveries.failed")
                .with_description("Report deliveries that failed, by receiver and whether retried")
                .with_unit("{delivery}")
                .build(),
        }
    })
}

/// One instance stored in `region` for `tenant`.
pub fn instance_stored(region: &str, tenant: &str, bytes: u64) {
    let attributes =
        [KeyValue::new("meridian.region", region.to_owned()), KeyValue::new("meridian.tenant", tenant.to_owned())];
    instruments().instances.add(1, &attributes);
    instruments().bytes.add(bytes, &attributes);
}

/// One instance refused, for `reason` (a rejection's code).
pub fn instance_refused(region: &str, tenant: &str, reason: &str) {
    instruments().refused.add(
        1,
        &[
            KeyValue::new("meridian.region", region.to_owned()),
            KeyValue::new("meridian.tenant", tenant.to_owned()),
            KeyValue::new("meridian.reason", reason.to_owned()),
        ],
    );
}

/// One model's read of one study: `outcome` is `completed` or the failure's
/// reason code.
pub fn triage_read(region: &str, model: &str, outcome: &str, seconds: f64) {
    instruments().triage.record(
        seconds,
        &[
            KeyValue::new("meridian.region", region.to_owned()),
            KeyValue::new("meridian.model", model.to_owned()),
            KeyValue::new("meridian.outcome", outcome.to_owned()),
        ],
    );
}

/// One delivery attempt failed at `receiver`; `permanent` when it will not
/// be retried.
pub fn delivery_failed(region: &str, receiver: &str, permanent: bool) {
    instruments().deliveries_failed.add(
        1,
        &[
            KeyValue::new("meridian.region", region.to_owned()),
            KeyValue::new("meridian.receiver", receiver.to_owned()),
            KeyValue::new("meridian.permanent", permanent),
        ],
    );
}

/// A gauge read at each export from `read`: each value with its
/// attributes. `read` runs on the exporter's task: it must not wait (read
/// what a `try_lock` gives, or a copy kept aside).
pub fn gauge(
    name: &'static str,
    description: &'static str,
    unit: &'static str,
    read: impl Fn() -> Vec<(u64, Vec<KeyValue>)> + Send + Sync + 'static,
) {
    // Kept for the process's life: a gauge is read as long as it is held.
    static GAUGES: Mutex<Vec<ObservableGauge<u64>>> = Mutex::new(Vec::new());
    let gauge = meter()
        .u64_observable_gauge(name)
        .with_description(description)
        .with_unit(unit)
        .with_callback(move |observer| {
            for (value, attributes) in read() {
                observer.observe(value, &attributes);
            }
        })
        .build();
    GAUGES.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(gauge);
}
