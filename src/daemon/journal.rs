//! The journal: an append-only file of JSON lines in `state/journal.jsonl`, each written and
//! `fsync`ed before the action it records is considered done. On start the journal is replayed
//! into a [`State`] (the same [`State::apply`] serves replay and live running, so the two cannot
//! disagree), then compacted: only what is still open, and what was closed in the last 24 hours,
//! is kept.
//!
//! Order of work, and what a crash between two steps leaves (every case resumes):
//! - scoring a file: `Scored` → move to done/ → `Done`. A file with `Scored` but no `Done` is
//!   moved without rescoring; a file without `Scored` is scored again (same result).
//! - an unreadable file: `.reason` written → moved to quarantine/ → `Quarantined`.
//! - an early alert: `Alert` → sinks. A restart never repeats an `Alert` recorded here.
//! - a final verdict: result JSON written (atomically) → `Final` → sinks.
//!
//! A torn last line (power cut while writing) is dropped at replay.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ingest::Geometry;

/// What the journal knows about one scored slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceRec {
    /// Frame (multi-frame DICOM) or slice (NIfTI) within the file.
    pub frame: usize,
    /// SOP Instance UID, as received.
    pub sop: String,
    /// Geometry, for ordering the series at its end.
    pub geometry: Geometry,
    /// Probability.
    pub prob: f32,
    /// Share of the image inside the lungs.
    pub lung_fraction: f32,
    /// Mean HU inside the lungs of a scored slice (drift watching; absent in older journals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_hu: Option<f32>,
}

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Record {
    /// The daemon started.
    Start {
        /// Unix time (s).
        t: f64,
        /// ctsentry version.
        version: String,
        /// Model name and version.
        model: String,
        /// Model sha256.
        sha256: String,
    },
    /// A file was scored (not yet moved).
    Scored {
        /// Unix time (s).
        t: f64,
        /// Path relative to incoming/.
        file: String,
        /// Series Instance UID.
        series: String,
        /// Part of the series.
        part: u16,
        /// Its slices.
        slices: Vec<SliceRec>,
        /// Outputs of this file that could not be written (heat maps), each with the reason.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unwritten: Vec<String>,
    },
    /// A scored file was moved to done/.
    Done {
        /// Unix time (s).
        t: f64,
        /// Path relative to incoming/.
        file: String,
        /// Where it went.
        to: String,
    },
    /// An unreadable file was moved to quarantine/.
    Quarantined {
        /// Unix time (s).
        t: f64,
        /// Path relative to incoming/.
        file: String,
        /// Where it went.
        to: String,
        /// Why.
        reason: String,
    },
    /// An early alert was raised for a series part.
    Alert {
        /// Unix time (s).
        t: f64,
        /// Series Instance UID.
        series: String,
        /// Part.
        part: u16,
        /// Positive slices then.
        positives: usize,
        /// Slices then.
        slices: usize,
        /// Largest probability then.
        max_prob: f64,
    },
    /// A series part got its final verdict.
    Final {
        /// Unix time (s).
        t: f64,
        /// Series Instance UID.
        series: String,
        /// Part.
        part: u16,
        /// `positive` or `negative`.
        verdict: String,
        /// Positive slices.
        positives: usize,
        /// Slices.
        slices: usize,
        /// Largest probability.
        max_prob: f64,
        /// The result file.
        result: String,
    },
    /// A person acknowledged the latched alert.
    Ack {
        /// Unix time (s).
        t: f64,
        /// Where the acknowledgement came from (`ctsentry ack`, button).
        by: String,
    },
    /// These files are about to be read (written before a worker opens them): a file whose
    /// reading is interrupted by the process dying is counted, so one that keeps crashing the
    /// reader is quarantined instead of read again at every restart.
    Attempt {
        /// Unix time (s).
        t: f64,
        /// Paths relative to incoming/.
        files: Vec<String>,
    },
    /// The engine failed on this file; it is no longer being read and will be retried.
    Retry {
        /// Unix time (s).
        t: f64,
        /// Path relative to incoming/.
        file: String,
    },
    /// A result object (`[export]`) was stored by the PACS and left the spool.
    Exported {
        /// Unix time (s).
        t: f64,
        /// The spool file's name (`<series id>.<NNN>.dcm`).
        file: String,
        /// Its SOP Instance UID.
        sop: String,
        /// The PACS's C-STORE status.
        status: u16,
    },
    /// A verdict's results could not be spooled for the PACS (the verdict went on without them).
    ExportSkipped {
        /// Unix time (s).
        t: f64,
        /// Series Instance UID.
        series: String,
        /// Part.
        part: u16,
        /// Why.
        reason: String,
    },
    /// The PACS refused a result object for good; it was set aside in the spool's failed/.
    ExportRefused {
        /// Unix time (s).
        t: f64,
        /// The spool file's name.
        file: String,
        /// Why.
        reason: String,
    },
}

/// A series part still collecting slices.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpenSeries {
    /// Part number (1 unless slices came after a final verdict).
    pub part: u16,
    /// Scored files and their slices, in arrival order.
    pub files: Vec<(String, Vec<SliceRec>)>,
    /// First and last scoring time (unix s).
    pub first_t: f64,
    /// Last scoring time: the series is final after `quiet_seconds` past this.
    pub last_t: f64,
    /// When the early alert was raised, if it was.
    pub alert_t: Option<f64>,
    /// Outputs that could not be written (named in the series result).
    pub unwritten: Vec<String>,
}

impl OpenSeries {
    /// Every slice so far, each instance once, with the file it came from: a SOP instance (and
    /// frame) received again replaces its earlier scoring instead of counting twice. Slices
    /// without a SOP Instance UID (NIfTI) count by file and frame. Arrival order is kept.
    pub fn slices(&self) -> Vec<(&str, &SliceRec)> {
        let mut at: HashMap<(bool, &str, usize), usize> = HashMap::new();
        let mut out: Vec<(&str, &SliceRec)> = Vec::new();
        for (file, recs) in &self.files {
            for r in recs {
                let key = if r.sop.is_empty() { (false, file.as_str(), r.frame) } else { (true, r.sop.as_str(), r.frame) };
                match at.get(&key) {
                    Some(&i) => out[i] = (file.as_str(), r),
                    None => {
                        at.insert(key, out.len());
                        out.push((file.as_str(), r));
                    }
                }
            }
        }
        out
    }

    /// Probabilities of every slice so far (each instance once, see [`OpenSeries::slices`]).
    pub fn probs(&self) -> Vec<f64> {
        self.slices().into_iter().map(|(_, r)| f64::from(r.prob)).collect()
    }
}

/// Everything the journal says is in progress.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct State {
    /// Open series parts by Series Instance UID.
    pub open: BTreeMap<String, OpenSeries>,
    /// Series whose last part is final: UID → (last part, time of its final verdict).
    pub closed: HashMap<String, (u16, f64)>,
    /// Files scored but not yet moved: relative path → series UID.
    pub unmoved: BTreeMap<String, String>,
    /// Files handled since start (done or quarantined): relative path → time.
    pub handled: u64,
    /// The alert latched (not acknowledged), if any: the last series that alerted.
    pub latched: Option<Latched>,
    /// Files whose reading began and never ended (scored, quarantined or handed back for a
    /// retry): path → how many times. Each is a run that stopped while reading the file.
    pub attempts: BTreeMap<String, u32>,
}

/// A latched alert: which series raised it, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Latched {
    /// Series Instance UID.
    pub series: String,
    /// Its part.
    pub part: u16,
    /// When it alerted (unix s).
    pub since: f64,
}

impl Latched {
    /// As `status` shows it.
    pub fn view(&self) -> crate::status::LatchedView {
        crate::status::LatchedView::of(&self.series, self.part, self.since)
    }
}

impl State {
    /// The part a newly scored slice of `series` belongs to.
    pub fn part_for(&self, series: &str) -> u16 {
        match (self.open.get(series), self.closed.get(series)) {
            (Some(o), _) => o.part,
            (None, Some((p, _))) => p + 1,
            (None, None) => 1,
        }
    }

    /// Applies one record.
    pub fn apply(&mut self, r: &Record) {
        match r {
            // The export spool is its own queue: these records are the audit trail.
            Record::Start { .. } | Record::Exported { .. } | Record::ExportRefused { .. } | Record::ExportSkipped { .. } => {}
            Record::Scored { t, file, series, part, slices, unwritten } => {
                let o = self.open.entry(series.clone()).or_insert_with(|| OpenSeries { part: *part, first_t: *t, ..Default::default() });
                o.files.push((file.clone(), slices.clone()));
                o.unwritten.extend(unwritten.iter().cloned());
                self.attempts.remove(file);
                o.last_t = *t;
                self.unmoved.insert(file.clone(), series.clone());
            }
            Record::Done { file, .. } => {
                self.unmoved.remove(file);
                self.handled += 1;
            }
            Record::Quarantined { file, .. } => {
                self.handled += 1;
                self.attempts.remove(file);
            }
            Record::Attempt { files, .. } => {
                for f in files {
                    *self.attempts.entry(f.clone()).or_default() += 1;
                }
            }
            Record::Retry { file, .. } => {
                self.attempts.remove(file);
            }
            Record::Alert { t, series, part, .. } => {
                if let Some(o) = self.open.get_mut(series) {
                    o.alert_t = Some(*t);
                }
                self.latched = Some(Latched { series: series.clone(), part: *part, since: *t });
            }
            Record::Final { t, series, part, .. } => {
                self.open.remove(series);
                self.closed.insert(series.clone(), (*part, *t));
            }
            Record::Ack { .. } => self.latched = None,
        }
    }
}

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
#[error("journal {path}: {source}")]
pub struct JournalError {
    /// The journal file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// The open journal.
pub struct Journal {
    path: PathBuf,
    file: File,
}

/// How long closed series are remembered (to number late parts).
pub const KEEP_CLOSED_SECONDS: f64 = 24.0 * 3600.0;

pub use crate::durable::now;

impl Journal {
    /// Opens (creating) `state/journal.jsonl`, replays it, compacts it, and returns it with the
    /// state it describes and the records kept.
    pub fn open(state_dir: &Path) -> Result<(Journal, State), JournalError> {
        let path = crate::durable::StateDir::new(state_dir).journal();
        let err = |source| JournalError { path: path.clone(), source };
        std::fs::create_dir_all(state_dir).map_err(err)?;
        let records = Self::read(&path).map_err(err)?;
        let mut state = State::default();
        for r in &records {
            state.apply(r);
        }
        // Compact: keep records of open series and unmoved files, the latest alert/ack state,
        // and a Final per recently closed series (for part numbering).
        let cutoff = now() - KEEP_CLOSED_SECONDS;
        // The latch outlives its series: the last alert is kept while it is unacknowledged.
        let last_alert = records.iter().rposition(|r| matches!(r, Record::Alert { .. })).filter(|_| state.latched.is_some());
        // An acknowledgement after the alerts of open series is kept, or they would latch again.
        let last_ack = records.iter().rposition(|r| matches!(r, Record::Ack { .. })).filter(|_| state.latched.is_none());
        // Files of the open series keep their Done records (else they would look unmoved).
        let open_files: std::collections::HashSet<&str> = records
            .iter()
            .filter_map(|r| match r {
                Record::Scored { series, file, .. } if state.open.contains_key(series) => Some(file.as_str()),
                _ => None,
            })
            .collect();
        let keeps = |i: usize, r: &Record| -> bool {
            match r {
                Record::Alert { .. } if Some(i) == last_alert => true,
                Record::Ack { .. } => Some(i) == last_ack,
                Record::Scored { series, file, .. } => state.open.contains_key(series) || state.unmoved.contains_key(file),
                Record::Alert { series, .. } => state.open.contains_key(series),
                Record::Done { file, .. } => open_files.contains(file.as_str()),
                Record::Final { series, part, t, .. } => state.closed.get(series) == Some(&(*part, *t)) && *t >= cutoff,
                Record::Exported { t, .. } | Record::ExportRefused { t, .. } | Record::ExportSkipped { t, .. } => *t >= cutoff,
                _ => false,
            }
        };
        let mut keep: Vec<Record> = records.iter().enumerate().filter(|(i, r)| keeps(*i, r)).map(|(_, r)| r.clone()).collect();
        // Unresolved attempts are rewritten from the state, one record per counted death, so
        // that a replay counts exactly what was counted (older attempts that a retry or a
        // scoring resolved are gone with the records that resolved them).
        let t = now();
        for (file, n) in &state.attempts {
            keep.extend((0..*n).map(|_| Record::Attempt { t, files: vec![file.clone()] }));
        }
        let mut text = String::new();
        for r in &keep {
            text += &serde_json::to_string(r).expect("records serialise");
            text.push('\n');
        }
        let tmp = state_dir.join("journal.jsonl.tmp");
        {
            let mut f = File::create(&tmp).map_err(err)?;
            f.write_all(text.as_bytes()).map_err(err)?;
            f.sync_all().map_err(err)?;
        }
        std::fs::rename(&tmp, &path).map_err(err)?;
        sync_dir(state_dir).map_err(err)?;
        let mut state2 = State::default();
        for line in text.lines() {
            state2.apply(&serde_json::from_str(line).expect("just written"));
        }
        state2.handled = 0;
        let file = OpenOptions::new().append(true).open(&path).map_err(err)?;
        Ok((Journal { path, file }, state2))
    }

    /// Reads every complete record; a torn or corrupt line is logged and skipped.
    pub fn read(path: &Path) -> std::io::Result<Vec<Record>> {
        let f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for (n, line) in BufReader::new(f).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(r) => out.push(r),
                Err(e) => log::warn!("{}:{}: unreadable journal line skipped ({e}); a torn write from a crash", path.display(), n + 1),
            }
        }
        Ok(out)
    }

    /// Appends `r` and makes it durable before returning.
    pub fn append(&mut self, r: &Record) -> Result<(), JournalError> {
        let mut line = serde_json::to_string(r).expect("records serialise");
        line.push('\n');
        let err = |source| JournalError { path: self.path.clone(), source };
        let len = self.file.metadata().map_err(err)?.len();
        let written = self.file.write_all(line.as_bytes()).and_then(|_| self.file.sync_data());
        if written.is_err() {
            // A part of the line may have reached the file: cut it off, so that the next record
            // does not glue onto it (and get lost at replay).
            let _ = self.file.set_len(len);
        }
        written.map_err(err)
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub use crate::durable::sync_dir;

#[cfg(test)]
mod tests {
    use super::*;

    fn scored(file: &str, series: &str, prob: f32) -> Record {
        Record::Scored {
            t: now(),
            file: file.into(),
            series: series.into(),
            part: 1,
            slices: vec![SliceRec { frame: 0, sop: String::new(), geometry: Geometry::default(), prob, lung_fraction: 0.2, lung_hu: None }],
            unwritten: Vec::new(),
        }
    }

    #[test]
    fn replay_resumes_and_compacts_and_survives_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, s) = Journal::open(dir.path()).unwrap();
            assert_eq!(s, State::default());
            j.append(&scored("a/1.dcm", "S1", 0.9)).unwrap();
            j.append(&Record::Done { t: now(), file: "a/1.dcm".into(), to: "x".into() }).unwrap();
            j.append(&scored("a/2.dcm", "S1", 0.8)).unwrap();
            j.append(&Record::Alert { t: now(), series: "S1".into(), part: 1, positives: 2, slices: 2, max_prob: 0.9 }).unwrap();
            j.append(&scored("b/1.dcm", "S2", 0.1)).unwrap();
            j.append(&Record::Done { t: now(), file: "b/1.dcm".into(), to: "y".into() }).unwrap();
            j.append(&Record::Final { t: now(), series: "S2".into(), part: 1, verdict: "negative".into(), positives: 0, slices: 1, max_prob: 0.1, result: "r".into() }).unwrap();
        }
        // A torn write at the end.
        let p = dir.path().join("journal.jsonl");
        let mut text = std::fs::read_to_string(&p).unwrap();
        text += "{\"ev\":\"scored\",\"t\":1";
        std::fs::write(&p, text).unwrap();
        let (_, s) = Journal::open(dir.path()).unwrap();
        assert_eq!(s.open.len(), 1);
        let o = &s.open["S1"];
        assert_eq!((o.files.len(), o.alert_t.is_some()), (2, true));
        assert_eq!(s.unmoved.keys().collect::<Vec<_>>(), vec!["a/2.dcm"]);
        assert_eq!(s.closed["S2"].0, 1);
        assert_eq!(s.part_for("S2"), 2);
        assert_eq!(s.latched.as_ref().map(|l| (l.series.as_str(), l.part)), Some(("S1", 1)));
        // Compaction dropped S2's lines (its Final kept for part numbering) and nothing of S1.
        let lines = std::fs::read_to_string(&p).unwrap().lines().count();
        assert_eq!(lines, 5, "{}", std::fs::read_to_string(&p).unwrap());
        // Re-opening the compacted journal gives the same state.
        let (mut j, s2) = Journal::open(dir.path()).unwrap();
        assert_eq!((s2.open, s2.unmoved, s2.closed.len(), s2.latched), (s.open, s.unmoved, 1, s.latched));
        j.append(&Record::Ack { t: now(), by: "test".into() }).unwrap();
        let (_, s3) = Journal::open(dir.path()).unwrap();
        assert!(s3.latched.is_none());
    }

    #[test]
    fn an_instance_received_twice_counts_once() {
        let rec = |sop: &str, frame: usize, prob: f32| SliceRec { frame, sop: sop.into(), geometry: Geometry::default(), prob, lung_fraction: 0.2, lung_hu: Some(-820.0) };
        let mut s = State::default();
        let scored = |file: &str, slices: Vec<SliceRec>| Record::Scored { t: now(), file: file.into(), series: "S".into(), part: 1, slices, unwritten: Vec::new() };
        s.apply(&scored("a.dcm", vec![rec("1.2.3", 0, 0.9)]));
        s.apply(&scored("b.dcm", vec![rec("1.2.4", 0, 0.1)]));
        // The scanner sends 1.2.3 again (a new file name): it replaces the first scoring.
        s.apply(&scored("a.dup1.dcm", vec![rec("1.2.3", 0, 0.2)]));
        // Two NIfTI slices without UIDs in two files stay two slices each.
        s.apply(&scored("v1.nii", vec![rec("", 0, 0.3), rec("", 1, 0.4)]));
        s.apply(&scored("v2.nii", vec![rec("", 0, 0.5)]));
        let o = &s.open["S"];
        let files: Vec<&str> = o.slices().iter().map(|(f, _)| *f).collect();
        assert_eq!(files, vec!["a.dup1.dcm", "b.dcm", "v1.nii", "v1.nii", "v2.nii"]);
        assert_eq!(o.probs(), vec![0.2f32 as f64, 0.1f32 as f64, 0.3f32 as f64, 0.4f32 as f64, 0.5f32 as f64]);
    }

    #[test]
    fn attempts_count_runs_that_died_reading_a_file_and_survive_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let attempt = |files: &[&str]| Record::Attempt { t: now(), files: files.iter().map(|f| f.to_string()).collect() };
        {
            let (mut j, _) = Journal::open(dir.path()).unwrap();
            j.append(&attempt(&["a.dcm", "b.dcm"])).unwrap();
            j.append(&scored("a.dcm", "S", 0.1)).unwrap();
        }
        // Run 1 died reading b.dcm; compaction keeps only what is unresolved.
        let (mut j, s) = Journal::open(dir.path()).unwrap();
        assert_eq!(s.attempts.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), vec![("b.dcm", 1)]);
        j.append(&attempt(&["b.dcm", "c.dcm"])).unwrap();
        j.append(&Record::Retry { t: now(), file: "c.dcm".into() }).unwrap();
        drop(j);
        let (mut j, s) = Journal::open(dir.path()).unwrap();
        assert_eq!(s.attempts.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), vec![("b.dcm", 2)]);
        j.append(&Record::Quarantined { t: now(), file: "b.dcm".into(), to: "q".into(), reason: "r".into() }).unwrap();
        // c.dcm: handed back once (an engine retry), then read again when the process died:
        // one death, not two, also after another compaction.
        j.append(&attempt(&["c.dcm"])).unwrap();
        j.append(&Record::Retry { t: now(), file: "c.dcm".into() }).unwrap();
        j.append(&attempt(&["c.dcm"])).unwrap();
        drop(j);
        for _ in 0..2 {
            let (_, s) = Journal::open(dir.path()).unwrap();
            assert_eq!(s.attempts.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(), vec![("c.dcm", 1)]);
        }
        let (mut j, _) = Journal::open(dir.path()).unwrap();
        j.append(&scored("c.dcm", "S", 0.2)).unwrap();
        drop(j);
        let (_, s) = Journal::open(dir.path()).unwrap();
        assert!(s.attempts.is_empty());
        let text = std::fs::read_to_string(dir.path().join("journal.jsonl")).unwrap();
        assert!(!text.contains("\"attempt\""), "resolved attempts are compacted away: {text}");
    }
}
