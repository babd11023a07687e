//! Fuzzes the DICOM entry point: any bytes must give slices or an error, never a panic or an
//! unbounded allocation.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static GLOBAL: ctsentry::alloc_guard::GuardedAlloc = ctsentry::alloc_guard::GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    let opts = ctsentry::ingest::IngestOptions::default();
    if let Ok(slices) = ctsentry::ingest::dicom::read_bytes(std::path::Path::new("fuzz.dcm"), data, &opts) {
        for s in &slices {
            let _ = s.hu();
        }
    }
});
