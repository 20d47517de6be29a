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
use dicom_transfer_syntax_registry::TransferSyntax;
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
    // `get`, not `element`: dicom-rs captures a backtrace for every
    // missing element `element` reports, and most optional ones are missing.
    obj.get(tag)
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

/// Reads and checks a received instance from its Part-10 file, which must
/// be [`part10`] of it (the data set walked for lengths is the instance's). Only the attributes before Pixel Data are parsed: the
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
    declared_lengths_fit(&instance.data_set, ts)?;
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
        .get(tags::PROCEDURE_CODE_SEQUENCE)
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

/// Refuses a data set in which an element or item declares more bytes
/// than are left after it, before the data set is parsed. dicom-rs makes
/// room for a value's declared length (and zero-fills it) before reading
/// it, so a few hundred bytes declaring 4 GiB would cost 4 GiB and half a
/// minute (the `dataset` fuzz target found it with pydicom's
/// UN_sequence.dcm, whose undefined-length UN the parser reads on as
/// explicit VR). The walk is dicom-rs's own lazy reader, which reads the
/// data set as the parse after it will but skips values without holding
/// them, so it refuses what a parse would fail on anyway (a data set the
/// walk cannot read is refused too). It goes on
/// through the pixel data (ingest's parse stops before it; inference's
/// reads it). A deflated data set is walked as it inflates, and refused
/// if it inflates past [`max_inflated`]. The reason names the element and its
/// offset, never a value (no PHI).
pub fn declared_lengths_fit(data_set: &[u8], ts: &TransferSyntax) -> Result<(), Rejection> {
    if ts.is_codec_free() || ts.is_encapsulated_pixel_data() {
        return walk(data_set, ts, data_set.len() as u64);
    }
    if ts.uid().trim_end_matches('\0') != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN {
        return Ok(()); // the parse refuses what it has no reader for
    }
    // Deflated: counted by inflating into nothing (bounded, no memory),
    // then walked inflating again.
    let most = max_inflated(data_set.len());
    let inflated = std::io::copy(
        &mut std::io::Read::take(flate2::read::DeflateDecoder::new(data_set), most + 1),
        &mut std::io::sink(),
    )
    .map_err(|e| {
        reject(STATUS_CANNOT_UNDERSTAND, "unreadable_data_set", format!("the deflated data set does not inflate: {e}"))
    })?;
    if inflated > most {
        let reason = format!("the deflated data set of {} bytes inflates past {most} bytes", data_set.len());
        return Err(reject(STATUS_CANNOT_UNDERSTAND, "length_beyond_data_set", reason));
    }
    let explicit = dicom_transfer_syntax_registry::entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    walk(flate2::read::DeflateDecoder::new(data_set), &explicit, inflated)
}

const DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1.99";

/// A deflated data set inflating past this is refused: 16 MiB and 32 times
/// its size. DICOM deflates 2 to 10 times; a bomb (a gigabyte of zeros in
/// one element, a megabyte deflated) a thousand, and the parse would hold
/// that element whole.
fn max_inflated(deflated: usize) -> u64 {
    (16 << 20) + 32 * deflated as u64
}

fn walk(source: impl std::io::Read, ts: &TransferSyntax, total: u64) -> Result<(), Rejection> {
    // dicom-rs's lazy reader panics on some malformed structures (an item
    // header outside any sequence, found by the fuzz target): that is a
    // data set that does not parse, not a reason to stop the service.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| walk_lengths(source, ts, total))).unwrap_or_else(|_| {
        let reason = "the data set does not parse: its structure stops the reader (an item where no sequence is open)";
        Err(reject(STATUS_CANNOT_UNDERSTAND, "unreadable_data_set", reason))
    })
}

fn walk_lengths(source: impl std::io::Read, ts: &TransferSyntax, total: u64) -> Result<(), Rejection> {
    use dicom_parser::dataset::LazyDataToken;
    use dicom_parser::dataset::lazy_read::LazyDataSetReader;
    use dicom_parser::stateful::decode::{StatefulDecode, StatefulDecoder};

    let unreadable = |e: &dyn std::fmt::Display| {
        let reason = format!("the data set does not parse: {e}");
        Err(reject(STATUS_CANNOT_UNDERSTAND, "unreadable_data_set", reason))
    };
    let decoder = match StatefulDecoder::new_with_ts(source, ts, 0) {
        Ok(decoder) => decoder,
        Err(e) => return unreadable(&e),
    };
    let mut reader = LazyDataSetReader::new(decoder);
    while let Some(token) = reader.advance() {
        // Where the walk stops, the parse does not stop with it: it reads
        // on, differently, to a length that may not fit (found by the
        // fuzz target). Over pydicom's test files the walk refuses none
        // the parse takes.
        let token = match token {
            Ok(token) => token,
            Err(e) => return unreadable(&e),
        };
        let (len, at, what) = match &token {
            LazyDataToken::LazyValue { header, decoder } => match header.len.get() {
                Some(len) => {
                    // dicom-rs reads whole numbers of a binary VR's values
                    // and leaves the odd bytes unread: the parse after it
                    // would read on from the wrong place.
                    if let Some(size) = value_size(header.vr)
                        && len % size != 0
                    {
                        let reason = format!(
                            "element {} is {} with {len} bytes, not a whole number of {size}-byte values",
                            header.tag, header.vr
                        );
                        return Err(reject(STATUS_CANNOT_UNDERSTAND, "unreadable_data_set", reason));
                    }
                    (len, decoder.position(), format!("element {}", header.tag))
                }
                None => continue,
            },
            LazyDataToken::LazyItemValue { len, decoder } => (*len, decoder.position(), "an item".to_owned()),
            _ => continue,
        };
        if u64::from(len) > total.saturating_sub(at) {
            let left = total.saturating_sub(at);
            let reason = format!("{what} at byte {at} of the data set declares {len} bytes, but only {left} follow");
            return Err(reject(STATUS_CANNOT_UNDERSTAND, "length_beyond_data_set", reason));
        }
        if let Err(e) = token.skip() {
            return unreadable(&e);
        }
    }
    Ok(())
}

/// The size of one value of a binary VR, whose length is a multiple of it.
fn value_size(vr: dicom_core::VR) -> Option<u32> {
    use dicom_core::VR;
    match vr {
        VR::SS | VR::US => Some(2),
        VR::AT | VR::FL | VR::SL | VR::UL => Some(4),
        VR::FD | VR::SV | VR::UV => Some(8),
        _ => None,
    }
}

/// The same refusal for a Part-10 file's File Meta Information (`meta`:
/// the bytes after "DICM"), which dicom-rs reads with a reader of its own
/// and the same habit. The walk reads it as that reader does: headers by
/// dicom-rs's explicit VR little endian decoder, elements while the group
/// length (the first element) says there are more, whatever their group.
pub fn meta_lengths_fit(meta: &[u8]) -> Result<(), String> {
    use dicom_encoding::decode::Decode;
    use dicom_encoding::decode::explicit_le::ExplicitVRLittleEndianDecoder;

    let decoder = ExplicitVRLittleEndianDecoder::default();
    let mut rest = meta;
    // What the meta reader refuses by itself is left to it.
    let Ok((first, _)) = decoder.decode_header(&mut rest) else { return Ok(()) };
    let Some(group_length) = rest.get(..4).filter(|_| first.tag == tags::FILE_META_INFORMATION_GROUP_LENGTH) else {
        return Ok(());
    };
    let group_length =
        u64::from(u32::from_le_bytes([group_length[0], group_length[1], group_length[2], group_length[3]]));
    rest = &rest[4..];
    let mut read = 0u64;
    while read < group_length {
        let Ok((header, header_len)) = decoder.decode_header(&mut rest) else { return Ok(()) };
        let Some(len) = header.len.get() else { return Ok(()) };
        let at = meta.len() - rest.len();
        let Some(value) = rest.get(..len as usize) else {
            return Err(format!(
                "File Meta Information element {} at byte {at} declares {len} bytes, but only {} follow",
                header.tag,
                rest.len()
            ));
        };
        rest = &rest[value.len()..];
        read += header_len as u64 + u64::from(len);
    }
    Ok(())
}

/// The Study Instance UID of a data set that failed a check, when it has
/// a readable one (so the tenant sees the refusal under its study).
pub fn study_of(instance: &Instance) -> Option<String> {
    let ts = TransferSyntaxRegistry.get(&instance.transfer_syntax)?;
    // A refused data set may be one whose lengths do not fit: parsed, it
    // would cost what it declares (the refusal would undo the check).
    declared_lengths_fit(&instance.data_set, ts).ok()?;
    let obj = InMemDicomObject::read_dataset_with_ts(&instance.data_set[..], ts).ok()?;
    let uid = text(&obj, tags::STUDY_INSTANCE_UID);
    valid_uid(&uid).then_some(uid)
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

    /// dicom-rs makes room for a declared length before reading: a few
    /// bytes declaring 4 GiB are refused by the walk before the parse
    /// (which would take 4 GiB and half a minute to fail the same way).
    #[test]
    fn a_data_set_declaring_more_bytes_than_it_has_is_refused_before_it_is_parsed() {
        let mut bytes = data_set(&[], &[]);
        let good = bytes.len();
        // (0009,1010) OB, declared 0xFFFF_FFF0 bytes, 16 present.
        bytes.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF]);
        bytes.extend_from_slice(&[0x42; 16]);
        let e = read(&instance(bytes)).unwrap_err();
        assert_eq!((e.status, e.code), (0xC000, "length_beyond_data_set"));
        assert_eq!(
            e.reason,
            format!(
                "element (0009,1010) at byte {} of the data set declares 4294967280 bytes, but only 16 follow",
                good + 12
            )
        );
        // What fits is read as before.
        assert!(declared_lengths_fit(&data_set(&[], &[]), &EXPLICIT_VR_LITTLE_ENDIAN.erased()).is_ok());
    }

    #[test]
    fn a_deflated_data_set_is_walked_as_it_inflates() {
        use std::io::Write;
        let deflate = |bytes: &[u8]| {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        };
        let deflated = TransferSyntaxRegistry.get(DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN).unwrap();
        let good = data_set(&[], &[]);
        assert_eq!(declared_lengths_fit(&deflate(&good), deflated), Ok(()));
        let mut bad = good.clone();
        bad.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0xF0, 0xFF, 0xFF, 0xFF, 1, 2]);
        let reason = declared_lengths_fit(&deflate(&bad), deflated).unwrap_err().reason;
        assert_eq!(
            reason,
            format!(
                "element (0009,1010) at byte {} of the data set declares 4294967280 bytes, but only 2 follow",
                good.len() + 12
            )
        );
        assert!(declared_lengths_fit(b"not deflate at all \xff", deflated).is_err());
        // A bomb: 17 MiB of zeros in one element, some 17 KiB deflated.
        let mut bomb = good.clone();
        bomb.extend_from_slice(&[0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0, 0, 0, 0x10, 0x01]);
        bomb.resize(bomb.len() + 0x0110_0000, 0);
        let e = declared_lengths_fit(&deflate(&bomb), deflated).unwrap_err();
        assert_eq!(e.code, "length_beyond_data_set");
        assert!(e.reason.contains("inflates past"), "{}", e.reason);
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
            (instance(b"\x08\x00\x16\x00UI\xff\xff garbage".to_vec()), 0xC000, "length_beyond_data_set"),
            // (0028,0002) UL of 2 bytes: dicom-rs would read on from byte 10.
            (instance(b"\x28\x00\x02\x00UL\x02\x00\x03\x00".to_vec()), 0xC000, "unreadable_data_set"),
            // An item with no sequence open (dicom-rs's lazy reader panics on it).
            (
                instance(
                    b"\x08\x00\x14\x00U\xff\0\0\x0a\0\0\0Enter text\xfe\xff\x0d\xe0\0\0\0\0\xfe\xff\x00\xe0in\0\0"
                        .to_vec(),
                ),
                0xC000,
                "unreadable_data_set",
            ),
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
