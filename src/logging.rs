//! Logging through `log`: to journald when the process runs under systemd (it sets
//! `JOURNAL_STREAM`), otherwise readable lines on stderr. `RUST_LOG` (a level name) overrides the
//! configured level. Chatty third-party decoders are held to warnings.

use log::{Log, Metadata, Record};

/// Targets whose info/debug output is progress chatter, not news for an admin.
const QUIET_TARGETS: &[&str] = &["jpeg2k", "openjp2", "charls", "dicom_"];

struct Filtered(Box<dyn Log>);

impl Log for Filtered {
    fn enabled(&self, m: &Metadata) -> bool {
        (m.level() <= log::Level::Warn || !QUIET_TARGETS.iter().any(|t| m.target().starts_with(t))) && self.0.enabled(m)
    }
    fn log(&self, r: &Record) {
        if self.enabled(r.metadata()) {
            self.0.log(r);
        }
    }
    fn flush(&self) {
        self.0.flush();
    }
}

/// Sets the level; `RUST_LOG` (a level name), when set, wins.
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(std::env::var("RUST_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or(level));
}

/// Installs the logger (once per process) and sets the level.
pub fn init(level: log::LevelFilter) {
    let journal = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| systemd_journal_logger::JournalLog::new().ok())
        .map(|j| Box::new(j.with_syslog_identifier("ctsentry".into())) as Box<dyn Log>);
    let inner = journal.unwrap_or_else(|| Box::new(env_logger::Builder::new().filter_level(log::LevelFilter::Trace).format_timestamp_millis().format_target(false).build()));
    let _ = log::set_boxed_logger(Box::new(Filtered(inner)));
    set_level(level);
}
