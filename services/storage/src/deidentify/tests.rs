use dicom_core::value::PrimitiveValue;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
use meridian_events::TenantSecret;

use super::*;

fn secret() -> TenantSecret {
    TenantSecret::new(vec![7; 32]).unwrap()
}

fn put(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

/// A CT slice with identity in the places that matter, as Part-10 bytes.
fn ct(sop: &str, burned_in: Option<&str>, extra: impl FnOnce(&mut InMemDicomObject)) -> Vec<u8> {
    let mut obj = InMemDicomObject::new_empty();
    put(&mut obj, tags::SOP_CLASS_UID, VR::UI, uids::CT_IMAGE_STORAGE);
    put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop);
    put(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.8.498.1");
    put(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.8.498.1.2");
    put(&mut obj, tags::PATIENT_NAME, VR::PN, "Murphy^Aoife");
    put(&mut obj, tags::PATIENT_ID, VR::LO, "MRN-0042");
    put(&mut obj, tags::ISSUER_OF_PATIENT_ID, VR::LO, "DUBLIN-GENERAL");
    put(&mut obj, tags::PATIENT_BIRTH_DATE, VR::DA, "19800229");
    put(&mut obj, tags::PATIENT_SEX, VR::CS, "F");
    put(&mut obj, tags::ACCESSION_NUMBER, VR::SH, "ACC-77");
    put(&mut obj, tags::STUDY_DATE, VR::DA, "20240301");
    put(&mut obj, tags::STUDY_TIME, VR::TM, "101500");
    put(&mut obj, tags::ACQUISITION_DATE_TIME, VR::DT, "20240301101512.5+0100");
    put(&mut obj, tags::INSTITUTION_NAME, VR::LO, "Dublin General");
    put(&mut obj, tags::REFERRING_PHYSICIAN_NAME, VR::PN, "Byrne^Sean");
    put(&mut obj, tags::MODALITY, VR::CS, "CT");
    put(&mut obj, tags::BODY_PART_EXAMINED, VR::CS, "CHEST");
    if let Some(b) = burned_in {
        put(&mut obj, tags::BURNED_IN_ANNOTATION, VR::CS, b);
    }
    // A reference to another instance of the study, in a sequence.
    let reference = InMemDicomObject::from_element_iter([
        DataElement::new(tags::REFERENCED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(uids::CT_IMAGE_STORAGE)),
        DataElement::new(
            tags::REFERENCED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from("1.2.826.0.1.3680043.8.498.9"),
        ),
    ]);
    obj.put(super::sequence(tags::REFERENCED_IMAGE_SEQUENCE, [reference]));
    // Identity hidden in a private block and an overlay comment.
    put(&mut obj, Tag(0x0029, 0x0010), VR::LO, "ACME PRIVATE");
    put(&mut obj, Tag(0x0029, 0x1001), VR::LO, "Murphy^Aoife");
    put(&mut obj, Tag(0x6000, 0x4000), VR::LT, "patient Murphy");
    obj.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(2_u16)));
    obj.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(2_u16)));
    obj.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16_u16)));
    obj.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::from([1_u16, 2, 3, 4])));
    extra(&mut obj);
    let meta = FileMetaTableBuilder::new()
        .media_storage_sop_class_uid(uids::CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(sop)
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .implementation_class_uid(crate::IMPLEMENTATION_CLASS_UID)
        .build()
        .unwrap();
    let mut bytes = Vec::new();
    obj.with_exact_meta(meta).write_all(&mut bytes).unwrap();
    bytes
}

fn read(bytes: &[u8]) -> dicom_object::DefaultDicomObject {
    dicom_object::OpenFileOptions::new().from_reader(&bytes[128..]).unwrap()
}

fn str_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag).map(|e| e.to_str().unwrap().trim_end_matches(['\0', ' ']).to_owned())
}

#[test]
fn replacement_uids_are_keyed_valid_and_stable() {
    let profile = Profile::new(&secret(), "northwind-lotus", &[]);
    let uid = profile.uid("1.2.3.4");
    assert!(uid.starts_with("2.25.") && uid.len() <= 64, "{uid}");
    assert!(uid[5..].bytes().all(|b| b.is_ascii_digit()) && !uid[5..].starts_with('0'));
    // DICOM's padding is not part of the UID.
    assert_eq!(profile.uid("1.2.3.4\0"), uid);
    assert_ne!(profile.uid("1.2.3.5"), uid);
    // Another contract, or another tenant, gets other UIDs.
    assert_ne!(Profile::new(&secret(), "acme-atlantic", &[]).uid("1.2.3.4"), uid);
    let other = TenantSecret::new(vec![8; 32]).unwrap();
    assert_ne!(Profile::new(&other, "northwind-lotus", &[]).uid("1.2.3.4"), uid);
}

#[test]
fn the_basic_profile_removes_identity_and_keeps_the_image() {
    let profile = Profile::new(&secret(), "northwind-lotus", &[]);
    let source = ct("1.2.826.0.1.3680043.8.498.5", Some("NO"), |_| {});
    let derived = profile.deidentify(&source).unwrap();
    let out = read(&derived.bytes);

    assert_eq!(derived.study_uid, profile.uid("1.2.826.0.1.3680043.8.498.1"));
    assert_eq!(derived.series_uid, profile.uid("1.2.826.0.1.3680043.8.498.1.2"));
    assert_eq!(derived.sop_uid, profile.uid("1.2.826.0.1.3680043.8.498.5"));
    assert_eq!(str_of(&out, tags::SOP_INSTANCE_UID).unwrap(), derived.sop_uid);
    assert_eq!(out.meta().media_storage_sop_instance_uid(), derived.sop_uid);
    // Z: present and empty. D: a dummy. X: gone.
    assert_eq!(str_of(&out, tags::PATIENT_NAME).as_deref(), Some(""));
    assert_eq!(str_of(&out, tags::ACCESSION_NUMBER).as_deref(), Some(""));
    assert_eq!(str_of(&out, tags::STUDY_DATE).as_deref(), Some(""));
    assert_eq!(str_of(&out, tags::PATIENT_BIRTH_DATE).as_deref(), Some(""));
    assert_eq!(str_of(&out, tags::INSTITUTION_NAME).as_deref(), Some("ANONYMIZED"));
    assert!(out.get(tags::ISSUER_OF_PATIENT_ID).is_none());
    // The Patient ID is a keyed pseudonym.
    let pseudonym = str_of(&out, tags::PATIENT_ID).unwrap();
    assert_eq!(pseudonym.len(), 20);
    assert!(!pseudonym.contains("0042"));
    // Private attributes and overlay comments are gone.
    assert!(out.get(Tag(0x0029, 0x0010)).is_none() && out.get(Tag(0x0029, 0x1001)).is_none());
    assert!(out.get(Tag(0x6000, 0x4000)).is_none());
    // The reference is kept under the referenced instance's new UID.
    let seq = out.get(tags::REFERENCED_IMAGE_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(str_of(&seq[0], tags::REFERENCED_SOP_INSTANCE_UID).unwrap(), profile.uid("1.2.826.0.1.3680043.8.498.9"));
    assert_eq!(str_of(&seq[0], tags::REFERENCED_SOP_CLASS_UID).unwrap(), uids::CT_IMAGE_STORAGE);
    // What the reader needs stays.
    assert_eq!(str_of(&out, tags::MODALITY).as_deref(), Some("CT"));
    assert_eq!(str_of(&out, tags::BODY_PART_EXAMINED).as_deref(), Some("CHEST"));
    assert_eq!(out.get(tags::PIXEL_DATA).unwrap().to_multi_int::<u16>().unwrap(), vec![1, 2, 3, 4]);
    // And it says what was done.
    assert_eq!(str_of(&out, tags::PATIENT_IDENTITY_REMOVED).as_deref(), Some("YES"));
    assert_eq!(str_of(&out, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(), Some("REMOVED"));
    let codes = out.get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE).unwrap().items().unwrap();
    assert_eq!(codes.len(), 1);
    assert_eq!(str_of(&codes[0], tags::CODE_VALUE).as_deref(), Some("113100"));
    assert_eq!(str_of(&codes[0], tags::CODING_SCHEME_DESIGNATOR).as_deref(), Some("DCM"));
    // No identifying text anywhere in the bytes.
    for needle in ["Murphy", "MRN-0042", "ACC-77", "Dublin", "Byrne", "1.2.826.0.1.3680043.8.498"] {
        assert!(!derived.bytes.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} survived");
    }
    // The same instance again gives the same bytes: a retry stores nothing new.
    assert_eq!(profile.deidentify(&source).unwrap().bytes, derived.bytes);
}

#[test]
fn modified_dates_move_one_patients_dates_by_the_same_days() {
    let options = [ProfileOption::RetainLongitudinalModifiedDates, ProfileOption::RetainPatientCharacteristics];
    let profile = Profile::new(&secret(), "northwind-lotus", &options);
    let a = read(&profile.deidentify(&ct("1.2.3.1", Some("NO"), |_| {})).unwrap().bytes);
    let later = ct("1.2.3.2", Some("NO"), |o| put(o, tags::STUDY_DATE, VR::DA, "20240315"));
    let b = read(&profile.deidentify(&later).unwrap().bytes);
    let days = |text: String| {
        days_from_civil(text[..4].parse().unwrap(), text[4..6].parse().unwrap(), text[6..8].parse().unwrap())
    };
    let study_a = days(str_of(&a, tags::STUDY_DATE).unwrap());
    let study_b = days(str_of(&b, tags::STUDY_DATE).unwrap());
    assert_eq!(study_b - study_a, 14, "the interval between studies stays");
    let shift = days_from_civil(2024, 3, 1) - study_a;
    assert!((365..=3653).contains(&shift), "moved back {shift} days");
    // The DT moves by the same days, keeping its time and offset.
    let dt = str_of(&a, tags::ACQUISITION_DATE_TIME).unwrap();
    assert!(dt.ends_with("101512.5+0100"), "{dt}");
    assert_eq!(days(dt), study_a);
    // The birth date has no option column: emptied still (age is kept instead).
    assert_eq!(str_of(&a, tags::PATIENT_BIRTH_DATE).as_deref(), Some(""));
    assert_eq!(str_of(&a, tags::STUDY_TIME).as_deref(), Some("101500"));
    // Patient characteristics are kept under their option.
    assert_eq!(str_of(&a, tags::PATIENT_SEX).as_deref(), Some("F"));
    assert_eq!(str_of(&a, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(), Some("MODIFIED"));
    let codes = a.get(tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE).unwrap().items().unwrap();
    let values: Vec<_> = codes.iter().map(|c| str_of(c, tags::CODE_VALUE).unwrap()).collect();
    assert_eq!(values, ["113100", "113107", "113108"]);
}

#[test]
fn burned_in_annotation_other_than_no_is_withheld() {
    let profile = Profile::new(&secret(), "northwind-lotus", &[]);
    for (value, shown) in [(Some("YES"), "\"YES\""), (None, "absent"), (Some(""), "absent")] {
        let err = profile.deidentify(&ct("1.2.3.1", value, |_| {})).unwrap_err();
        assert!(matches!(&err, DeidError::BurnedInAnnotation(v) if v == shown), "{err}");
        assert!(err.to_string().contains("not released"));
    }
    assert!(matches!(profile.deidentify(b"not dicom"), Err(DeidError::Unreadable(_))));
}

#[test]
fn dates_shift_across_months_years_and_leap_days() {
    assert_eq!(shift("20240301", VR::DA, 1).as_deref(), Some("20240229"));
    assert_eq!(shift("20230301", VR::DA, 1).as_deref(), Some("20230228"));
    assert_eq!(shift("20240101", VR::DA, 366).as_deref(), Some("20221231"));
    assert_eq!(shift("20240101120000", VR::DT, 1).as_deref(), Some("20231231120000"));
    assert_eq!(shift("120000", VR::TM, 5).as_deref(), Some("120000"));
    assert_eq!(shift("2024", VR::DT, 1), None);
    assert_eq!(shift("2024-03-01", VR::DA, 1), None);
    assert_eq!(shift("20241301", VR::DA, 1), None);
    for days in [0, 1, 59, 60, 365, 366, 1461, 146_097, 800_000] {
        assert_eq!(days_from_civil(civil_from_days(days).0, civil_from_days(days).1, civil_from_days(days).2), days);
    }
}
