//! The TensorRT engine (cargo feature `tensorrt`): a compiled plan (`NAME.plan`, built from the
//! shipped ONNX with `trtexec`) run through a small C++ shim (`shim.cpp`, built by build.rs
//! against the TensorRT headers) that loads `libnvinfer` at run time.
//!
//! Why not the `tensorrt-rs` crate: it binds TensorRT 7 (2020), whose API (implicit batch,
//! `enqueue`, `destroy()`) was removed in TensorRT 10; it builds against neither 10 nor 11.
//!
//! Before the first inference everything is checked, and a mismatch refuses to start with the
//! reason ([`validate`]): the plan's sidecar (`NAME.plan.toml`: the TensorRT version it was built
//! with, the sha256 of the ONNX it was built from) against the loaded library and the model
//! manifest; the engine's I/O names, shapes and data types against the manifest; the batch range
//! of its optimisation profile. This part needs no GPU and is tested everywhere.

use std::path::{Path, PathBuf};

use crate::model::Manifest;

/// TensorRT data types (`nvinfer1::DataType`) the checks know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    /// 32-bit float (`kFLOAT` = 0).
    F32,
    /// 16-bit float (`kHALF` = 1).
    F16,
    /// Anything else, by its enum value.
    Other(i32),
}

impl DType {
    /// From `nvinfer1::DataType`'s value.
    pub fn from_trt(v: i32) -> DType {
        match v {
            0 => DType::F32,
            1 => DType::F16,
            o => DType::Other(o),
        }
    }
}

/// One input or output tensor of an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDesc {
    /// Name.
    pub name: String,
    /// Input (true) or output.
    pub input: bool,
    /// Data type.
    pub dtype: DType,
    /// Shape; -1 for a dynamic dimension.
    pub dims: Vec<i64>,
}

/// What a deserialised engine says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineDesc {
    /// Its I/O tensors.
    pub tensors: Vec<TensorDesc>,
    /// Batch range (min, opt, max) of optimisation profile 0 for the input, if dynamic.
    pub batch: Option<(i64, i64, i64)>,
}

/// The plan's sidecar, `NAME.plan.toml`, written by whoever builds the plan (models/README.md).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanInfo {
    /// TensorRT version the plan was built with, `MAJOR.MINOR.PATCH`.
    pub tensorrt_version: String,
    /// sha256 of the ONNX file the plan was built from (must be the manifest's).
    pub onnx_sha256: String,
    /// `fp32` or `fp16`.
    pub precision: String,
    /// The GPU it was built on (informational; plans are tied to a GPU model).
    #[serde(default)]
    pub gpu: String,
}

impl PlanInfo {
    /// Reads the sidecar of `plan` (`plan` with `.toml` appended to its name).
    pub fn load(plan: &Path) -> Result<PlanInfo, String> {
        let p = sidecar(plan);
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e} (every plan needs this sidecar; see models/README.md)", p.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {}", p.display(), e.message()))
    }
}

/// The sidecar path of a plan.
pub fn sidecar(plan: &Path) -> PathBuf {
    let mut s = plan.as_os_str().to_os_string();
    s.push(".toml");
    PathBuf::from(s)
}

/// `MAJOR.MINOR.PATCH` of a TensorRT version number (`getInferLibVersion`: major·10000 +
/// minor·100 + patch).
pub fn version_string(v: i32) -> String {
    format!("{}.{}.{}", v / 10000, v / 100 % 100, v % 100)
}

/// Checks a plan against the loaded TensorRT (`lib_version`), the model manifest and its sha256;
/// returns every difference.
pub fn validate(desc: &EngineDesc, info: &PlanInfo, lib_version: i32, manifest: &Manifest) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    let lib = version_string(lib_version);
    let major_minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    if major_minor(&info.tensorrt_version) != major_minor(&lib) {
        why.push(format!("the plan was built with TensorRT {} but TensorRT {lib} is loaded: rebuild the plan on this box", info.tensorrt_version));
    }
    if !info.onnx_sha256.eq_ignore_ascii_case(&manifest.model.sha256) {
        why.push(format!(
            "the plan was built from an ONNX with sha256 {} but the model is {} {} (sha256 {}): wrong or stale plan",
            info.onnx_sha256, manifest.model.name, manifest.model.version, manifest.model.sha256
        ));
    }
    if !matches!(info.precision.as_str(), "fp32" | "fp16") {
        why.push(format!("precision = {:?}: expected fp32 or fp16", info.precision));
    }
    let size = manifest.input.size as i64;
    let ch = manifest.input.channels as i64;
    let want: [(&str, bool, Vec<i64>); 3] =
        [(&manifest.input.name, true, vec![-1, ch, size, size]), (&manifest.output.prob, false, vec![-1, 1]), (&manifest.output.cam, false, vec![-1, 7, 7])];
    for (name, input, dims) in &want {
        match desc.tensors.iter().find(|t| t.name == *name) {
            None => why.push(format!(
                "the engine has no {} tensor {name:?} (it has: {})",
                if *input { "input" } else { "output" },
                desc.tensors.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
            Some(t) => {
                if t.input != *input {
                    why.push(format!("tensor {name:?} is an {} in the engine", if t.input { "input" } else { "output" }));
                }
                if t.dtype != DType::F32 {
                    why.push(format!("tensor {name:?} is {:?}; the engine's I/O must be float32 (FP16 inside is fine: build with --fp16, not with FP16 I/O formats)", t.dtype));
                }
                let ok = t.dims.len() == dims.len() && t.dims.iter().zip(dims).skip(1).all(|(a, b)| a == b) && (t.dims[0] == -1 || t.dims[0] >= 1);
                if !ok {
                    why.push(format!("tensor {name:?} has shape {:?}, the manifest needs [N, {}]", t.dims, dims[1..].iter().map(i64::to_string).collect::<Vec<_>>().join(", ")));
                }
            }
        }
    }
    if let Some((lo, _, hi)) = desc.batch {
        if lo > 1 || hi < 1 {
            why.push(format!("the optimisation profile allows batches {lo}..={hi}; it must include 1"));
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

/// The largest batch an engine runs at once: its profile's maximum (1 for a static batch of 1).
pub fn max_batch(desc: &EngineDesc) -> usize {
    match desc.batch {
        Some((_, _, hi)) => hi.max(1) as usize,
        None => desc.tensors.iter().find(|t| t.input).and_then(|t| t.dims.first().copied()).filter(|d| *d > 0).unwrap_or(1) as usize,
    }
}

#[cfg(feature = "tensorrt")]
mod gpu;
#[cfg(feature = "tensorrt")]
pub use gpu::TrtEngine;

/// The TensorRT engine: not in this build.
#[cfg(not(feature = "tensorrt"))]
pub struct TrtEngine;

#[cfg(not(feature = "tensorrt"))]
impl TrtEngine {
    /// Always fails: this build has no TensorRT engine.
    pub fn load(_model: &crate::model::Model, _plan: &Path, _library: Option<&Path>) -> Result<TrtEngine, String> {
        Err(unavailable())
    }
}

/// Why there is no TensorRT engine in this build.
#[cfg(not(feature = "tensorrt"))]
pub fn unavailable() -> String {
    "this build has no TensorRT engine (rebuild with --features tensorrt; see README)".into()
}

/// The loaded TensorRT library's version, or why none can be loaded.
pub fn library_version(library: Option<&Path>) -> Result<i32, String> {
    #[cfg(feature = "tensorrt")]
    {
        gpu::load_library(library)
    }
    #[cfg(not(feature = "tensorrt"))]
    {
        let _ = library;
        Err(unavailable())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/testdata/tiny-densenet.toml")).unwrap();
        toml::from_str(&text).unwrap()
    }

    fn good() -> (EngineDesc, PlanInfo) {
        let t = |name: &str, input, dims: &[i64]| TensorDesc { name: name.into(), input, dtype: DType::F32, dims: dims.to_vec() };
        let m = manifest();
        (
            EngineDesc { tensors: vec![t("input", true, &[-1, 3, 224, 224]), t("prob", false, &[-1, 1]), t("cam", false, &[-1, 7, 7])], batch: Some((1, 8, 32)) },
            PlanInfo { tensorrt_version: "10.13.2".into(), onnx_sha256: m.model.sha256.clone(), precision: "fp16".into(), gpu: "H100".into() },
        )
    }

    #[test]
    fn a_matching_plan_passes_and_each_mismatch_is_named() {
        let m = manifest();
        let (d, i) = good();
        assert_eq!(validate(&d, &i, 101303, &m), Ok(()));
        assert_eq!(max_batch(&d), 32);
        // Another TensorRT minor version.
        let e = validate(&d, &i, 110400, &m).unwrap_err();
        assert!(e[0].contains("built with TensorRT 10.13.2 but TensorRT 11.4.0 is loaded"), "{e:?}");
        // A plan of another model.
        let e = validate(&d, &PlanInfo { onnx_sha256: "ab".repeat(32), ..i.clone() }, 101300, &m).unwrap_err();
        assert!(e[0].contains("wrong or stale plan"), "{e:?}");
        // FP16 I/O, a renamed output, a wrong input size, a profile without batch 1.
        let mut d2 = d.clone();
        d2.tensors[0].dtype = DType::F16;
        d2.tensors[0].dims = vec![-1, 3, 256, 256];
        d2.tensors[2].name = "heatmap".into();
        d2.batch = Some((4, 8, 8));
        let e = validate(&d2, &i, 101300, &m).unwrap_err();
        assert_eq!(e.len(), 4, "{e:#?}");
        assert!(e.iter().any(|w| w.contains("no output tensor \"cam\"") && w.contains("heatmap")));
        assert!(e.iter().any(|w| w.contains("F16")));
        assert!(e.iter().any(|w| w.contains("[-1, 3, 256, 256]") && w.contains("[N, 3, 224, 224]")));
        assert!(e.iter().any(|w| w.contains("must include 1")));
        assert_eq!(version_string(110400), "11.4.0");
    }

    #[test]
    fn sidecar_is_required_and_strict() {
        let dir = tempfile::tempdir().unwrap();
        let plan = dir.path().join("m.plan");
        let e = PlanInfo::load(&plan).unwrap_err();
        assert!(e.contains("m.plan.toml") && e.contains("sidecar"), "{e}");
        std::fs::write(sidecar(&plan), "tensorrt_version = \"10.13.2\"\nonnx_sha256 = \"x\"\nprecision = \"fp16\"\ncolour = 1\n").unwrap();
        assert!(PlanInfo::load(&plan).unwrap_err().contains("colour"));
    }

    #[cfg(feature = "tensorrt")]
    #[test]
    fn a_box_without_tensorrt_gets_a_clear_message() {
        // The configured library first, then the standard names: each attempt is named.
        let e = library_version(Some(Path::new("/nonexistent/libnvinfer.so.10"))).unwrap_err();
        assert!(e.contains("TensorRT runtime library not found") && e.contains("/nonexistent/libnvinfer.so.10") && e.contains("libnvinfer.so.11"), "{e}");
    }

    #[cfg(not(feature = "tensorrt"))]
    #[test]
    fn without_the_feature_the_engine_says_how_to_get_it() {
        assert!(library_version(None).unwrap_err().contains("--features tensorrt"));
    }
}
