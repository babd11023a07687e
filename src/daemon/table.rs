//! The files the daemon knows of, one entry and one [`Phase`] per file: waiting to be read, in
//! flight in a worker, or resting until a retry (after an engine failure, a journal record that
//! failed, or a move that failed). Admission, dispatch, the crash limit, engine back-off and what
//! holds a series open are functions of this table alone, tested below; the controller performs
//! what they decide (journal, moves, quarantine).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Engine failures of one file (alone) before it is taken for the culprit, provided other files
/// were scored meanwhile; retries wait 10 s, doubling up to 5 min.
pub const ENGINE_RETRIES: u32 = 5;
const ENGINE_RETRY_FIRST: Duration = Duration::from_secs(10);
const ENGINE_RETRY_MAX: Duration = Duration::from_secs(300);

/// Runs that stopped while reading a file before it is quarantined instead of read again.
pub const CRASH_LIMIT: u32 = 3;

/// Where a file is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Phase {
    /// Detected, not yet given to a worker.
    Waiting,
    /// Given to a worker.
    InFlight,
    /// Not taken again before `until` (when the watcher reports it again after that).
    Resting {
        /// When it may be taken again.
        until: Instant,
        /// Why it rests.
        why: Rest,
    },
}

/// Why a file rests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rest {
    /// The engine failed on it; it holds its series open.
    Engine,
    /// Scored, but its journal record failed: it is scored again and holds its series open.
    Unrecorded,
    /// It could not be moved to done/ or quarantine/ (FAULT DISK while any file is stuck so).
    Unmovable,
}

/// One file.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// Its name relative to the drop folder.
    pub(super) rel: String,
    /// When it was detected; a file still to be scored holds open every series that may wait
    /// for it (a series whose quiet window had not closed by then).
    pub(super) detected: f64,
    /// Where it is.
    pub(super) phase: Phase,
    /// Engine failures so far, and the time of the first.
    pub(super) engine_failures: Option<(u32, f64)>,
    /// Read alone, nothing else in flight: an earlier run died while reading it.
    pub(super) suspect: bool,
    /// A move of it failed and it has not been moved since.
    pub(super) stuck: bool,
}

/// What dispatch decided for a waiting file.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Take {
    /// Give it to a worker (once its attempt is journalled).
    Read(PathBuf, String),
    /// Scored before a crash, not yet moved: move it to done/.
    MoveDone(PathBuf, String),
    /// No longer there (moved away by someone else): forget it.
    Gone(PathBuf),
    /// Runs died reading it this many times: quarantine it.
    Quarantine(PathBuf, String, u32),
}

/// What follows an engine failure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum EngineRetry {
    /// Try it again after this long.
    After(Duration),
    /// It is the file's fault, not the engine's: quarantine it.
    Quarantine,
}

/// The next step after the `n`-th engine failure on a file whose first failure was at `first`,
/// when the engine last scored something at `last_scored`: back off (10 s doubling up to 5 min)
/// or, after [`ENGINE_RETRIES`] failures while other files were scored, blame the file.
pub(super) fn after_engine_failure(n: u32, first: f64, last_scored: f64) -> EngineRetry {
    if n >= ENGINE_RETRIES && last_scored > first {
        return EngineRetry::Quarantine;
    }
    EngineRetry::After(ENGINE_RETRY_FIRST.saturating_mul(1 << n.saturating_sub(1).min(5)).min(ENGINE_RETRY_MAX))
}

/// `file`'s name inside `root`, with `/` separators; `None` unless it is a plain path below it.
pub(super) fn relative_in(file: &Path, root: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).ok()?;
    let parts: Option<Vec<_>> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(p) => Some(p.to_string_lossy()),
            _ => None,
        })
        .collect();
    parts.filter(|p| !p.is_empty()).map(|p| p.join("/"))
}

/// Every file the daemon is handling, by path.
#[derive(Debug, Default)]
pub(super) struct FileTable {
    files: BTreeMap<PathBuf, Entry>,
}

impl FileTable {
    /// The watcher reports `path` (`rel` in the drop folder) as complete: whether it is taken as
    /// a waiting file. A file already waiting or in flight is not taken twice; a resting one
    /// only once its rest is over (an engine or record retry keeps its detection time, so its
    /// series stays held as it was).
    pub(super) fn admit(&mut self, path: &Path, rel: String, detected: f64, now: Instant) -> bool {
        let Some(e) = self.files.get_mut(path) else {
            self.files.insert(path.to_path_buf(), Entry { rel, detected, phase: Phase::Waiting, engine_failures: None, suspect: false, stuck: false });
            return true;
        };
        match e.phase {
            Phase::Waiting | Phase::InFlight => false,
            Phase::Resting { until, .. } if now < until => false,
            Phase::Resting { why, .. } => {
                if why == Rest::Unmovable {
                    e.detected = detected;
                }
                e.phase = Phase::Waiting;
                true
            }
        }
    }

    /// Chooses what to do with waiting files, in path order, while fewer than `capacity` are in
    /// flight (none while `blocked`: the disk is full or the journal cannot be written).
    /// `crashes(rel)`: runs that died reading it; `unmoved(rel)`: scored before a crash but not
    /// moved; `exists(path)`: still there. A suspect (crashes > 0) is read alone: it waits until
    /// nothing is in flight, and then nothing else goes with it; at [`CRASH_LIMIT`] crashes it
    /// is quarantined. Files chosen for reading are marked in flight by [`FileTable::start`],
    /// once their attempt is journalled; the others stay waiting until their outcome is set.
    pub(super) fn dispatch(&mut self, capacity: usize, blocked: bool, crashes: impl Fn(&str) -> u32, unmoved: impl Fn(&str) -> bool, exists: impl Fn(&Path) -> bool) -> Vec<Take> {
        let suspect_busy = self.files.values().any(|e| e.phase == Phase::InFlight && e.suspect);
        if blocked || suspect_busy {
            return Vec::new();
        }
        let busy = self.in_flight();
        let mut reads = 0;
        let mut takes = Vec::new();
        for (path, e) in self.files.iter_mut().filter(|(_, e)| e.phase == Phase::Waiting) {
            // Moves and quarantines do not take a worker's place: only reads count.
            if busy + reads >= capacity {
                break;
            }
            if unmoved(&e.rel) {
                takes.push(Take::MoveDone(path.clone(), e.rel.clone()));
                continue;
            }
            if !exists(path) {
                takes.push(Take::Gone(path.clone()));
                continue;
            }
            let n = crashes(&e.rel);
            if n >= CRASH_LIMIT {
                takes.push(Take::Quarantine(path.clone(), e.rel.clone(), n));
                continue;
            }
            if n > 0 {
                if busy + reads == 0 {
                    e.suspect = true;
                    takes.push(Take::Read(path.clone(), e.rel.clone()));
                    break;
                }
                continue;
            }
            takes.push(Take::Read(path.clone(), e.rel.clone()));
            reads += 1;
        }
        takes
    }

    /// `path` was handed to a worker.
    pub(super) fn start(&mut self, path: &Path) {
        if let Some(e) = self.files.get_mut(path) {
            e.phase = Phase::InFlight;
        }
    }

    /// A worker finished `path`: its entry as it stood (the controller then sets what follows).
    pub(super) fn finished(&mut self, path: &Path) -> Option<Entry> {
        let e = self.files.get_mut(path)?;
        e.suspect = false;
        Some(e.clone())
    }

    /// `path` rests until `until`, for `why`; an engine failure also counts (`engine`: the
    /// failures so far and when the first was). A failed move marks it stuck.
    pub(super) fn rest(&mut self, path: &Path, why: Rest, until: Instant, engine: Option<(u32, f64)>) {
        if let Some(e) = self.files.get_mut(path) {
            e.phase = Phase::Resting { until, why };
            if engine.is_some() {
                e.engine_failures = engine;
            }
            if why == Rest::Unmovable {
                e.stuck = true;
            }
        }
    }

    /// `path` is scored and recorded (now only to be moved): engine failures are forgotten.
    pub(super) fn scored(&mut self, path: &Path) {
        if let Some(e) = self.files.get_mut(path) {
            e.engine_failures = None;
        }
    }

    /// `path` left the drop folder (moved, quarantined, or gone): forgotten. True when it was
    /// the last stuck file, so that FAULT DISK's move cause ends.
    pub(super) fn remove(&mut self, path: &Path) -> bool {
        let was_stuck = self.files.remove(path).is_some_and(|e| e.stuck);
        was_stuck && !self.files.values().any(|e| e.stuck)
    }

    /// Files that rest (stuck, or waiting for a retry) although they are no longer there.
    pub(super) fn vanished(&self, exists: impl Fn(&Path) -> bool) -> Vec<PathBuf> {
        self.files.iter().filter(|(p, e)| matches!(e.phase, Phase::Resting { .. }) && !exists(p)).map(|(p, _)| p.clone()).collect()
    }

    /// Whether `path` is waiting or in flight.
    pub(super) fn is_active(&self, path: &Path) -> bool {
        self.files.get(path).is_some_and(|e| matches!(e.phase, Phase::Waiting | Phase::InFlight))
    }

    /// Files waiting.
    pub(super) fn waiting(&self) -> usize {
        self.files.values().filter(|e| e.phase == Phase::Waiting).count()
    }

    /// Files in flight.
    pub(super) fn in_flight(&self) -> usize {
        self.files.values().filter(|e| e.phase == Phase::InFlight).count()
    }

    /// The earliest detection time of a file still to be scored (waiting, in flight, or resting
    /// for an engine or record retry): series whose quiet window closed after it wait for it.
    pub(super) fn oldest_unscored(&self) -> f64 {
        self.files.values().filter(|e| !matches!(e.phase, Phase::Resting { why: Rest::Unmovable, .. })).map(|e| e.detected).fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> PathBuf {
        PathBuf::from(format!("/in/{name}"))
    }

    fn table(names: &[&str]) -> FileTable {
        let mut t = FileTable::default();
        for (i, n) in names.iter().enumerate() {
            assert!(t.admit(&p(n), n.to_string(), i as f64, Instant::now()));
        }
        t
    }

    fn reads(takes: &[Take]) -> Vec<String> {
        takes.iter().filter_map(|t| if let Take::Read(_, r) = t { Some(r.clone()) } else { None }).collect()
    }

    #[test]
    fn dispatch_fills_capacity_in_path_order_and_never_takes_a_file_twice() {
        let mut t = table(&["c", "a", "b", "d"]);
        assert!(!t.admit(&p("a"), "a".into(), 9.0, Instant::now()), "already waiting");
        let takes = t.dispatch(3, false, |_| 0, |_| false, |_| true);
        assert_eq!(reads(&takes), ["a", "b", "c"]);
        for r in reads(&takes) {
            t.start(&p(&r));
        }
        assert_eq!((t.waiting(), t.in_flight()), (1, 3));
        assert!(t.dispatch(3, false, |_| 0, |_| false, |_| true).is_empty(), "full");
        assert!(t.dispatch(4, true, |_| 0, |_| false, |_| true).is_empty(), "blocked");
        assert_eq!(reads(&t.dispatch(4, false, |_| 0, |_| false, |_| true)), ["d"]);
        assert!(!t.admit(&p("a"), "a".into(), 9.0, Instant::now()), "in flight");
        assert_eq!(t.oldest_unscored(), 0.0);
    }

    #[test]
    fn a_suspect_is_read_alone_and_quarantined_at_the_crash_limit() {
        let crashes = |r: &str| match r {
            "b" => 1,
            "c" => CRASH_LIMIT,
            _ => 0,
        };
        let mut t = table(&["a", "b", "c", "d"]);
        // With nothing in flight, the first waiting file is normal: the suspect waits for a
        // moment when nothing else is read.
        let takes = t.dispatch(8, false, crashes, |_| false, |_| true);
        assert_eq!(reads(&takes), ["a", "d"]);
        assert!(takes.contains(&Take::Quarantine(p("c"), "c".into(), CRASH_LIMIT)));
        t.start(&p("a"));
        t.start(&p("d"));
        assert!(!t.remove(&p("c")));
        for f in ["a", "d"] {
            t.finished(&p(f));
            t.remove(&p(f));
        }
        let takes = t.dispatch(8, false, crashes, |_| false, |_| true);
        assert_eq!(takes, vec![Take::Read(p("b"), "b".into())]);
        t.start(&p("b"));
        assert!(t.admit(&p("e"), "e".into(), 5.0, Instant::now()));
        assert!(t.dispatch(8, false, crashes, |_| false, |_| true).is_empty(), "nothing goes with a suspect");
        assert!(!t.finished(&p("b")).unwrap().suspect);
    }

    #[test]
    fn unmoved_and_vanished_files_are_moved_or_forgotten_without_a_worker() {
        let mut t = table(&["a", "b", "c"]);
        let takes = t.dispatch(1, false, |_| 0, |r| r == "a", |f| f != p("b"));
        assert_eq!(takes, vec![Take::MoveDone(p("a"), "a".into()), Take::Gone(p("b")), Take::Read(p("c"), "c".into())]);
    }

    #[test]
    fn a_resting_file_comes_back_after_its_rest_and_still_holds_its_series() {
        let mut t = table(&["a", "b"]);
        for f in ["a", "b"] {
            t.start(&p(f));
            t.finished(&p(f));
        }
        let later = Instant::now() + Duration::from_secs(10);
        t.rest(&p("a"), Rest::Engine, later, Some((1, 100.0)));
        t.rest(&p("b"), Rest::Unmovable, later, None);
        assert_eq!(t.oldest_unscored(), 0.0, "the engine retry holds its series from its first detection");
        assert!(!t.admit(&p("a"), "a".into(), 50.0, Instant::now()), "resting");
        assert!(t.admit(&p("a"), "a".into(), 50.0, later));
        assert_eq!(t.finished(&p("a")).unwrap().engine_failures, Some((1, 100.0)));
        assert_eq!(t.finished(&p("a")).unwrap().detected, 0.0);
        t.scored(&p("a"));
        assert!(!t.remove(&p("a")), "a was not stuck");
        assert_eq!(t.oldest_unscored(), f64::INFINITY, "a stuck file is scored: it holds nothing");
        assert_eq!(t.vanished(|_| false), vec![p("b")]);
        assert!(t.remove(&p("b")), "the last stuck file");
    }

    #[test]
    fn engine_retries_back_off_then_blame_the_file_only_when_others_were_scored() {
        assert_eq!(after_engine_failure(1, 10.0, 0.0), EngineRetry::After(Duration::from_secs(10)));
        assert_eq!(after_engine_failure(3, 10.0, 0.0), EngineRetry::After(Duration::from_secs(40)));
        assert_eq!(after_engine_failure(9, 10.0, 5.0), EngineRetry::After(ENGINE_RETRY_MAX), "nothing scored since: the engine's fault");
        assert_eq!(after_engine_failure(ENGINE_RETRIES, 10.0, 11.0), EngineRetry::Quarantine);
        assert_eq!(after_engine_failure(ENGINE_RETRIES - 1, 10.0, 11.0), EngineRetry::After(Duration::from_secs(80)));
    }

    #[test]
    fn relative_names_are_plain_paths_below_the_root() {
        assert_eq!(relative_in(Path::new("/in/a/b.dcm"), Path::new("/in")).as_deref(), Some("a/b.dcm"));
        assert_eq!(relative_in(Path::new("/in"), Path::new("/in")), None);
        assert_eq!(relative_in(Path::new("/elsewhere/b.dcm"), Path::new("/in")), None);
    }
}
