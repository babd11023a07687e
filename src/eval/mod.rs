//! `ctsentry eval`: labelled slices scored exactly as `score` scores them, and the reference
//! work's evaluation: the confusion table, accuracy, loss, AUC ([`table`]), the ROC curve, the
//! threshold for a target sensitivity, and on request the per-slice CSV, the ROC as CSV and PNG,
//! and a heat map of each positive slice.

pub mod table;

use std::path::{Path, PathBuf};

use crate::config::Settings;
use crate::ingest::{self, IngestError};
use crate::output::ModelView;
use crate::prep;
use crate::score::{ScoreError, Scorer, SetupError, SliceScore};
pub use table::{roc, threshold_for_sensitivity, RocPoint, Table};

/// Why an evaluation could not be made.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The labels cannot be read.
    #[error(transparent)]
    Labels(#[from] prep::PrepError),
    /// The model or engine cannot be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A series could not be scored.
    #[error("series {series}: {source}")]
    Score {
        /// Its UID.
        series: String,
        /// Why.
        source: ScoreError,
    },
    /// An output cannot be written.
    #[error("{path}: {source}")]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The labels CSV (`file,covid,…`, files relative to `root`).
    pub labels: &'a Path,
    /// The folder the labels' files are in.
    pub root: &'a Path,
    /// Where to write `scores.csv`, `roc.csv`, `roc.png` and `heatmaps/` (none: nothing written).
    pub out: Option<&'a Path>,
    /// Also find the threshold that reaches this sensitivity.
    pub target_sensitivity: Option<f64>,
}

/// An evaluation's result.
#[derive(Debug)]
pub struct Evaluation {
    /// The table at the rule's threshold.
    pub table: Table,
    /// Labelled slices scored.
    pub slices: usize,
    /// Series evaluated.
    pub series: usize,
    /// Keys of evaluated series that the model was trained on (the manifest's `[training]`).
    pub seen_in_training: Vec<String>,
    /// Labelled files that could not be read.
    pub skipped_files: Vec<IngestError>,
    /// `(target sensitivity, threshold reaching it)` when asked for.
    pub picked: Option<(f64, Option<f64>)>,
    /// The model.
    pub model: ModelView,
    /// The threshold used, and where it came from.
    pub threshold: (f64, String),
}

impl Evaluation {
    /// The `eval --json` object: the table's keys, plus `slices`, `series_in_training`,
    /// `skipped_files`, `model` and, when asked for, `picked_threshold`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.table).expect("the table serialises");
        v["slices"] = self.slices.into();
        v["series_in_training"] = self.seen_in_training.len().into();
        v["skipped_files"] = self.skipped_files.len().into();
        v["model"] = serde_json::to_value(&self.model).expect("the model serialises");
        if let Some((t, p)) = self.picked {
            v["picked_threshold"] = serde_json::json!({"sensitivity": t, "threshold": p});
        }
        v
    }
}

/// Scores the labelled files of `req` with `settings`' model and rule, and writes the outputs
/// asked for.
pub fn run(settings: &Settings, req: &Request<'_>) -> Result<Evaluation, EvalError> {
    let write = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EvalError::Write { path, source }
    };
    let labels = prep::read_labels(req.labels)?;
    let sc = Scorer::from_settings(settings)?;
    let mut names: Vec<&String> = labels.keys().collect();
    names.sort();
    let files: Vec<PathBuf> = names.iter().map(|n| req.root.join(n)).collect();
    let (slices, skipped_files) = ingest::read_files(&files, &settings.ingest);
    let heatmaps = req.out.map(|d| d.join("heatmaps"));
    if let Some(h) = &heatmaps {
        std::fs::create_dir_all(h).map_err(write(h))?;
    }
    let mut rows: Vec<(String, SliceScore, bool)> = Vec::new();
    let mut progress = crate::report::Progress::new("evaluating", slices.len());
    let trained_on = sc.model.manifest.training_series();
    let mut seen_in_training = Vec::new();
    let mut series = 0;
    for ser in ingest::series::assemble(slices) {
        series += 1;
        let key = crate::alert::SeriesKey::of(&ser.uid, 1).to_string();
        if trained_on.contains(&ser.uid) {
            seen_in_training.push(key.clone());
        }
        let r = sc.score(&ser).map_err(|source| EvalError::Score { series: ser.uid.clone(), source })?;
        progress.add(r.slices.len());
        if let Some(h) = &heatmaps {
            // The class activation map over the lung window, for each positive slice.
            for (sl, slice) in r.slices.iter().zip(&ser.slices).filter(|(sl, _)| sl.positive) {
                let png = h.join(format!("{}.png", prep::relative(&sl.file, req.root).replace('/', "_")));
                crate::report::write_slice_heatmap(&png, slice, &sc.params, &sl.cam, &key, sl.prob, sc.rule.threshold).map_err(write(&png))?;
            }
        }
        for sl in r.slices {
            let rel = prep::relative(&sl.file, req.root);
            if let Some(&y) = labels.get(&rel) {
                rows.push((rel, sl, y == 1));
            }
        }
    }
    progress.finish();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let scores: Vec<(f64, bool)> = rows.iter().map(|(_, sl, y)| (f64::from(sl.prob), *y)).collect();
    let table = table::table(&scores, sc.rule.threshold);
    let picked = req.target_sensitivity.map(|t| (t, threshold_for_sensitivity(&scores, t)));
    if let Some(dir) = req.out {
        std::fs::create_dir_all(dir).map_err(write(dir))?;
        let mut csv = String::from("file,slice_index,z,lung_fraction,prob,label,positive\n");
        for (rel, sl, y) in &rows {
            csv += &format!("{},{},{:.6},{:.6},{:.6},{},{}\n", prep::csv_field(rel), sl.slice_index, sl.z, sl.lung_fraction, sl.prob, u8::from(*y), u8::from(sl.positive));
        }
        let p = dir.join("scores.csv");
        std::fs::write(&p, csv).map_err(write(&p))?;
        let curve = roc(&scores);
        let mut rc = String::from("threshold,fpr,tpr\n");
        for pt in &curve {
            rc += &format!("{},{:.6},{:.6}\n", pt.threshold, pt.fpr, pt.tpr);
        }
        let p = dir.join("roc.csv");
        std::fs::write(&p, rc).map_err(write(&p))?;
        let positives = scores.iter().filter(|(_, y)| *y).count();
        let labels = crate::report::RocLabels {
            auc: table.auc,
            operating: table.sensitivity.zip(table.specificity).map(|(sens, spec)| (table.threshold, 1.0 - spec, sens)),
            counts: (positives, scores.len() - positives),
        };
        let p = dir.join("roc.png");
        let points: Vec<(f64, f64)> = curve.iter().map(|pt| (pt.fpr, pt.tpr)).collect();
        crate::report::write_roc_png(&p, &points, &labels).map_err(write(&p))?;
    }
    Ok(Evaluation {
        table,
        slices: scores.len(),
        series,
        seen_in_training,
        skipped_files,
        picked,
        model: ModelView::of(&sc.model.manifest.model),
        threshold: (sc.rule.threshold, sc.rule.threshold_source.clone()),
    })
}
