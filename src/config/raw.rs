//! The config file as written: serde structs that mirror the TOML (`deny_unknown_fields`),
//! with every value's position (`Spanned`) so that validation can point at it.

use serde::Deserialize;
use toml::Spanned;

use crate::ingest::Limits;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawConfig {
    pub(super) paths: RawPaths,
    pub(super) model: RawModel,
    pub(super) engine: RawEngine,
    pub(super) preprocess: RawPreprocess,
    pub(super) decision: RawDecision,
    pub(super) series: RawSeries,
    pub(super) watch: RawWatch,
    pub(super) results: RawResults,
    pub(super) disk: RawDisk,
    pub(super) retention: RawRetention,
    pub(super) ingest: RawIngest,
    pub(super) alert: RawAlert,
    pub(super) log: RawLog,
    pub(super) dicom: RawDicom,
    pub(super) export: RawExport,
    pub(super) metrics: RawMetrics,
    pub(super) drift: RawDrift,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawExport {
    pub(super) enabled: bool,
    pub(super) peer: Spanned<String>,
    pub(super) called_ae: Spanned<String>,
    pub(super) calling_ae: Spanned<String>,
    pub(super) send: Spanned<Vec<String>>,
    pub(super) max_heatmaps: Spanned<i64>,
    pub(super) retry_max_seconds: Spanned<f64>,
    pub(super) tls: Option<RawExportTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExportTls {
    pub(super) ca: Spanned<String>,
    pub(super) certificate: Option<Spanned<String>>,
    pub(super) private_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReceiverTls {
    pub(super) certificate: Spanned<String>,
    pub(super) private_key: Spanned<String>,
    pub(super) client_ca: Spanned<String>,
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
            tls: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<Spanned<String>>,
    pub(super) token: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDicom {
    pub(super) enabled: bool,
    pub(super) ae_title: Spanned<String>,
    pub(super) listen: Spanned<String>,
    pub(super) allowed_callers: Vec<Spanned<String>>,
    pub(super) max_associations: Spanned<i64>,
    pub(super) max_associations_per_address: Spanned<i64>,
    pub(super) artim_seconds: Spanned<f64>,
    pub(super) max_instance_mb: Spanned<i64>,
    pub(super) tls: Option<RawReceiverTls>,
}

impl Default for RawDicom {
    fn default() -> Self {
        RawDicom {
            enabled: false,
            ae_title: Spanned::new(0..0, "CTSENTRY".into()),
            listen: Spanned::new(0..0, "0.0.0.0:11112".into()),
            allowed_callers: Vec::new(),
            max_associations: Spanned::new(0..0, 8),
            max_associations_per_address: Spanned::new(0..0, 4),
            artim_seconds: Spanned::new(0..0, 10.0),
            max_instance_mb: Spanned::new(0..0, 1024),
            tls: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPaths {
    pub(super) incoming: Spanned<String>,
    pub(super) done: Spanned<String>,
    pub(super) quarantine: Spanned<String>,
    pub(super) results: Spanned<String>,
    pub(super) state: Spanned<String>,
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
pub(super) struct RawModel {
    pub(super) path: Spanned<String>,
}

impl Default for RawModel {
    fn default() -> Self {
        RawModel { path: Spanned::new(0..0, "/usr/share/ctsentry/models/densenet121-covid.onnx".into()) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawEngine {
    pub(super) backend: Spanned<String>,
    pub(super) precision: Spanned<String>,
    pub(super) threads: Option<Spanned<i64>>,
    pub(super) onnxruntime_library: Option<Spanned<String>>,
    pub(super) openvino_library: Option<Spanned<String>>,
    pub(super) tensorrt_plan: Option<Spanned<String>>,
    pub(super) tensorrt_library: Option<Spanned<String>>,
}

impl Default for RawEngine {
    fn default() -> Self {
        RawEngine {
            backend: Spanned::new(0..0, "auto".into()),
            precision: Spanned::new(0..0, "auto".into()),
            threads: None,
            onnxruntime_library: None,
            openvino_library: None,
            tensorrt_plan: None,
            tensorrt_library: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawPreprocess {
    pub(super) backend: Spanned<String>,
}

impl Default for RawPreprocess {
    fn default() -> Self {
        RawPreprocess { backend: Spanned::new(0..0, "auto".into()) }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDecision {
    pub(super) threshold: Option<Spanned<f64>>,
    pub(super) min_positive_slices: Option<Spanned<i64>>,
    pub(super) min_positive_extent_mm: Option<Spanned<f64>>,
    pub(super) min_positive_share: Option<Spanned<f64>>,
    pub(super) threshold_provenance: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDrift {
    pub(super) enabled: bool,
    pub(super) reference: Option<Spanned<String>>,
    pub(super) window: Spanned<i64>,
    pub(super) min_series: Spanned<i64>,
}

impl Default for RawDrift {
    fn default() -> Self {
        RawDrift { enabled: true, reference: None, window: Spanned::new(0..0, 50), min_series: Spanned::new(0..0, 20) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSeries {
    pub(super) quiet_seconds: Spanned<f64>,
}

impl Default for RawSeries {
    fn default() -> Self {
        RawSeries { quiet_seconds: Spanned::new(0..0, 10.0) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawWatch {
    pub(super) mode: Spanned<String>,
    pub(super) poll_seconds: Spanned<f64>,
    pub(super) stable_seconds: Spanned<f64>,
}

impl Default for RawWatch {
    fn default() -> Self {
        RawWatch { mode: Spanned::new(0..0, "inotify".into()), poll_seconds: Spanned::new(0..0, 2.0), stable_seconds: Spanned::new(0..0, 2.0) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawResults {
    pub(super) heatmaps: bool,
}

impl Default for RawResults {
    fn default() -> Self {
        RawResults { heatmaps: true }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawDisk {
    pub(super) min_free_mb: Spanned<f64>,
}

impl Default for RawDisk {
    fn default() -> Self {
        RawDisk { min_free_mb: Spanned::new(0..0, 1024.0) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawRetention {
    pub(super) done_days: Spanned<f64>,
    pub(super) results_days: Spanned<f64>,
}

impl Default for RawRetention {
    fn default() -> Self {
        RawRetention { done_days: Spanned::new(0..0, 14.0), results_days: Spanned::new(0..0, 365.0) }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawIngest {
    pub(super) modalities: Spanned<Vec<String>>,
    pub(super) allow_missing_modality: bool,
    pub(super) max_file_mb: Spanned<f64>,
    pub(super) max_pixels_per_slice: Spanned<i64>,
    pub(super) max_frames: Spanned<i64>,
    pub(super) max_decompressed_mb: Spanned<f64>,
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
pub(super) struct RawAlert {
    pub(super) serial: RawSerial,
    pub(super) led: RawLed,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawSerial {
    pub(super) enabled: bool,
    pub(super) port: String,
    pub(super) baud: Spanned<i64>,
    pub(super) framing: Spanned<String>,
    pub(super) heartbeat_seconds: Spanned<f64>,
    pub(super) ack: bool,
    pub(super) ack_timeout_seconds: Spanned<f64>,
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
pub(super) struct RawLed {
    pub(super) enabled: bool,
    pub(super) driver: Spanned<String>,
    pub(super) green: String,
    pub(super) red: String,
    pub(super) amber: String,
    pub(super) active_low: bool,
    pub(super) button: String,
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
pub(super) struct RawLog {
    pub(super) level: Spanned<String>,
    pub(super) patient_names: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog { level: Spanned::new(0..0, "info".into()), patient_names: false }
    }
}
