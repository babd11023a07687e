//! The scoring workers: each takes up to [`WORKER_BATCH`] waiting files, reads them and scores
//! all their slices in one engine call, isolating panics and engine failures per file.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use super::journal::SliceRec;
use crate::alert::{self, SeriesKey};
use crate::decide::Rule;
use crate::ingest::{self, series, IngestOptions, Slice};
use crate::score::Scorer;

/// Settings a worker reads on each file (changed by a reload).
#[derive(Debug, Clone)]
pub(super) struct Live {
    pub(super) rule: Rule,
    pub(super) heatmaps: bool,
    pub(super) ingest: IngestOptions,
}

#[derive(Clone)]
pub(super) struct Job {
    pub(super) path: PathBuf,
    pub(super) rel: String,
}

pub(super) enum Outcome {
    Scored {
        series: String,
        slices: Vec<SliceRec>,
        heatmaps: usize,
        unwritten: Vec<String>,
    },
    /// The file cannot be read: quarantine it, for this kind of reason, in these words.
    Unreadable(alert::RejectKind, String),
    /// Scoring failed for a reason that is not the file's (engine): keep it, retry later.
    EngineFailed(String),
}

/// Where the heat map of a positive slice goes: `results/<series id>/heatmaps/`, named after the
/// file (`/` as `_`), with `-<frame>` when the file holds several slices.
pub(super) fn heatmap_path(results_dir: &Path, series_uid: &str, rel: &str, frame: usize, multi: bool) -> PathBuf {
    let name = format!("{}{}.png", rel.replace('/', "_"), if multi { format!("-{frame}") } else { String::new() });
    results_dir.join(alert::series_id(series_uid, 1)).join("heatmaps").join(name)
}

pub(super) struct Finished {
    pub(super) path: PathBuf,
    pub(super) rel: String,
    pub(super) outcome: Outcome,
}

/// Files a worker scores together (one engine call for all their slices: engines such as
/// onnxruntime are faster on batches than on single slices).
pub const WORKER_BATCH: usize = 8;

/// One scoring worker: takes batches from `jobs` until it closes, sends each file's outcome to
/// the controller, and times each engine call into `metrics`' inference histogram.
pub(super) fn worker(
    scorer: Arc<Scorer>,
    live: Arc<Mutex<Live>>,
    results_dir: PathBuf,
    metrics: Arc<crate::metrics::Metrics>,
    jobs: Arc<Mutex<Receiver<Job>>>,
    done: Sender<super::control::Control>,
) {
    loop {
        let batch: Vec<Job> = {
            let rx = jobs.lock().expect("job queue");
            let Ok(first) = rx.recv() else { return };
            let mut b = vec![first];
            while b.len() < WORKER_BATCH {
                match rx.try_recv() {
                    Ok(j) => b.push(j),
                    Err(_) => break,
                }
            }
            b
        };
        let live = live.lock().expect("live settings").clone();
        for (job, outcome) in score_isolated(&scorer, &live, &results_dir, &metrics.inference, batch) {
            if done.send(super::control::Control::Done(Finished { path: job.path, rel: job.rel, outcome })).is_err() {
                return;
            }
        }
    }
}

/// Scores a batch so that one file cannot take its batch-mates down: when the batch panics (a
/// bug, or a crash in third-party code outside the decoder guard) or its engine call fails, its
/// files are scored again one at a time. A file that panics on its own is quarantined as an
/// internal error; one whose engine call fails on its own is reported as such (the controller
/// retries it with back-off and quarantines it if the engine keeps working for other files).
fn score_isolated(scorer: &Scorer, live: &Live, results_dir: &Path, inference: &crate::metrics::Histogram, batch: Vec<Job>) -> Vec<(Job, Outcome)> {
    let run = |jobs: Vec<Job>| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| score_files(scorer, live, results_dir, inference, jobs)));
    let mut out = Vec::new();
    let again: Vec<Job> = if batch.len() == 1 {
        batch
    } else {
        match run(batch.clone()) {
            Ok(results) => {
                let (failed, ok): (Vec<_>, Vec<_>) = results.into_iter().partition(|(_, o)| matches!(o, Outcome::EngineFailed(_)));
                out.extend(ok);
                if failed.len() > 1 {
                    log::warn!("the engine failed on a batch of {} files; scoring them one at a time", failed.len());
                } else {
                    out.extend(failed);
                    return out;
                }
                failed.into_iter().map(|(j, _)| j).collect()
            }
            Err(_) => {
                log::error!("internal error while scoring a batch of {} files; scoring them one at a time", batch.len());
                batch
            }
        }
    };
    for job in again {
        match run(vec![job.clone()]) {
            Ok(results) => out.extend(results),
            Err(payload) => {
                let msg = crate::failpoint::panic_message(payload.as_ref());
                out.push((job, Outcome::Unreadable(alert::RejectKind::Content, format!("internal error while reading or scoring this file ({msg}); kept here for a developer"))));
            }
        }
    }
    out
}

/// Reads one file: its series and slices, or why it is unreadable.
fn read_job(live: &Live, job: &Job) -> Result<(String, Vec<Slice>), (alert::RejectKind, String)> {
    use alert::RejectKind;
    // Failpoints for the tests (debug builds only): a worker panic, or the process dying, on a
    // chosen file.
    let name = job.path.file_name().map(|n| n.to_string_lossy());
    if crate::failpoint::fires("worker-panic", name.as_deref()) {
        panic!("failpoint worker-panic (CTSENTRY_FAILPOINTS)");
    }
    if crate::failpoint::fires("worker-abort", name.as_deref()) {
        std::process::abort();
    }
    let slices = match ingest::read_file(&job.path, &live.ingest) {
        Ok(s) if s.is_empty() => return Err((RejectKind::Content, "no image in the file".into())),
        Ok(s) => s,
        Err(e @ ingest::IngestError::Io { .. }) => return Err((RejectKind::Read, e.to_string())),
        Err(e) => return Err((RejectKind::Content, e.to_string())),
    };
    let uid = series::series_of(&slices[0]);
    if slices.iter().any(|s| series::series_of(s) != uid) {
        return Err((RejectKind::Mixed, "slices of several series in one file".into()));
    }
    Ok((uid, slices))
}

/// Failpoint for the tests (debug builds only): `engine-fail@NAME:TIMES` makes the engine fail
/// on the first TIMES calls that include the file NAME.
fn engine_failpoint<T>(parts: &[(Job, String, T)]) -> Option<crate::score::ScoreError> {
    parts
        .iter()
        .filter_map(|(j, _, _)| j.path.file_name().map(|n| n.to_string_lossy()))
        .any(|n| crate::failpoint::fires("engine-fail", Some(&n)))
        .then(|| crate::score::ScoreError::Backend("failpoint engine-fail (CTSENTRY_FAILPOINTS)".into()))
}

/// Reads and scores a batch of files, all their slices in one engine call.
fn score_files(scorer: &Scorer, live: &Live, results_dir: &Path, inference: &crate::metrics::Histogram, jobs: Vec<Job>) -> Vec<(Job, Outcome)> {
    let mut all = Vec::new();
    let mut parts = Vec::new();
    let mut out = Vec::new();
    for job in jobs {
        match read_job(live, &job) {
            Ok((uid, slices)) => {
                let start = all.len();
                all.extend(slices);
                parts.push((job, uid, start..all.len()));
            }
            Err((kind, why)) => out.push((job, Outcome::Unreadable(kind, why))),
        }
    }
    if parts.is_empty() {
        return out;
    }
    let outs = match engine_failpoint(&parts).map_or_else(|| scorer.score_slices_timed(&all, &|s| inference.observe(s)), Err) {
        Ok(o) => o,
        // One file, and its own content is at fault (inconsistent pixels, or values the engine
        // turns into no probability: the engine works for other files).
        Err(e @ (crate::score::ScoreError::Input(_) | crate::score::ScoreError::Output(_))) if parts.len() == 1 => {
            out.extend(parts.into_iter().map(|(job, _, _)| (job, Outcome::Unreadable(alert::RejectKind::Content, e.to_string()))));
            return out;
        }
        // Several files (which one?) or the backend: [`score_isolated`] retries one at a time.
        Err(e) => {
            let e = e.to_string();
            out.extend(parts.into_iter().map(|(job, _, _)| (job, Outcome::EngineFailed(e.clone()))));
            return out;
        }
    };
    for (job, uid, range) in parts {
        let (slices, outs) = (&all[range.clone()], &outs[range]);
        let mut heatmaps = 0;
        let mut unwritten = Vec::new();
        if live.heatmaps {
            let key = SeriesKey::of(&uid, 1);
            for (s, o) in slices.iter().zip(outs).filter(|(_, o)| live.rule.slice_positive(f64::from(o.prob))) {
                let path = heatmap_path(results_dir, &uid, &job.rel, s.frame, slices.len() > 1);
                if let Some(dir) = path.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                match crate::report::write_slice_heatmap(&path, s, &scorer.params, &o.cam, &key.to_string(), o.prob, live.rule.threshold) {
                    Ok(()) => heatmaps += 1,
                    Err(e) => {
                        log::error!("{}: heat map not written: {e}", path.display());
                        unwritten.push(format!("{}: {e}", path.display()));
                    }
                }
            }
        }
        let recs = slices
            .iter()
            .zip(outs)
            .map(|(s, o)| SliceRec {
                frame: s.frame,
                sop: s.uids.sop.clone(),
                geometry: s.geometry,
                prob: o.prob,
                lung_fraction: o.lung_fraction,
                lung_hu: o.lung_hu.map(|h| h as f32),
            })
            .collect();
        out.push((job, Outcome::Scored { series: uid, slices: recs, heatmaps, unwritten }));
    }
    out
}
