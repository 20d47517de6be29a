//! The configuration schema: one struct per file kind. Every struct denies
//! unknown fields, so a typo is an error that names the field, not a
//! setting silently ignored.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::Deserialize;

use crate::value::{
    AeTitle, Country, Credit, Date, Decimal, DurationSpec, Jurisdiction, Percent, Rounding, Rvu, TimeOfDay,
    TimeZoneName,
};

/// `regions/<name>.toml`: a residency zone.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    /// The region's name, e.g. "us-east"; equals the file's stem.
    pub name: String,
    /// ISO 3166-1 alpha-2 country whose law governs the region's data.
    /// Onshore means the same country.
    pub country: Country,
    /// IANA time zone, for follow-the-sun.
    pub time_zone: TimeZoneName,
    /// Regions that count as nearshore from this one.
    #[serde(default)]
    pub nearshore: Vec<String>,
    /// The region's event log; the embedded log when absent.
    #[serde(default)]
    pub log: LogConfig,
    /// Limits of the region's DICOM port.
    #[serde(default)]
    pub dicom: DicomLimits,
    /// Where the region's objects (PHI and derivatives) are stored; the
    /// region's data directory when absent.
    #[serde(default)]
    pub objects: ObjectStoreConfig,
    /// Housekeeping of the region's objects.
    #[serde(default)]
    pub housekeeping: Housekeeping,
    /// Limits of DICOMweb on the region's HTTP port.
    #[serde(default)]
    pub dicomweb: DicomWebLimits,
    /// Where the region's per-study data keys live.
    #[serde(default)]
    pub keys: KeysConfig,
    /// Who issues the region's invoices, and their number series.
    #[serde(default)]
    pub billing: BillingConfig,
    /// The region's certificate: its gRPC and HTTP ports speak TLS only
    /// when this is given.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// `[tls]` of a region: its certificate chain and private key, PEM files
/// named under the secrets directory (`{ file = "us-east/tls.crt" }`),
/// read again when they change.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: SecretRef,
    pub key: SecretRef,
    /// CA certificates (PEM) a client certificate must chain to. When
    /// set, the region asks every TLS client for a certificate; one that
    /// chains here and is listed in `auth.toml`'s `client_certificates`
    /// is the caller's principal. Without it no certificate is asked for.
    #[serde(default)]
    pub client_ca: Option<SecretRef>,
}

/// `[billing]` of a region: the invoice issuer (the legal entity on the
/// invoice) and the prefix of its gapless number series ("US" numbers
/// invoices US-000001, US-000002, …; one series per issuer).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BillingConfig {
    #[serde(default)]
    pub invoice_issuer: Option<String>,
    #[serde(default)]
    pub invoice_series: Option<String>,
}

impl Region {
    /// The invoice issuer: `[billing] invoice_issuer`, else the region's name.
    pub fn invoice_issuer(&self) -> String {
        self.billing.invoice_issuer.clone().unwrap_or_else(|| self.name.clone())
    }

    /// The invoice series: `[billing] invoice_series`, else the region's
    /// name in capitals.
    pub fn invoice_series(&self) -> String {
        self.billing.invoice_series.clone().unwrap_or_else(|| self.name.to_ascii_uppercase())
    }

    /// The credit note series: the invoice series with "-CN" (a series of
    /// its own, as the law asks of corrections).
    pub fn credit_note_series(&self) -> String {
        format!("{}-CN", self.invoice_series())
    }
}

/// `[keys]` of a region. On the embedded log the data keys are a table of
/// the log's own file (one process holds both). On Kafka the region's
/// service processes share them through the region's object store, each
/// wrapped by this key-encryption key (64 hex digits; by reference, never
/// in the file): required there.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    #[serde(default)]
    pub key_encryption_key: Option<SecretRef>,
}

/// `[dicomweb]` of a region.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DicomWebLimits {
    /// The largest STOW-RS request body; each part is also bounded by
    /// `dicom.max_instance_bytes`.
    pub max_request_bytes: u64,
    /// The most results one QIDO-RS response holds, and how many it holds
    /// when the request names no `limit`; when more match, the response
    /// says so (PS3.18 8.3.4.2) and the client pages with `offset`.
    pub max_results: u32,
}

impl Default for DicomWebLimits {
    fn default() -> Self {
        DicomWebLimits { max_request_bytes: 8 << 30, max_results: 1_000 }
    }
}

/// `[objects]` of a region.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ObjectStoreConfig {
    /// Files under the region's data directory, each fsynced with its
    /// directory before a write is acknowledged (`meridian dev`).
    #[default]
    Local,
    /// An S3-API bucket (AWS S3, MinIO, Ceph RGW). Credentials come from
    /// the environment variables named here, never from files.
    S3 {
        bucket: String,
        /// The service endpoint; AWS's own when absent.
        #[serde(default)]
        endpoint: Option<String>,
        /// The signing region, e.g. "us-east-1".
        region: String,
        /// Plain-HTTP endpoints (a local test server only).
        #[serde(default)]
        allow_http: bool,
        #[serde(default = "default_access_key_env")]
        access_key_id_env: String,
        #[serde(default = "default_secret_key_env")]
        secret_access_key_env: String,
    },
}

fn default_access_key_env() -> String {
    "AWS_ACCESS_KEY_ID".into()
}

fn default_secret_key_env() -> String {
    "AWS_SECRET_ACCESS_KEY".into()
}

/// `[dicom]` of a region: what its DICOM port accepts at once.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DicomLimits {
    /// Associations served at once; one more is refused at once (A-ASSOCIATE-RJ,
    /// transient, local limit exceeded) so the sender retries later.
    pub max_associations: u32,
    /// The largest PDU this side receives, in bytes (PS3.8 maximum length).
    pub max_pdu_length: u32,
    /// An association silent this long is aborted.
    pub idle_timeout: DurationSpec,
    /// The largest data set one instance may have, in bytes; a larger one is
    /// refused (0xA700). With `max_associations`, it bounds the memory the
    /// port may hold.
    pub max_instance_bytes: u64,
}

impl Default for DicomLimits {
    fn default() -> Self {
        DicomLimits {
            max_associations: 64,
            max_pdu_length: 65_536,
            idle_timeout: DurationSpec { seconds: 60 },
            max_instance_bytes: 1 << 30,
        }
    }
}

/// `[housekeeping]` of a region.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Housekeeping {
    /// How often the region looks for objects no event names (left by a
    /// crash between an object's put and its event). Each sweep lists the
    /// region's objects in pages, off the acknowledgement path.
    pub orphan_sweep_every: DurationSpec,
    /// How long such an object stays before it is deleted: longer than
    /// any instance takes from its put to its event, so none in flight
    /// is ever swept.
    pub orphan_grace: DurationSpec,
}

impl Default for Housekeeping {
    fn default() -> Self {
        Housekeeping {
            orphan_sweep_every: DurationSpec { seconds: 600 },
            orphan_grace: DurationSpec { seconds: 3_600 },
        }
    }
}

/// Where a region's event log lives. Topics are provisioned from this at
/// start: `meridian.<region>.<class>.<stream>` for every stream of the
/// event catalogue.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LogConfig {
    /// The durable single-node log in the region's data directory.
    Embedded {
        #[serde(default = "default_partitions")]
        partitions: u32,
    },
    /// A Kafka-API cluster (Kafka, Redpanda, MSK, Confluent).
    Kafka {
        /// `host:port[,host:port…]`.
        bootstrap_servers: String,
        #[serde(default = "default_partitions")]
        partitions: u32,
        #[serde(default = "default_replication")]
        replication_factor: i32,
        /// Kept forever when absent: the log is the source of truth.
        #[serde(default)]
        retention: Option<DurationSpec>,
        /// Further librdkafka settings (TLS, SASL); no secrets here.
        #[serde(default)]
        client: BTreeMap<String, String>,
        /// librdkafka settings whose values are secrets, by the environment
        /// variable that holds each, e.g. `{ "sasl.password" =
        /// "MERIDIAN_KAFKA_PASSWORD" }`: read at start, never from a file.
        #[serde(default)]
        client_secrets_env: BTreeMap<String, String>,
    },
}

impl LogConfig {
    /// The Kafka client settings with every secret read from its
    /// environment variable through `env`; a variable that is not set is
    /// an error naming it and the setting it is for.
    pub fn kafka_client(&self, env: impl Fn(&str) -> Option<String>) -> Result<Vec<(String, String)>, String> {
        let LogConfig::Kafka { client, client_secrets_env, .. } = self else { return Ok(Vec::new()) };
        let mut settings: Vec<(String, String)> = client.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (key, variable) in client_secrets_env {
            let value = env(variable).filter(|v| !v.is_empty()).ok_or_else(|| {
                format!("environment variable {variable} (for log.client_secrets_env.{key}) is not set")
            })?;
            settings.push((key.clone(), value));
        }
        Ok(settings)
    }
}

fn default_partitions() -> u32 {
    8
}

fn default_replication() -> i32 {
    3
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig::Embedded { partitions: default_partitions() }
    }
}

impl LogConfig {
    pub fn partitions(&self) -> u32 {
        match self {
            LogConfig::Embedded { partitions } | LogConfig::Kafka { partitions, .. } => *partitions,
        }
    }
}

/// A secret given by reference: never the secret itself.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum SecretRef {
    /// A file, relative to the secrets directory (`meridian dev`: `<data-dir>/secrets`).
    File(String),
    /// The name of an environment variable.
    Env(String),
}

/// `tenants/<name>.toml`: a health-system customer.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub name: String,
    pub display_name: String,
    /// Regions where the tenant's PHI may live.
    pub home_regions: Vec<String>,
    /// Keys the HMAC that derives opaque ids; at least 32 bytes.
    pub id_secret: SecretRef,
    /// Region → the called AE title the tenant sends to there.
    pub called_ae_titles: BTreeMap<String, AeTitle>,
    pub facilities: Vec<Facility>,
    /// Where the tenant's signed reports go (none by default).
    #[serde(default)]
    pub delivery: Vec<DeliveryEndpoint>,
}

/// `[[delivery]]` of a tenant: a receiver of its signed reports.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeliveryEndpoint {
    /// Names the endpoint in events and the dead-letter view.
    pub name: String,
    pub kind: DeliveryKind,
    /// `fhir`: the FHIR R4 server's base URL (https; plain http only to a
    /// loopback address). `hl7_mllp`: host:port of the MLLP listener.
    pub address: String,
    /// MSH-5 and MSH-6 of what is sent over MLLP.
    #[serde(default)]
    pub receiving_application: Option<String>,
    #[serde(default)]
    pub receiving_facility: Option<String>,
    /// The reads whose reports go there; every signed read when empty.
    #[serde(default)]
    pub read_types: Vec<ReadType>,
    /// Off: nothing is sent there (the examples' endpoints are off).
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// `fhir`: the token sent as `Authorization: Bearer` (read at start,
    /// for the enabled endpoints of the tenants homed in the region).
    #[serde(default)]
    pub bearer_token: Option<SecretRef>,
}

fn enabled() -> bool {
    true
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    Fhir,
    Hl7Mllp,
}

impl DeliveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryKind::Fhir => "fhir",
            DeliveryKind::Hl7Mllp => "hl7_mllp",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Facility {
    pub name: String,
    /// ISO 3166-2 jurisdiction: the patient's jurisdiction for licensure.
    pub jurisdiction: Jurisdiction,
    pub time_zone: TimeZoneName,
    /// AE titles the facility's modalities and PACS send from.
    pub calling_ae_titles: Vec<AeTitle>,
    /// When set, associations must also come from one of these networks.
    #[serde(default)]
    pub source_networks: Vec<IpNet>,
    /// Names its order system gives in MSH-4 (Sending Facility) of HL7 v2
    /// orders, besides the facility's own name.
    #[serde(default)]
    pub hl7_sending_facilities: Vec<String>,
    /// When true, a DICOM association from the facility must present a
    /// client certificate of the facility (over TLS), else it is
    /// rejected: AE titles are easy to copy, keys are not.
    #[serde(default)]
    pub client_certificate_required: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReadType {
    Preliminary,
    Final,
    Secondary,
    PeerReview,
}

impl ReadType {
    pub fn as_str(self) -> &'static str {
        match self {
            ReadType::Preliminary => "preliminary",
            ReadType::Final => "final",
            ReadType::Secondary => "secondary",
            ReadType::PeerReview => "peer_review",
        }
    }
}

// Parsed from a string (not a serde enum) so that, as a map key, the field
// path names it ("sla.stat.turnaround") and a wrong value says what is allowed.
impl<'de> Deserialize<'de> for ReadType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        ReadType::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not a read type, expected one of preliminary, final, secondary, peer_review"
            ))
        })
    }
}

impl ReadType {
    pub fn parse(text: &str) -> Option<ReadType> {
        Some(match text {
            "preliminary" => ReadType::Preliminary,
            "final" => ReadType::Final,
            "secondary" => ReadType::Secondary,
            "peer_review" => ReadType::PeerReview,
            _ => return None,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeliveryModel {
    Onshore,
    Nearshore,
    Offshore,
}

impl DeliveryModel {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryModel::Onshore => "onshore",
            DeliveryModel::Nearshore => "nearshore",
            DeliveryModel::Offshore => "offshore",
        }
    }
}

// Parsed from a string (not a serde enum) so that, as a map key, the field
// path names it ("sla.stat.turnaround") and a wrong value says what is allowed.
impl<'de> Deserialize<'de> for DeliveryModel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Ok(match text.as_str() {
            "onshore" => DeliveryModel::Onshore,
            "nearshore" => DeliveryModel::Nearshore,
            "offshore" => DeliveryModel::Offshore,
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "{text:?} is not a delivery model, expected one of onshore, nearshore, offshore"
                )));
            }
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    Stat,
    Urgent,
    Routine,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Stat => "stat",
            Priority::Urgent => "urgent",
            Priority::Routine => "routine",
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        [Priority::Stat, Priority::Urgent, Priority::Routine].into_iter().find(|p| p.as_str() == text)
    }
}

// Parsed from a string (not a serde enum) so that, as a map key, the field
// path names it ("sla.stat.turnaround") and a wrong value says what is allowed.
impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Priority::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?} is not a priority, expected one of stat, urgent, routine"))
        })
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AssignmentMode {
    /// The engine assigns the best eligible reader.
    Push,
    /// Eligible readers see a shared worklist and claim.
    Pull,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImageAccess {
    /// Full PHI streamed from the home region, never persisted elsewhere.
    StreamFromHome,
    /// A de-identified derivative (PS3.15 Annex E) that may be replicated.
    Deidentified,
}

/// An option of PS3.15 Annex E's Basic Application Level Confidentiality
/// Profile (a column of Table E.1-1). Meridian applies the retain options;
/// the clean options and Retain Safe Private need content inspection (free
/// text, structured content, graphics, a safe private attribute list) it
/// does not do, so a contract naming one is refused at load.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DeidentificationOption {
    RetainSafePrivate,
    RetainUids,
    RetainDeviceIdentity,
    RetainInstitutionIdentity,
    RetainPatientCharacteristics,
    RetainLongitudinalFullDates,
    RetainLongitudinalModifiedDates,
    CleanDescriptors,
    CleanStructuredContent,
    CleanGraphics,
}

impl DeidentificationOption {
    /// Whether Meridian can apply the option.
    pub fn supported(self) -> bool {
        !matches!(
            self,
            Self::RetainSafePrivate | Self::CleanDescriptors | Self::CleanStructuredContent | Self::CleanGraphics
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RetainSafePrivate => "retain_safe_private",
            Self::RetainUids => "retain_uids",
            Self::RetainDeviceIdentity => "retain_device_identity",
            Self::RetainInstitutionIdentity => "retain_institution_identity",
            Self::RetainPatientCharacteristics => "retain_patient_characteristics",
            Self::RetainLongitudinalFullDates => "retain_longitudinal_full_dates",
            Self::RetainLongitudinalModifiedDates => "retain_longitudinal_modified_dates",
            Self::CleanDescriptors => "clean_descriptors",
            Self::CleanStructuredContent => "clean_structured_content",
            Self::CleanGraphics => "clean_graphics",
        }
    }
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EngagementModel {
    Subscription,
    Transaction,
    ProjectBased,
}

/// `contracts/<name>.toml`: a tenant's agreement with reading groups.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    pub name: String,
    pub tenant: String,
    pub reading_groups: Vec<String>,
    pub assignment: AssignmentMode,
    pub image_access: ImageAccess,
    /// No new instance for this long completes a study.
    pub quiet_period: DurationSpec,
    /// How long images are kept after the final report, then purged.
    pub retention: DurationSpec,
    /// Regions a de-identified derivative may be written to.
    #[serde(default)]
    pub deidentification_destinations: Vec<String>,
    /// Annex E options applied to the derivative, besides the Basic Profile.
    #[serde(default)]
    pub deidentification_options: Vec<DeidentificationOption>,
    /// Read type → delivery models allowed for it.
    pub delivery: BTreeMap<ReadType, Vec<DeliveryModel>>,
    /// Priority → turnaround promised (study completed → report signed).
    pub sla: BTreeMap<Priority, Sla>,
    /// Fractions of the SLA at which an unread study escalates, increasing, each in (0, 1).
    pub escalation_fractions: Vec<f64>,
    pub engagement: Engagement,
    /// How soon a critical result must reach a person, by ACR category
    /// (1: minutes, 2: hours, 3: days); escalated when not.
    #[serde(default)]
    pub critical_results: CriticalResults,
    /// The AI triage models the tenant buys for this contract's studies
    /// (`models/<name>.toml`); none when empty.
    #[serde(default)]
    pub ai_models: Vec<String>,
    /// A share of signed finals drawn for a blinded second read (RADPEER);
    /// none when absent.
    #[serde(default)]
    pub peer_review: Option<PeerReviewSample>,
    /// The language reports under this contract are written in (BCP 47:
    /// "en", "fr-CA"): template titles and the delivered report's
    /// language.
    #[serde(default = "english")]
    pub report_language: String,
    /// Which of the tenant's studies this contract takes (all by default);
    /// the configuration check refuses two contracts that could both take one.
    #[serde(default)]
    pub applies: crate::applies::Applies,
    /// How studies are served: "real_time", "store_and_forward" or
    /// "hybrid" (local readers first, wider by escalation). Default: real
    /// time for STAT, store and forward otherwise.
    #[serde(default)]
    pub service: Option<ServiceType>,
    /// Only readers of the study's subspecialty may read it (otherwise the
    /// subspecialty is a preference).
    #[serde(default)]
    pub subspecialty_required: bool,
}

fn english() -> String {
    "en".into()
}

/// `models/<name>.toml`: an AI triage model — what it reads, how it runs,
/// and what its outputs mean.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiModel {
    pub name: String,
    pub version: String,
    /// What it is for, as validated ("Demonstration only", a clearance).
    pub intended_use: String,
    pub runtime: ModelRuntime,
    pub input: ModelInput,
    pub outputs: Vec<ModelOutput>,
    /// What validation found, for the drift check: none when absent.
    #[serde(default)]
    pub validation: Option<ModelValidation>,
}

/// `[validation]` of a model: the share of studies it flagged when it was
/// validated, and how far a recent window may stray from it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelValidation {
    /// Where and when it was validated ("acme-general, 2026-10").
    pub site: String,
    /// In [0, 1].
    pub baseline_positive_rate: f64,
    /// The recent outcomes compared (at least 10).
    #[serde(default = "drift_window")]
    pub window: u32,
    /// The largest difference in positive rate that is not drift, in [0, 1].
    #[serde(default = "drift_tolerance")]
    pub tolerance: f64,
}

fn drift_window() -> u32 {
    200
}

fn drift_tolerance() -> f64 {
    0.1
}

/// How a model runs. Embedded: an ONNX file run in process (tract), its
/// path relative to the configuration directory. Remote: a model served
/// over the Open Inference Protocol v2 (gRPC) by MLServer, Triton or
/// KServe, in the study's home region.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelRuntime {
    Embedded {
        path: String,
    },
    Remote {
        /// `http://host:port`, or `https://` with `ca`.
        endpoint: String,
        /// Its name on the server (the model's own name when empty).
        #[serde(default)]
        model: String,
        /// Its version on the server (the server's choice when empty).
        #[serde(default)]
        model_version: String,
        /// Each call's bound.
        #[serde(default = "remote_timeout_ms")]
        timeout_ms: u64,
        /// Calls again after an unavailable server or a timeout, with
        /// backoff, this many times before the triage fails `unreachable`.
        #[serde(default = "remote_retries")]
        retries: u32,
        /// The PEM file of the CA that signs the server's certificate,
        /// relative to the configuration directory (https only).
        #[serde(default)]
        ca: Option<String>,
    },
}

fn remote_timeout_ms() -> u64 {
    5_000
}

fn remote_retries() -> u32 {
    3
}

/// What a model reads: the studies it is for, and how a slice becomes its
/// input tensor (rescaled to the modality's units by the instance's own
/// rescale, windowed to [0, 1], resized), as `name` [N, 1, rows, columns]
/// float32.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInput {
    pub name: String,
    pub modalities: Vec<String>,
    /// Any body part when empty.
    #[serde(default)]
    pub body_parts: Vec<String>,
    /// The facilities it reads for (those it was validated at); any when
    /// empty.
    #[serde(default)]
    pub facilities: Vec<String>,
    pub window: Window,
    /// Rows and columns the slice is resized to.
    pub size: [u32; 2],
    /// "NCHW": the one layout read.
    pub layout: String,
    /// "f32": the one dtype read.
    pub dtype: String,
    /// At most this many slices a study (evenly spaced): bounds the work.
    #[serde(default = "max_slices")]
    pub max_slices: u32,
}

fn max_slices() -> u32 {
    128
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub centre: f64,
    pub width: f64,
}

/// One named output: a score per slice in [0, 1]; over `threshold` it
/// flags `finding` and suggests `suggested_priority`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelOutput {
    pub name: String,
    pub threshold: f64,
    pub finding: String,
    pub suggested_priority: Priority,
}

/// `templates/<name>.toml`: how a report of a kind of study is written —
/// its title in each language, its sections' headings, and coded fields
/// whose values come from a list.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Template {
    pub name: String,
    /// The modalities it is for ("CT").
    pub modalities: Vec<String>,
    /// The body parts it is for ("HEAD"); any when empty.
    #[serde(default)]
    pub body_parts: Vec<String>,
    /// Language (BCP 47) → the report's title.
    pub titles: BTreeMap<String, String>,
    /// The headings of findings and impression, by language; the report's
    /// language falls back to "Findings" and "Impression".
    #[serde(default)]
    pub sections: TemplateSections,
    #[serde(default)]
    pub fields: Vec<TemplateField>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSections {
    #[serde(default)]
    pub findings: BTreeMap<String, String>,
    #[serde(default)]
    pub impression: BTreeMap<String, String>,
}

/// A coded field of a template: its name (`fields.<name>` in a draft), its
/// label by language, and the values it takes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateField {
    pub name: String,
    #[serde(default)]
    pub titles: BTreeMap<String, String>,
    pub values: Vec<String>,
    /// A report is not signed without it.
    #[serde(default)]
    pub required: bool,
}

impl Template {
    /// Whether it is for a study of `modality` and `body_part`.
    pub fn takes(&self, modality: &str, body_part: &str) -> bool {
        self.modalities.iter().any(|m| m == modality)
            && (self.body_parts.is_empty() || self.body_parts.iter().any(|b| b == body_part))
    }
}

/// `[peer_review]` of a contract: the share of signed finals reviewed, the
/// seed that draws them (the same seed draws the same studies), and how
/// long a review may take.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerReviewSample {
    /// In [0, 1]: 0.05 reviews one final in twenty.
    pub fraction: f64,
    pub seed: String,
    #[serde(default = "thirty_days")]
    pub within: DurationSpec,
}

fn thirty_days() -> DurationSpec {
    DurationSpec { seconds: 30 * 86_400 }
}

/// `[critical_results]` of a contract: each ACR category's window, from
/// flagging to the finding reaching a responsible person.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CriticalResults {
    #[serde(default = "category_1")]
    pub category_1: DurationSpec,
    #[serde(default = "category_2")]
    pub category_2: DurationSpec,
    #[serde(default = "category_3")]
    pub category_3: DurationSpec,
}

fn category_1() -> DurationSpec {
    DurationSpec { seconds: 3_600 }
}

fn category_2() -> DurationSpec {
    DurationSpec { seconds: 12 * 3_600 }
}

fn category_3() -> DurationSpec {
    DurationSpec { seconds: 3 * 86_400 }
}

impl Default for CriticalResults {
    fn default() -> Self {
        CriticalResults { category_1: category_1(), category_2: category_2(), category_3: category_3() }
    }
}

impl CriticalResults {
    /// The window of ACR category `category` (1 to 3), in seconds.
    pub fn window(&self, category: u8) -> Option<u64> {
        match category {
            1 => Some(self.category_1.seconds),
            2 => Some(self.category_2.seconds),
            3 => Some(self.category_3.seconds),
            _ => None,
        }
    }
}

/// `[[engagement.milestones]]`: a share of a project's fee, due on a date.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Milestone {
    /// Names the invoice line: `engagement.milestones.<name>`.
    pub name: String,
    pub due: Date,
    pub share: Percent,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ServiceType {
    RealTime,
    StoreAndForward,
    Hybrid,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sla {
    pub turnaround: DurationSpec,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Engagement {
    pub model: EngagementModel,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Subscription: the monthly fee.
    #[serde(default)]
    pub monthly_fee: Option<Decimal>,
    /// Subscription: studies included per month before per-study prices apply.
    #[serde(default)]
    pub included_studies: Option<u32>,
    /// Transaction (and overage): price per study by modality; "default" for the rest.
    #[serde(default)]
    pub per_study: BTreeMap<String, Decimal>,
    /// Project-based: the fixed fee and the project's end.
    #[serde(default)]
    pub project_fee: Option<Decimal>,
    #[serde(default)]
    pub project_ends: Option<Date>,
    /// Project-based: when the fee is billed, as shares of it due on dates
    /// (billed in the period of each date); the whole fee in the period the
    /// project ends when there are none. The shares add up to 100%.
    #[serde(default)]
    pub milestones: Vec<Milestone>,
    /// Transaction: prices by read type ("preliminary", "final", …), then
    /// modality ("default" for the rest), over `per_study` (the price of
    /// any read type not named here).
    #[serde(default)]
    pub per_read_type: BTreeMap<String, BTreeMap<String, Decimal>>,
    /// Added to a read ordered at this priority ("stat", "urgent"): the
    /// order's priority, never a triage's or an escalation's raise.
    #[serde(default)]
    pub priority_surcharge: BTreeMap<String, Decimal>,
    /// Added to a study completed outside office hours, in its facility's
    /// time zone.
    #[serde(default)]
    pub after_hours: Option<AfterHours>,
    /// Added to a read that needed a subspecialist.
    #[serde(default)]
    pub subspecialty_surcharge: Option<Decimal>,
    /// Whether a signed preliminary is charged too (a final always is).
    #[serde(default)]
    pub bills_preliminary: bool,
    /// SLA credits by the breached read's priority: a share of its price
    /// ("25%") or an amount ("10.00").
    #[serde(default)]
    pub sla_credit: BTreeMap<String, Credit>,
    /// The most an invoice credits for breaches, as a share of its charges.
    #[serde(default)]
    pub sla_credit_cap: Option<Percent>,
    #[serde(default)]
    pub rounding: Rounding,
    /// Billing periods are calendar months in this zone (UTC when absent).
    #[serde(default)]
    pub billing_time_zone: Option<TimeZoneName>,
}

/// Office hours' end and start for the after-hours surcharge (`from`
/// "19:00" to `to` "07:00" crosses midnight); weekends count as after hours
/// when `weekends` is true.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AfterHours {
    pub surcharge: Decimal,
    pub from: TimeOfDay,
    pub to: TimeOfDay,
    #[serde(default)]
    pub weekends: bool,
}

/// `[payout]` of a reading group: what it is paid per work RVU it reads.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Payout {
    pub currency: String,
    pub rate_per_wrvu: Decimal,
}

/// `groups/<name>.toml`: a reading group and its readers (bootstrap data:
/// registration events at first start, then the routing API).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingGroup {
    pub name: String,
    pub display_name: String,
    pub readers: Vec<Reader>,
    /// What the group is paid per work RVU; no payouts accrue without it.
    #[serde(default)]
    pub payout: Option<Payout>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reader {
    pub id: String,
    pub name: String,
    /// The region the reader sits in.
    pub region: String,
    pub time_zone: TimeZoneName,
    #[serde(default)]
    pub licences: Vec<Licence>,
    #[serde(default)]
    pub credentials: Vec<Credential>,
    pub subspecialties: Vec<String>,
    pub modalities: Vec<String>,
    pub read_types: Vec<ReadType>,
    #[serde(default)]
    pub shifts: Vec<Shift>,
    /// Most open assignments at once.
    pub capacity: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Licence {
    pub jurisdiction: Jurisdiction,
    pub expires: Date,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub tenant: String,
    pub facility: String,
    pub expires: Date,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shift {
    /// "mon" … "sun".
    pub days: Vec<Weekday>,
    /// Local time in the reader's time zone; `end` before `start` crosses midnight.
    pub start: TimeOfDay,
    pub end: TimeOfDay,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

/// `catalog/subspecialties.toml`: which subspecialty reads what.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubspecialtyMap {
    /// The known subspecialties.
    pub subspecialties: Vec<String>,
    /// First match wins; a rule without body part matches every body part.
    pub rules: Vec<SubspecialtyRule>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubspecialtyRule {
    /// DICOM modality code, e.g. "MR".
    pub modality: String,
    /// DICOM Body Part Examined, e.g. "HEAD".
    #[serde(default)]
    pub body_part: Option<String>,
    pub subspecialty: String,
}

/// `catalog/rvus.toml`: procedure code → work RVU.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RvuTable {
    /// e.g. `"70450" = "0.85"` (CPT: CT head without contrast).
    pub work_rvu: BTreeMap<String, Rvu>,
}

/// `auth.toml`: who may call, and the example principals `meridian dev` mints tokens for.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    /// `iss` of accepted tokens.
    pub issuer: String,
    /// `aud` of accepted tokens.
    pub audience: String,
    /// Public keys that verify tokens (EdDSA / Ed25519, SPKI PEM).
    pub keys: Vec<VerifyingKey>,
    #[serde(default)]
    pub principals: Vec<ExamplePrincipal>,
    /// Client certificates that are principals, for PACS and interface
    /// engines that cannot hold a token. Tokens stay for people.
    #[serde(default)]
    pub client_certificates: Vec<ClientCertificate>,
    /// Identity providers whose tokens are accepted too.
    #[serde(default)]
    pub oidc_issuers: Vec<OidcIssuer>,
}

/// An OpenID Connect identity provider whose ES256 or RS256 tokens are
/// accepted beside Meridian's own (a hospital's or a reading group's
/// single sign-on). Its tokens speak for the one tenant or reading group
/// named here, never another, and never for the platform: a tenant's
/// identity provider cannot mint another tenant's access.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcIssuer {
    /// `iss` of its tokens.
    pub issuer: String,
    /// An `aud` its tokens must carry (a string or one of an array).
    pub audience: String,
    /// Its JSON Web Key Set (the document at its `jwks_uri`), saved to a
    /// file: read again when a token names a key id not in it, so a
    /// rotated key is taken without a restart. Nothing is fetched.
    pub jwks: SecretRef,
    /// The tenant its tokens speak for (a tenant principal), or
    #[serde(default)]
    pub tenant: Option<String>,
    /// the reading group (a group principal): exactly one of the two.
    #[serde(default)]
    pub group: Option<String>,
    /// The claim holding the principal's Meridian roles, a flat array of
    /// strings (an identity provider's role mapper writes it).
    #[serde(default = "roles_claim")]
    pub roles_claim: String,
    /// The reading room's sign-in through this provider (authorization
    /// code with PKCE): the client registered there for the room. The
    /// room offers no sign-in through it when absent.
    #[serde(default)]
    pub room: Option<RoomClient>,
}

/// The reading room as a client of an identity provider. Its endpoints
/// are read from the issuer's discovery document
/// (`<issuer>/.well-known/openid-configuration`) at the first sign-in;
/// the provider must send the browser back to
/// `<the room's origin>/room/oidc/callback`, registered with it. The
/// access token it issues is what the room calls the platform with, so
/// it carries this issuer's audience, the roles and, for a reading group,
/// the `reader` claim.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomClient {
    pub client_id: String,
    /// A confidential client's secret (sent with HTTP Basic); a public
    /// client relies on PKCE alone and has none.
    #[serde(default)]
    pub client_secret: Option<SecretRef>,
    /// The sign-in button's words, e.g. "Radiology Partners single sign-on".
    pub label: String,
    /// Scopes asked for, beside `openid` (e.g. `offline_access` for a
    /// refresh token: a session then outlives one access token).
    #[serde(default)]
    pub scopes: Vec<String>,
}

fn roles_claim() -> String {
    "roles".into()
}

/// A client certificate that speaks for a facility: a certificate that
/// chains to the region's `tls.client_ca` and carries `name` among its
/// subject alternative names (DNS or URI) is this principal. The subject's
/// common name is not matched (RFC 6125 retired it for identity).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificate {
    /// A DNS name or URI in the certificate's subject alternative names.
    pub name: String,
    pub tenant: String,
    pub facility: String,
    /// Roles of a tenant principal; a PACS or interface engine sends
    /// studies and orders, so `facility` unless said otherwise.
    #[serde(default = "facility_role")]
    pub roles: Vec<String>,
}

fn facility_role() -> Vec<String> {
    vec!["facility".into()]
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyingKey {
    /// The `kid` in token headers.
    pub id: String,
    pub public_key: SecretRef,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    Tenant,
    Group,
    Platform,
}

impl PrincipalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalKind::Tenant => "tenant",
            PrincipalKind::Group => "group",
            PrincipalKind::Platform => "platform",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExamplePrincipal {
    pub name: String,
    pub kind: PrincipalKind,
    #[serde(default)]
    pub tenant: Option<String>,
    /// For a facility system: the facility it speaks for.
    #[serde(default)]
    pub facility: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// For a reader: the reader id in the group.
    #[serde(default)]
    pub reader: Option<String>,
    pub roles: Vec<String>,
}

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("environment variable {name} is not set")]
    Env { name: String },
}

impl SecretRef {
    /// Reads the secret: a file under `secrets_dir`, or a variable from
    /// `env` (injected, so tests never set the process environment).
    pub fn read(
        &self,
        secrets_dir: &std::path::Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<u8>, SecretError> {
        match self {
            SecretRef::File(rel) => {
                let path = secrets_dir.join(rel);
                std::fs::read(&path)
                    .map_err(|e| SecretError::File { path: path.display().to_string(), reason: e.to_string() })
            }
            SecretRef::Env(name) => {
                env(name).map(String::into_bytes).ok_or_else(|| SecretError::Env { name: name.clone() })
            }
        }
    }
}
