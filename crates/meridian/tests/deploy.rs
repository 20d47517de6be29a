//! The Helm chart (`deploy/helm/meridian`), rendered by the real Helm for
//! each region's values, holds to what matters in production: every
//! container non-root, read-only and without capabilities; every workload
//! probed and bounded; no secret value in a ConfigMap; DICOM and MLLP only
//! on their LoadBalancer Services; one writer where one is allowed; and a
//! bad values file refused by field.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn tool(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/meridian/tools").join(default)
    })
}

fn helm(args: &[&str]) -> std::process::Output {
    let chart = repo().join("deploy/helm/meridian");
    Command::new(tool("MERIDIAN_HELM", "bin/helm"))
        .args(args)
        .arg(&chart)
        .arg("-f")
        .arg(chart.join("values-platform.yaml"))
        .output()
        .expect("helm: scripts/test installs it (scripts/install-helm)")
}

/// Every object `helm template` renders for `region`, as JSON.
fn rendered(region: &str) -> Vec<Value> {
    let chart = repo().join("deploy/helm/meridian");
    let values = chart.join(format!("values-{region}.yaml"));
    let release = format!("meridian-{region}");
    let out = helm(&["template", &release, "-n", &release, "-f", values.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut python = Command::new(tool("MERIDIAN_PYTHON", "venv/bin/python"))
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    python.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = python.wait_with_output().unwrap();
    assert!(parsed.status.success());
    serde_json::from_slice(&parsed.stdout).unwrap()
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(o: &Value) -> &str {
    o["metadata"]["name"].as_str().unwrap_or_default()
}

#[test]
fn each_regions_chart_runs_locked_down_probed_and_bounded_with_dicom_only_on_its_load_balancer() {
    for region in ["us-east", "eu-west", "in-south"] {
        let objects = rendered(region);
        assert!(of_kind(&objects, "Secret").is_empty(), "{region}: the chart never holds a secret");
        let workloads = of_kind(&objects, "StatefulSet");
        let services: Vec<&str> = workloads.iter().map(|w| name(w)).collect();
        assert_eq!(services.len(), 7, "{region}: one workload per service: {services:?}");
        assert!(services.contains(&format!("meridian-{region}-replicator").as_str()), "{services:?}");
        let pods: Vec<(&str, &Value)> = workloads
            .iter()
            .map(|w| (name(w), &w["spec"]["template"]["spec"]))
            .chain(of_kind(&objects, "Pod").into_iter().map(|p| (name(p), &p["spec"])))
            .collect();
        for (owner, pod) in &pods {
            assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault", "{owner}");
            for c in pod["containers"].as_array().unwrap() {
                let s = &c["securityContext"];
                assert_eq!(s["runAsNonRoot"], true, "{owner}: non-root");
                assert_eq!(s["readOnlyRootFilesystem"], true, "{owner}: read-only root");
                assert_eq!(s["allowPrivilegeEscalation"], false, "{owner}");
                assert_eq!(s["capabilities"]["drop"], serde_json::json!(["ALL"]), "{owner}");
                assert!(c["resources"]["limits"]["memory"].is_string(), "{owner}: a memory limit");
                assert!(c["resources"]["requests"]["cpu"].is_string(), "{owner}: a CPU request");
            }
        }
        for w in &workloads {
            let c = &w["spec"]["template"]["spec"]["containers"][0];
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                assert!(c[probe].is_object(), "{}: {probe}", name(w));
            }
            let args: Vec<&str> = c["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
            assert!(args.contains(&format!("--region={region}").as_str()), "{args:?}");
            let replicas = w["spec"]["replicas"].as_u64().unwrap();
            if name(w).ends_with("-ingest") {
                let peers = args.iter().find(|a| a.starts_with("--peers=")).expect("ingest replicas know each other");
                assert_eq!(peers.split(',').count() as u64, replicas, "{peers}");
            } else if !name(w).ends_with("-storage") {
                assert_eq!(replicas, 1, "{}: one writer a region", name(w));
            }
        }
        // No secret value in the configuration: secrets are named by
        // `{ file = … }` or `{ env = … }`, never written.
        for map in of_kind(&objects, "ConfigMap") {
            for (key, text) in map["data"].as_object().unwrap() {
                let text = text.as_str().unwrap();
                assert!(!text.contains("-----BEGIN") && !text.contains("eyJ"), "{key}: a key or token");
                for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
                    let Some((field, value)) = line.split_once('=') else { continue };
                    let field = field.trim().trim_matches('"').to_ascii_lowercase();
                    let secretish = ["password", "secret", "token", "private"].iter().any(|w| field.contains(w));
                    assert!(!secretish || value.trim().starts_with('{'), "{key}: {line}: a secret written down");
                }
            }
        }
        // DICOM and MLLP: only on their LoadBalancer Services.
        for service in of_kind(&objects, "Service") {
            let kind = service["spec"]["type"].as_str().unwrap_or("ClusterIP");
            for port in service["spec"]["ports"].as_array().unwrap() {
                let plain_tcp = port["name"] == "dicom" || port["name"] == "mllp";
                assert_eq!(plain_tcp, kind == "LoadBalancer", "{}: {port}", name(service));
            }
        }
        let policies = of_kind(&objects, "NetworkPolicy");
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0]["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    }
}

#[test]
fn a_bad_values_file_is_refused_naming_each_field() {
    let bad = repo().join("deploy/helm/ci/bad-values.yaml");
    let out = helm(&["template", "bad", "-f", bad.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {said}");
    for field in ["/region", "/services/routing/replicas", "'enabeld' not allowed"] {
        assert!(said.contains(field), "{field}: {said}");
    }
}
