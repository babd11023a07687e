//! The serial sink: [`protocol`] messages on a serial line, for a tower light,
//! an alarm relay, a PLC or a nurse-call interface.
//!
//! - A bounded queue ([`QUEUE`] messages, `heapless`): when it is full, queued heartbeats give way
//!   first; if only alerts are left the newest event is dropped and a `FAULT,QUEUE` follows once
//!   there is room.
//! - Without ACK mode every message is written once, in order. With ACK mode (`alert.serial.ack`)
//!   the oldest message is repeated, same sequence number, until `$CTACK,<seq>*CS` comes back:
//!   first after `ack_timeout_seconds`, then doubling up to [`MAX_BACKOFF`]. Only then does the
//!   next message go out (stop and wait: order is kept).
//! - The port may vanish (USB unplugged) and reappear (also as a different device behind the
//!   same path, e.g. `/dev/serial/by-id/...`): a write error or a changed device closes it; it is
//!   reopened every second; what was not written (or, in ACK mode, not acknowledged) is sent
//!   after it comes back. [`SerialSink::port_up`] tells the daemon (LED fault `SERIAL`).
//! - Sequence numbers count from 1 at each start (READY is 1): a receiver that sees 1 knows the
//!   box restarted. After a restart an alert may be repeated (with a new sequence number); it is
//!   recognised by its series key and stage.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serialport::{DataBits, Parity, SerialPort, StopBits, TTYPort};

use super::protocol::{self, Line};
use super::{AlertSink, Cleared, Event, FaultKind, Health, SeriesKey};
use crate::config::SerialSettings;

/// Messages the sink holds before it must drop.
pub const QUEUE: usize = 32;
/// Longest wait between repeats in ACK mode.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often a missing port is retried and a present one checked.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

struct Pending {
    seq: u32,
    heartbeat: bool,
    line: Line,
    sent: Option<Instant>,
    wait: Duration,
}

/// The serial alert sink.
pub struct SerialSink {
    cfg: SerialSettings,
    version: heapless::String<48>,
    port: Option<(TTYPort, u64)>,
    next_check: Instant,
    seq: u32,
    queue: heapless::Deque<Pending, QUEUE>,
    overflowed: bool,
    last_heartbeat: Instant,
    input: heapless::Vec<u8, 128>,
    faults: heapless::FnvIndexSet<u8, 8>,
    degraded: bool,
    drift: bool,
    latched: Option<SeriesKey>,
    up: Arc<AtomicBool>,
    down_logged: bool,
}

impl SerialSink {
    /// A sink for `cfg`; `version` goes into READY. The port is opened on first use and reopened
    /// whenever it vanishes: a missing port at start is not an error (it is logged and shown).
    pub fn new(cfg: SerialSettings, version: &str) -> SerialSink {
        let mut v = heapless::String::new();
        for c in version.chars() {
            if v.push(c).is_err() {
                break;
            }
        }
        let now = Instant::now();
        SerialSink {
            cfg,
            version: v,
            port: None,
            next_check: now,
            seq: 0,
            queue: heapless::Deque::new(),
            overflowed: false,
            last_heartbeat: now,
            input: heapless::Vec::new(),
            faults: heapless::FnvIndexSet::new(),
            degraded: false,
            drift: false,
            latched: None,
            up: Arc::new(AtomicBool::new(false)),
            down_logged: false,
        }
    }

    /// True while the port is open; shared with the daemon.
    pub fn port_up(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    /// Opens a port as configured.
    pub fn open(cfg: &SerialSettings) -> Result<TTYPort, serialport::Error> {
        let data_bits = match cfg.data_bits {
            5 => DataBits::Five,
            6 => DataBits::Six,
            7 => DataBits::Seven,
            _ => DataBits::Eight,
        };
        let parity = match cfg.parity {
            'E' => Parity::Even,
            'O' => Parity::Odd,
            _ => Parity::None,
        };
        let stop_bits = if cfg.stop_bits == 2 { StopBits::Two } else { StopBits::One };
        serialport::new(cfg.port.as_str(), cfg.baud).data_bits(data_bits).parity(parity).stop_bits(stop_bits).timeout(Duration::from_millis(200)).open_native()
    }

    fn enqueue(&mut self, event: &Event) {
        let mut line = Line::new();
        let Some(()) = protocol::format(self.seq.wrapping_add(1), event, &self.version, &mut line) else { return };
        let heartbeat = matches!(event, Event::Heartbeat { .. });
        if self.queue.is_full() {
            // Room is made by dropping a queued heartbeat (never the one being waited on).
            let pos = self.queue.iter().skip(1).position(|p| p.heartbeat).map(|i| i + 1);
            match pos {
                Some(i) => {
                    let mut keep: heapless::Deque<Pending, QUEUE> = heapless::Deque::new();
                    for (j, p) in core::mem::take(&mut self.queue).into_iter().enumerate() {
                        if j != i {
                            let _ = keep.push_back(p);
                        }
                    }
                    self.queue = keep;
                }
                None => {
                    if !heartbeat {
                        if !self.overflowed {
                            log::error!("serial {}: queue full ({QUEUE} unsent messages); dropping {event:?}", self.cfg.port);
                        }
                        self.overflowed = true;
                    }
                    return;
                }
            }
        }
        self.seq = self.seq.wrapping_add(1);
        let wait = Duration::from_secs_f64(self.cfg.ack_timeout_seconds);
        let _ = self.queue.push_back(Pending { seq: self.seq, heartbeat, line, sent: None, wait });
    }

    fn track(&mut self, event: &Event) {
        match *event {
            Event::Fault { kind } => {
                let _ = self.faults.insert(kind as u8);
            }
            Event::Clear { what: Cleared::Fault(kind) } => {
                self.faults.remove(&(kind as u8));
            }
            Event::Clear { what: Cleared::Ack } => self.latched = None,
            Event::Alert { key, .. } => self.latched = Some(key),
            Event::Ready { latched: Some(key) } => self.latched = Some(key),
            Event::Degraded { on } => self.degraded = on,
            Event::Drift { on } => self.drift = on,
            _ => {}
        }
    }

    fn health(&self) -> Health {
        if !self.faults.is_empty() {
            Health::Fault
        } else if self.degraded || self.drift {
            Health::Degraded
        } else {
            Health::Ok
        }
    }

    fn drop_port(&mut self, why: &str) {
        if self.port.take().is_some() {
            log::error!("serial {}: {why}; reopening every second, unsent messages kept", self.cfg.port);
        }
        self.up.store(false, Ordering::Relaxed);
        // What was written but not acknowledged is sent again after the port returns.
        if let Some(p) = self.queue.front_mut() {
            p.sent = None;
        }
    }

    fn check_port(&mut self, now: Instant) {
        if now < self.next_check {
            return;
        }
        self.next_check = now + REOPEN_EVERY;
        let rdev = std::fs::metadata(&self.cfg.port).map(|m| m.rdev()).ok();
        match (&self.port, rdev) {
            (Some((_, dev)), Some(r)) if *dev == r => {}
            (Some(_), _) => self.drop_port("port vanished or changed"),
            (None, _) => {}
        }
        if self.port.is_none() {
            match Self::open(&self.cfg) {
                Ok(p) => {
                    log::info!("serial {}: open ({} baud, {}{}{})", self.cfg.port, self.cfg.baud, self.cfg.data_bits, self.cfg.parity, self.cfg.stop_bits);
                    self.port = Some((p, rdev.unwrap_or(0)));
                    self.up.store(true, Ordering::Relaxed);
                    self.down_logged = false;
                    self.input.clear();
                }
                Err(e) => {
                    if !self.down_logged {
                        log::error!("serial {}: cannot open: {e}; retrying every second", self.cfg.port);
                        self.down_logged = true;
                    }
                }
            }
        }
    }

    fn read_acks(&mut self) {
        let Some((port, _)) = self.port.as_mut() else { return };
        let avail = port.bytes_to_read().unwrap_or(0) as usize;
        if avail == 0 {
            return;
        }
        let mut buf = [0u8; 256];
        let n = match port.read(&mut buf[..avail.min(256)]) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => 0,
            Err(e) => {
                self.drop_port(&format!("read failed: {e}"));
                return;
            }
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                if let Some(seq) = std::str::from_utf8(&self.input).ok().and_then(protocol::parse_ack) {
                    if self.queue.front().map(|p| p.seq) == Some(seq) {
                        self.queue.pop_front();
                    }
                }
                self.input.clear();
            } else if self.input.push(b).is_err() {
                self.input.clear(); // noise longer than any ACK
            }
        }
    }

    fn pump(&mut self) {
        let now = Instant::now();
        self.check_port(now);
        if self.overflowed && !self.queue.is_full() {
            self.overflowed = false;
            self.enqueue(&Event::Fault { kind: FaultKind::Queue });
        }
        if self.port.is_none() {
            return;
        }
        if self.cfg.ack {
            self.read_acks();
            let Some(front) = self.queue.front_mut() else { return };
            let due = front.sent.is_none_or(|t| now >= t + front.wait);
            if !due {
                return;
            }
            if front.sent.is_some() {
                log::warn!("serial {}: no ACK for seq {} after {:.1} s; repeating", self.cfg.port, front.seq, front.wait.as_secs_f64());
                front.wait = (front.wait * 2).min(MAX_BACKOFF);
            }
            front.sent = Some(now);
            let line = front.line.clone();
            self.write(&line);
        } else {
            while let Some(front) = self.queue.front() {
                let line = front.line.clone();
                if !self.write(&line) {
                    break;
                }
                self.queue.pop_front();
            }
        }
    }

    fn write(&mut self, line: &Line) -> bool {
        let Some((port, _)) = self.port.as_mut() else { return false };
        match port.write_all(line.as_bytes()).and_then(|_| port.flush()) {
            Ok(()) => true,
            Err(e) => {
                self.drop_port(&format!("write failed: {e}"));
                false
            }
        }
    }

    /// Messages waiting to be written or acknowledged.
    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}

impl AlertSink for SerialSink {
    fn name(&self) -> &'static str {
        "serial"
    }

    fn handle(&mut self, event: &Event) {
        self.track(event);
        self.enqueue(event);
        self.pump();
    }

    fn tick(&mut self) {
        if self.last_heartbeat.elapsed().as_secs_f64() >= self.cfg.heartbeat_seconds {
            self.last_heartbeat = Instant::now();
            let hb = Event::Heartbeat { health: self.health(), latched: self.latched };
            // One heartbeat waiting is enough.
            if !self.queue.iter().any(|p| p.heartbeat) {
                self.enqueue(&hb);
            }
        }
        self.pump();
    }

    fn shutdown(&mut self) {
        let until = Instant::now() + Duration::from_secs(2);
        while !self.queue.is_empty() && Instant::now() < until {
            self.pump();
            std::thread::sleep(Duration::from_millis(20));
        }
        if !self.queue.is_empty() {
            log::warn!("serial {}: {} messages unsent at shutdown", self.cfg.port, self.queue.len());
        }
    }
}
