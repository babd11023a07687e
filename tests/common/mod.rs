//! Test fixtures written by the tests themselves: DICOM objects in several encodings and NIfTI
//! volumes, so that `cargo test` needs no external data.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctsentry::alert::protocol;
use serialport::{SerialPort, TTYPort};

use dicom_core::value::{DataSetSequence, PixelFragmentSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const ENHANCED_CT_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";
pub const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
pub const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
pub const EXPLICIT_BE: &str = "1.2.840.10008.1.2.2";
pub const DEFLATED_LE: &str = "1.2.840.10008.1.2.1.99";
pub const RLE: &str = "1.2.840.10008.1.2.5";

/// The `ctsentry` binary under test.
pub fn bin() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_ctsentry"))
}

/// A child process under test (a daemon, a PACS): killed and reaped when dropped, so that a
/// failed assert leaves nothing running.
pub struct Proc(pub std::process::Child);

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// A description of one synthetic CT slice.
#[derive(Clone)]
pub struct CtSlice {
    pub rows: u16,
    pub cols: u16,
    /// Stored values (signed unless `unsigned`).
    pub stored: Vec<i32>,
    pub unsigned: bool,
    pub bits_stored: u16,
    pub rescale: Option<(f64, f64)>,
    pub position: [f64; 3],
    pub orientation: [f64; 6],
    pub spacing: [f64; 2],
    pub modality: Option<&'static str>,
    pub series_uid: String,
    pub sop_uid: String,
    pub instance: i32,
}

impl CtSlice {
    /// A slice whose stored values are a deterministic pattern of `seed`.
    pub fn pattern(rows: u16, cols: u16, seed: i32, z: f64) -> CtSlice {
        let stored = (0..rows as i32 * cols as i32).map(|i| ((i * 37 + seed * 101) % 3000) - 1000).collect();
        CtSlice {
            rows,
            cols,
            stored,
            unsigned: false,
            bits_stored: 16,
            rescale: Some((1.0, 0.0)),
            position: [-100.0, -120.0, z],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            spacing: [0.8, 0.7],
            modality: Some("CT"),
            series_uid: "1.2.826.0.1.3680043.8.498.1".into(),
            sop_uid: format!("1.2.826.0.1.3680043.8.498.1.{seed}"),
            instance: seed,
        }
    }

    /// HU values the file must decode to (before any reorientation).
    pub fn expected_hu(&self) -> Vec<f32> {
        let (s, b) = self.rescale.unwrap_or((1.0, 0.0));
        self.stored.iter().map(|&v| (v as f64 * s + b) as f32).collect()
    }

    fn pixel_words(&self) -> Vec<u16> {
        self.stored.iter().map(|&v| v as u16).collect()
    }

    pub fn object(&self) -> InMemDicomObject {
        let mut o = InMemDicomObject::new_empty();
        let put_str = |o: &mut InMemDicomObject, tag: Tag, vr: VR, s: &str| {
            o.put(DataElement::new(tag, vr, PrimitiveValue::from(s)));
        };
        put_str(&mut o, tags::SOP_CLASS_UID, VR::UI, CT_IMAGE_STORAGE);
        put_str(&mut o, tags::SOP_INSTANCE_UID, VR::UI, &self.sop_uid);
        put_str(&mut o, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.8.498.9");
        put_str(&mut o, tags::SERIES_INSTANCE_UID, VR::UI, &self.series_uid);
        put_str(&mut o, tags::IMAGE_TYPE, VR::CS, "ORIGINAL\\PRIMARY\\AXIAL");
        put_str(&mut o, tags::PATIENT_NAME, VR::PN, "Doe^Jane");
        if let Some(m) = self.modality {
            put_str(&mut o, tags::MODALITY, VR::CS, m);
        }
        put_str(&mut o, tags::INSTANCE_NUMBER, VR::IS, &self.instance.to_string());
        let ds = |v: &[f64]| v.iter().map(|x| format!("{x}")).collect::<Vec<_>>().join("\\");
        put_str(&mut o, tags::IMAGE_POSITION_PATIENT, VR::DS, &ds(&self.position));
        put_str(&mut o, tags::IMAGE_ORIENTATION_PATIENT, VR::DS, &ds(&self.orientation));
        put_str(&mut o, tags::PIXEL_SPACING, VR::DS, &ds(&self.spacing));
        put_str(&mut o, tags::SLICE_LOCATION, VR::DS, &ds(&[self.position[2]]));
        put_str(&mut o, tags::SLICE_THICKNESS, VR::DS, "2");
        put_str(&mut o, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2");
        if let Some((s, b)) = self.rescale {
            put_str(&mut o, tags::RESCALE_SLOPE, VR::DS, &ds(&[s]));
            put_str(&mut o, tags::RESCALE_INTERCEPT, VR::DS, &ds(&[b]));
        }
        o.put(DataElement::new(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16)));
        o.put(DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(self.rows)));
        o.put(DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(self.cols)));
        o.put(DataElement::new(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16)));
        o.put(DataElement::new(tags::BITS_STORED, VR::US, PrimitiveValue::from(self.bits_stored)));
        o.put(DataElement::new(tags::HIGH_BIT, VR::US, PrimitiveValue::from(self.bits_stored - 1)));
        o.put(DataElement::new(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(u16::from(!self.unsigned))));
        o.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(self.pixel_words().into())));
        o
    }

    /// Writes the slice as a Part 10 file in transfer syntax `ts`.
    pub fn write(&self, path: &Path, ts: &str) {
        let mut o = self.object();
        if ts == RLE {
            let frame = rle_encode_frame(&self.pixel_words(), self.rows as usize * self.cols as usize);
            o.put(DataElement::new(tags::PIXEL_DATA, VR::OB, Value::PixelSequence(PixelFragmentSequence::new(vec![0u32], vec![frame]))));
        }
        let file = o.with_meta(FileMetaTableBuilder::new().transfer_syntax(ts)).expect("meta");
        file.write_to_file(path).expect("write fixture");
    }
}

/// A synthetic chest: body ellipse (soft tissue with noise), two lungs (−850 HU) with vessels,
/// a scanner table below, air around. Returns HU and the true lung mask.
pub fn chest(rows: usize, cols: usize, lesion: f64) -> (Vec<f32>, Vec<bool>) {
    let mut rng = ctsentry::preprocess::conformance::Rng::new(7);
    let (cy, cx) = (rows as f64 * 0.5, cols as f64 * 0.5);
    let mut hu = vec![-1000f32; rows * cols];
    let mut truth = vec![false; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let (y, x) = (r as f64, c as f64);
            let i = r * cols + c;
            let noise = (rng.unit() as f32 - 0.5) * 40.0;
            if ((y - cy) / (rows as f64 * 0.35)).powi(2) + ((x - cx) / (cols as f64 * 0.45)).powi(2) < 1.0 {
                hu[i] = 40.0 + noise;
            }
            for side in [-1.0, 1.0] {
                let lx = cx + side * cols as f64 * 0.2;
                if ((y - cy) / (rows as f64 * 0.25)).powi(2) + ((x - lx) / (cols as f64 * 0.15)).powi(2) < 1.0 {
                    hu[i] = -850.0 + noise;
                    truth[i] = true;
                    // vessels: small bright dots on a grid
                    if (r % 23 < 3) && (c % 29 < 3) {
                        hu[i] = 60.0;
                    }
                }
            }
            if r > (cy + rows as f64 * 0.38) as usize && r < (cy + rows as f64 * 0.42) as usize && c > cols / 10 && c < cols * 9 / 10 {
                hu[i] = 200.0; // table
            }
        }
    }
    if lesion > 0.0 {
        // A dense consolidation at the lateral edge of the left lung (image right).
        let (ly, lx) = (cy, cx + cols as f64 * 0.2 + cols as f64 * 0.15);
        for r in 0..rows {
            for c in 0..cols {
                let d = ((r as f64 - ly).powi(2) + (c as f64 - lx).powi(2)).sqrt();
                if d < cols as f64 * lesion && truth[r * cols + c] {
                    hu[r * cols + c] = 30.0;
                }
            }
        }
    }
    (hu, truth)
}

/// Encodes 16-bit samples as one RLE Lossless frame (two byte segments, high byte first),
/// with PackBits literal runs only — valid, if not compact.
pub fn rle_encode_frame(words: &[u16], n: usize) -> Vec<u8> {
    let planes: [Vec<u8>; 2] = [words.iter().map(|w| (w >> 8) as u8).collect(), words.iter().map(|w| *w as u8).collect()];
    let mut segments = Vec::new();
    for p in &planes {
        let mut seg = Vec::new();
        for chunk in p[..n].chunks(128) {
            seg.push((chunk.len() - 1) as u8);
            seg.extend_from_slice(chunk);
        }
        if seg.len() % 2 == 1 {
            seg.push(0x80); // no-op padding
        }
        segments.push(seg);
    }
    let mut out = vec![0u8; 64];
    out[0..4].copy_from_slice(&2u32.to_le_bytes());
    let mut offset = 64u32;
    for (i, s) in segments.iter().enumerate() {
        out[4 + 4 * i..8 + 4 * i].copy_from_slice(&offset.to_le_bytes());
        offset += s.len() as u32;
    }
    for s in segments {
        out.extend(s);
    }
    out
}

/// An enhanced CT object with `frames` frames, per-frame positions (z = 10·f) and per-frame
/// rescale intercepts (−1024 − f).
pub fn enhanced_ct(rows: u16, cols: u16, frames: usize) -> (InMemDicomObject, Vec<Vec<f32>>) {
    let base = CtSlice::pattern(rows, cols, 1, 0.0);
    let mut o = base.object();
    for t in [tags::IMAGE_POSITION_PATIENT, tags::IMAGE_ORIENTATION_PATIENT, tags::PIXEL_SPACING, tags::RESCALE_SLOPE, tags::RESCALE_INTERCEPT, tags::SLICE_LOCATION] {
        o.remove_element(t);
    }
    o.put(DataElement::new(tags::SOP_CLASS_UID, VR::UI, PrimitiveValue::from(ENHANCED_CT_STORAGE)));
    o.put(DataElement::new(tags::NUMBER_OF_FRAMES, VR::IS, PrimitiveValue::from(frames.to_string())));
    let item = |pairs: Vec<(Tag, VR, String)>| {
        let mut i = InMemDicomObject::new_empty();
        for (t, vr, v) in pairs {
            i.put(DataElement::new(t, vr, PrimitiveValue::from(v)));
        }
        i
    };
    let seq = |t: Tag, items: Vec<InMemDicomObject>| DataElement::new(t, VR::SQ, Value::from(DataSetSequence::new(items, Length::UNDEFINED)));
    let mut shared = InMemDicomObject::new_empty();
    shared.put(seq(tags::PLANE_ORIENTATION_SEQUENCE, vec![item(vec![(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, "1\\0\\0\\0\\1\\0".into())])]));
    shared.put(seq(tags::PIXEL_MEASURES_SEQUENCE, vec![item(vec![(tags::PIXEL_SPACING, VR::DS, "0.5\\0.5".into()), (tags::SLICE_THICKNESS, VR::DS, "10".into())])]));
    let mut per_frame = Vec::new();
    let mut pixels: Vec<u16> = Vec::new();
    let mut expected = Vec::new();
    // Frames are stored head first (z descending) to exercise ordering.
    for f in 0..frames {
        let z = 10.0 * (frames - 1 - f) as f64;
        let mut fg = InMemDicomObject::new_empty();
        fg.put(seq(tags::PLANE_POSITION_SEQUENCE, vec![item(vec![(tags::IMAGE_POSITION_PATIENT, VR::DS, format!("0\\0\\{z}"))])]));
        let intercept = -1024.0 - f as f64;
        fg.put(seq(
            tags::PIXEL_VALUE_TRANSFORMATION_SEQUENCE,
            vec![item(vec![(tags::RESCALE_SLOPE, VR::DS, "1".into()), (tags::RESCALE_INTERCEPT, VR::DS, format!("{intercept}"))])],
        ));
        per_frame.push(fg);
        let stored: Vec<i32> = (0..rows as i32 * cols as i32).map(|i| (i * 7 + f as i32 * 13) % 2000).collect();
        pixels.extend(stored.iter().map(|&v| v as u16));
        expected.push(stored.iter().map(|&v| (v as f64 + intercept) as f32).collect());
    }
    o.put(seq(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]));
    o.put(seq(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    o.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(pixels.into())));
    (o, expected)
}

/// Writes an object with file meta in transfer syntax `ts`.
pub fn write_object(o: InMemDicomObject, path: &Path, ts: &str) {
    o.with_meta(FileMetaTableBuilder::new().transfer_syntax(ts)).expect("meta").write_to_file(path).expect("write");
}

/// A NIfTI volume description: int16 voxels in F order (x fastest), with a RAS affine.
pub struct NiftiVol {
    pub dims: [usize; 3],
    pub data: Vec<i16>,
    pub slope: f64,
    pub inter: f64,
    /// srow_x, srow_y, srow_z (RAS).
    pub srow: [[f64; 4]; 3],
}

impl NiftiVol {
    /// Serialises as NIfTI-1 (`version` 1) or NIfTI-2 (`version` 2), little endian, sform set.
    pub fn bytes(&self, version: u8) -> Vec<u8> {
        let mut h = Vec::new();
        let put = |h: &mut Vec<u8>, off: usize, b: &[u8]| {
            if h.len() < off + b.len() {
                h.resize(off + b.len(), 0);
            }
            h[off..off + b.len()].copy_from_slice(b);
        };
        let [nx, ny, nz] = self.dims;
        if version == 1 {
            put(&mut h, 0, &348i32.to_le_bytes());
            let dim: [i16; 8] = [3, nx as i16, ny as i16, nz as i16, 1, 1, 1, 1];
            for (i, d) in dim.iter().enumerate() {
                put(&mut h, 40 + 2 * i, &d.to_le_bytes());
            }
            put(&mut h, 70, &4i16.to_le_bytes()); // int16
            put(&mut h, 72, &16i16.to_le_bytes());
            let pix = [1.0f32, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
            for (i, p) in pix.iter().enumerate() {
                put(&mut h, 76 + 4 * i, &p.to_le_bytes());
            }
            put(&mut h, 108, &352f32.to_le_bytes());
            put(&mut h, 112, &(self.slope as f32).to_le_bytes());
            put(&mut h, 116, &(self.inter as f32).to_le_bytes());
            put(&mut h, 252, &0i16.to_le_bytes());
            put(&mut h, 254, &1i16.to_le_bytes());
            for r in 0..3 {
                for c in 0..4 {
                    put(&mut h, 280 + 16 * r + 4 * c, &(self.srow[r][c] as f32).to_le_bytes());
                }
            }
            put(&mut h, 344, b"n+1\0");
            h.resize(352, 0);
        } else {
            put(&mut h, 0, &540i32.to_le_bytes());
            put(&mut h, 4, b"n+2\0\r\n\x1a\n");
            put(&mut h, 12, &4i16.to_le_bytes());
            put(&mut h, 14, &16i16.to_le_bytes());
            let dim: [i64; 8] = [3, nx as i64, ny as i64, nz as i64, 1, 1, 1, 1];
            for (i, d) in dim.iter().enumerate() {
                put(&mut h, 16 + 8 * i, &d.to_le_bytes());
            }
            for i in 0..8 {
                put(&mut h, 104 + 8 * i, &1.0f64.to_le_bytes());
            }
            put(&mut h, 168, &544i64.to_le_bytes());
            put(&mut h, 176, &self.slope.to_le_bytes());
            put(&mut h, 184, &self.inter.to_le_bytes());
            put(&mut h, 344, &0i32.to_le_bytes());
            put(&mut h, 348, &1i32.to_le_bytes());
            for r in 0..3 {
                for c in 0..4 {
                    put(&mut h, 400 + 32 * r + 8 * c, &self.srow[r][c].to_le_bytes());
                }
            }
            h.resize(544, 0);
        }
        for v in &self.data {
            h.extend_from_slice(&v.to_le_bytes());
        }
        h
    }
}

/// gzip-compresses bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Whether this run is CI's (`CI` set, not "false"), where `.ci/run` installed every tool and
/// data set the tests use: a missing one is then a failure, not a skip.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// Reports a missing external tool: a notice (the caller skips) outside CI, a failure under CI.
pub fn tool_missing(what: &str, install: &str) {
    assert!(!under_ci(), "{what} is missing under CI, where .ci/run installs it ({install})");
    eprintln!("notice: {what} is not installed ({install}); skipping");
}

/// The shared data folder, when present; prints a notice when it is not. Under CI (`CI` set, as
/// `.ci/run` runs beside a copy of shared/) a missing folder fails the test instead: a skip must
/// not pass for a run in a lane that is supposed to have the data.
pub fn shared_data(what: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if p.join(what).exists() {
        Some(p)
    } else if under_ci() {
        panic!("../shared/data/{what} is absent, and CI is set: CI runs beside shared/ and must not skip");
    } else {
        eprintln!("notice: ../shared/data/{what} is absent; skipping this test");
        None
    }
}

/// Copies the tiny test model into `dir` with its manifest's lung mask turned off (synthetic
/// slices have no lungs); returns the model path.
pub fn tiny_model_unmasked(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/testdata/tiny-densenet.onnx");
    let model = dir.join("tiny.onnx");
    std::fs::copy(&src, &model).unwrap();
    let manifest = std::fs::read_to_string(src.with_extension("toml")).unwrap().replace("lung_mask = true", "lung_mask = false");
    std::fs::write(model.with_extension("toml"), manifest).unwrap();
    model
}

// Alert peers: a pseudo-terminal for the serial line, a sysfs-shaped LED tree.

/// A pseudo-terminal pair whose device is reachable through the symlink `link` (as
/// /dev/serial/by-id/... names a USB adapter): returns the master side.
pub fn plug(link: &Path) -> TTYPort {
    let (master, slave) = TTYPort::pair().unwrap();
    let name = slave.name().unwrap();
    drop(slave);
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(&name, link).unwrap();
    master
}

/// Reads what the master side of a pty holds, waiting up to 50 ms for something.
///
/// Not `TTYPort::read`: it polls first and gives up on POLLHUP even when POLLIN is set too, so
/// the lines a daemon wrote just before it closed the port (STOPPING, then exit) could never be
/// read once it had gone. Read here, they can: the kernel keeps them for the master.
fn read_master(port: &TTYPort, b: &mut [u8]) -> usize {
    use std::os::fd::AsRawFd;
    let fd = port.as_raw_fd();
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd; `fd` stays open while `port` is borrowed.
    let ready = unsafe { libc::poll(&mut p, 1, 50) };
    if ready != 1 || p.revents & libc::POLLIN == 0 {
        if p.revents & libc::POLLHUP != 0 {
            // The far end is closed and nothing is left to read: poll returns at once.
            std::thread::sleep(Duration::from_millis(20));
        }
        return 0;
    }
    // SAFETY: reads into `b`, at most its length.
    let k = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
    usize::try_from(k).unwrap_or(0)
}

/// Reads whole lines from `port` until `n` lines or `within` passed; each line is parsed and
/// its checksum verified (panics otherwise). Returns the fields of each. Lines written before
/// the far end closed the port are read too.
pub fn read_lines(port: &mut TTYPort, buf: &mut Vec<u8>, n: usize, within: Duration) -> Vec<Vec<String>> {
    let t = Instant::now();
    let mut out = Vec::new();
    while out.len() < n && t.elapsed() < within {
        let mut b = [0u8; 256];
        let k = read_master(port, &mut b);
        buf.extend_from_slice(&b[..k]);
        while let Some(i) = buf.iter().position(|&c| c == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let text = String::from_utf8(line).unwrap();
            assert!(text.ends_with("\r\n"), "{text:?}");
            let f = protocol::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e:?}"));
            assert_eq!(f[0], "CTSEN");
            out.push(f.iter().map(|s| s.to_string()).collect());
        }
    }
    out
}

/// A /sys/class/leds-shaped tree: `name/{brightness,max_brightness,trigger,delay_on,delay_off}`.
pub fn led_tree(root: &Path) -> [PathBuf; 3] {
    ["green", "red", "amber"].map(|c| {
        let d = root.join(format!("ctsentry:{c}"));
        std::fs::create_dir_all(&d).unwrap();
        for (f, v) in [("brightness", "0"), ("max_brightness", "255"), ("trigger", "none"), ("delay_on", "0"), ("delay_off", "0")] {
            std::fs::write(d.join(f), v).unwrap();
        }
        d
    })
}

/// What the three LEDs of a [`led_tree`] show: `on`, `off` or `blink`.
pub fn look(dirs: &[PathBuf; 3]) -> [String; 3] {
    // A sink writing while we read (a plain file, unlike sysfs, is briefly empty between the
    // truncation and the write): read again a moment later.
    for _ in 0..100 {
        if let Some(seen) = look_once(dirs) {
            return seen;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    panic!("LED files stay unreadable: {dirs:?}")
}

fn look_once(dirs: &[PathBuf; 3]) -> Option<[String; 3]> {
    let mut out: [String; 3] = Default::default();
    for (k, d) in dirs.iter().enumerate() {
        let r = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        out[k] = match r("trigger").as_str() {
            "timer" => {
                if (r("delay_on").as_str(), r("delay_off").as_str()) != ("500", "500") {
                    return None;
                }
                "blink".to_string()
            }
            "none" => match r("brightness").as_str() {
                "255" => "on".to_string(),
                "0" => "off".to_string(),
                _ => return None,
            },
            "" => return None,
            t => panic!("trigger {t}"),
        };
    }
    Some(out)
}
