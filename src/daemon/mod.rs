//! The daemon (`ctsentry run`): drop folder in, verdicts and alerts out, unattended.
//!
//! One controller thread owns the journal, the series state and the file moves; worker threads
//! read, preprocess and score up to 8 files at a time. At most `8 × workers` files are decoded or
//! scored at once, so memory stays bounded however many files arrive (the waiting ones are only
//! paths). Series are assembled as slices arrive; an EARLY alert goes out as soon as the series
//! rule is met, the final verdict after `series.quiet_seconds` without a new slice (and only once
//! every file that arrived in that window has been scored).
//!
//! Crash safety is the journal's ([`journal`]); watching is [`watch`]'s; signals: SIGTERM and
//! SIGINT finish the files in flight, flush and exit 0; SIGHUP reloads the config.

mod files;
pub mod journal;
pub mod outbox;
pub mod retention;
mod setup;
pub mod systemd;
pub mod watch;
mod workers;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::alert::{self, Alerts, Cleared, Event, FaultKind, SeriesKey, Stage};
use crate::config::{Settings, WatchMode};
use crate::decide::{Rule, SliceEvidence, Verdict};
use crate::ingest::{series, Pixels, Rescale, Slice, SourceKind, Uids};
use crate::score::Scorer;
pub use files::{free_mb, is_running, move_unique, request_ack, unique_path, write_atomic, ACK_FILE};
use files::{lock, relative_in};
use journal::{now, Journal, Record, SliceRec, State};
pub use setup::{open_leds, SETUP_RETRY};
use setup::{open_sinks, prepare, wait_for_setup, Prepared};
pub use workers::WORKER_BATCH;
use workers::{heatmap_path, worker, Finished, Job, Live, Outcome};

/// Errors that stop the daemon from starting (exit 1, or 2 for configuration).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A folder cannot be created or used.
    #[error("{path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another daemon holds the state folder.
    #[error("{0}")]
    Locked(String),
    /// Scoring cannot be set up (model, engine).
    #[error(transparent)]
    Setup(#[from] crate::score::SetupError),
    /// The journal failed.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// A scoring worker stopped (a bug): the daemon exits non-zero so that its supervisor
    /// restarts it, and the journal resumes what was in flight.
    #[error("scoring worker {0} stopped unexpectedly; exiting so that the service restarts (the journal resumes the files in flight)")]
    WorkerDied(String),
    /// The DICOM receiver or the metrics server cannot listen.
    #[error("{key} = \"{addr}\": {source}")]
    Listen {
        /// The config key.
        key: &'static str,
        /// The address configured.
        addr: std::net::SocketAddr,
        /// Why not.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io { path: path.to_path_buf(), source }
}

/// Signals, as flags the controller polls.
struct Signals {
    stop: Arc<AtomicBool>,
    reload: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> Signals {
        let (stop, reload) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            let _ = signal_hook::flag::register(sig, stop.clone());
        }
        let _ = signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone());
        Signals { stop, reload }
    }
}

/// The daemon.
pub struct Daemon {
    settings: Settings,
    config_path: PathBuf,
    scorer: Arc<Scorer>,
    live: Arc<Mutex<Live>>,
    journal: Journal,
    state: State,
    outbox: outbox::Outbox,
    alerts: Alerts,
    serial_up: Option<Arc<AtomicBool>>,
    button: Option<alert::led::AckButton>,
    faults: HashSet<FaultKind>,
    /// Files waiting: path → (relative name, time detected).
    waiting: BTreeMap<PathBuf, (String, f64)>,
    /// Files being scored: path → time detected.
    in_flight: BTreeMap<PathBuf, f64>,
    /// Files that could not be moved, or whose engine run failed: retry after this time.
    retry_after: BTreeMap<PathBuf, Instant>,
    /// Files whose engine run failed: path → (failures, time detected, time of the first failure).
    /// They keep their series open (as waiting files do) until scored or quarantined.
    engine_failures: BTreeMap<PathBuf, (u32, f64, f64)>,
    /// When a file was last scored (the engine worked).
    last_scored: f64,
    /// Files read alone because an earlier run died while reading them.
    suspects: HashSet<PathBuf>,
    /// What FAULT DISK is on for.
    disk_causes: HashSet<DiskCause>,
    /// Files that could not be moved (to done/ or quarantine/): FAULT DISK until none is left.
    unmovable: HashSet<PathBuf>,
    /// Files scored whose journal record failed: path → time detected (they hold their series).
    unrecorded: BTreeMap<PathBuf, f64>,
    /// When the journal last failed to take a record.
    journal_failed: Option<Instant>,
    busy: bool,
    degraded: bool,
    started: f64,
    /// Recent final verdicts, newest first (for `ctsentry status`).
    last_verdicts: std::collections::VecDeque<crate::status::VerdictView>,
    /// What /metrics and /healthz report.
    metrics: Arc<crate::exposition::Metrics>,
    /// The sender of results to the PACS (`[export]`), when on.
    exporter: Option<crate::net::export::Exporter>,
    /// Verdicts (series, part, counts) whose results this run has spooled: a verdict whose
    /// journal record is retried is not spooled again.
    spooled: HashSet<String>,
}

impl Daemon {
    /// Sets everything up: folders, lock, model and engine, journal, alert sinks.
    ///
    /// What cannot be set up (an output folder that cannot be created or written, a model or
    /// engine that cannot start) does not stop the daemon: it stays up with its alert sinks,
    /// says READY then FAULT,DISK / FAULT,MODEL / FAULT,ENGINE (red LED blinking), and tries
    /// again on SIGHUP (re-reading the config) and every [`SETUP_RETRY`]; once it works, CLEAR
    /// (and the sinks start afresh with the model's identity). Only another daemon on the same
    /// state folder is fatal. Returns `None` when asked to stop while waiting.
    fn start(mut settings: Settings, config_path: &Path, signals: &Signals) -> Result<Option<(Daemon, std::fs::File)>, DaemonError> {
        // The lock, once taken, is kept while waiting: `status` sees a running daemon, and a
        // second one is refused.
        let mut held = None;
        let ready = match prepare(&settings, &mut held) {
            Ok(r) => r,
            Err(e @ DaemonError::Locked(_)) => return Err(e),
            Err(e) => {
                let alerts = Alerts::start(open_sinks(&settings, &format!("{};no-model", env!("CARGO_PKG_VERSION"))).0);
                let ready = wait_for_setup(e, &mut settings, config_path, &alerts, signals, &mut held);
                alerts.stop();
                match ready {
                    Some(r) => r,
                    None => return Ok(None),
                }
            }
        };
        let Prepared { lock, journal, state, outbox, scorer } = ready;
        // The network receiver writes into the drop folder: from there the pipeline is the same.
        let metrics = Arc::new(crate::exposition::Metrics::default());
        if settings.dicom.enabled {
            let (_, stats) = crate::net::scp::start(&settings.dicom, &settings.paths.incoming).map_err(|source| DaemonError::Listen { key: "dicom.listen", addr: settings.dicom.listen, source })?;
            *metrics.dicom.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        }
        let exporter = if settings.export.enabled {
            let spool = settings.paths.state.join(crate::net::export::SPOOL_DIR);
            let ex = crate::net::export::Exporter::start(settings.export.clone(), spool.clone()).map_err(io(&spool))?;
            metrics.export_enabled.store(true, Ordering::Relaxed);
            let e = &settings.export;
            if !e.sr && !e.heatmaps {
                log::warn!("export: export.send is empty: nothing will be sent to the PACS");
            } else if e.heatmaps && !settings.daemon.heatmaps {
                log::warn!("export: export.send has \"heatmaps\" but results.heatmaps = false: no heat maps are made, so none are sent");
            }
            log::info!("export: results to the PACS {:?} at {} as {:?} ({}{}), spool {}", e.called_ae, e.peer, e.calling_ae,
                if e.sr { "SR" } else { "" }, if e.heatmaps { format!("{}heat maps, at most {} a series", if e.sr { ", " } else { "" }, e.max_heatmaps) } else { String::new() }, spool.display());
            Some(ex)
        } else {
            None
        };
        if let Some(addr) = settings.metrics_listen {
            crate::exposition::serve(addr, metrics.clone()).map_err(|source| DaemonError::Listen { key: "metrics.listen", addr, source })?;
        }
        let m = &scorer.model.manifest.model;
        let (sinks, serial_up) = open_sinks(&settings, &format!("{};{}-{}", env!("CARGO_PKG_VERSION"), m.name, m.version));
        let alerts = Alerts::start(sinks);
        let scorer = Arc::new(scorer);
        let button = (!settings.led.button.is_empty())
            .then(|| alert::led::AckButton::open(&settings.led.button, settings.led.active_low))
            .and_then(|r| r.map_err(|e| log::error!("acknowledge button not available: {e}")).ok());
        let live = Arc::new(Mutex::new(Live { rule: scorer.rule.clone(), heatmaps: settings.daemon.heatmaps, ingest: settings.ingest.clone() }));
        let degraded = cfg!(any(feature = "cuda", feature = "cuda-12")) && scorer.pre.name() == "cpu";
        let d = Daemon {
            config_path: config_path.to_path_buf(),
            scorer,
            live,
            journal,
            state,
            outbox,
            alerts,
            serial_up,
            button,
            faults: HashSet::new(),
            waiting: BTreeMap::new(),
            in_flight: BTreeMap::new(),
            retry_after: BTreeMap::new(),
            engine_failures: BTreeMap::new(),
            last_scored: 0.0,
            suspects: HashSet::new(),
            disk_causes: HashSet::new(),
            unmovable: HashSet::new(),
            unrecorded: BTreeMap::new(),
            journal_failed: None,
            busy: false,
            degraded,
            started: now(),
            last_verdicts: std::collections::VecDeque::new(),
            metrics,
            exporter,
            spooled: HashSet::new(),
            settings,
        };
        Ok(Some((d, lock)))
    }

    /// Sends an event to the sinks; FAULT QUEUE while a sink's queue drops events, CLEAR once
    /// they take them again.
    fn emit(&mut self, e: Event) {
        let ok = self.alerts.emit(e);
        self.fault(FaultKind::Queue, !ok);
    }

    /// FAULT DISK has several causes, each with its own end: it is on while any is.
    fn disk(&mut self, cause: DiskCause, on: bool) {
        let changed = if on { self.disk_causes.insert(cause) } else { self.disk_causes.remove(&cause) };
        if changed {
            let any = !self.disk_causes.is_empty();
            self.fault(FaultKind::Disk, any);
        }
    }

    fn fault(&mut self, kind: FaultKind, on: bool) {
        let changed = if on { self.faults.insert(kind) } else { self.faults.remove(&kind) };
        if changed {
            let e = if on { Event::Fault { kind } } else { Event::Clear { what: Cleared::Fault(kind) } };
            // Queue faults are reported in the log only when the queue itself is the problem.
            let _ = self.alerts.emit(e);
        }
    }

    /// Puts a verdict event in the feed (exactly once) and, when it was not there yet, hands it
    /// to the sinks.
    #[allow(clippy::too_many_arguments)]
    fn publish(&mut self, uid: &str, part: u16, stage: Stage, positive: bool, positives: usize, slices: usize, max_prob: f64) {
        let key = SeriesKey::of(uid, part);
        let stage_name = if stage == Stage::Early { "EARLY" } else { "FINAL" };
        let id = format!("{}:{stage_name}", alert::series_id(uid, part));
        if stage == Stage::Final && !self.last_verdicts.iter().any(|v| v.series_uid == uid && v.series_key == key.to_string()) {
            self.last_verdicts.push_front(crate::status::VerdictView {
                series_key: key.to_string(),
                series_uid: uid.to_string(),
                verdict: if positive { "positive" } else { "negative" }.into(),
                positives,
                slices,
                max_prob,
                t: now(),
            });
            self.last_verdicts.truncate(crate::status::LAST_VERDICTS);
        }
        // Feeds written before ids were full hashes hold `KEY:STAGE`: treat those as published
        // too, so that an upgrade does not send the last day's verdicts again.
        if self.outbox.contains(&id) || self.outbox.contains(&format!("{key}:{stage_name}")) {
            return;
        }
        let rule = self.rule();
        let m = &self.scorer.model.manifest.model;
        let line = serde_json::json!({"id": id, "t": now(), "event": if positive { "ALERT" } else { "NEGATIVE" }, "stage": stage_name,
            "series_uid": uid, "series_id": alert::series_id(uid, part), "series_key": key.to_string(), "part": part, "positives": positives, "slices": slices, "max_prob": max_prob,
            "threshold": rule.threshold, "min_positive_slices": rule.min_positive_slices,
            "min_positive_extent_mm": rule.min_positive_extent_mm, "min_positive_share": rule.min_positive_share, "model": format!("{} {}", m.name, m.version)});
        match self.outbox.append(&line) {
            Ok(_) => self.disk(DiskCause::Feed, false),
            Err(e) => {
                log::error!("{}: {e}", self.outbox.path().display());
                self.disk(DiskCause::Feed, true);
            }
        }
        let count = |c: &std::sync::atomic::AtomicU64| c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match (stage, positive) {
            (Stage::Final, true) => {
                count(&self.metrics.series_positive);
                count(&self.metrics.alerts_final);
            }
            (Stage::Final, false) => {
                count(&self.metrics.series_negative);
            }
            _ => {
                count(&self.metrics.alerts_early);
            }
        }
        let (positives, slices, max_prob) = (positives as u32, slices as u32, max_prob as f32);
        self.emit(if positive {
            Event::Alert { key, positives, slices, max_prob, stage }
        } else {
            Event::Negative { key, positives, slices, max_prob }
        });
    }

    /// Re-publishes events the journal holds but the feed lacks (a crash between the two).
    fn republish(&mut self) {
        let open: Vec<(String, journal::OpenSeries)> = self.state.open.iter().filter(|(_, o)| o.alert_t.is_some()).map(|(k, o)| (k.clone(), o.clone())).collect();
        for (uid, o) in open {
            let part = o.part;
            let d = self.decide_open(&uid, &o);
            self.publish(&uid, part, Stage::Early, true, d.positives, d.slices, d.max_prob);
        }
        let finals: Vec<Record> = Journal::read(self.journal.path()).unwrap_or_default().into_iter().filter(|r| matches!(r, Record::Final { .. })).collect();
        for r in finals {
            if let Record::Final { series, part, verdict, positives, slices, max_prob, .. } = r {
                self.publish(&series, part, Stage::Final, verdict == "positive", positives, slices, max_prob);
            }
        }
    }

    fn record(&mut self, r: Record) -> bool {
        match self.journal.append(&r) {
            Ok(()) => {
                self.state.apply(&r);
                self.disk(DiskCause::Journal, false);
                true
            }
            Err(e) => {
                log::error!("{e}");
                self.disk(DiskCause::Journal, true);
                self.journal_failed = Some(Instant::now());
                false
            }
        }
    }

    /// Runs until SIGTERM/SIGINT (flags registered before start-up, so that a signal during
    /// start-up is honoured too). Returns after flushing.
    fn run(mut self, signals: Signals) -> Result<(), DaemonError> {
        let workers = self.settings.engine_threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).clamp(1, 16);
        let max_in_flight = WORKER_BATCH * workers;
        let (job_tx, job_rx) = sync_channel::<Job>(max_in_flight);
        let (done_tx, done_rx) = sync_channel::<Finished>(max_in_flight);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut threads = Vec::new();
        for i in 0..workers {
            let (sc, live, res, jr, dt) = (self.scorer.clone(), self.live.clone(), self.settings.paths.results.clone(), job_rx.clone(), done_tx.clone());
            threads.push(std::thread::Builder::new().name(format!("score-{i}")).spawn(move || worker(sc, live, res, jr, dt)).expect("spawning a worker"));
        }
        drop(done_tx);

        let m = self.scorer.model.manifest.model.clone();
        self.record(Record::Start { t: now(), version: env!("CARGO_PKG_VERSION").into(), model: format!("{} {}", m.name, m.version), sha256: m.sha256.clone() });
        let mut watcher = watch::Watcher::new(&self.settings.paths.incoming, self.settings.daemon.watch, self.settings.daemon.poll_seconds, self.settings.daemon.stable_seconds);
        if self.settings.daemon.watch == WatchMode::Inotify && watcher.degraded.is_some() {
            self.degraded = true;
        }
        self.resume_unmoved();
        self.republish();
        // An unacknowledged alert from before the restart stays latched.
        self.emit(Event::Ready { latched: self.latched_key() });
        if self.degraded {
            self.emit(Event::Degraded { on: true });
        }
        log::info!(
            "ready: watching {} ({:?}), {} workers, model {} {} (sha256 {}…), threshold {:.4} ({}), series rule {}, slices with lung fraction < {} not scored, engine {}, preprocess {}; {} series open from before",
            self.settings.paths.incoming.display(), self.settings.daemon.watch, workers, m.name, m.version, &m.sha256[..12.min(m.sha256.len())],
            self.scorer.rule.threshold, self.scorer.rule.threshold_source, self.scorer.rule.describe(),
            self.scorer.rule.min_lung_fraction, self.scorer.engine.name(), self.scorer.pre.name(),
            self.state.open.len()
        );
        let sd = systemd::Notifier::from_env();
        sd.send("READY=1\nSTATUS=watching");
        let last_journal_t = self.state.open.values().map(|o| o.last_t).fold(0.0, f64::max);
        let mut first_scan = true;
        let mut last_disk_check: Option<Instant> = None;
        let mut last_retention: Option<Instant> = None;
        let mut last_status = Instant::now();
        let mut last_snapshot = Instant::now();
        self.write_status();

        loop {
            if signals.stop.load(Ordering::Relaxed) {
                break;
            }
            if signals.reload.swap(false, Ordering::Relaxed) {
                self.reload(&mut watcher);
            }
            self.check_ack();
            if let Some(up) = &self.serial_up {
                let up = up.load(Ordering::Relaxed);
                // A port that never opened since start is a fault too (after a grace second).
                if up || now() - self.started > 2.0 {
                    self.fault(FaultKind::Serial, !up);
                }
            }
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                last_retention = Some(Instant::now());
                self.apply_retention();
            }
            if last_disk_check.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                last_disk_check = Some(Instant::now());
                self.check_disk();
            }
            // New files.
            let t = now();
            for path in watcher.ready() {
                if self.in_flight.contains_key(&path) || self.waiting.contains_key(&path) {
                    continue;
                }
                if self.retry_after.get(&path).is_some_and(|r| Instant::now() < *r) {
                    continue;
                }
                let Some(rel) = relative_in(&path, &self.settings.paths.incoming) else {
                    log::error!("{}: not inside the drop folder {}; ignored", path.display(), self.settings.paths.incoming.display());
                    continue;
                };
                // Files there before a restart arrived before the journal's last record.
                let detected = if first_scan && last_journal_t > 0.0 { last_journal_t.min(t) } else { t };
                self.waiting.insert(path, (rel, detected));
            }
            first_scan = false;
            // Dispatch: what fits, journalled as attempted before any worker opens it.
            // A file that was being read when an earlier run died (a suspect) is read alone, with
            // nothing else in flight, so that another death blames it and not its batch-mates.
            let mut batch = Vec::new();
            let mut deferred = Vec::new();
            let suspect_busy = self.in_flight.keys().any(|p| self.suspects.contains(p));
            // Nothing new is read while the disk is full or the journal cannot be written.
            // (The attempt record below is also the probe that ends a journal fault: tried again
            // every 5 s.)
            let journal_down = self.disk_causes.contains(&DiskCause::Journal) && self.journal_failed.is_some_and(|t| t.elapsed() < Duration::from_secs(5));
            let blocked = self.disk_causes.contains(&DiskCause::Space) || journal_down;
            while !suspect_busy && !blocked && self.in_flight.len() + batch.len() < max_in_flight {
                let Some((path, (rel, detected))) = self.waiting.pop_first() else { break };
                if self.state.unmoved.contains_key(&rel) {
                    self.move_done(&path, &rel);
                    continue;
                }
                if std::fs::symlink_metadata(&path).is_err() {
                    self.moved(&path);
                    continue; // gone (moved away by someone else)
                }
                let crashes = self.state.attempts.get(&rel).copied().unwrap_or(0);
                if crashes >= CRASH_LIMIT {
                    let reason = format!("the daemon stopped while reading this file {crashes} times (it crashes the reader); not read again");
                    self.quarantine(&path, &rel, alert::RejectKind::Content, &reason);
                    continue;
                }
                if crashes > 0 {
                    if self.in_flight.is_empty() && batch.is_empty() {
                        self.suspects.insert(path.clone());
                        batch.push((path, rel, detected));
                        break;
                    }
                    deferred.push((path, (rel, detected)));
                    continue;
                }
                batch.push((path, rel, detected));
            }
            self.waiting.extend(deferred);
            if !batch.is_empty() && !self.record(Record::Attempt { t: now(), files: batch.iter().map(|(_, r, _)| r.clone()).collect() }) {
                // Not journalled: not read either.
                for (path, rel, detected) in batch.drain(..) {
                    self.waiting.insert(path, (rel, detected));
                }
            }
            for (path, rel, detected) in batch {
                match job_tx.try_send(Job { path: path.clone(), rel: rel.clone() }) {
                    Ok(()) => {
                        self.in_flight.insert(path, detected);
                    }
                    Err(_) => {
                        self.waiting.insert(path, (rel, detected));
                    }
                }
            }
            let busy = !self.in_flight.is_empty() || !self.waiting.is_empty();
            if busy != self.busy {
                self.busy = busy;
                self.emit(Event::Scoring { busy });
            }
            // Results.
            match done_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(f) => {
                    self.finish(f);
                    while let Ok(f) = done_rx.try_recv() {
                        self.finish(f);
                    }
                }
                // Disconnected: every worker stopped, which the check below reports.
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
            }
            // Workers catch panics per file; one that still stops leaves its files in flight
            // forever: better to restart the whole process than to run on without it.
            if let Some(t) = threads.iter().find(|t| t.is_finished()) {
                let name = t.thread().name().unwrap_or("?").to_string();
                log::error!("scoring worker {name} stopped unexpectedly");
                self.fault(FaultKind::Engine, true);
                self.write_status();
                self.alerts.stop();
                return Err(DaemonError::WorkerDied(name));
            }
            self.finalize_quiet_series(false);
            self.export_events();
            sd.watchdog();
            if last_snapshot.elapsed() >= Duration::from_secs(1) {
                last_snapshot = Instant::now();
                self.write_status();
            }
            if last_status.elapsed() > Duration::from_secs(5) {
                last_status = Instant::now();
                sd.send(&format!("STATUS={} waiting, {} scoring, {} series open, {} files handled", self.waiting.len(), self.in_flight.len(), self.state.open.len(), self.state.handled));
            }
        }

        // Shutdown: finish what is in flight, flush, stop.
        sd.send("STOPPING=1");
        self.emit(Event::Stopping);
        log::info!("stopping: finishing {} file(s) in flight", self.in_flight.len());
        drop(job_tx);
        while !self.in_flight.is_empty() {
            match done_rx.recv_timeout(Duration::from_secs(60)) {
                Ok(f) => self.finish(f),
                Err(_) => break,
            }
        }
        for t in threads {
            let _ = t.join();
        }
        self.write_status();
        log::info!("stopped; {} series open (resumed at next start)", self.state.open.len());
        self.alerts.stop();
        Ok(())
    }

    /// The key of the latched alert's series, if one is latched.
    fn latched_key(&self) -> Option<SeriesKey> {
        self.state.latched.as_ref().map(|l| SeriesKey::of(&l.series, l.part))
    }

    /// Replaces the status snapshot (`ctsentry status`).
    fn write_status(&mut self) {
        let rule = self.rule();
        let m = &self.scorer.model.manifest.model;
        let mut faults: Vec<String> = self.faults.iter().map(|f| f.name().to_string()).collect();
        faults.sort();
        let snap = crate::status::Snapshot {
            pid: std::process::id(),
            started: self.started,
            updated: now(),
            latched: self.state.latched.as_ref().map(journal::Latched::view),
            open_series: self.state.open.len(),
            queue: self.waiting.len(),
            scoring: self.in_flight.len(),
            faults,
            engine: self.scorer.engine.name().into(),
            precision: self.scorer.engine.precision().into(),
            preprocess: self.scorer.pre.name().into(),
            model: crate::status::ModelView { name: m.name.clone(), version: m.version.clone(), sha256: m.sha256.clone() },
            threshold: Some(rule.threshold),
            min_positive_slices: Some(rule.min_positive_slices),
            series_rule: Some(rule.describe()),
            files_handled: self.state.handled,
            last_verdicts: self.last_verdicts.iter().cloned().collect(),
        };
        *self.metrics.gauges.lock().unwrap_or_else(|p| p.into_inner()) = crate::exposition::Gauges {
            queue: snap.queue,
            open_series: snap.open_series,
            faults: self.faults.iter().copied().collect(),
            latched: snap.latched.is_some(),
            updated: Some(Instant::now()),
            export_queue: if self.exporter.is_some() { crate::net::export::pending(&self.settings.paths.state.join(crate::net::export::SPOOL_DIR)).len() } else { 0 },
        };
        if let Err(e) = crate::status::write(&self.settings.paths.state, &snap) {
            log::warn!("{}: status not written: {e}", self.settings.paths.state.display());
        }
    }

    fn resume_unmoved(&mut self) {
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

    /// A file left incoming/: a move fault it caused ends (once no other file is stuck).
    fn moved(&mut self, path: &Path) {
        if self.unmovable.remove(path) && self.unmovable.is_empty() {
            self.disk(DiskCause::Move, false);
        }
    }

    fn move_done(&mut self, path: &Path, rel: &str) {
        match move_unique(path, &self.settings.paths.done, rel) {
            Ok(to) => {
                self.record(Record::Done { t: now(), file: rel.to_string(), to: to.display().to_string() });
                self.moved(path);
            }
            Err(e) => {
                let hint = match (e.kind(), path.parent()) {
                    (std::io::ErrorKind::PermissionDenied, Some(dir)) => format!(" (the daemon needs write access to {} and {}: the sender must leave its folders writable)", dir.display(), self.settings.paths.done.display()),
                    _ => String::new(),
                };
                log::error!("{}: scored but cannot be moved to {}: {e}{hint}; retrying in 30 s", path.display(), self.settings.paths.done.display());
                self.retry_after.insert(path.to_path_buf(), Instant::now() + Duration::from_secs(30));
                self.unmovable.insert(path.to_path_buf());
                self.disk(DiskCause::Move, true);
            }
        }
    }

    fn finish(&mut self, f: Finished) {
        let detected = self.in_flight.remove(&f.path).unwrap_or_else(now);
        self.suspects.remove(&f.path);
        let failures = self.engine_failures.remove(&f.path);
        let unrecorded = self.unrecorded.remove(&f.path);
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
                    self.retry_after.insert(f.path.clone(), Instant::now() + Duration::from_secs(10));
                    self.unrecorded.insert(f.path, unrecorded.unwrap_or(detected));
                    return;
                }
                log::debug!("{}: {n} slice(s) scored, {heatmaps} heat map(s)", f.rel);
                self.metrics.slices_scored.fetch_add(n as u64, Ordering::Relaxed);
                self.move_done(&f.path, &f.rel);
                self.check_early(&series);
            }
            Outcome::Unreadable(kind, reason) => self.quarantine(&f.path, &f.rel, kind, &reason),
            Outcome::EngineFailed(e) => {
                let (n, detected, first) = failures.map(|(n, d, first)| (n + 1, d, first)).unwrap_or((1, detected, now()));
                // The file's fault rather than the engine's: it failed on its own, again and
                // again, while other files were scored.
                if n >= ENGINE_RETRIES && self.last_scored > first {
                    let reason = format!("the engine failed on this file {n} times while it scored others: {e}");
                    self.quarantine(&f.path, &f.rel, alert::RejectKind::Content, &reason);
                    return;
                }
                let wait = ENGINE_RETRY_FIRST.saturating_mul(1 << (n - 1).min(5)).min(ENGINE_RETRY_MAX);
                self.record(Record::Retry { t: now(), file: f.rel.clone() });
                log::error!("{}: scoring failed ({n}): {e}; the file stays and is retried in {} s", f.rel, wait.as_secs());
                self.fault(FaultKind::Engine, true);
                self.retry_after.insert(f.path.clone(), Instant::now() + wait);
                self.engine_failures.insert(f.path, (n, detected, first));
            }
        }
    }

    fn quarantine(&mut self, path: &Path, rel: &str, kind: alert::RejectKind, reason: &str) {
        log::warn!("quarantined {rel}: {reason}");
        let q = &self.settings.paths.quarantine;
        let dst = unique_path(&q.join(rel));
        let reason_file = PathBuf::from(format!("{}.reason", dst.display()));
        let text = format!("file: {rel}\nreason: {reason}\ntime: {}\nctsentry: {}\n", now(), env!("CARGO_PKG_VERSION"));
        let dst_rel = dst.strip_prefix(q).map(|p| p.to_string_lossy().to_string()).unwrap_or_else(|_| rel.to_string());
        let moved = write_atomic(&reason_file, text.as_bytes()).and_then(|_| move_unique(path, q, &dst_rel));
        match moved {
            Ok(to) => {
                self.record(Record::Quarantined { t: now(), file: rel.to_string(), to: to.display().to_string(), reason: reason.to_string() });
                self.metrics.files_quarantined.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.emit(Event::Reject { why: kind });
                self.moved(path);
            }
            Err(e) => {
                log::error!("{}: cannot quarantine: {e}; retrying in 30 s", path.display());
                self.retry_after.insert(path.to_path_buf(), Instant::now() + Duration::from_secs(30));
                self.unmovable.insert(path.to_path_buf());
                self.disk(DiskCause::Move, true);
            }
        }
    }

    fn rule(&self) -> Rule {
        self.live.lock().expect("live settings").rule.clone()
    }

    /// What the series rule needs of each slice of an ordered open series (`complete`: for the
    /// final verdict; else slabs as [`series::Series::slab_mm_received`] counts them).
    fn evidence(&self, rule: &Rule, ordered: &series::Series, recs: &[SliceRec], complete: bool) -> Vec<SliceEvidence> {
        let slabs = if complete { ordered.slab_mm() } else { ordered.slab_mm_received() };
        recs.iter()
            .zip(slabs)
            .map(|(r, slab_mm)| SliceEvidence {
                prob: f64::from(r.prob),
                lung_fraction: f64::from(r.lung_fraction),
                slab_mm,
                scored: self.scorer.skip_reason(rule, r.lung_fraction).is_none(),
            })
            .collect()
    }

    /// Whether an EARLY verdict on `o` could be positive, from its records alone (no ordering):
    /// enough positive slices, and, an early slab being at most its Slice Thickness, enough
    /// thickness among them. `check_early` runs after every scored file; this keeps it from
    /// ordering the whole series each time while the rule cannot be met.
    fn early_possible(&self, rule: &Rule, o: &journal::OpenSeries) -> bool {
        let positive: Vec<&SliceRec> =
            o.slices().into_iter().map(|(_, r)| r).filter(|r| self.scorer.skip_reason(rule, r.lung_fraction).is_none() && rule.slice_positive(f64::from(r.prob))).collect();
        let thickness: Option<f64> = positive.iter().map(|r| r.geometry.slice_thickness.filter(|t| t.is_finite() && *t > 0.0)).sum();
        positive.len() >= rule.min_positive_slices && thickness.is_none_or(|t| t >= rule.min_positive_extent_mm)
    }

    /// The rule's EARLY verdict on an open series as it stands.
    fn decide_open(&self, uid: &str, o: &journal::OpenSeries) -> crate::decide::SeriesDecision {
        let rule = self.rule();
        let (ordered, recs) = order_open(uid, o);
        rule.series(&self.evidence(&rule, &ordered, &recs, false))
    }

    fn check_early(&mut self, series: &str) {
        let Some(o) = self.state.open.get(series) else { return };
        if o.alert_t.is_some() || !self.early_possible(&self.rule(), o) {
            return;
        }
        let d = self.decide_open(series, o);
        if d.verdict == Verdict::Positive {
            let part = o.part;
            if self.record(Record::Alert { t: now(), series: series.to_string(), part, positives: d.positives, slices: d.slices, max_prob: d.max_prob }) {
                self.publish(series, part, Stage::Early, true, d.positives, d.slices, d.max_prob);
                self.write_status(); // the latch shows in `status` (and `ack`) at once
            }
        }
    }

    /// Gives the final verdict to every series quiet for `quiet_seconds` whose window holds no
    /// unscored file (`all`: every open series, regardless).
    fn finalize_quiet_series(&mut self, all: bool) {
        let quiet = self.settings.quiet_seconds;
        let oldest_waiting = self
            .waiting
            .values()
            .map(|(_, d)| *d)
            .chain(self.in_flight.values().copied())
            .chain(self.engine_failures.values().map(|(_, d, _)| *d))
            .chain(self.unrecorded.values().copied())
            .fold(f64::INFINITY, f64::min);
        let t = now();
        let due: Vec<String> = self
            .state
            .open
            .iter()
            .filter(|(_, o)| all || (t - o.last_t >= quiet && oldest_waiting > o.last_t + quiet))
            .map(|(k, _)| k.clone())
            .collect();
        for uid in due {
            self.finalize(&uid);
        }
    }

    fn finalize(&mut self, uid: &str) {
        let Some(o) = self.state.open.get(uid).cloned() else { return };
        let rule = self.rule();
        let key = SeriesKey::of(uid, o.part);
        let (ordered, recs) = order_open(uid, &o);
        let d = rule.series(&self.evidence(&rule, &ordered, &recs, true));
        if d.positive_extent_mm.is_none() && rule.min_positive_extent_mm > 0.0 {
            log::warn!("series {key}: slice spacing unknown (no positions, no Slice Thickness): decided without the extent condition");
        }
        let m = &self.scorer.model.manifest.model;
        let slices: Vec<serde_json::Value> = ordered
            .slices
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let r = &recs[i];
                let skipped = self.scorer.skip_reason(&rule, r.lung_fraction);
                let mut v = serde_json::json!({"file": s.source.display().to_string(), "frame": s.frame, "slice_index": i, "z": ordered.z[i],
                    "lung_fraction": r.lung_fraction, "prob": r.prob, "positive": skipped.is_none() && rule.slice_positive(f64::from(r.prob))});
                if let Some(why) = skipped {
                    v["skipped"] = why.into();
                }
                v
            })
            .collect();
        let t = now();
        let result = serde_json::json!({
            "type": "series", "series_uid": uid, "series_id": alert::series_id(uid, o.part), "series_key": key.to_string(), "part": o.part,
            "verdict": d.verdict, "positives": d.positives, "slices": d.slices, "max_prob": d.max_prob,
            "threshold": rule.threshold, "threshold_source": rule.threshold_source, "min_positive_slices": rule.min_positive_slices,
            "min_positive_source": rule.min_positive_source, "min_lung_fraction": rule.min_lung_fraction,
            "min_positive_extent_mm": rule.min_positive_extent_mm, "min_positive_share": rule.min_positive_share, "physical_source": rule.physical_source,
            "positive_extent_mm": d.positive_extent_mm, "positive_share": d.positive_share,
            "model": {"name": m.name, "version": m.version, "sha256": m.sha256},
            "engine": self.scorer.engine.name(), "precision": self.scorer.engine.precision(), "preprocess": self.scorer.pre.name(), "ctsentry": env!("CARGO_PKG_VERSION"),
            "order_key": ordered.order_key, "duplicates": ordered.duplicates, "gaps": ordered.gaps,
            "times": {"first_scored": o.first_t, "last_scored": o.last_t, "early_alert": o.alert_t, "final": t,
                      "early_alert_after_first_s": o.alert_t.map(|a| a - o.first_t), "final_after_last_s": t - o.last_t},
            "slice_scores": slices,
            "unwritten_outputs": o.unwritten,
        });
        let path = self.settings.paths.results.join(format!("{}.json", alert::series_id(uid, o.part)));
        if let Err(e) = write_atomic(&path, serde_json::to_string_pretty(&result).expect("json").as_bytes()) {
            log::error!("{}: result not written: {e}; retrying", path.display());
            self.disk(DiskCause::Result, true);
            return;
        }
        self.disk(DiskCause::Result, false);
        if self.exporter.is_some() {
            let in_order: Vec<(&str, &SliceRec, bool)> = ordered
                .slices
                .iter()
                .zip(&recs)
                .map(|(s, r)| {
                    (s.source.to_str().unwrap_or_default(), r, self.scorer.skip_reason(&rule, r.lung_fraction).is_none() && rule.slice_positive(f64::from(r.prob)))
                })
                .collect();
            self.spool_export(uid, &o, &rule, &d, &in_order);
        }
        let verdict = if d.verdict == Verdict::Positive { "positive" } else { "negative" };
        if !self.record(Record::Final { t, series: uid.to_string(), part: o.part, verdict: verdict.into(), positives: d.positives, slices: d.slices, max_prob: d.max_prob, result: path.display().to_string() }) {
            return;
        }
        log::info!(
            "series {key}: {verdict} ({} of {} slices ≥ {:.4}, {} mm, {:.1} % of the lung; needed {}) -> {}",
            d.positives, d.slices, rule.threshold, d.positive_extent_mm.map_or("unknown".into(), |e| format!("{e:.1}")), d.positive_share * 100.0, rule.describe(), path.display()
        );
        self.publish(uid, o.part, Stage::Final, d.verdict == Verdict::Positive, d.positives, d.slices, d.max_prob);
    }

    /// Writes the verdict's SR and heat maps into the export spool, before the verdict is
    /// journalled: a crash in between writes them again, the same objects (their UIDs and
    /// content follow from the verdict; the content time is the series' last scoring). Once per
    /// verdict and run, however often its journal record is retried. The verdict
    /// never waits for export: what cannot be spooled is logged and journalled as skipped.
    /// `slices`: each slice in order, with its file and whether it is positive.
    fn spool_export(&mut self, uid: &str, o: &journal::OpenSeries, rule: &Rule, d: &crate::decide::SeriesDecision, slices: &[(&str, &SliceRec, bool)]) {
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
        let m = &self.scorer.model.manifest.model;
        let result = SeriesResult {
            series_uid: uid,
            part: o.part,
            positive: d.verdict == Verdict::Positive,
            positives: d.positives,
            slices: d.slices,
            max_prob: d.max_prob,
            threshold: rule.threshold,
            min_positive_slices: rule.min_positive_slices,
            min_positive_extent_mm: rule.min_positive_extent_mm,
            min_positive_share: rule.min_positive_share,
            positive_extent_mm: d.positive_extent_mm,
            positive_share: d.positive_share,
            series_rule: rule.describe(),
            model: (&m.name, &m.version, &m.sha256),
            scored,
            flagged,
            source: &source,
            t: o.last_t,
        };
        let spool = p.state.join(export::SPOOL_DIR);
        match export::spool(&self.settings.export, &spool, &result) {
            Ok(files) => {
                self.disk(DiskCause::Spool, false);
                log::info!("export: series {key}: {} object(s) queued for the PACS", files.len());
                if let Some(ex) = &self.exporter {
                    ex.wake();
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
    fn export_skipped(&mut self, uid: &str, part: u16, reason: String) {
        log::error!("export: series {}: nothing sent to the PACS: {reason}", SeriesKey::of(uid, part));
        self.record(Record::ExportSkipped { t: now(), series: uid.to_string(), part, reason });
    }

    /// Takes the sender's news: journals what the PACS stored or refused, FAULT EXPORT while it
    /// cannot be reached, CLEAR once something goes through.
    fn export_events(&mut self) {
        use crate::net::export::ExportEvent;
        let Some(ex) = &self.exporter else { return };
        let events: Vec<ExportEvent> = ex.events.try_iter().collect();
        for e in events {
            match e {
                ExportEvent::Sent { file, class, sop, status } => {
                    let what = if class == crate::net::export::COMPREHENSIVE_SR { "SR" } else { "heat map" };
                    let warning = if status == 0 { String::new() } else { format!(" (warning 0x{status:04X})") };
                    log::info!("export: {file} ({what}, SOP Instance {sop}) stored by the PACS{warning}");
                    self.metrics.exported.fetch_add(1, Ordering::Relaxed);
                    self.record(Record::Exported { t: now(), file, sop, status });
                    if self.faults.contains(&FaultKind::Export) {
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
                    if self.faults.contains(&FaultKind::Export) {
                        log::info!("export: the PACS takes results again (or none wait)");
                    }
                    self.fault(FaultKind::Export, false);
                }
                ExportEvent::Unreachable { reason, retry_s } => {
                    if self.faults.contains(&FaultKind::Export) {
                        log::warn!("export: {reason}; trying again in {retry_s:.0} s");
                    } else {
                        log::error!("export: {reason}; results wait in the spool, trying again in {retry_s:.0} s");
                    }
                    self.fault(FaultKind::Export, true);
                }
            }
        }
    }

    fn check_ack(&mut self) {
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
        let p = self.settings.paths.state.join(ACK_FILE);
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
    fn apply_retention(&self) {
        let d = &self.settings.daemon;
        let t = now();
        // Objects the PACS refused for good are results too: kept as long.
        let refused = self.settings.paths.state.join(crate::net::export::SPOOL_DIR).join(crate::net::export::FAILED_DIR);
        for (name, dir, days) in [("done", &self.settings.paths.done, d.done_days), ("results", &self.settings.paths.results, d.results_days), ("state/export/failed", &refused, d.results_days)] {
            let s = retention::sweep(dir, days, t);
            if s.files > 0 {
                log::info!("retention: deleted {} file(s), {:.1} MiB, older than {days} days from {name}/ ({})", s.files, s.bytes as f64 / 1048576.0, dir.display());
            }
        }
    }

    fn check_disk(&mut self) {
        // A file stuck for a move that someone removed by hand no longer holds the fault.
        let gone: Vec<PathBuf> = self.unmovable.iter().filter(|p| std::fs::symlink_metadata(p).is_err()).cloned().collect();
        for p in gone {
            self.moved(&p);
        }
        let p = &self.settings.paths;
        let min = self.settings.daemon.min_free_mb;
        let low: Vec<String> = [&p.done, &p.quarantine, &p.results, &p.state]
            .iter()
            .filter_map(|d| free_mb(d).filter(|f| *f < min).map(|f| format!("{} ({f:.0} MiB free)", d.display())))
            .collect();
        let was = self.disk_causes.contains(&DiskCause::Space);
        if !low.is_empty() && !was {
            log::error!("disk space below disk.min_free_mb = {min}: {}; new files wait until space returns", low.join(", "));
        } else if low.is_empty() && was {
            log::info!("disk space is back above {min} MiB; taking files again");
        }
        self.disk(DiskCause::Space, !low.is_empty());
        // The drop folder must stay readable (FAULT WATCH while it is not).
        let incoming = &self.settings.paths.incoming;
        let readable = std::fs::read_dir(incoming).is_ok();
        if !readable && !self.faults.contains(&FaultKind::Watch) {
            log::error!("{}: the drop folder cannot be read; nothing new is taken until it can", incoming.display());
        }
        self.fault(FaultKind::Watch, !readable);
    }

    fn reload(&mut self, watcher: &mut watch::Watcher) {
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
        let rule = crate::score::rule_for(s, &self.scorer.model.manifest);
        *self.live.lock().expect("live settings") = Live { rule: rule.clone(), heatmaps: s.daemon.heatmaps, ingest: s.ingest.clone() };
        watcher.set_timing(s.daemon.poll_seconds, s.daemon.stable_seconds);
        log::set_max_level(s.log_level);
        log::info!("config reloaded: threshold {:.4} ({}), series rule {}, quiet {} s", rule.threshold, rule.threshold_source, rule.describe(), s.quiet_seconds);
    }
}

/// Runs the daemon with `settings` (loaded from `config_path`, reloaded from it on SIGHUP).
pub fn run(settings: Settings, config_path: &Path) -> Result<(), DaemonError> {
    let signals = Signals::register();
    match Daemon::start(settings, config_path, &signals)? {
        Some((d, _lock)) => d.run(signals),
        None => Ok(()),
    }
}

/// What FAULT DISK is on for; each cause ends on its own (free space back, a write that works).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum DiskCause {
    /// Free space under `disk.min_free_mb`.
    Space,
    /// The journal cannot be written.
    Journal,
    /// The verdict feed cannot be written.
    Feed,
    /// A file cannot be moved to done/ or quarantine/.
    Move,
    /// A series result cannot be written.
    Result,
    /// The export spool cannot be written.
    Spool,
}

/// Engine failures of one file (alone) before it is taken for the culprit, provided other files
/// were scored meanwhile; retries wait 10 s, doubling up to 5 min.
pub const ENGINE_RETRIES: u32 = 5;
const ENGINE_RETRY_FIRST: Duration = Duration::from_secs(10);
const ENGINE_RETRY_MAX: Duration = Duration::from_secs(300);

/// Runs that stopped while reading a file before it is quarantined instead of read again.
pub const CRASH_LIMIT: u32 = 3;

/// How often expired files are deleted (`[retention]`); also once at start.
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Orders an open series' slices as `score` does, from the journal's geometry: the series (of
/// pixel-less stand-ins) and each slice's record, in series order.
fn order_open(uid: &str, o: &journal::OpenSeries) -> (series::Series, Vec<SliceRec>) {
    let mut stubs = Vec::new();
    let mut by_name = std::collections::HashMap::new();
    for (file, r) in o.slices() {
        stubs.push(Slice {
            source: PathBuf::from(file),
            frame: r.frame,
            rows: 0,
            cols: 0,
            pixels: Pixels::I16(Vec::new()),
            rescale: Rescale::default(),
            geometry: r.geometry,
            uids: Uids { series: uid.to_string(), ..Default::default() },
            modality: None,
            image_type: Vec::new(),
            transfer_syntax: None,
            kind: SourceKind::Dicom,
        });
        by_name.insert((file.to_string(), r.frame), r.clone());
    }
    let ordered = series::order(uid.to_string(), stubs);
    let recs = ordered.slices.iter().map(|s| by_name[&(s.source.display().to_string(), s.frame)].clone()).collect();
    (ordered, recs)
}
