//! Ingest on fixtures the tests write: every native encoding, RLE, multi-frame, real-world
//! tolerance, rejections, NIfTI-1/2 and series order.

mod common;

use std::path::Path;

use common::*;
use ctsentry::ingest::{self, series, IngestError, IngestOptions, Pixels, SourceKind};

fn read(path: &Path) -> Result<Vec<ingest::Slice>, IngestError> {
    ingest::read_file(path, &IngestOptions::default())
}

fn reason(r: Result<Vec<ingest::Slice>, IngestError>) -> String {
    match r {
        Err(IngestError::Rejected { reason, .. }) => reason,
        Err(e) => panic!("expected a rejection, got {e}"),
        Ok(_) => panic!("expected a rejection, got slices"),
    }
}

#[test]
fn native_and_rle_encodings_decode_to_the_same_hu() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = CtSlice::pattern(7, 5, 3, 12.5);
    s.rescale = Some((2.0, -1024.0));
    for (i, ts) in [IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE, RLE].iter().enumerate() {
        let p = dir.path().join(format!("s{i}.dcm"));
        s.write(&p, ts);
        let slices = read(&p).unwrap_or_else(|e| panic!("{ts}: {e}"));
        assert_eq!(slices.len(), 1);
        let got = &slices[0];
        assert_eq!(got.transfer_syntax.as_deref(), Some(*ts));
        assert_eq!((got.rows, got.cols), (7, 5));
        assert_eq!(got.hu().into_raw_vec_and_offset().0, s.expected_hu(), "{ts}");
        assert_eq!(got.rescale.slope, 2.0);
        assert_eq!(got.geometry.position, Some([-100.0, -120.0, 12.5]));
        assert_eq!(got.geometry.pixel_spacing, Some([0.8, 0.7]));
        assert_eq!(got.modality.as_deref(), Some("CT"));
        assert_eq!(got.image_type, ["ORIGINAL", "PRIMARY", "AXIAL"]);
        assert_eq!(got.kind, SourceKind::Dicom);
    }
}

#[test]
fn unsigned_12_bit_ignores_bits_above_high_bit() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = CtSlice::pattern(4, 4, 0, 0.0);
    s.unsigned = true;
    s.bits_stored = 12;
    s.rescale = Some((1.0, -1024.0));
    s.stored = (0..16).map(|i| i * 250).collect();
    let expected = s.expected_hu();
    // Junk in the top four bits (as overlays once did) must not change the value.
    s.stored = s.stored.iter().map(|v| v | 0xA000).collect();
    let p = dir.path().join("u12.dcm");
    s.write(&p, EXPLICIT_LE);
    let got = read(&p).unwrap();
    assert!(matches!(got[0].pixels, Pixels::U16(_)));
    assert_eq!(got[0].hu().into_raw_vec_and_offset().0, expected);
}

#[test]
fn real_world_tolerance() {
    let dir = tempfile::tempdir().unwrap();
    // UUID strings as UIDs, no Modality, no rescale tags.
    let mut s = CtSlice::pattern(3, 3, 1, 0.0);
    s.series_uid = "98C14734-ASSH-4a1e-9d7e-5b1f0c2d3e4f".into();
    s.sop_uid = "not a uid".into();
    s.modality = None;
    s.rescale = None;
    let p = dir.path().join("tolerant.dcm");
    s.write(&p, EXPLICIT_LE);
    let got = read(&p).unwrap();
    assert_eq!(got[0].uids.series, s.series_uid);
    assert_eq!(got[0].rescale, ingest::Rescale { slope: 1.0, intercept: 0.0 });
    assert_eq!(got[0].hu().into_raw_vec_and_offset().0, s.expected_hu());
    let strict = IngestOptions { allow_missing_modality: false, ..Default::default() };
    assert!(matches!(ingest::read_file(&p, &strict), Err(IngestError::Rejected { .. })));

    // Without the 128-byte preamble.
    let bytes = std::fs::read(&p).unwrap();
    let no_preamble = dir.path().join("nopreamble.dcm");
    std::fs::write(&no_preamble, &bytes[128..]).unwrap();
    assert_eq!(read(&no_preamble).unwrap()[0].pixels, got[0].pixels);

    // Without file meta at all: a bare implicit VR little endian data set.
    let bare = dir.path().join("bare.dcm");
    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry;
    use dicom_encoding::transfer_syntax::TransferSyntaxIndex;
    let mut out = Vec::new();
    s.object().write_dataset_with_ts(&mut out, ts.get(IMPLICIT_LE).unwrap()).unwrap();
    std::fs::write(&bare, out).unwrap();
    assert_eq!(read(&bare).unwrap()[0].pixels, got[0].pixels);
}

#[test]
fn rejections_name_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    // Non-CT modality.
    let mut s = CtSlice::pattern(3, 3, 1, 0.0);
    s.modality = Some("MR");
    let p = dir.path().join("mr.dcm");
    s.write(&p, EXPLICIT_LE);
    assert!(reason(read(&p)).contains("modality MR is not accepted"));
    let any = IngestOptions { modalities: vec![], ..Default::default() };
    assert!(ingest::read_file(&p, &any).is_ok());

    // A structured report: no pixel data.
    let mut o = CtSlice::pattern(3, 3, 1, 0.0).object();
    o.remove_element(dicom_dictionary_std::tags::PIXEL_DATA);
    o.put(dicom_core::DataElement::new(dicom_dictionary_std::tags::SOP_CLASS_UID, dicom_core::VR::UI, dicom_core::value::PrimitiveValue::from("1.2.840.10008.5.1.4.1.1.88.11")));
    let p = dir.path().join("sr.dcm");
    write_object(o, &p, EXPLICIT_LE);
    let r = reason(read(&p));
    assert!(r.contains("not an image") && r.contains("Basic Text SR"), "{r}");

    // Truncated pixel data: the element is shorter than rows × cols.
    let mut s = CtSlice::pattern(8, 8, 1, 0.0);
    s.stored.truncate(40);
    let p = dir.path().join("short.dcm");
    s.write(&p, EXPLICIT_LE);
    assert!(reason(read(&p)).contains("truncated pixel data"), "{}", reason(read(&p)));

    // A file cut in the middle.
    let full = dir.path().join("full.dcm");
    CtSlice::pattern(8, 8, 1, 0.0).write(&full, EXPLICIT_LE);
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.dcm");
    std::fs::write(&cut, &bytes[..bytes.len() - 50]).unwrap();
    assert!(read(&cut).is_err());

    // Unsupported encoding (JPEG XL is not built in).
    let p = dir.path().join("jxl.dcm");
    let s = CtSlice::pattern(2, 2, 1, 0.0);
    let mut o = s.object();
    o.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OB,
        dicom_core::value::Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(vec![0u32], vec![vec![0u8; 8]])),
    ));
    write_object(o, &p, "1.2.840.10008.1.2.4.110");
    let r = reason(read(&p));
    assert!(r.contains("unsupported encoding") || r.contains("unknown transfer syntax"), "{r}");

    // Not DICOM at all.
    let p = dir.path().join("notes.txt");
    std::fs::write(&p, "hello, this is not an image").unwrap();
    assert!(reason(read(&p)).contains("not a DICOM file"));

    // Over the size cap: refused before decoding.
    let p = dir.path().join("big.dcm");
    CtSlice::pattern(64, 64, 1, 0.0).write(&p, EXPLICIT_LE);
    let mut small = IngestOptions::default();
    small.limits.max_pixels_per_slice = 1000;
    assert!(matches!(ingest::read_file(&p, &small), Err(IngestError::Rejected { reason, .. }) if reason.contains("exceeds the limit")));
    small.limits = Default::default();
    small.limits.max_file_bytes = 100;
    assert!(matches!(ingest::read_file(&p, &small), Err(IngestError::Rejected { reason, .. }) if reason.contains("file size")));
}

#[cfg(unix)]
#[test]
fn symbolic_links_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("real.dcm");
    CtSlice::pattern(3, 3, 1, 0.0).write(&p, EXPLICIT_LE);
    let link = dir.path().join("link.dcm");
    std::os::unix::fs::symlink(&p, &link).unwrap();
    assert!(reason(read(&link)).contains("symbolic link"));
    let files = ingest::collect_files(&[dir.path().to_path_buf()]).unwrap();
    assert_eq!(files, vec![p]);
}

#[test]
fn multiframe_enhanced_ct_splits_into_ordered_slices() {
    let dir = tempfile::tempdir().unwrap();
    let (o, expected) = enhanced_ct(4, 6, 3);
    let p = dir.path().join("enhanced.dcm");
    write_object(o, &p, EXPLICIT_LE);
    let slices = read(&p).unwrap();
    assert_eq!(slices.len(), 3);
    for (f, s) in slices.iter().enumerate() {
        assert_eq!(s.frame, f);
        assert_eq!(s.hu().into_raw_vec_and_offset().0, expected[f], "frame {f}");
        assert_eq!(s.geometry.position.unwrap()[2], 10.0 * (2 - f) as f64);
        assert_eq!(s.geometry.pixel_spacing, Some([0.5, 0.5]));
        assert_eq!(s.geometry.slice_thickness, Some(10.0));
    }
    let ser = series::assemble(slices);
    assert_eq!(ser.len(), 1);
    assert_eq!(ser[0].slices.iter().map(|s| s.frame).collect::<Vec<_>>(), [2, 1, 0]);
    assert_eq!(ser[0].z, [0.0, 0.5, 1.0]);
}

#[test]
fn flipped_storage_is_reoriented_to_the_radiological_view() {
    let dir = tempfile::tempdir().unwrap();
    let normal = CtSlice::pattern(3, 4, 2, 0.0);
    let mut flipped = normal.clone();
    // Same anatomy stored right-to-left: column c holds what the normal file has at 3 - c.
    flipped.orientation = [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    flipped.position[0] = normal.position[0] + 3.0 * normal.spacing[1];
    flipped.stored = (0..12).map(|i| normal.stored[(i / 4) * 4 + 3 - i % 4]).collect();
    let (a, b) = (dir.path().join("a.dcm"), dir.path().join("b.dcm"));
    normal.write(&a, EXPLICIT_LE);
    flipped.write(&b, EXPLICIT_LE);
    let (a, b) = (read(&a).unwrap().remove(0), read(&b).unwrap().remove(0));
    assert_eq!(a.pixels, b.pixels);
    assert_eq!(a.geometry.orientation, b.geometry.orientation);
    let (pa, pb) = (a.geometry.position.unwrap(), b.geometry.position.unwrap());
    assert!((pa[0] - pb[0]).abs() < 1e-9);
}

/// Writes a DICOM series and the same volume as NIfTI, as a converter would (RAS affine, rows
/// flipped so that +j points anterior), and checks they give the same slices.
#[test]
fn nifti_1_and_2_match_the_dicom_series() {
    let dir = tempfile::tempdir().unwrap();
    let (rows, cols, n) = (5usize, 6usize, 4usize);
    let mut dicom_slices = Vec::new();
    let mut order = vec![2, 0, 3, 1];
    for (k, z) in order.drain(..).enumerate() {
        let mut s = CtSlice::pattern(rows as u16, cols as u16, z, -50.0 + 2.5 * z as f64);
        s.rescale = Some((1.0, -1024.0));
        s.stored = s.stored.iter().map(|v| v + 1000).collect();
        s.write(&dir.path().join(format!("{k}.dcm")), EXPLICIT_LE);
        dicom_slices.push(s);
    }
    let from_dicom = series::assemble(ingest::collect_files(&[dir.path().to_path_buf()]).unwrap().iter().flat_map(|p| read(p).unwrap()).collect());
    assert_eq!(from_dicom.len(), 1);
    let ds = &from_dicom[0];
    // NIfTI: i = column (x: RAS x = -LPS x), j = rows flipped (anterior up), k = z.
    dicom_slices.sort_by(|a, b| a.position[2].total_cmp(&b.position[2]));
    let mut data = vec![0i16; rows * cols * n];
    for (k, s) in dicom_slices.iter().enumerate() {
        for r in 0..rows {
            for c in 0..cols {
                let j = rows - 1 - r;
                data[c + cols * (j + rows * k)] = s.stored[r * cols + c] as i16;
            }
        }
    }
    let s0 = &dicom_slices[0];
    let (dx, dy) = (s0.spacing[1], s0.spacing[0]);
    let vol = NiftiVol {
        dims: [cols, rows, n],
        data,
        slope: 1.0,
        inter: -1024.0,
        srow: [[-dx, 0.0, 0.0, -s0.position[0]], [0.0, dy, 0.0, -(s0.position[1] + dy * (rows - 1) as f64)], [0.0, 0.0, 2.5, s0.position[2]]],
    };
    for (name, bytes) in [("v1.nii", vol.bytes(1)), ("v2.nii", vol.bytes(2)), ("v1.nii.gz", gzip(&vol.bytes(1))), ("v2.nii.gz", gzip(&vol.bytes(2)))] {
        let p = dir.path().join("nii").join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        let ns = series::assemble(read(&p).unwrap());
        assert_eq!(ns.len(), 1, "{name}");
        let ns = &ns[0];
        assert_eq!(ns.slices.len(), n, "{name}");
        for (a, b) in ds.slices.iter().zip(&ns.slices) {
            assert_eq!((a.rows, a.cols), (b.rows, b.cols), "{name}");
            assert_eq!(a.hu(), b.hu(), "{name}");
            let (pa, pb) = (a.geometry.position.unwrap(), b.geometry.position.unwrap());
            assert!(pa.iter().zip(pb).all(|(x, y)| (x - y).abs() < 1e-4), "{name}: {pa:?} vs {pb:?}");
        }
        assert_eq!(ds.z, ns.z, "{name}");
        assert_eq!(ns.slices[0].kind, SourceKind::Nifti);
    }
}

#[test]
fn nifti_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let vol = NiftiVol { dims: [4, 4, 2], data: vec![0; 32], slope: 1.0, inter: 0.0, srow: [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]] };
    let mut bytes = vol.bytes(1);
    bytes.truncate(bytes.len() - 10);
    let p = dir.path().join("short.nii");
    std::fs::write(&p, &bytes).unwrap();
    assert!(reason(read(&p)).contains("truncated voxel data"));
    let p = dir.path().join("garbage.nii.gz");
    std::fs::write(&p, [0x1f, 0x8b, 8, 0, 1, 2, 3]).unwrap();
    assert!(read(&p).is_err());
    // A gzip bomb is stopped at the decompression cap.
    let big = gzip(&vec![0u8; 4 << 20]);
    let p = dir.path().join("bomb.nii.gz");
    std::fs::write(&p, big).unwrap();
    let mut opts = IngestOptions::default();
    opts.limits.max_decompressed_bytes = 1 << 20;
    assert!(matches!(ingest::read_file(&p, &opts), Err(IngestError::Rejected { reason, .. }) if reason.contains("decompressed size")));
}

/// Converts a DICOM series with dcm2niix (when installed) and compares slice for slice.
#[test]
fn dcm2niix_conversion_gives_the_same_hu() {
    if std::process::Command::new("dcm2niix").arg("-h").output().is_err() {
        tool_missing("dcm2niix", "apt-get install dcm2niix");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("dicom");
    std::fs::create_dir_all(&src).unwrap();
    for k in 0..6 {
        let mut s = CtSlice::pattern(32, 24, k, -40.0 + 3.0 * k as f64);
        s.rescale = Some((1.0, -1024.0));
        s.stored = s.stored.iter().map(|v| v + 1000).collect();
        s.write(&src.join(format!("IM{:03}.dcm", (k * 7) % 6)), EXPLICIT_LE);
    }
    let out = dir.path().join("nii");
    std::fs::create_dir_all(&out).unwrap();
    let st = std::process::Command::new("dcm2niix").args(["-z", "y", "-f", "vol", "-o"]).arg(&out).arg(&src).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    compare_dicom_and_nifti(&src, &out.join("vol.nii.gz"), 0.0);
}

/// Reads a DICOM folder and a NIfTI file and asserts equal slices (HU within `tol`).
pub fn compare_dicom_and_nifti(dicom_dir: &Path, nifti: &Path, tol: f32) {
    let files = ingest::collect_files(&[dicom_dir.to_path_buf()]).unwrap();
    let ds = series::assemble(files.iter().flat_map(|p| read(p).unwrap()).collect()).remove(0);
    let ns = series::assemble(read(nifti).unwrap()).remove(0);
    assert_eq!(ds.slices.len(), ns.slices.len());
    for (i, (a, b)) in ds.slices.iter().zip(&ns.slices).enumerate() {
        assert_eq!((a.rows, a.cols), (b.rows, b.cols));
        let d = a.hu().iter().zip(b.hu().iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(d <= tol, "slice {i}: max HU difference {d}");
    }
}

/// Regression test for the first `cargo fuzz` crash: a truncated RLE segment made dicom-rs's RLE
/// decoder index past its buffer (a panic). The crash input was a mutated copy of a shared data
/// file, so it is reproduced here from a generated fixture instead of being committed.
#[test]
fn truncated_rle_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let s = CtSlice::pattern(16, 16, 1, 0.0);
    let p = dir.path().join("rle.dcm");
    let mut frame = rle_encode_frame(&s.stored.iter().map(|&v| v as u16).collect::<Vec<_>>(), 256);
    frame.truncate(frame.len() - 40);
    let mut o = s.object();
    o.put(dicom_core::DataElement::new(
        dicom_dictionary_std::tags::PIXEL_DATA,
        dicom_core::VR::OB,
        dicom_core::value::Value::PixelSequence(dicom_core::value::PixelFragmentSequence::new(vec![0u32], vec![frame])),
    ));
    write_object(o, &p, RLE);
    let before = ingest::caught_decoder_panics();
    assert!(reason(read(&p)).contains("truncated data"), "{}", reason(read(&p)));
    assert_eq!(ingest::caught_decoder_panics(), before, "no decoder may panic");
}

#[test]
fn display_images_need_an_assumed_window_and_map_grey_onto_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("figure.png");
    {
        let f = std::fs::File::create(&path).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(f), 4, 2);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.write_header().unwrap().write_image_data(&[0, 51, 102, 255, 255, 0, 17, 34]).unwrap();
    }
    // Without a window (the daemon's case): refused with the reason.
    let why = reason(read(&path));
    assert!(why.contains("no Hounsfield units") && why.contains("--assume-window"), "{why}");
    // With the lung window: HU = -1350 + g * 1500/255.
    let opts = IngestOptions { display_window: Some((-600.0, 1500.0)), ..Default::default() };
    let s = ingest::read_file(&path, &opts).unwrap();
    assert_eq!((s.len(), s[0].rows, s[0].cols, s[0].kind), (1, 2, 4, SourceKind::Image));
    let hu = s[0].hu();
    assert!((hu[[0, 0]] + 1350.0).abs() < 1e-3 && (hu[[0, 3]] - 150.0).abs() < 1e-3, "{hu:?}");
    assert!((hu[[0, 1]] - (-1350.0 + 51.0 * 1500.0 / 255.0)).abs() < 1e-3);
    // The window's grey ramp comes back from the preprocessing window unchanged: g/255.
    let p = ctsentry::preprocess::Params { lung_mask: false, ..Default::default() };
    let w = |h: f32| ((f64::from(h) - (p.window_center - p.window_width / 2.0)) / p.window_width).clamp(0.0, 1.0);
    assert!((w(hu[[1, 2]]) - 17.0 / 255.0).abs() < 1e-6);
}

/// Every NIfTI voxel datatype a scanner export or a research tool writes is read, with
/// scl_slope/scl_inter applied: the same HU as the int16 volume.
#[test]
fn every_nifti_datatype_is_read_with_its_scaling() {
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<i16> = (0..4 * 3 * 2).map(|i| (i * 5 % 101) as i16).collect();
    let vol = NiftiVol { dims: [4, 3, 2], data: data.clone(), slope: 2.0, inter: -1024.0, srow: [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 2.0, 0.0]] };
    let int16 = vol.bytes(1);
    let p = dir.path().join("i16.nii");
    std::fs::write(&p, &int16).unwrap();
    let reference: Vec<Vec<f32>> = read(&p).unwrap().iter().map(|s| s.hu().into_raw_vec_and_offset().0).collect();
    assert_eq!(reference.len(), 2);
    type Enc = fn(i16) -> Vec<u8>;
    let kinds: [(&str, i16, i16, Enc); 10] = [
        ("uint8", 2, 8, |v| vec![v as u8]),
        ("int8", 256, 8, |v| vec![v as i8 as u8]),
        ("uint16", 512, 16, |v| (v as u16).to_le_bytes().to_vec()),
        ("int32", 8, 32, |v| i32::from(v).to_le_bytes().to_vec()),
        ("uint32", 768, 32, |v| (v as u32).to_le_bytes().to_vec()),
        ("int64", 1024, 64, |v| i64::from(v).to_le_bytes().to_vec()),
        ("uint64", 1280, 64, |v| (v as u64).to_le_bytes().to_vec()),
        ("float32", 16, 32, |v| f32::from(v).to_le_bytes().to_vec()),
        ("float64", 64, 64, |v| f64::from(v).to_le_bytes().to_vec()),
        ("int16", 4, 16, |v| v.to_le_bytes().to_vec()),
    ];
    for (name, code, bitpix, enc) in kinds {
        let mut bytes = int16[..352].to_vec();
        bytes[70..72].copy_from_slice(&code.to_le_bytes());
        bytes[72..74].copy_from_slice(&bitpix.to_le_bytes());
        bytes.extend(data.iter().flat_map(|v| enc(*v)));
        let p = dir.path().join(format!("{name}.nii"));
        std::fs::write(&p, &bytes).unwrap();
        let slices = read(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        let hu: Vec<Vec<f32>> = slices.iter().map(|s| s.hu().into_raw_vec_and_offset().0).collect();
        assert_eq!(hu, reference, "{name}");
    }
    // A NaN voxel (common outside the field of view in float volumes) is refused by name,
    // not passed on to become an engine fault.
    let mut bytes = int16[..352].to_vec();
    bytes[70..72].copy_from_slice(&16i16.to_le_bytes());
    bytes[72..74].copy_from_slice(&32i16.to_le_bytes());
    bytes.extend(data.iter().enumerate().flat_map(|(i, v)| if i == 5 { f32::NAN } else { f32::from(*v) }.to_le_bytes()));
    let p = dir.path().join("nan.nii");
    std::fs::write(&p, &bytes).unwrap();
    assert!(reason(read(&p)).contains("NaN or infinite voxels are not supported"));
}

/// Files pydicom reads are read: standard attributes that passed through a system that did not
/// know them (VR UN, in explicit VR) are decoded by their dictionary VR, and an image without
/// Bits Stored and High Bit gets the standard's defaults. The same HU as the clean file.
#[test]
fn un_encoded_attributes_and_missing_bit_depth_are_read_as_pydicom_reads_them() {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let dir = tempfile::tempdir().unwrap();
    let mut s = CtSlice::pattern(20, 16, 3, 12.5);
    s.rescale = Some((1.0, -1024.0));
    s.bits_stored = 16;
    s.stored = s.stored.iter().map(|v| v + 1024).collect();
    let clean = dir.path().join("clean.dcm");
    s.write(&clean, EXPLICIT_LE);
    let want = read(&clean).unwrap().remove(0);

    // The same object with Rows, Columns (US), Rescale Intercept (DS), the Series Instance UID
    // (UI) and Image Position (DS, 3 values) as UN bytes.
    let mut o = s.object();
    let un = |o: &mut dicom_object::InMemDicomObject, tag, bytes: Vec<u8>| o.put(DataElement::new(tag, VR::UN, PrimitiveValue::from(bytes)));
    un(&mut o, tags::ROWS, 20u16.to_le_bytes().to_vec());
    un(&mut o, tags::COLUMNS, 16u16.to_le_bytes().to_vec());
    un(&mut o, tags::RESCALE_INTERCEPT, b"-1024 ".to_vec());
    let uid = format!("{}\0", s.series_uid);
    un(&mut o, tags::SERIES_INSTANCE_UID, uid.as_bytes()[..uid.len() & !1].to_vec());
    let pos = s.position.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join("\\");
    let pos = if pos.len() % 2 == 1 { format!("{pos} ") } else { pos };
    un(&mut o, tags::IMAGE_POSITION_PATIENT, pos.into_bytes());
    let p = dir.path().join("un.dcm");
    write_object(o, &p, EXPLICIT_LE);
    let got = read(&p).unwrap_or_else(|e| panic!("{e}")).remove(0);
    assert_eq!((got.rows, got.cols), (want.rows, want.cols));
    assert_eq!(got.hu(), want.hu());
    assert_eq!(got.uids.series, want.uids.series);
    assert_eq!(got.geometry.position, want.geometry.position);

    // Without Bits Stored and High Bit.
    let mut o = s.object();
    o.remove_element(tags::BITS_STORED);
    o.remove_element(tags::HIGH_BIT);
    let p = dir.path().join("nobits.dcm");
    write_object(o, &p, EXPLICIT_LE);
    let got = read(&p).unwrap_or_else(|e| panic!("{e}")).remove(0);
    assert_eq!(got.hu(), want.hu());
    // The file itself is untouched.
    let again = dicom_object::open_file(&p).unwrap();
    assert!(again.element_opt(tags::BITS_STORED).unwrap().is_none());
}
