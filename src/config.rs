//! The configuration file: raw serde structs that mirror the TOML (`deny_unknown_fields`), then
//! validation into typed [`Settings`]. Every error carries its line and column.
//!
//! A relative path resolves against the folder of the config file. Every key is documented in
//! `config/ctsentry.toml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::ingest::{IngestOptions, Limits};

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigIssue {
    /// 1-based line, when known.
    pub line: usize,
    /// 1-based column, when known.
    pub column: usize,
    /// What is wrong, for an admin.
    pub reason: String,
}

/// Errors of loading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The config file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file has errors; each is listed with its position.
    #[error("{}", format_issues(path, issues))]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// Every error found, in file order.
        issues: Vec<ConfigIssue>,
    },
}

fn format_issues(path: &Path, issues: &[ConfigIssue]) -> String {
    issues
        .iter()
        .map(|i| format!("{}:{}:{}: {}", path.display(), i.line, i.column, i.reason))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------------------------------------
// Raw structs: the file as written.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    paths: RawPaths,
    model: RawModel,
    engine: RawEngine,
    preprocess: RawPreprocess,
    decision: RawDecision,
    series: RawSeries,
    watch: RawWatch,
    results: RawResults,
    disk: RawDisk,
    retention: RawRetention,
    ingest: RawIngest,
    alert: RawAlert,
    log: RawLog,
    dicom: RawDicom,
    export: RawExport,
    metrics: RawMetrics,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawExport {
    enabled: bool,
    peer: Spanned<String>,
    called_ae: Spanned<String>,
    calling_ae: Spanned<String>,
    send: Spanned<Vec<String>>,
    max_heatmaps: Spanned<i64>,
    retry_max_seconds: Spanned<f64>,
}

impl Default for RawExport {
    fn default() -> Self {
        let s = |v: &str| Spanned::new(0..0, v.to_string());
        RawExport {
            enabled: false,
            peer: s("127.0.0.1:4242"),
            called_ae: s("PACS"),
            calling_ae: s("CTSENTRY"),
            send: Spanned::new(0..0, vec!["sr".into(), "heatmaps".into()]),
            max_heatmaps: Spanned::new(0..0, 16),
            retry_max_seconds: Spanned::new(0..0, 300.0),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDicom {
    enabled: bool,
    ae_title: Spanned<String>,
    listen: Spanned<String>,
    allowed_callers: Vec<String>,
    max_associations: Spanned<i64>,
    max_instance_mb: Spanned<i64>,
}

impl Default for RawDicom {
    fn default() -> Self {
        RawDicom {
            enabled: false,
            ae_title: Spanned::new(0..0, "CTSENTRY".into()),
            listen: Spanned::new(0..0, "0.0.0.0:11112".into()),
            allowed_callers: Vec::new(),
            max_associations: Spanned::new(0..0, 8),
            max_instance_mb: Spanned::new(0..0, 1024),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPaths {
    incoming: Spanned<String>,
    done: Spanned<String>,
    quarantine: Spanned<String>,
    results: Spanned<String>,
    state: Spanned<String>,
}

impl Default for RawPaths {
    fn default() -> Self {
        let s = |p: &str| Spanned::new(0..0, p.to_string());
        RawPaths {
            incoming: s("/var/lib/ctsentry/incoming"),
            done: s("/var/lib/ctsentry/done"),
            quarantine: s("/var/lib/ctsentry/quarantine"),
            results: s("/var/lib/ctsentry/results"),
            state: s("/var/lib/ctsentry/state"),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawModel {
    path: Spanned<String>,
}

impl Default for RawModel {
    fn default() -> Self {
        RawModel { path: Spanned::new(0..0, "/usr/share/ctsentry/models/densenet121-covid.onnx".into()) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEngine {
    backend: Spanned<String>,
    precision: Spanned<String>,
    threads: Option<Spanned<i64>>,
    onnxruntime_library: Option<Spanned<String>>,
    openvino_library: Option<Spanned<String>>,
    tensorrt_plan: Option<Spanned<String>>,
    tensorrt_library: Option<Spanned<String>>,
}

impl Default for RawEngine {
    fn default() -> Self {
        RawEngine { backend: Spanned::new(0..0, "auto".into()), precision: Spanned::new(0..0, "auto".into()), threads: None, onnxruntime_library: None, openvino_library: None, tensorrt_plan: None, tensorrt_library: None }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPreprocess {
    backend: Spanned<String>,
}

impl Default for RawPreprocess {
    fn default() -> Self {
        RawPreprocess { backend: Spanned::new(0..0, "auto".into()) }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDecision {
    threshold: Option<Spanned<f64>>,
    min_positive_slices: Option<Spanned<i64>>,
    min_positive_extent_mm: Option<Spanned<f64>>,
    min_positive_share: Option<Spanned<f64>>,
}


#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSeries {
    quiet_seconds: Spanned<f64>,
}

impl Default for RawSeries {
    fn default() -> Self {
        RawSeries { quiet_seconds: Spanned::new(0..0, 10.0) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWatch {
    mode: Spanned<String>,
    poll_seconds: Spanned<f64>,
    stable_seconds: Spanned<f64>,
}

impl Default for RawWatch {
    fn default() -> Self {
        RawWatch { mode: Spanned::new(0..0, "inotify".into()), poll_seconds: Spanned::new(0..0, 2.0), stable_seconds: Spanned::new(0..0, 2.0) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawResults {
    heatmaps: bool,
}

impl Default for RawResults {
    fn default() -> Self {
        RawResults { heatmaps: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDisk {
    min_free_mb: Spanned<f64>,
}

impl Default for RawDisk {
    fn default() -> Self {
        RawDisk { min_free_mb: Spanned::new(0..0, 1024.0) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRetention {
    done_days: Spanned<f64>,
    results_days: Spanned<f64>,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention { done_days: Spanned::new(0..0, 14.0), results_days: Spanned::new(0..0, 365.0) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawIngest {
    modalities: Spanned<Vec<String>>,
    allow_missing_modality: bool,
    max_file_mb: Spanned<f64>,
    max_pixels_per_slice: Spanned<i64>,
    max_frames: Spanned<i64>,
    max_decompressed_mb: Spanned<f64>,
}

impl Default for RawIngest {
    fn default() -> Self {
        let l = Limits::default();
        RawIngest {
            modalities: Spanned::new(0..0, vec!["CT".into()]),
            allow_missing_modality: true,
            max_file_mb: Spanned::new(0..0, (l.max_file_bytes >> 20) as f64),
            max_pixels_per_slice: Spanned::new(0..0, l.max_pixels_per_slice as i64),
            max_frames: Spanned::new(0..0, l.max_frames as i64),
            max_decompressed_mb: Spanned::new(0..0, (l.max_decompressed_bytes >> 20) as f64),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAlert {
    serial: RawSerial,
    led: RawLed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSerial {
    enabled: bool,
    port: String,
    baud: Spanned<i64>,
    framing: Spanned<String>,
    heartbeat_seconds: Spanned<f64>,
    ack: bool,
    ack_timeout_seconds: Spanned<f64>,
}

impl Default for RawSerial {
    fn default() -> Self {
        RawSerial {
            enabled: false,
            port: "/dev/ttyUSB0".into(),
            baud: Spanned::new(0..0, 115200),
            framing: Spanned::new(0..0, "8N1".into()),
            heartbeat_seconds: Spanned::new(0..0, 30.0),
            ack: false,
            ack_timeout_seconds: Spanned::new(0..0, 2.0),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLed {
    enabled: bool,
    driver: Spanned<String>,
    green: String,
    red: String,
    amber: String,
    active_low: bool,
    button: String,
}

impl Default for RawLed {
    fn default() -> Self {
        RawLed {
            enabled: false,
            driver: Spanned::new(0..0, "sysfs".into()),
            green: "/sys/class/leds/ctsentry:green".into(),
            red: "/sys/class/leds/ctsentry:red".into(),
            amber: "/sys/class/leds/ctsentry:amber".into(),
            active_low: false,
            button: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: Spanned<String>,
    patient_names: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { level: Spanned::new(0..0, "info".into()), patient_names: false }
    }
}

// ---------------------------------------------------------------------------------------------
// Typed settings.

/// The inference engine to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineBackend {
    /// The fastest available, chosen and logged at start-up.
    Auto,
    /// tract (pure Rust, CPU).
    Tract,
    /// TensorRT (GPU).
    TensorRt,
    /// ONNX Runtime (CPU).
    OnnxRuntime,
    /// OpenVINO (CPU; bf16 where the CPU has AMX or AVX512-BF16).
    OpenVino,
}

/// The arithmetic precision of inference (`engine.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Whatever the chosen engine runs (f32 on the CPU engines of this build; a TensorRT plan's own).
    Auto,
    /// 32-bit floating point.
    F32,
    /// bfloat16 (CPUs with AMX or AVX512-BF16; needs an engine that runs it).
    Bf16,
    /// IEEE half precision (a TensorRT plan built with FP16).
    F16,
}

impl Precision {
    /// The config name (`auto`, `f32`, `bf16`, `f16`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

/// The preprocessing implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreprocessBackend {
    /// CUDA when usable, else CPU.
    Auto,
    /// Plain Rust on the CPU.
    Cpu,
    /// CUDA kernels.
    Cuda,
}

/// Which LED driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedDriver {
    /// Linux LED class (`/sys/class/leds`).
    Sysfs,
    /// GPIO character device.
    Gpio,
}

/// Folders of the daemon (absolute after loading).
#[derive(Debug, Clone, PartialEq)]
pub struct Paths {
    /// The drop folder.
    pub incoming: PathBuf,
    /// Scored inputs are moved here.
    pub done: PathBuf,
    /// Unreadable inputs are moved here with a `.reason` file.
    pub quarantine: PathBuf,
    /// Per-series result JSON.
    pub results: PathBuf,
    /// Journal and control files.
    pub state: PathBuf,
}

/// The DICOM network receiver (`[dicom]`): C-ECHO and C-STORE SCP writing into the drop folder.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomSettings {
    /// Whether it runs.
    pub enabled: bool,
    /// Our AE title (1–16 characters).
    pub ae_title: String,
    /// Address and port to listen on.
    pub listen: std::net::SocketAddr,
    /// Calling AE titles accepted; empty: any.
    pub allowed_callers: Vec<String>,
    /// Associations served at once; more are refused until one ends.
    pub max_associations: usize,
    /// Largest instance accepted (bytes); a larger one is answered "out of resources".
    pub max_instance_bytes: u64,
}

/// Results back to the PACS (`[export]`): a Comprehensive SR per series verdict and, for a
/// positive series, Secondary Capture heat maps, sent by C-STORE.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    /// Whether results are sent.
    pub enabled: bool,
    /// The PACS: `HOST:PORT`.
    pub peer: String,
    /// The PACS's AE title.
    pub called_ae: String,
    /// Ours.
    pub calling_ae: String,
    /// Send the SR.
    pub sr: bool,
    /// Send heat maps (positive series only).
    pub heatmaps: bool,
    /// Heat maps sent per series at most: the most probable positive slices.
    pub max_heatmaps: usize,
    /// Longest wait between tries while the PACS is unreachable (the wait doubles from 1 s).
    pub retry_max_seconds: f64,
}

/// Serial alert sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SerialSettings {
    /// Whether the sink is on.
    pub enabled: bool,
    /// Device path.
    pub port: String,
    /// Baud rate.
    pub baud: u32,
    /// Data bits (5–8).
    pub data_bits: u8,
    /// Parity: `N`, `E` or `O`.
    pub parity: char,
    /// Stop bits (1 or 2).
    pub stop_bits: u8,
    /// Seconds between HEARTBEAT messages.
    pub heartbeat_seconds: f64,
    /// Wait for `$CTACK` of every message and retransmit until it comes.
    pub ack: bool,
    /// First retransmission delay in ACK mode (doubles up to 30 s).
    pub ack_timeout_seconds: f64,
}

/// How the drop folder is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// inotify events (local file systems), with a periodic rescan as a safety net.
    Inotify,
    /// Periodic scans only (network shares, where inotify sees nothing).
    Poll,
}

/// The daemon's watching, results and disk settings.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonSettings {
    /// How the drop folder is watched.
    pub watch: WatchMode,
    /// Seconds between scans of the drop folder.
    pub poll_seconds: f64,
    /// A file seen only by a scan is taken once its size and mtime have not changed for this long.
    pub stable_seconds: f64,
    /// Write heat-map PNGs of positive slices into results/.
    pub heatmaps: bool,
    /// Below this much free space (MiB) on any output folder's file system, new files wait.
    pub min_free_mb: f64,
    /// Scored inputs in done/ are deleted this many days after they were moved there (0: never).
    pub done_days: f64,
    /// Series results (JSON, heat maps) are deleted this many days after they were written (0: never).
    pub results_days: f64,
}

/// LED alert sink.
#[derive(Debug, Clone, PartialEq)]
pub struct LedSettings {
    /// Whether the sink is on.
    pub enabled: bool,
    /// Driver.
    pub driver: LedDriver,
    /// Green LED.
    pub green: String,
    /// Red LED.
    pub red: String,
    /// Amber LED.
    pub amber: String,
    /// GPIO lines drive the LED on when low (and the button reads pressed when low).
    pub active_low: bool,
    /// Acknowledge button on a GPIO input line (`CHIP:LINE`); empty: none.
    pub button: String,
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The file it was loaded from (None for built-in defaults).
    pub source: Option<PathBuf>,
    /// Folders.
    pub paths: Paths,
    /// The model file (its manifest has the same stem and `.toml`).
    pub model_path: PathBuf,
    /// Engine choice.
    pub engine: EngineBackend,
    /// Inference precision required (`auto`: whatever the engine runs).
    pub precision: Precision,
    /// Engine worker threads (None: sized to the machine).
    pub engine_threads: Option<usize>,
    /// The ONNX Runtime shared library (None: `ORT_DYLIB_PATH`).
    pub onnxruntime_library: Option<PathBuf>,
    /// The OpenVINO C library (None: the Debian package's, else python3's `openvino` package).
    pub openvino_library: Option<PathBuf>,
    /// The TensorRT plan (None: the model path with `.plan`).
    pub tensorrt_plan: Option<PathBuf>,
    /// libnvinfer to load (None: `libnvinfer.so.11`, then `.so.10`, from the loader's path).
    pub tensorrt_library: Option<PathBuf>,
    /// Preprocessing choice.
    pub preprocess: PreprocessBackend,
    /// Decision threshold override (None: the manifest's calibrated threshold).
    pub threshold: Option<f64>,
    /// Positive slices needed for a positive series (None: the manifest's, else
    /// [`crate::decide::DEFAULT_MIN_POSITIVE_SLICES`]).
    pub min_positive_slices: Option<usize>,
    /// Millimetres of positive slices a positive series needs (None: the manifest's, else 0).
    pub min_positive_extent_mm: Option<f64>,
    /// Share of the lung in positive slices a positive series needs (None: the manifest's, else 0).
    pub min_positive_share: Option<f64>,
    /// Silence after which a series is complete.
    pub quiet_seconds: f64,
    /// Watching, results and disk settings of the daemon.
    pub daemon: DaemonSettings,
    /// What ingest accepts.
    pub ingest: IngestOptions,
    /// Serial sink.
    pub serial: SerialSettings,
    /// LED sink.
    pub led: LedSettings,
    /// The DICOM network receiver.
    pub dicom: DicomSettings,
    /// Results sent to the PACS.
    pub export: ExportSettings,
    /// Where `/metrics` and `/healthz` are served (None: `[metrics]` absent, off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Log level.
    pub log_level: log::LevelFilter,
    /// Whether patient names may appear in logs (off by default).
    pub log_patient_names: bool,
}

impl Settings {
    /// Built-in defaults (the DESIGN.md defaults), as if the file were empty, relative to `base`.
    pub fn defaults(base: &Path) -> Settings {
        validate(RawConfig::default(), base, "").expect("defaults are valid")
    }

    /// Loads and validates a config file. All errors are reported together.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
        // The config's folder exists (the file was just read): resolve symbolic links in it once.
        let base = base.canonicalize().unwrap_or(base);
        let mut s = Settings::from_str(&text, &base).map_err(|issues| ConfigError::Invalid { path: path.to_path_buf(), issues })?;
        s.source = Some(path.to_path_buf());
        Ok(s)
    }

    /// Parses and validates TOML text; relative paths resolve against `base`.
    pub fn from_str(text: &str, base: &Path) -> Result<Settings, Vec<ConfigIssue>> {
        let (raw, parsed_text, mut issues) = parse_all(text);
        let Some(raw) = raw else { return Err(issues) };
        // Validation still runs on what parsed, so semantic errors are reported with the others.
        match validate(raw, base, &parsed_text) {
            Ok(s) if issues.is_empty() => Ok(s),
            Ok(_) => Err(issues),
            Err(more) => {
                issues.extend(more);
                issues.sort_by_key(|i| (i.line, i.column));
                Err(issues)
            }
        }
    }
}

/// The part of [`Settings`] read once at start (`ctsentry run`): a change needs a restart.
#[derive(Debug, Clone, PartialEq)]
pub struct FixedSettings {
    /// See [`Settings::source`].
    pub source: Option<PathBuf>,
    /// See [`Settings::paths`].
    pub paths: Paths,
    /// See [`Settings::model_path`].
    pub model_path: PathBuf,
    /// See [`Settings::engine`].
    pub engine: EngineBackend,
    /// See [`Settings::precision`].
    pub precision: Precision,
    /// See [`Settings::engine_threads`].
    pub engine_threads: Option<usize>,
    /// See [`Settings::onnxruntime_library`].
    pub onnxruntime_library: Option<PathBuf>,
    /// See [`Settings::openvino_library`].
    pub openvino_library: Option<PathBuf>,
    /// See [`Settings::tensorrt_plan`].
    pub tensorrt_plan: Option<PathBuf>,
    /// See [`Settings::tensorrt_library`].
    pub tensorrt_library: Option<PathBuf>,
    /// See [`Settings::preprocess`].
    pub preprocess: PreprocessBackend,
    /// See [`Settings::serial`].
    pub serial: SerialSettings,
    /// See [`Settings::led`].
    pub led: LedSettings,
    /// See [`Settings::dicom`].
    pub dicom: DicomSettings,
    /// See [`Settings::export`].
    pub export: ExportSettings,
    /// See [`Settings::metrics_listen`].
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `watch.mode`.
    pub watch: WatchMode,
}

/// The part of [`Settings`] a reload (SIGHUP) applies at once.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// See [`Settings::threshold`].
    pub threshold: Option<f64>,
    /// See [`Settings::min_positive_slices`].
    pub min_positive_slices: Option<usize>,
    /// See [`Settings::min_positive_extent_mm`].
    pub min_positive_extent_mm: Option<f64>,
    /// See [`Settings::min_positive_share`].
    pub min_positive_share: Option<f64>,
    /// See [`Settings::quiet_seconds`].
    pub quiet_seconds: f64,
    /// See [`Settings::ingest`].
    pub ingest: IngestOptions,
    /// `watch.poll_seconds`.
    pub poll_seconds: f64,
    /// `watch.stable_seconds`.
    pub stable_seconds: f64,
    /// `results.heatmaps`.
    pub heatmaps: bool,
    /// `disk.min_free_mb`.
    pub min_free_mb: f64,
    /// `retention.done_days`.
    pub done_days: f64,
    /// `retention.results_days`.
    pub results_days: f64,
    /// See [`Settings::log_level`].
    pub log_level: log::LevelFilter,
    /// See [`Settings::log_patient_names`].
    pub log_patient_names: bool,
}

impl Settings {
    /// Splits into the fixed and the live part. Every field is named here (no `..`), so a new
    /// setting does not compile until it is classified: reload can never silently skip one.
    pub fn split(self) -> (FixedSettings, LiveSettings) {
        let Settings {
            source,
            paths,
            model_path,
            engine,
            precision,
            engine_threads,
            onnxruntime_library,
            openvino_library,
            tensorrt_plan,
            tensorrt_library,
            preprocess,
            threshold,
            min_positive_slices,
            min_positive_extent_mm,
            min_positive_share,
            quiet_seconds,
            daemon: DaemonSettings { watch, poll_seconds, stable_seconds, heatmaps, min_free_mb, done_days, results_days },
            ingest,
            serial,
            led,
            dicom,
            export,
            metrics_listen,
            log_level,
            log_patient_names,
        } = self;
        (
            FixedSettings { source, paths, model_path, engine, precision, engine_threads, onnxruntime_library, openvino_library, tensorrt_plan, tensorrt_library, preprocess, serial, led, dicom, export, metrics_listen, watch },
            LiveSettings { threshold, min_positive_slices, min_positive_extent_mm, min_positive_share, quiet_seconds, ingest, poll_seconds, stable_seconds, heatmaps, min_free_mb, done_days, results_days, log_level, log_patient_names },
        )
    }

    /// Puts the two parts back together.
    pub fn join(f: FixedSettings, l: LiveSettings) -> Settings {
        Settings {
            source: f.source,
            paths: f.paths,
            model_path: f.model_path,
            engine: f.engine,
            precision: f.precision,
            engine_threads: f.engine_threads,
            onnxruntime_library: f.onnxruntime_library,
            openvino_library: f.openvino_library,
            tensorrt_plan: f.tensorrt_plan,
            tensorrt_library: f.tensorrt_library,
            preprocess: f.preprocess,
            threshold: l.threshold,
            min_positive_slices: l.min_positive_slices,
            min_positive_extent_mm: l.min_positive_extent_mm,
            min_positive_share: l.min_positive_share,
            quiet_seconds: l.quiet_seconds,
            daemon: DaemonSettings {
                watch: f.watch,
                poll_seconds: l.poll_seconds,
                stable_seconds: l.stable_seconds,
                heatmaps: l.heatmaps,
                min_free_mb: l.min_free_mb,
                done_days: l.done_days,
                results_days: l.results_days,
            },
            ingest: l.ingest,
            serial: f.serial,
            led: f.led,
            dicom: f.dicom,
            export: f.export,
            metrics_listen: f.metrics_listen,
            log_level: l.log_level,
            log_patient_names: l.log_patient_names,
        }
    }
}

impl FixedSettings {
    /// The config keys (as written in the file) whose values differ between `self` and `new`.
    pub fn changed_keys(&self, new: &FixedSettings) -> Vec<&'static str> {
        let FixedSettings { source: _, paths, model_path, engine, precision, engine_threads, onnxruntime_library, openvino_library, tensorrt_plan, tensorrt_library, preprocess, serial, led, dicom, export, metrics_listen, watch } = self;
        let mut out = Vec::new();
        let mut check = |differs: bool, key: &'static str| {
            if differs {
                out.push(key);
            }
        };
        check(*paths != new.paths, "paths.*");
        check(*model_path != new.model_path, "model.path");
        check(*engine != new.engine, "engine.backend");
        check(*precision != new.precision, "engine.precision");
        check(*engine_threads != new.engine_threads, "engine.threads");
        check(*onnxruntime_library != new.onnxruntime_library, "engine.onnxruntime_library");
        check(*openvino_library != new.openvino_library, "engine.openvino_library");
        check(*tensorrt_plan != new.tensorrt_plan, "engine.tensorrt_plan");
        check(*tensorrt_library != new.tensorrt_library, "engine.tensorrt_library");
        check(*preprocess != new.preprocess, "preprocess.backend");
        check(*serial != new.serial, "alert.serial.*");
        check(*led != new.led, "alert.led.*");
        check(*dicom != new.dicom, "dicom.*");
        check(*export != new.export, "export.*");
        check(*metrics_listen != new.metrics_listen, "metrics.listen");
        check(*watch != new.watch, "watch.mode");
        out
    }
}

/// Whether `t` (trimmed) can be a DICOM AE title: 1 to 16 printable ASCII characters, no backslash.
fn is_ae_title(t: &str) -> bool {
    !t.is_empty() && t.len() <= 16 && t.chars().all(|ch| ch.is_ascii_graphic() || ch == ' ') && !t.contains('\\')
}

/// Line and column (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    (line, col)
}

/// Deserializes the raw config, collecting every error: after each error the offending line
/// (or a whole unknown table) is commented out and parsing is retried. Returns what finally
/// parsed (None after a syntax error), the text it parsed, and the errors.
fn parse_all(text: &str) -> (Option<RawConfig>, String, Vec<ConfigIssue>) {
    let mut issues = Vec::new();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..100 {
        let current = lines.join("\n");
        match toml::from_str::<RawConfig>(&current) {
            Ok(raw) => return (Some(raw), current, issues),
            Err(e) => {
                let span = e.span();
                let (line, column) = span.as_ref().map(|s| position(&current, s.start)).unwrap_or((0, 0));
                let text = current.lines().nth(line.wrapping_sub(1)).unwrap_or("");
                issues.push(ConfigIssue { line, column, reason: plain_words(e.message(), text) });
                if span.is_none() || line == 0 || line > lines.len() || is_syntax_error(e.message()) {
                    break;
                }
                let idx = line - 1;
                if lines[idx].trim_start().starts_with('[') {
                    // An unknown or bad table: drop its header and its keys.
                    lines[idx] = format!("# {}", lines[idx]);
                    for l in lines.iter_mut().skip(idx + 1) {
                        if l.trim_start().starts_with('[') {
                            break;
                        }
                        *l = format!("# {l}");
                    }
                } else {
                    lines[idx] = format!("# {}", lines[idx]);
                }
            }
        }
    }
    issues.sort_by_key(|i| (i.line, i.column));
    (None, String::new(), issues)
}

/// The TOML parser's message, with the common mistakes said in plain words: an unquoted word,
/// a quoted number, a decimal comma, a word where a number or a yes/no belongs. `line` is the
/// offending line of the file.
fn plain_words(msg: &str, line: &str) -> String {
    let (key, value) = match line.split_once('=') {
        Some((k, v)) => (k.trim(), v.split('#').next().unwrap_or("").trim()),
        None => ("", ""),
    };
    let unquoted = value.trim_matches('"');
    let kind = |expected: &str| match expected {
        "i64" | "u64" | "usize" | "u32" => Some(("a whole number", "2")),
        "f64" | "f32" => Some(("a number", "0.5")),
        "a boolean" => Some(("true or false", "true")),
        "a string" => Some(("text in double quotes", "\"text\"")),
        _ => None,
    };
    if msg.starts_with("invalid string") && !key.is_empty() {
        return format!("{key} = {value}: text must be in double quotes, e.g. {key} = \"{value}\" (numbers are plain digits, e.g. 2 or 0.5; yes/no is true or false)");
    }
    if msg.starts_with("expected newline") && !key.is_empty() && value.contains(',') && value.replace(',', "").chars().all(|c| c.is_ascii_digit() || c == '-') {
        return format!("{key} = {value}: a decimal number takes a point, not a comma: {key} = {}", value.replacen(',', ".", 1));
    }
    if let Some(rest) = msg.strip_prefix("invalid type: ") {
        if let Some((found, expected)) = rest.rsplit_once(", expected ") {
            if let Some((what, example)) = kind(expected) {
                let hint = if found.starts_with("string") && unquoted.parse::<f64>().is_ok() {
                    format!("remove the quotes: {key} = {unquoted}")
                } else {
                    format!("e.g. {key} = {example}")
                };
                return format!("{key} = {value}: expected {what}; {hint}");
            }
        }
    }
    msg.replace('\n', "; ")
}

fn is_syntax_error(msg: &str) -> bool {
    // Errors from the TOML grammar itself make the rest of the file unreliable: stop there.
    ["invalid", "expected", "unclosed", "duplicate key"].iter().any(|w| msg.starts_with(w))
        && !msg.starts_with("invalid type")
        && !msg.starts_with("invalid value")
        && !msg.starts_with("expected a")
}

struct Checker<'a> {
    text: &'a str,
    issues: Vec<ConfigIssue>,
}

impl Checker<'_> {
    fn fail<T>(&mut self, span: &Spanned<T>, reason: String) {
        let (line, column) = if span.span().is_empty() { (0, 0) } else { position(self.text, span.span().start) };
        self.issues.push(ConfigIssue { line, column, reason });
    }

    fn choice<T: Copy>(&mut self, key: &str, v: &Spanned<String>, options: &[(&str, T)]) -> Option<T> {
        let found = options.iter().find(|(n, _)| *n == v.get_ref().as_str()).map(|(_, t)| *t);
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            self.fail(v, format!("{key} = \"{}\" is not one of {}", v.get_ref(), names.join(", ")));
        }
        found
    }

    fn range_i(&mut self, key: &str, v: &Spanned<i64>, lo: i64, hi: i64) -> i64 {
        let x = *v.get_ref();
        if x < lo || x > hi {
            self.fail(v, format!("{key} = {x} is outside {lo}..={hi}"));
        }
        x.clamp(lo, hi)
    }

    fn range_f(&mut self, key: &str, v: &Spanned<f64>, lo: f64, hi: f64) -> f64 {
        let x = *v.get_ref();
        if !(x >= lo && x <= hi) {
            self.fail(v, format!("{key} = {x} is outside {lo}..={hi}"));
        }
        if x.is_finite() { x.clamp(lo, hi) } else { lo }
    }

    fn path(&mut self, key: &str, v: &Spanned<String>, base: &Path) -> PathBuf {
        if v.get_ref().trim().is_empty() {
            self.fail(v, format!("{key} must not be empty"));
        }
        normalize(&base.join(v.get_ref()))
    }
}

/// The environment variable naming the config file when `--config` is not given.
pub const CONFIG_ENV: &str = "CTSENTRY_CONFIG";
/// The config of a checkout, relative to the working directory.
pub const CHECKOUT_CONFIG: &str = "config/ctsentry.toml";
/// The config of an installed box.
pub const SYSTEM_CONFIG: &str = "/etc/ctsentry/ctsentry.toml";

/// Where the config file was found, and by which rule (DESIGN.md: `--config`,
/// `$CTSENTRY_CONFIG`, `config/ctsentry.toml` in the working directory, `/etc/ctsentry/ctsentry.toml`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Given with `--config`.
    Flag(PathBuf),
    /// Named by `$CTSENTRY_CONFIG`.
    Env(PathBuf),
    /// `config/ctsentry.toml` in the working directory (a checkout).
    Checkout(PathBuf),
    /// `/etc/ctsentry/ctsentry.toml` (an installed box).
    System(PathBuf),
    /// None of them exists: built-in defaults.
    None,
}

impl ConfigSource {
    /// Applies the lookup order. An explicit `--config` or `$CTSENTRY_CONFIG` is taken even when
    /// the file is missing (loading it then says so); the two default places only when they exist.
    pub fn locate(flag: Option<&Path>) -> ConfigSource {
        if let Some(p) = flag {
            return ConfigSource::Flag(p.to_path_buf());
        }
        if let Some(p) = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty()) {
            return ConfigSource::Env(PathBuf::from(p));
        }
        if Path::new(CHECKOUT_CONFIG).is_file() {
            return ConfigSource::Checkout(PathBuf::from(CHECKOUT_CONFIG));
        }
        if Path::new(SYSTEM_CONFIG).is_file() {
            return ConfigSource::System(PathBuf::from(SYSTEM_CONFIG));
        }
        ConfigSource::None
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ConfigSource::Flag(p) | ConfigSource::Env(p) | ConfigSource::Checkout(p) | ConfigSource::System(p) => Some(p),
            ConfigSource::None => None,
        }
    }
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::Flag(p) => write!(f, "{} (--config)", p.display()),
            ConfigSource::Env(p) => write!(f, "{} (${CONFIG_ENV})", p.display()),
            ConfigSource::Checkout(p) => write!(f, "{} (working directory)", normalize(p).display()),
            ConfigSource::System(p) => write!(f, "{}", p.display()),
            ConfigSource::None => write!(f, "none: no --config, no ${CONFIG_ENV}, no ./{CHECKOUT_CONFIG}, no {SYSTEM_CONFIG}"),
        }
    }
}

/// `path` made absolute (against the working directory) with `.` and `..` resolved lexically,
/// so that two spellings of one folder compare equal and a path derived from a watched one
/// strips its prefix (a relative `config/../var/incoming` once made every scored file "move"
/// back into the drop folder under a new name).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Folders that must not lie inside one another: a scored file moved into a `done/` inside the
/// drop folder would be picked up again, forever; a `state/` inside `results/` would be pruned
/// by retention.
fn check_folders(c: &mut Checker<'_>, raw: &RawPaths, paths: &Paths) {
    let named = [
        ("paths.incoming", &raw.incoming, &paths.incoming),
        ("paths.done", &raw.done, &paths.done),
        ("paths.quarantine", &raw.quarantine, &paths.quarantine),
        ("paths.results", &raw.results, &paths.results),
        ("paths.state", &raw.state, &paths.state),
    ];
    for (i, (key, span, p)) in named.iter().enumerate() {
        for (other_key, other_span, q) in named.iter().skip(i + 1) {
            // The error points at the later key (same folder) or the inner one (nested).
            let clash = if p == q {
                Some((*other_span, format!("{key} and {other_key} are the same folder ({})", p.display())))
            } else if p.starts_with(q) || q.starts_with(p) {
                // The drop folder is walked for input, done/ and results/ for retention: a
                // folder inside another would be read or pruned as part of it.
                let (inner, outer) = if p.starts_with(q) { ((key, p, *span), (other_key, q)) } else { ((other_key, q, *other_span), (key, p)) };
                Some((inner.2, format!("{} ({}) lies inside {} ({}): the five folders must be apart", inner.0, inner.1.display(), outer.0, outer.1.display())))
            } else {
                None
            };
            if let Some((at, reason)) = clash {
                c.fail(at, reason);
            }
        }
    }
}

fn validate(raw: RawConfig, base: &Path, text: &str) -> Result<Settings, Vec<ConfigIssue>> {
    let mut c = Checker { text, issues: Vec::new() };
    let paths = Paths {
        incoming: c.path("paths.incoming", &raw.paths.incoming, base),
        done: c.path("paths.done", &raw.paths.done, base),
        quarantine: c.path("paths.quarantine", &raw.paths.quarantine, base),
        results: c.path("paths.results", &raw.paths.results, base),
        state: c.path("paths.state", &raw.paths.state, base),
    };
    check_folders(&mut c, &raw.paths, &paths);
    let model_path = c.path("model.path", &raw.model.path, base);
    let engine = c.choice(
        "engine.backend",
        &raw.engine.backend,
        &[("auto", EngineBackend::Auto), ("tract", EngineBackend::Tract), ("tensorrt", EngineBackend::TensorRt), ("onnxruntime", EngineBackend::OnnxRuntime), ("openvino", EngineBackend::OpenVino)],
    );
    let precision = c.choice(
        "engine.precision",
        &raw.engine.precision,
        &[("auto", Precision::Auto), ("f32", Precision::F32), ("bf16", Precision::Bf16), ("f16", Precision::F16)],
    );
    let engine_threads = raw.engine.threads.as_ref().map(|t| c.range_i("engine.threads", t, 1, 256) as usize);
    let onnxruntime_library = raw.engine.onnxruntime_library.as_ref().map(|p| c.path("engine.onnxruntime_library", p, base));
    let openvino_library = raw.engine.openvino_library.as_ref().map(|p| c.path("engine.openvino_library", p, base));
    let tensorrt_plan = raw.engine.tensorrt_plan.as_ref().map(|p| c.path("engine.tensorrt_plan", p, base));
    let tensorrt_library = raw.engine.tensorrt_library.as_ref().map(|p| c.path("engine.tensorrt_library", p, base));
    let preprocess = c.choice(
        "preprocess.backend",
        &raw.preprocess.backend,
        &[("auto", PreprocessBackend::Auto), ("cpu", PreprocessBackend::Cpu), ("cuda", PreprocessBackend::Cuda)],
    );
    let threshold = raw.decision.threshold.as_ref().map(|t| {
        let v = c.range_f("decision.threshold", t, 0.0, 1.0);
        if v == 0.0 {
            // Every probability is >= 0: every slice, even one skipped for having no lung, would count.
            c.fail(t, "decision.threshold = 0 makes every slice positive; use a value above 0".into());
        }
        v
    });
    let min_positive_slices = raw.decision.min_positive_slices.as_ref().map(|v| c.range_i("decision.min_positive_slices", v, 1, 10_000) as usize);
    let min_positive_extent_mm = raw.decision.min_positive_extent_mm.as_ref().map(|v| c.range_f("decision.min_positive_extent_mm", v, 0.0, 2_000.0));
    let min_positive_share = raw.decision.min_positive_share.as_ref().map(|v| c.range_f("decision.min_positive_share", v, 0.0, 1.0));
    let quiet_seconds = c.range_f("series.quiet_seconds", &raw.series.quiet_seconds, 0.1, 86_400.0);
    let ing = &raw.ingest;
    let modalities: Vec<String> = ing.modalities.get_ref().iter().map(|m| m.trim().to_ascii_uppercase()).collect();
    if modalities.iter().any(|m| m.is_empty() || m.len() > 16) {
        c.fail(&ing.modalities, "ingest.modalities holds an empty or over-long code".into());
    }
    let mb = |x: f64| (x * 1024.0 * 1024.0) as u64;
    let limits = Limits {
        max_file_bytes: mb(c.range_f("ingest.max_file_mb", &ing.max_file_mb, 1.0, 65_536.0)),
        max_pixels_per_slice: c.range_i("ingest.max_pixels_per_slice", &ing.max_pixels_per_slice, 1, 65_536 * 65_536) as u64,
        max_frames: c.range_i("ingest.max_frames", &ing.max_frames, 1, 100_000) as u64,
        max_decompressed_bytes: mb(c.range_f("ingest.max_decompressed_mb", &ing.max_decompressed_mb, 1.0, 65_536.0)),
    };
    let baud = c.range_i("alert.serial.baud", &raw.alert.serial.baud, 50, 4_000_000) as u32;
    let sr = &raw.alert.serial;
    let fr: Vec<char> = sr.framing.get_ref().to_ascii_uppercase().chars().collect();
    let framing = match fr.as_slice() {
        [d @ '5'..='8', p @ ('N' | 'E' | 'O'), s @ ('1' | '2')] => (*d as u8 - b'0', *p, *s as u8 - b'0'),
        _ => {
            c.fail(&sr.framing, format!("alert.serial.framing = \"{}\" is not DATA BITS (5-8), PARITY (N/E/O), STOP BITS (1/2), e.g. 8N1", sr.framing.get_ref()));
            (8, 'N', 1)
        }
    };
    let heartbeat_seconds = c.range_f("alert.serial.heartbeat_seconds", &sr.heartbeat_seconds, 1.0, 3600.0);
    let ack_timeout_seconds = c.range_f("alert.serial.ack_timeout_seconds", &sr.ack_timeout_seconds, 0.05, 60.0);
    let watch = c.choice("watch.mode", &raw.watch.mode, &[("inotify", WatchMode::Inotify), ("poll", WatchMode::Poll)]);
    let daemon = DaemonSettings {
        watch: watch.unwrap_or(WatchMode::Poll),
        poll_seconds: c.range_f("watch.poll_seconds", &raw.watch.poll_seconds, 0.05, 3600.0),
        stable_seconds: c.range_f("watch.stable_seconds", &raw.watch.stable_seconds, 0.0, 3600.0),
        heatmaps: raw.results.heatmaps,
        min_free_mb: c.range_f("disk.min_free_mb", &raw.disk.min_free_mb, 0.0, 1e9),
        done_days: c.range_f("retention.done_days", &raw.retention.done_days, 0.0, 36_500.0),
        results_days: c.range_f("retention.results_days", &raw.retention.results_days, 0.0, 36_500.0),
    };
    let driver = c.choice("alert.led.driver", &raw.alert.led.driver, &[("sysfs", LedDriver::Sysfs), ("gpio", LedDriver::Gpio)]);
    let log_level = c.choice(
        "log.level",
        &raw.log.level,
        &[
            ("off", log::LevelFilter::Off),
            ("error", log::LevelFilter::Error),
            ("warn", log::LevelFilter::Warn),
            ("info", log::LevelFilter::Info),
            ("debug", log::LevelFilter::Debug),
            ("trace", log::LevelFilter::Trace),
        ],
    );
    let dr = &raw.dicom;
    let title = dr.ae_title.get_ref().trim().to_string();
    if !is_ae_title(&title) {
        c.fail(&dr.ae_title, format!("dicom.ae_title = {title:?}: 1 to 16 printable ASCII characters, no backslash"));
    }
    let listen = match dr.listen.get_ref().parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.fail(&dr.listen, format!("dicom.listen = {:?}: expected ADDRESS:PORT, e.g. \"0.0.0.0:11112\"", dr.listen.get_ref()));
            std::net::SocketAddr::from(([0, 0, 0, 0], 11112))
        }
    };
    for a in &dr.allowed_callers {
        let t = a.trim();
        if !is_ae_title(t) {
            c.fail(&dr.ae_title, format!("dicom.allowed_callers: {a:?} is not an AE title (1 to 16 characters, no backslash)"));
        }
    }
    let metrics_listen = raw.metrics.listen.as_ref().map(|l| match l.get_ref().parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.fail(l, format!("metrics.listen = {:?}: expected ADDRESS:PORT, e.g. \"127.0.0.1:9464\"", l.get_ref()));
            std::net::SocketAddr::from(([127, 0, 0, 1], 9464))
        }
    });
    let dicom = DicomSettings {
        enabled: dr.enabled,
        ae_title: title,
        listen,
        allowed_callers: dr.allowed_callers.iter().map(|a| a.trim().to_string()).collect(),
        max_associations: c.range_i("dicom.max_associations", &dr.max_associations, 1, 256) as usize,
        max_instance_bytes: c.range_i("dicom.max_instance_mb", &dr.max_instance_mb, 1, 65_536) as u64 * 1024 * 1024,
    };
    let ex = &raw.export;
    for (key, v) in [("export.called_ae", &ex.called_ae), ("export.calling_ae", &ex.calling_ae)] {
        if !is_ae_title(v.get_ref().trim()) {
            c.fail(v, format!("{key} = {:?}: 1 to 16 printable ASCII characters, no backslash", v.get_ref()));
        }
    }
    let peer = ex.peer.get_ref().trim().to_string();
    let port_ok = peer.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        c.fail(&ex.peer, format!("export.peer = {peer:?}: expected HOST:PORT, e.g. \"10.0.0.5:104\""));
    }
    for item in ex.send.get_ref() {
        if !["sr", "heatmaps"].contains(&item.as_str()) {
            c.fail(&ex.send, format!("export.send: {item:?} is not one of \"sr\", \"heatmaps\""));
        }
    }
    let export = ExportSettings {
        enabled: ex.enabled,
        peer,
        called_ae: ex.called_ae.get_ref().trim().to_string(),
        calling_ae: ex.calling_ae.get_ref().trim().to_string(),
        sr: ex.send.get_ref().iter().any(|s| s == "sr"),
        heatmaps: ex.send.get_ref().iter().any(|s| s == "heatmaps"),
        max_heatmaps: c.range_i("export.max_heatmaps", &ex.max_heatmaps, 0, 1000) as usize,
        retry_max_seconds: c.range_f("export.retry_max_seconds", &ex.retry_max_seconds, 1.0, 3600.0),
    };
    if !c.issues.is_empty() {
        c.issues.sort_by_key(|i| (i.line, i.column));
        return Err(c.issues);
    }
    Ok(Settings {
        source: None,
        paths,
        model_path,
        engine: engine.expect("checked"),
        precision: precision.expect("checked"),
        engine_threads,
        onnxruntime_library,
        openvino_library,
        tensorrt_plan,
        tensorrt_library,
        preprocess: preprocess.expect("checked"),
        threshold,
        min_positive_slices,
        min_positive_extent_mm,
        min_positive_share,
        quiet_seconds,
        ingest: IngestOptions { limits, modalities, allow_missing_modality: ing.allow_missing_modality, display_window: None },
        daemon,
        serial: SerialSettings {
            enabled: sr.enabled,
            port: sr.port.clone(),
            baud,
            data_bits: framing.0,
            parity: framing.1,
            stop_bits: framing.2,
            heartbeat_seconds,
            ack: sr.ack,
            ack_timeout_seconds,
        },
        led: LedSettings {
            enabled: raw.alert.led.enabled,
            driver: driver.expect("checked"),
            green: raw.alert.led.green,
            red: raw.alert.led.red,
            amber: raw.alert.led.amber,
            active_low: raw.alert.led.active_low,
            button: raw.alert.led.button.clone(),
        },
        dicom,
        export,
        metrics_listen,
        log_level: log_level.expect("checked"),
        log_patient_names: raw.log.patient_names,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_is_valid_and_relative_paths_resolve() {
        let s = Settings::from_str(
            "[paths]\nincoming = \"in\"\n[decision]\nthreshold = 0.3\nmin_positive_slices = 3\n[engine]\nbackend = \"tract\"\n",
            Path::new("/etc/ctsentry"),
        )
        .unwrap();
        assert_eq!(s.paths.incoming, PathBuf::from("/etc/ctsentry/in"));
        assert_eq!(s.paths.done, PathBuf::from("/var/lib/ctsentry/done"));
        assert_eq!(s.threshold, Some(0.3));
        assert_eq!(s.min_positive_slices, Some(3));
        assert_eq!(s.engine, EngineBackend::Tract);
    }

    #[test]
    fn every_error_is_reported_with_its_position() {
        let text = "[paths]\nincomming = \"x\"\n[decision]\nthreshold = 1.5\nmin_positive_slices = \"two\"\n[engine]\nbackend = \"gpu\"\n[bogus]\na = 1\n";
        let issues = Settings::from_str(text, Path::new("/")).unwrap_err();
        let at: Vec<(usize, usize)> = issues.iter().map(|i| (i.line, i.column)).collect();
        assert_eq!(at, vec![(2, 1), (4, 13), (5, 23), (7, 11), (8, 2)], "{issues:#?}");
        assert!(issues[0].reason.contains("incomming"), "{}", issues[0].reason);
        assert!(issues[1].reason.contains("outside"));
        assert!(issues[3].reason.contains("\"gpu\" is not one of auto, tract, tensorrt, onnxruntime, openvino"));
    }

    #[test]
    fn syntax_error_has_a_position() {
        let issues = Settings::from_str("[paths\nincoming = 1", Path::new("/")).unwrap_err();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].line, 1);
    }

    #[test]
    fn relative_paths_become_absolute_and_normalised() {
        let s = Settings::from_str("[paths]\nincoming = \"../var/./incoming\"\n", Path::new("config")).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(s.paths.incoming, cwd.join("var/incoming"));
        assert!(s.paths.incoming.components().all(|c| !matches!(c, std::path::Component::ParentDir | std::path::Component::CurDir)));
        assert_eq!(normalize(Path::new("/a/b/../../c/./d")), PathBuf::from("/c/d"));
    }

    #[test]
    fn daemon_folders_inside_the_drop_folder_are_refused() {
        let issues = Settings::from_str("[paths]\nincoming = \"/d/in\"\ndone = \"/d/in/done\"\n", Path::new("/")).unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert!(issues[0].reason.contains("paths.done (/d/in/done) lies inside paths.incoming"), "{}", issues[0].reason);
        // Nor inside the folders retention prunes.
        let issues = Settings::from_str("[paths]\nincoming = \"/d/in\"\nstate = \"/d/res/state\"\nresults = \"/d/res\"\n", Path::new("/")).unwrap_err();
        assert!(issues[0].reason.contains("paths.state (/d/res/state) lies inside paths.results"), "{}", issues[0].reason);
        assert_eq!(issues[0].line, 3);
        let issues = Settings::from_str("[paths]\nincoming = \"/d/x\"\nquarantine = \"/d/./x\"\n", Path::new("/")).unwrap_err();
        assert!(issues[0].reason.contains("are the same folder"), "{}", issues[0].reason);
        Settings::from_str("[paths]\nincoming = \"/d/in\"\nstate = \"/d/state\"\nresults = \"/d/res\"\n", Path::new("/")).unwrap();
    }

    #[test]
    fn common_toml_mistakes_are_said_in_plain_words() {
        let one = |text: &str| Settings::from_str(text, Path::new("/")).unwrap_err().remove(0).reason;
        assert_eq!(one("[engine]\nbackend = tract\n"), "backend = tract: text must be in double quotes, e.g. backend = \"tract\" (numbers are plain digits, e.g. 2 or 0.5; yes/no is true or false)");
        assert_eq!(one("[decision]\nthreshold = 0,5\n"), "threshold = 0,5: a decimal number takes a point, not a comma: threshold = 0.5");
        assert_eq!(one("[decision]\nmin_positive_slices = \"two\"\n"), "min_positive_slices = \"two\": expected a whole number; e.g. min_positive_slices = 2");
        assert_eq!(one("[series]\nquiet_seconds = \"10\"\n"), "quiet_seconds = \"10\": expected a number; remove the quotes: quiet_seconds = 10");
        assert_eq!(one("[alert.serial]\nenabled = \"yes\"\n"), "enabled = \"yes\": expected true or false; e.g. enabled = true");
        assert_eq!(one("[engine]\nbackend = 3\n"), "backend = 3: expected text in double quotes; e.g. backend = \"text\"");
    }

    #[test]
    fn reload_split_names_every_fixed_change_and_keeps_the_live_ones() {
        let base = Path::new("/etc/ctsentry");
        let old = Settings::from_str("[engine]\nbackend = \"tract\"\n[decision]\nthreshold = 0.3\n", base).unwrap();
        let new = Settings::from_str(
            "[engine]\nbackend = \"tract\"\ntensorrt_plan = \"m.plan\"\n[decision]\nthreshold = 0.4\n[log]\nlevel = \"debug\"\n[watch]\nmode = \"poll\"\n",
            base,
        )
        .unwrap();
        let (old_fixed, _) = old.clone().split();
        let (new_fixed, new_live) = new.split();
        assert_eq!(old_fixed.changed_keys(&new_fixed), vec!["engine.tensorrt_plan", "watch.mode"]);
        let applied = Settings::join(old_fixed.clone(), new_live);
        assert_eq!(applied.threshold, Some(0.4));
        assert_eq!(applied.log_level, log::LevelFilter::Debug);
        assert_eq!(applied.tensorrt_plan, None, "fixed keys keep their running values");
        assert_eq!(Settings::join(old_fixed, old.clone().split().1), old, "split and join are inverse");
    }

    #[test]
    fn dicom_and_metrics_keys_are_checked() {
        let errors = |text: &str| Settings::from_str(text, Path::new("/")).err().map(|v| v.into_iter().map(|i| i.reason).collect::<Vec<_>>().join("; ")).unwrap_or_default();
        assert!(errors("[metrics]\nlisten = \"localhost:9464\"\n").contains("metrics.listen = \"localhost:9464\": expected ADDRESS:PORT"));
        assert!(errors("[dicom]\nlisten = \"11112\"\n").contains("dicom.listen = \"11112\""));
        assert!(errors("[dicom]\nae_title = \"\"\n").contains("dicom.ae_title"));
        assert!(errors("[dicom]\nmax_instance_mb = 0\n").contains("dicom.max_instance_mb = 0 is outside"));
        assert!(errors("[dicom]\nallowed_callers = [\"A_VERY_LONG_AE_TITLE\"]\n").contains("is not an AE title"));
        assert!(errors("[decision]\nthreshold = 0.0\n").contains("decision.threshold = 0 makes every slice positive"));
        assert!(errors("[export]\npeer = \"pacs\"\n").contains("export.peer = \"pacs\": expected HOST:PORT"));
        assert!(errors("[export]\nsend = [\"sr\", \"pdf\"]\n").contains("\"pdf\" is not one of"));
        assert!(errors("[export]\ncalled_ae = \"A\\\\B\"\n").contains("export.called_ae"));
        let e = Settings::from_str("[export]\nenabled = true\npeer = \"pacs.local:104\"\nsend = [\"sr\"]\n", Path::new("/")).unwrap().export;
        assert_eq!((e.enabled, e.peer.as_str(), e.sr, e.heatmaps, e.max_heatmaps), (true, "pacs.local:104", true, false, 16));
        let s = Settings::from_str("[dicom]\nenabled = true\nlisten = \"127.0.0.1:11112\"\nallowed_callers = [\"CT1\"]\n[metrics]\nlisten = \"127.0.0.1:9464\"\n", Path::new("/")).unwrap();
        assert_eq!((s.dicom.enabled, s.dicom.allowed_callers.clone(), s.metrics_listen.map(|a| a.port())), (true, vec!["CT1".to_string()], Some(9464)));
        assert_eq!(Settings::from_str("", Path::new("/")).unwrap().metrics_listen, None, "no [metrics]: off");
    }
}
