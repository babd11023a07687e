//! What a reload (SIGHUP) may change: [`Settings`] split into the part read once at start and
//! the live part, and joined back. The exhaustive destructuring makes a new key fail to compile
//! until it is classified.

use std::path::PathBuf;

use super::*;

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
    /// See [`Settings::drift`].
    pub drift: DriftConfig,
    /// See [`Settings::metrics_token`].
    pub metrics_token: Option<Secret>,
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
    /// See [`Settings::threshold_provenance`].
    pub threshold_provenance: Option<String>,
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
            threshold_provenance,
            quiet_seconds,
            daemon: DaemonSettings { watch, poll_seconds, stable_seconds, heatmaps, min_free_mb, done_days, results_days },
            ingest,
            serial,
            led,
            dicom,
            export,
            metrics_listen,
            metrics_token,
            drift,
            log_level,
            log_patient_names,
        } = self;
        (
            FixedSettings {
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
                serial,
                led,
                dicom,
                export,
                metrics_listen,
                metrics_token,
                drift,
                watch,
            },
            LiveSettings {
                threshold,
                min_positive_slices,
                min_positive_extent_mm,
                min_positive_share,
                threshold_provenance,
                quiet_seconds,
                ingest,
                poll_seconds,
                stable_seconds,
                heatmaps,
                min_free_mb,
                done_days,
                results_days,
                log_level,
                log_patient_names,
            },
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
            threshold_provenance: l.threshold_provenance,
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
            metrics_token: f.metrics_token,
            drift: f.drift,
            log_level: l.log_level,
            log_patient_names: l.log_patient_names,
        }
    }
}

impl FixedSettings {
    /// The config keys (as written in the file) whose values differ between `self` and `new`.
    pub fn changed_keys(&self, new: &FixedSettings) -> Vec<&'static str> {
        let FixedSettings {
            source: _,
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
            serial,
            led,
            dicom,
            export,
            metrics_listen,
            metrics_token,
            drift,
            watch,
        } = self;
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
        check(*metrics_token != new.metrics_token, "metrics.token");
        check(*drift != new.drift, "drift.*");
        check(*watch != new.watch, "watch.mode");
        out
    }
}
