//! The daemon (`ctsentry run`): drop folder in, verdicts and alerts out, unattended.
//!
//! One controller thread owns the journal, the series state and the file moves; worker threads
//! read, preprocess and score up to 8 files at a time. At most `8 × workers` files are decoded or
//! scored at once, so memory stays bounded however many files arrive (the waiting ones are only
//! paths). Series are assembled as slices arrive; an EARLY alert goes out as soon as the series
//! rule is met, the final verdict after `series.quiet_seconds` without a new slice (and only once
//! every file that arrived in that window has been scored).
//!
//! This module composes the parts and runs the one control loop over `control::Control`
//! (signals, finished files, ticks). The parts:
//! - `table`: each file's state; dispatch, retries, crash limit, back-off (pure).
//! - `faults`: the fault set, returning the events its changes cause.
//! - `files`: what happens to a file when it is finished (journal, move, quarantine).
//! - `series`: the series rule on open series, EARLY and FINAL verdicts, result files.
//! - `results`: the verdict feed, the sinks, the status snapshot.
//! - `export`: the bridge to the PACS sender (spool, its news, its supervision).
//! - `upkeep`: acknowledgements, disk and drop-folder checks, retention, the serial port.
//! - `reload`: SIGHUP.
//! - `control`: the control channel, signals, supervised threads.
//!
//! Crash safety is the journal's ([`journal`]); watching is [`watch`]'s; signals: SIGTERM and
//! SIGINT finish the files in flight, flush and exit 0; SIGHUP reloads the config. Every thread
//! is supervised: a scoring worker, the DICOM receiver or the metrics server that ends makes the
//! daemon exit non-zero (systemd restarts it; the journal resumes); an exporter that ends raises
//! FAULT EXPORT and is started again.

mod control;
mod drift;
mod error;
mod export;
mod faults;
mod files;
pub mod journal;
pub mod outbox;
mod reload;
mod results;
pub mod retention;
mod series;
mod setup;
pub mod systemd;
mod table;
mod upkeep;
pub mod watch;
mod workers;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::alert::{Alerts, Event, FaultKind};
use crate::config::{Settings, WatchMode};
use crate::durable::{now, StateDir};
use crate::score::Scorer;
use control::{Control, OnDeath, Supervised, TICK};
pub use error::DaemonError;
use error::{io, lock};
use faults::{DiskCause, Faults};
use journal::{Journal, Record, State};
pub use setup::SETUP_RETRY;
use setup::{open_sinks, prepare, wait_for_setup, Prepared};
use table::{relative_in, FileTable};
pub use table::{CRASH_LIMIT, ENGINE_RETRIES};
pub use workers::WORKER_BATCH;
use workers::{worker, Job, Live};

/// The daemon.
pub struct Daemon {
    settings: Settings,
    config_path: PathBuf,
    state_dir: StateDir,
    scorer: Arc<Scorer>,
    live: Arc<Mutex<Live>>,
    journal: Journal,
    state: State,
    outbox: outbox::Outbox,
    alerts: Alerts,
    serial_up: Option<Arc<AtomicBool>>,
    button: Option<crate::alert::led::AckButton>,
    faults: Faults,
    /// Every file being handled.
    files: FileTable,
    /// When a file was last scored (the engine worked).
    last_scored: f64,
    /// When the journal last failed to take a record.
    journal_failed: Option<Instant>,
    busy: bool,
    degraded: bool,
    /// Drift watching (None: off, or no reference).
    drift: Option<drift::DriftWatch>,
    started: f64,
    /// Recent final verdicts, newest first (for `ctsentry status`).
    last_verdicts: std::collections::VecDeque<crate::status::VerdictView>,
    /// What /metrics and /healthz report.
    metrics: Arc<crate::metrics::Metrics>,
    /// The sender of results to the PACS (`[export]`), when on.
    exporter: Option<export::Bridge>,
    /// Verdicts (series, part, counts) whose results this run has spooled: a verdict whose
    /// journal record is retried is not spooled again.
    spooled: HashSet<String>,
    /// The receiver's and the metrics server's threads.
    threads: Vec<Supervised>,
    /// The receiver's TLS configuration, when it speaks TLS (re-read on SIGHUP).
    receiver_tls: Option<crate::net::scp::TlsSlot>,
}

impl Daemon {
    /// Sets everything up: folders, lock, model and engine, journal, alert sinks, listeners.
    ///
    /// What cannot be set up (an output folder that cannot be created or written, a model or
    /// engine that cannot start) does not stop the daemon: it stays up with its alert sinks,
    /// says READY then FAULT,DISK / FAULT,MODEL / FAULT,ENGINE (red LED blinking), and tries
    /// again on SIGHUP (re-reading the config) and every [`SETUP_RETRY`]; once it works, CLEAR
    /// (and the sinks start afresh with the model's identity). Only another daemon on the same
    /// state folder is fatal. Returns `None` when asked to stop while waiting.
    fn start(mut settings: Settings, config_path: &Path, control: &Receiver<Control>) -> Result<Option<(Daemon, std::fs::File)>, DaemonError> {
        // The lock, once taken, is kept while waiting: `status` sees a running daemon, and a
        // second one is refused.
        let mut held = None;
        let ready = match prepare(&settings, &mut held) {
            Ok(r) => r,
            Err(e @ DaemonError::Locked(_)) => return Err(e),
            Err(e) => {
                let alerts = Alerts::start(open_sinks(&settings, &format!("{};no-model", env!("CARGO_PKG_VERSION"))).0);
                let ready = wait_for_setup(e, &mut settings, config_path, &alerts, control, &mut held);
                alerts.stop();
                match ready {
                    Some(r) => r,
                    None => return Ok(None),
                }
            }
        };
        let Prepared { lock, journal, state, outbox, scorer } = ready;
        let state_dir = StateDir::new(&settings.paths.state);
        // The network receiver writes into the drop folder: from there the pipeline is the same.
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let mut threads = Vec::new();
        let mut receiver_tls = None;
        if settings.dicom.enabled {
            let tls = settings.dicom.tls.as_ref().map(crate::net::tls::server_config).transpose()?;
            let r = crate::net::scp::start(&settings.dicom, &settings.paths.incoming, tls).map_err(|source| DaemonError::Listen {
                key: "dicom.listen",
                addr: settings.dicom.listen,
                source,
            })?;
            *metrics.dicom.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.stats);
            threads.push(Supervised::new(r.thread, OnDeath::Exit));
            receiver_tls = Some(r.tls);
        }
        let exporter = if settings.export.enabled { Some(export::Bridge::start(&settings, &state_dir, &metrics)?) } else { None };
        if let Some(addr) = settings.metrics_listen {
            let (_, thread) = crate::metrics::serve(
                addr,
                metrics.clone(),
                settings.metrics_token.clone(),
                Some(crate::page::Site { state: settings.paths.state.clone(), results: settings.paths.results.clone() }),
            )
            .map_err(|source| DaemonError::Listen { key: "metrics.listen", addr, source })?;
            threads.push(Supervised::new(thread, OnDeath::Exit));
        }
        let m = &scorer.model.manifest.model;
        let (sinks, serial_up) = open_sinks(&settings, &format!("{};{}-{}", env!("CARGO_PKG_VERSION"), m.name, m.version));
        let button = (!settings.led.button.is_empty())
            .then(|| crate::alert::led::AckButton::open(&settings.led.button, settings.led.active_low))
            .and_then(|r| r.map_err(|e| log::error!("acknowledge button not available: {e}")).ok());
        let live = Arc::new(Mutex::new(Live { rule: scorer.rule.clone(), heatmaps: settings.daemon.heatmaps, ingest: settings.ingest.clone() }));
        let degraded = cfg!(any(feature = "cuda", feature = "cuda-12")) && scorer.pre.name() == "cpu";
        let drift = drift::DriftWatch::open(&settings, &scorer, &state_dir);
        let d = Daemon {
            config_path: config_path.to_path_buf(),
            state_dir,
            scorer: Arc::new(scorer),
            live,
            journal,
            state,
            outbox,
            alerts: Alerts::start(sinks),
            serial_up,
            button,
            faults: Faults::default(),
            files: FileTable::default(),
            last_scored: 0.0,
            journal_failed: None,
            busy: false,
            degraded,
            drift,
            started: now(),
            last_verdicts: std::collections::VecDeque::new(),
            metrics,
            exporter,
            spooled: HashSet::new(),
            threads,
            receiver_tls,
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

    /// Turns a fault on or off, telling the sinks when that changes it.
    fn fault(&mut self, kind: FaultKind, on: bool) {
        if let Some(e) = self.faults.set(kind, on) {
            // Queue faults are reported in the log only when the queue itself is the problem.
            let _ = self.alerts.emit(e);
        }
    }

    /// Turns one cause of FAULT DISK on or off.
    fn disk(&mut self, cause: DiskCause, on: bool) {
        if let Some(e) = self.faults.disk(cause, on) {
            let _ = self.alerts.emit(e);
        }
    }

    /// Appends a record to the journal and applies it; FAULT DISK (journal) while that fails.
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

    /// Runs until SIGTERM/SIGINT (signals registered before start-up, so that one during
    /// start-up is honoured too). Returns after flushing.
    fn run(mut self, tx: std::sync::mpsc::Sender<Control>, control: Receiver<Control>) -> Result<(), DaemonError> {
        let workers = self.settings.engine_threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)).clamp(1, 16);
        let max_in_flight = WORKER_BATCH * workers;
        let (job_tx, job_rx) = sync_channel::<Job>(max_in_flight);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let mut scoring = Vec::new();
        for i in 0..workers {
            let (sc, live, res, m, jr, dt) = (self.scorer.clone(), self.live.clone(), self.settings.paths.results.clone(), self.metrics.clone(), job_rx.clone(), tx.clone());
            let h = std::thread::Builder::new().name(format!("score-{i}")).spawn(move || worker(sc, live, res, m, jr, dt)).expect("spawning a worker");
            scoring.push(Supervised::new(h, OnDeath::Exit));
        }
        drop(tx);
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
        self.announce_drift();
        log::info!(
            "ready: watching {} ({:?}), {} workers, model {} {} (sha256 {}…), threshold {:.4} ({}), series rule {}, slices with lung fraction < {} not scored, engine {}, preprocess {}; {} series open from before",
            self.settings.paths.incoming.display(), self.settings.daemon.watch, workers, m.name, m.version, &m.sha256[..12.min(m.sha256.len())],
            self.scorer.rule.threshold, self.scorer.rule.threshold_source, self.scorer.rule.describe(),
            self.scorer.rule.min_lung_fraction, self.scorer.engine.name(), self.scorer.pre.name(),
            self.state.open.len()
        );
        let sd = systemd::Notifier::from_env();
        sd.send("READY=1\nSTATUS=watching");
        let mut ticks = Ticks { last_journal_t: self.state.open.values().map(|o| o.last_t).fold(0.0, f64::max), ..Ticks::default() };
        self.write_status();

        let mut last_tick = Instant::now() - TICK;
        'run: loop {
            let wait = TICK.saturating_sub(last_tick.elapsed());
            // Disconnected cannot happen (the signal thread holds a sender); a worker's end is
            // noticed by supervision below.
            let mut next = control.recv_timeout(wait).ok();
            while let Some(msg) = next {
                match msg {
                    Control::Stop => break 'run,
                    Control::Reload => self.reload(&mut watcher),
                    Control::Done(f) => self.finish(f),
                }
                next = control.try_recv().ok();
            }
            if last_tick.elapsed() >= TICK {
                last_tick = Instant::now();
                self.tick(&mut watcher, &mut ticks, &sd);
                if let Some(e) = self.supervise(&mut scoring) {
                    self.alerts.stop();
                    return Err(e);
                }
            }
            self.dispatch(&job_tx, max_in_flight);
        }

        // Shutdown: finish what is in flight, flush, stop.
        sd.send("STOPPING=1");
        self.emit(Event::Stopping);
        log::info!("stopping: finishing {} file(s) in flight", self.files.in_flight());
        drop(job_tx);
        while self.files.in_flight() > 0 {
            match control.recv_timeout(Duration::from_secs(60)) {
                Ok(Control::Done(f)) => self.finish(f),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        for t in scoring {
            t.join();
        }
        self.export_finish(export::FINISH);
        self.write_status();
        log::info!("stopped; {} series open (resumed at next start)", self.state.open.len());
        self.alerts.stop();
        Ok(())
    }

    /// The periodic work: checks, new files, quiet series, the exporter's news, status.
    fn tick(&mut self, watcher: &mut watch::Watcher, t: &mut Ticks, sd: &systemd::Notifier) {
        self.check_ack();
        self.check_serial();
        if t.retention.is_none_or(|r| r.elapsed() >= RETENTION_EVERY) {
            t.retention = Some(Instant::now());
            self.apply_retention();
        }
        if t.disk.is_none_or(|d| d.elapsed() > Duration::from_secs(5)) {
            t.disk = Some(Instant::now());
            self.check_disk();
        }
        let now_t = now();
        for path in watcher.ready() {
            if self.files.is_active(&path) {
                continue;
            }
            let Some(rel) = relative_in(&path, &self.settings.paths.incoming) else {
                log::error!("{}: not inside the drop folder {}; ignored", path.display(), self.settings.paths.incoming.display());
                continue;
            };
            // Files there before a restart arrived before the journal's last record.
            let detected = if !t.scanned && t.last_journal_t > 0.0 { t.last_journal_t.min(now_t) } else { now_t };
            self.files.admit(&path, rel, detected, Instant::now());
        }
        t.scanned = true;
        self.finalize_quiet_series(false);
        self.export_tick();
        sd.watchdog();
        if t.snapshot.is_none_or(|s| s.elapsed() >= Duration::from_secs(1)) {
            t.snapshot = Some(Instant::now());
            self.write_status();
        }
        if t.status.is_none_or(|s| s.elapsed() > Duration::from_secs(5)) {
            t.status = Some(Instant::now());
            sd.send(&format!(
                "STATUS={} waiting, {} scoring, {} series open, {} files handled",
                self.files.waiting(),
                self.files.in_flight(),
                self.state.open.len(),
                self.state.handled
            ));
        }
    }
}

/// When the periodic checks last ran, and what the first scan needs.
#[derive(Default)]
struct Ticks {
    last_journal_t: f64,
    scanned: bool,
    retention: Option<Instant>,
    disk: Option<Instant>,
    snapshot: Option<Instant>,
    status: Option<Instant>,
}

/// How often expired files are deleted (`[retention]`); also once at start.
pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// Runs the daemon with `settings` (loaded from `config_path`, reloaded from it on SIGHUP).
pub fn run(settings: Settings, config_path: &Path) -> Result<(), DaemonError> {
    let (tx, rx) = channel();
    if let Err(e) = control::listen_for_signals(tx.clone()) {
        log::error!("signals cannot be caught ({e}): SIGTERM ends the daemon without a flush, SIGHUP does not reload");
    }
    match Daemon::start(settings, config_path, &rx)? {
        Some((d, _lock)) => d.run(tx, rx),
        None => Ok(()),
    }
}
