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
        match crate::model::Model::load(&s.model_path) {
            Ok(m) => {
                let i = &m.manifest.model;
                let _ = writeln!(r, "model         {} {} (sha256 {}…): ok", i.name, i.version, &i.sha256[..12]);
            }
            Err(e) => {
                let _ = writeln!(r, "model         NOT USABLE: {e}");
            }
        }
        let _ = writeln!(r, "engine tract  usable (built in)");
        let ort = if cfg!(feature = "onnxruntime") {
            match crate::engine::onnxruntime_library(s.onnxruntime_library.as_deref()) {
                Ok(p) => format!("library {} found", p.display()),
                Err(e) => format!("not usable: {e}"),
            }
        } else {
            "not usable: this build has no onnxruntime engine (rebuild with --features onnxruntime)".into()
        };
        let _ = writeln!(r, "engine ort    {ort}");
    }
    let _ = writeln!(r, "engine trt    not available in this version (TensorRT)");
    let _ = writeln!(r, "alerts        not yet available in this version (serial ports, LEDs)");
    r
}
