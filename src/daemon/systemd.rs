//! systemd notifications (`Type=notify`): READY, STATUS, WATCHDOG, STOPPING over the datagram
//! socket named by `$NOTIFY_SOCKET`; nothing at all when it is unset (run from a terminal).

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Sends notifications to systemd, if it asked for them.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::path::PathBuf)>,
    watchdog: Option<Duration>,
    last: std::cell::Cell<Instant>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET` and `$WATCHDOG_USEC`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|p| {
            let p = std::path::PathBuf::from(p);
            // Abstract sockets (`@name`) are not supported by std's path API: skip them.
            if p.to_string_lossy().starts_with('@') {
                log::warn!("NOTIFY_SOCKET is an abstract socket; systemd notifications are off");
                return None;
            }
            UnixDatagram::unbound().ok().map(|s| (s, p))
        });
        let watchdog = std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse::<u64>().ok()).map(|us| Duration::from_micros(us / 2));
        Notifier { socket, watchdog, last: std::cell::Cell::new(Instant::now()) }
    }

    /// Sends `msg` (e.g. `READY=1`).
    pub fn send(&self, msg: &str) {
        if let Some((s, p)) = &self.socket {
            if let Err(e) = s.send_to(msg.as_bytes(), p) {
                log::warn!("systemd notify: {e}");
            }
        }
    }

    /// Pets the watchdog at half its period (call often).
    pub fn watchdog(&self) {
        if let Some(every) = self.watchdog {
            if self.last.get().elapsed() >= every {
                self.last.set(Instant::now());
                self.send("WATCHDOG=1");
            }
        }
    }
}
