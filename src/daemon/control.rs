//! What drives the controller: one [`Control`] channel fed by a signal thread and the scoring
//! workers (the controller also wakes every [`TICK`] to watch the drop folder and run its
//! checks), and the supervision of every thread the daemon starts: a thread that ends is
//! noticed within a tick and named, never silent.

use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::Duration;

use super::workers::Finished;
use super::{Daemon, DaemonError};
use crate::alert::FaultKind;

/// How often the controller runs its checks when nothing arrives.
pub(super) const TICK: Duration = Duration::from_millis(100);

/// A message to the controller.
pub(super) enum Control {
    /// SIGTERM or SIGINT: finish the files in flight, flush, exit 0.
    Stop,
    /// SIGHUP: re-read the config.
    Reload,
    /// A worker finished a file.
    Done(Finished),
}

/// Starts the thread that turns SIGTERM/SIGINT into [`Control::Stop`] and SIGHUP into
/// [`Control::Reload`]. Signals are registered before it returns: one that arrives during
/// start-up waits in the channel.
pub(super) fn listen_for_signals(tx: Sender<Control>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            let msg = if sig == SIGHUP { Control::Reload } else { Control::Stop };
            if tx.send(msg).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

/// What the daemon does when a supervised thread ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnDeath {
    /// Exit non-zero so that systemd restarts the service (the journal resumes what was in
    /// flight): the scoring workers, the DICOM receiver, the metrics server.
    Exit,
    /// Raise the thread's fault and start it again after a pause: the exporter (its spool is
    /// on disk, so nothing is lost meanwhile).
    Restart,
}

/// A thread the daemon started and watches.
pub(super) struct Supervised {
    /// Its name (as the thread is named).
    pub(super) name: String,
    /// What its end means.
    pub(super) on_death: OnDeath,
    handle: Option<JoinHandle<()>>,
}

impl Supervised {
    /// Watches `handle`.
    pub(super) fn new(handle: JoinHandle<()>, on_death: OnDeath) -> Supervised {
        Supervised { name: handle.thread().name().unwrap_or("?").to_string(), on_death, handle: Some(handle) }
    }

    /// Once the thread has ended: why (its panic message, or that it returned); then `None`
    /// again (each end is reported once).
    pub(super) fn ended(&mut self) -> Option<String> {
        if !self.handle.as_ref().is_some_and(|h| h.is_finished()) {
            return None;
        }
        let h = self.handle.take()?;
        Some(match h.join() {
            Ok(()) => "it returned".into(),
            Err(payload) => format!("it panicked: {}", crate::failpoint::panic_message(payload.as_ref())),
        })
    }
}

impl Daemon {
    /// Checks every supervised thread: the error to exit with when one the daemon cannot run
    /// without has ended (FAULT ENGINE first for a scoring worker); an exporter's end is the
    /// export bridge's.
    pub(super) fn supervise(&mut self, scoring: &mut [Supervised]) -> Option<DaemonError> {
        let ended = scoring.iter_mut().chain(self.threads.iter_mut()).filter(|t| t.on_death == OnDeath::Exit).find_map(|t| t.ended().map(|why| (t.name.clone(), why)));
        let (name, why) = ended?;
        log::error!("thread {name} stopped unexpectedly: {why}");
        if name.starts_with("score-") {
            self.fault(FaultKind::Engine, true);
        }
        self.write_status();
        Some(DaemonError::ThreadDied { name, why })
    }
}

impl Supervised {
    /// Whether the thread has ended (without taking its end: see [`Supervised::ended`]).
    pub(super) fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for the thread to end (at shutdown, once its work is done).
    pub(super) fn join(mut self) {
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_ends_is_reported_once_with_its_panic() {
        let h = std::thread::Builder::new().name("doomed".into()).spawn(|| panic!("on purpose")).unwrap();
        let mut s = Supervised::new(h, OnDeath::Restart);
        let why = (0..200).find_map(|_| {
            std::thread::sleep(Duration::from_millis(5));
            s.ended()
        });
        assert_eq!((s.name.as_str(), why.as_deref()), ("doomed", Some("it panicked: on purpose")));
        assert_eq!(s.ended(), None);
        let h = std::thread::spawn(|| std::thread::sleep(Duration::from_secs(5)));
        assert_eq!(Supervised::new(h, OnDeath::Exit).ended(), None, "still running");
    }
}
