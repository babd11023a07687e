//! Watching the drop folder: which files are complete and may be read.
//!
//! - inotify (`notify`, recursive): a file is ready when its writer closes it after writing, or
//!   when it is renamed (moved) into the folder; a folder moved in is scanned at once (its files
//!   are complete). Files that were there at start, or that inotify missed (events overflow, a
//!   folder created and filled before its watch was added), are caught by the periodic scan.
//! - poll (and the periodic scan in both modes): a file is ready once its size and modification
//!   time have stayed the same for `stable_seconds` across scans (network shares show no events).
//! - Temporary names (dot files, `.part`, `.tmp`, `~`) and symbolic links are never taken.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::config::WatchMode;
use crate::ingest::is_temporary_name;

/// Watches one folder tree.
pub struct Watcher {
    root: PathBuf,
    events: Option<(notify::RecommendedWatcher, Receiver<notify::Result<notify::Event>>)>,
    poll: Duration,
    stable: Duration,
    last_scan: Option<Instant>,
    seen: HashMap<PathBuf, (u64, SystemTime, Instant)>,
    /// Set when the watch failed and only scans remain.
    pub degraded: Option<String>,
}

impl Watcher {
    /// Starts watching `root` (which must exist).
    pub fn new(root: &Path, mode: WatchMode, poll_seconds: f64, stable_seconds: f64) -> Watcher {
        let mut degraded = None;
        let events = match mode {
            WatchMode::Poll => None,
            WatchMode::Inotify => {
                let (tx, rx) = channel();
                match notify::recommended_watcher(tx).and_then(|mut w| w.watch(root, RecursiveMode::Recursive).map(|_| w)) {
                    Ok(w) => Some((w, rx)),
                    Err(e) => {
                        let why = format!("inotify unavailable on {} ({e}); scanning every {poll_seconds} s instead", root.display());
                        log::warn!("{why}");
                        degraded = Some(why);
                        None
                    }
                }
            }
        };
        Watcher {
            root: root.to_path_buf(),
            events,
            poll: Duration::from_secs_f64(poll_seconds),
            stable: Duration::from_secs_f64(stable_seconds),
            last_scan: None,
            seen: HashMap::new(),
            degraded,
        }
    }

    /// Changes scan timing (config reload).
    pub fn set_timing(&mut self, poll_seconds: f64, stable_seconds: f64) {
        self.poll = Duration::from_secs_f64(poll_seconds);
        self.stable = Duration::from_secs_f64(stable_seconds);
    }

    /// Files that became ready since the last call (may repeat a file; the caller deduplicates).
    pub fn ready(&mut self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        if let Some((_, rx)) = &self.events {
            let mut dirs = Vec::new();
            while let Ok(ev) = rx.try_recv() {
                let Ok(ev) = ev else { continue };
                let complete = matches!(
                    ev.kind,
                    EventKind::Access(AccessKind::Close(AccessMode::Write))
                        | EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
                        | EventKind::Create(CreateKind::Folder)
                );
                if !complete {
                    continue;
                }
                // For a rename pair (Both), the destination is the last path.
                if let Some(p) = ev.paths.last() {
                    match std::fs::symlink_metadata(p) {
                        Ok(m) if m.is_file() && !is_temporary_name(p) => out.push(p.clone()),
                        Ok(m) if m.is_dir() => dirs.push(p.clone()),
                        _ => {}
                    }
                }
            }
            for d in dirs {
                // A folder moved in holds complete files; a freshly created one is left to the scan.
                out.extend(
                    crate::ingest::collect_files(&[d])
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|f| std::fs::symlink_metadata(f).map(|m| m.modified().map(|t| t.elapsed().unwrap_or_default() >= self.stable).unwrap_or(false)).unwrap_or(false)),
                );
            }
        }
        if self.last_scan.is_none_or(|t| t.elapsed() >= self.poll) {
            let first = self.seen.is_empty() && self.last_scan.is_none();
            self.last_scan = Some(Instant::now());
            out.extend(self.scan(first));
        }
        out
    }

    /// One scan: files whose size and mtime have not changed for `stable`.
    fn scan(&mut self, first: bool) -> Vec<PathBuf> {
        let now = Instant::now();
        let mut ready = Vec::new();
        let mut present = HashMap::new();
        for entry in walkdir::WalkDir::new(&self.root).follow_links(false).into_iter().filter_map(Result::ok) {
            if !entry.file_type().is_file() || is_temporary_name(entry.path()) {
                continue;
            }
            let Ok(m) = entry.metadata() else { continue };
            let key = (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH));
            let since = match self.seen.get(entry.path()) {
                Some(&(len, mtime, since)) if (len, mtime) == key => since,
                _ => now,
            };
            // Stable across scans, or already old at the first scan (present at start).
            let old = first && key.1.elapsed().unwrap_or_default() >= self.stable;
            if now.duration_since(since) >= self.stable || old {
                ready.push(entry.path().to_path_buf());
            }
            present.insert(entry.into_path(), (key.0, key.1, since));
        }
        self.seen = present;
        ready
    }
}
