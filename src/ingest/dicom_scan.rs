//! A structural pre-check of a DICOM data set held in memory, before dicom-rs parses it.
//!
//! dicom-rs allocates each element's declared length before reading its value, so a 600-byte
//! file that declares a 3 GB element costs 3 GB of memory. This walk refuses any element, item or
//! fragment whose declared length runs past the end of the data, descending into sequences
//! (defined or undefined length, explicit VR, implicit VR by the standard dictionary, and UN
//! holding an implicit-VR sequence) and encapsulated pixel data, with a bounded nesting depth.

use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom_core::{Tag, VR};
use dicom_dictionary_std::uids;
use dicom_dictionary_std::StandardDataDictionary;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const MAX_DEPTH: usize = 32;

/// How a data set is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoding {
    /// Explicit VR (else implicit).
    pub explicit: bool,
    /// Big endian (else little).
    pub big_endian: bool,
}

impl Encoding {
    /// The encoding of a transfer syntax UID; None when the data set is deflated (not checked).
    pub fn of(ts_uid: &str) -> Option<Encoding> {
        match ts_uid {
            uids::IMPLICIT_VR_LITTLE_ENDIAN => Some(Encoding { explicit: false, big_endian: false }),
            super::dicom::EXPLICIT_VR_BIG_ENDIAN => Some(Encoding { explicit: true, big_endian: true }),
            uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN | uids::JPIP_REFERENCED_DEFLATE => None,
            _ => Some(Encoding { explicit: true, big_endian: false }),
        }
    }
}

struct Walker<'a> {
    b: &'a [u8],
}

impl Walker<'_> {
    fn u16(&self, at: usize, be: bool) -> u16 {
        let a = [self.b[at], self.b[at + 1]];
        if be {
            u16::from_be_bytes(a)
        } else {
            u16::from_le_bytes(a)
        }
    }

    fn u32(&self, at: usize, be: bool) -> u32 {
        let a = [self.b[at], self.b[at + 1], self.b[at + 2], self.b[at + 3]];
        if be {
            u32::from_be_bytes(a)
        } else {
            u32::from_le_bytes(a)
        }
    }

    fn need(&self, at: usize, n: usize, end: usize, what: &str) -> Result<(), String> {
        if at.checked_add(n).is_none_or(|e| e > end) {
            return Err(format!("{what} at byte {at} declares {n} bytes but only {} remain", end.saturating_sub(at)));
        }
        Ok(())
    }

    /// Walks elements in `[at, end)`; inside an undefined-length item, stops after its delimiter.
    /// Returns the offset after the last element read.
    fn elements(&self, mut at: usize, end: usize, enc: Encoding, depth: usize) -> Result<usize, String> {
        if depth > MAX_DEPTH {
            return Err("sequences nested too deeply".into());
        }
        while at < end {
            self.need(at, 8, end, "element header")?;
            let tag = Tag(self.u16(at, enc.big_endian), self.u16(at + 2, enc.big_endian));
            if tag == Tag(0xFFFE, 0xE00D) {
                return Ok(at + 8);
            }
            let (vr, len, header) = if enc.explicit && tag.0 != 0xFFFE {
                let vr = VR::from_binary([self.b[at + 4], self.b[at + 5]]).unwrap_or(VR::UN);
                if matches!(vr, VR::OB | VR::OD | VR::OF | VR::OL | VR::OV | VR::OW | VR::SQ | VR::UC | VR::UN | VR::UR | VR::UT | VR::SV | VR::UV) {
                    self.need(at, 12, end, "element header")?;
                    (vr, self.u32(at + 8, enc.big_endian), 12)
                } else {
                    (vr, u32::from(self.u16(at + 6, enc.big_endian)), 8)
                }
            } else {
                let vr = StandardDataDictionary.by_tag(tag).map(|e| e.vr().relaxed()).unwrap_or(VR::UN);
                (vr, self.u32(at + 4, enc.big_endian), 8)
            };
            at += header;
            if tag == Tag(0x7FE0, 0x0010) && len == UNDEFINED {
                at = self.items(at, end, enc, depth + 1, true, false)?;
            } else if len == UNDEFINED {
                // A sequence (SQ, or UN holding an implicit VR little endian sequence).
                let inner = if vr == VR::UN { Encoding { explicit: false, big_endian: false } } else { enc };
                at = self.items(at, end, inner, depth + 1, false, false)?;
            } else {
                let len = len as usize;
                self.need(at, len, end, &format!("element {tag}"))?;
                if vr == VR::SQ {
                    self.items(at, at + len, enc, depth + 1, false, true)?;
                }
                at += len;
            }
        }
        Ok(at)
    }

    /// Walks the items of a sequence (data sets) or of encapsulated pixel data (fragments) in
    /// `[at, end)`; stops after a sequence delimiter, which only an undefined-length (`!defined`)
    /// container needs. Returns the offset after the last item.
    fn items(&self, mut at: usize, end: usize, enc: Encoding, depth: usize, fragments: bool, defined: bool) -> Result<usize, String> {
        while at < end {
            self.need(at, 8, end, "item header")?;
            let tag = Tag(self.u16(at, enc.big_endian), self.u16(at + 2, enc.big_endian));
            let len = self.u32(at + 4, enc.big_endian);
            at += 8;
            match tag {
                Tag(0xFFFE, 0xE0DD) => return Ok(at),
                Tag(0xFFFE, 0xE000) if len == UNDEFINED && !fragments => {
                    at = self.elements(at, end, enc, depth + 1)?;
                }
                Tag(0xFFFE, 0xE000) if len != UNDEFINED => {
                    self.need(at, len as usize, end, "item")?;
                    if !fragments {
                        self.elements(at, at + len as usize, enc, depth + 1)?;
                    }
                    at += len as usize;
                }
                other => return Err(format!("unexpected {other} at byte {} inside a sequence", at - 8)),
            }
        }
        if !defined {
            // An undefined length ran to the end without its delimiter.
            return Err("sequence or pixel data without its end delimiter".into());
        }
        Ok(at)
    }
}

/// Checks the data set in `b` (no preamble, no file meta), encoded as `enc`.
pub fn check(b: &[u8], enc: Encoding) -> Result<(), String> {
    Walker { b }.elements(0, b.len(), enc, 0).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LE: Encoding = Encoding { explicit: true, big_endian: false };

    fn elem(group: u16, el: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend(group.to_le_bytes());
        v.extend(el.to_le_bytes());
        v.extend(vr);
        v.extend((value.len() as u16).to_le_bytes());
        v.extend(value);
        v
    }

    #[test]
    fn accepts_well_formed_and_refuses_lengths_past_the_end() {
        let mut ok = elem(0x0008, 0x0060, b"CS", b"CT");
        assert_eq!(check(&ok, LE), Ok(()));
        // An OB element declaring 3 GB.
        ok.extend([0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0, 0, 0, 0xC0]);
        let err = check(&ok, LE).unwrap_err();
        assert!(err.contains("declares"), "{err}");
    }

    #[test]
    fn walks_into_undefined_length_sequences() {
        let mut b = vec![0x08, 0x00, 0x15, 0x11, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        b.extend([0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF]); // item, undefined length
        b.extend(elem(0x0008, 0x1150, b"UI", b"1.2"));
        // inner element with an absurd length
        b.extend([0x08, 0x00, 0x55, 0x11, b'U', b'N', 0, 0, 0x00, 0x00, 0x00, 0x7F]);
        assert!(check(&b, LE).is_err());
    }
}
