//! DICOM reading with dicom-rs: file meta (with or without the 128-byte preamble, or a bare data
//! set without file meta), every transfer syntax of CT practice, the modality LUT, multi-frame
//! (enhanced CT) objects split into slices with their per-frame geometry and rescale.
//!
//! Codecs: JPEG baseline/extended/lossless and RLE in pure Rust (dicom-rs `native`), JPEG 2000
//! through `openjp2` (pure Rust port of OpenJPEG), JPEG-LS through CharLS (C++, built with cmake).

use dicom_dictionary_std::uids;
use std::borrow::Cow;
use std::path::Path;

use dicom_core::dictionary::{UidDictionary, UidDictionaryEntry};
use dicom_dictionary_std::tags;
use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
use dicom_object::file::ReadPreamble;
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::PixelDecoder;
use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

use super::{dicom_scan, orient, Geometry, IngestError, IngestOptions, Pixels, Rescale, Slice, SourceKind, Uids};

type Obj = InMemDicomObject;

/// Opens a DICOM object from memory: with preamble, without it, or as a bare data set (implicit
/// or explicit VR little endian, guessed from the first element).
pub fn open_bytes(path: &Path, bytes: &[u8]) -> Result<DefaultDicomObject, IngestError> {
    let opts = || OpenFileOptions::new().read_preamble(ReadPreamble::Never);
    let body = if bytes.len() >= 132 && &bytes[128..132] == b"DICM" {
        &bytes[128..]
    } else if bytes.starts_with(b"DICM") {
        bytes
    } else {
        return open_bare_dataset(path, bytes);
    };
    let (ts_uid, meta_len) = lenient_meta(&body[4..]).ok_or_else(|| IngestError::rejected(path, "not a readable DICOM file: malformed file meta group"))?;
    if let Some(enc) = dicom_scan::Encoding::of(&ts_uid) {
        dicom_scan::check(&body[4 + meta_len..], enc).map_err(|e| IngestError::rejected(path, format!("not a readable DICOM file: {e}")))?;
    }
    opts().from_reader(body).or_else(|e| {
        // Some writers produce a file meta group dicom-rs will not parse (odd lengths, missing
        // required elements): read it leniently and take the data set from after it.
        lenient_meta(&body[4..])
            .and_then(|(ts_uid, rest)| dataset_with_meta(path, &body[4 + rest..], &ts_uid).ok())
            .ok_or_else(|| IngestError::rejected(path, format!("not a readable DICOM file: {}", first_line(&e))))
    })
}

/// Walks a file meta group (explicit VR little endian) without validating it. Returns the
/// transfer syntax UID and the length of the group.
fn lenient_meta(b: &[u8]) -> Option<(String, usize)> {
    let mut at = 0usize;
    let mut ts = None;
    while at + 8 <= b.len() && u16::from_le_bytes([b[at], b[at + 1]]) == 0x0002 {
        let element = u16::from_le_bytes([b[at + 2], b[at + 3]]);
        let vr = &b[at + 4..at + 6];
        let (len, head) = if matches!(vr, b"OB" | b"OW" | b"OF" | b"SQ" | b"UT" | b"UN") {
            let l = b.get(at + 8..at + 12)?;
            (u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize, 12)
        } else {
            (u16::from_le_bytes([b[at + 6], b[at + 7]]) as usize, 8)
        };
        let value = b.get(at + head..at + head + len)?;
        if element == 0x0010 {
            ts = Some(String::from_utf8_lossy(value).trim_end_matches(['\0', ' ']).to_string());
        }
        at += head + len;
    }
    Some((ts?, at))
}

fn open_bare_dataset(path: &Path, bytes: &[u8]) -> Result<DefaultDicomObject, IngestError> {
    if bytes.len() < 8 {
        return Err(IngestError::rejected(path, "not a DICOM file (too short, no DICM marker)"));
    }
    // A data set starts with an element of group 0008 (or 0002/0004..0008) in every real export.
    let group = u16::from_le_bytes([bytes[0], bytes[1]]);
    if group == 0 || group > 0x0008 {
        return Err(IngestError::rejected(path, "not a DICOM file (no DICM marker and no data set start)"));
    }
    let explicit = bytes[4].is_ascii_uppercase() && bytes[5].is_ascii_uppercase();
    let ts_uid = if explicit { uids::EXPLICIT_VR_LITTLE_ENDIAN } else { uids::IMPLICIT_VR_LITTLE_ENDIAN };
    dicom_scan::check(bytes, dicom_scan::Encoding { explicit, big_endian: false }).map_err(|e| IngestError::rejected(path, format!("not a readable DICOM data set: {e}")))?;
    dataset_with_meta(path, bytes, ts_uid)
}

/// Reads a data set in transfer syntax `ts_uid` and gives it a file meta table.
fn dataset_with_meta(path: &Path, bytes: &[u8], ts_uid: &str) -> Result<DefaultDicomObject, IngestError> {
    let ts = TransferSyntaxRegistry
        .get(ts_uid)
        .filter(|ts| ts_uid != uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN && ts.can_decode_dataset())
        .ok_or_else(|| IngestError::rejected(path, format!("unreadable file meta with transfer syntax {ts_uid}")))?;
    let obj = InMemDicomObject::read_dataset_with_ts(bytes, ts).map_err(|e| IngestError::rejected(path, format!("not a readable DICOM data set: {}", first_line(&e))))?;
    let sop_class = str_of(&obj, tags::SOP_CLASS_UID).unwrap_or_else(|| uids::CT_IMAGE_STORAGE.into());
    let sop_inst = str_of(&obj, tags::SOP_INSTANCE_UID).unwrap_or_else(|| "2.25.0".into());
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(ts_uid).media_storage_sop_class_uid(sop_class).media_storage_sop_instance_uid(sop_inst))
        .map_err(|e| IngestError::rejected(path, format!("cannot complete the file meta: {}", first_line(&e))))
}

/// Repairs, in the in-memory copy only (the file is never written), what other readers such as
/// pydicom tolerate: top-level standard attributes encoded with VR UN (a system on the way did
/// not know them) are decoded by their dictionary VR; an image without Bits Stored, High Bit,
/// Pixel Representation, Samples per Pixel or Photometric Interpretation gets the value the
/// standard's defaults imply (Bits Allocated, Bits Stored − 1, unsigned, 1, MONOCHROME2).
fn repair(obj: &mut Obj, big_endian: bool) {
    use dicom_core::dictionary::{DataDictionary, DataDictionaryEntry, VirtualVr};
    use dicom_core::header::Header;
    use dicom_core::{DataElement, PrimitiveValue, VR};
    let unknown: Vec<(dicom_core::Tag, Vec<u8>)> =
        obj.iter().filter(|e| e.vr() == VR::UN && e.tag() != tags::PIXEL_DATA).filter_map(|e| Some((e.tag(), e.to_bytes().ok()?.into_owned()))).collect();
    for (tag, bytes) in unknown {
        let Some(entry) = dicom_dictionary_std::StandardDataDictionary.by_tag(tag) else { continue };
        let vr = match entry.vr() {
            VirtualVr::Exact(vr) => vr,
            VirtualVr::Xs => VR::US,
            _ => continue,
        };
        if let Some(value) = decode_as(vr, &bytes, big_endian) {
            obj.put(DataElement::new(tag, vr, value));
        }
    }
    if elem(obj, tags::PIXEL_DATA).is_none() {
        return;
    }
    let us = |obj: &mut Obj, tag, v: u16| obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    if let Some(allocated) = int_of(obj, tags::BITS_ALLOCATED).and_then(|b| u16::try_from(b).ok()).filter(|b| *b > 0) {
        if elem(obj, tags::BITS_STORED).is_none() {
            us(obj, tags::BITS_STORED, allocated);
        }
        if elem(obj, tags::HIGH_BIT).is_none() {
            let stored = int_of(obj, tags::BITS_STORED).and_then(|b| u16::try_from(b).ok()).unwrap_or(allocated);
            us(obj, tags::HIGH_BIT, stored.clamp(1, allocated) - 1);
        }
    }
    if elem(obj, tags::PIXEL_REPRESENTATION).is_none() {
        us(obj, tags::PIXEL_REPRESENTATION, 0);
    }
    if elem(obj, tags::SAMPLES_PER_PIXEL).is_none() {
        us(obj, tags::SAMPLES_PER_PIXEL, 1);
    }
    if elem(obj, tags::PHOTOMETRIC_INTERPRETATION).is_none() {
        obj.put(DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, PrimitiveValue::from("MONOCHROME2")));
    }
}

/// The value of `bytes` read as `vr` (numbers in the given byte order; text split at `\`).
fn decode_as(vr: dicom_core::VR, bytes: &[u8], big_endian: bool) -> Option<dicom_core::PrimitiveValue> {
    use dicom_core::value::C;
    use dicom_core::{PrimitiveValue, VR};
    fn words<const N: usize>(bytes: &[u8], big: bool) -> impl Iterator<Item = [u8; N]> + '_ {
        bytes.chunks_exact(N).map(move |c| {
            let mut w: [u8; N] = c.try_into().expect("chunk of N");
            if big {
                w.reverse();
            }
            w
        })
    }
    let b = big_endian;
    Some(match vr {
        VR::US => PrimitiveValue::U16(words::<2>(bytes, b).map(u16::from_le_bytes).collect::<C<u16>>()),
        VR::SS => PrimitiveValue::I16(words::<2>(bytes, b).map(i16::from_le_bytes).collect::<C<i16>>()),
        VR::UL => PrimitiveValue::U32(words::<4>(bytes, b).map(u32::from_le_bytes).collect::<C<u32>>()),
        VR::SL => PrimitiveValue::I32(words::<4>(bytes, b).map(i32::from_le_bytes).collect::<C<i32>>()),
        VR::FL => PrimitiveValue::F32(words::<4>(bytes, b).map(f32::from_le_bytes).collect::<C<f32>>()),
        VR::FD => PrimitiveValue::F64(words::<8>(bytes, b).map(f64::from_le_bytes).collect::<C<f64>>()),
        VR::AE | VR::AS | VR::CS | VR::DA | VR::DS | VR::DT | VR::IS | VR::LO | VR::LT | VR::PN | VR::SH | VR::ST | VR::TM | VR::UC | VR::UI | VR::UR | VR::UT => {
            let text = String::from_utf8_lossy(bytes);
            let text = text.trim_end_matches(['\0', ' ']);
            PrimitiveValue::Strs(text.split('\\').map(|s| s.trim_end_matches(['\0', ' ']).to_string()).collect::<C<String>>())
        }
        _ => return None,
    })
}

fn first_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

fn elem(obj: &Obj, tag: dicom_core::Tag) -> Option<&InMemElement> {
    obj.element_opt(tag).ok().flatten()
}

/// A string value, trimmed of padding; None when absent or empty.
pub(crate) fn str_of(obj: &Obj, tag: dicom_core::Tag) -> Option<String> {
    let s = elem(obj, tag)?.to_str().ok()?;
    let t = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!t.is_empty()).then(|| t.to_string())
}

fn floats_of(obj: &Obj, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    let v = elem(obj, tag)?.to_multi_float64().ok()?;
    (!v.is_empty() && v.iter().all(|x| x.is_finite())).then_some(v)
}

fn float_of(obj: &Obj, tag: dicom_core::Tag) -> Option<f64> {
    floats_of(obj, tag).map(|v| v[0])
}

fn int_of(obj: &Obj, tag: dicom_core::Tag) -> Option<i64> {
    elem(obj, tag)?.to_int::<i64>().ok()
}

fn items(obj: &Obj, tag: dicom_core::Tag) -> Option<&[Obj]> {
    elem(obj, tag)?.items()
}

/// The first item of a functional group sequence inside one frame's functional groups.
fn group(fg: Option<&Obj>, seq: dicom_core::Tag) -> Option<&Obj> {
    items(fg?, seq)?.first()
}

/// A value looked up in the per-frame functional groups, then the shared ones, then the top
/// level data set (classic objects).
fn lookup<T>(top: &Obj, frame: Option<&Obj>, shared: Option<&Obj>, seq: dicom_core::Tag, get: impl Fn(&Obj) -> Option<T>) -> Option<T> {
    group(frame, seq).and_then(&get).or_else(|| group(shared, seq).and_then(&get)).or_else(|| get(top))
}

fn sop_class_name(uid: &str) -> String {
    match dicom_dictionary_std::sop_class::registry().by_uid(uid) {
        Some(entry) => format!("{} ({uid})", entry.name()),
        None => uid.to_string(),
    }
}

/// Reads a DICOM file held in memory into its slices (one per frame), canonically oriented.
pub fn read_bytes(path: &Path, bytes: &[u8], opts: &IngestOptions) -> Result<Vec<Slice>, IngestError> {
    // While parsing, no value can legitimately be larger than the file itself.
    let mut file = crate::alloc_guard::with_limit(2 * bytes.len() + (16 << 20), || open_bytes(path, bytes))?;
    let ts_uid = file.meta().transfer_syntax().trim_end_matches('\0').to_string();
    repair(&mut file, ts_uid == EXPLICIT_VR_BIG_ENDIAN);
    let obj: &Obj = &file;
    let sop_class = str_of(obj, tags::SOP_CLASS_UID).unwrap_or_else(|| file.meta().media_storage_sop_class_uid().trim_end_matches('\0').to_string());

    if elem(obj, tags::PIXEL_DATA).is_none() {
        let what = if sop_class.is_empty() { "no SOP class".to_string() } else { sop_class_name(&sop_class) };
        return Err(IngestError::rejected(path, format!("not an image: {what} has no pixel data")));
    }
    let modality = str_of(obj, tags::MODALITY).map(|m| m.to_ascii_uppercase());
    match &modality {
        None if !opts.allow_missing_modality => return Err(IngestError::rejected(path, "no Modality (0008,0060) and ingest.allow_missing_modality is false")),
        Some(m) if !opts.modalities.is_empty() && !opts.modalities.iter().any(|a| a == m) => {
            return Err(IngestError::rejected(path, format!("modality {m} is not accepted (ingest.modalities = {:?})", opts.modalities)))
        }
        _ => {}
    }

    let ts = TransferSyntaxRegistry.get(&ts_uid).ok_or_else(|| IngestError::rejected(path, format!("unknown transfer syntax {ts_uid}")))?;
    if !ts.can_decode_all() {
        return Err(IngestError::rejected(path, format!("unsupported encoding: transfer syntax {} ({ts_uid}) cannot be decoded by this build", ts.name())));
    }

    let rows = int_of(obj, tags::ROWS).unwrap_or(0);
    let cols = int_of(obj, tags::COLUMNS).unwrap_or(0);
    let frames = int_of(obj, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let spp = int_of(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let bits_allocated = int_of(obj, tags::BITS_ALLOCATED).unwrap_or(0);
    if rows <= 0 || cols <= 0 {
        return Err(IngestError::rejected(path, format!("invalid image size {rows}×{cols}")));
    }
    let limits = &opts.limits;
    if (rows * cols) as u64 > limits.max_pixels_per_slice {
        return Err(IngestError::rejected(path, format!("image size {rows}×{cols} exceeds the limit of {} pixels", limits.max_pixels_per_slice)));
    }
    if frames as u64 > limits.max_frames {
        return Err(IngestError::rejected(path, format!("{frames} frames exceed the limit of {}", limits.max_frames)));
    }
    if spp != 1 {
        return Err(IngestError::rejected(path, format!("{spp} samples per pixel: a CT image is grayscale")));
    }
    if bits_allocated != 8 && bits_allocated != 16 {
        return Err(IngestError::rejected(path, format!("{bits_allocated} bits allocated: only 8 and 16 are CT pixel sizes")));
    }
    let (rows, cols, frames) = (rows as usize, cols as usize, frames as usize);
    let frame_px = rows * cols;

    let bytes_per = (bits_allocated / 8) as usize;
    let (decoded, rle_data);
    let data: &[u8] = if ts_uid == RLE_LOSSLESS {
        rle_data = decode_rle(path, obj, frames, frame_px, bytes_per)?;
        &rle_data
    } else {
        decoded = super::guard_panics(path, || file.decode_pixel_data().map_err(|e| IngestError::rejected(path, format!("pixel data cannot be decoded: {}", first_line(&e)))))?;
        decoded.data()
    };
    let needed = frame_px * frames * bytes_per;
    if data.len() < needed {
        return Err(IngestError::rejected(path, format!("truncated pixel data: {} bytes for {frames} frame(s) of {rows}×{cols} that need {needed}", data.len())));
    }
    let signed = int_of(obj, tags::PIXEL_REPRESENTATION) == Some(1);
    let bits_stored = int_of(obj, tags::BITS_STORED).unwrap_or(bits_allocated).clamp(1, bits_allocated) as u32;
    let high_bit = int_of(obj, tags::HIGH_BIT).unwrap_or(bits_stored as i64 - 1).clamp(bits_stored as i64 - 1, bits_allocated - 1) as u32;

    let shared = items(obj, tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE).and_then(|i| i.first());
    let per_frame = items(obj, tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE);
    let uids = Uids {
        study: str_of(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default(),
        series: str_of(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default(),
        sop: str_of(obj, tags::SOP_INSTANCE_UID).unwrap_or_default(),
    };
    let image_type = elem(obj, tags::IMAGE_TYPE).and_then(|e| e.to_multi_str().ok().map(|v| v.iter().map(|s| s.trim().to_string()).collect::<Vec<String>>())).unwrap_or_default();

    let mut slices = Vec::with_capacity(frames);
    for f in 0..frames {
        let fg = per_frame.and_then(|p| p.get(f));
        let raw = &data[f * frame_px * bytes_per..(f + 1) * frame_px * bytes_per];
        let pixels = stored_values(raw, bytes_per, signed, bits_stored, high_bit);
        let rescale = rescale_for(obj, fg, shared);
        let geometry = Geometry {
            position: lookup(obj, fg, shared, tags::PLANE_POSITION_SEQUENCE, |o| floats_of(o, tags::IMAGE_POSITION_PATIENT)).filter(|v| v.len() >= 3).map(|v| [v[0], v[1], v[2]]),
            orientation: lookup(obj, fg, shared, tags::PLANE_ORIENTATION_SEQUENCE, |o| floats_of(o, tags::IMAGE_ORIENTATION_PATIENT))
                .filter(|v| v.len() >= 6)
                .map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]]),
            pixel_spacing: lookup(obj, fg, shared, tags::PIXEL_MEASURES_SEQUENCE, |o| floats_of(o, tags::PIXEL_SPACING))
                .filter(|v| v.len() >= 2 && v[0] > 0.0 && v[1] > 0.0)
                .map(|v| [v[0], v[1]]),
            slice_location: float_of(obj, tags::SLICE_LOCATION),
            slice_thickness: lookup(obj, fg, shared, tags::PIXEL_MEASURES_SEQUENCE, |o| float_of(o, tags::SLICE_THICKNESS)),
            instance_number: int_of(obj, tags::INSTANCE_NUMBER),
        };
        let mut slice = Slice {
            source: path.to_path_buf(),
            frame: f,
            rows,
            cols,
            pixels,
            rescale: rescale.unwrap_or_default(),
            geometry,
            uids: uids.clone(),
            modality: modality.clone(),
            image_type: image_type.clone(),
            transfer_syntax: Some(ts_uid.clone()),
            kind: SourceKind::Dicom,
        };
        orient::canonicalize(&mut slice);
        slices.push(slice);
    }
    Ok(slices)
}

/// The RLE Lossless transfer syntax, decoded by [`super::rle`].
const RLE_LOSSLESS: &str = uids::RLE_LOSSLESS;

/// Explicit VR Big Endian: retired from the standard, still written by old scanners and
/// archives, so still read (and accepted by the receiver).
#[allow(deprecated)]
pub const EXPLICIT_VR_BIG_ENDIAN: &str = uids::EXPLICIT_VR_BIG_ENDIAN;

/// Decodes every frame of RLE Lossless pixel data (one fragment per frame).
fn decode_rle(path: &Path, obj: &Obj, frames: usize, frame_px: usize, bytes_per: usize) -> Result<Vec<u8>, IngestError> {
    let Some(seq) = elem(obj, tags::PIXEL_DATA).and_then(|e| match e.value() {
        dicom_core::value::Value::PixelSequence(s) => Some(s),
        _ => None,
    }) else {
        return Err(IngestError::rejected(path, "RLE transfer syntax but the pixel data is not encapsulated"));
    };
    let fragments = seq.fragments();
    if fragments.len() < frames {
        return Err(IngestError::rejected(path, format!("truncated pixel data: {} RLE fragments for {frames} frames", fragments.len())));
    }
    let mut out = Vec::with_capacity(frames * frame_px * bytes_per);
    for (f, fragment) in fragments.iter().take(frames).enumerate() {
        let frame = super::rle::decode_frame(fragment, frame_px, bytes_per).map_err(|e| IngestError::rejected(path, format!("frame {f}: {e}")))?;
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

/// Rescale from the functional groups or the top level; None when no tag is present.
fn rescale_for(top: &Obj, fg: Option<&Obj>, shared: Option<&Obj>) -> Option<Rescale> {
    lookup(top, fg, shared, tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE, |o| {
        let slope = float_of(o, tags::RESCALE_SLOPE);
        let intercept = float_of(o, tags::RESCALE_INTERCEPT);
        (slope.is_some() || intercept.is_some()).then(|| Rescale { slope: slope.filter(|s| *s != 0.0).unwrap_or(1.0), intercept: intercept.unwrap_or(0.0) })
    })
}

/// Stored values from decoded little-endian samples: the `bits_stored` bits ending at
/// `high_bit`, sign-extended when the representation is signed (bits outside are ignored, as the
/// standard requires).
pub fn stored_values(raw: &[u8], bytes_per: usize, signed: bool, bits_stored: u32, high_bit: u32) -> Pixels {
    let low = (high_bit + 1).saturating_sub(bits_stored);
    let mask: u32 = if bits_stored >= 32 { u32::MAX } else { (1u32 << bits_stored) - 1 };
    let sample = |i: usize| -> u32 {
        let v = if bytes_per == 2 { u32::from(u16::from_le_bytes([raw[2 * i], raw[2 * i + 1]])) } else { u32::from(raw[i]) };
        (v >> low) & mask
    };
    let n = raw.len() / bytes_per;
    if signed {
        let shift = 32 - bits_stored;
        Pixels::I16((0..n).map(|i| (((sample(i) << shift) as i32) >> shift).clamp(-32768, 32767) as i16).collect())
    } else {
        Pixels::U16((0..n).map(|i| sample(i) as u16).collect())
    }
}

/// The names and UIDs of transfer syntaxes, for `inspect`.
pub fn transfer_syntax_name(uid: &str) -> Cow<'static, str> {
    match TransferSyntaxRegistry.get(uid) {
        Some(ts) => Cow::Borrowed(ts.name()),
        None => Cow::Borrowed("unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_values_sign_extend_and_mask() {
        // 12-bit signed: 0x0FFF is -1, 0x0800 is -2048; junk above bit 11 is ignored.
        let raw = [0xFF, 0x0F, 0x00, 0x08, 0xFF, 0xF7];
        assert_eq!(stored_values(&raw, 2, true, 12, 11), Pixels::I16(vec![-1, -2048, 2047]));
        assert_eq!(stored_values(&raw, 2, false, 12, 11), Pixels::U16(vec![4095, 2048, 2047]));
        assert_eq!(stored_values(&[0x80, 0x7F], 1, true, 8, 7), Pixels::I16(vec![-128, 127]));
    }
}
