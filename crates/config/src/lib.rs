//! Meridian's configuration as code: a directory of TOML files that SRE
//! teams keep in git.
//!
//! ```text
//! regions/<region>.toml      residency zones: country, time zone, nearshore neighbours
//! tenants/<tenant>.toml      home regions, facilities, called AE titles, id secret (by reference)
//! contracts/<contract>.toml  tenant ↔ reading groups: delivery models, SLAs, escalation, prices
//! groups/<group>.toml        reading groups and their readers (bootstrap data)
//! catalog/subspecialties.toml  modality/body part → subspecialty
//! catalog/rvus.toml          procedure code → work RVU
//! auth.toml                  token verification keys; example principals
//! ```
//!
//! [`Platform::load`] reads every file and reports every problem it finds —
//! not just the first — each naming the file, the field path and the reason
//! (`contracts/acme.toml: sla.stat.turnaround: "15 minutes" is not a
//! duration, expected like "15m" …`), including problems across files (a
//! contract naming an unknown region or group).
//!
//! # Layout
//! - [`model`]: the schema, one struct per file kind.
//! - [`value`]: value types that parse with a message (durations, codes, money).
//! - `validate`: the checks within and across files.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub mod applies;
pub mod model;
pub mod replication;
mod validate;
pub mod value;

pub use applies::{Applies, Hours, NoContract, StudyFacts};
pub use model::*;

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    /// Relative to the configuration directory, e.g. `contracts/acme.toml`.
    pub file: String,
    /// Field path, e.g. `sla.stat.turnaround`; empty for the whole file.
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: {}: {}", self.file, self.field, self.reason)
        }
    }
}

/// Every problem found, in file order.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// A complete, validated configuration.
#[derive(Clone, Debug)]
pub struct Platform {
    pub root: PathBuf,
    pub regions: BTreeMap<String, Region>,
    pub tenants: BTreeMap<String, Tenant>,
    pub contracts: BTreeMap<String, Contract>,
    pub groups: BTreeMap<String, ReadingGroup>,
    /// `templates/` (optional): report templates by name.
    pub templates: BTreeMap<String, Template>,
    /// `models/` (optional): AI triage models by name.
    pub models: BTreeMap<String, AiModel>,
    pub subspecialties: SubspecialtyMap,
    pub rvus: RvuTable,
    pub auth: Auth,
}

const KIND_DIRS: &[&str] = &["regions", "tenants", "contracts", "groups"];
const CATALOG_FILES: &[&str] = &["subspecialties.toml", "rvus.toml"];

struct Loader {
    root: PathBuf,
    problems: Vec<Problem>,
    /// "regions/eu-west" for files that exist but did not parse: references
    /// to them are not reported again as unknown.
    unparsed: std::collections::BTreeSet<String>,
}

impl Loader {
    fn problem(&mut self, file: &str, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem { file: file.to_owned(), field: field.into(), reason: reason.into() });
    }

    /// Parses one file; on failure records the problem and returns `None`.
    fn parse<T: DeserializeOwned>(&mut self, rel: &str) -> Option<T> {
        let text = match std::fs::read_to_string(self.root.join(rel)) {
            Ok(t) => t,
            Err(e) => {
                self.problem(rel, "", format!("cannot read: {e}"));
                return None;
            }
        };
        let de = match toml::de::Deserializer::parse(&text) {
            Ok(de) => de,
            Err(e) => {
                let line = e.span().map(|s| text[..s.start].lines().count().max(1));
                let at = line.map(|l| format!(" (line {l})")).unwrap_or_default();
                self.problem(rel, "", format!("not valid TOML: {}{at}", e.message().trim()));
                return None;
            }
        };
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Some(v),
            Err(e) => {
                let path = e.path().to_string();
                let field = if path == "." { String::new() } else { path };
                self.problem(rel, field, e.inner().message().trim().to_owned());
                None
            }
        }
    }

    /// Every `*.toml` in `dir`, parsed, by file stem.
    fn parse_dir<T: DeserializeOwned>(&mut self, dir: &str) -> BTreeMap<String, (String, T)> {
        self.parse_dir_beside::<T>(dir, &[])
    }

    /// As [`Self::parse_dir`], with files ending in one of `beside` left
    /// alone (a model's weights beside its description).
    fn parse_dir_beside<T: DeserializeOwned>(&mut self, dir: &str, beside: &[&str]) -> BTreeMap<String, (String, T)> {
        let mut out = BTreeMap::new();
        let entries = match std::fs::read_dir(self.root.join(dir)) {
            Ok(e) => e,
            Err(_) => {
                self.problem(dir, "", "directory is missing");
                return out;
            }
        };
        let mut names: Vec<String> = entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for name in names {
            let rel = format!("{dir}/{name}");
            if beside.iter().any(|ext| name.ends_with(ext)) {
                continue;
            }
            let Some(stem) = name.strip_suffix(".toml") else {
                self.problem(&rel, "", "not a .toml file: configuration files end in .toml");
                continue;
            };
            match self.parse::<T>(&rel) {
                Some(value) => drop(out.insert(stem.to_owned(), (rel, value))),
                None => drop(self.unparsed.insert(format!("{dir}/{stem}"))),
            }
        }
        out
    }
}

impl Platform {
    /// Why `tenant`'s de-identified derivative under `contract` may not
    /// live in `region`, or `None` when it may: the contract is the
    /// tenant's, gives readers de-identified images, and names the region
    /// among its destinations. Pseudonymised data is still personal data,
    /// so nothing else may hold it. The write path refuses by it; the
    /// residency report checks every stored derivative by it.
    pub fn derivative_refusal(&self, tenant: &str, contract: &str, region: &str) -> Option<String> {
        let Some(c) = self.contracts.get(contract) else {
            return Some(format!("no contract {contract} is configured"));
        };
        if c.tenant != tenant {
            return Some(format!("contract {contract} is tenant {}'s, not {tenant}'s", c.tenant));
        }
        if c.image_access != ImageAccess::Deidentified {
            return Some(format!("contract {contract} streams images from home: it allows no derivative"));
        }
        if !c.deidentification_destinations.iter().any(|d| d == region) {
            return Some(format!(
                "contract {contract} sends derivatives only to {:?}",
                c.deidentification_destinations
            ));
        }
        None
    }

    /// Each configured reader's id and the region they sit in.
    pub fn reader_regions(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.groups.values().flat_map(|g| &g.readers).map(|r| (r.id.clone(), r.region.clone()))
    }

    /// Loads and validates the configuration in `dir`.
    pub fn load(dir: &Path) -> Result<Platform, Problems> {
        let mut l = Loader { root: dir.to_path_buf(), problems: Vec::new(), unparsed: Default::default() };
        match std::fs::read_dir(dir) {
            Err(e) => {
                return Err(Problems(vec![Problem {
                    file: dir.display().to_string(),
                    field: String::new(),
                    reason: format!("cannot read the configuration directory: {e}"),
                }]));
            }
            Ok(entries) => {
                let mut names: Vec<_> =
                    entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
                names.sort();
                for name in names {
                    let known = KIND_DIRS.contains(&name.as_str())
                        || ["catalog", "templates", "models", "auth.toml"].contains(&name.as_str());
                    if !known && !name.starts_with('.') && name != "README.md" {
                        l.problem(
                            &name,
                            "",
                            "unexpected entry: expected regions/, tenants/, contracts/, groups/, catalog/, templates/, models/ and auth.toml",
                        );
                    }
                }
            }
        }
        let regions = l.parse_dir::<Region>("regions");
        let tenants = l.parse_dir::<Tenant>("tenants");
        let contracts = l.parse_dir::<Contract>("contracts");
        let groups = l.parse_dir::<ReadingGroup>("groups");
        // Templates are optional: a platform without them writes reports
        // of findings and impression only.
        let templates =
            if dir.join("templates").is_dir() { l.parse_dir::<Template>("templates") } else { BTreeMap::new() };
        let models = if dir.join("models").is_dir() {
            l.parse_dir_beside::<AiModel>("models", &[".onnx"])
        } else {
            BTreeMap::new()
        };
        if let Ok(entries) = std::fs::read_dir(dir.join("catalog")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !CATALOG_FILES.contains(&name.as_str()) {
                    l.problem(
                        &format!("catalog/{name}"),
                        "",
                        "unexpected file: expected subspecialties.toml and rvus.toml",
                    );
                }
            }
        }
        let subspecialties = l.parse::<SubspecialtyMap>("catalog/subspecialties.toml");
        let rvus = l.parse::<RvuTable>("catalog/rvus.toml");
        let auth = l.parse::<Auth>("auth.toml");

        let files = validate::Files {
            regions: &regions,
            tenants: &tenants,
            contracts: &contracts,
            groups: &groups,
            templates: &templates,
            models: &models,
            root: dir,
            unparsed: &l.unparsed,
        };
        l.problems.extend(validate::all(&files, subspecialties.as_ref(), auth.as_ref()));
        // A file that did not parse has recorded its problem already.
        let (Some(subspecialties), Some(rvus), Some(auth), true) = (subspecialties, rvus, auth, l.problems.is_empty())
        else {
            return Err(Problems(l.problems));
        };
        Ok(Platform {
            root: dir.to_path_buf(),
            regions: strip(regions),
            tenants: strip(tenants),
            contracts: strip(contracts),
            groups: strip(groups),
            templates: strip(templates),
            models: strip(models),
            subspecialties,
            rvus,
            auth,
        })
    }

    /// The called AE title → tenant map of one region.
    pub fn called_ae_titles(&self, region: &str) -> BTreeMap<&str, &Tenant> {
        self.tenants.values().filter_map(|t| t.called_ae_titles.get(region).map(|ae| (ae.0.as_str(), t))).collect()
    }
}

fn strip<T>(m: BTreeMap<String, (String, T)>) -> BTreeMap<String, T> {
    m.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

/// The roles each kind of principal may hold.
pub fn roles_for(kind: PrincipalKind) -> &'static [&'static str] {
    match kind {
        // A facility system (PACS, modality, EHR interface) or a tenant administrator.
        PrincipalKind::Tenant => &["facility", "tenant-admin"],
        PrincipalKind::Group => &["reader", "group-admin"],
        PrincipalKind::Platform => &["sre", "billing"],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/dev")
    }

    #[test]
    fn the_dev_example_is_valid() {
        let platform = match Platform::load(&examples()) {
            Ok(p) => p,
            Err(problems) => panic!("the example configuration has problems:\n{problems}"),
        };
        assert_eq!(platform.regions.keys().collect::<Vec<_>>(), ["eu-west", "in-south", "us-east"]);
        assert_eq!(platform.tenants.len(), 3);
        assert_eq!(platform.groups.len(), 2);
        let us_east: Vec<&str> = platform.called_ae_titles("us-east").keys().copied().collect();
        assert_eq!(us_east, ["MERIDIAN_ACME", "MERIDIAN_GLOBEX"]);
        let acme = &platform.contracts["acme-atlantic"];
        assert_eq!(acme.sla[&Priority::Stat].turnaround.seconds, 1_800);
        assert_eq!(acme.engagement.per_study["CT"].minor_units(2), Ok(4_500));
        assert_eq!(platform.rvus.work_rvu["70450"].milli, 850);
    }

    #[test]
    fn kafka_secrets_come_from_the_environment_variables_the_configuration_names() {
        let log = LogConfig::Kafka {
            bootstrap_servers: "k:9093".into(),
            partitions: 8,
            replication_factor: 3,
            retention: None,
            client: BTreeMap::from([("security.protocol".into(), "SASL_SSL".into())]),
            client_secrets_env: BTreeMap::from([("sasl.password".into(), "MERIDIAN_KAFKA_PASSWORD".into())]),
        };
        let env = |v: &str| (v == "MERIDIAN_KAFKA_PASSWORD").then(|| "s3cret".to_string());
        let settings = log.kafka_client(env).unwrap();
        assert!(settings.contains(&("sasl.password".into(), "s3cret".into())));
        assert!(settings.contains(&("security.protocol".into(), "SASL_SSL".into())));
        let err = log.kafka_client(|_| None).unwrap_err();
        assert_eq!(
            err,
            "environment variable MERIDIAN_KAFKA_PASSWORD (for log.client_secrets_env.sasl.password) is not set"
        );
        assert!(LogConfig::default().kafka_client(|_| None).unwrap().is_empty());
    }
}
