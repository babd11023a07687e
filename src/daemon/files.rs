//! File operations of the daemon: moves that never overwrite and never leave their root,
//! atomic writes, free space, the state folder's lock, the acknowledgement request.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{io, journal, DaemonError};

/// Moves `src` to `dst_root/rel`, never overwriting: on a name collision `NAME.dupN.EXT` is
/// used. Falls back to copy + fsync + remove across file systems. Returns the destination.
/// `rel` must be a plain relative path (no root, no `..`): the destination is always inside
/// `dst_root`.
pub fn move_unique(src: &Path, dst_root: &Path, rel: &str) -> std::io::Result<PathBuf> {
    let rel_path = Path::new(rel);
    if rel.is_empty() || !rel_path.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{rel:?} is not a plain relative path under {}", dst_root.display())));
    }
    let dst = unique_path(&dst_root.join(rel_path));
    let parent = dst.parent().unwrap_or(dst_root);
    std::fs::create_dir_all(parent)?;
    match std::fs::rename(src, &dst) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let tmp = parent.join(format!(".{}.part", dst.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
            std::fs::copy(src, &tmp)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &dst)?;
            std::fs::remove_file(src)?;
        }
        Err(e) => return Err(e),
    }
    journal::sync_dir(parent)?;
    if let Some(p) = src.parent() {
        let _ = journal::sync_dir(p);
    }
    Ok(dst)
}

/// The path of `file` relative to the drop folder `root`, `/`-separated; `None` when `file` is
/// not inside `root` (the daemon then leaves it alone rather than guess a destination).
pub(super) fn relative_in(file: &Path, root: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let parts: Option<Vec<_>> = rel.components().map(|c| match c {
        std::path::Component::Normal(p) => Some(p.to_string_lossy()),
        _ => None,
    }).collect();
    parts.filter(|p| !p.is_empty()).map(|p| p.join("/"))
}

/// `path`, or `NAME.dupN.EXT` (N = 1, 2, …) when it exists.
pub fn unique_path(path: &Path) -> PathBuf {
    if std::fs::symlink_metadata(path).is_err() {
        return path.to_path_buf();
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let (stem, ext) = match name.find('.') {
        Some(0) | None => (name.as_str(), ""),
        Some(i) => (&name[..i], &name[i..]),
    };
    (1..)
        .map(|n| path.with_file_name(format!("{stem}.dup{n}{ext}")))
        .find(|p| std::fs::symlink_metadata(p).is_err())
        .expect("some free name")
}

pub use crate::durable::{free_mb, write_atomic};

/// The file `ctsentry ack` creates in the state folder.
pub const ACK_FILE: &str = "ack.request";

/// Asks the daemon (running or next to start) to clear the latched alert.
pub fn request_ack(state_dir: &Path, by: &str) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(state_dir)?;
    let p = state_dir.join(ACK_FILE);
    write_atomic(&p, by.as_bytes())?;
    Ok(p)
}

/// Whether a daemon holds `state/lock` now.
pub fn is_running(state_dir: &Path) -> bool {
    let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(state_dir.join("lock")) else { return false };
    // SAFETY: flock on an open descriptor.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0
}

pub(super) fn lock(state_dir: &Path) -> Result<std::fs::File, DaemonError> {
    let p = state_dir.join("lock");
    let f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&p).map_err(io(&p))?;
    // `is_running` (status, ack) holds the lock for an instant: try a few times before
    // concluding that another daemon has it.
    for _ in 0..10 {
        // SAFETY: flock on an open descriptor; the lock lives as long as the file.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(DaemonError::Locked(format!("{}: another `ctsentry run` uses this state folder", p.display())))
}

