//! Scoring: series in, per-slice probabilities and a verdict out, through one preprocessor and
//! one engine. Shared by `score`, `eval` and (later) the daemon.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::{EngineBackend, PreprocessBackend, Settings};
use crate::decide::{Rule, SeriesDecision, SliceEvidence};
use crate::engine::{tract::TractEngine, Engine};
use crate::ingest::series::Series;
use crate::model::Model;
use crate::preprocess::{cpu::Cpu, lung, mask_for, Input, Params, Preprocessor};

/// Slices preprocessed and inferred together (bounds memory: 16 × 0.6 MB of tensors).
pub const CHUNK: usize = 16;

/// Errors of setting up scoring.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The model bundle is unusable.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The engine could not be made.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// A configured backend is not available.
    #[error("{0}")]
    Unavailable(String),
}

/// Everything needed to score: model, engine, preprocessor, rule.
pub struct Scorer {
    /// The model bundle.
    pub model: Model,
    /// Its preprocessing parameters.
    pub params: Params,
    /// The engine.
    pub engine: Arc<dyn Engine>,
    /// The preprocessor.
    pub pre: Arc<dyn Preprocessor>,
    /// The decision rule.
    pub rule: Rule,
}

/// One scored slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceScore {
    /// The file.
    pub file: PathBuf,
    /// Position in the series, feet to head.
    pub slice_index: usize,
    /// Normalised position.
    pub z: f64,
    /// Share of the image inside the lungs.
    pub lung_fraction: f32,
    /// Probability (0 for a slice not scored).
    pub prob: f32,
    /// prob ≥ threshold.
    pub positive: bool,
    /// Why the slice was not sent to the engine (too little lung), when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Class activation map (7 × 7, row-major).
    #[serde(skip)]
    pub cam: Vec<f32>,
    /// Mean Hounsfield units inside the lung mask (None without a mask or lung), for drift.
    #[serde(skip)]
    pub lung_hu: Option<f64>,
}

/// One scored series.
#[derive(Debug, Clone)]
pub struct SeriesScore {
    /// Series Instance UID.
    pub uid: String,
    /// Slices, feet to head.
    pub slices: Vec<SliceScore>,
    /// The verdict.
    pub decision: SeriesDecision,
    /// What the rule saw of each slice, in series order (to replay other thresholds).
    pub evidence: Vec<SliceEvidence>,
}

impl Scorer {
    /// Loads the configured model and picks the engine and preprocessor the config asks for,
    /// logging the choices. A backend named explicitly but unavailable is an error.
    pub fn from_settings(s: &Settings) -> Result<Scorer, SetupError> {
        let model = Model::load(&s.model_path)?;
        let engine: Arc<dyn Engine> = match s.engine {
            EngineBackend::Tract => {
                log::info!("engine: tract (configured)");
                Arc::new(TractEngine::load(&model)?)
            }
            EngineBackend::OnnxRuntime => onnxruntime(&model, s).map_err(|e| SetupError::Unavailable(format!("engine.backend = \"onnxruntime\": {e}")))?,
            EngineBackend::OpenVino => openvino(&model, s).map_err(|e| SetupError::Unavailable(format!("engine.backend = \"openvino\": {e}")))?,
            EngineBackend::Auto => auto_engine(&model, s)?,
            EngineBackend::TensorRt => tensorrt(&model, s).map_err(|e| SetupError::Unavailable(format!("engine.backend = \"tensorrt\": {e}")))?,
        };
        check_precision(s.precision, engine.as_ref())?;
        let pre: Arc<dyn Preprocessor> = match s.preprocess {
            PreprocessBackend::Cpu => Arc::new(Cpu),
            PreprocessBackend::Cuda => {
                Arc::new(crate::preprocess::cuda::CudaPreprocessor::new(0).map_err(|e| SetupError::Unavailable(format!("preprocess.backend = \"cuda\": {e}")))?)
            }
            PreprocessBackend::Auto => match crate::preprocess::cuda::CudaPreprocessor::new(0) {
                Ok(c) => {
                    log::info!("preprocess: cuda on {}", c.info.name);
                    Arc::new(c)
                }
                Err(e) => {
                    log::info!("preprocess: cpu ({e})");
                    Arc::new(Cpu)
                }
            },
        };
        let rule = rule_for(s, &model.manifest, engine.precision());
        let params = model.manifest.params();
        Ok(Scorer { model, params, engine, pre, rule })
    }

    /// Scores slices in the order given (no series needed), `CHUNK` at a time: probability,
    /// lung fraction and class activation map of each. A slice with less lung than the rule's
    /// `min_lung_fraction` is not sent to the engine: probability 0, a flat map, `skipped` set.
    /// The next chunk's lung masks and tensors are made while the engine runs the current one,
    /// so the cores the engine leaves idle are used.
    pub fn score_slices(&self, slices: &[crate::ingest::Slice]) -> Result<Vec<SliceOutput>, ScoreError> {
        self.score_slices_timed(slices, &|_| {})
    }

    /// [`Scorer::score_slices`], telling `engine_seconds` how long each engine call took (the
    /// daemon's inference histogram).
    pub fn score_slices_timed(&self, slices: &[crate::ingest::Slice], engine_seconds: &(dyn Fn(f64) + Sync)) -> Result<Vec<SliceOutput>, ScoreError> {
        let mut out = Vec::with_capacity(slices.len());
        let mut chunks = slices.chunks(CHUNK);
        std::thread::scope(|scope| {
            let mut ready = chunks.next().map(|c| self.prepare_chunk(c));
            while let Some(prepared) = ready.take() {
                let next = chunks.next().map(|c| scope.spawn(move || self.prepare_chunk(c)));
                let prepared = prepared?;
                let scored = if prepared.kept == 0 {
                    None
                } else {
                    let t = std::time::Instant::now();
                    let r = self.engine.infer(&prepared.tensor, prepared.kept).map_err(|e| ScoreError::Backend(e.to_string()))?;
                    engine_seconds(t.elapsed().as_secs_f64());
                    r.check(prepared.kept).map_err(ScoreError::Output)?;
                    Some(r)
                };
                let mut k = 0;
                for ((fraction, skipped), lung_hu) in prepared.slices.into_iter().zip(prepared.lung_hu) {
                    let (prob, cam) = match (&skipped, &scored) {
                        (None, Some(r)) => {
                            k += 1;
                            (r.prob[k - 1], r.cam[(k - 1) * 49..k * 49].to_vec())
                        }
                        _ => (0.0, vec![0.0; 49]),
                    };
                    out.push(SliceOutput { prob, lung_fraction: fraction, cam, skipped, lung_hu });
                }
                ready = next.map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            }
            Ok(out)
        })
    }

    /// Why a slice with `lung_fraction` of lung is not sent to the engine under `rule`, or `None`:
    /// only a model that masks the lungs skips lung-less slices.
    pub fn skip_reason(&self, rule: &Rule, lung_fraction: f32) -> Option<String> {
        if self.params.lung_mask {
            rule.skips(lung_fraction)
        } else {
            None
        }
    }

    /// Lung masks (in parallel), the skip decision and the tensor of the slices kept, for one chunk.
    fn prepare_chunk(&self, chunk: &[crate::ingest::Slice]) -> Result<PreparedChunk, ScoreError> {
        let masks: Vec<Option<lung::LungMask>> = chunk.par_iter().map(|s| mask_for(&self.params, s)).collect();
        let fraction = |m: &Option<lung::LungMask>| m.as_ref().map(|m| m.fraction).unwrap_or(0.0);
        let skipped: Vec<Option<String>> = masks.iter().map(|m| self.skip_reason(&self.rule, fraction(m))).collect();
        let inputs: Vec<Input<'_>> =
            chunk.iter().zip(&masks).zip(&skipped).filter(|(_, s)| s.is_none()).map(|((sl, m), _)| Input::of(sl, m.as_ref().map(|m| m.mask.as_slice()))).collect();
        let mut tensor = vec![0f32; inputs.len() * self.params.slice_len()];
        if !inputs.is_empty() {
            self.pre.run(&self.params, &inputs, &mut tensor).map_err(|e| match e {
                crate::preprocess::PreprocessError::BadInput { .. } => ScoreError::Input(e),
                _ => ScoreError::Backend(e.to_string()),
            })?;
        }
        let lung_hu = chunk.par_iter().zip(&masks).zip(&skipped).map(|((sl, m), skip)| m.as_ref().filter(|_| skip.is_none()).and_then(|m| lung::mean_hu_inside(sl, m))).collect();
        Ok(PreparedChunk { kept: inputs.len(), tensor, slices: masks.iter().map(fraction).zip(skipped).collect(), lung_hu })
    }

    /// Scores one series, `CHUNK` slices at a time.
    pub fn score(&self, series: &Series) -> Result<SeriesScore, ScoreError> {
        let outs = self.score_slices(&series.slices)?;
        let slices: Vec<SliceScore> = outs
            .into_iter()
            .zip(&series.slices)
            .enumerate()
            .map(|(i, (o, s))| SliceScore {
                file: s.source.clone(),
                slice_index: i,
                z: series.z[i],
                lung_fraction: o.lung_fraction,
                prob: o.prob,
                positive: o.skipped.is_none() && self.rule.slice_positive(f64::from(o.prob)),
                skipped: o.skipped,
                cam: o.cam,
                lung_hu: o.lung_hu,
            })
            .collect();
        let evidence: Vec<SliceEvidence> = slices
            .iter()
            .zip(series.slab_mm())
            .map(|(s, slab_mm)| SliceEvidence { prob: f64::from(s.prob), lung_fraction: f64::from(s.lung_fraction), slab_mm, scored: s.skipped.is_none() })
            .collect();
        Ok(SeriesScore { uid: series.uid.clone(), decision: self.rule.series(&evidence), slices, evidence })
    }
}

/// A required `engine.precision` is what the chosen engine runs, or setup fails (never a silent
/// change of precision: a threshold is calibrated for one).
fn check_precision(wanted: crate::config::Precision, engine: &dyn Engine) -> Result<(), SetupError> {
    use crate::config::Precision;
    // TensorRT plans name theirs fp32/fp16.
    let runs = match engine.precision() {
        "fp32" => "f32",
        "fp16" => "f16",
        other => other,
    };
    if wanted == Precision::Auto || wanted.name() == runs {
        return Ok(());
    }
    let hint = match wanted {
        Precision::Bf16 => "bf16 needs the OpenVINO engine (its library: pip install openvino, or the Debian package) on a CPU with AMX or AVX512-BF16",
        Precision::F16 => "f16 needs a TensorRT plan built with FP16 (models/README.md)",
        Precision::Int8 => "int8 needs the OpenVINO engine and a bundle with an int8 variant ([int8] in its manifest)",
        _ => "set engine.precision = \"auto\" to use what the engine runs",
    };
    Err(SetupError::Unavailable(format!("engine.precision = \"{}\": the {} engine runs {runs}; {hint}", wanted.name(), engine.name())))
}

/// Why slices could not be scored: the input's fault, or the backend's (preprocessing device,
/// engine, or what the engine returned).
#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    /// A slice cannot be preprocessed (inconsistent pixel data): the file's fault.
    #[error("preprocessing: {0}")]
    Input(crate::preprocess::PreprocessError),
    /// The preprocessing backend or the engine failed: not the file's fault.
    #[error("{0}")]
    Backend(String),
    /// The engine returned something unusable (wrong length, NaN, out of [0, 1]).
    #[error("engine output: {0}")]
    Output(String),
}

/// One chunk made ready for the engine: the tensor of the `kept` slices, and each slice's lung
/// fraction and skip reason.
struct PreparedChunk {
    kept: usize,
    tensor: Vec<f32>,
    slices: Vec<(f32, Option<String>)>,
    lung_hu: Vec<Option<f64>>,
}

/// What the engine says about one slice.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceOutput {
    /// Probability.
    pub prob: f32,
    /// Share of the image inside the lungs.
    pub lung_fraction: f32,
    /// Class activation map (7 × 7, row-major).
    pub cam: Vec<f32>,
    /// Why the slice was not sent to the engine, when it was not.
    pub skipped: Option<String>,
    /// Mean Hounsfield units inside the lung mask of a slice sent to the engine (None otherwise).
    pub lung_hu: Option<f64>,
}

/// The decision rule of `s` for a model run in `precision` (the engine's): the config's
/// threshold when set, else the int8 variant's own when the engine runs it and the manifest gives
/// one (`[int8] threshold`), else the manifest's.
pub fn rule_for(s: &Settings, manifest: &crate::model::Manifest, precision: &str) -> Rule {
    let int8 = manifest.int8.as_ref().and_then(|q| q.threshold).filter(|_| precision == "int8");
    let (threshold, threshold_source) = match (s.threshold, int8) {
        (Some(t), _) => (t, s.config_threshold_source()),
        (None, Some(t)) => (t, "manifest (int8)".to_string()),
        (None, None) => (manifest.decision.threshold, "manifest".to_string()),
    };
    let (min_positive_slices, min_positive_source) = match (s.min_positive_slices, manifest.decision.min_positive_slices) {
        (Some(n), _) => (n, "config"),
        (None, Some(n)) => (n, "manifest"),
        (None, None) => (crate::decide::DEFAULT_MIN_POSITIVE_SLICES, "default"),
    };
    let pick = |config: Option<f64>, manifest: Option<f64>| match (config, manifest) {
        (Some(v), _) => (v, "config"),
        (None, Some(v)) => (v, "manifest"),
        (None, None) => (0.0, "default"),
    };
    let (min_positive_extent_mm, extent_source) = pick(s.min_positive_extent_mm, manifest.decision.min_positive_extent_mm);
    let (min_positive_share, share_source) = pick(s.min_positive_share, manifest.decision.min_positive_share);
    let physical_source = if extent_source == share_source { extent_source.to_string() } else { format!("extent: {extent_source}, share: {share_source}") };
    Rule {
        threshold,
        threshold_source,
        min_positive_slices,
        min_positive_source: min_positive_source.into(),
        min_positive_extent_mm,
        min_positive_share,
        physical_source,
        min_lung_fraction: manifest.decision.min_lung_fraction,
    }
}

/// `engine.backend = "auto"`: the first usable of a TensorRT plan, OpenVINO, ONNX Runtime, and
/// tract (always there), each one passed over logged with the reason. With `engine.precision`
/// bf16 or int8, which only OpenVINO runs, OpenVINO or the reason it cannot be had.
fn auto_engine(model: &Model, s: &Settings) -> Result<Arc<dyn Engine>, SetupError> {
    use crate::config::Precision;
    if matches!(s.precision, Precision::Bf16 | Precision::Int8) {
        let e = openvino(model, s).map_err(|why| SetupError::Unavailable(format!("engine.precision = \"{}\" needs the OpenVINO engine: {why}", s.precision.name())))?;
        log::info!("engine: openvino {} (auto: engine.precision = \"{}\")", e.precision(), s.precision.name());
        return Ok(e);
    }
    let mut passed = Vec::new();
    type Candidate = (&'static str, fn(&Model, &Settings) -> Result<Arc<dyn Engine>, String>);
    let candidates: [Candidate; 3] = [("tensorrt", tensorrt), ("openvino", openvino), ("onnxruntime", onnxruntime)];
    for (name, make) in candidates {
        match make(model, s) {
            Ok(e) => {
                log::info!("engine: {name} {} (auto: the fastest usable{})", e.precision(), passed.iter().map(|p| format!("; {p}")).collect::<String>());
                return Ok(e);
            }
            Err(why) => passed.push(format!("{name} not used: {why}")),
        }
    }
    log::info!("engine: tract (auto; {})", passed.join("; "));
    Ok(Arc::new(TractEngine::load(model)?))
}

/// The engine called `name` (`tract`, `openvino`, `onnxruntime`, `tensorrt`) for `model`, or why not.
pub fn engine_named(model: &Model, s: &Settings, name: &str) -> Result<Arc<dyn Engine>, String> {
    match name {
        "tract" => Ok(Arc::new(TractEngine::load(model).map_err(|e| e.to_string())?)),
        "openvino" => openvino(model, s),
        "onnxruntime" => onnxruntime(model, s),
        "tensorrt" => tensorrt(model, s),
        other => Err(format!("no engine called {other:?}")),
    }
}

/// The TensorRT engine on the configured plan, or why it cannot be had.
fn tensorrt(model: &Model, s: &Settings) -> Result<Arc<dyn Engine>, String> {
    let plan = s.tensorrt_plan.clone().unwrap_or_else(|| model.path.with_extension("plan"));
    #[cfg(feature = "tensorrt")]
    {
        if !plan.is_file() {
            return Err(format!("no plan at {} (build one with trtexec: models/README.md)", plan.display()));
        }
        Ok(Arc::new(crate::engine::tensorrt::TrtEngine::load(model, &plan, s.tensorrt_library.as_deref())?))
    }
    #[cfg(not(feature = "tensorrt"))]
    {
        let _ = (model, plan);
        Err(crate::engine::tensorrt::unavailable())
    }
}

/// The OpenVINO engine in the precision `engine.precision` resolves to on this CPU, or why it
/// cannot be had. An int8 variant `auto` chose but cannot load (missing, damaged) leaves the float
/// model in use, the reason saying why.
fn openvino(model: &Model, s: &Settings) -> Result<Arc<dyn Engine>, String> {
    use crate::engine::openvino::{cache_dir, library, resolve_precision, Cpu, OpenVinoEngine};
    let cpu = Cpu::this();
    let choice = resolve_precision(s.precision, cpu, model.manifest.int8.as_ref())?;
    let lib = library(s.openvino_library.as_deref())?;
    let threads = s.engine_threads.unwrap_or_else(rayon::current_num_threads);
    let load = |precision: &'static str| {
        // int8's cache entry also depends on the precision of its float operations.
        let (key, sha) = match (precision, &model.manifest.int8) {
            ("int8", Some(v)) => (format!("int8-{}", cpu.float().0), v.sha256.as_str()),
            _ => (precision.to_string(), model.manifest.model.sha256.as_str()),
        };
        let cache = cache_dir(&s.paths.state, &key, threads, sha).map_err(|why| log::info!("OpenVINO compiled-model cache not used: {why}")).ok();
        OpenVinoEngine::load(model, &lib, precision, threads, cache.as_deref()).map(|e| (e, cache))
    };
    let (e, cache, why, warn) = match load(choice.precision) {
        Ok((e, cache)) => (e, cache, choice.why, choice.warn),
        Err(failed) if choice.precision == "int8" && s.precision == crate::config::Precision::Auto => {
            let (float, float_why) = cpu.float();
            let (e, cache) = load(float).map_err(|e| e.to_string())?;
            (e, cache, format!("{float_why}; the bundle's int8 variant could not be loaded: {failed}"), true)
        }
        Err(failed) => return Err(failed.to_string()),
    };
    if let Some(dir) = cache.as_deref().filter(|_| e.from_cache()) {
        log::info!("OpenVINO: compiled model imported from {}", dir.display());
    }
    let rest = if e.precision() == "int8" { format!(" (the rest in {})", e.float_precision()) } else { String::new() };
    if warn {
        log::warn!("OpenVINO precision {why}{rest}");
    } else {
        log::info!("OpenVINO precision {why}{rest}");
    }
    let e = e.with_reason(why);
    Ok(Arc::new(e))
}

/// The ONNX Runtime engine, or why it cannot be had.
#[cfg(feature = "onnxruntime")]
fn onnxruntime(model: &Model, s: &Settings) -> Result<Arc<dyn Engine>, String> {
    use crate::engine::onnxruntime::{library, OrtEngine};
    let lib = library(s.onnxruntime_library.as_deref())?;
    let threads = s.engine_threads.unwrap_or_else(rayon::current_num_threads);
    Ok(Arc::new(OrtEngine::load(model, &lib, threads).map_err(|e| e.to_string())?))
}

/// The ONNX Runtime engine: not in this build.
#[cfg(not(feature = "onnxruntime"))]
fn onnxruntime(_model: &Model, _s: &Settings) -> Result<Arc<dyn Engine>, String> {
    Err("this build has no onnxruntime engine (rebuild with --features onnxruntime)".into())
}

/// The file name as shown in results (relative to `root` when below it).
pub fn shown(file: &Path, root: Option<&Path>) -> String {
    root.and_then(|r| file.strip_prefix(r).ok()).unwrap_or(file).display().to_string()
}
