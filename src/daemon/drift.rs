//! Drift watching in the daemon: each final verdict's series (did it alert, its mean slice
//! probability and mean lung HU over the scored slices) goes to a [`crate::drift::Monitor`];
//! a departure from the reference raises DEGRADED,DRIFT (amber LED, serial line, status,
//! `/healthz` body, `ctsentry_drift`) and its return clears it. The window is kept in the state
//! folder (`drift.json`), so a restart neither forgets it nor starts judging from nothing.
//! Drift never touches the rule, the alerts or their timing: it is observed after the verdict
//! has been recorded and published. A series whose verdict was recorded just before a crash, but
//! not yet saved here, is not in the window after the restart (one series fewer: harmless).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::journal::SliceRec;
use super::Daemon;
use crate::alert::Event;
use crate::config::Settings;
use crate::decide::Rule;
use crate::drift::{Change, Monitor, Observation, State};
use crate::durable::StateDir;
use crate::score::Scorer;

/// The monitor and where its window is kept.
pub(super) struct DriftWatch {
    monitor: Monitor,
    path: PathBuf,
}

/// `drift.json`: the window, the state it was in, and the reference it was judged against.
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    drifting: bool,
    reference: String,
    window: Vec<Observation>,
}

impl DriftWatch {
    /// The watch `settings` ask for, with its window restored; None (logged) when off or when
    /// no reference can be had.
    pub(super) fn open(settings: &Settings, scorer: &Scorer, state: &StateDir) -> Option<DriftWatch> {
        if !settings.drift.enabled {
            log::info!("drift: not watched ([drift] enabled = false)");
            return None;
        }
        let manifest_path = crate::model::manifest_path(&scorer.model.path);
        let reference = match crate::commission::drift_reference(settings, &scorer.model.manifest, &manifest_path) {
            Ok(r) => r,
            Err(why) => {
                log::warn!("drift: not watched: {why}");
                return None;
            }
        };
        let d = &settings.drift;
        let mut monitor = Monitor::new(reference, crate::drift::Settings { window: d.window, min_series: d.min_series, ..Default::default() });
        let path = state.drift();
        match std::fs::read_to_string(&path) {
            Ok(text) => match serde_json::from_str::<Saved>(&text) {
                Ok(saved) if saved.reference == monitor.reference().source => {
                    if monitor.restore(&saved.window, if saved.drifting { State::Drift } else { State::Ok }).is_some() {
                        log::info!("drift: the drift saved before the restart no longer holds on its window: cleared");
                    }
                }
                Ok(saved) => log::info!("drift: the reference changed (was {}): the window starts empty", saved.reference),
                Err(e) => log::warn!("{}: unreadable ({e}); drift watching starts from an empty window", path.display()),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("{}: {e}; drift watching starts from an empty window", path.display()),
        }
        let r = monitor.reference();
        log::info!(
            "drift: watching the last {} series (judged from {}) against {}: alert rate {:.2}, mean slice probability {:.3} ± {:.3}, {}",
            d.window,
            d.min_series,
            r.source,
            r.alert_rate,
            r.prob_mean,
            r.prob_sd,
            r.lung_hu_mean.zip(r.lung_hu_sd).map_or_else(|| "no lung HU".into(), |(m, sd)| format!("lung {m:.0} ± {sd:.0} HU"))
        );
        Some(DriftWatch { monitor, path })
    }

    /// What status shows.
    pub(super) fn view(&self) -> crate::drift::View {
        self.monitor.view()
    }

    fn save(&self) {
        let saved = Saved { drifting: self.monitor.view().state == State::Drift, reference: self.monitor.reference().source.clone(), window: self.monitor.recent() };
        if let Err(e) = crate::durable::write_replace(&self.path, serde_json::to_string(&saved).expect("json").as_bytes()) {
            log::warn!("{}: drift window not kept: {e}", self.path.display());
        }
    }
}

impl Daemon {
    /// Feeds a finished series to drift watching and tells the sinks when the state changes.
    pub(super) fn observe_drift(&mut self, recs: &[SliceRec], rule: &Rule, alerted: bool) {
        if self.drift.is_none() {
            return;
        }
        let scored = recs.iter().filter(|r| self.scorer.skip_reason(rule, r.lung_fraction).is_none()).map(|r| (f64::from(r.prob), r.lung_hu.map(f64::from)));
        let obs = Observation::of(alerted, scored);
        let Some(w) = self.drift.as_mut() else { return };
        let change = w.monitor.observe(obs);
        w.save();
        match change {
            Some(Change::Raised(reasons)) => {
                log::warn!("DEGRADED,DRIFT: {} (alerts are raised as always)", reasons.join("; "));
                self.emit(Event::Drift { on: true });
            }
            Some(Change::Cleared) => {
                log::info!("CLEAR,DRIFT: the recent series are back within the reference");
                self.emit(Event::Drift { on: false });
            }
            None => {}
        }
    }

    /// At start: a drift restored from before the restart is shown again.
    pub(super) fn announce_drift(&mut self) {
        if self.drift.as_ref().is_some_and(|w| w.view().state == State::Drift) {
            self.emit(Event::Drift { on: true });
        }
    }
}
