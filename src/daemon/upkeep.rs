//! The controller's periodic checks: acknowledgements (button, `ctsentry ack`), the serial
//! port, free space and the drop folder, and retention.

use super::faults::DiskCause;
use super::journal::Record;
use super::{retention, Daemon};
use crate::alert::{Cleared, Event, FaultKind};
use crate::durable::{free_mb, now};
use std::sync::atomic::Ordering;

impl Daemon {
    /// FAULT SERIAL while the serial port is down (one that never opened since start counts
    /// after a grace second).
    pub(super) fn check_serial(&mut self) {
        if let Some(up) = &self.serial_up {
            let up = up.load(Ordering::Relaxed);
            if up || now() - self.started > 2.0 {
                self.fault(FaultKind::Serial, !up);
            }
        }
    }

    /// Takes an acknowledgement from the button or from `ctsentry ack` (the request file).
    pub(super) fn check_ack(&mut self) {
        let pressed = match self.button.as_mut().map(|b| b.poll()) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                log::error!("acknowledge button: {e}; no longer read");
                self.button = None;
                false
            }
            None => false,
        };
        if pressed && self.record(Record::Ack { t: now(), by: "button".into() }) {
            log::info!("alert acknowledged (button)");
            self.emit(Event::Clear { what: Cleared::Ack });
            self.write_status();
        }
        let p = self.state_dir.ack_request();
        let Ok(by) = std::fs::read_to_string(&p) else { return };
        let by = by.trim().chars().take(64).collect::<String>();
        if self.record(Record::Ack { t: now(), by: if by.is_empty() { "ctsentry ack".into() } else { by } }) {
            let _ = std::fs::remove_file(&p);
            log::info!("alert acknowledged");
            self.emit(Event::Clear { what: Cleared::Ack });
            self.write_status();
        }
    }

    /// Deletes what `[retention]` says has expired from done/ and results/, and logs it.
    pub(super) fn apply_retention(&self) {
        let d = &self.settings.daemon;
        let t = now();
        // Objects the PACS refused for good are results too: kept as long.
        let refused = self.state_dir.export_failed();
        for (name, dir, days) in
            [("done", &self.settings.paths.done, d.done_days), ("results", &self.settings.paths.results, d.results_days), ("state/export/failed", &refused, d.results_days)]
        {
            let s = retention::sweep(dir, days, t);
            if s.files > 0 {
                log::info!("retention: deleted {} file(s), {:.1} MiB, older than {days} days from {name}/ ({})", s.files, s.bytes as f64 / 1048576.0, dir.display());
            }
        }
    }

    /// Free space, stuck files that are gone, a readable drop folder (FAULT DISK, FAULT WATCH).
    pub(super) fn check_disk(&mut self) {
        // A resting file that someone removed by hand (stuck for a move, or waiting for a retry)
        // no longer holds a fault or its series.
        for p in self.files.vanished(|p| std::fs::symlink_metadata(p).is_ok()) {
            self.moved(&p);
        }
        let p = &self.settings.paths;
        let min = self.settings.daemon.min_free_mb;
        let low: Vec<String> =
            [&p.done, &p.quarantine, &p.results, &p.state].iter().filter_map(|d| free_mb(d).filter(|f| *f < min).map(|f| format!("{} ({f:.0} MiB free)", d.display()))).collect();
        let was = self.faults.disk_for(DiskCause::Space);
        if !low.is_empty() && !was {
            log::error!("disk space below disk.min_free_mb = {min}: {}; new files wait until space returns", low.join(", "));
        } else if low.is_empty() && was {
            log::info!("disk space is back above {min} MiB; taking files again");
        }
        self.disk(DiskCause::Space, !low.is_empty());
        // The drop folder must stay readable (FAULT WATCH while it is not).
        let incoming = &self.settings.paths.incoming;
        let readable = std::fs::read_dir(incoming).is_ok();
        if !readable && !self.faults.has(FaultKind::Watch) {
            log::error!("{}: the drop folder cannot be read; nothing new is taken until it can", incoming.display());
        }
        self.fault(FaultKind::Watch, !readable);
    }
}
