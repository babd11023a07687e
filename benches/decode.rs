//! Decode throughput: files to Hounsfield-unit slices, one thread, on a folder of DICOM files
//! (default: the COVID-CT-MD P001 series in ../shared/data, JPEG lossless 512×512).
//!
//! `cargo bench --bench decode [-- FOLDER]`; compare with `scripts/bench_decode_pydicom.py`.

use std::time::Instant;

use ctsentry::ingest::{self, IngestOptions};

fn main() {
    let folder = std::env::args().skip(1).find(|a| !a.starts_with('-')).unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data/covid-ct-md/P001").to_string());
    let Ok(files) = ingest::collect_files(&[folder.clone().into()]) else {
        eprintln!("notice: {folder} not found; nothing to benchmark");
        return;
    };
    let opts = IngestOptions::default();
    let bytes: Vec<(std::path::PathBuf, Vec<u8>)> = files.iter().map(|f| (f.clone(), std::fs::read(f).unwrap())).collect();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        let mut n = 0;
        for (p, b) in &bytes {
            for s in ingest::dicom::read_bytes(p, b, &opts).unwrap() {
                std::hint::black_box(s.hu());
                n += 1;
            }
        }
        best = best.min(t.elapsed().as_secs_f64() / n as f64);
    }
    println!("ctsentry decode ({} files from {folder}, 1 thread, from memory): {:.1} slices/s ({:.2} ms/slice)", bytes.len(), 1.0 / best, best * 1e3);
}
