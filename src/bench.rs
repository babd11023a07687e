//! `ctsentry bench`: throughput per stage: preprocessing (CPU and CUDA) and inference (each
//! engine on the configured model). Decoding is measured by `cargo bench --bench decode`.

use std::time::Instant;

use serde::Serialize;

use crate::ingest::{Pixels, Rescale};
use crate::preprocess::conformance::{self, Rng};
use crate::preprocess::{cpu::Cpu, Input, Params, Preprocessor};

/// One measured preprocessing backend.
#[derive(Debug, Clone, Serialize)]
pub struct PreprocessBench {
    /// Backend name.
    pub backend: String,
    /// Largest |difference| from the reference on the conformance check.
    pub max_error_vs_reference: f32,
    /// Tolerance the backend must meet.
    pub tolerance: f32,
    /// Slices per batch.
    pub batch: usize,
    /// End to end (host slices in, host tensors out), slices/s.
    pub slices_per_s: f64,
    /// Kernel alone on device-resident data, slices/s (GPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_slices_per_s: Option<f64>,
    /// Bytes the kernel must move (input + mask + output) per second, GB/s (GPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_gb_per_s: Option<f64>,
    /// Device-to-device copy bandwidth (read + write), GB/s (GPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub copy_gb_per_s: Option<f64>,
    /// Device description (GPU only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// Synthetic 512×512 int16 CT-like slices with half-on lung masks (throughput does not depend
/// on content; correctness is checked separately by the conformance check).
pub struct Synthetic {
    pixels: Vec<Pixels>,
    masks: Vec<Vec<u8>>,
}

impl Synthetic {
    /// `n` slices from a fixed seed.
    pub fn new(n: usize) -> Synthetic {
        let mut rng = Rng::new(99);
        let side = 512;
        let pixels = (0..n).map(|_| Pixels::I16((0..side * side).map(|_| (rng.next_u64() % 3000) as i16 - 1024).collect())).collect();
        let masks = (0..n).map(|k| (0..side * side).map(|i| u8::from((i / side + k) % 64 < 32)).collect()).collect();
        Synthetic { pixels, masks }
    }

    /// The slices as preprocessor inputs.
    pub fn inputs(&self) -> Vec<Input<'_>> {
        self.pixels.iter().zip(&self.masks).map(|(p, m)| Input { rows: 512, cols: 512, pixels: p, rescale: Rescale { slope: 1.0, intercept: -1024.0 }, mask: Some(m) }).collect()
    }

    /// Bytes a kernel must move per slice: stored pixels, mask, float32 output.
    pub fn bytes_per_slice(params: &Params) -> usize {
        512 * 512 * 2 + 512 * 512 + params.slice_len() * 4
    }
}

fn end_to_end(pre: &dyn Preprocessor, params: &Params, inputs: &[Input<'_>], batch: usize, reps: usize) -> Result<f64, String> {
    let mut out = vec![0f32; batch * params.slice_len()];
    pre.run(params, &inputs[..batch], &mut out).map_err(|e| e.to_string())?;
    let t = Instant::now();
    for _ in 0..reps {
        pre.run(params, &inputs[..batch], &mut out).map_err(|e| e.to_string())?;
    }
    Ok((batch * reps) as f64 / t.elapsed().as_secs_f64())
}

/// Benchmarks the CPU preprocessor (all cores).
pub fn cpu(batch: usize) -> Result<PreprocessBench, String> {
    let params = Params::default();
    let err = conformance::check(&Cpu, conformance::CPU_TOLERANCE)?;
    let data = Synthetic::new(batch);
    let inputs = data.inputs();
    let rate = end_to_end(&Cpu, &params, &inputs, batch, 3)?;
    Ok(PreprocessBench {
        backend: "cpu".into(),
        max_error_vs_reference: err,
        tolerance: conformance::CPU_TOLERANCE,
        batch,
        slices_per_s: rate,
        kernel_slices_per_s: None,
        kernel_gb_per_s: None,
        copy_gb_per_s: None,
        device: None,
    })
}

/// Benchmarks the CUDA preprocessor: conformance, end to end, kernel alone, copy bandwidth.
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
pub fn cuda(batch: usize) -> Result<PreprocessBench, String> {
    let pre = &crate::preprocess::cuda::CudaPreprocessor::new(0).map_err(|e| e.to_string())?;
    let params = Params::default();
    let err = conformance::check(pre, conformance::GPU_TOLERANCE)?;
    let data = Synthetic::new(batch);
    let inputs = data.inputs();
    let rate = end_to_end(pre, &params, &inputs, batch, 5)?;
    let mut dev = pre.alloc_output(&params, batch).map_err(|e| e.to_string())?;
    pre.run_on_device(&params, &inputs, &mut dev).map_err(|e| e.to_string())?;
    let secs = pre.time_kernel(&params, &mut dev, 20).map_err(|e| e.to_string())?;
    let copy = pre.copy_bandwidth(1 << 30, 10).map_err(|e| e.to_string())?;
    let i = &pre.info;
    Ok(PreprocessBench {
        backend: "cuda".into(),
        max_error_vs_reference: err,
        tolerance: conformance::GPU_TOLERANCE,
        batch,
        slices_per_s: rate,
        kernel_slices_per_s: Some(batch as f64 / secs),
        kernel_gb_per_s: Some((batch * Synthetic::bytes_per_slice(&params)) as f64 / secs / 1e9),
        copy_gb_per_s: Some(copy / 1e9),
        device: Some(format!(
            "{} (sm_{}{}, driver API {}, {:.0} GiB)",
            i.name,
            i.compute_capability.0,
            i.compute_capability.1,
            i.driver_version,
            i.memory as f64 / (1u64 << 30) as f64
        )),
    })
}

/// Benchmarks the CUDA preprocessor: unavailable in this build.
#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
pub fn cuda(_batch: usize) -> Result<PreprocessBench, String> {
    Err(crate::preprocess::cuda::probe().err().map(|e| e.to_string()).unwrap_or_default())
}

/// One measured engine.
#[derive(Debug, Clone, Serialize)]
pub struct InferBench {
    /// Engine name.
    pub engine: String,
    /// The precision it ran in.
    pub precision: String,
    /// Model name and version.
    pub model: String,
    /// Slices per call.
    pub batch: usize,
    /// Slices per second.
    pub images_per_s: f64,
}

/// Runs `engine` on batches of `batch` zero-mean random slices for about `seconds` (after one
/// warm-up call) and reports images/s.
pub fn infer(engine: &dyn crate::engine::Engine, model: &str, size: usize, batch: usize, seconds: f64) -> Result<InferBench, String> {
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..batch * 3 * size * size).map(|_| (rng.next_u64() % 2000) as f32 / 1000.0 - 1.0).collect();
    engine.infer(&x, batch).map_err(|e| e.to_string())?;
    let t = Instant::now();
    let mut n = 0;
    while t.elapsed().as_secs_f64() < seconds || n == 0 {
        engine.infer(&x, batch).map_err(|e| e.to_string())?;
        n += batch;
    }
    Ok(InferBench { engine: engine.name().into(), precision: engine.precision().into(), model: model.into(), batch, images_per_s: n as f64 / t.elapsed().as_secs_f64() })
}
