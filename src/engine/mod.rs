//! Inference engines behind one trait: a batch of preprocessed slices in, the probability and
//! the class activation map of each out. Each engine checks the graph against the manifest
//! when it loads and refuses a mismatch with a message that says what differs.

#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
pub mod openvino;
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

impl Output {
    /// An empty output with room for `n` slices.
    pub fn with_capacity(n: usize) -> Output {
        Output { prob: Vec::with_capacity(n), cam: Vec::with_capacity(n * CAM_SIDE * CAM_SIDE) }
    }

    /// Appends one engine call's outputs for `k` slices: the tensors named `prob_name` and
    /// `cam_name`, refused when their sizes do not fit `k`.
    pub fn append(&mut self, k: usize, (prob_name, prob): (&str, &[f32]), (cam_name, cam): (&str, &[f32])) -> Result<(), EngineError> {
        if prob.len() != k {
            return Err(EngineError::Run(format!("output {prob_name} holds {} values for {k} slices", prob.len())));
        }
        if cam.len() != k * CAM_SIDE * CAM_SIDE {
            return Err(EngineError::Run(format!("output {cam_name} holds {} values for {k} slices", cam.len())));
        }
        self.prob.extend_from_slice(prob);
        self.cam.extend_from_slice(cam);
        Ok(())
    }

    /// Checks what an engine returned for `n` slices: `n` probabilities, each finite and in
    /// [0, 1], and `n` finite 7 × 7 maps. (A NaN must never reach a verdict or the journal.)
    pub fn check(&self, n: usize) -> Result<(), String> {
        if self.prob.len() != n || self.cam.len() != n * CAM_SIDE * CAM_SIDE {
            return Err(format!("{} probabilities and {} map values for {n} slices", self.prob.len(), self.cam.len()));
        }
        if let Some((i, p)) = self.prob.iter().enumerate().find(|(_, p)| !(p.is_finite() && (0.0..=1.0).contains(*p))) {
            return Err(format!("probability {p} of slice {i} is not in [0, 1]"));
        }
        if self.cam.iter().any(|v| !v.is_finite()) {
            return Err("a class activation map holds a value that is not finite".into());
        }
        Ok(())
    }
}

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
    /// Why it runs that precision, where the engine chose it (`engine.precision = "auto"` on
    /// OpenVINO: the CPU's bf16, the int8 variant's parity).
    fn precision_reason(&self) -> Option<&str> {
        None
    }
    /// Runs `n` slices (`n × 3 × size × size` values, NCHW).
    fn infer(&self, batch: &[f32], n: usize) -> Result<Output, EngineError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_output_is_checked_before_use() {
        let ok = Output { prob: vec![0.0, 1.0], cam: vec![0.5; 2 * 49] };
        assert_eq!(ok.check(2), Ok(()));
        assert!(ok.check(3).unwrap_err().contains("for 3 slices"));
        let nan = Output { prob: vec![f32::NAN, 0.5], cam: vec![0.0; 98] };
        assert!(nan.check(2).unwrap_err().contains("slice 0 is not in [0, 1]"));
        let big = Output { prob: vec![0.5, 1.5], cam: vec![0.0; 98] };
        assert!(big.check(2).unwrap_err().contains("1.5 of slice 1"));
        let inf = Output { prob: vec![0.5, 0.5], cam: [vec![0.0; 97], vec![f32::INFINITY]].concat() };
        assert!(inf.check(2).is_err());
    }
}
