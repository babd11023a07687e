//! Preprocessing: every preprocessor against the reference, lung segmentation on phantoms, and
//! `prep` end to end.

mod common;

use ctsentry::ingest::{self, IngestOptions};
use ctsentry::preprocess::{conformance, cpu::Cpu, lung, reference::Reference, Input, Params, Preprocessor};

/// The same test body for every preprocessor available in this build.
macro_rules! conformance_test {
    ($name:ident, $pre:expr, $tol:expr) => {
        #[test]
        fn $name() {
            let Some(pre) = $pre else { return };
            let worst = conformance::check(&pre, $tol).unwrap();
            println!("{}: max |error| against the reference = {worst:e}", pre.name());
        }
    };
}

conformance_test!(cpu_matches_reference, Some(Cpu), conformance::CPU_TOLERANCE);

#[test]
fn the_reference_itself_is_right_on_hand_computed_cases() {
    // 2×2 → 1×1 averages the windowed values; 1×1 → 2×2 repeats the pixel.
    let p = Params { window_center: 0.0, window_width: 100.0, size: 1, mean: [0.0; 3], std: [1.0; 3], lung_mask: false };
    let px = ingest::Pixels::I16(vec![-50, 0, 50, 1000]);
    let input = Input { rows: 2, cols: 2, pixels: &px, rescale: ingest::Rescale::default(), mask: None };
    let mut out = vec![0f32; 3];
    Reference.run(&p, &[input], &mut out).unwrap();
    assert_eq!(out, vec![(0.0 + 0.5 + 1.0 + 1.0) / 4.0; 3]);
    let mask = [1u8, 0, 1, 1];
    let masked = Input { mask: Some(&mask), ..input };
    Reference.run(&p, &[masked], &mut out).unwrap();
    assert_eq!(out, vec![(0.0 + 0.0 + 1.0 + 1.0) / 4.0; 3]);
    let p2 = Params { size: 2, mean: [0.5, 0.0, 0.25], std: [0.5, 1.0, 0.25], ..p };
    let one = ingest::Pixels::U16(vec![25]);
    let single = Input { rows: 1, cols: 1, pixels: &one, rescale: ingest::Rescale { slope: 2.0, intercept: -25.0 }, mask: None };
    let mut out = vec![0f32; 12];
    Reference.run(&p2, &[single], &mut out).unwrap();
    // hu = 25, v = 0.75 → channels (0.75−0.5)/0.5, 0.75, (0.75−0.25)/0.25.
    assert_eq!(out, [[0.5f32; 4], [0.75; 4], [2.0; 4]].concat());
}

#[test]
fn shapes_are_checked() {
    let px = ingest::Pixels::I16(vec![0; 4]);
    let input = Input { rows: 2, cols: 3, pixels: &px, rescale: ingest::Rescale::default(), mask: None };
    let mut out = vec![0f32; Params::default().slice_len()];
    assert!(Cpu.run(&Params::default(), &[input], &mut out).is_err());
    assert!(Cpu.run(&Params::default(), &[], &mut out).is_err());
}

fn iou(mask: &[u8], truth: &[bool]) -> f64 {
    let inter = mask.iter().zip(truth).filter(|(m, t)| **m != 0 && **t).count() as f64;
    let union = mask.iter().zip(truth).filter(|(m, t)| **m != 0 || **t).count() as f64;
    inter / union
}

#[test]
fn lungs_of_a_phantom_chest_are_found() {
    for (rows, cols) in [(512, 512), (301, 420)] {
        let (hu, truth) = common::chest(rows, cols, 0.0);
        let m = lung::segment(&hu, rows, cols);
        assert_eq!(m, lung::segment_with(&hu, rows, cols, lung::Morphology::DistanceTransform), "{rows}×{cols}: the fast morphology differs");
        let true_fraction = truth.iter().filter(|&&t| t).count() as f32 / (rows * cols) as f32;
        // Every lung pixel is inside; nothing beyond the pleural rim is.
        let covered = m.mask.iter().zip(&truth).filter(|(m, t)| **m != 0 && **t).count() as f64 / truth.iter().filter(|&&t| t).count() as f64;
        assert!(covered > 0.995, "{rows}×{cols}: {covered} of the lungs covered");
        let rim = lung::dilate(&truth, rows, cols, (lung::RIM_RADIUS_FRACTION * rows.max(cols) as f64) as f32 + 1.5);
        assert!(m.mask.iter().zip(&rim).all(|(m, r)| *m == 0 || *r), "{rows}×{cols}: mask beyond the rim");
        assert!(iou(&m.mask, &rim) > 0.95, "{rows}×{cols}: IoU with lungs + rim {}", iou(&m.mask, &rim));
        assert!(m.fraction >= true_fraction && m.fraction < true_fraction * 1.15, "{} vs {true_fraction}", m.fraction);
        assert!(m.fraction > 0.10);
    }
}

#[test]
fn a_consolidation_at_the_lung_edge_stays_inside() {
    let (rows, cols) = (512, 512);
    // A pleural lesion of 1% of the image side (about 4 mm) is inside whole; one of 2% mostly.
    for (radius, min_share) in [(0.01, 1.0), (0.02, 0.85)] {
        let (hu, truth) = common::chest(rows, cols, radius);
        let m = lung::segment(&hu, rows, cols);
        assert_eq!(m, lung::segment_with(&hu, rows, cols, lung::Morphology::DistanceTransform), "the fast morphology differs");
        let lesion: Vec<usize> = (0..rows * cols).filter(|&i| truth[i] && hu[i] == 30.0).collect();
        assert!(lesion.len() > 30);
        let inside = lesion.iter().filter(|&&i| m.mask[i] != 0).count();
        let share = inside as f64 / lesion.len() as f64;
        println!("edge lesion of radius {radius}: {inside} of {} pixels inside the mask", lesion.len());
        assert!(share >= min_share, "radius {radius}: {inside} of {} lesion pixels inside", lesion.len());
    }
}

#[test]
fn slices_without_lung_have_a_tiny_fraction() {
    let (rows, cols) = (512, 512);
    // Upper abdomen: body with a stomach gas bubble and bowel gas, no lung.
    let mut hu = vec![-1000f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let (y, x) = (r as f64 - 256.0, c as f64 - 256.0);
            if (y / 180.0).powi(2) + (x / 230.0).powi(2) < 1.0 {
                hu[r * cols + c] = 40.0;
            }
            if (y + 60.0).powi(2) + (x - 90.0).powi(2) < 45.0f64.powi(2) {
                hu[r * cols + c] = -1000.0; // stomach gas: air
            }
            if (y - 40.0).powi(2) + (x + 60.0).powi(2) < 12.0f64.powi(2) {
                hu[r * cols + c] = -995.0; // bowel gas
            }
        }
    }
    let m = lung::segment(&hu, rows, cols);
    assert!(m.fraction < 0.01, "abdomen: {}", m.fraction);
    // Neck: the trachea is a small air ring.
    let mut neck = vec![-1000f32; rows * cols];
    for r in 0..rows {
        for c in 0..cols {
            let (y, x) = (r as f64 - 256.0, c as f64 - 256.0);
            if (y / 90.0).powi(2) + (x / 110.0).powi(2) < 1.0 {
                neck[r * cols + c] = if y.powi(2) + (x).powi(2) < 9.0f64.powi(2) { -900.0 } else { 50.0 };
            }
        }
    }
    assert!(lung::segment(&neck, rows, cols).fraction < 0.01);
    // Nothing but air.
    assert_eq!(lung::segment(&vec![-1000.0; 64 * 64], 64, 64).fraction, 0.0);
}

#[test]
fn prep_writes_tensors_index_and_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    std::fs::create_dir_all(root.join("a")).unwrap();
    for k in 0..3 {
        let mut s = common::CtSlice::pattern(40, 48, k, 10.0 - 5.0 * k as f64);
        s.rescale = Some((1.0, -1024.0));
        s.write(&root.join(format!("a/{k}.dcm")), common::EXPLICIT_LE);
    }
    std::fs::write(root.join("a/notes.txt"), "x").unwrap();
    std::fs::write(dir.path().join("labels.csv"), "file,covid,other\na/0.dcm,1,x\na/2.dcm,0,y\n").unwrap();
    let out = dir.path().join("out");
    let st = common::bin().args(["prep", "--png", "--size", "32", "--labels"]).arg(dir.path().join("labels.csv")).arg("--out").arg(&out).arg(&root).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let npy = std::fs::read(out.join("tensors.npy")).unwrap();
    assert!(String::from_utf8_lossy(&npy[..128]).contains("'shape': (3, 3, 32, 32)"));
    assert_eq!(npy.len(), 128 + 3 * 3 * 32 * 32 * 4);
    let index = std::fs::read_to_string(out.join("index.csv")).unwrap();
    let lines: Vec<&str> = index.lines().collect();
    // Feet to head: slice 2 (z = 0) first.
    assert_eq!(lines[0], "file,slice_index,z,lung_fraction,label");
    assert!(lines[1].starts_with("a/2.dcm,0,0.000000,"), "{}", lines[1]);
    assert!(lines[1].ends_with(",0"));
    assert!(lines[3].starts_with("a/0.dcm,2,1.000000,") && lines[3].ends_with(",1"));
    assert!(lines[2].ends_with(','), "unlabelled row has an empty label: {}", lines[2]);
    assert!(std::fs::read_to_string(out.join("skipped.csv")).unwrap().contains("a/notes.txt"));
    assert!(out.join("png/000002.png").exists());
    let params: Params = serde_json::from_str(&std::fs::read_to_string(out.join("params.json")).unwrap()).unwrap();
    assert_eq!(params.size, 32);
    // The first row equals preprocessing the slice directly.
    let s = ingest::read_file(&root.join("a/2.dcm"), &IngestOptions::default()).unwrap().remove(0);
    let (direct, _) = ctsentry::preprocess::prepare(&Cpu, &params, &s).unwrap();
    let row: Vec<f32> = npy[128..128 + 3 * 32 * 32 * 4].chunks(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_eq!(row, direct.tensor);
}

/// The CUDA preprocessor, when this build has it and a device is usable: the same conformance
/// body as the CPU one, at the GPU tolerance.
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
fn cuda_preprocessor() -> Option<ctsentry::preprocess::cuda::CudaPreprocessor> {
    match ctsentry::preprocess::cuda::CudaPreprocessor::new(0) {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("notice: skipping the CUDA preprocessor test: {e}");
            None
        }
    }
}

#[cfg(any(feature = "cuda", feature = "cuda-12"))]
conformance_test!(cuda_matches_reference, cuda_preprocessor(), conformance::GPU_TOLERANCE);

/// The kernels compile with NVRTC for the architectures we support (needs only libnvrtc, no GPU).
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
#[test]
fn cuda_kernels_compile() {
    for arch in ["compute_87", "compute_90", "compute_100"] {
        match ctsentry::preprocess::cuda::compile_kernels(arch) {
            Ok(ptx) => assert!(ptx.contains("preprocess_f32") && ptx.contains("preprocess_f16"), "{arch}"),
            Err(e) if e.0.contains("cannot be loaded") => {
                common::tool_missing(&format!("NVRTC ({e})"), "the PyPI wheel nvidia-cuda-nvrtc, as .ci/run fetches it");
                return;
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// IEEE half bits to f32.
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
fn half_to_f32(h: u16) -> f32 {
    let (sign, exp, frac) = ((h >> 15) as u32, ((h >> 10) & 0x1f) as i32, (h & 0x3ff) as f32);
    let v = match exp {
        0 => frac * 2f32.powi(-24),
        31 => f32::INFINITY,
        e => (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    };
    if sign == 1 {
        -v
    } else {
        v
    }
}

/// The float16 output (for FP16 engines) equals the reference within half precision.
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
#[test]
fn cuda_f16_output_matches_reference() {
    let Some(pre) = cuda_preprocessor() else { return };
    let params = Params::default();
    let cases = conformance::cases(5, 6);
    let inputs: Vec<Input<'_>> = cases.iter().map(conformance::Case::input).collect();
    let mut want = vec![0f32; inputs.len() * params.slice_len()];
    Reference.run(&params, &inputs, &mut want).unwrap();
    let mut dev = pre.stream().alloc_zeros::<u16>(want.len()).unwrap();
    pre.run_on_device_f16(&params, &inputs, &mut dev).unwrap();
    let got = pre.stream().clone_dtoh(&dev).unwrap();
    let worst = want.iter().zip(&got).map(|(a, &b)| (a - half_to_f32(b)).abs() / a.abs().max(1.0)).fold(0f32, f32::max);
    println!("cuda f16: max relative error against the reference = {worst:e}");
    assert!(worst <= 1e-3, "{worst}");
}
