//! The model bundle: `models/NAME.onnx` and its manifest `models/NAME.toml` (same stem).
//!
//! The manifest says what the model expects and how it was made: input name, layout (NCHW),
//! size and channels; the preprocessing (window, lung mask, mean/std); output names (`prob`
//! `[N,1]`, `cam` `[N,7,7]`); the decision threshold and how it was chosen; the model's sha256;
//! the data and metrics it was trained and validated on (free-form tables). The appliance refuses
//! a model whose hash or manifest does not match, saying what differs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::preprocess::Params;

/// Errors of loading a model bundle; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The manifest is malformed or inconsistent.
    #[error("{path}: {reason}")]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model file is not the one the manifest describes.
    #[error("{path}: sha256 is {actual}, the manifest says {expected}: the model file and its manifest do not belong together")]
    Hash {
        /// The model file.
        path: PathBuf,
        /// From the manifest.
        expected: String,
        /// Of the file.
        actual: String,
    },
}

/// `[model]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Short name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Lower-case hex sha256 of the ONNX file.
    pub sha256: String,
    /// What it is.
    #[serde(default)]
    pub description: String,
}

/// `[input]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputInfo {
    /// Graph input name.
    pub name: String,
    /// Only `NCHW`.
    pub layout: String,
    /// Side of the square input.
    pub size: usize,
    /// Channels (3).
    pub channels: usize,
}

/// `[output]`: graph output names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputInfo {
    /// Sigmoid probability, `[N,1]`.
    pub prob: String,
    /// Class activation map, `[N,7,7]`.
    pub cam: String,
}

/// `[preprocess]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessInfo {
    /// Window center (HU).
    pub window_center: f64,
    /// Window width (HU).
    pub window_width: f64,
    /// Lung mask on/off.
    pub lung_mask: bool,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel std.
    pub std: [f32; 3],
}

/// `[decision]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionInfo {
    /// Calibrated slice threshold.
    pub threshold: f64,
    /// How it was chosen (e.g. "sensitivity ≥ 0.95 on the validation split").
    pub method: String,
    /// Positive slices a series needs, chosen with the threshold from series-level results
    /// (optional; the config's `decision.min_positive_slices` overrides it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_positive_slices: Option<usize>,
    /// Craniocaudal millimetres a positive series' positive slices must stand for (optional; the
    /// config's `decision.min_positive_extent_mm` overrides it). See [`crate::decide`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_positive_extent_mm: Option<f64>,
    /// Share of a positive series' lung that must lie in positive slices (optional; the config's
    /// `decision.min_positive_share` overrides it). See [`crate::decide`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_positive_share: Option<f64>,
    /// How the series rule's values were chosen, with their provenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_rule_method: Option<String>,
    /// Slices whose lung mask covers less than this share of the image are not sent to the
    /// engine: they are reported with probability 0 and a reason (optional; 0 scores every slice).
    #[serde(default)]
    pub min_lung_fraction: f64,
}

/// The parity bound an int8 variant must keep against the f32 model for `precision = "auto"` to
/// pick it: the largest |difference| of a slice probability.
pub const PARITY_MAX_PROB_DIFF: f64 = 0.02;
/// The parity bound on the slice AUC's change.
pub const PARITY_MAX_AUC_DIFF: f64 = 0.005;

/// `[int8.parity]`: how far the int8 variant's results are from the f32 model's, measured on
/// real slices and series (the numbers `precision = "auto"` decides on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Parity {
    /// Largest |int8 − f32| slice probability.
    pub max_abs_prob_diff: f64,
    /// |AUC(int8) − AUC(f32)| on the labelled slices (the largest over the sets measured).
    pub auc_diff: f64,
    /// Whether every series measured got the same verdict.
    pub series_verdicts_identical: bool,
    /// Slices compared.
    pub slices: usize,
    /// Series compared.
    pub series: usize,
    /// Whether it was measured on a CPU with VNNI (AVX512-VNNI, AVX-VNNI or AMX; default true).
    /// Without VNNI, int8 kernels add pairs of products in 16 bits and can saturate, so a record
    /// measured with VNNI does not hold there: `auto` then leaves int8 out.
    #[serde(default = "yes")]
    pub vnni: bool,
    /// Slices whose decision at the threshold differs (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decisions_flipped: Option<usize>,
    /// How and on what it was measured.
    pub measured_with: String,
}

fn yes() -> bool {
    true
}

impl Int8Parity {
    /// Why the variant is outside the parity bound, or `None` when it is within.
    pub fn outside_bound(&self) -> Option<String> {
        let mut why = Vec::new();
        if self.max_abs_prob_diff.is_nan() || self.max_abs_prob_diff > PARITY_MAX_PROB_DIFF {
            why.push(format!("max |Δprob| {} > {PARITY_MAX_PROB_DIFF}", self.max_abs_prob_diff));
        }
        if self.auc_diff.is_nan() || self.auc_diff > PARITY_MAX_AUC_DIFF {
            why.push(format!("AUC change {} > {PARITY_MAX_AUC_DIFF}", self.auc_diff));
        }
        if !self.series_verdicts_identical {
            why.push(format!("series verdicts differ (of {} series)", self.series));
        }
        if self.slices == 0 || self.series == 0 {
            why.push("measured on no slices or no series".into());
        }
        (!why.is_empty()).then(|| why.join(", "))
    }

    /// "within the parity bound (values)" or "outside the parity bound (why)".
    pub fn status(&self) -> String {
        match self.outside_bound() {
            None => format!("within the parity bound ({})", self.describe()),
            Some(why) => format!("outside the parity bound ({why})"),
        }
    }

    /// One line: the measured values.
    pub fn describe(&self) -> String {
        format!(
            "max |Δprob| {}, AUC change {}, series verdicts {} ({} slices, {} series)",
            self.max_abs_prob_diff,
            self.auc_diff,
            if self.series_verdicts_identical { "identical" } else { "differ" },
            self.slices,
            self.series
        )
    }
}

/// `[int8]`: an int8 variant of the model (optional): the same graph with int8 convolutions
/// (QuantizeLinear/DequantizeLinear pairs, as NNCF writes them), a file beside the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Int8Info {
    /// Its ONNX file: a file name in the manifest's folder.
    pub file: String,
    /// Lower-case hex sha256 of that file.
    pub sha256: String,
    /// How it was made (tool, calibration data, what stayed in float).
    pub method: String,
    /// Its own slice threshold, where its scores differ from the f32 model's (optional: absent,
    /// `[decision] threshold` applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// How its threshold was chosen (required with `threshold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold_method: Option<String>,
    /// Its parity against the f32 model.
    pub parity: Int8Parity,
}

/// The manifest file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Identity.
    pub model: ModelInfo,
    /// Input.
    pub input: InputInfo,
    /// Preprocessing.
    pub preprocess: PreprocessInfo,
    /// Outputs.
    pub output: OutputInfo,
    /// Decision.
    pub decision: DecisionInfo,
    /// Training data and settings (free-form).
    #[serde(default)]
    pub training: toml::Table,
    /// Validation metrics (free-form).
    #[serde(default)]
    pub validation: toml::Table,
    /// The int8 variant, when the bundle has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub int8: Option<Int8Info>,
}

impl Manifest {
    /// The Series Instance UIDs the model was trained on (`[training] series_uids`, optional):
    /// evaluating on them measures memory, not generalisation.
    pub fn training_series(&self) -> std::collections::HashSet<String> {
        self.training.get("series_uids").and_then(toml::Value::as_array).map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()).unwrap_or_default()
    }

    /// The preprocessing parameters the model was trained with.
    pub fn params(&self) -> Params {
        Params {
            window_center: self.preprocess.window_center,
            window_width: self.preprocess.window_width,
            lung_mask: self.preprocess.lung_mask,
            size: self.input.size,
            mean: self.preprocess.mean,
            std: self.preprocess.std,
        }
    }

    /// Checks the values, every problem in one message.
    pub fn validate(&self) -> Result<(), String> {
        let mut bad = Vec::new();
        if self.input.layout != "NCHW" {
            bad.push(format!("input.layout = {:?}: only \"NCHW\" is supported", self.input.layout));
        }
        if self.input.channels != 3 {
            bad.push(format!("input.channels = {}: the model must take 3 channels", self.input.channels));
        }
        if let Err(e) = self.params().validate() {
            bad.push(format!("preprocess: {e}"));
        }
        if !(0.0..=1.0).contains(&self.decision.threshold) {
            bad.push(format!("decision.threshold = {} is outside 0..=1", self.decision.threshold));
        }
        if let Some(e) = self.decision.min_positive_extent_mm.filter(|e| !(e.is_finite() && *e >= 0.0)) {
            bad.push(format!("decision.min_positive_extent_mm = {e} must be a finite number of millimetres >= 0"));
        }
        if let Some(s) = self.decision.min_positive_share.filter(|s| !(0.0..=1.0).contains(s)) {
            bad.push(format!("decision.min_positive_share = {s} is outside 0..=1"));
        }
        if !is_sha256(&self.model.sha256) {
            bad.push(format!("model.sha256 = {:?} is not 64 hex digits", self.model.sha256));
        }
        if let Some(q) = &self.int8 {
            let name = Path::new(&q.file);
            if q.file.is_empty() || name.components().count() != 1 || name.file_name().is_none() {
                bad.push(format!("int8.file = {:?} must be a file name in the manifest's folder", q.file));
            }
            if !is_sha256(&q.sha256) {
                bad.push(format!("int8.sha256 = {:?} is not 64 hex digits", q.sha256));
            }
            if let Some(t) = q.threshold.filter(|t| !(0.0..=1.0).contains(t)) {
                bad.push(format!("int8.threshold = {t} is outside 0..=1"));
            }
            if q.threshold.is_some() && q.threshold_method.as_deref().is_none_or(str::is_empty) {
                bad.push("int8.threshold needs int8.threshold_method (how it was chosen)".into());
            }
            let p = &q.parity;
            if !(p.max_abs_prob_diff.is_finite() && p.max_abs_prob_diff >= 0.0 && p.auc_diff.is_finite() && p.auc_diff >= 0.0) {
                bad.push("int8.parity: max_abs_prob_diff and auc_diff must be finite and >= 0".into());
            }
        }
        if self.output.prob.is_empty() || self.output.cam.is_empty() || self.input.name.is_empty() {
            bad.push("input/output names must not be empty".into());
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad.join("; "))
        }
    }
}

/// A loaded, hash-checked model bundle.
#[derive(Debug, Clone)]
pub struct Model {
    /// The ONNX file.
    pub path: PathBuf,
    /// Its manifest file.
    pub manifest_path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// The ONNX bytes.
    pub bytes: Vec<u8>,
}

/// Lower-case hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` is 64 hex digits.
fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The bytes of `path`, refused unless their sha256 is `expected`.
fn read_checked(path: &Path, expected: &str) -> Result<Vec<u8>, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let actual = sha256_hex(&bytes);
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ModelError::Hash { path: path.to_path_buf(), expected: expected.to_string(), actual });
    }
    Ok(bytes)
}

/// The manifest path of a model path: same stem, `.toml`.
pub fn manifest_path(model: &Path) -> PathBuf {
    model.with_extension("toml")
}

impl Model {
    /// Reads the model and its manifest, validates the manifest and checks the hash.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let manifest_path = manifest_path(path);
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| ModelError::Io { path: manifest_path.clone(), source })?;
        let manifest: Manifest = toml::from_str(&text).map_err(|e| ModelError::Manifest { path: manifest_path.clone(), reason: e.to_string().trim().replace('\n', " ") })?;
        manifest.validate().map_err(|reason| ModelError::Manifest { path: manifest_path.clone(), reason })?;
        let bytes = read_checked(path, &manifest.model.sha256)?;
        Ok(Model { path: path.to_path_buf(), manifest_path, manifest, bytes })
    }

    /// The int8 variant's path, when the manifest names one.
    pub fn int8_path(&self) -> Option<PathBuf> {
        self.manifest.int8.as_ref().map(|q| self.path.with_file_name(&q.file))
    }

    /// Reads the int8 variant and checks its hash against `[int8] sha256`.
    pub fn int8_bytes(&self) -> Result<Vec<u8>, ModelError> {
        let (Some(q), Some(path)) = (&self.manifest.int8, self.int8_path()) else {
            return Err(ModelError::Manifest { path: self.manifest_path.clone(), reason: "the bundle has no int8 variant (no [int8] table)".into() });
        };
        read_checked(&path, &q.sha256)
    }
}
