//! One region's part of the residency report: every object of its store,
//! what its key says it is and whether it may be here, who accessed patient
//! data, and which writes were refused. Read from the region's own store and
//! log; keys and opaque ids only (no key carries a DICOM UID).
//!
//! What may be where is the configuration's to say:
//! - `phi/<tenant>/<study>/<series>/<instance>.<sha256>.dcm` only in the
//!   tenant's home regions, and only while an InstanceReceived names it
//!   (after the orphan grace: an object put by a crash before its event is
//!   swept by then) and no ObjectPurged does;
//! - `deid/<tenant>/<contract>/<study>/<series>/<instance>.<sha256>.dcm`
//!   only in the destinations of a contract of that tenant that gives
//!   readers de-identified images;
//! - `keys/v1/…` (a region on Kafka keeps its data keys in its own bucket);
//! - nothing else.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use meridian_config::Platform;
use meridian_events::payload::Payload;
use meridian_events::{DataClass, KeyStore, UnixMicros};
use meridian_log::{EventLog, Position, TopicName};
use meridian_objects::blobs::Blobs;
use uuid::Uuid;

/// What an object's key says it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Holding {
    Phi { tenant: String, study: Uuid },
    Derivative { tenant: String, contract: String, study: Uuid },
    DataKey,
}

impl Holding {
    pub fn kind(&self) -> &'static str {
        match self {
            Holding::Phi { .. } => "phi",
            Holding::Derivative { .. } => "derivative",
            Holding::DataKey => "data_key",
        }
    }

    fn tenant(&self) -> Option<&str> {
        match self {
            Holding::Phi { tenant, .. } | Holding::Derivative { tenant, .. } => Some(tenant),
            Holding::DataKey => None,
        }
    }
}

/// The rule an object breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Rule {
    /// PHI of a tenant not homed in the region.
    PhiOutsideHome,
    /// A derivative where no contract of its tenant sends derivatives.
    DerivativeOutsideDestinations,
    /// A key the platform never writes.
    OutsideKeyScheme,
    /// PHI no InstanceReceived names, older than the orphan grace.
    PhiNoEventNames,
    /// An object whose purge was recorded.
    PurgedObjectHeld,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::PhiOutsideHome => "phi_outside_home",
            Rule::DerivativeOutsideDestinations => "derivative_outside_destinations",
            Rule::OutsideKeyScheme => "outside_key_scheme",
            Rule::PhiNoEventNames => "phi_no_event_names",
            Rule::PurgedObjectHeld => "purged_object_held",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub key: String,
    pub rule: Rule,
    /// Why, in the configuration's words.
    pub detail: String,
}

/// A PhiAccessed record: who, from where, when, what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub at: UnixMicros,
    pub tenant: String,
    pub study: String,
    pub principal: String,
    pub principal_kind: String,
    pub from_region: String,
    pub action: String,
}

/// A PhiWriteRefused record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub at: UnixMicros,
    pub tenant: String,
    /// Where the write was meant to go.
    pub region: String,
    pub contract: String,
    pub study: String,
    pub reason: String,
}

/// Whose and when: the report's scope.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub tenant: Option<String>,
    /// Accesses and refusals from (inclusive) and to (exclusive). Objects
    /// are what the store holds now.
    pub from: Option<UnixMicros>,
    pub to: Option<UnixMicros>,
    /// Every object too, not only counts and violations.
    pub objects: bool,
}

impl Scope {
    fn tenant_in(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|t| t == tenant)
    }

    fn time_in(&self, at: UnixMicros) -> bool {
        self.from.is_none_or(|f| at >= f) && self.to.is_none_or(|t| at < t)
    }
}

/// One region's part of the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Survey {
    /// (kind, tenant) → objects held, within the rules or not.
    pub held: BTreeMap<(&'static str, String), u64>,
    pub violations: Vec<Violation>,
    pub accesses: Vec<Access>,
    pub refusals: Vec<Refusal>,
    /// With [`Scope::objects`]: every object's key, kind and tenant, in
    /// key order (the store's inventory: one entry per object while the
    /// report runs).
    pub objects: Vec<(String, &'static str, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the object store: {0}")]
    Blobs(#[from] meridian_objects::blobs::BlobError),
    #[error("the log: {0}")]
    Log(#[from] meridian_log::Error),
    #[error("the data keys: {0}")]
    Keys(meridian_events::envelope::Error),
}

/// What `key` holds in `region`, or the rule it breaks there.
pub fn classify(platform: &Platform, region: &str, key: &str) -> Result<Holding, Violation> {
    let violation = |rule: Rule, detail: String| Violation { key: key.to_owned(), rule, detail };
    let outside = |why: &str| violation(Rule::OutsideKeyScheme, why.to_owned());
    let segments: Vec<&str> = key.split('/').collect();
    match segments.as_slice() {
        ["phi", tenant, study, series, file] => {
            let study = uuid(study).ok_or_else(|| outside("a phi key's study is an opaque id"))?;
            if uuid(series).is_none() || !instance_file(file) {
                return Err(outside("a phi key ends <series>/<instance>.<sha256>.dcm"));
            }
            let Some(t) = platform.tenants.get(*tenant) else {
                return Err(violation(Rule::PhiOutsideHome, format!("no tenant {tenant} is configured")));
            };
            if !t.home_regions.iter().any(|r| r == region) {
                let detail = format!("tenant {tenant}'s PHI lives only in its home regions {:?}", t.home_regions);
                return Err(violation(Rule::PhiOutsideHome, detail));
            }
            Ok(Holding::Phi { tenant: (*tenant).to_owned(), study })
        }
        ["deid", tenant, contract, study, series, file] => {
            let study = uuid(study).ok_or_else(|| outside("a deid key's study is an opaque id"))?;
            if uuid(series).is_none() || !instance_file(file) {
                return Err(outside("a deid key ends <series>/<instance>.<sha256>.dcm"));
            }
            if let Some(why) = platform.derivative_refusal(tenant, contract, region) {
                return Err(violation(Rule::DerivativeOutsideDestinations, why));
            }
            Ok(Holding::Derivative { tenant: (*tenant).to_owned(), contract: (*contract).to_owned(), study })
        }
        ["keys", "v1", "key" | "study" | "shredded", id] if uuid(id).is_some() => Ok(Holding::DataKey),
        _ => Err(outside("not a key the platform writes (phi/, deid/, keys/v1/)")),
    }
}

fn uuid(text: &str) -> Option<Uuid> {
    Uuid::parse_str(text).ok().filter(|u| u.hyphenated().to_string() == text)
}

/// `<instance uuid>.<sha256 hex>.dcm`.
fn instance_file(name: &str) -> bool {
    let mut parts = name.split('.');
    let (Some(instance), Some(sha), Some("dcm"), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    uuid(instance).is_some() && sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `key` lies under a purged prefix and was written before that
/// purge (a study sent again after its purge is held anew).
async fn purged_before(purged: &BTreeMap<String, UnixMicros>, blobs: &dyn Blobs, key: &str) -> Result<bool, Error> {
    // The prefix sorting last at or before the key is the only one that can
    // contain it: prefixes of one store never nest (they end in a study id).
    let Some((prefix, at)) = purged.range(..=key.to_owned()).next_back() else { return Ok(false) };
    if !key.starts_with(prefix.as_str()) {
        return Ok(false);
    }
    Ok(blobs.modified(key).await?.is_none_or(|written| written.0 <= at.0))
}

/// How many keys a listing page holds.
const PAGE: usize = 1_000;

/// Surveys `region`: its store page by page, its log from the start (the
/// PHI topic for the objects events name, storage's topic for purges and
/// refusals, the audit topic for accesses). Holds the names of the
/// region's PHI objects while it runs: the one thing that grows with the
/// region (a 1M-instance region, about 100 MB).
#[allow(clippy::too_many_arguments)]
pub async fn survey(
    region: &str,
    platform: &Platform,
    log: &dyn EventLog,
    keys: &dyn KeyStore,
    blobs: &dyn Blobs,
    scope: &Scope,
    now: UnixMicros,
    orphan_grace: Duration,
    idle: Duration,
) -> Result<Survey, Error> {
    let mut survey = Survey::default();
    let mut named: HashSet<String> = HashSet::new();
    // A purge's key prefix in this region's store → when the purge was due:
    // what was written there before it must be gone.
    let mut purged: BTreeMap<String, UnixMicros> = BTreeMap::new();
    let topic = |class, stream| TopicName::new(region, class, stream).ok();
    // Other regions' storage topics copied here name the derivatives
    // purged here.
    let copies = meridian_config::replication::sources_into(platform, region);
    let topics = [
        topic(DataClass::Phi, "ingest"),
        topic(DataClass::Operational, "storage"),
        topic(DataClass::Operational, "audit"),
    ]
    .into_iter()
    .chain(copies.iter().map(|source| TopicName::new(source, DataClass::Operational, "storage").ok()))
    .collect::<Vec<_>>();
    let mut from = Vec::new();
    for t in topics.into_iter().flatten() {
        match log.partitions(&t).await {
            Ok(n) => from.extend((0..n).map(|p| Position::start(t.clone(), p))),
            Err(meridian_log::Error::UnknownTopic { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let mut reader = log.reader(from).await?;
    loop {
        let batch = reader.catch_up_batch(1_024, idle).await?;
        if batch.is_empty() {
            break;
        }
        for record in &batch {
            // What does not decode or open names nothing here: a shredded
            // study's objects are gone, or they are violations below.
            let Ok(envelope) = record.envelope() else { continue };
            let payload = match envelope.open(keys) {
                Ok(p) => p,
                Err(e) if e.is_unreadable() => continue,
                Err(e) => return Err(Error::Keys(e)),
            };
            let (at, tenant) = (envelope.meta.occurred_at, envelope.meta.tenant.clone());
            match payload {
                Payload::InstanceReceived(i) => {
                    named.insert(i.object_key);
                }
                Payload::ObjectPurged(p) if p.region == region && p.object_key.ends_with('/') => {
                    purged.insert(p.object_key, at);
                }
                Payload::PhiWriteRefused(r) if scope.tenant_in(&r.tenant) && scope.time_in(at) => {
                    survey.refusals.push(Refusal {
                        at,
                        tenant: r.tenant,
                        region: r.region,
                        contract: r.contract,
                        study: r.study_id,
                        reason: r.reason,
                    });
                }
                Payload::PhiAccessed(a) if scope.tenant_in(&tenant) && scope.time_in(at) => {
                    survey.accesses.push(Access {
                        at,
                        tenant,
                        study: a.study_id,
                        principal: a.principal,
                        principal_kind: a.principal_kind,
                        from_region: a.from_region,
                        action: a.action,
                    });
                }
                _ => {}
            }
        }
    }
    let grace = i64::try_from(orphan_grace.as_micros()).unwrap_or(i64::MAX);
    let mut after: Option<String> = None;
    loop {
        let page = blobs.list_page("", after.as_deref(), PAGE).await?;
        let Some(last) = page.last().cloned() else { break };
        for key in page {
            let holding = classify(platform, region, &key);
            let tenant = match &holding {
                Ok(h) => h.tenant().map(str::to_owned),
                // A phi/ or deid/ key names its tenant even when it breaks a rule.
                Err(_) => key
                    .split('/')
                    .nth(1)
                    .filter(|_| key.starts_with("phi/") || key.starts_with("deid/"))
                    .map(str::to_owned),
            };
            if let Some(t) = &tenant
                && !scope.tenant_in(t)
            {
                continue;
            }
            let kind = match &holding {
                Ok(h) => h.kind(),
                Err(_) if key.starts_with("phi/") => "phi",
                Err(_) if key.starts_with("deid/") => "derivative",
                Err(_) => "unknown",
            };
            let tenant = tenant.unwrap_or_default();
            if scope.objects {
                survey.objects.push((key.clone(), kind, tenant.clone()));
            }
            *survey.held.entry((kind, tenant)).or_default() += 1;
            match holding {
                Err(v) => survey.violations.push(v),
                Ok(_) if purged_before(&purged, blobs, &key).await? => survey.violations.push(Violation {
                    key: key.clone(),
                    rule: Rule::PurgedObjectHeld,
                    detail: "written before an ObjectPurged of its study: its retention ended".into(),
                }),
                Ok(Holding::Phi { .. }) if !named.contains(&key) => {
                    let written = blobs.modified(&key).await?;
                    let age = written.map(|w| now.0.saturating_sub(w.0));
                    if age.is_none_or(|a| a >= grace) {
                        let detail = format!(
                            "no InstanceReceived names it, {} after it was written (the orphan grace is {} s)",
                            age.map_or("unknown time".to_owned(), |a| format!("{} s", a / 1_000_000)),
                            orphan_grace.as_secs()
                        );
                        survey.violations.push(Violation { key: key.clone(), rule: Rule::PhiNoEventNames, detail });
                    }
                }
                Ok(_) => {}
            }
        }
        after = Some(last);
    }
    Ok(survey)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn dev() -> Platform {
        Platform::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")).unwrap()
    }

    const SHA: &str = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    const STUDY: &str = "0190f4a2-6f1c-8d3e-a000-000000000001";
    const SERIES: &str = "0190f4a2-6f1c-8d3e-a000-000000000002";
    const INSTANCE: &str = "0190f4a2-6f1c-8d3e-a000-000000000003";

    fn phi(tenant: &str) -> String {
        format!("phi/{tenant}/{STUDY}/{SERIES}/{INSTANCE}.{SHA}.dcm")
    }

    fn rule(platform: &Platform, region: &str, key: &str) -> Option<Rule> {
        classify(platform, region, key).err().map(|v| v.rule)
    }

    #[test]
    fn each_key_is_held_where_the_configuration_allows_it_and_nowhere_else() {
        let p = dev();
        // acme is homed in us-east; northwind in eu-west.
        assert_eq!(classify(&p, "us-east", &phi("acme")).unwrap().kind(), "phi");
        assert_eq!(rule(&p, "eu-west", &phi("acme")), Some(Rule::PhiOutsideHome));
        assert_eq!(rule(&p, "us-east", &phi("nobody")), Some(Rule::PhiOutsideHome));
        let deid =
            |tenant: &str, contract: &str| format!("deid/{tenant}/{contract}/{STUDY}/{SERIES}/{INSTANCE}.{SHA}.dcm");
        assert_eq!(classify(&p, "in-south", &deid("northwind", "northwind-lotus")).unwrap().kind(), "derivative");
        assert_eq!(
            rule(&p, "us-east", &deid("northwind", "northwind-lotus")),
            Some(Rule::DerivativeOutsideDestinations)
        );
        assert_eq!(
            rule(&p, "in-south", &deid("acme", "northwind-lotus")),
            Some(Rule::DerivativeOutsideDestinations),
            "another tenant's contract"
        );
        assert_eq!(
            rule(&p, "in-south", &deid("acme", "acme-atlantic")),
            Some(Rule::DerivativeOutsideDestinations),
            "a contract that streams from home"
        );
        assert_eq!(classify(&p, "eu-west", &format!("keys/v1/key/{STUDY}")).unwrap(), Holding::DataKey);
        for key in [
            "patient.dcm",
            "phi/acme/not-a-study/x/y.dcm",
            &format!("phi/acme/{STUDY}/{SERIES}/{INSTANCE}.dcm"),
            &format!("phi/acme/{STUDY}/{SERIES}/{INSTANCE}.{SHA}.dcm.bak"),
            &format!("phi/acme/{STUDY}/{INSTANCE}.{SHA}.dcm"),
            &format!("phi/acme/{}/{SERIES}/{INSTANCE}.{SHA}.dcm", STUDY.to_uppercase()),
            "keys/v1/other/x",
        ] {
            assert_eq!(rule(&p, "us-east", key), Some(Rule::OutsideKeyScheme), "{key}");
        }
    }
}
