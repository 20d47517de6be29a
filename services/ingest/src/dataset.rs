//! What ingest reads of a received data set, what it refuses, and the
//! Part-10 file it stores.
//!
//! Each refusal carries the DIMSE status of PS3.4 B.2.3 the peer gets and
//! a reason without PHI (it goes into InstanceRejected): 0xA900 for a
//! missing or malformed identifying attribute or one that contradicts the
//! command, 0xC000 for a data set that does not parse, 0x0122 for a SOP
//! class that is not a storage class.

use dicom_core::Tag;
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use dicom_transfer_syntax_registry::TransferSyntaxIndex;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;
use meridian_dimse::Instance;
use meridian_dimse::command::{STATUS_CANNOT_UNDERSTAND, STATUS_DATA_SET_MISMATCH, STATUS_SOP_CLASS_NOT_SUPPORTED};

pub use meridian_storage::{IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME};

/// What ingest needs of an instance. PHI: it stays in the home region.
#[derive(Clone, Debug, PartialEq)]
pub struct Facts {
    pub study_uid: String,
    pub series_uid: String,
    pub sop_uid: String,
    pub sop_class: String,
    pub transfer_syntax: String,
    pub patient_id: String,
    pub issuer_of_patient_id: String,
    pub accession_number: String,
    pub modality: String,
    pub body_part: String,
    pub procedure_code: String,
    /// "stat", "urgent", "routine" or empty.
    pub requested_priority: String,
    /// The patient and the study as the report names them.
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub study_description: String,
    pub study_date: String,
    pub study_time: String,
    /// Every attribute but the pixel data, as DICOM JSON, for the study index.
    pub metadata: meridian_storage::index::Attributes,
}

/// Why an instance is refused: the status for the peer, a code and a
/// reason for InstanceRejected (no PHI in either).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub code: &'static str,
    pub reason: String,
}

fn reject(status: u16, code: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection { status, code, reason: reason.into() }
}

fn text(obj: &InMemDicomObject, tag: Tag) -> String {
    obj.element(tag)
        .ok()
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim_start().to_owned())
        .unwrap_or_default()
}

/// A UID as PS3.5 9.1 has it: 1 to 64 characters of digits and dots, no
/// empty component, no leading zero in a component.
pub fn valid_uid(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 64
        && uid
            .split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()) && (c == "0" || !c.starts_with('0')))
}

/// Reads and checks a received instance.
pub fn read(instance: &Instance) -> Result<Facts, Rejection> {
    let file = part10(instance, "").map_err(|e| reject(STATUS_CANNOT_UNDERSTAND, "unreadable_data_set", e))?;
    read_part10(instance, &file)
}

/// Reads and checks a received instance from its Part-10 file (see
/// [`part10`]). Only the attributes before Pixel Data are parsed: the
/// pixels are stored as received and never looked at here.
pub fn read_part10(instance: &Instance, file: &[u8]) -> Result<Facts, Rejection> {
    if !meridian_dimse::storage_classes::STORAGE_SOP_CLASSES.iter().any(|(uid, _)| *uid == instance.sop_class) {
        return Err(reject(STATUS_SOP_CLASS_NOT_SUPPORTED, "sop_class_not_supported", "not a storage SOP class"));
    }
    let ts = TransferSyntaxRegistry.get(&instance.transfer_syntax).ok_or_else(|| {
        reject(
            STATUS_CANNOT_UNDERSTAND,
            "unknown_transfer_syntax",
            format!("transfer syntax {} is unknown", instance.transfer_syntax),
        )
    })?;
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .from_reader(file.get(128..).unwrap_or_default())
        .map_err(|e| {
            reject(
                STATUS_CANNOT_UNDERSTAND,
                "unreadable_data_set",
                format!("the data set does not parse as {}: {e}", ts.name()),
            )
        })?;
    let uid = |tag: Tag, name: &str, code_missing: &'static str| -> Result<String, Rejection> {
        let value = text(&obj, tag);
        if value.is_empty() {
            return Err(reject(STATUS_DATA_SET_MISMATCH, code_missing, format!("{name} {tag} is missing")));
        }
        if !valid_uid(&value) {
            return Err(reject(STATUS_DATA_SET_MISMATCH, "malformed_uid", format!("{name} {tag} is not a valid UID")));
        }
        Ok(value)
    };
    let study_uid = uid(tags::STUDY_INSTANCE_UID, "Study Instance UID", "missing_study_instance_uid")?;
    let series_uid = uid(tags::SERIES_INSTANCE_UID, "Series Instance UID", "missing_series_instance_uid")?;
    let sop_uid = uid(tags::SOP_INSTANCE_UID, "SOP Instance UID", "missing_sop_instance_uid")?;
    let sop_class = uid(tags::SOP_CLASS_UID, "SOP Class UID", "missing_sop_class_uid")?;
    if sop_class != instance.sop_class {
        return Err(reject(
            STATUS_DATA_SET_MISMATCH,
            "sop_class_mismatch",
            "the data set's SOP Class UID differs from the command's Affected SOP Class UID",
        ));
    }
    if sop_uid != instance.sop_instance {
        return Err(reject(
            STATUS_DATA_SET_MISMATCH,
            "sop_instance_mismatch",
            "the data set's SOP Instance UID differs from the command's Affected SOP Instance UID",
        ));
    }
    let procedure_code = obj
        .element(tags::PROCEDURE_CODE_SEQUENCE)
        .ok()
        .and_then(|e| e.items().and_then(|items| items.first().map(|item| text(item, tags::CODE_VALUE))))
        .unwrap_or_default();
    let requested_priority = match text(&obj, tags::REQUESTED_PROCEDURE_PRIORITY).to_ascii_uppercase().as_str() {
        "STAT" => "stat",
        "HIGH" => "urgent",
        "ROUTINE" | "MEDIUM" | "LOW" => "routine",
        _ => "",
    }
    .to_owned();
    Ok(Facts {
        study_uid,
        series_uid,
        sop_uid,
        sop_class,
        transfer_syntax: instance.transfer_syntax.clone(),
        patient_id: text(&obj, tags::PATIENT_ID),
        issuer_of_patient_id: text(&obj, tags::ISSUER_OF_PATIENT_ID),
        accession_number: text(&obj, tags::ACCESSION_NUMBER),
        modality: text(&obj, tags::MODALITY),
        body_part: text(&obj, tags::BODY_PART_EXAMINED),
        procedure_code,
        requested_priority,
        patient_name: text(&obj, tags::PATIENT_NAME),
        patient_birth_date: text(&obj, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(&obj, tags::PATIENT_SEX),
        study_description: text(&obj, tags::STUDY_DESCRIPTION),
        study_date: text(&obj, tags::STUDY_DATE),
        study_time: text(&obj, tags::STUDY_TIME),
        metadata: meridian_storage::index::metadata(&obj, &instance.transfer_syntax),
    })
}

/// The Part-10 file of a received instance: preamble, "DICM", the File
/// Meta Information built from the association, then the data set exactly
/// as received (stored in its transfer syntax, never re-encoded).
pub fn part10(instance: &Instance, calling_ae_title: &str) -> Result<Vec<u8>, String> {
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(instance.sop_class.as_str())
        .media_storage_sop_instance_uid(instance.sop_instance.as_str())
        .transfer_syntax(instance.transfer_syntax.as_str())
        .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
        .implementation_version_name(IMPLEMENTATION_VERSION_NAME)
        .source_application_entity_title(calling_ae_title)
        .build()
        .map_err(|e| format!("building the file meta information: {e}"))?;
    let mut out = Vec::with_capacity(instance.data_set.len() + 512);
    out.extend_from_slice(&[0u8; 128]);
    out.extend_from_slice(b"DICM");
    meta.write(&mut out).map_err(|e| format!("writing the file meta information: {e}"))?;
    out.extend_from_slice(&instance.data_set);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN;

    use super::*;

    const CT: &str = "1.2.840.10008.5.1.4.1.1.2";

    /// A CT data set with `drop` left out and `set` overriding values.
    fn data_set(drop: &[Tag], set: &[(Tag, &str)]) -> Vec<u8> {
        let mut values = vec![
            (tags::SOP_CLASS_UID, VR::UI, CT),
            (tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5"),
            (tags::MODALITY, VR::CS, "CT"),
            (tags::PATIENT_ID, VR::LO, "MRN-1"),
            (tags::BODY_PART_EXAMINED, VR::CS, "CHEST"),
            (tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3"),
            (tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4"),
            (tags::REQUESTED_PROCEDURE_PRIORITY, VR::SH, "HIGH"),
        ];
        for (tag, value) in set {
            if let Some(v) = values.iter_mut().find(|(t, _, _)| t == tag) {
                v.2 = value;
            }
        }
        let obj = InMemDicomObject::from_element_iter(
            values
                .into_iter()
                .filter(|(t, _, _)| !drop.contains(t))
                .map(|(t, vr, v)| DataElement::new(t, vr, PrimitiveValue::from(v))),
        );
        let mut out = Vec::new();
        obj.write_dataset_with_ts(&mut out, &EXPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        out
    }

    fn instance(data_set: Vec<u8>) -> Instance {
        Instance {
            sop_class: CT.into(),
            sop_instance: "1.2.3.4.5".into(),
            transfer_syntax: EXPLICIT_VR_LITTLE_ENDIAN.uid().into(),
            data_set,
        }
    }

    #[test]
    fn a_good_instance_gives_its_facts() {
        let facts = read(&instance(data_set(&[], &[]))).unwrap();
        assert_eq!((facts.study_uid.as_str(), facts.sop_uid.as_str()), ("1.2.3", "1.2.3.4.5"));
        assert_eq!((facts.modality.as_str(), facts.body_part.as_str()), ("CT", "CHEST"));
        assert_eq!(facts.requested_priority, "urgent", "HIGH is urgent");
        // Patient ID is Type 2: an instance without it is still stored.
        assert_eq!(read(&instance(data_set(&[tags::PATIENT_ID], &[]))).unwrap().patient_id, "");
    }

    #[test]
    fn each_refusal_has_its_status_and_a_reason_without_phi() {
        let cases: Vec<(Instance, u16, &str)> = vec![
            (instance(data_set(&[tags::STUDY_INSTANCE_UID], &[])), 0xA900, "missing_study_instance_uid"),
            (instance(data_set(&[tags::SERIES_INSTANCE_UID], &[])), 0xA900, "missing_series_instance_uid"),
            (instance(data_set(&[tags::SOP_INSTANCE_UID], &[])), 0xA900, "missing_sop_instance_uid"),
            (instance(data_set(&[tags::SOP_CLASS_UID], &[])), 0xA900, "missing_sop_class_uid"),
            (instance(data_set(&[], &[(tags::STUDY_INSTANCE_UID, "1.2.03")])), 0xA900, "malformed_uid"),
            (instance(data_set(&[], &[(tags::SOP_INSTANCE_UID, "1.2.3.4.6")])), 0xA900, "sop_instance_mismatch"),
            (
                instance(data_set(&[], &[(tags::SOP_CLASS_UID, "1.2.840.10008.5.1.4.1.1.4")])),
                0xA900,
                "sop_class_mismatch",
            ),
            (instance(b"\x08\x00\x16\x00UI\xff\xff garbage".to_vec()), 0xC000, "unreadable_data_set"),
            (
                Instance { sop_class: "1.2.840.10008.1.1".into(), ..instance(data_set(&[], &[])) },
                0x0122,
                "sop_class_not_supported",
            ),
            (
                Instance { transfer_syntax: "1.2.3.999".into(), ..instance(data_set(&[], &[])) },
                0xC000,
                "unknown_transfer_syntax",
            ),
        ];
        for (i, status, code) in cases {
            let r = read(&i).unwrap_err();
            assert_eq!((r.status, r.code), (status, code), "{}", r.reason);
            assert!(!r.reason.contains("MRN-1"), "{}", r.reason);
        }
    }

    #[test]
    fn the_part10_file_is_preamble_magic_meta_then_the_data_set_as_received() {
        let i = instance(data_set(&[], &[]));
        let bytes = part10(&i, "ACME_CT1").unwrap();
        assert_eq!(&bytes[128..132], b"DICM");
        assert!(bytes.ends_with(&i.data_set), "stored as received");
        let file = dicom_object::from_reader(&bytes[128..]).unwrap();
        assert_eq!(file.meta().media_storage_sop_instance_uid(), "1.2.3.4.5");
        assert_eq!(file.meta().source_application_entity_title(), Some("ACME_CT1"));
        assert!(valid_uid("1.2.840.10008.5.1.4.1.1.2") && !valid_uid("1..2") && !valid_uid("1.02") && !valid_uid(""));
    }
}
