//! The configuration file: raw serde structs that mirror the TOML (`deny_unknown_fields`), then
//! validation into typed [`Settings`]. Every error carries its line and column.
//!
//! A relative path resolves against the folder of the config file. Every key is documented in
//! `config/ctsentry.toml`.

mod diagnose;
mod locate;
mod raw;
mod reload;
#[cfg(test)]
mod tests;
mod validate;

use std::path::{Path, PathBuf};

use crate::ingest::{IngestOptions, Limits};
use diagnose::parse_all;
pub use locate::{ConfigSource, CHECKOUT_CONFIG, CONFIG_ENV, SYSTEM_CONFIG};
use raw::RawConfig;
pub use reload::{FixedSettings, LiveSettings};
pub use validate::normalize;
use validate::validate;

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
    issues.iter().map(|i| format!("{}:{}:{}: {}", path.display(), i.line, i.column, i.reason)).collect::<Vec<_>>().join("\n")
}

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
    /// The bundle's int8 variant (`[int8]` in the manifest) on OpenVINO: int8 convolutions, the
    /// rest in bf16 where the CPU has it, else f32.
    Int8,
}

impl Precision {
    /// The config name (`auto`, `f32`, `bf16`, `f16`, `int8`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Auto => "auto",
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
            Precision::Int8 => "int8",
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
    /// Callers accepted (an AE title, optionally bound to a source address or network); empty:
    /// any.
    pub allowed_callers: Vec<Caller>,
    /// Associations served at once; more are refused until one ends.
    pub max_associations: usize,
    /// Connections from one source address served at once (the others are closed at once).
    pub max_associations_per_address: usize,
    /// A connection that has not sent its A-ASSOCIATE-RQ this long after it opened is closed
    /// (the ARTIM timer of PS3.8).
    pub artim: std::time::Duration,
    /// Largest instance accepted (bytes); a larger one is answered "out of resources".
    pub max_instance_bytes: u64,
    /// `[dicom.tls]`: when present the receiver speaks only DICOM TLS.
    pub tls: Option<ReceiverTls>,
}

/// `[dicom.tls]`: the receiver's certificate and key, and the CA its callers' certificates
/// must chain to (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiverTls {
    /// `certificate`: the box's certificate chain, leaf first.
    pub certificate: PathBuf,
    /// `private_key`: its key.
    pub private_key: PathBuf,
    /// `client_ca`: callers must present a certificate chaining to one of these.
    pub client_ca: PathBuf,
}

/// `[export.tls]`: the CA the PACS's certificate must chain to, and the box's client
/// certificate when the PACS asks for one (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTls {
    /// `ca`.
    pub ca: PathBuf,
    /// `certificate` (with `private_key`), optional.
    pub certificate: Option<PathBuf>,
    /// `private_key`.
    pub private_key: Option<PathBuf>,
}

impl DicomSettings {
    /// `dicom.allowed_callers` as an admin wrote them, comma-separated ("any" when empty).
    pub fn callers_text(&self) -> String {
        if self.allowed_callers.is_empty() {
            "any".into()
        } else {
            self.allowed_callers.iter().map(|c| c.to_string()).collect::<Vec<_>>().join(", ")
        }
    }
}

/// A secret from the config (a token): compared, never printed (`Debug` shows its length only).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// Whether `offered` is this secret, in time that does not depend on where they differ.
    pub fn matches(&self, offered: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), offered.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} characters)", self.0.chars().count())
    }
}

/// One entry of `dicom.allowed_callers`: `"CT1"` (the AE title from anywhere), `"CT1@10.1.2.3"`
/// (from that address only) or `"CT1@10.1.2.0/24"` (from that network; IPv6 too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The calling AE title.
    pub ae_title: String,
    /// The network it must call from (`None`: any), as address and prefix length.
    pub from: Option<(std::net::IpAddr, u8)>,
}

impl Caller {
    /// Parses an entry; the reason when it is not one.
    pub fn parse(entry: &str) -> Result<Caller, String> {
        let entry = entry.trim();
        let (title, from) = match entry.split_once('@') {
            Some((t, f)) => (t.trim(), Some(f.trim())),
            None => (entry, None),
        };
        let from = from
            .map(|f| {
                let (addr, prefix) = match f.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (f, None),
                };
                let addr: std::net::IpAddr = addr.parse().map_err(|_| format!("{f:?} is not an IP address or network (e.g. 10.1.2.3 or 10.1.2.0/24)"))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let prefix = match prefix {
                    Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{f:?}: the prefix length must be 0 to {max}"))?,
                    None => max,
                };
                Ok::<_, String>((addr, prefix))
            })
            .transpose()?;
        Ok(Caller { ae_title: title.to_string(), from })
    }

    /// Whether a caller with this AE title at this address is this entry.
    pub fn admits(&self, ae_title: &str, addr: std::net::IpAddr) -> bool {
        self.ae_title == ae_title.trim() && self.from.is_none_or(|(net, prefix)| in_network(addr, net, prefix))
    }
}

/// Whether `addr` lies in `net`/`prefix` (an IPv4-mapped IPv6 address counts as its IPv4 one).
fn in_network(addr: std::net::IpAddr, net: std::net::IpAddr, prefix: u8) -> bool {
    use std::net::IpAddr;
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(addr),
        a => a,
    };
    match (addr, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(prefix)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.from {
            None => write!(f, "{}", self.ae_title),
            Some((a, p)) if p == if a.is_ipv4() { 32 } else { 128 } => write!(f, "{}@{a}", self.ae_title),
            Some((a, p)) => write!(f, "{}@{a}/{p}", self.ae_title),
        }
    }
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
    /// `[export.tls]`: when present results go by DICOM TLS only.
    pub tls: Option<ExportTls>,
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

/// Drift watching (`[drift]`): the daemon's recent series against a reference.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftConfig {
    /// On (default) or off.
    pub enabled: bool,
    /// A reference measured at this site (`reference.toml` of `ctsentry commission --out`); None:
    /// the model manifest's `[validation.reference]`.
    pub reference: Option<PathBuf>,
    /// Series compared (the most recent).
    pub window: usize,
    /// Series needed before drift is judged.
    pub min_series: usize,
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
    /// Who chose a threshold set in the config, when, and from which commissioning run
    /// (`[decision] threshold_provenance`); shown with the threshold in every result.
    pub threshold_provenance: Option<String>,
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
    /// The bearer token `/metrics` needs (`[metrics] token`; required outside loopback).
    pub metrics_token: Option<Secret>,
    /// Drift watching (`[drift]`).
    pub drift: DriftConfig,
    /// Log level.
    pub log_level: log::LevelFilter,
    /// Whether patient names may appear in logs (off by default).
    pub log_patient_names: bool,
}

impl Settings {
    /// Where a threshold set in this config comes from, as results show it: `config`, or
    /// `config: ` and its `threshold_provenance`.
    pub fn config_threshold_source(&self) -> String {
        self.threshold_provenance.as_ref().map_or_else(|| "config".to_string(), |p| format!("config: {p}"))
    }

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
