//! Every refusal leaves a trace. A [`Principal`](crate::Principal) carries
//! the [`Trail`] of the region that resolved it, and [`authorize`](crate::authorize)
//! records each refusal there itself, so no handler can forget; the
//! edges record what is refused before a principal exists (a bad token,
//! an unknown AE title). The audit crate writes the trail to the region's
//! audit topic as AccessDenied.

use std::fmt;
use std::sync::Arc;

/// One refusal, in opaque words only: subjects, tenant and group names,
/// actions and resource kinds, never a DICOM UID or a patient's id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The caller's subject, empty when no principal was established.
    pub subject: String,
    /// `tenant`, `group`, `platform`, or `anonymous`.
    pub principal_kind: String,
    pub tenant: Option<String>,
    pub group: Option<String>,
    pub action: String,
    pub resource_kind: String,
    /// What was asked for, as [`Resource::describe`](crate::Resource::describe) says it.
    pub resource: String,
    /// The tenant whose data or settings were asked for, if any: the
    /// refusal is in that tenant's audit.
    pub resource_tenant: Option<String>,
    pub reason: String,
    /// Machine-readable: `PERMISSION_DENIED`, a token's reason such as
    /// `TOKEN_EXPIRED`, or an association's such as `CALLING_AE_NOT_RECOGNIZED`.
    pub code: String,
    /// Where the call came from (address:port), where the edge knows it.
    pub network_access_point: Option<String>,
}

/// Where a region's refusals go. Recording never blocks the caller and
/// never fails it: a refusal stands whether or not its trace was kept.
pub trait RefusalSink: Send + Sync {
    fn record(&self, refusal: Refusal);
}

/// A region's refusal sink, or none (tests, tools that refuse nothing).
#[derive(Clone, Default)]
pub struct Trail(Option<Arc<dyn RefusalSink>>);

impl Trail {
    pub fn new(sink: Arc<dyn RefusalSink>) -> Trail {
        Trail(Some(sink))
    }

    pub fn record(&self, refusal: Refusal) {
        if let Some(sink) = &self.0 {
            sink.record(refusal);
        }
    }

    pub fn is_kept(&self) -> bool {
        self.0.is_some()
    }
}

impl fmt::Debug for Trail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Trail(kept)" } else { "Trail(none)" })
    }
}

/// Who a principal is does not depend on where its refusals go.
impl PartialEq for Trail {
    fn eq(&self, _: &Trail) -> bool {
        true
    }
}

impl Eq for Trail {}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A sink that keeps what it is given, for tests.
    #[derive(Default)]
    pub(crate) struct Kept(pub Mutex<Vec<Refusal>>);

    impl RefusalSink for Kept {
        fn record(&self, refusal: Refusal) {
            self.0.lock().unwrap().push(refusal);
        }
    }
}
