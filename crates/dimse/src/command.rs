//! DIMSE command sets (PS3.7 section 9.3, annex E): always implicit VR
//! little endian, with the group length (0000,0000) first.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;

/// Command Field values (PS3.7 E.1).
pub const C_STORE_RQ: u16 = 0x0001;
pub const C_STORE_RSP: u16 = 0x8001;
pub const C_ECHO_RQ: u16 = 0x0030;
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no data set follows (PS3.7 E.1).
pub const NO_DATA_SET: u16 = 0x0101;

/// Status values (PS3.7 annex C).
pub const STATUS_SUCCESS: u16 = 0x0000;
pub const STATUS_UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// C-STORE (PS3.4 B.2.3): refused, SOP class not supported.
pub const STATUS_SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Refused: not authorized.
pub const STATUS_NOT_AUTHORIZED: u16 = 0x0124;
/// Refused: out of resources.
pub const STATUS_OUT_OF_RESOURCES: u16 = 0xA700;
/// Error: data set does not match SOP class.
pub const STATUS_DATA_SET_MISMATCH: u16 = 0xA900;
/// Error: cannot understand (0xC000 to 0xCFFF).
pub const STATUS_CANNOT_UNDERSTAND: u16 = 0xC000;

/// The parts of a command set Meridian reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub field: u16,
    pub message_id: u16,
    pub affected_sop_class: String,
    /// Empty when the command names none (C-ECHO).
    pub affected_sop_instance: String,
    /// Whether a data set follows the command.
    pub has_data_set: bool,
}

impl Command {
    /// Decodes a complete command set; says which element is missing or bad.
    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        let obj = InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| format!("command set does not decode: {e}"))?;
        let u16_of = |tag, name: &str| -> Result<u16, String> {
            obj.get(tag)
                .ok_or_else(|| format!("command set has no {name}"))?
                .to_int::<u16>()
                .map_err(|e| format!("command set {name}: {e}"))
        };
        let field = u16_of(tags::COMMAND_FIELD, "Command Field (0000,0100)")?;
        let message_id = u16_of(tags::MESSAGE_ID, "Message ID (0000,0110)")?;
        let uid = |tag| {
            obj.get(tag)
                .and_then(|e| e.to_str().ok())
                .map(|s| s.trim_end_matches(['\0', ' ']).to_owned())
                .unwrap_or_default()
        };
        let has_data_set = u16_of(tags::COMMAND_DATA_SET_TYPE, "Command Data Set Type (0000,0800)")? != NO_DATA_SET;
        Ok(Command {
            field,
            message_id,
            affected_sop_class: uid(tags::AFFECTED_SOP_CLASS_UID),
            affected_sop_instance: uid(tags::AFFECTED_SOP_INSTANCE_UID),
            has_data_set,
        })
    }

    /// A C-ECHO-RSP (PS3.7 9.3.5.2) answering `message_id`.
    pub fn echo_response(message_id: u16, status: u16) -> Response {
        Response { field: C_ECHO_RSP, sop_class: crate::VERIFICATION.into(), sop_instance: None, message_id, status }
    }

    /// The C-STORE-RSP (PS3.7 9.3.1.2) answering this C-STORE-RQ.
    pub fn store_response(&self, status: u16) -> Response {
        Response {
            field: C_STORE_RSP,
            sop_class: self.affected_sop_class.clone(),
            sop_instance: Some(self.affected_sop_instance.clone()),
            message_id: self.message_id,
            status,
        }
    }
}

/// A response command set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub field: u16,
    pub sop_class: String,
    pub sop_instance: Option<String>,
    pub message_id: u16,
    pub status: u16,
}

impl Response {
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        let mut elements = vec![
            DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, PrimitiveValue::from(self.sop_class.as_str())),
            DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(self.field)),
            DataElement::new(tags::MESSAGE_ID_BEING_RESPONDED_TO, VR::US, PrimitiveValue::from(self.message_id)),
            DataElement::new(tags::COMMAND_DATA_SET_TYPE, VR::US, PrimitiveValue::from(NO_DATA_SET)),
            DataElement::new(tags::STATUS, VR::US, PrimitiveValue::from(self.status)),
        ];
        if let Some(instance) = &self.sop_instance {
            elements.push(DataElement::new(
                tags::AFFECTED_SOP_INSTANCE_UID,
                VR::UI,
                PrimitiveValue::from(instance.as_str()),
            ));
        }
        let obj = InMemDicomObject::command_from_element_iter(elements);
        let mut out = Vec::with_capacity(128);
        obj.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| format!("encoding the response command set: {e}"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_echo_response_decodes_back_with_even_length_values() {
        let bytes = Command::echo_response(7, STATUS_SUCCESS).encode().unwrap();
        assert_eq!(bytes.len() % 2, 0);
        let back = Command::decode(&bytes);
        // A response has no Message ID, only Message ID Being Responded To.
        assert_eq!(back.unwrap_err(), "command set has no Message ID (0000,0110)");
        let obj = InMemDicomObject::read_dataset_with_ts(&bytes[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased()).unwrap();
        assert_eq!(obj.element(tags::COMMAND_FIELD).unwrap().to_int::<u16>().unwrap(), C_ECHO_RSP);
        assert_eq!(obj.element(tags::MESSAGE_ID_BEING_RESPONDED_TO).unwrap().to_int::<u16>().unwrap(), 7);
        assert_eq!(obj.element(tags::STATUS).unwrap().to_int::<u16>().unwrap(), 0);
        // Group length (0000,0000) counts the bytes after it.
        let group_length = obj.element(tags::COMMAND_GROUP_LENGTH).unwrap().to_int::<u32>().unwrap();
        assert_eq!(group_length as usize, bytes.len() - 12);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Command::decode(b"\x00\x00\x00").is_err());
        assert!(Command::decode(&[0xff; 64]).is_err());
    }
}
