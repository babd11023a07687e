//! What happens to a file once a worker is done with it: its slices journalled and the file
//! moved to done/, or quarantined with a `.reason` beside it, or kept for a retry; and the
//! moves a crash left unfinished. The decisions are [`super::table`]'s; this performs them.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

use super::faults::DiskCause;
use super::journal::Record;
use super::table::{after_engine_failure, EngineRetry, Rest, Take};
use super::workers::{Finished, Job, Outcome};
use super::Daemon;
use crate::alert::{self, Event, FaultKind};
use crate::durable::{move_unique, now, unique_path, write_atomic};

/// How long a file whose move failed rests before the next try.
const MOVE_RETRY: Duration = Duration::from_secs(30);
/// How long a file whose journal record failed rests before it is scored again.
const RECORD_RETRY: Duration = Duration::from_secs(10);

impl Daemon {
    /// Moves what a crash left scored but unmoved (or records a move the crash did not).
    pub(super) fn resume_unmoved(&mut self) {
        let unmoved: Vec<String> = self.state.unmoved.keys().cloned().collect();
        for rel in unmoved {
            let path = self.settings.paths.incoming.join(&rel);
            if std::fs::symlink_metadata(&path).is_ok() {
                self.move_done(&path, &rel);
            } else {
                // Moved before the crash, not yet recorded.
                self.record(Record::Done { t: now(), file: rel, to: String::new() });
            }
        }
    }

    /// A file left incoming/: forgotten; a move fault it caused ends (once no other file is
    /// stuck).
    pub(super) fn moved(&mut self, path: &Path) {
        if self.files.remove(path) {
            self.disk(DiskCause::Move, false);
        }
    }

    /// A move failed: the file rests and is tried again; FAULT DISK meanwhile.
    fn unmovable(&mut self, path: &Path) {
        self.files.rest(path, Rest::Unmovable, Instant::now() + MOVE_RETRY, None);
        self.disk(DiskCause::Move, true);
    }

    /// Moves a scored and recorded file to done/.
    pub(super) fn move_done(&mut self, path: &Path, rel: &str) {
        match move_unique(path, &self.settings.paths.done, rel) {
            Ok(to) => {
                self.record(Record::Done { t: now(), file: rel.to_string(), to: to.display().to_string() });
                self.moved(path);
            }
            Err(e) => {
                let hint = match (e.kind(), path.parent()) {
                    (std::io::ErrorKind::PermissionDenied, Some(dir)) => {
                        format!(" (the daemon needs write access to {} and {}: the sender must leave its folders writable)", dir.display(), self.settings.paths.done.display())
                    }
                    _ => String::new(),
                };
                log::error!("{}: scored but cannot be moved to {}: {e}{hint}; retrying in {} s", path.display(), self.settings.paths.done.display(), MOVE_RETRY.as_secs());
                self.unmovable(path);
            }
        }
    }

    /// Gives waiting files to the workers, journalled as attempted before any worker opens
    /// them ([`FileTable::dispatch`] decides which). Nothing new is read while the disk is full
    /// or the journal cannot be written (the attempt record is also the probe that ends a
    /// journal fault: tried again every 5 s).
    pub(super) fn dispatch(&mut self, jobs: &SyncSender<Job>, capacity: usize) {
        let journal_down = self.faults.disk_for(DiskCause::Journal) && self.journal_failed.is_some_and(|t| t.elapsed() < Duration::from_secs(5));
        let blocked = self.faults.disk_for(DiskCause::Space) || journal_down;
        let state = &self.state;
        let takes = self.files.dispatch(
            capacity,
            blocked,
            |rel| state.attempts.get(rel).copied().unwrap_or(0),
            |rel| state.unmoved.contains_key(rel),
            |p| std::fs::symlink_metadata(p).is_ok(),
        );
        let mut batch = Vec::new();
        for take in takes {
            match take {
                Take::Read(path, rel) => batch.push((path, rel)),
                Take::MoveDone(path, rel) => self.move_done(&path, &rel),
                Take::Gone(path) => self.moved(&path),
                Take::Quarantine(path, rel, crashes) => {
                    let reason = format!("the daemon stopped while reading this file {crashes} times (it crashes the reader); not read again");
                    self.quarantine(&path, &rel, crate::alert::RejectKind::Content, &reason);
                }
            }
        }
        // Not journalled: not read either (they stay waiting).
        if !batch.is_empty() && self.record(Record::Attempt { t: now(), files: batch.iter().map(|(_, r)| r.clone()).collect() }) {
            for (path, rel) in batch {
                if jobs.try_send(Job { path: path.clone(), rel }).is_ok() {
                    self.files.start(&path);
                }
            }
        }
        let busy = self.files.in_flight() > 0 || self.files.waiting() > 0;
        if busy != self.busy {
            self.busy = busy;
            self.emit(Event::Scoring { busy });
        }
    }

    /// Takes a worker's outcome for one file.
    pub(super) fn finish(&mut self, f: Finished) {
        let Some(entry) = self.files.finished(&f.path) else {
            log::warn!("{}: a result for a file not in flight; ignored", f.rel);
            return;
        };
        match f.outcome {
            Outcome::Scored { series, slices, heatmaps, unwritten } => {
                self.fault(FaultKind::Engine, false);
                self.last_scored = now();
                let mut part = self.state.part_for(&series);
                if !self.state.open.contains_key(&series) {
                    // A series whose final verdict is older than the journal remembers: the feed
                    // still knows its parts.
                    while self.outbox.contains(&format!("{}:FINAL", alert::series_id(&series, part))) {
                        part += 1;
                    }
                }
                let n = slices.len();
                if !self.record(Record::Scored { t: now(), file: f.rel.clone(), series: series.clone(), part, slices, unwritten }) {
                    // Scored but not recorded: it is scored again later, and holds its series open.
                    self.files.rest(&f.path, Rest::Unrecorded, Instant::now() + RECORD_RETRY, None);
                    return;
                }
                self.files.scored(&f.path);
                log::debug!("{}: {n} slice(s) scored, {heatmaps} heat map(s)", f.rel);
                self.metrics.slices_scored.fetch_add(n as u64, Ordering::Relaxed);
                self.move_done(&f.path, &f.rel);
                self.check_early(&series);
            }
            Outcome::Unreadable(kind, reason) => self.quarantine(&f.path, &f.rel, kind, &reason),
            Outcome::EngineFailed(e) => {
                let (n, first) = entry.engine_failures.map(|(n, first)| (n + 1, first)).unwrap_or((1, now()));
                match after_engine_failure(n, first, self.last_scored) {
                    // The file's fault rather than the engine's: it failed on its own, again and
                    // again, while other files were scored.
                    EngineRetry::Quarantine => {
                        let reason = format!("the engine failed on this file {n} times while it scored others: {e}");
                        self.quarantine(&f.path, &f.rel, alert::RejectKind::Content, &reason);
                    }
                    EngineRetry::After(wait) => {
                        self.record(Record::Retry { t: now(), file: f.rel.clone() });
                        log::error!("{}: scoring failed ({n}): {e}; the file stays and is retried in {} s", f.rel, wait.as_secs());
                        self.fault(FaultKind::Engine, true);
                        self.files.rest(&f.path, Rest::Engine, Instant::now() + wait, Some((n, first)));
                    }
                }
            }
        }
    }

    /// Moves a file to quarantine/ with its reason beside it (`NAME.reason`, written first and
    /// durably), journals it and says REJECT.
    pub(super) fn quarantine(&mut self, path: &Path, rel: &str, kind: alert::RejectKind, reason: &str) {
        log::warn!("quarantined {rel}: {reason}");
        let q = &self.settings.paths.quarantine;
        let dst = unique_path(&q.join(rel));
        let reason_file = PathBuf::from(format!("{}.reason", dst.display()));
        let text = format!("file: {rel}\nreason: {reason}\ntime: {}\nctsentry: {}\n", now(), env!("CARGO_PKG_VERSION"));
        let dst_rel = dst.strip_prefix(q).map(|p| p.to_string_lossy().to_string()).unwrap_or_else(|_| rel.to_string());
        match write_atomic(&reason_file, text.as_bytes()).and_then(|_| move_unique(path, q, &dst_rel)) {
            Ok(to) => {
                self.record(Record::Quarantined { t: now(), file: rel.to_string(), to: to.display().to_string(), reason: reason.to_string() });
                self.metrics.files_quarantined.fetch_add(1, Ordering::Relaxed);
                self.emit(Event::Reject { why: kind });
                self.moved(path);
            }
            Err(e) => {
                log::error!("{}: cannot quarantine: {e}; retrying in {} s", path.display(), MOVE_RETRY.as_secs());
                self.unmovable(path);
            }
        }
    }
}
