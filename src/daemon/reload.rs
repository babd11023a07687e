//! SIGHUP: the config re-read and what may change while running applied.

use super::workers::Live;
use super::{watch, Daemon};
use crate::config::Settings;

impl Daemon {
    /// Re-reads the config: the live part is swapped whole, the fixed part keeps its running
    /// values (named when they differ); a config that does not load changes nothing.
    pub(super) fn reload(&mut self, watcher: &mut watch::Watcher) {
        let new = match Settings::load(&self.config_path) {
            Ok(s) => s,
            Err(e) => {
                log::error!("reload refused, keeping the running config:\n{e}");
                return;
            }
        };
        // The fixed part keeps its running values (named when they differ); the live part is
        // swapped whole.
        let (old_fixed, _) = self.settings.clone().split();
        let (new_fixed, live) = new.split();
        let fixed = old_fixed.changed_keys(&new_fixed);
        if !fixed.is_empty() {
            log::warn!("reload: {} cannot change while running; restart ctsentry to apply them (the other changes are applied)", fixed.join(", "));
        }
        self.settings = Settings::join(old_fixed, live);
        let s = &self.settings;
        let rule = crate::score::rule_for(s, &self.scorer.model.manifest, self.scorer.engine.precision());
        *self.live.lock().expect("live settings") = Live { rule: rule.clone(), heatmaps: s.daemon.heatmaps, ingest: s.ingest.clone() };
        watcher.set_timing(s.daemon.poll_seconds, s.daemon.stable_seconds);
        log::set_max_level(s.log_level);
        log::info!("config reloaded: threshold {:.4} ({}), series rule {}, quiet {} s", rule.threshold, rule.threshold_source, rule.describe(), s.quiet_seconds);
        // The receiver's certificates (same paths: they are fixed) are read again, so a renewed
        // certificate needs no restart; files that do not work keep the running ones.
        if let (Some(slot), Some(files)) = (&self.receiver_tls, &self.settings.dicom.tls) {
            match crate::net::tls::server_config(files) {
                Ok(config) => {
                    slot.set(config);
                    log::info!("dicom: TLS certificates re-read; new connections use them");
                }
                Err(e) => log::error!("dicom: TLS certificates not reloaded, keeping the running ones: {e}"),
            }
        }
    }
}
