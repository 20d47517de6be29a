//! De-identified derivatives: DICOM PS3.15 Annex E, the Basic Application
//! Level Confidentiality Profile, with the retain options a contract names.
//!
//! - Every attribute of Table E.1-1 ([`profile`], generated into
//!   `table.rs` by `table.py`) gets its action, in nested sequences too.
//! - Private attributes are removed.
//! - UIDs are replaced by `2.25.<decimal>` of a keyed hash (HMAC-SHA-256
//!   under a secret of the contract, derived from the tenant's id secret,
//!   so it never leaves the home region). The same UID always maps to the
//!   same replacement, so a study's references stay whole and its
//!   instances keep their series.
//! - The Patient ID becomes a keyed pseudonym, so one patient's studies
//!   stay together for the reader without naming them. Under Retain
//!   Longitudinal Temporal Information with Modified Dates every date of
//!   a patient moves back by the same keyed number of days.
//! - Patient Identity Removed, De-identification Method (and its code
//!   sequence) and Longitudinal Temporal Information Modified say what was
//!   done.
//! - An instance whose Burned In Annotation is not "NO" is withheld: its
//!   pixels may show identity, and cleaning pixels is not built.
//!
//! Pure: bytes in, bytes out, no I/O and no clock.

pub mod profile;
mod table;

use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::mem::InMemElement;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use meridian_events::TenantSecret;

use crate::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

pub use profile::ProfileOption;
use profile::{Treatment, treatment};

/// Why an instance has no derivative. No PHI in any message.
#[derive(Debug, thiserror::Error)]
pub enum DeidError {
    #[error("withheld: Burned In Annotation is {0}; its pixels may show identity and are not released")]
    BurnedInAnnotation(String),
    #[error("the stored instance does not read as DICOM: {0}")]
    Unreadable(String),
    #[error("the stored instance has no {0}")]
    Missing(&'static str),
    #[error("writing the derivative: {0}")]
    Write(String),
}

/// One de-identified instance: its Part-10 bytes and its new UIDs.
#[derive(Clone, Debug)]
pub struct Derived {
    pub bytes: Vec<u8>,
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
}

/// A contract's de-identification: its key and options.
pub struct Profile {
    key: TenantSecret,
    options: Vec<ProfileOption>,
}

/// The dummy date of D for DA and DT values, in DICOM's own epoch spirit.
const DUMMY_DATE: &str = "19000101";

impl Profile {
    /// The profile of `contract`, keyed by a secret derived from its
    /// tenant's id secret.
    pub fn new(tenant_secret: &TenantSecret, contract: &str, options: &[ProfileOption]) -> Profile {
        Profile { key: tenant_secret.deidentification_key(contract), options: options.to_vec() }
    }

    pub fn options(&self) -> &[ProfileOption] {
        &self.options
    }

    /// The replacement of `uid`: `2.25.` and the decimal of a UUIDv8 made
    /// of the first 128 bits of HMAC(contract key, UID).
    pub fn uid(&self, uid: &str) -> String {
        self.key.deidentified_uid(uid)
    }

    /// De-identifies one Part-10 file (with its preamble).
    pub fn deidentify(&self, part10: &[u8]) -> Result<Derived, DeidError> {
        let file = OpenFileOptions::new()
            .from_reader(part10.get(128..).unwrap_or_default())
            .map_err(|e| DeidError::Unreadable(e.to_string()))?;
        let burned_in = text(&file, tags::BURNED_IN_ANNOTATION);
        if !burned_in.eq_ignore_ascii_case("NO") {
            let shown = if burned_in.is_empty() { "absent".to_owned() } else { format!("{burned_in:?}") };
            return Err(DeidError::BurnedInAnnotation(shown));
        }
        let patient = Patient { pseudonym: self.pseudonym(&file), shift_days: self.shift_days(&file) };
        let meta = file.meta().clone();
        let mut out = self.dataset(file.into_inner(), &patient);
        self.describe(&mut out);
        let uid = |tag, what| {
            let value = text(&out, tag);
            if value.is_empty() { Err(DeidError::Missing(what)) } else { Ok(value) }
        };
        let derived_uids = (
            uid(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            uid(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
            uid(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
        );
        let new_meta = FileMetaTableBuilder::new()
            .media_storage_sop_class_uid(meta.media_storage_sop_class_uid())
            .media_storage_sop_instance_uid(derived_uids.2.as_str())
            .transfer_syntax(meta.transfer_syntax())
            .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
            .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
            .build()
            .map_err(|e| DeidError::Write(e.to_string()))?;
        let mut bytes = Vec::with_capacity(part10.len());
        out.with_exact_meta(new_meta).write_all(&mut bytes).map_err(|e| DeidError::Write(e.to_string()))?;
        let (study_uid, series_uid, sop_uid) = derived_uids;
        Ok(Derived { bytes, study_uid, series_uid, sop_uid })
    }

    fn dataset(&self, obj: InMemDicomObject, patient: &Patient) -> InMemDicomObject {
        InMemDicomObject::from_element_iter(obj.into_iter().filter_map(|e| self.element(e, patient)))
    }

    fn element(&self, elem: InMemElement, patient: &Patient) -> Option<InMemElement> {
        let tag = elem.tag();
        // Private attributes (odd groups, their creators included).
        if tag.group() % 2 == 1 {
            return None;
        }
        let vr = elem.vr();
        let treatment = match treatment(tag, &self.options) {
            // A dummy UID must still be a UID, one per original.
            Treatment::Dummy if vr == VR::UI => Treatment::ReplaceUid,
            Treatment::KeepReferences if vr == VR::UI => Treatment::ReplaceUid,
            Treatment::KeepReferences if vr != VR::SQ => Treatment::Empty,
            Treatment::KeepReferences => Treatment::Keep,
            Treatment::ShiftDates if !matches!(vr, VR::DA | VR::DT | VR::TM) => Treatment::Dummy,
            t => t,
        };
        Some(match treatment {
            Treatment::Remove => return None,
            Treatment::Keep | Treatment::KeepReferences => match elem.into_value() {
                Value::Sequence(seq) => sequence(tag, seq.into_items().into_iter().map(|i| self.dataset(i, patient))),
                other => DataElement::new(tag, vr, other),
            },
            Treatment::Empty if vr == VR::SQ => sequence(tag, std::iter::empty()),
            Treatment::Empty => DataElement::new(tag, vr, PrimitiveValue::Empty),
            Treatment::ReplaceUid => {
                let uids: Vec<String> = strings(&elem).iter().map(|u| self.uid(u)).collect();
                DataElement::new(tag, vr, PrimitiveValue::Strs(uids.into()))
            }
            Treatment::ShiftDates => {
                let shifted: Option<Vec<String>> =
                    strings(&elem).iter().map(|v| shift(v, vr, patient.shift_days)).collect();
                match shifted {
                    Some(values) => DataElement::new(tag, vr, PrimitiveValue::Strs(values.into())),
                    // A value that does not read as a date cannot be
                    // shifted, so it is not kept.
                    None => DataElement::new(tag, vr, PrimitiveValue::Empty),
                }
            }
            Treatment::Dummy if tag == tags::PATIENT_ID => {
                DataElement::new(tag, vr, PrimitiveValue::from(patient.pseudonym.as_str()))
            }
            Treatment::Dummy => self.dummy(elem),
        })
    }

    /// D: a value of the VR that tells nothing; in a sequence, every value.
    fn dummy(&self, elem: InMemElement) -> InMemElement {
        let (tag, vr) = (elem.tag(), elem.vr());
        let value = match vr {
            VR::SQ => {
                let items = match elem.into_value() {
                    Value::Sequence(seq) => seq.into_items().into_vec(),
                    _ => Vec::new(),
                };
                let dummied = items.into_iter().map(|item| {
                    InMemDicomObject::from_element_iter(
                        item.into_iter().filter(|e| e.tag().group() % 2 == 0).map(|e| self.dummy(e)),
                    )
                });
                return sequence(tag, dummied);
            }
            VR::UI => PrimitiveValue::Strs(strings(&elem).iter().map(|u| self.uid(u)).collect()),
            VR::DA => PrimitiveValue::from(DUMMY_DATE),
            VR::DT => PrimitiveValue::from("19000101000000"),
            VR::TM => PrimitiveValue::from("000000"),
            VR::AS => PrimitiveValue::from("000Y"),
            VR::DS | VR::IS => PrimitiveValue::from("0"),
            VR::UR => PrimitiveValue::from("http://anonymized.invalid"),
            VR::AE | VR::CS | VR::LO | VR::LT | VR::PN | VR::SH | VR::ST | VR::UC | VR::UT => {
                PrimitiveValue::from("ANONYMIZED")
            }
            VR::US | VR::OW => PrimitiveValue::from(0_u16),
            VR::SS => PrimitiveValue::from(0_i16),
            VR::UL | VR::OL => PrimitiveValue::from(0_u32),
            VR::SL => PrimitiveValue::from(0_i32),
            VR::UV | VR::OV => PrimitiveValue::from(0_u64),
            VR::SV => PrimitiveValue::from(0_i64),
            VR::FL | VR::OF => PrimitiveValue::from(0.0_f32),
            VR::FD | VR::OD => PrimitiveValue::from(0.0_f64),
            VR::AT => PrimitiveValue::from(Tag(0, 0)),
            VR::OB | VR::UN => PrimitiveValue::U8(b"ANONYMIZED".to_vec().into()),
        };
        DataElement::new(tag, vr, value)
    }

    /// Patient Identity Removed, De-identification Method (and its codes)
    /// and whether dates were kept, moved or removed.
    fn describe(&self, obj: &mut InMemDicomObject) {
        let mut codes = vec![("113100", "Basic Application Confidentiality Profile")];
        let mut method = vec!["PS3.15 E.1 Basic Profile (Meridian)".to_owned()];
        for option in &self.options {
            if let Some(code) = option_code(*option) {
                codes.push(code);
                method.push(option.as_str().to_owned());
            }
        }
        obj.put(DataElement::new(tags::PATIENT_IDENTITY_REMOVED, VR::CS, PrimitiveValue::from("YES")));
        obj.put(DataElement::new(tags::DEIDENTIFICATION_METHOD, VR::LO, PrimitiveValue::Strs(method.into())));
        let items = codes.into_iter().map(|(value, meaning)| {
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(value)),
                DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PrimitiveValue::from("DCM")),
                DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(meaning)),
            ])
        });
        obj.put(sequence(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE, items));
        let dates = if self.options.contains(&ProfileOption::RetainLongitudinalFullDates) {
            "UNMODIFIED"
        } else if self.options.contains(&ProfileOption::RetainLongitudinalModifiedDates) {
            "MODIFIED"
        } else {
            "REMOVED"
        };
        obj.put(DataElement::new(
            tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED,
            VR::CS,
            PrimitiveValue::from(dates),
        ));
    }

    fn patient_mac(&self, file: &InMemDicomObject, domain: &str) -> [u8; 32] {
        let issuer = text(file, tags::ISSUER_OF_PATIENT_ID);
        let id = text(file, tags::PATIENT_ID);
        self.key.mac(domain, &[issuer.as_bytes(), id.as_bytes()])
    }

    /// The Patient ID's replacement: 20 hex digits of a keyed hash of
    /// issuer and id, the same for every study of the patient.
    fn pseudonym(&self, file: &InMemDicomObject) -> String {
        hex::encode_upper(&self.patient_mac(file, "meridian.deid.patient.v1")[..10])
    }

    /// How far back this patient's dates move: one to about ten years,
    /// a keyed hash of the patient, so intervals between studies stay.
    fn shift_days(&self, file: &InMemDicomObject) -> i64 {
        let mac = self.patient_mac(file, "meridian.deid.dates.v1");
        365 + i64::from(u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]) % 3288)
    }
}

struct Patient {
    pseudonym: String,
    shift_days: i64,
}

/// CID 7050's code for an option Meridian applies.
fn option_code(option: ProfileOption) -> Option<(&'static str, &'static str)> {
    Some(match option {
        ProfileOption::RetainLongitudinalFullDates => {
            ("113106", "Retain Longitudinal Temporal Information Full Dates Option")
        }
        ProfileOption::RetainLongitudinalModifiedDates => {
            ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")
        }
        ProfileOption::RetainPatientCharacteristics => ("113108", "Retain Patient Characteristics Option"),
        ProfileOption::RetainDeviceIdentity => ("113109", "Retain Device Identity Option"),
        ProfileOption::RetainUids => ("113110", "Retain UIDs Option"),
        ProfileOption::RetainInstitutionIdentity => ("113112", "Retain Institution Identity Option"),
        ProfileOption::RetainSafePrivate
        | ProfileOption::CleanDescriptors
        | ProfileOption::CleanStructuredContent
        | ProfileOption::CleanGraphics => return None,
    })
}

fn sequence(tag: Tag, items: impl IntoIterator<Item = InMemDicomObject>) -> InMemElement {
    let items: Vec<InMemDicomObject> = items.into_iter().collect();
    DataElement::new(tag, VR::SQ, Value::from(DataSetSequence::new(items, Length::UNDEFINED)))
}

fn strings(elem: &InMemElement) -> Vec<String> {
    elem.value()
        .to_multi_str()
        .map(|v| v.iter().map(|s| s.trim_matches(|c: char| c == '\0' || c == ' ').to_owned()).collect())
        .unwrap_or_default()
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' ').to_owned())
        .unwrap_or_default()
}

/// A DA or DT value moved back `days`; a TM value as it is (whole days
/// move). None when the value does not read as a date.
fn shift(value: &str, vr: VR, days: i64) -> Option<String> {
    if vr == VR::TM || value.is_empty() {
        return Some(value.to_owned());
    }
    let (date, rest) = (value.get(..8)?, value.get(8..).unwrap_or(""));
    if !date.bytes().all(|b| b.is_ascii_digit()) || (vr == VR::DA && !rest.is_empty()) {
        return None;
    }
    let (y, m, d) = (date[..4].parse().ok()?, date[4..6].parse().ok()?, date[6..].parse().ok()?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let (y, m, d) = civil_from_days(days_from_civil(y, m, d) - days);
    Some(format!("{y:04}{m:02}{d:02}{rest}"))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests;
