//! Inference engines behind one trait: a batch of preprocessed slices in, the probability and
//! the class activation map of each out. Each engine checks the graph against the manifest
//! when it loads and refuses a mismatch with a message that says what differs.

#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod tensorrt;
pub mod tract;

/// What an engine gives for a batch of `n` slices.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Probability of each slice, `[n]`.
    pub prob: Vec<f32>,
    /// Class activation map of each slice, `[n, 7, 7]` row-major.
    pub cam: Vec<f32>,
}

/// Side of the class activation map.
pub const CAM_SIDE: usize = 7;

/// Errors of engines.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The graph does not match the manifest, or cannot be loaded.
    #[error("{model}: {reason}")]
    Load {
        /// The model file.
        model: String,
        /// What differs or failed.
        reason: String,
    },
    /// Inference failed.
    #[error("inference: {0}")]
    Run(String),
}

/// The ONNX Runtime library the onnxruntime engine would load (configured path, else
/// `ORT_DYLIB_PATH`), or why there is none. Available in every build, for `doctor`.
pub fn onnxruntime_library(configured: Option<&std::path::Path>) -> Result<std::path::PathBuf, String> {
    let path = configured
        .map(std::path::Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from))
        .ok_or("no ONNX Runtime library: set engine.onnxruntime_library or ORT_DYLIB_PATH (pip's onnxruntime wheel has onnxruntime/capi/libonnxruntime.so.*)")?;
    if !path.is_file() {
        return Err(format!("the ONNX Runtime library {} does not exist", path.display()));
    }
    Ok(path)
}

/// The TensorRT engine's availability, in words (for `doctor`).
pub fn tensorrt_status(library: Option<&std::path::Path>) -> String {
    match tensorrt::library_version(library) {
        Ok(v) => format!("library TensorRT {} loads", tensorrt::version_string(v)),
        Err(e) => format!("not usable: {e}"),
    }
}

/// Checks that `batch` holds `n` slices of `3 × size × size` values; returns the slice length.
pub fn check_batch(batch: &[f32], n: usize, size: usize) -> Result<usize, EngineError> {
    let len = 3 * size * size;
    if batch.len() != n * len {
        return Err(EngineError::Run(format!("batch holds {} values, {n} slices need {}", batch.len(), n * len)));
    }
    Ok(len)
}

/// An inference engine.
pub trait Engine: Send + Sync {
    /// Short name (`tract`, `onnxruntime`, `tensorrt`).
    fn name(&self) -> &'static str;
    /// The arithmetic precision it runs in (`f32`, `fp16`, …), shown in results and `status`.
    fn precision(&self) -> &str {
        "f32"
    }
    /// Runs `n` slices (`n × 3 × size × size` values, NCHW).
    fn infer(&self, batch: &[f32], n: usize) -> Result<Output, EngineError>;
}
