//! Stand-in for the CUDA preprocessor in builds without the `cuda` feature: it explains how to
//! get one. (The real module is `cuda.rs`.)

use super::{Input, Params, PreprocessError, Preprocessor};

pub use super::device::{CudaUnavailable, DeviceInfo};

const NOT_BUILT: &str = "this build has no CUDA support (rebuild with `--features cuda`, or `cuda-12` for CUDA 12 boxes)";

/// Always unavailable in this build.
pub fn probe() -> Result<DeviceInfo, CudaUnavailable> {
    Err(CudaUnavailable(NOT_BUILT.into()))
}

/// Never constructed in this build.
pub struct CudaPreprocessor {
    never: std::convert::Infallible,
    /// Device description.
    pub info: DeviceInfo,
}

impl CudaPreprocessor {
    /// Always unavailable in this build.
    pub fn new(_ordinal: usize) -> Result<CudaPreprocessor, CudaUnavailable> {
        Err(CudaUnavailable(NOT_BUILT.into()))
    }
}

impl Preprocessor for CudaPreprocessor {
    fn name(&self) -> &'static str {
        match self.never {}
    }
    fn run(&self, _: &Params, _: &[Input<'_>], _: &mut [f32]) -> Result<(), PreprocessError> {
        match self.never {}
    }
}
