//! De-identification against independent sources, attribute by attribute:
//! the `dicom-anonymizer` package de-identifies the same instance (every
//! attribute of Table E.1-1 with a value), pydicom reads both results, and
//! Innolitics' parse of Table E.1-1 checks the table Meridian carries.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use dicom_core::Tag;
use meridian_events::TenantSecret;
use meridian_integration_tests::venv_bin;
use meridian_storage::deidentify::Profile;
use meridian_storage::deidentify::profile::{Action, rule};
use serde_json::Value;

fn python(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/deid_oracle.py");
    let out = Command::new(venv_bin().join("python"))
        .arg(&script)
        .args(args)
        .output()
        .expect("the tools venv's python (scripts/test installs dicom-anonymizer and dicom-standard)");
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// What pydicom reads of a file: tag (8 hex digits) → (VR, value).
fn attributes(path: &Path) -> BTreeMap<String, (String, Value)> {
    let json: Value = serde_json::from_str(&python(&["read", path.to_str().unwrap()])).unwrap();
    json.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), (v[0].as_str().unwrap().to_owned(), v[1].clone())))
        .collect()
}

/// What became of one attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Removed,
    Kept,
    /// Emptied or a dummy: the value says nothing (Z allows either).
    Blanked,
    /// A UID replaced by another.
    NewUid,
    /// A sequence still there (its items are compared by the unit tests).
    Sequence,
}

fn outcome(before: &(String, Value), after: Option<&(String, Value)>) -> Outcome {
    match after {
        None => Outcome::Removed,
        Some((vr, _)) if vr == "SQ" => Outcome::Sequence,
        Some((_, v)) if *v == before.1 => Outcome::Kept,
        Some((vr, v)) if vr == "UI" && v.as_str().is_some_and(|s| !s.is_empty()) => Outcome::NewUid,
        Some(_) => Outcome::Blanked,
    }
}

fn tag_of(hex: &str) -> Tag {
    let n = u32::from_str_radix(hex, 16).unwrap();
    Tag((n >> 16) as u16, (n & 0xFFFF) as u16)
}

#[test]
fn every_attribute_is_treated_as_the_oracle_treats_it() {
    let dir = tempfile::tempdir().unwrap();
    python(&["make", dir.path().to_str().unwrap()]);
    let full = std::fs::read(dir.path().join("full.dcm")).unwrap();
    let secret = TenantSecret::new(vec![3; 32]).unwrap();
    let derived = Profile::new(&secret, "northwind-lotus", &[]).deidentify(&full).unwrap();
    let ours_path = dir.path().join("ours.dcm");
    std::fs::write(&ours_path, &derived.bytes).unwrap();

    let original = attributes(&dir.path().join("full.dcm"));
    // pydicom reads every element of Meridian's derivative.
    let ours = attributes(&ours_path);
    let oracle = attributes(&dir.path().join("oracle.dcm"));
    // What Meridian writes to say what it did.
    let described = ["00120062", "00120063", "00120064", "00280303"];

    let (mut compared, mut counts, mut differ) = (0, BTreeMap::new(), Vec::new());
    for (tag, before) in &original {
        if tag.starts_with("0002") || described.contains(&tag.as_str()) {
            continue;
        }
        let (mine, theirs) = (outcome(before, ours.get(tag)), outcome(before, oracle.get(tag)));
        compared += 1;
        *counts.entry(format!("{mine:?}")).or_insert(0) += 1;
        // dicom-anonymizer does not remove a DA it removes: it writes
        // 00010101 (its `delete_element`). Removing is what X says.
        let oracle_quirk = before.0 == "DA"
            && mine == Outcome::Removed
            && theirs == Outcome::Blanked
            && rule(tag_of(tag)).is_some_and(|r| r.basic == Action::X);
        if mine != theirs && !oracle_quirk {
            differ.push(format!("{tag} {}: Meridian {mine:?}, oracle {theirs:?}", before.0));
        }
    }
    assert!(compared > 600, "only {compared} attributes compared");
    assert!(differ.is_empty(), "{} of {compared} differ:\n{}", differ.len(), differ.join("\n"));
    // Every kind of outcome was exercised.
    for kind in ["Removed", "Kept", "Blanked", "NewUid", "Sequence"] {
        assert!(counts.get(kind).copied().unwrap_or(0) > 0, "no {kind}: {counts:?}");
    }
    // The private block and the repeating groups are gone; identity flagged.
    for tag in ["00290010", "00291001", "60003000", "60024000", "50000005"] {
        assert!(original.contains_key(tag) && !ours.contains_key(tag), "{tag}");
    }
    assert_eq!(ours["00120062"].1, "YES");
}

#[test]
fn the_table_is_table_e1_1() {
    let dir = tempfile::tempdir().unwrap();
    python(&["make", dir.path().to_str().unwrap()]);
    let table: BTreeMap<String, String> =
        serde_json::from_slice(&std::fs::read(dir.path().join("table.json")).unwrap()).unwrap();
    // Actions the standard changed between Innolitics' edition and 2026c.
    let edition_changes = BTreeMap::from([
        ("00100020", ("Z", Action::ZD)), // Patient ID
        ("30080105", ("X", Action::XZ)), // Source Serial Number
        ("300A00B2", ("X", Action::XZ)), // Treatment Machine Name
        ("30100077", ("D", Action::XD)), // Treatment Site
    ]);
    let action = |cell: &str| match cell {
        "D" => Action::D,
        "Z" => Action::Z,
        "X" => Action::X,
        "U" => Action::U,
        "Z/D" => Action::ZD,
        "X/Z" => Action::XZ,
        "X/D" => Action::XD,
        "X/Z/D" => Action::XZD,
        "X/Z/U*" => Action::XZUStar,
        other => panic!("cell {other:?}"),
    };
    assert!(table.len() > 400);
    let mut differ = Vec::new();
    for (tag, cell) in &table {
        let ours = rule(tag_of(tag)).map(|r| r.basic);
        let expected = match edition_changes.get(tag.as_str()) {
            Some((old, new)) if old == cell => *new,
            _ => action(cell),
        };
        if ours != Some(expected) {
            differ.push(format!("{tag}: Table E.1-1 {cell}, Meridian {ours:?}"));
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
