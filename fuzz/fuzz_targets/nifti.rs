//! Fuzzes the NIfTI entry point (plain and gzip): slices or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static GLOBAL: ctsentry::alloc_guard::GuardedAlloc = ctsentry::alloc_guard::GuardedAlloc;

fuzz_target!(|data: &[u8]| {
    let mut limits = ctsentry::ingest::Limits::default();
    limits.max_decompressed_bytes = 64 << 20;
    if let Ok(slices) = ctsentry::ingest::nifti::read_bytes(std::path::Path::new("fuzz.nii"), data, &limits) {
        for s in &slices {
            let _ = s.hu();
        }
    }
});
