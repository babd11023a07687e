//! Alerts: how the box speaks to people. Events ([`Event`]) go to sinks ([`AlertSink`]): the
//! serial line ([`serial`]), the status LEDs ([`led`]) and the log ([`LogSink`]).
//!
//! Sinks never block the pipeline: [`Alerts::emit`] puts the event into each sink's bounded
//! queue and returns; each sink runs on its own thread. A full queue is itself a fault, logged
//! and counted. No event carries a patient name, ID or birth date: a series is named on the wire
//! by [`SeriesKey`], a hash of its Series Instance UID.

pub mod led;
pub mod protocol;
pub mod serial;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// A short, stable series name for the wire and for people: the first 8 hex digits of the
/// SHA-256 of the Series Instance UID, and the part (1, or more when slices arrived after a final
/// verdict; then shown as `KEY.PART`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    /// 8 lowercase hex digits.
    pub hash: [u8; 8],
    /// Part of the series, from 1.
    pub part: u16,
}

impl SeriesKey {
    /// The key of `series_uid`, part `part`.
    pub fn of(series_uid: &str, part: u16) -> SeriesKey {
        let digest = Sha256::digest(series_uid.as_bytes());
        let mut hash = [0u8; 8];
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, b) in digest[..4].iter().enumerate() {
            hash[2 * i] = HEX[usize::from(b >> 4)];
            hash[2 * i + 1] = HEX[usize::from(b & 15)];
        }
        SeriesKey { hash, part }
    }

    /// The 8 hex digits.
    pub fn hash_str(&self) -> &str {
        std::str::from_utf8(&self.hash).expect("hex digits")
    }
}

impl std::fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.part <= 1 {
            write!(f, "{}", self.hash_str())
        } else {
            write!(f, "{}.{}", self.hash_str(), self.part)
        }
    }
}

/// The identifier of a series part in file names and the verdict feed: the full SHA-256 of the
/// Series Instance UID in hex (64 digits; its first 8 are the [`SeriesKey`] shown to people),
/// `.PART` appended for parts ≥ 2. Unlike the 8-digit key it does not collide in practice.
pub fn series_id(series_uid: &str, part: u16) -> String {
    use std::fmt::Write;
    let mut id = String::with_capacity(70);
    for b in Sha256::digest(series_uid.as_bytes()) {
        let _ = write!(id, "{b:02x}");
    }
    if part > 1 {
        let _ = write!(id, ".{part}");
    }
    id
}

/// Whether an alert is raised while the series is still arriving or at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The series rule was met while slices still arrive.
    Early,
    /// The series is complete (`series.quiet_seconds` of silence).
    Final,
}

/// What went wrong, on the wire as the upper-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// The model bundle cannot be loaded (missing, wrong hash, bad manifest): nothing is scored.
    Model,
    /// The engine cannot start, or failed to score.
    Engine,
    /// Free disk space under the watermark, or an output folder not writable.
    Disk,
    /// The serial port is unavailable (reported on the LEDs and in the log).
    Serial,
    /// An alert sink's queue overflowed: some events were dropped.
    Queue,
    /// The drop folder cannot be watched or read.
    Watch,
    /// Results cannot be sent to the PACS (`[export]`): unreachable or refusing; they wait.
    Export,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 7] = [FaultKind::Model, FaultKind::Engine, FaultKind::Disk, FaultKind::Serial, FaultKind::Queue, FaultKind::Watch, FaultKind::Export];

    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Model => "MODEL",
            FaultKind::Engine => "ENGINE",
            FaultKind::Disk => "DISK",
            FaultKind::Serial => "SERIAL",
            FaultKind::Queue => "QUEUE",
            FaultKind::Watch => "WATCH",
            FaultKind::Export => "EXPORT",
        }
    }
}

/// Why a file was quarantined, in one word for the serial line (the full reason is in the
/// file's `.reason` and the log; file names are not sent: they may carry patient data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectKind {
    /// The file could not be read from disk.
    Read,
    /// Read, but not an acceptable image (not DICOM/NIfTI, no pixels, wrong modality, corrupt,
    /// over a size cap, an encoding not supported).
    Content,
    /// Slices of several series in one file.
    Mixed,
}

impl RejectKind {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            RejectKind::Read => "READ",
            RejectKind::Content => "CONTENT",
            RejectKind::Mixed => "MIXED",
        }
    }
}

/// What a CLEAR message clears.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleared {
    /// The latched alert, acknowledged by a person (`ctsentry ack`).
    Ack,
    /// A fault that went away.
    Fault(FaultKind),
}

/// The box's overall health, as HEARTBEAT reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Scoring normally.
    Ok,
    /// Scoring, but below full capability (e.g. on the CPU because the GPU is unavailable).
    Degraded,
    /// At least one fault is active.
    Fault,
}

/// An alert event. Plain data, `Copy`, no heap: formatting a message allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Event {
    /// The daemon started and can score.
    Ready {
        /// The series whose alert is still latched from before the start (not acknowledged).
        latched: Option<SeriesKey>,
    },
    /// Periodic sign of life.
    Heartbeat {
        /// Overall health.
        health: Health,
        /// The series whose alert is latched (not yet acknowledged).
        latched: Option<SeriesKey>,
    },
    /// Work started or stopped (green LED blinks while scoring; not sent on the serial line).
    Scoring {
        /// Files are being scored.
        busy: bool,
    },
    /// A series met the positive rule.
    Alert {
        /// The series.
        key: SeriesKey,
        /// Positive slices so far.
        positives: u32,
        /// Slices so far.
        slices: u32,
        /// Largest probability so far.
        max_prob: f32,
        /// Early or final.
        stage: Stage,
    },
    /// A complete series did not meet the positive rule (final only).
    Negative {
        /// The series.
        key: SeriesKey,
        /// Positive slices.
        positives: u32,
        /// Slices.
        slices: u32,
        /// Largest probability.
        max_prob: f32,
    },
    /// A fault began.
    Fault {
        /// Which.
        kind: FaultKind,
    },
    /// A fault ended or the latched alert was acknowledged.
    Clear {
        /// What.
        what: Cleared,
    },
    /// Running below full capability (amber LED; HEARTBEAT says DEGRADED).
    Degraded {
        /// Degraded (true) or back to full capability (false).
        on: bool,
    },
    /// The recent series departed from the drift reference (on), or came back (off): amber LED,
    /// `DEGRADED,DRIFT` / `CLEAR,DRIFT` on the serial line, HEARTBEAT says DEGRADED meanwhile.
    /// Alerts are raised exactly as without it.
    Drift {
        /// Drifting (true) or back within the reference (false).
        on: bool,
    },
    /// Orderly shutdown (SIGTERM): the daemon finishes the files in flight and exits.
    Stopping,
    /// A file was quarantined (kept in quarantine/ with a `.reason`), for this kind of reason.
    Reject {
        /// Why, in one word.
        why: RejectKind,
    },
}

/// A destination of events. `handle` runs on the sink's own thread and may take its time; the
/// pipeline never waits for it.
pub trait AlertSink: Send + 'static {
    /// A short name for logs (`serial`, `led`, `log`).
    fn name(&self) -> &'static str;
    /// Handles one event.
    fn handle(&mut self, event: &Event);
    /// Called about every 100 ms with no event (timers: blinking, heartbeats, retransmission).
    fn tick(&mut self) {}
    /// Called once when the daemon stops; should flush what it can within a second or two.
    fn shutdown(&mut self) {}
}

/// Events per sink queue before overflow.
pub const SINK_QUEUE: usize = 256;

struct Handle {
    name: &'static str,
    tx: Option<SyncSender<Event>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The fan-out of events to sinks, each on its own thread.
pub struct Alerts {
    sinks: Vec<Handle>,
    dropped: Arc<AtomicU64>,
}

impl Alerts {
    /// Starts one thread per sink.
    pub fn start(sinks: Vec<Box<dyn AlertSink>>) -> Alerts {
        let handles = sinks
            .into_iter()
            .map(|mut sink| {
                let name = sink.name();
                let (tx, rx): (SyncSender<Event>, Receiver<Event>) = sync_channel(SINK_QUEUE);
                let thread = std::thread::Builder::new()
                    .name(format!("alert-{name}"))
                    .spawn(move || loop {
                        match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                            Ok(ev) => sink.handle(&ev),
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => sink.tick(),
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                                sink.shutdown();
                                return;
                            }
                        }
                    })
                    .expect("spawning an alert thread");
                Handle { name, tx: Some(tx), thread: Some(thread) }
            })
            .collect();
        Alerts { sinks: handles, dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Hands `event` to every sink without waiting. Returns false when a sink's queue was full
    /// (the event was dropped there; the caller should raise [`FaultKind::Queue`]).
    pub fn emit(&self, event: Event) -> bool {
        let mut ok = true;
        for h in &self.sinks {
            if let Some(tx) = &h.tx {
                match tx.try_send(event) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => {
                        self.dropped.fetch_add(1, Ordering::Relaxed);
                        log::error!("alert sink {}: queue full, event dropped: {event:?}", h.name);
                        ok = false;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        log::error!("alert sink {} has stopped; event not delivered: {event:?}", h.name);
                        ok = false;
                    }
                }
            }
        }
        ok
    }

    /// Events dropped because a queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Stops every sink after it has handled what is queued.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        for h in &mut self.sinks {
            h.tx.take();
        }
        for h in &mut self.sinks {
            if let Some(t) = h.thread.take() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Alerts {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// The log sink: every event as a log line (target `ctsentry::alert`).
pub struct LogSink;

impl AlertSink for LogSink {
    fn name(&self) -> &'static str {
        "log"
    }

    fn handle(&mut self, event: &Event) {
        match event {
            Event::Alert { key, positives, slices, max_prob, stage } => log::warn!(
                target: "ctsentry::alert",
                "ALERT {stage:?} series {key}: {positives} of {slices} slices positive, max prob {max_prob:.3}"
            ),
            Event::Negative { key, positives, slices, max_prob } => log::info!(
                target: "ctsentry::alert",
                "NEGATIVE series {key}: {positives} of {slices} slices positive, max prob {max_prob:.3}"
            ),
            Event::Fault { kind } => log::error!(target: "ctsentry::alert", "FAULT {}", kind.name()),
            Event::Clear { what } => log::info!(target: "ctsentry::alert", "CLEAR {what:?}"),
            Event::Scoring { .. } | Event::Heartbeat { .. } => log::debug!(target: "ctsentry::alert", "{event:?}"),
            Event::Drift { on: true } => log::warn!(target: "ctsentry::alert", "DEGRADED DRIFT"),
            Event::Drift { on: false } => log::info!(target: "ctsentry::alert", "CLEAR DRIFT"),
            Event::Ready { .. } | Event::Degraded { .. } | Event::Stopping | Event::Reject { .. } => log::info!(target: "ctsentry::alert", "{event:?}"),
        }
    }
}
