//! QIDO-RS query parameters and attribute matching (PS3.18 8.3.4 and
//! PS3.4 C.2.2.2): single value, wildcard (`*`, `?`), UID list and range
//! matching over DICOM JSON attributes. Pure: no I/O.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_dictionary_std::StandardDataDictionary;
use serde_json::Value;

use crate::index::{Attributes, INSTANCE_TAGS, SERIES_TAGS, STUDY_TAGS, Seek};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Study,
    Series,
    Instance,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Study => "study",
            Level::Series => "series",
            Level::Instance => "instance",
        }
    }

    /// The attributes a query at this level may match on: its own and
    /// those of the levels above it.
    fn matchable(self) -> Vec<&'static str> {
        let mut tags: Vec<&str> = STUDY_TAGS.to_vec();
        tags.push(MODALITIES_IN_STUDY);
        if self != Level::Study {
            tags.extend(SERIES_TAGS);
        }
        if self == Level::Instance {
            tags.extend(INSTANCE_TAGS);
        }
        tags
    }
}

/// Computed at the study level from its series.
pub use crate::index::MODALITIES_IN_STUDY;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// (tag, value) pairs; every one must match.
    pub filters: Vec<(String, String)>,
    pub fuzzy: bool,
    pub include_all: bool,
    pub include: Vec<String>,
    pub limit: Option<usize>,
    pub offset: usize,
    /// Parameters this search does not support and ignored, as given
    /// (PS3.18 8.3.4: answered as if absent, and named in a Warning).
    pub ignored: Vec<String>,
}

/// A tag as 8 upper-case hex digits, from a keyword (`PatientID`) or a tag
/// (`00100020`).
pub fn tag_of(name: &str) -> Option<String> {
    if name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(name.to_ascii_uppercase());
    }
    StandardDataDictionary.by_name(name).map(|e| e.tag()).map(|t| format!("{:04X}{:04X}", t.group(), t.element()))
}

/// Reads the query string's pairs at `level`. A parameter it does not
/// support (an unknown name, a keyword in the wrong case, an attribute this
/// level cannot match on) is ignored and listed in `ignored` (PS3.18 8.3.4);
/// an invalid value of a supported one (`limit`, `offset`, an unknown
/// `includefield`) is an error that names it.
pub fn parse(pairs: &[(String, String)], level: Level) -> Result<Query, String> {
    let mut q = Query::default();
    let matchable = level.matchable();
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                q.limit = Some(value.parse().map_err(|_| format!("limit={value:?} is not a non-negative integer"))?)
            }
            "offset" => {
                q.offset = value.parse().map_err(|_| format!("offset={value:?} is not a non-negative integer"))?
            }
            "fuzzymatching" => q.fuzzy = value == "true",
            "includefield" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    if field == "all" {
                        q.include_all = true;
                    } else {
                        let tag = tag_of(field)
                            .ok_or_else(|| format!("includefield {field:?} is not a DICOM keyword or tag"))?;
                        q.include.push(tag);
                    }
                }
            }
            other => match tag_of(other) {
                Some(tag) if matchable.contains(&tag.as_str()) => q.filters.push((tag, value.clone())),
                _ => q.ignored.push(other.to_owned()),
            },
        }
    }
    Ok(q)
}

impl Query {
    /// The Warning header values this search's answer carries (PS3.18
    /// 8.3.4.2 and 8.3.4.3), for the service at `base`.
    pub fn warnings(&self, base: &str) -> Vec<String> {
        let mut out = Vec::new();
        if !self.ignored.is_empty() {
            let names = self.ignored.join(", ");
            out.push(format!(
                "299 {base} \"The following query parameters are not supported and were ignored: {names}\""
            ));
        }
        if self.fuzzy {
            out.push(format!(
                "299 {base} \"The fuzzymatching parameter is not supported. Only literal matching has been performed.\""
            ));
        }
        out
    }

    /// Where a study-level search can start: the studies one filter names
    /// through the index's keys (UIDs, Patient ID, Accession Number, Study
    /// Date), or all. The filters are still matched on every candidate.
    pub fn seek(&self) -> Seek {
        let filter = |tag: &str| self.filters.iter().find(|(t, v)| t == tag && !v.is_empty()).map(|(_, v)| v.as_str());
        if let Some(uids) = filter("0020000D") {
            return Seek::Uids(uids.split(['\\', ',']).map(str::to_owned).collect());
        }
        let exact = |v: &str| !v.contains(['*', '?', '\\']);
        for tag in ["00100020", "00080050"] {
            if let Some(value) = filter(tag).filter(|v| exact(v)) {
                return Seek::Value { tag: tag.into(), value: value.into() };
            }
        }
        match filter("00080020") {
            Some(date) if date.contains('-') => {
                let (from, to) = date.split_once('-').unwrap_or((date, ""));
                return Seek::Range { tag: "00080020".into(), from: from.into(), to: to.into() };
            }
            Some(date) if exact(date) => return Seek::Value { tag: "00080020".into(), value: date.into() },
            _ => {}
        }
        // One modality (a list or a wildcard is matched on every study).
        match filter(MODALITIES_IN_STUDY) {
            Some(modality) if exact(modality) && !modality.contains(',') => {
                Seek::Value { tag: MODALITIES_IN_STUDY.into(), value: modality.into() }
            }
            _ => Seek::All,
        }
    }

    /// Whether every filter matches, looking each tag up in `levels` in turn.
    pub fn matches(&self, levels: &[&Attributes]) -> bool {
        self.filters.iter().all(|(tag, wanted)| {
            let attr = levels.iter().find_map(|a| a.get(tag));
            matches(attr, wanted)
        })
    }
}

/// Whether one attribute matches one query value.
pub fn matches(attr: Option<&Value>, wanted: &str) -> bool {
    if wanted.is_empty() {
        return true; // universal matching
    }
    let Some(attr) = attr else { return false };
    let vr = attr.get("vr").and_then(Value::as_str).unwrap_or("");
    let Some(values) = attr.get("Value").and_then(Value::as_array) else { return false };
    let strings = values.iter().map(|v| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        // A person name matches on its alphabetic group.
        Value::Object(o) => o.get("Alphabetic").and_then(Value::as_str).unwrap_or("").to_owned(),
        _ => String::new(),
    });
    let strings: Vec<String> = strings.collect();
    match vr {
        "UI" => {
            let list: Vec<&str> = wanted.split(['\\', ',']).collect();
            strings.iter().any(|s| list.contains(&s.as_str()))
        }
        "DA" | "TM" | "DT" if wanted.contains('-') => {
            let (lo, hi) = wanted.split_once('-').unwrap_or((wanted, ""));
            strings.iter().any(|s| in_range(s, lo, hi))
        }
        "PN" => strings.iter().any(|s| wildcard(&s.to_lowercase(), &wanted.to_lowercase())),
        _ if wanted.contains(['*', '?']) => strings.iter().any(|s| wildcard(s, wanted)),
        _ => strings.iter().any(|s| s == wanted),
    }
}

fn in_range(value: &str, lo: &str, hi: &str) -> bool {
    let v = value.replace([':', '.'], "");
    let (lo, hi) = (lo.replace(':', ""), hi.replace(':', ""));
    // A bound compares on as many digits as it gives.
    let prefix = |bound: &str| v.chars().take(bound.len()).collect::<String>();
    (lo.is_empty() || prefix(&lo) >= lo) && (hi.is_empty() || prefix(&hi) <= hi)
}

/// `*` matches any run of characters, `?` any one.
pub fn wildcard(value: &str, pattern: &str) -> bool {
    let (v, p): (Vec<char>, Vec<char>) = (value.chars().collect(), pattern.chars().collect());
    let (mut vi, mut pi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            vi += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn keywords_and_tags_resolve_and_unknown_parameters_are_named() {
        let q = parse(&pairs(&[("PatientID", "X1"), ("0020000D", "1.2"), ("limit", "5")]), Level::Study).unwrap();
        assert_eq!(q.filters, [("00100020".to_string(), "X1".to_string()), ("0020000D".into(), "1.2".into())]);
        assert_eq!(q.limit, Some(5));
        // Unsupported parameters are ignored and named (PS3.18 8.3.4):
        // an unknown name, a keyword in the wrong case, another level's attribute.
        let q = parse(&pairs(&[("PatientNmae", "x"), ("patientid", "y"), ("Modality", "CT")]), Level::Study).unwrap();
        assert!(q.filters.is_empty());
        assert_eq!(q.ignored, ["PatientNmae", "patientid", "Modality"]);
        let warnings = q.warnings("http://h/dicomweb");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("299 http://h/dicomweb \"")
                && warnings[0].contains("PatientNmae, patientid, Modality")
        );
        assert!(parse(&pairs(&[("Modality", "CT")]), Level::Series).unwrap().ignored.is_empty());
        let fuzzy = parse(&pairs(&[("fuzzymatching", "true")]), Level::Study).unwrap();
        assert!(fuzzy.warnings("b")[0].contains("The fuzzymatching parameter is not supported. Only literal matching"));
        assert!(parse(&pairs(&[("fuzzymatching", "false")]), Level::Study).unwrap().warnings("b").is_empty());
        // Invalid values of supported parameters stay errors.
        let e = parse(&pairs(&[("limit", "-1")]), Level::Study).unwrap_err();
        assert!(e.contains("limit=\"-1\""), "{e}");
        let e = parse(&pairs(&[("includefield", "NoSuchKeyword")]), Level::Study).unwrap_err();
        assert!(e.contains("NoSuchKeyword"), "{e}");
    }

    #[test]
    fn matching_follows_the_value_representation() {
        let uid = json!({"vr": "UI", "Value": ["1.2.3"]});
        assert!(matches(Some(&uid), "1.2.3"));
        assert!(matches(Some(&uid), "9.9,1.2.3"));
        assert!(!matches(Some(&uid), "1.2.*"), "UIDs do not take wildcards");
        let date = json!({"vr": "DA", "Value": ["20240315"]});
        assert!(matches(Some(&date), "20240101-20241231"));
        assert!(matches(Some(&date), "-20240315"));
        assert!(!matches(Some(&date), "20240316-"));
        assert!(matches(Some(&date), "20240315"));
        let name = json!({"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]});
        assert!(matches(Some(&name), "doe*"));
        assert!(matches(Some(&name), "D?E^JANE"));
        assert!(!matches(Some(&name), "Smith*"));
        let modalities = json!({"vr": "CS", "Value": ["CT", "SR"]});
        assert!(matches(Some(&modalities), "SR"));
        assert!(!matches(Some(&modalities), "MR"));
        let number = json!({"vr": "IS", "Value": [12]});
        assert!(matches(Some(&number), "12"));
        assert!(!matches(None, "x"));
        assert!(matches(None, ""), "an empty value matches everything");
    }

    #[test]
    fn a_search_seeks_through_the_index_keys_its_filters_name() {
        let seek = |q: &[(&str, &str)]| parse(&pairs(q), Level::Study).unwrap().seek();
        assert_eq!(seek(&[("limit", "5")]), Seek::All);
        assert_eq!(
            seek(&[("StudyInstanceUID", "1.2\\1.3"), ("PatientID", "P7")]),
            Seek::Uids(vec!["1.2".into(), "1.3".into()])
        );
        assert_eq!(seek(&[("PatientID", "P7")]), Seek::Value { tag: "00100020".into(), value: "P7".into() });
        assert_eq!(
            seek(&[("PatientID", "P*"), ("AccessionNumber", "A1")]),
            Seek::Value { tag: "00080050".into(), value: "A1".into() }
        );
        assert_eq!(
            seek(&[("StudyDate", "20260101-")]),
            Seek::Range { tag: "00080020".into(), from: "20260101".into(), to: String::new() }
        );
        assert_eq!(seek(&[("PatientName", "DOE*"), ("PatientID", "")]), Seek::All);
        assert_eq!(seek(&[("ModalitiesInStudy", "MR")]), Seek::Value { tag: "00080061".into(), value: "MR".into() });
        assert_eq!(seek(&[("ModalitiesInStudy", "CT\\MR")]), Seek::All, "a list is matched on every study");
        assert_eq!(
            seek(&[("ModalitiesInStudy", "MR"), ("StudyDate", "20260101")]),
            Seek::Value { tag: "00080020".into(), value: "20260101".into() },
            "the date narrows first"
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard("CHEST CT", "*CT"));
        assert!(wildcard("CHEST CT", "C*S*"));
        assert!(!wildcard("CHEST", "C?T"));
        assert!(wildcard("", "*"));
    }
}
