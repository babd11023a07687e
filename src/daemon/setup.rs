//! Start-up: folders, lock, journal, feed, model and engine ([`prepare`], which also prunes the
//! OpenVINO compiled-model cache), the alert sinks, and
//! the visible wait while something of that cannot be set up ([`wait_for_setup`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::{Control, TICK};
use super::journal::{Journal, State};
use super::{io, lock, outbox, systemd, DaemonError};
use crate::alert::{self, Alerts, Cleared, Event, FaultKind, SeriesKey};
use crate::config::Settings;
use crate::durable::{now, StateDir};
use crate::score::Scorer;

/// How often a daemon that cannot set up tries again on its own.
pub const SETUP_RETRY: Duration = Duration::from_secs(30);

/// What [`prepare`] sets up.
pub(super) struct Prepared {
    pub(super) lock: std::fs::File,
    pub(super) journal: Journal,
    pub(super) state: State,
    pub(super) outbox: outbox::Outbox,
    pub(super) scorer: Scorer,
}

/// Folders, lock, journal, feed, model and engine: everything the daemon needs but its sinks.
/// `held` keeps the lock (with its state folder) across failed attempts.
pub(super) fn prepare(settings: &Settings, held: &mut Option<(PathBuf, std::fs::File)>) -> Result<Prepared, DaemonError> {
    let p = &settings.paths;
    for d in [&p.incoming, &p.done, &p.quarantine, &p.results, &p.state] {
        std::fs::create_dir_all(d).map_err(io(d))?;
    }
    if held.as_ref().is_none_or(|(dir, _)| *dir != p.state) {
        *held = Some((p.state.clone(), lock(&p.state)?));
    }
    let (journal, state) = Journal::open(&p.state)?;
    let outbox = outbox::Outbox::open(&p.results).map_err(io(&p.results))?;
    let scorer = Scorer::from_settings(settings)?;
    // With the lock held and this engine's cache folder marked: only this process prunes.
    crate::engine::openvino::prune_cache(&p.state);
    let (_, lock) = held.take().expect("locked above");
    Ok(Prepared { lock, journal, state, outbox, scorer })
}

/// The alert sinks of `settings` (log always; serial, LEDs when enabled), and the serial port's
/// up flag. `version` goes into READY.
pub(super) fn open_sinks(settings: &Settings, version: &str) -> (Vec<Box<dyn alert::AlertSink>>, Option<Arc<AtomicBool>>) {
    let mut sinks: Vec<Box<dyn alert::AlertSink>> = vec![Box::new(alert::LogSink)];
    let mut serial_up = None;
    if settings.serial.enabled {
        let s = alert::serial::SerialSink::new(settings.serial.clone(), version);
        serial_up = Some(s.port_up());
        sinks.push(Box::new(s));
    }
    if settings.led.enabled {
        match alert::led::open_configured(&settings.led) {
            Ok(d) => sinks.push(Box::new(alert::led::LedSink::new(d))),
            Err(e) => log::error!("LEDs not available: {e} (see `ctsentry doctor`)"),
        }
    }
    (sinks, serial_up)
}

/// The fault a set-up error shows.
fn setup_fault(e: &DaemonError) -> FaultKind {
    match e {
        DaemonError::Setup(crate::score::SetupError::Model(_)) => FaultKind::Model,
        DaemonError::Setup(_) => FaultKind::Engine,
        _ => FaultKind::Disk,
    }
}

/// Keeps the daemon up, visibly faulty, until [`prepare`] succeeds (SIGHUP re-reads the config;
/// a retry every [`SETUP_RETRY`] catches a fix such as a model copied into place or a folder
/// given the right owner) or a stop signal arrives (`None`). Files in the drop folder wait
/// untouched meanwhile.
pub(super) fn wait_for_setup(
    first: DaemonError,
    settings: &mut Settings,
    config_path: &Path,
    alerts: &Alerts,
    control: &Receiver<Control>,
    held: &mut Option<(PathBuf, std::fs::File)>,
) -> Option<Prepared> {
    let sd = systemd::Notifier::from_env();
    let mut kind = setup_fault(&first);
    let mut why = first.to_string();
    // The latch, if the journal can be read, so READY and `status` show it meanwhile.
    let latched = Journal::read(&StateDir::new(&settings.paths.state).journal()).ok().and_then(|records| {
        let mut st = State::default();
        records.iter().for_each(|r| st.apply(r));
        st.latched
    });
    log::error!("cannot start scoring: {why}; staying up with FAULT {} until it is fixed (SIGHUP re-reads the config; retried every {} s)", kind.name(), SETUP_RETRY.as_secs());
    alerts.emit(Event::Ready { latched: latched.as_ref().map(|l| SeriesKey::of(&l.series, l.part)) });
    alerts.emit(Event::Fault { kind });
    sd.send(&format!("READY=1\nSTATUS=FAULT {}: {why}", kind.name()));
    let started = now();
    let mut last_try = Instant::now();
    let mut last_status = None::<Instant>;
    loop {
        let reload = match control.recv_timeout(TICK) {
            Ok(Control::Stop) => {
                sd.send("STOPPING=1");
                alerts.emit(Event::Stopping);
                return None;
            }
            Ok(Control::Reload) => true,
            // No worker runs yet: nothing else arrives.
            Ok(Control::Done(_)) | Err(_) => false,
        };
        if reload {
            match Settings::load(config_path) {
                Ok(new) => *settings = new,
                Err(e) => log::error!("reload refused, keeping the running config:\n{e}"),
            }
        }
        if reload || last_try.elapsed() >= SETUP_RETRY {
            last_try = Instant::now();
            match prepare(settings, held) {
                Ok(r) => {
                    let m = &r.scorer.model.manifest.model;
                    log::info!("scoring set up: {} {}, engine {}; FAULT {} cleared", m.name, m.version, r.scorer.engine.name(), kind.name());
                    alerts.emit(Event::Clear { what: Cleared::Fault(kind) });
                    return Some(r);
                }
                Err(e) => {
                    let now_kind = setup_fault(&e);
                    why = e.to_string();
                    if now_kind != kind {
                        alerts.emit(Event::Clear { what: Cleared::Fault(kind) });
                        alerts.emit(Event::Fault { kind: now_kind });
                        kind = now_kind;
                    }
                    log::error!("still cannot start scoring: {why}");
                }
            }
        }
        if last_status.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            last_status = Some(Instant::now());
            sd.send(&format!("STATUS=FAULT {}: {why}", kind.name()));
            let snap = crate::status::Snapshot::without_scorer(settings, started, kind, latched.as_ref().map(super::journal::Latched::view));
            // The state folder itself may be what is broken: then there is no status to give.
            let _ = crate::status::write(&settings.paths.state, &snap);
        }
        sd.watchdog();
    }
}
