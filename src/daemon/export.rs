//! The bridge to the PACS sender (`[export]`): the verdict's SR and heat maps into the spool,
//! the sender's news into the journal and FAULT EXPORT, and the sender thread's supervision.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{OnDeath, Supervised};
use super::faults::DiskCause;
use super::journal::{self, Record, SliceRec};
use super::workers::heatmap_path;
use super::{Daemon, DaemonError};
use crate::alert::{FaultKind, SeriesKey};
use crate::config::Settings;
use crate::durable::{now, StateDir};
use crate::output::SeriesSummary;

/// How long after its thread ended the sender is started again.
pub(super) const RESTART_AFTER: Duration = Duration::from_secs(5);

/// How long the daemon's shutdown waits for the sender to finish the association it is in.
pub(super) const FINISH: Duration = Duration::from_secs(5);

/// The running sender and its thread.
pub(super) struct Bridge {
    pub(super) sender: crate::net::export::Exporter,
    pub(super) thread: Option<Supervised>,
    pub(super) restart_at: Option<Instant>,
}

impl Bridge {
    /// Starts the sender on the state folder's spool and says where results go.
    pub(super) fn start(settings: &Settings, state: &StateDir, metrics: &Arc<crate::metrics::Metrics>) -> Result<Bridge, DaemonError> {
        let spool = state.export_spool();
        let (sender, thread) = crate::net::export::Exporter::start(settings.export.clone(), spool.clone()).map_err(super::io(&spool))?;
        metrics.export_enabled.store(true, Ordering::Relaxed);
        let e = &settings.export;
        if !e.sr && !e.heatmaps {
            log::warn!("export: export.send is empty: nothing will be sent to the PACS");
        } else if e.heatmaps && !settings.daemon.heatmaps {
            log::warn!("export: export.send has \"heatmaps\" but results.heatmaps = false: no heat maps are made, so none are sent");
        }
        log::info!(
            "export: results to the PACS {:?} at {} as {:?} ({}{}), spool {}",
            e.called_ae,
            e.peer,
            e.calling_ae,
            if e.sr { "SR" } else { "" },
            if e.heatmaps { format!("{}heat maps, at most {} a series", if e.sr { ", " } else { "" }, e.max_heatmaps) } else { String::new() },
            spool.display()
        );
        Ok(Bridge { sender, thread: Some(Supervised::new(thread, OnDeath::Restart)), restart_at: None })
    }
}

impl Daemon {
    /// Writes the verdict's SR and heat maps into the export spool, before the verdict is
    /// journalled: a crash in between writes them again, the same objects (their UIDs and
    /// content follow from the verdict; the content time is the series' last scoring). Once per
    /// verdict and run, however often its journal record is retried. The verdict
    /// never waits for export: what cannot be spooled is logged and journalled as skipped.
    /// `slices`: each slice in order, with its file and whether it is positive.
    pub(super) fn spool_export(&mut self, o: &journal::OpenSeries, summary: &SeriesSummary, slices: &[(&str, &SliceRec, bool)]) {
        let (uid, d) = (summary.series_uid.as_str(), &summary.decision);
        use crate::net::export::{self, Flagged, SeriesResult, SpoolError};
        let key = SeriesKey::of(uid, o.part);
        if !self.spooled.insert(format!("{uid}|{}|{}|{}|{:?}", o.part, d.positives, d.slices, d.verdict)) {
            return;
        }
        if slices.iter().all(|(_, r, _)| r.sop.is_empty()) {
            log::info!("export: series {key} is not DICOM (NIfTI): nothing is sent to the PACS");
            return;
        }
        let p = &self.settings.paths;
        let Some(source) = slices.iter().flat_map(|(f, _, _)| [p.done.join(f), p.incoming.join(f)]).find(|f| f.is_file()) else {
            self.export_skipped(uid, o.part, "none of its files is left in done/ or incoming/ to take the patient and study from".into());
            return;
        };
        let multi: HashSet<&str> = o.files.iter().filter(|(_, recs)| recs.len() > 1).map(|(f, _)| f.as_str()).collect();
        let mut seen = HashSet::new();
        let scored: Vec<String> = slices.iter().map(|(_, r, _)| r.sop.clone()).filter(|s| !s.is_empty() && seen.insert(s.clone())).collect();
        let flagged = slices
            .iter()
            .filter(|(_, _, pos)| *pos)
            .map(|(f, r, _)| {
                let png = heatmap_path(&p.results, uid, f, r.frame, multi.contains(f));
                Flagged { sop: r.sop.clone(), frame: r.frame, multi_frame: multi.contains(f), prob: r.prob, heatmap: png.is_file().then_some(png) }
            })
            .collect();
        let result = SeriesResult { summary, part: o.part, scored, flagged, source: &source, t: o.last_t };
        let spool = self.state_dir.export_spool();
        match export::spool(&self.settings.export, &spool, &result) {
            Ok(files) => {
                self.disk(DiskCause::Spool, false);
                log::info!("export: series {key}: {} object(s) queued for the PACS", files.len());
                if let Some(ex) = &self.exporter {
                    ex.sender.wake();
                }
            }
            Err(SpoolError::Source(e)) => self.export_skipped(uid, o.part, e),
            Err(SpoolError::Write(e)) => {
                self.disk(DiskCause::Spool, true);
                self.export_skipped(uid, o.part, format!("the spool cannot be written: {e}"));
            }
        }
    }

    /// A verdict whose results cannot be sent: logged and journalled (the verdict goes on).
    pub(super) fn export_skipped(&mut self, uid: &str, part: u16, reason: String) {
        log::error!("export: series {}: nothing sent to the PACS: {reason}", SeriesKey::of(uid, part));
        self.record(Record::ExportSkipped { t: now(), series: uid.to_string(), part, reason });
    }

    /// At shutdown: asks the sender to end after the object it is sending, waits up to `wait`
    /// for it, then journals what it reported, so that an object the PACS stored just before
    /// the stop has its record and is not sent again at the next start. What was not sent stays
    /// in the spool for the next start.
    pub(super) fn export_finish(&mut self, wait: Duration) {
        let Some(ex) = &mut self.exporter else { return };
        ex.sender.close();
        if let Some(t) = ex.thread.as_mut() {
            let until = Instant::now() + wait;
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
            // Ended as asked is not a fault (no restart: the daemon is stopping); a panic is logged.
            match t.ended() {
                Some(why) if why != "it returned" => log::error!("export: the sender thread stopped ({why})"),
                Some(_) => {}
                None => log::warn!("export: the sender is still sending after {} s; the object it was sending may be sent again at the next start", wait.as_secs()),
            }
        }
        self.export_news();
    }

    /// Takes the sender's news: journals what the PACS stored or refused, FAULT EXPORT while it
    /// cannot be reached, CLEAR once something goes through. A sender thread that ended raises
    /// FAULT EXPORT with its reason and is started again after [`RESTART_AFTER`] (its spool is on
    /// disk: nothing is lost meanwhile).
    pub(super) fn export_tick(&mut self) {
        let Some(ex) = &mut self.exporter else { return };
        if let Some(why) = ex.thread.as_mut().and_then(Supervised::ended) {
            ex.thread = None;
            ex.restart_at = Some(Instant::now() + RESTART_AFTER);
            log::error!("export: the sender thread stopped ({why}); FAULT EXPORT: results wait in the spool, sender restarted in {} s", RESTART_AFTER.as_secs());
            self.fault(FaultKind::Export, true);
            return;
        }
        if ex.restart_at.is_some_and(|t| Instant::now() >= t) {
            ex.restart_at = None;
            match crate::net::export::Exporter::start(self.settings.export.clone(), self.state_dir.export_spool()) {
                Ok((sender, thread)) => {
                    log::info!("export: sender restarted");
                    ex.sender = sender;
                    ex.thread = Some(Supervised::new(thread, OnDeath::Restart));
                }
                Err(e) => {
                    log::error!("export: the sender cannot be restarted: {e}; trying again in {} s", RESTART_AFTER.as_secs());
                    ex.restart_at = Some(Instant::now() + RESTART_AFTER);
                }
            }
            return;
        }
        self.export_news();
    }

    /// Journals and logs what the sender reported since last asked; FAULT EXPORT or CLEAR as
    /// its news says.
    fn export_news(&mut self) {
        use crate::net::export::ExportEvent;
        let Some(ex) = &self.exporter else { return };
        let events: Vec<ExportEvent> = ex.sender.events.try_iter().collect();
        for e in events {
            match e {
                ExportEvent::Sent { file, class, sop, status } => {
                    let what = if class == crate::net::export::COMPREHENSIVE_SR { "SR" } else { "heat map" };
                    let warning = if status == 0 { String::new() } else { format!(" (warning 0x{status:04X})") };
                    log::info!("export: {file} ({what}, SOP Instance {sop}) stored by the PACS{warning}");
                    self.metrics.exported.fetch_add(1, Ordering::Relaxed);
                    self.record(Record::Exported { t: now(), file, sop, status });
                    if self.faults.has(FaultKind::Export) {
                        log::info!("export: the PACS takes results again");
                    }
                    self.fault(FaultKind::Export, false);
                }
                ExportEvent::Refused { file, reason } => {
                    log::error!("export: {file}: {reason}; kept in the spool's {}/ folder", crate::net::export::FAILED_DIR);
                    self.metrics.export_refused.fetch_add(1, Ordering::Relaxed);
                    self.record(Record::ExportRefused { t: now(), file, reason });
                }
                ExportEvent::Reachable => {
                    if self.faults.has(FaultKind::Export) {
                        log::info!("export: the PACS takes results again (or none wait)");
                    }
                    self.fault(FaultKind::Export, false);
                }
                ExportEvent::Unreachable { reason, retry_s } => {
                    if self.faults.has(FaultKind::Export) {
                        log::warn!("export: {reason}; trying again in {retry_s:.0} s");
                    } else {
                        log::error!("export: {reason}; results wait in the spool, trying again in {retry_s:.0} s");
                    }
                    self.fault(FaultKind::Export, true);
                }
            }
        }
    }
}
