//! `ctsentry doctor`: what this machine can use and, for what it cannot, why.

use std::fmt::Write;
use std::path::Path;

use crate::config::{PreprocessBackend, Settings};
use crate::preprocess::cuda;

/// The report, as text for a person.
pub fn run(config: &Path) -> String {
    let mut r = String::new();
    let settings = match Settings::load(config) {
        Ok(s) => {
            let _ = writeln!(r, "config        ok: {}", config.display());
            Some(s)
        }
        Err(e) => {
            let _ = writeln!(r, "config        NOT USABLE: {}", e.to_string().replace('\n', "\n              "));
            None
        }
    };
    let build = if cfg!(any(feature = "cuda", feature = "cuda-12")) { "built with CUDA support" } else { "built without CUDA support" };
    let gpu = cuda::probe();
    match &gpu {
        Ok(d) => {
            let _ = writeln!(
                r,
                "cuda          usable: {} (compute capability {}.{}, driver API {}.{}, {:.1} GiB)",
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.driver_version / 1000,
                d.driver_version % 1000 / 10,
                d.memory as f64 / (1u64 << 30) as f64
            );
        }
        Err(e) => {
            let _ = writeln!(r, "cuda          not usable ({build}): {}", e.0);
        }
    }
    if let Some(s) = &settings {
        let choice = match (s.preprocess, gpu.is_ok()) {
            (PreprocessBackend::Cpu, _) => "cpu (configured)".to_string(),
            (PreprocessBackend::Cuda, true) => "cuda (configured)".to_string(),
            (PreprocessBackend::Cuda, false) => "NONE: preprocess.backend = \"cuda\" but CUDA is not usable; the daemon will refuse to start".to_string(),
            (PreprocessBackend::Auto, true) => "cuda (auto: a GPU is usable)".to_string(),
            (PreprocessBackend::Auto, false) => "cpu (auto: no usable GPU; status LED amber)".to_string(),
        };
        let _ = writeln!(r, "preprocess    {choice}");
        let model = &s.model_path;
        let _ = writeln!(r, "model         {}: {}", model.display(), if model.exists() { "present" } else { "MISSING" });
    }
    let _ = writeln!(r, "engines       not yet available in this version (tract, onnxruntime, tensorrt)");
    let _ = writeln!(r, "alerts        not yet available in this version (serial ports, LEDs)");
    r
}
