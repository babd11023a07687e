//! DIMSE command sets, shared by the receiver ([`super::scp`]) and the sender
//! ([`super::export`]): always implicit VR little endian, with their group length first.

use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::IMPLICIT_VR_LITTLE_ENDIAN;
use dicom_ul::pdu::{PDataValueType, Pdu};

/// C-STORE request.
pub const C_STORE_RQ: u16 = 0x0001;
/// C-STORE response.
pub const C_STORE_RSP: u16 = 0x8001;
/// C-ECHO request.
pub const C_ECHO_RQ: u16 = 0x0030;
/// C-ECHO response.
pub const C_ECHO_RSP: u16 = 0x8030;
/// Command Data Set Type: no data set follows.
pub const NO_DATA_SET: u16 = 0x0101;
/// Command Data Set Type: a data set follows (any value but [`NO_DATA_SET`]).
pub const DATA_SET: u16 = 0x0000;
/// Status: success.
pub const SUCCESS: u16 = 0x0000;
/// Status: refused, out of resources (0xA7xx).
pub const OUT_OF_RESOURCES: u16 = 0xA700;
/// Status: SOP class not supported.
pub const SOP_CLASS_NOT_SUPPORTED: u16 = 0x0122;
/// Status: unrecognized operation.
pub const UNRECOGNIZED_OPERATION: u16 = 0x0211;
/// Status: data set does not match SOP class.
pub const DATA_SET_MISMATCH: u16 = 0xA900;

/// ctsentry's Implementation Class UID (file meta and association negotiation).
pub const IMPLEMENTATION_CLASS_UID: &str = "1.2.826.0.1.3680043.10.1416.1";

/// Largest command set accepted (a C-STORE-RQ is a few hundred bytes).
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// A UID value, padded to even length with NUL as the standard asks.
pub fn uid(s: &str) -> PrimitiveValue {
    let mut s = s.to_string();
    if s.len() % 2 == 1 {
        s.push('\0');
    }
    PrimitiveValue::from(s)
}

/// Encodes `obj` as a command set: implicit VR little endian, Command Group Length first.
pub fn command_set(obj: &InMemDicomObject) -> Vec<u8> {
    let ts = IMPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut body = Vec::new();
    obj.write_dataset_with_ts(&mut body, &ts).expect("a command set encodes");
    let mut group = InMemDicomObject::new_empty();
    group.put(DataElement::new(tags::COMMAND_GROUP_LENGTH, VR::UL, PrimitiveValue::from(body.len() as u32)));
    let mut out = Vec::new();
    group.write_dataset_with_ts(&mut out, &ts).expect("a group length encodes");
    out.extend_from_slice(&body);
    out
}

/// Checks that every element header of an implicit-VR little-endian command set fits in it
/// (a declared length larger than the bytes left would make the parser allocate it).
fn check_command(bytes: &[u8]) -> Result<(), super::Error> {
    let mut at = 0;
    while at < bytes.len() {
        let Some(header) = bytes.get(at..at + 8) else { return Err(super::Error::Protocol("a truncated element in the command set".into())) };
        let len = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
        if len > bytes.len() - at - 8 {
            return Err(super::Error::Protocol(format!("a command element declares {len} bytes, {} are left", bytes.len() - at - 8)));
        }
        at += 8 + len;
    }
    Ok(())
}

/// Parses a command set received from a peer (element lengths checked first).
pub fn read_command(bytes: &[u8]) -> Result<InMemDicomObject, super::Error> {
    check_command(bytes)?;
    InMemDicomObject::read_dataset_with_ts(bytes, &IMPLICIT_VR_LITTLE_ENDIAN.erased()).map_err(|e| super::Error::Protocol(format!("unreadable command: {e}")))
}

/// A text element (of a command set or a data set), without padding (empty when absent).
pub fn text(cmd: &InMemDicomObject, tag: Tag) -> String {
    cmd.element(tag).ok().and_then(|e| e.to_str().ok()).map(|s| s.trim_end_matches(['\0', ' ']).to_string()).unwrap_or_default()
}

/// An unsigned short element of a command set.
pub fn int(cmd: &InMemDicomObject, tag: Tag) -> Option<u16> {
    cmd.element(tag).ok().and_then(|e| e.to_int::<u16>().ok())
}

/// Reads the response (command field `field`) to `message_id` and returns its status.
pub fn response_status<S>(assoc: &mut dicom_ul::association::client::ClientAssociation<S>, field: u16, message_id: u16) -> Result<u16, super::Error>
where
    S: dicom_ul::association::CloseSocket + std::io::Read + std::io::Write,
{
    let mut command = Vec::new();
    loop {
        match assoc.receive().map_err(|e| super::Error::Link(format!("no response: {e}")))? {
            Pdu::PData { data } => {
                for v in data {
                    if v.value_type != PDataValueType::Command {
                        return Err(super::Error::Protocol("a data set where a response was expected".into()));
                    }
                    command.extend_from_slice(&v.data);
                    if command.len() > MAX_COMMAND_BYTES {
                        return Err(super::Error::Protocol("a response over 64 KiB".into()));
                    }
                    if v.is_last {
                        let cmd = read_command(&command)?;
                        if int(&cmd, tags::COMMAND_FIELD) != Some(field) || int(&cmd, tags::MESSAGE_ID_BEING_RESPONDED_TO) != Some(message_id) {
                            return Err(super::Error::Protocol("a response that is not the one awaited".into()));
                        }
                        return int(&cmd, tags::STATUS).ok_or_else(|| super::Error::Protocol("a response without a status".into()));
                    }
                }
            }
            Pdu::AbortRQ { source } => return Err(super::Error::Link(format!("aborted the association ({source:?})"))),
            other => return Err(super::Error::Protocol(format!("unexpected PDU {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_sets_carry_their_group_length_and_refuse_oversized_elements() {
        let mut obj = InMemDicomObject::new_empty();
        obj.put(DataElement::new(tags::AFFECTED_SOP_CLASS_UID, VR::UI, uid("1.2.3")));
        obj.put(DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(C_STORE_RQ)));
        let bytes = command_set(&obj);
        let cmd = read_command(&bytes).unwrap();
        assert_eq!(int(&cmd, tags::COMMAND_FIELD), Some(C_STORE_RQ));
        assert_eq!(text(&cmd, tags::AFFECTED_SOP_CLASS_UID), "1.2.3");
        let len = cmd.element(tags::COMMAND_GROUP_LENGTH).unwrap().to_int::<u32>().unwrap() as usize;
        assert_eq!(len, bytes.len() - 12, "group length counts every element after it");
        let mut evil = bytes.clone();
        evil[4..8].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        assert!(matches!(read_command(&evil).unwrap_err(), crate::net::Error::Protocol(m) if m.contains("declares")));
    }
}
