//! Checks within a file and across files. Each check names the file and
//! the field path of what is wrong.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::*;
use crate::value::currency_exponent;
use crate::{Problem, roles_for};

type Parsed<'a, T> = &'a BTreeMap<String, (String, T)>;

pub(crate) struct Files<'a> {
    pub regions: Parsed<'a, Region>,
    pub tenants: Parsed<'a, Tenant>,
    pub contracts: Parsed<'a, Contract>,
    pub groups: Parsed<'a, ReadingGroup>,
    pub templates: Parsed<'a, crate::model::Template>,
    pub models: Parsed<'a, crate::model::AiModel>,
    /// The configuration directory: models' files are relative to it.
    pub root: &'a std::path::Path,
    pub unparsed: &'a BTreeSet<String>,
}

impl Files<'_> {
    /// Whether a reference is to a missing file (a file that exists but did
    /// not parse has been reported already).
    fn missing<T>(&self, dir: &str, parsed: Parsed<'_, T>, name: &str) -> bool {
        !parsed.contains_key(name) && !self.unparsed.contains(&format!("{dir}/{name}"))
    }

    fn no_region(&self, name: &str) -> bool {
        self.missing("regions", self.regions, name)
    }

    fn no_tenant(&self, name: &str) -> bool {
        self.missing("tenants", self.tenants, name)
    }

    fn no_group(&self, name: &str) -> bool {
        self.missing("groups", self.groups, name)
    }
}

struct Out(Vec<Problem>);

impl Out {
    fn at(&mut self, file: &str, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem { file: file.to_owned(), field: field.into(), reason: reason.into() });
    }
}

fn known<'a>(names: impl IntoIterator<Item = &'a String>) -> String {
    let names: Vec<_> = names.into_iter().map(|n| format!("{n:?}")).collect();
    if names.is_empty() { "none is configured".into() } else { format!("known: {}", names.join(", ")) }
}

fn check_name(out: &mut Out, file: &str, stem: &str, name: &str) {
    if name != stem {
        out.at(file, "name", format!("{name:?} does not match the file name {stem:?}"));
    }
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        out.at(file, "name", format!("{name:?}: names are lower-case letters, digits and '-'"));
    }
}

fn check_secret(out: &mut Out, file: &str, field: &str, secret: &SecretRef) {
    match secret {
        SecretRef::File(path) => {
            if path.is_empty() || path.starts_with('/') || path.split('/').any(|p| p == "..") {
                out.at(file, field, format!("{path:?}: a secret file is a relative path inside the secrets directory"));
            }
        }
        SecretRef::Env(var) => {
            if var.is_empty() || !var.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
                out.at(file, field, format!("{var:?} is not an environment variable name (A-Z, 0-9, _)"));
            }
        }
    }
}

pub(crate) fn all(f: &Files<'_>, subspecialties: Option<&SubspecialtyMap>, auth: Option<&Auth>) -> Vec<Problem> {
    let mut out = Out(Vec::new());
    regions(&mut out, f);
    tenants(&mut out, f);
    contracts(&mut out, f);
    groups(&mut out, f, subspecialties);
    templates(&mut out, f);
    models(&mut out, f);
    if let Some(map) = subspecialties {
        for (i, rule) in map.rules.iter().enumerate() {
            if !map.subspecialties.contains(&rule.subspecialty) {
                out.at(
                    "catalog/subspecialties.toml",
                    format!("rules[{i}].subspecialty"),
                    format!("{:?} is not in subspecialties ({})", rule.subspecialty, known(&map.subspecialties)),
                );
            }
        }
    }
    if let Some(auth) = auth {
        check_auth(&mut out, f, auth);
    }
    out.0
}

fn regions(out: &mut Out, f: &Files<'_>) {
    for (stem, (file, r)) in f.regions {
        check_name(out, file, stem, &r.name);
        if !(1..=1024).contains(&r.log.partitions()) {
            out.at(file, "log.partitions", format!("{} is not between 1 and 1024", r.log.partitions()));
        }
        if let Some(series) = &r.billing.invoice_series
            && (series.is_empty()
                || series.len() > 16
                || !series.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'))
        {
            out.at(file, "billing.invoice_series", format!("{series:?}: 1 to 16 of A-Z, 0-9 and '-'"));
        }
        if let Some(tls) = &r.tls {
            check_secret(out, file, "tls.cert", &tls.cert);
            check_secret(out, file, "tls.key", &tls.key);
            if let Some(ca) = &tls.client_ca {
                check_secret(out, file, "tls.client_ca", ca);
            }
        }
        if let LogConfig::Kafka { bootstrap_servers, replication_factor, client, client_secrets_env, .. } = &r.log {
            if bootstrap_servers
                .split(',')
                .any(|s| s.trim().rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
            {
                out.at(
                    file,
                    "log.bootstrap_servers",
                    format!("{bootstrap_servers:?}: expected host:port[,host:port…]"),
                );
            }
            if *replication_factor < 1 {
                out.at(file, "log.replication_factor", "must be at least 1");
            }
            if r.keys.key_encryption_key.is_none() {
                out.at(
                    file,
                    "keys.key_encryption_key",
                    "a region on Kafka keeps its data keys in its object store, wrapped by this key: \
                     name it, e.g. key_encryption_key = { env = \"MERIDIAN_KEK\" }",
                );
            }
            for key in client.keys() {
                if key.contains("password") || key.contains("secret") {
                    out.at(
                        file,
                        format!("log.client.{key}"),
                        format!(
                            "no secrets in configuration: name the environment variable that holds it, \
                             client_secrets_env = {{ {key:?} = \"MERIDIAN_KAFKA_...\" }}"
                        ),
                    );
                }
            }
            for (key, variable) in client_secrets_env {
                let name_ok = !variable.is_empty()
                    && !variable.starts_with(|c: char| c.is_ascii_digit())
                    && variable.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
                if !name_ok {
                    out.at(
                        file,
                        format!("log.client_secrets_env.{key}"),
                        format!("{variable:?} is not an environment variable name (A-Z, 0-9 and _, not first a digit)"),
                    );
                }
                if client.contains_key(key) {
                    out.at(
                        file,
                        format!("log.client_secrets_env.{key}"),
                        "also set in log.client: set it in one place",
                    );
                }
            }
        }
        if r.dicom.max_associations == 0 {
            out.at(file, "dicom.max_associations", "must be at least 1");
        }
        if !(4_096..=1_048_576).contains(&r.dicom.max_pdu_length) {
            out.at(file, "dicom.max_pdu_length", format!("{} is not between 4096 and 1048576", r.dicom.max_pdu_length));
        }
        if r.dicom.max_instance_bytes < 1 << 20 {
            out.at(file, "dicom.max_instance_bytes", "must be at least 1048576 (1 MiB)");
        }
        if r.dicom.idle_timeout.seconds == 0 {
            out.at(file, "dicom.idle_timeout", "must be at least a second");
        }
        if r.housekeeping.orphan_sweep_every.seconds == 0 {
            out.at(file, "housekeeping.orphan_sweep_every", "must be at least a second");
        }
        if r.housekeeping.orphan_grace.seconds < 60 {
            out.at(
                file,
                "housekeeping.orphan_grace",
                "must be at least a minute: an instance in flight must never look orphaned",
            );
        }
        if r.dicomweb.max_results == 0 {
            out.at(file, "dicomweb.max_results", "must be at least 1: a search must be able to answer");
        }
        if r.dicomweb.max_request_bytes < 1 << 20 {
            out.at(file, "dicomweb.max_request_bytes", "must be at least 1048576 (1 MiB)");
        }
        if let crate::model::ObjectStoreConfig::S3 { bucket, endpoint, allow_http, .. } = &r.objects {
            // S3's bucket naming rules: 3-63 of a-z, 0-9, '.', '-', starting
            // and ending with a letter or digit.
            let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            let named = (3..=63).contains(&bucket.len())
                && bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
                && edge_ok(bucket.chars().next())
                && edge_ok(bucket.chars().last());
            if !named {
                out.at(
                    file,
                    "objects.bucket",
                    format!("{bucket:?} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')"),
                );
            }
            match endpoint.as_deref() {
                Some(e) if e.starts_with("http://") && !allow_http => out.at(
                    file,
                    "objects.endpoint",
                    format!("{e:?} is plain HTTP: PHI travels over TLS (allow_http = true is for a local test server)"),
                ),
                Some(e) if !e.starts_with("http://") && !e.starts_with("https://") => {
                    out.at(file, "objects.endpoint", format!("{e:?} is not an http(s) URL"))
                }
                _ => {}
            }
        }
        for (i, n) in r.nearshore.iter().enumerate() {
            if n == &r.name {
                out.at(file, format!("nearshore[{i}]"), "a region is not nearshore to itself");
            } else if f.no_region(n) {
                out.at(file, format!("nearshore[{i}]"), format!("unknown region {n:?} ({})", known(f.regions.keys())));
            }
        }
    }
}

/// A tenant's report receivers: named once each, at an address of their
/// kind; plain HTTP only to this machine (PHI leaves over TLS).
fn deliveries(out: &mut Out, file: &str, endpoints: &[crate::model::DeliveryEndpoint]) {
    use crate::model::DeliveryKind;
    let mut names = BTreeSet::new();
    for (i, d) in endpoints.iter().enumerate() {
        let field = |f: &str| format!("delivery[{i}].{f}");
        if !names.insert(d.name.as_str()) {
            out.at(file, field("name"), format!("{:?} names two endpoints", d.name));
        }
        if let Some(token) = &d.bearer_token {
            check_secret(out, file, &field("bearer_token"), token);
            if d.kind == DeliveryKind::Hl7Mllp {
                out.at(file, field("bearer_token"), "MLLP carries no bearer token: only a FHIR server takes one");
            }
        }
        match d.kind {
            DeliveryKind::Fhir => {
                let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
                let plain_local = loopback.iter().any(|l| {
                    d.address.strip_prefix(l).is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/']))
                });
                if !d.address.starts_with("https://") && !plain_local {
                    out.at(
                        file,
                        field("address"),
                        format!("{:?}: a FHIR server is reached over https (plain http only on loopback)", d.address),
                    );
                }
            }
            DeliveryKind::Hl7Mllp => {
                let port = d.address.rsplit_once(':').and_then(|(host, port)| {
                    (!host.is_empty()).then_some(port).and_then(|p| p.parse::<u16>().ok()).filter(|p| *p > 0)
                });
                if port.is_none() {
                    out.at(file, field("address"), format!("{:?}: an MLLP listener is host:port", d.address));
                }
            }
        }
    }
}

fn tenants(out: &mut Out, f: &Files<'_>) {
    // (region, called AE) → tenant, for uniqueness across tenants.
    let mut called: BTreeMap<(String, String), String> = BTreeMap::new();
    // HL7 sending facility → (tenant, facility), across tenants.
    let mut sending: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (stem, (file, t)) in f.tenants {
        check_name(out, file, stem, &t.name);
        check_secret(out, file, "id_secret", &t.id_secret);
        if t.home_regions.is_empty() {
            out.at(file, "home_regions", "a tenant needs at least one home region");
        }
        for (i, r) in t.home_regions.iter().enumerate() {
            if f.no_region(r) {
                out.at(
                    file,
                    format!("home_regions[{i}]"),
                    format!("unknown region {r:?} ({})", known(f.regions.keys())),
                );
            } else if f.regions.contains_key(r) && !t.called_ae_titles.contains_key(r) {
                out.at(file, "called_ae_titles", format!("no called AE title for home region {r:?}"));
            }
        }
        for (region, ae) in &t.called_ae_titles {
            let field = format!("called_ae_titles.{region}");
            if f.no_region(region) {
                out.at(file, &field, format!("unknown region {region:?} ({})", known(f.regions.keys())));
            } else if !t.home_regions.contains(region) {
                out.at(
                    file,
                    &field,
                    format!("{region:?} is not a home region of the tenant: its PHI may not be sent there"),
                );
            }
            if let Some(other) = called.insert((region.clone(), ae.0.clone()), t.name.clone()) {
                out.at(
                    file,
                    &field,
                    format!("{:?} is already the called AE title of tenant {other:?} in {region}", ae.0),
                );
            }
        }
        if t.facilities.is_empty() {
            out.at(file, "facilities", "a tenant needs at least one facility");
        }
        deliveries(out, file, &t.delivery);
        let mut names = BTreeSet::new();
        let mut calling: BTreeMap<&str, &str> = BTreeMap::new();
        for (i, fac) in t.facilities.iter().enumerate() {
            if !names.insert(fac.name.as_str()) {
                out.at(file, format!("facilities[{i}].name"), format!("facility {:?} is listed twice", fac.name));
            }
            if fac.calling_ae_titles.is_empty() {
                out.at(
                    file,
                    format!("facilities[{i}].calling_ae_titles"),
                    "a facility needs at least one calling AE title",
                );
            }
            for (j, ae) in fac.calling_ae_titles.iter().enumerate() {
                if let Some(other) = calling.insert(ae.0.as_str(), fac.name.as_str()) {
                    out.at(
                        file,
                        format!("facilities[{i}].calling_ae_titles[{j}]"),
                        format!(
                            "{:?} is also a calling AE title of facility {other:?}: associations would be ambiguous",
                            ae.0
                        ),
                    );
                }
            }
            // An order names its facility in MSH-4, on a listener every
            // tenant of the region shares: one name, one facility.
            for (j, name) in std::iter::once(&fac.name).chain(&fac.hl7_sending_facilities).enumerate() {
                if let Some((tenant, other)) = sending.insert(name.clone(), (t.name.clone(), fac.name.clone()))
                    && (tenant != t.name || other != fac.name)
                {
                    let field = if j == 0 {
                        format!("facilities[{i}].name")
                    } else {
                        format!("facilities[{i}].hl7_sending_facilities[{}]", j - 1)
                    };
                    out.at(
                        file,
                        field,
                        format!(
                            "{name:?} also names facility {other:?} of tenant {tenant}: an order's sending facility (MSH-4) would be ambiguous"
                        ),
                    );
                }
            }
        }
    }
}

fn contracts(out: &mut Out, f: &Files<'_>) {
    for (stem, (file, c)) in f.contracts {
        check_name(out, file, stem, &c.name);
        if f.no_tenant(&c.tenant) {
            out.at(file, "tenant", format!("unknown tenant {:?} ({})", c.tenant, known(f.tenants.keys())));
        }
        if c.reading_groups.is_empty() {
            out.at(file, "reading_groups", "a contract needs at least one reading group");
        }
        let w = &c.critical_results;
        if !(0 < w.category_1.seconds
            && w.category_1.seconds < w.category_2.seconds
            && w.category_2.seconds < w.category_3.seconds)
        {
            out.at(
                file,
                "critical_results",
                format!(
                    "windows must grow by category, from more than nothing: 1 {}s, 2 {}s, 3 {}s",
                    w.category_1.seconds, w.category_2.seconds, w.category_3.seconds
                ),
            );
        }
        if let Some(sample) = &c.peer_review {
            if !(0.0..=1.0).contains(&sample.fraction) {
                out.at(
                    file,
                    "peer_review.fraction",
                    format!(
                        "{} is not a share: it must be in [0, 1] (0.05 reviews one final in twenty)",
                        sample.fraction
                    ),
                );
            }
            if sample.seed.trim().is_empty() {
                out.at(file, "peer_review.seed", "name a seed: the same seed draws the same studies");
            }
            if sample.within.seconds == 0 {
                out.at(file, "peer_review.within", "a review needs time: give a window such as \"30d\"");
            }
        }
        if !language_tag(&c.report_language) {
            out.at(
                file,
                "report_language",
                format!("{:?} is not a language tag (BCP 47, such as \"en\" or \"fr-CA\")", c.report_language),
            );
        }
        for (i, g) in c.reading_groups.iter().enumerate() {
            if f.no_group(g) {
                out.at(
                    file,
                    format!("reading_groups[{i}]"),
                    format!("unknown reading group {g:?} ({})", known(f.groups.keys())),
                );
            }
        }
        for (i, r) in c.deidentification_destinations.iter().enumerate() {
            if f.no_region(r) {
                out.at(
                    file,
                    format!("deidentification_destinations[{i}]"),
                    format!("unknown region {r:?} ({})", known(f.regions.keys())),
                );
            }
        }
        // A de-identified contract's readers are served its derivatives in
        // each destination; where the tenant is homed they would be served
        // beside the originals.
        let homes = f.tenants.get(&c.tenant).map(|(_, t)| t.home_regions.as_slice()).unwrap_or_default();
        for (i, r) in c.deidentification_destinations.iter().enumerate().filter(|(_, r)| homes.contains(r)) {
            out.at(
                file,
                format!("deidentification_destinations[{i}]"),
                format!(
                    "{r:?} is a home region of tenant {}: its readers of de-identified images would be served \
                     beside the originals",
                    c.tenant
                ),
            );
        }
        if c.image_access == ImageAccess::Deidentified && c.deidentification_destinations.is_empty() {
            out.at(
                file,
                "deidentification_destinations",
                "image_access = \"deidentified\" needs at least one destination region",
            );
        }
        for (i, o) in c.deidentification_options.iter().enumerate() {
            if !o.supported() {
                out.at(
                    file,
                    format!("deidentification_options[{i}]"),
                    format!(
                        "{:?} is not supported: it needs content inspection (free text, structured content, \
                         graphics or a safe private attribute list) Meridian does not do",
                        o.as_str()
                    ),
                );
            }
        }
        if c.deidentification_options.contains(&DeidentificationOption::RetainLongitudinalFullDates)
            && c.deidentification_options.contains(&DeidentificationOption::RetainLongitudinalModifiedDates)
        {
            out.at(
                file,
                "deidentification_options",
                "retain_longitudinal_full_dates and retain_longitudinal_modified_dates exclude each other",
            );
        }
        if c.retention.seconds == 0 {
            out.at(file, "retention", "must be longer than 0s");
        }
        if c.delivery.is_empty() {
            out.at(file, "delivery", "no read type may be read under this contract");
        }
        for p in [Priority::Stat, Priority::Urgent, Priority::Routine] {
            let name = p.as_str();
            match c.sla.get(&p) {
                None => out.at(file, format!("sla.{name}"), "missing: every priority needs a turnaround"),
                Some(s) if s.turnaround.seconds == 0 => {
                    out.at(file, format!("sla.{name}.turnaround"), "must be longer than 0s")
                }
                _ => {}
            }
        }
        if let (Some(stat), Some(urgent), Some(routine)) =
            (c.sla.get(&Priority::Stat), c.sla.get(&Priority::Urgent), c.sla.get(&Priority::Routine))
            && !(stat.turnaround <= urgent.turnaround && urgent.turnaround <= routine.turnaround)
        {
            out.at(
                file,
                "sla",
                format!(
                    "turnarounds must not shrink as priority falls: stat {}, urgent {}, routine {}",
                    stat.turnaround, urgent.turnaround, routine.turnaround
                ),
            );
        }
        let fr = &c.escalation_fractions;
        for (i, x) in fr.iter().enumerate() {
            if !(*x > 0.0 && *x < 1.0) {
                out.at(file, format!("escalation_fractions[{i}]"), format!("{x} is not between 0 and 1"));
            } else if i > 0 && *x <= fr[i - 1] {
                out.at(file, format!("escalation_fractions[{i}]"), format!("{x} does not increase on {}", fr[i - 1]));
            }
        }
        engagement(out, file, &c.engagement, &c.applies.modalities);
        if let Some(tenant) = f.tenants.get(&c.tenant).map(|(_, t)| t) {
            for (i, facility) in c.applies.facilities.iter().enumerate() {
                if !tenant.facilities.iter().any(|x| x.name == *facility) {
                    let names: Vec<&String> = tenant.facilities.iter().map(|x| &x.name).collect();
                    out.at(
                        file,
                        format!("applies.facilities[{i}]"),
                        format!("tenant {} has no facility {facility:?} ({})", c.tenant, known(names)),
                    );
                }
            }
        }
        if let Some(h) = c.applies.hours
            && h.start == h.end
        {
            out.at(file, "applies.hours", "start and end are the same: the contract would take no study");
        }
    }
    // Exactly one contract may take any study: two of one tenant that
    // could both take one are refused, naming both files and the study.
    let all: Vec<_> = f.contracts.values().collect();
    for (i, (file, c)) in all.iter().enumerate() {
        for (other_file, other) in &all[i + 1..] {
            if c.tenant == other.tenant
                && let Some(study) = c.applies.overlap(&other.applies)
            {
                out.at(
                    file,
                    "applies",
                    format!(
                        "contracts {} ({file}) and {} ({other_file}) of tenant {} could both take a study ({study}): \
                         narrow [applies] so that exactly one does",
                        c.name, other.name, c.tenant
                    ),
                );
            }
        }
    }
}

/// `takes`: the modalities the contract's `[applies]` names (empty: all).
fn engagement(out: &mut Out, file: &str, e: &Engagement, takes: &[String]) {
    let Some(exp) = currency_exponent(&e.currency) else {
        out.at(file, "engagement.currency", format!("{:?} is not an ISO 4217 currency Meridian bills in", e.currency));
        return;
    };
    let amount = |out: &mut Out, field: String, d: &crate::value::Decimal| {
        if let Err(reason) = d.minor_units(exp) {
            out.at(file, field, format!("{reason} ({})", e.currency));
        }
    };
    if let Some(d) = &e.monthly_fee {
        amount(out, "engagement.monthly_fee".into(), d);
    }
    if let Some(d) = &e.project_fee {
        amount(out, "engagement.project_fee".into(), d);
    }
    for (k, d) in &e.per_study {
        amount(out, format!("engagement.per_study.{k}"), d);
    }
    for (read_type, prices) in &e.per_read_type {
        if crate::model::ReadType::parse(read_type).is_none() {
            out.at(
                file,
                format!("engagement.per_read_type.{read_type}"),
                "not a read type (preliminary, final, secondary, peer_review)",
            );
        }
        for (k, d) in prices {
            amount(out, format!("engagement.per_read_type.{read_type}.{k}"), d);
        }
    }
    for (priority, d) in &e.priority_surcharge {
        if !matches!(priority.as_str(), "stat" | "urgent" | "routine") {
            out.at(file, format!("engagement.priority_surcharge.{priority}"), "not a priority (stat, urgent, routine)");
        }
        amount(out, format!("engagement.priority_surcharge.{priority}"), d);
    }
    if let Some(a) = &e.after_hours {
        amount(out, "engagement.after_hours.surcharge".into(), &a.surcharge);
    }
    if let Some(d) = &e.subspecialty_surcharge {
        amount(out, "engagement.subspecialty_surcharge".into(), d);
    }
    for (priority, credit) in &e.sla_credit {
        let field = format!("engagement.sla_credit.{priority}");
        if !matches!(priority.as_str(), "stat" | "urgent" | "routine") {
            out.at(file, field.clone(), "not a priority (stat, urgent, routine)");
        }
        match credit {
            crate::value::Credit::Fixed(d) => amount(out, field, d),
            crate::value::Credit::Share(p) if p.per_million > 1_000_000 => {
                out.at(file, field, "a credit of more than 100% of the read's price");
            }
            crate::value::Credit::Share(_) => {}
        }
    }
    if e.sla_credit_cap.is_some_and(|cap| cap.per_million > 1_000_000) {
        out.at(file, "engagement.sla_credit_cap", "a cap over 100% of the invoice's charges");
    }
    milestones(out, file, e);
    match e.model {
        EngagementModel::Subscription if e.monthly_fee.is_none() => {
            out.at(file, "engagement.monthly_fee", "a subscription needs a monthly fee");
        }
        // Without a default, each modality the contract takes needs a price.
        EngagementModel::Transaction if !e.per_study.contains_key("default") => {
            if takes.is_empty() {
                out.at(
                    file,
                    "engagement.per_study",
                    "the contract takes every modality ([applies] names none): it needs a \"default\" per-study price",
                );
            }
            for m in takes.iter().filter(|m| !e.per_study.contains_key(*m)) {
                out.at(
                    file,
                    format!("engagement.per_study.{m}"),
                    format!("the contract takes {m} studies ([applies] modalities) but prices none: name it or a \"default\""),
                );
            }
        }
        EngagementModel::ProjectBased if e.project_fee.is_none() || e.project_ends.is_none() => {
            out.at(file, "engagement", "a project-based contract needs project_fee and project_ends");
        }
        _ => {}
    }
}

/// A project's milestones: named once, each a share of the fee due by the
/// project's end, the shares adding up to the whole fee.
fn milestones(out: &mut Out, file: &str, e: &Engagement) {
    if e.milestones.is_empty() {
        return;
    }
    if e.model != EngagementModel::ProjectBased {
        out.at(file, "engagement.milestones", "only a project-based contract bills at milestones");
    }
    let mut names = std::collections::BTreeSet::new();
    let mut total: u64 = 0;
    for (n, m) in e.milestones.iter().enumerate() {
        let field = format!("engagement.milestones[{n}]");
        if m.name.is_empty()
            || !m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            out.at(file, format!("{field}.name"), format!("{:?}: lowercase letters, digits, '-' and '_'", m.name));
        } else if !names.insert(m.name.as_str()) {
            out.at(file, format!("{field}.name"), format!("{:?} names two milestones", m.name));
        }
        if m.share.per_million == 0 {
            out.at(file, format!("{field}.share"), "a milestone of 0% bills nothing");
        }
        if let Some(ends) = &e.project_ends
            && m.due.0 > ends.0
        {
            out.at(file, format!("{field}.due"), format!("{} is after the project ends ({})", m.due.0, ends.0));
        }
        total += u64::from(m.share.per_million);
    }
    if total != 1_000_000 {
        let (whole, fraction) = (total / 10_000, total % 10_000);
        let percent = if fraction == 0 {
            whole.to_string()
        } else {
            format!("{whole}.{}", format!("{fraction:04}").trim_end_matches('0'))
        };
        out.at(file, "engagement.milestones", format!("the shares add up to {percent}%, not 100%"));
    }
}

fn groups(out: &mut Out, f: &Files<'_>, subspecialties: Option<&SubspecialtyMap>) {
    let mut reader_ids: BTreeMap<&str, &str> = BTreeMap::new();
    for (stem, (file, g)) in f.groups {
        check_name(out, file, stem, &g.name);
        if let Some(p) = &g.payout {
            match currency_exponent(&p.currency) {
                None => out.at(
                    file,
                    "payout.currency",
                    format!("{:?} is not an ISO 4217 currency Meridian pays in", p.currency),
                ),
                Some(exp) => {
                    if let Err(reason) = p.rate_per_wrvu.minor_units(exp) {
                        out.at(file, "payout.rate_per_wrvu", format!("{reason} ({})", p.currency));
                    }
                }
            }
        }
        for (i, r) in g.readers.iter().enumerate() {
            let at = |field: &str| format!("readers[{i}].{field}");
            if let Some(other) = reader_ids.insert(r.id.as_str(), g.name.as_str()) {
                out.at(file, at("id"), format!("reader id {:?} is also used in group {other:?}", r.id));
            }
            if f.no_region(&r.region) {
                out.at(file, at("region"), format!("unknown region {:?} ({})", r.region, known(f.regions.keys())));
            }
            if r.capacity == 0 {
                out.at(file, at("capacity"), "a reader with capacity 0 can never be assigned");
            }
            if r.read_types.is_empty() {
                out.at(file, at("read_types"), "a reader needs at least one read type");
            }
            if let Some(map) = subspecialties {
                for (j, s) in r.subspecialties.iter().enumerate() {
                    if !map.subspecialties.contains(s) {
                        out.at(
                            file,
                            at(&format!("subspecialties[{j}]")),
                            format!("unknown subspecialty {s:?} ({})", known(&map.subspecialties)),
                        );
                    }
                }
            }
            for (j, c) in r.credentials.iter().enumerate() {
                match f.tenants.get(&c.tenant) {
                    None if !f.no_tenant(&c.tenant) => {}
                    None => out.at(
                        file,
                        at(&format!("credentials[{j}].tenant")),
                        format!("unknown tenant {:?} ({})", c.tenant, known(f.tenants.keys())),
                    ),
                    Some((_, t)) if !t.facilities.iter().any(|fac| fac.name == c.facility) => out.at(
                        file,
                        at(&format!("credentials[{j}].facility")),
                        format!("tenant {:?} has no facility {:?}", c.tenant, c.facility),
                    ),
                    _ => {}
                }
            }
            for (j, s) in r.shifts.iter().enumerate() {
                if s.days.is_empty() {
                    out.at(file, at(&format!("shifts[{j}].days")), "a shift needs at least one day");
                }
                if s.start == s.end {
                    out.at(file, at(&format!("shifts[{j}]")), "start and end are the same time");
                }
            }
        }
    }
}

fn check_auth(out: &mut Out, f: &Files<'_>, auth: &Auth) {
    let file = "auth.toml";
    if auth.keys.is_empty() {
        out.at(file, "keys", "at least one verifying key is needed");
    }
    let mut ids = BTreeSet::new();
    for (i, k) in auth.keys.iter().enumerate() {
        if !ids.insert(&k.id) {
            out.at(file, format!("keys[{i}].id"), format!("key id {:?} is listed twice", k.id));
        }
        check_secret(out, file, &format!("keys[{i}].public_key"), &k.public_key);
    }
    let mut names = BTreeSet::new();
    for (i, p) in auth.principals.iter().enumerate() {
        let at = |field: &str| format!("principals[{i}].{field}");
        if !names.insert(&p.name) {
            out.at(file, at("name"), format!("principal {:?} is listed twice", p.name));
        }
        match p.kind {
            PrincipalKind::Tenant => match &p.tenant {
                None => out.at(file, at("tenant"), "a tenant principal names its tenant"),
                Some(t) => match f.tenants.get(t) {
                    None if !f.no_tenant(t) => {}
                    None => out.at(file, at("tenant"), format!("unknown tenant {t:?} ({})", known(f.tenants.keys()))),
                    Some((_, tenant)) => {
                        if let Some(fac) = &p.facility
                            && !tenant.facilities.iter().any(|x| &x.name == fac)
                        {
                            out.at(file, at("facility"), format!("tenant {t:?} has no facility {fac:?}"));
                        }
                    }
                },
            },
            PrincipalKind::Group => match &p.group {
                None => out.at(file, at("group"), "a group principal names its reading group"),
                Some(g) => match f.groups.get(g) {
                    None if !f.no_group(g) => {}
                    None => {
                        out.at(file, at("group"), format!("unknown reading group {g:?} ({})", known(f.groups.keys())))
                    }
                    Some((_, group)) => {
                        if let Some(r) = &p.reader
                            && !group.readers.iter().any(|x| &x.id == r)
                        {
                            out.at(file, at("reader"), format!("reading group {g:?} has no reader {r:?}"));
                        }
                    }
                },
            },
            PrincipalKind::Platform => {}
        }
        if p.kind != PrincipalKind::Tenant && p.tenant.is_some() {
            out.at(file, at("tenant"), "only a tenant principal names a tenant");
        }
        if p.kind != PrincipalKind::Group && (p.group.is_some() || p.reader.is_some()) {
            out.at(file, at("group"), "only a group principal names a reading group or reader");
        }
        let allowed = roles_for(p.kind);
        for (j, role) in p.roles.iter().enumerate() {
            if !allowed.contains(&role.as_str()) {
                out.at(
                    file,
                    at(&format!("roles[{j}]")),
                    format!(
                        "{role:?} is not a role of a {} principal (roles: {})",
                        p.kind.as_str(),
                        allowed.join(", ")
                    ),
                );
            }
        }
        if p.roles.iter().any(|r| r == "facility") && p.facility.is_none() {
            out.at(file, at("facility"), "a principal with the facility role names its facility");
        }
        if p.roles.iter().any(|r| r == "reader") && p.reader.is_none() {
            out.at(file, at("reader"), "a principal with the reader role names its reader id");
        }
    }
    let mut issuers = BTreeSet::from([auth.issuer.as_str()]);
    for (i, o) in auth.oidc_issuers.iter().enumerate() {
        let at = |field: &str| format!("oidc_issuers[{i}].{field}");
        if !issuers.insert(o.issuer.as_str()) {
            out.at(file, at("issuer"), format!("issuer {:?} is listed twice (or is Meridian's own)", o.issuer));
        }
        if o.audience.is_empty() {
            out.at(file, at("audience"), "the audience its tokens must carry");
        }
        check_secret(out, file, &at("jwks"), &o.jwks);
        match (&o.tenant, &o.group) {
            (Some(t), None) => {
                if f.tenants.get(t).is_none() && f.no_tenant(t) {
                    out.at(file, at("tenant"), format!("unknown tenant {t:?} ({})", known(f.tenants.keys())));
                }
            }
            (None, Some(g)) => {
                if f.groups.get(g).is_none() && f.no_group(g) {
                    out.at(file, at("group"), format!("unknown reading group {g:?} ({})", known(f.groups.keys())));
                }
            }
            _ => out.at(file, at("tenant"), "name exactly one of tenant and group: whom the issuer's tokens speak for"),
        }
        if o.roles_claim.is_empty() {
            out.at(file, at("roles_claim"), "the claim that holds the roles");
        }
        if let Some(room) = &o.room {
            if room.client_id.trim().is_empty() {
                out.at(file, at("room.client_id"), "the client id registered for the reading room");
            }
            if room.label.trim().is_empty() {
                out.at(file, at("room.label"), "the sign-in button's words");
            }
            if let Some(secret) = &room.client_secret {
                check_secret(out, file, &at("room.client_secret"), secret);
            }
            // The room sends an authorization code and a client secret to
            // the provider: never in the clear, but on this machine.
            if !secure_or_loopback(&o.issuer) {
                out.at(
                    file,
                    at("issuer"),
                    format!(
                        "{:?}: the reading room signs in only through an https:// issuer (or one on loopback)",
                        o.issuer
                    ),
                );
            }
        }
    }
    let mut certificate_names = BTreeSet::new();
    for (i, c) in auth.client_certificates.iter().enumerate() {
        let at = |field: &str| format!("client_certificates[{i}].{field}");
        if c.name.trim().is_empty() || c.name.trim() != c.name {
            out.at(file, at("name"), "a subject alternative name (DNS name or URI), without spaces around it");
        }
        if !certificate_names.insert(&c.name) {
            out.at(file, at("name"), format!("certificate name {:?} is listed twice", c.name));
        }
        match f.tenants.get(&c.tenant) {
            None if !f.no_tenant(&c.tenant) => {}
            None => out.at(file, at("tenant"), format!("unknown tenant {:?} ({})", c.tenant, known(f.tenants.keys()))),
            Some((_, tenant)) => {
                if !tenant.facilities.iter().any(|x| x.name == c.facility) {
                    out.at(file, at("facility"), format!("tenant {:?} has no facility {:?}", c.tenant, c.facility));
                }
            }
        }
        let allowed = roles_for(PrincipalKind::Tenant);
        for (j, role) in c.roles.iter().enumerate() {
            if !allowed.contains(&role.as_str()) {
                out.at(
                    file,
                    at(&format!("roles[{j}]")),
                    format!("{role:?} is not a role of a tenant principal (roles: {})", allowed.join(", ")),
                );
            }
        }
    }
}

fn templates(out: &mut Out, f: &Files<'_>) {
    // The languages contracts write in: every template titles its report in each.
    // (A tag that is none is the contract's problem, reported there.)
    let languages: BTreeMap<&str, &str> = f
        .contracts
        .values()
        .filter(|(_, c)| language_tag(&c.report_language))
        .map(|(file, c)| (c.report_language.as_str(), file.as_str()))
        .collect();
    let mut taken: BTreeMap<(String, String), String> = BTreeMap::new();
    for (stem, (file, t)) in f.templates {
        check_name(out, file, stem, &t.name);
        if t.modalities.is_empty() {
            out.at(file, "modalities", "a template is for at least one modality");
        }
        for (language, contract) in &languages {
            if !t.titles.contains_key(*language) {
                out.at(file, "titles", format!("no title in {language:?}, the report_language of {contract}"));
            }
        }
        for language in t.titles.keys().chain(t.sections.findings.keys()).chain(t.sections.impression.keys()) {
            if !language_tag(language) {
                out.at(file, "titles", format!("{language:?} is not a language tag (BCP 47, such as \"en\")"));
            }
        }
        let mut names = BTreeSet::new();
        for (i, field) in t.fields.iter().enumerate() {
            if !names.insert(field.name.as_str()) {
                out.at(file, format!("fields[{i}].name"), format!("{:?} names two fields", field.name));
            }
            if field.values.is_empty() {
                out.at(file, format!("fields[{i}].values"), "a coded field lists the values it takes");
            }
        }
        // One template per kind of study, so a draft's template is never a guess.
        let parts = if t.body_parts.is_empty() { vec!["*".to_owned()] } else { t.body_parts.clone() };
        for m in &t.modalities {
            for b in &parts {
                if let Some(other) = taken.insert((m.clone(), b.clone()), t.name.clone()) {
                    out.at(
                        file,
                        "modalities",
                        format!(
                            "template {other:?} is for {m} {} too: one template per modality and body part",
                            if b == "*" { "(any body part)" } else { b }
                        ),
                    );
                }
            }
        }
    }
}

fn models(out: &mut Out, f: &Files<'_>) {
    use crate::model::ModelRuntime;
    for (stem, (file, m)) in f.models {
        check_name(out, file, stem, &m.name);
        if m.version.trim().is_empty() {
            out.at(file, "version", "a model names its version: outcomes say which version read a study");
        }
        match &m.runtime {
            ModelRuntime::Embedded { path } => {
                if !f.root.join(path).is_file() {
                    out.at(
                        file,
                        "runtime.path",
                        format!("{path:?}: no such file (relative to the configuration directory)"),
                    );
                }
            }
            ModelRuntime::Remote { endpoint, timeout_ms, ca, .. } => {
                let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
                if !matches!(scheme, "http" | "https") || rest.is_empty() {
                    out.at(file, "runtime.endpoint", format!("{endpoint:?}: an http:// or https:// address"));
                }
                match ca {
                    Some(_) if scheme == "http" => {
                        out.at(file, "runtime.ca", "a CA is for an https:// endpoint; this one is plain http")
                    }
                    None if scheme == "https" => {
                        out.at(file, "runtime.ca", "an https:// endpoint needs the CA that signs its certificate")
                    }
                    Some(ca) if !f.root.join(ca).is_file() => out.at(
                        file,
                        "runtime.ca",
                        format!("{ca:?}: no such file (relative to the configuration directory)"),
                    ),
                    _ => {}
                }
                if *timeout_ms == 0 {
                    out.at(file, "runtime.timeout_ms", "a call needs some time: more than 0");
                }
            }
        }
        if m.input.modalities.is_empty() {
            out.at(file, "input.modalities", "a model reads at least one modality");
        }
        for (i, name) in m.input.facilities.iter().enumerate() {
            if !f.tenants.values().any(|(_, t)| t.facilities.iter().any(|fac| &fac.name == name)) {
                out.at(file, format!("input.facilities[{i}]"), format!("no tenant has a facility {name:?}"));
            }
        }
        if m.input.layout != "NCHW" {
            out.at(file, "input.layout", format!("{:?}: the input is read as NCHW", m.input.layout));
        }
        if m.input.dtype != "f32" {
            out.at(file, "input.dtype", format!("{:?}: the input is read as f32", m.input.dtype));
        }
        if m.input.size.contains(&0) || m.input.window.width <= 0.0 || m.input.max_slices == 0 {
            out.at(file, "input", "size, window width and max_slices must be more than nothing");
        }
        if m.outputs.is_empty() {
            out.at(file, "outputs", "a model has at least one output to judge by");
        }
        if let Some(v) = &m.validation {
            if !(0.0..=1.0).contains(&v.baseline_positive_rate) || !(0.0..=1.0).contains(&v.tolerance) {
                out.at(file, "validation", "baseline_positive_rate and tolerance are shares in [0, 1]");
            }
            if v.window < 10 {
                out.at(
                    file,
                    "validation.window",
                    format!("{}: a window of fewer than 10 outcomes says nothing", v.window),
                );
            }
        }
        for (i, o) in m.outputs.iter().enumerate() {
            if !(0.0..=1.0).contains(&o.threshold) {
                out.at(file, format!("outputs[{i}].threshold"), format!("{} is outside [0, 1]", o.threshold));
            }
        }
    }
    for (file, c) in f.contracts.values() {
        for (i, name) in c.ai_models.iter().enumerate() {
            if !f.models.contains_key(name) && !f.unparsed.contains(&format!("models/{name}")) {
                out.at(file, format!("ai_models[{i}]"), format!("unknown model {name:?} ({})", known(f.models.keys())));
            }
        }
    }
}

/// A BCP 47 tag as reports use them: a two- or three-letter language, then
/// subtags of letters and digits ("en", "fr-CA", "zh-Hant-TW").
fn language_tag(tag: &str) -> bool {
    let mut parts = tag.split('-');
    let language = parts.next().unwrap_or_default();
    (2..=3).contains(&language.len())
        && language.chars().all(|c| c.is_ascii_lowercase())
        && parts.all(|p| (2..=8).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// An issuer the room may talk to: https, or plain http on loopback (a
/// test's or a developer's provider).
fn secure_or_loopback(issuer: &str) -> bool {
    if issuer.starts_with("https://") {
        return true;
    }
    let Some(rest) = issuer.strip_prefix("http://") else { return false };
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}
