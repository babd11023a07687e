//! Preprocessing throughput (slices/s): one thread and all cores, with and without the lung
//! mask, on the COVID-CT-MD P001 series when ../shared/data is present, else on synthetic
//! 512×512 slices. `cargo bench --bench preprocess`.

use std::time::Instant;

use ctsentry::ingest::{self, IngestOptions, Pixels, Rescale, Slice};
use ctsentry::preprocess::{cpu::Cpu, mask_for, Input, Params, Preprocessor};
use rayon::prelude::*;

fn slices() -> (Vec<Slice>, &'static str) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/covid-ct-md/P001");
    if let Ok(files) = ingest::collect_files(&[dir.into()]) {
        let s: Vec<Slice> = files.iter().flat_map(|f| ingest::read_file(f, &IngestOptions::default()).unwrap()).collect();
        return (s, "COVID-CT-MD P001");
    }
    let mut rng = ctsentry::preprocess::conformance::Rng::new(1);
    let s = (0..64)
        .map(|_| Slice {
            source: "synthetic".into(),
            frame: 0,
            rows: 512,
            cols: 512,
            pixels: Pixels::I16((0..512 * 512).map(|_| (rng.next_u64() % 2000) as i16 - 1000).collect()),
            rescale: Rescale::default(),
            geometry: Default::default(),
            uids: Default::default(),
            modality: None,
            image_type: vec![],
            transfer_syntax: None,
            kind: ingest::SourceKind::Dicom,
        })
        .collect();
    (s, "synthetic 512×512")
}

fn work(s: &Slice, params: &Params, out: &mut [f32]) {
    let mask = mask_for(params, s);
    Cpu.run(params, &[Input::of(s, mask.as_ref().map(|m| m.mask.as_slice()))], out).unwrap();
}

fn main() {
    use ctsentry::preprocess::lung::{segment_slice, segment_with, Morphology};
    let (slices, what) = slices();
    println!("preprocessing {} slices of {what} ({} cores)", slices.len(), rayon::current_num_threads());
    // The lung mask alone, one thread: the implementation in use against the first one.
    let time = |f: &dyn Fn(&Slice) -> ctsentry::preprocess::lung::LungMask| {
        let t = Instant::now();
        let masks: Vec<_> = slices.iter().map(f).collect();
        (t.elapsed().as_secs_f64() * 1e3 / slices.len() as f64, masks)
    };
    let (fast, a) = time(&|s| segment_slice(s));
    let (reference, b) = time(&|s| segment_with(&s.hu().into_raw_vec_and_offset().0, s.rows, s.cols, Morphology::DistanceTransform));
    assert!(a == b, "the masks differ");
    println!("  lung mask alone: {fast:.2} ms/slice on 1 thread; first implementation {reference:.2} ms ({:.1}x); identical masks", reference / fast);
    for mask in [false, true] {
        let params = Params { lung_mask: mask, ..Params::default() };
        let mut out = vec![0f32; params.slice_len()];
        let t = Instant::now();
        for s in &slices {
            work(s, &params, &mut out);
        }
        let one = slices.len() as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        slices.par_iter().for_each_init(|| vec![0f32; params.slice_len()], |out, s| work(s, &params, out));
        let all = slices.len() as f64 / t.elapsed().as_secs_f64();
        println!("  lung mask {:<5}: {one:8.1} slices/s on 1 thread ({:.2} ms/slice), {all:8.1} slices/s on all cores", if mask { "on" } else { "off" }, 1e3 / one);
    }
}
