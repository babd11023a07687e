//! Retention (`[retention]`): scored inputs in `done/` and series results in `results/` are
//! deleted, oldest first, once older than their configured age, so the disk never fills
//! silently. Age is counted from when a file arrived in its folder (its inode change time: a
//! move into `done/` keeps the scanner's modification time, which may be years old). The
//! verdict feed `results/events.jsonl` and anything whose name starts with a dot (files being
//! written) are never deleted; folders left empty are removed. The drop folder, `quarantine/`
//! and `state/` are never touched.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Files deleted.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Files under `root` older than `days` at time `now` (unix s), oldest first, with their size.
fn expired(root: &Path, days: f64, now: f64) -> Vec<(i64, PathBuf, u64)> {
    let cutoff = now - days * 86_400.0;
    let mut out: Vec<(i64, PathBuf, u64)> = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && e.depth() > 0)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| !(e.depth() == 1 && e.file_name() == crate::daemon::outbox::FEED_FILE))
        .filter_map(|e| e.metadata().ok().map(|m| (m.ctime(), e.into_path(), m.len())))
        .filter(|(t, _, _)| (*t as f64) < cutoff)
        .collect();
    out.sort();
    out
}

/// Deletes what has expired under `root` (`days` = 0: nothing), then the folders under it that
/// became empty. Errors are logged and the pass goes on.
pub fn sweep(root: &Path, days: f64, now: f64) -> Swept {
    let mut swept = Swept::default();
    if days <= 0.0 {
        return swept;
    }
    let mut dirs = std::collections::BTreeSet::new();
    for (_, path, len) in expired(root, days, now) {
        match std::fs::remove_file(&path) {
            Ok(()) => {
                swept.files += 1;
                swept.bytes += len;
                dirs.extend(path.ancestors().skip(1).take_while(|a| *a != root).map(Path::to_path_buf));
            }
            Err(e) => log::warn!("retention: {}: {e}", path.display()),
        }
    }
    // Deepest first; a folder that still holds something stays.
    for d in dirs.iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    swept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_only_what_is_older_than_the_limit_and_never_the_feed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/heatmaps")).unwrap();
        std::fs::write(root.join("a/heatmaps/x.png"), b"12345").unwrap();
        std::fs::write(root.join("a.json"), b"{}").unwrap();
        std::fs::write(root.join(crate::daemon::outbox::FEED_FILE), b"feed").unwrap();
        std::fs::write(root.join(".a.json.tmp"), b"partial").unwrap();
        let now = crate::daemon::journal::now();
        // Nothing is older than a day.
        assert_eq!(sweep(root, 1.0, now), Swept::default());
        // Seen from two days on: everything but the feed and the file being written goes.
        let later = now + 2.0 * 86_400.0;
        assert_eq!(sweep(root, 0.0, later), Swept::default(), "0 keeps forever");
        assert_eq!(sweep(root, 1.0, later), Swept { files: 2, bytes: 7 });
        assert!(!root.join("a").exists(), "emptied folders are removed");
        assert!(root.join(crate::daemon::outbox::FEED_FILE).exists());
        assert!(root.join(".a.json.tmp").exists());
    }
}
