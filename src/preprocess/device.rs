//! What the CUDA preprocessor (or its stand-in in builds without CUDA) reports about the GPU.

/// Why CUDA cannot be used, in words for an admin.
#[derive(Debug, Clone, thiserror::Error)]
#[error("CUDA unavailable: {0}")]
pub struct CudaUnavailable(pub String);

/// A usable device, as `doctor` reports it.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    /// Device name.
    pub name: String,
    /// Compute capability.
    pub compute_capability: (i32, i32),
    /// Driver API version (e.g. 13000).
    pub driver_version: i32,
    /// Device memory in bytes.
    pub memory: usize,
}
