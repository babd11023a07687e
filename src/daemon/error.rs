//! Why the daemon cannot start, or ends so that its supervisor restarts it.

use std::path::{Path, PathBuf};

use super::journal;
use crate::durable::StateDir;

/// Errors that stop the daemon from starting (exit 1, or 2 for configuration), or that end it
/// so that its supervisor restarts it.
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
    /// A thread the daemon cannot run without stopped (a bug): the daemon exits non-zero so
    /// that its supervisor restarts it, and the journal resumes what was in flight.
    #[error("thread {name} stopped unexpectedly ({why}); exiting so that the service restarts (the journal resumes the files in flight)")]
    ThreadDied {
        /// The thread (`score-N`, `dicom-scp`, `metrics`).
        name: String,
        /// How it ended.
        why: String,
    },
    /// A TLS file (`[dicom.tls]`) cannot be used.
    #[error(transparent)]
    Tls(#[from] crate::net::tls::TlsError),
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

pub(super) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Io { path: path.to_path_buf(), source }
}

/// Takes the state folder's lock, or says who holds it.
pub(super) fn lock(state: &Path) -> Result<std::fs::File, DaemonError> {
    let dir = StateDir::new(state);
    match dir.lock() {
        Ok(Some(f)) => Ok(f),
        Ok(None) => Err(DaemonError::Locked(format!("{}: another `ctsentry run` uses this state folder", dir.lock_file().display()))),
        Err(e) => Err(DaemonError::Io { path: dir.lock_file(), source: e }),
    }
}
