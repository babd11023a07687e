//! Durable files and the wall clock, for every layer: atomic replacement with fsync, directory
//! sync, moves that never overwrite, free space, the state folder's lock and names, unix time.
//! The daemon, the exporter, `status` and `doctor` use these; they depend on nothing above `std`
//! and `libc`.

use std::fs::File;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file, fsync and rename: readers see the old or
/// the new content, never a part; the directory is synced so that the rename survives a power
/// cut.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

/// Replaces `path` atomically (temporary file and rename) without fsync: for snapshots that
/// are rewritten every second and worth nothing after a power cut (the status file). Readers
/// see the old or the new content, never a part.
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Makes a directory's entries (a rename, a new file) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Free space in MiB on the file system holding `path`.
pub fn free_mb(path: &Path) -> Option<f64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (r == 0).then(|| st.f_bavail as f64 * st.f_frsize as f64 / (1024.0 * 1024.0))
}

/// Seconds since the Unix epoch (the journal's and the feed's clock).
pub fn now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Date (`YYYYMMDD`) and time (`HHMMSS`) in UTC of a unix time.
pub fn utc_date_time(t: f64) -> (String, String) {
    let secs = t.floor() as i64;
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}{m:02}{d:02}"), format!("{:02}{:02}{:02}", sod / 3600, sod % 3600 / 60, sod % 60))
}

/// Moves `src` to `dst_root/rel` (creating folders), never overwriting: an existing name gets
/// `.dupN` before its extension. Works across file systems (copy, fsync, rename, remove).
/// Both directories are synced, so the move survives a power cut. Returns where it went.
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
            File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &dst)?;
            std::fs::remove_file(src)?;
        }
        Err(e) => return Err(e),
    }
    sync_dir(parent)?;
    if let Some(p) = src.parent() {
        let _ = sync_dir(p);
    }
    Ok(dst)
}

/// `path`, or the first free `stem.dupN.ext` beside it.
pub fn unique_path(path: &Path) -> PathBuf {
    if std::fs::symlink_metadata(path).is_err() {
        return path.to_path_buf();
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let (stem, ext) = match name.find('.') {
        Some(0) | None => (name.as_str(), ""),
        Some(i) => (&name[..i], &name[i..]),
    };
    (1..).map(|n| path.with_file_name(format!("{stem}.dup{n}{ext}"))).find(|p| std::fs::symlink_metadata(p).is_err()).expect("some free name")
}

/// The export spool's folder in the state folder.
pub const EXPORT_SPOOL: &str = "export";
/// The spool's folder of objects the PACS refused for good.
pub const EXPORT_FAILED: &str = "failed";

/// The daemon's state folder (`paths.state`) and the name of every file in it: the one place
/// those names are written down.
#[derive(Debug, Clone)]
pub struct StateDir(PathBuf);

impl StateDir {
    /// The state folder at `root`.
    pub fn new(root: &Path) -> StateDir {
        StateDir(root.to_path_buf())
    }
    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.0
    }
    /// The journal (`journal.jsonl`).
    pub fn journal(&self) -> PathBuf {
        self.0.join("journal.jsonl")
    }
    /// The lock a running daemon holds (`lock`).
    pub fn lock_file(&self) -> PathBuf {
        self.0.join("lock")
    }
    /// The status snapshot `ctsentry status` reads (`status.json`).
    pub fn status(&self) -> PathBuf {
        self.0.join("status.json")
    }
    /// Drift watching's recent series, kept across restarts (`drift.json`).
    pub fn drift(&self) -> PathBuf {
        self.0.join("drift.json")
    }
    /// An acknowledgement request from `ctsentry ack` (`ack.request`).
    pub fn ack_request(&self) -> PathBuf {
        self.0.join("ack.request")
    }
    /// The export spool (`export/`).
    pub fn export_spool(&self) -> PathBuf {
        self.0.join(EXPORT_SPOOL)
    }
    /// Objects the PACS refused for good (`export/failed/`).
    pub fn export_failed(&self) -> PathBuf {
        self.export_spool().join(EXPORT_FAILED)
    }

    /// Takes the lock (an exclusive `flock`, released when the file is dropped or the process
    /// ends, however it ends); `Ok(None)` when another process holds it.
    pub fn lock(&self) -> std::io::Result<Option<File>> {
        std::fs::create_dir_all(&self.0)?;
        let f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(self.lock_file())?;
        for _ in 0..10 {
            match f.try_lock() {
                Ok(()) => return Ok(Some(f)),
                Err(std::fs::TryLockError::WouldBlock) => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Whether a daemon holds the lock now.
    pub fn is_locked(&self) -> bool {
        let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(self.lock_file()) else { return false };
        matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }

    /// Asks a running daemon to acknowledge the latched alert (`by`: who): it reads and removes
    /// the request within a second.
    pub fn request_ack(&self, by: &str) -> std::io::Result<PathBuf> {
        let p = self.ack_request();
        write_atomic(&p, by.as_bytes())?;
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_never_overwrite_and_the_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.dcm"), dir.path().join("b.dcm"));
        std::fs::write(&a, b"first").unwrap();
        std::fs::write(&b, b"second").unwrap();
        let dst = dir.path().join("done");
        assert_eq!(move_unique(&a, &dst, "x/s.dcm").unwrap(), dst.join("x/s.dcm"));
        assert_eq!(move_unique(&b, &dst, "x/s.dcm").unwrap(), dst.join("x/s.dup1.dcm"));
        assert_eq!(std::fs::read(dst.join("x/s.dcm")).unwrap(), b"first");
        assert!(move_unique(&dst.join("x/s.dcm"), &dst, "../escape").is_err());
        let state = StateDir::new(&dir.path().join("state"));
        assert!(!state.is_locked());
        let held = state.lock().unwrap().expect("free");
        assert!(state.is_locked());
        assert!(state.lock().unwrap().is_none(), "a second lock must be refused");
        drop(held);
        assert!(!state.is_locked());
    }
}
