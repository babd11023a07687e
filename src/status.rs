//! `ctsentry status`: what the running daemon is doing. The daemon keeps a snapshot in its state
//! folder (`status.json`, replaced atomically about once a second); this module owns its format
//! and reads it back, from any working directory, as any user who may read the state folder.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// How many recent verdicts the snapshot keeps.
pub const LAST_VERDICTS: usize = 10;

/// The latched alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatchedView {
    /// The short key shown on the serial line and in results.
    pub series_key: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// When it alerted (unix s).
    pub since: f64,
}

impl LatchedView {
    /// The view of a latch on part `part` of series `series_uid` since `since` (unix s).
    pub fn of(series_uid: &str, part: u16, since: f64) -> LatchedView {
        LatchedView { series_key: crate::alert::SeriesKey::of(series_uid, part).to_string(), series_uid: series_uid.to_string(), since }
    }
}

/// One final verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictView {
    /// Short key.
    pub series_key: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// `positive` or `negative`.
    pub verdict: String,
    /// Positive slices.
    pub positives: usize,
    /// Slices.
    pub slices: usize,
    /// Largest probability.
    pub max_prob: f64,
    /// When (unix s).
    pub t: f64,
}

pub use crate::output::ModelView;

/// Drift watching as `status --json` shows it (DESIGN.md: `drift`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftStatus {
    /// `ok` or `drift`.
    pub state: String,
    /// Series in the window.
    pub series: usize,
    /// Share of them that alerted.
    pub alert_rate: f64,
    /// The reference's alert rate.
    pub expected_alert_rate: f64,
    /// Why it drifts, in plain words (empty while `ok`).
    pub reasons: Vec<String>,
    /// Where the reference came from.
    pub reference: String,
}

impl From<&crate::drift::View> for DriftStatus {
    fn from(v: &crate::drift::View) -> DriftStatus {
        DriftStatus {
            state: match v.state {
                crate::drift::State::Ok => "ok",
                crate::drift::State::Drift => "drift",
            }
            .into(),
            series: v.series,
            alert_rate: v.alert_rate,
            expected_alert_rate: v.expected_alert_rate,
            reasons: v.reasons.clone(),
            reference: v.reference.clone(),
        }
    }
}

/// What the daemon writes (DESIGN.md keys, plus a few more for people).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The daemon's process id.
    pub pid: u32,
    /// When it started (unix s).
    pub started: f64,
    /// When this snapshot was written (unix s).
    pub updated: f64,
    /// The latched alert, if any.
    pub latched: Option<LatchedView>,
    /// Series with slices but no final verdict yet.
    pub open_series: usize,
    /// Files waiting to be scored.
    pub queue: usize,
    /// Files being scored now.
    pub scoring: usize,
    /// Active faults (serial-line names: ENGINE, DISK, …).
    pub faults: Vec<String>,
    /// The engine in use.
    pub engine: String,
    /// Its precision.
    pub precision: String,
    /// Why that precision, where the engine chose it (null otherwise, and in older snapshots).
    #[serde(default)]
    pub precision_reason: Option<String>,
    /// The preprocessing backend.
    pub preprocess: String,
    /// The model.
    pub model: ModelView,
    /// Slice threshold in force (null while no model is loaded and the config sets none).
    pub threshold: Option<f64>,
    /// Where it came from: `manifest`, `config`, or `config: <who chose it, when, from which
    /// commissioning run>` (null in snapshots of older versions).
    #[serde(default)]
    pub threshold_source: Option<String>,
    /// Positive slices a series needs (null while no model is loaded and the config sets none).
    pub min_positive_slices: Option<usize>,
    /// The whole series rule in words, with where each value came from (`Rule::describe`; null
    /// while no model is loaded, and in snapshots of older versions).
    #[serde(default)]
    pub series_rule: Option<String>,
    /// Files handled (done or quarantined) since the journal began.
    pub files_handled: u64,
    /// The most recent final verdicts, newest first.
    pub last_verdicts: Vec<VerdictView>,
    /// Running below full capability (amber LED; e.g. polling where inotify failed).
    #[serde(default)]
    pub degraded: bool,
    /// Drift watching (null when `[drift] enabled = false` or no reference could be had).
    #[serde(default)]
    pub drift: Option<DriftStatus>,
}

impl Snapshot {
    /// The snapshot of a daemon that is up but cannot score (no usable model or engine): the
    /// fault, the latch, and the model path it is waiting for in place of the model's identity.
    pub fn without_scorer(settings: &crate::config::Settings, started: f64, fault: crate::alert::FaultKind, latched: Option<LatchedView>) -> Snapshot {
        Snapshot {
            pid: std::process::id(),
            started,
            updated: crate::durable::now(),
            latched,
            open_series: 0,
            queue: 0,
            scoring: 0,
            faults: vec![fault.name().to_string()],
            engine: "none".into(),
            precision: "none".into(),
            precision_reason: None,
            preprocess: "none".into(),
            model: ModelView { name: settings.model_path.display().to_string(), version: "unavailable".into(), sha256: String::new() },
            threshold: settings.threshold,
            threshold_source: settings.threshold.map(|_| settings.config_threshold_source()),
            min_positive_slices: settings.min_positive_slices,
            series_rule: None,
            files_handled: 0,
            last_verdicts: Vec::new(),
            degraded: false,
            drift: None,
        }
    }
}

/// Reading the snapshot failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// No snapshot: the daemon never ran on this state folder.
    #[error("{0}: no status; has `ctsentry run` ever run with this config?")]
    Missing(std::path::PathBuf),
    /// Unreadable or malformed.
    #[error("{path}: {reason}")]
    Bad {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
}

/// Writes `snap` into `state_dir` atomically (a temporary file renamed over the old one), without
/// fsync: it is rewritten every second and worth nothing after a crash, and flash storage on an
/// edge box should not take 86,400 syncs a day for it.
pub fn write(state_dir: &Path, snap: &Snapshot) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(snap).expect("snapshot serialises");
    crate::durable::write_replace(&crate::durable::StateDir::new(state_dir).status(), text.as_bytes())
}

/// Reads the snapshot in `state_dir`.
pub fn read(state_dir: &Path) -> Result<Snapshot, StatusError> {
    let path = crate::durable::StateDir::new(state_dir).status();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StatusError::Missing(path)),
        Err(e) => return Err(StatusError::Bad { path, reason: e.to_string() }),
    };
    serde_json::from_str(&text).map_err(|e| StatusError::Bad { path, reason: e.to_string() })
}

/// The `status --json` object: the snapshot plus `running` and `uptime_s` (null when stopped).
pub fn to_json(snap: &Snapshot, running: bool, now: f64) -> serde_json::Value {
    let mut v = serde_json::to_value(snap).expect("snapshot serialises");
    v["running"] = running.into();
    v["uptime_s"] = if running { serde_json::json!((now - snap.started).max(0.0).round()) } else { serde_json::Value::Null };
    v
}

/// The status as text for a person.
pub fn to_text(snap: &Snapshot, running: bool, now: f64) -> String {
    use std::fmt::Write;
    let mut r = String::new();
    let ago = |t: f64| format!("{:.0} s ago", (now - t).max(0.0));
    if running {
        let _ = writeln!(r, "daemon      running (pid {}, up {:.0} s)", snap.pid, now - snap.started);
    } else {
        let _ = writeln!(r, "daemon      NOT RUNNING (last status written {})", ago(snap.updated));
    }
    let _ = writeln!(r, "faults      {}", if snap.faults.is_empty() { "none".to_string() } else { snap.faults.join(", ") });
    match &snap.latched {
        Some(l) => {
            let _ = writeln!(r, "alert       LATCHED: series {} ({}), {}; clear with `ctsentry ack`", l.series_key, l.series_uid, ago(l.since));
        }
        None => {
            let _ = writeln!(r, "alert       none latched");
        }
    }
    let _ = writeln!(r, "work        {} file(s) waiting, {} scoring, {} series open, {} files handled", snap.queue, snap.scoring, snap.open_series, snap.files_handled);
    let _ = writeln!(
        r,
        "model       {} {} (sha256 {}…), engine {} {}, preprocess {}, threshold {}{}, series rule {}",
        snap.model.name,
        snap.model.version,
        &snap.model.sha256[..12.min(snap.model.sha256.len())],
        snap.engine,
        snap.precision,
        snap.preprocess,
        snap.threshold.map(|t| format!("{t:.4}")).unwrap_or_else(|| "unknown".into()),
        snap.threshold_source.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(),
        snap.series_rule.clone().or_else(|| snap.min_positive_slices.map(|n| format!("≥ {n} slices positive"))).unwrap_or_else(|| "unknown".into())
    );
    if let Some(why) = &snap.precision_reason {
        let _ = writeln!(r, "precision   {why}");
    }
    match &snap.drift {
        Some(d) if d.state == "drift" => {
            let _ = writeln!(
                r,
                "drift       DRIFT (amber): {}; {} series, alert rate {:.2} (expected {:.2}), reference {}",
                d.reasons.join("; "),
                d.series,
                d.alert_rate,
                d.expected_alert_rate,
                d.reference
            );
        }
        Some(d) => {
            let _ = writeln!(r, "drift       ok: {} series, alert rate {:.2} (expected {:.2}), reference {}", d.series, d.alert_rate, d.expected_alert_rate, d.reference);
        }
        None => {
            let _ = writeln!(r, "drift       not watched");
        }
    }
    for v in &snap.last_verdicts {
        let _ = writeln!(r, "verdict     {} {} ({} of {} slices, max {:.3}), {}", v.series_key, v.verdict.to_uppercase(), v.positives, v.slices, v.max_prob, ago(v.t));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_round_trips_and_reports_uptime_only_when_running() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()), Err(StatusError::Missing(_))));
        let snap = Snapshot {
            pid: 7,
            started: 100.0,
            updated: 150.0,
            latched: Some(LatchedView { series_key: "0a1b2c3d".into(), series_uid: "1.2.3".into(), since: 140.0 }),
            open_series: 1,
            queue: 3,
            scoring: 2,
            faults: vec!["DISK".into()],
            engine: "tract".into(),
            precision: "f32".into(),
            precision_reason: None,
            preprocess: "cpu".into(),
            model: ModelView { name: "m".into(), version: "1".into(), sha256: "ab".repeat(32) },
            threshold: Some(0.5),
            min_positive_slices: Some(2),
            threshold_source: Some("config: chosen by A on 2026-12-10 from commission run 20261210T101500Z".into()),
            series_rule: Some("≥ 2 slices, ≥ 136 mm positive (count: manifest, physical: manifest)".into()),
            files_handled: 9,
            last_verdicts: vec![],
            degraded: false,
            drift: Some(DriftStatus {
                state: "drift".into(),
                series: 30,
                alert_rate: 0.5,
                expected_alert_rate: 0.1,
                reasons: vec!["lung HU +140 against reference".into()],
                reference: "manifest".into(),
            }),
        };
        write(dir.path(), &snap).unwrap();
        let back = read(dir.path()).unwrap();
        assert_eq!(back, snap);
        let v = to_json(&back, true, 160.0);
        assert_eq!((v["uptime_s"].as_f64(), v["running"].as_bool()), (Some(60.0), Some(true)));
        assert_eq!(v["latched"]["series_key"], "0a1b2c3d");
        assert!(to_json(&back, false, 160.0)["uptime_s"].is_null());
        assert!(to_text(&back, false, 160.0).contains("NOT RUNNING"));
        assert_eq!(v["drift"]["state"], "drift");
        let text = to_text(&back, true, 160.0);
        assert!(text.contains("DRIFT (amber): lung HU +140") && text.contains("threshold 0.5000 (config: chosen by A"), "{text}");
        std::fs::write(crate::durable::StateDir::new(dir.path()).status(), "{").unwrap();
        assert!(matches!(read(dir.path()), Err(StatusError::Bad { .. })));
    }
}
