//! `ctsentry commission`: a site checks its box on its own labelled studies before go-live (and
//! whenever it likes after). Each study is scored exactly as the daemon scores it — the same
//! ingest, series assembly, preprocessing, engine, precision and series rule, from the same
//! config — and the series-level results are compared with the claims of the model's manifest
//! (`[validation.claims]`, see [`Claims`]) through 95 % intervals ([`stats`]).
//!
//! A series is the labelled files sharing a Series Instance UID; it is positive when any of its
//! files is labelled 1. The run also measures what drift watching needs as its reference (the
//! alert rate, the series' mean slice probability and mean lung HU: [`crate::drift::Reference`])
//! and the operating points a site could choose instead of the shipped threshold; a chosen one is
//! set in the config with its provenance (`[decision] threshold`, `threshold_provenance`).

pub mod html;
mod parity;
pub mod stats;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::Settings;
use crate::decide::{Rule, SliceEvidence, Verdict};
use crate::drift::{Observation, Reference};
use crate::eval::table;
use crate::ingest::{self, IngestError};
use crate::output::ModelView;
use crate::prep;
use crate::score::{Scorer, SetupError};
pub use stats::{wilson, Better, ClaimCheck, Interval};

/// Series a commissioning run should rest on at least, and positive and negative series each:
/// with fewer, the intervals are too wide to tell a box that meets its claims from one that does
/// not (the run says so).
pub const ENOUGH_SERIES: usize = 30;
/// See [`ENOUGH_SERIES`].
pub const ENOUGH_OF_EACH: usize = 10;

/// Why a commissioning run could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CommissionError {
    /// The labels cannot be read.
    #[error(transparent)]
    Labels(#[from] prep::PrepError),
    /// The model or engine cannot be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// Nothing labelled could be read.
    #[error("{0}: none of the labelled files could be read as CT")]
    Empty(PathBuf),
    /// The manifest's claims are malformed.
    #[error("{manifest}: [validation.claims] {reason}")]
    Claims {
        /// The manifest.
        manifest: PathBuf,
        /// What is wrong.
        reason: String,
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

/// What to commission.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The labels CSV (`file,covid,…`, files relative to `root`), as for `eval`.
    pub labels: &'a Path,
    /// The folder the labels' files are in.
    pub root: &'a Path,
    /// Where to write `report.html`, `series.csv` and `reference.toml` (none: nothing written).
    pub out: Option<&'a Path>,
    /// Also score every series at f32 and measure the precision in use against it
    /// ([`Commission::parity`]).
    pub parity: bool,
}

/// One series of the run.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesRow {
    /// Short key (as on the serial line).
    pub series_key: String,
    /// Series Instance UID.
    pub series_uid: String,
    /// The site's label: positive when any of its files is.
    pub label: bool,
    /// The box's verdict under the rule in force.
    pub verdict: Verdict,
    /// Slices.
    pub slices: usize,
    /// Positive slices.
    pub positives: usize,
    /// Largest slice probability.
    pub max_prob: f64,
    /// Millimetres of positive slices (null when spacing is unknown).
    pub positive_extent_mm: Option<f64>,
    /// Positive share of the lung.
    pub positive_share: f64,
    /// Mean probability over the slices sent to the engine (null when none had lung).
    pub mean_prob: Option<f64>,
    /// Mean HU inside the lungs over those slices (null when none).
    pub lung_hu: Option<f64>,
    /// Whether the model's manifest lists this series as trained on.
    pub trained_on: bool,
    /// The rule's inputs per slice, to replay other thresholds.
    #[serde(skip)]
    pub evidence: Vec<SliceEvidence>,
}

/// Series-level results at one threshold (the rule's other conditions unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OperatingPoint {
    /// Slice threshold.
    pub threshold: f64,
    /// Series sensitivity with its interval.
    pub sensitivity: Interval,
    /// Series specificity with its interval.
    pub specificity: Interval,
    /// False alerts per 100 negative series.
    pub false_alerts_per_100: Option<f64>,
}

/// A commissioning run's result.
#[derive(Debug, Clone, Serialize)]
pub struct Commission {
    /// When it ran (UTC, `YYYYMMDDTHHMMSSZ`): the name a site's threshold provenance refers to.
    pub run_id: String,
    /// Series scored.
    pub series: usize,
    /// Series labelled positive.
    pub positive_series: usize,
    /// Series labelled negative.
    pub negative_series: usize,
    /// Series sensitivity (alerting positive series / positive series).
    pub sensitivity: Interval,
    /// Series specificity (quiet negative series / negative series).
    pub specificity: Interval,
    /// False alerts per 100 negative series.
    pub false_alerts_per_100: Interval,
    /// Slice-level AUC over every labelled slice (slices without lung count with probability 0, as in `eval`).
    pub slice_auc: Option<f64>,
    /// Its 95 % interval (Hanley–McNeil).
    pub slice_auc_interval: Interval,
    /// Labelled slices.
    pub slices: usize,
    /// Each claim of the manifest against this run.
    pub claims: Vec<ClaimCheck>,
    /// Where the claims come from (the manifest's `provenance`), or why there are none.
    pub claims_provenance: String,
    /// Every measurable claim within (exit 0), or not (exit 1).
    pub within_claims: bool,
    /// Fewer than [`ENOUGH_SERIES`] series, or fewer than [`ENOUGH_OF_EACH`] positive or negative
    /// ones: "within" then means little (said in the text and report).
    pub few_series: bool,
    /// Claims this run could not measure (e.g. sensitivity without positive series): "within"
    /// does not cover them.
    pub unmeasured: Vec<String>,
    /// The model.
    pub model: ModelView,
    /// The engine that scored.
    pub engine: String,
    /// Its precision.
    pub precision: String,
    /// The slice threshold in force.
    pub threshold: f64,
    /// Where it came from (manifest, or config with its provenance).
    pub threshold_source: String,
    /// The series rule in words.
    pub series_rule: String,
    /// Series the model was trained on (their results are not evidence).
    pub series_in_training: usize,
    /// Labelled files that could not be read, with the reason.
    pub skipped_files: Vec<String>,
    /// Series that could not be scored (`UID: reason`); the others are reported.
    pub failed_series: Vec<String>,
    /// Series-level results at other thresholds, lowest first.
    pub operating_points: Vec<OperatingPoint>,
    /// The drift reference this run measured (all series), when it could.
    pub reference: Option<Reference>,
    /// One row per series, in UID order.
    pub rows: Vec<SeriesRow>,
    /// Every labelled slice's `(probability, label)`, for the ROC.
    #[serde(skip)]
    pub slice_scores: Vec<(f64, bool)>,
    /// With `--parity`: the precision in use against f32 on these studies, measured and bounded
    /// as the manifest's `[int8.parity]` record (`null`: not asked, or nothing to compare, with
    /// `parity_note` saying why).
    pub parity: Option<crate::model::Int8Parity>,
    /// With `--parity`: the series whose verdict differs at f32 (`UID: VERDICT here, VERDICT at f32`).
    pub parity_verdicts_differ: Vec<String>,
    /// With `--parity`: the series that could not be scored at f32 (`UID: reason`); they count in
    /// every other result, not in `parity`.
    pub parity_failed: Vec<String>,
    /// With `--parity`: why nothing was compared, when nothing was.
    pub parity_note: Option<String>,
}

/// The drift reference for `settings`: the site's (`[drift] reference`, a `reference.toml` of
/// `ctsentry commission --out`), else the manifest's `[validation.reference]`; an error names the
/// file and what is wrong, or says that neither exists.
pub fn drift_reference(settings: &Settings, manifest: &crate::model::Manifest, manifest_path: &Path) -> Result<Reference, String> {
    match &settings.drift.reference {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let r: Reference = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
            r.check().map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(r)
        }
        None => {
            let Some(t) = manifest.validation.get("reference") else {
                return Err(format!("{}: no [validation.reference] and no [drift] reference: run `ctsentry commission --out DIR` on this site's studies and set [drift] reference = \"DIR/reference.toml\"", manifest_path.display()));
            };
            let r: Reference = t.clone().try_into().map_err(|e: toml::de::Error| format!("{}: [validation.reference]: {}", manifest_path.display(), e.message()))?;
            r.check().map_err(|e| format!("{}: [validation.reference]: {e}", manifest_path.display()))?;
            Ok(r)
        }
    }
}

/// The claims a manifest makes for series-level commissioning (`[validation.claims]`), as counts
/// so that their intervals are computed here the same way as the site's:
/// ```toml
/// [validation.claims]
/// series_sensitivity = { alerted = 1, series = 1 }
/// series_specificity = { quiet = 7, series = 10 }   # also gives false_alerts_per_100
/// slice_auc = { value = 0.929, positive_slices = 80, negative_slices = 154 }
/// provenance = "what they were measured on"
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    /// Series sensitivity with its interval.
    pub sensitivity: Option<Interval>,
    /// Series specificity with its interval.
    pub specificity: Option<Interval>,
    /// Slice AUC with its interval.
    pub slice_auc: Option<Interval>,
    /// What they were measured on.
    pub provenance: String,
}

impl Claims {
    /// Reads `[validation.claims]` of a manifest's `[validation]` table (None: the manifest makes none).
    pub fn from_validation(v: &toml::Table) -> Result<Option<Claims>, String> {
        let Some(c) = v.get("claims") else { return Ok(None) };
        let c = c.as_table().ok_or("is not a table")?;
        let count = |t: &toml::Table, key: &str, name: &str| -> Result<usize, String> {
            t.get(key).and_then(|v| v.as_integer()).filter(|&n| n >= 0).map(|n| n as usize).ok_or(format!("{name}.{key}: a whole number ≥ 0 is needed"))
        };
        let prop = |name: &str, hit: &str| -> Result<Option<Interval>, String> {
            let Some(t) = c.get(name) else { return Ok(None) };
            let t = t.as_table().ok_or(format!("{name}: a table like {{ {hit} = 9, series = 10 }} is needed"))?;
            let (k, n) = (count(t, hit, name)?, count(t, "series", name)?);
            if k > n || n == 0 {
                return Err(format!("{name}: {hit} = {k} of series = {n}"));
            }
            Ok(Some(wilson(k, n)))
        };
        let slice_auc = match c.get("slice_auc") {
            None => None,
            Some(t) => {
                let t = t.as_table().ok_or("slice_auc: a table { value, positive_slices, negative_slices } is needed")?;
                let a = t.get("value").and_then(|v| v.as_float()).filter(|a| (0.0..=1.0).contains(a)).ok_or("slice_auc.value: a number in [0, 1] is needed")?;
                let (p, n) = (count(t, "positive_slices", "slice_auc")?, count(t, "negative_slices", "slice_auc")?);
                if p == 0 || n == 0 {
                    return Err(format!("slice_auc: positive_slices = {p}, negative_slices = {n}: an AUC needs both"));
                }
                Some(stats::auc_interval(Some(a), p, n))
            }
        };
        Ok(Some(Claims {
            sensitivity: prop("series_sensitivity", "alerted")?,
            specificity: prop("series_specificity", "quiet")?,
            slice_auc,
            provenance: c.get("provenance").and_then(|p| p.as_str()).unwrap_or("not stated").to_string(),
        }))
    }

    /// Each claim against the measured values.
    pub fn check(&self, sens: Interval, spec: Interval, auc: Interval) -> Vec<ClaimCheck> {
        let mut out = Vec::new();
        if let Some(c) = self.sensitivity {
            out.push(ClaimCheck::new("series_sensitivity", c, sens, Better::Higher));
        }
        if let Some(c) = self.specificity {
            out.push(ClaimCheck::new("series_specificity", c, spec, Better::Higher));
            out.push(ClaimCheck::new("false_alerts_per_100", c.complement().scaled(100.0), spec.complement().scaled(100.0), Better::Lower));
        }
        if let Some(c) = self.slice_auc {
            out.push(ClaimCheck::new("slice_auc", c, auc, Better::Higher));
        }
        out
    }
}

/// Series sensitivity and specificity of `rows` under `rule`, replayed from their evidence.
fn series_rates(rows: &[SeriesRow], rule: &Rule) -> (Interval, Interval) {
    let (mut tp, mut pos, mut tn, mut neg) = (0, 0, 0, 0);
    for r in rows {
        let alerted = rule.series(&r.evidence).verdict == Verdict::Positive;
        if r.label {
            pos += 1;
            tp += usize::from(alerted);
        } else {
            neg += 1;
            tn += usize::from(!alerted);
        }
    }
    (wilson(tp, pos), wilson(tn, neg))
}

/// The thresholds shown as operating points: 0.05 to 0.95 by 0.05, and the one in force.
fn operating_points(rows: &[SeriesRow], rule: &Rule) -> Vec<OperatingPoint> {
    let mut ts: Vec<f64> = (1..20).map(|i| f64::from(i) * 0.05).collect();
    ts.push(rule.threshold);
    ts.sort_by(f64::total_cmp);
    ts.dedup_by(|a, b| (*a - *b).abs() < 1e-9);
    ts.into_iter()
        .map(|threshold| {
            let (sensitivity, specificity) = series_rates(rows, &Rule { threshold, ..rule.clone() });
            OperatingPoint { threshold, sensitivity, specificity, false_alerts_per_100: specificity.complement().scaled(100.0).value }
        })
        .collect()
}

/// The run's name: its UTC time, `YYYYMMDDTHHMMSSZ`.
pub fn run_id(unix: f64) -> String {
    let (date, time) = crate::durable::utc_date_time(unix.max(0.0));
    format!("{date}T{time}Z")
}

/// Scores the labelled studies of `req` as the daemon would with `settings`, and compares the
/// series-level results with the manifest's claims. Writes the report when asked.
pub fn run(settings: &Settings, req: &Request<'_>) -> Result<Commission, CommissionError> {
    let labels = prep::read_labels(req.labels)?;
    let sc = Scorer::from_settings(settings)?;
    let (f32, parity_note) = match req.parity.then(|| parity::reference(settings, &sc)) {
        Some(Ok(f)) => (Some(f), None),
        Some(Err(why)) => (None, Some(why)),
        None => (None, None),
    };
    let claims =
        Claims::from_validation(&sc.model.manifest.validation).map_err(|reason| CommissionError::Claims { manifest: crate::model::manifest_path(&sc.model.path), reason })?;
    let mut names: Vec<&String> = labels.keys().collect();
    names.sort();
    // One folder at a time, so that memory holds one folder's images, not the whole set; a
    // series found in several folders is scored again whole once every folder has been read.
    let mut folders: std::collections::BTreeMap<PathBuf, Vec<PathBuf>> = std::collections::BTreeMap::new();
    for n in names {
        let f = req.root.join(n);
        folders.entry(f.parent().map(Path::to_path_buf).unwrap_or_default()).or_default().push(f);
    }
    let scoring = Scoring { sc: &sc, f32: f32.as_ref(), labels: &labels, root: req.root, trained_on: sc.model.manifest.training_series() };
    let mut progress = crate::report::Progress::new("commissioning", labels.len());
    let (mut done, mut skipped, mut failed) = (Vec::<Scored>::new(), Vec::new(), Vec::new());
    let mut files_of: std::collections::HashMap<String, Vec<PathBuf>> = std::collections::HashMap::new();
    let mut split = std::collections::BTreeSet::new();
    for files in folders.values() {
        let (slices, bad) = ingest::read_files(files, &settings.ingest);
        progress.add(files.len());
        skipped.extend(bad.iter().map(IngestError::to_string));
        for ser in ingest::series::assemble(slices) {
            let mine: Vec<PathBuf> = ser.slices.iter().map(|s| s.source.clone()).collect();
            let known = files_of.entry(ser.uid.clone()).or_default();
            if !known.is_empty() {
                split.insert(ser.uid.clone());
            }
            known.extend(mine);
            scoring.score(&ser, &mut done, &mut failed);
        }
    }
    for uid in &split {
        done.retain(|d| &d.row.series_uid != uid);
        let mut files = files_of.remove(uid).unwrap_or_default();
        files.sort();
        files.dedup();
        let (slices, _) = ingest::read_files(&files, &settings.ingest);
        for ser in ingest::series::assemble(slices).into_iter().filter(|s| &s.uid == uid) {
            scoring.score(&ser, &mut done, &mut failed);
        }
    }
    progress.finish();
    if done.is_empty() && failed.is_empty() {
        return Err(CommissionError::Empty(req.labels.to_path_buf()));
    }
    let slice_scores: Vec<(f64, bool)> = done.iter().flat_map(|d| d.slices.iter().copied()).collect();
    let parities: Vec<parity::SeriesParity> = done.iter().filter_map(|d| d.parity.as_ref().and_then(|p| p.as_ref().ok()).cloned()).collect();
    let parity_failed: Vec<String> = done.iter().filter_map(|d| d.parity.as_ref().and_then(|p| p.as_ref().err()).map(|e| format!("{}: {e}", d.row.series_uid))).collect();
    let mut rows: Vec<SeriesRow> = done.into_iter().map(|d| d.row).collect();
    rows.sort_by(|a, b| a.series_uid.cmp(&b.series_uid));
    let (sensitivity, specificity) = series_rates(&rows, &sc.rule);
    let auc = table::auc(&slice_scores);
    let (pos_slices, neg_slices) = (slice_scores.iter().filter(|s| s.1).count(), slice_scores.iter().filter(|s| !s.1).count());
    let auc_interval = stats::auc_interval(auc, pos_slices, neg_slices);
    let (checks, claims_provenance) = match &claims {
        Some(c) => (c.check(sensitivity, specificity, auc_interval), c.provenance.clone()),
        None => (Vec::new(), "the model's manifest states no [validation.claims]: nothing to compare with".to_string()),
    };
    let now = crate::durable::now();
    let id = run_id(now);
    let observations: Vec<Observation> = rows.iter().map(|r| Observation { alerted: r.verdict == Verdict::Positive, mean_prob: r.mean_prob, lung_hu: r.lung_hu }).collect();
    let m = &sc.model.manifest.model;
    let parity_record = f32.as_ref().and_then(|f| {
        let what = format!(
            "ctsentry commission --parity, run {id}: {} {} against {} f32 on {} series of this site's studies",
            sc.engine.name(),
            sc.engine.precision(),
            f.engine.name(),
            parities.len()
        );
        parity::record(&parities, crate::engine::openvino::Cpu::this().vnni, what)
    });
    let parity_note = match (&f32, &parity_record) {
        (Some(_), None) => Some("no series was scored at both precisions".to_string()),
        _ => parity_note,
    };
    let reference = Reference::from_observations(&observations, &format!("commission {id} ({} {})", m.name, m.version)).ok();
    let c = Commission {
        run_id: id,
        series: rows.len(),
        positive_series: rows.iter().filter(|r| r.label).count(),
        negative_series: rows.iter().filter(|r| !r.label).count(),
        sensitivity,
        specificity,
        false_alerts_per_100: specificity.complement().scaled(100.0),
        slice_auc: auc,
        slice_auc_interval: auc_interval,
        slices: slice_scores.len(),
        within_claims: checks.iter().all(|c| c.within != Some(false)),
        few_series: rows.len() < ENOUGH_SERIES || rows.iter().filter(|r| r.label).count() < ENOUGH_OF_EACH || rows.iter().filter(|r| !r.label).count() < ENOUGH_OF_EACH,
        unmeasured: checks.iter().filter(|c| c.within.is_none()).map(|c| c.name.clone()).collect(),
        claims: checks,
        claims_provenance,
        model: ModelView::of(m),
        engine: sc.engine.name().to_string(),
        precision: sc.engine.precision().to_string(),
        threshold: sc.rule.threshold,
        threshold_source: sc.rule.threshold_source.clone(),
        series_rule: sc.rule.describe(),
        series_in_training: rows.iter().filter(|r| r.trained_on).count(),
        skipped_files: skipped,
        failed_series: failed,
        operating_points: operating_points(&rows, &sc.rule),
        reference,
        rows,
        slice_scores,
        parity: parity_record,
        parity_verdicts_differ: parity::differing(&parities),
        parity_failed,
        parity_note,
    };
    if let Some(dir) = req.out {
        write_outputs(&c, dir)?;
    }
    Ok(c)
}

/// One series scored: its row, its labelled slices' `(probability, label)` and, with `--parity`,
/// its comparison with f32.
struct Scored {
    row: SeriesRow,
    slices: Vec<(f64, bool)>,
    /// With `--parity`: its comparison with f32, or why it could not be made.
    parity: Option<Result<parity::SeriesParity, String>>,
}

/// What scoring a series for a commissioning run needs.
struct Scoring<'a> {
    sc: &'a Scorer,
    /// The f32 reference of `--parity`.
    f32: Option<&'a Scorer>,
    labels: &'a std::collections::HashMap<String, u8>,
    root: &'a Path,
    trained_on: std::collections::HashSet<String>,
}

impl Scoring<'_> {
    /// Scores `ser` as the daemon would (and, with `--parity`, at f32); its row goes to `done`,
    /// or why it failed to `failed`.
    fn score(&self, ser: &ingest::series::Series, done: &mut Vec<Scored>, failed: &mut Vec<String>) {
        let r = match self.sc.score(ser) {
            Ok(r) => r,
            Err(e) => {
                failed.push(format!("{}: {e}", ser.uid));
                return;
            }
        };
        let label_of = |f: &Path| self.labels.get(&prep::relative(f, self.root)).map(|&y| y == 1);
        let parity = self.f32.map(|f| {
            let at_f32 = f.score(ser).map_err(|e| e.to_string())?;
            parity::compare(&ser.uid, (&r.slices, r.decision.verdict), (&at_f32.slices, at_f32.decision.verdict), label_of)
        });
        let mut label = false;
        let mut slices = Vec::new();
        for sl in &r.slices {
            if let Some(y) = label_of(&sl.file) {
                label |= y;
                slices.push((f64::from(sl.prob), y));
            }
        }
        let obs = Observation::of(r.decision.verdict == Verdict::Positive, r.slices.iter().filter(|s| s.skipped.is_none()).map(|s| (f64::from(s.prob), s.lung_hu)));
        let row = SeriesRow {
            series_key: crate::alert::SeriesKey::of(&ser.uid, 1).to_string(),
            series_uid: ser.uid.clone(),
            label,
            verdict: r.decision.verdict,
            slices: r.decision.slices,
            positives: r.decision.positives,
            max_prob: r.decision.max_prob,
            positive_extent_mm: r.decision.positive_extent_mm,
            positive_share: r.decision.positive_share,
            mean_prob: obs.mean_prob,
            lung_hu: obs.lung_hu,
            trained_on: self.trained_on.contains(&ser.uid),
            evidence: r.evidence,
        };
        done.push(Scored { row, slices, parity });
    }
}

/// `report.html`, `series.csv` and (when measured) `reference.toml` in `dir`.
fn write_outputs(c: &Commission, dir: &Path) -> Result<(), CommissionError> {
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::create_dir_all(dir).and_then(|_| crate::durable::write_replace(&path, text.as_bytes())).map_err(|source| CommissionError::Write { path, source })
    };
    let mut csv = String::from("series_key,series_uid,label,verdict,slices,positives,max_prob,positive_extent_mm,positive_share,mean_prob,lung_hu,trained_on\n");
    let opt = |v: Option<f64>, digits: usize| v.map(|v| format!("{v:.digits$}")).unwrap_or_default();
    for r in &c.rows {
        csv += &format!(
            "{},{},{},{},{},{},{:.6},{},{:.4},{},{},{}\n",
            r.series_key,
            prep::csv_field(&r.series_uid),
            u8::from(r.label),
            r.verdict.as_str(),
            r.slices,
            r.positives,
            r.max_prob,
            opt(r.positive_extent_mm, 1),
            r.positive_share,
            opt(r.mean_prob, 6),
            opt(r.lung_hu, 1),
            u8::from(r.trained_on)
        );
    }
    write("series.csv", &csv)?;
    write("report.html", &html::report(c))?;
    if let Some(r) = &c.reference {
        write(
            "reference.toml",
            &format!(
                "# Drift reference measured by `ctsentry commission` run {}; [drift] reference names this file.\n{}",
                c.run_id,
                toml::to_string(r).expect("the reference serialises")
            ),
        )?;
    }
    Ok(())
}

impl Commission {
    /// The run's conclusion in words: outside, within (all or only the measurable claims), or
    /// nothing to compare with.
    pub fn verdict_text(&self) -> String {
        if self.claims.is_empty() {
            "NO CLAIMS to compare with: the model's manifest states none".into()
        } else if !self.within_claims {
            "OUTSIDE the manifest's claims".into()
        } else if !self.unmeasured.is_empty() {
            format!("WITHIN the measurable claims; not measured here: {}", self.unmeasured.join(", "))
        } else {
            "WITHIN the manifest's claims".into()
        }
    }

    /// The result as text for a person.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let ci = |i: &Interval, d: usize| match (i.value, i.low, i.high) {
            (Some(v), Some(l), Some(h)) => format!("{v:.d$} (95 % CI {l:.d$}–{h:.d$})"),
            _ => "n/a".into(),
        };
        let pct = |i: &Interval| ci(i, 3);
        let mut t = String::new();
        let _ = writeln!(
            t,
            "commission run {}: {} series ({} positive, {} negative), {} labelled slices",
            self.run_id, self.series, self.positive_series, self.negative_series, self.slices
        );
        let _ = writeln!(
            t,
            "model {} {}, engine {} {}, threshold {:.4} ({}), series rule {}",
            self.model.name, self.model.version, self.engine, self.precision, self.threshold, self.threshold_source, self.series_rule
        );
        let _ = writeln!(t, "series sensitivity   {}", pct(&self.sensitivity));
        let _ = writeln!(t, "series specificity   {}", pct(&self.specificity));
        let _ = writeln!(t, "false alerts / 100   {}", ci(&self.false_alerts_per_100, 1));
        let _ = writeln!(t, "slice AUC            {}", pct(&self.slice_auc_interval));
        if self.series_in_training > 0 {
            let _ = writeln!(t, "warning: {} series were trained on by this model; they are not evidence", self.series_in_training);
        }
        for c in &self.claims {
            let d = if c.name == "false_alerts_per_100" { 1 } else { 3 };
            let _ = writeln!(
                t,
                "claim {:<22} claimed {:<32} here {:<32} {}",
                c.name,
                ci(&c.claimed, d),
                ci(&c.measured, d),
                match c.within {
                    Some(true) => "within",
                    Some(false) => "OUTSIDE",
                    None => "not measured here",
                }
            );
        }
        let _ = writeln!(t, "claims from: {}", self.claims_provenance);
        if self.few_series {
            let _ = writeln!(
                t,
                "note: {} series ({} positive, {} negative): intervals this wide tell little either way; commission on {ENOUGH_SERIES} or more, {ENOUGH_OF_EACH} or more of each",
                self.series, self.positive_series, self.negative_series
            );
        }
        for f in &self.failed_series {
            let _ = writeln!(t, "not scored: {f}");
        }
        if let Some(p) = &self.parity {
            let _ = writeln!(t, "precision parity     {} against f32: {}", self.precision, p.status());
            if let Some(n) = p.decisions_flipped {
                let _ = writeln!(t, "                     {n} of {} slice decisions differ (each precision at the threshold it runs with)", p.slices);
            }
            for d in &self.parity_verdicts_differ {
                let _ = writeln!(t, "                     verdict differs: {d}");
            }
        }
        for f in &self.parity_failed {
            let _ = writeln!(t, "precision parity     not compared (the record leaves it out): {f}");
        }
        if let Some(n) = &self.parity_note {
            let _ = writeln!(t, "precision parity     not measured: {n}");
        }
        let _ = writeln!(t, "note: the slice AUC's interval treats slices as independent; slices of one series are not, so it is too narrow");
        let _ = writeln!(t, "{}", self.verdict_text());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_utc_times() {
        assert_eq!(run_id(0.0), "19700101T000000Z");
        assert_eq!(run_id(1_796_515_200.0 + 3661.0), "20261206T010101Z");
        assert_eq!(run_id(951_782_400.0), "20000229T000000Z");
    }

    #[test]
    fn claims_are_read_as_counts_and_refused_when_malformed() {
        let v: toml::Table = toml::from_str("[claims]\nseries_sensitivity = { alerted = 9, series = 10 }\nseries_specificity = { quiet = 18, series = 20 }\nslice_auc = { value = 0.9, positive_slices = 50, negative_slices = 50 }\nprovenance = \"p\"\n").unwrap();
        let c = Claims::from_validation(&v).unwrap().unwrap();
        assert_eq!(c.sensitivity, Some(wilson(9, 10)));
        assert_eq!(c.specificity, Some(wilson(18, 20)));
        assert_eq!(c.provenance, "p");
        let checks = c.check(wilson(5, 10), wilson(20, 20), stats::auc_interval(Some(0.95), 50, 50));
        let names: Vec<_> = checks.iter().map(|c| (c.name.as_str(), c.within)).collect();
        assert_eq!(names, [("series_sensitivity", Some(true)), ("series_specificity", Some(true)), ("false_alerts_per_100", Some(true)), ("slice_auc", Some(true))]);
        let checks = c.check(wilson(1, 10), Interval::NONE, Interval::NONE);
        assert_eq!(checks[0].within, Some(false), "1 of 10 against 9 of 10 is outside");
        assert_eq!(checks[1].within, None);
        for bad in [
            "[claims]\nseries_sensitivity = { alerted = 11, series = 10 }\n",
            "[claims]\nseries_specificity = 0.9\n",
            "[claims]\nslice_auc = { value = 1.5, positive_slices = 1, negative_slices = 1 }\n",
        ] {
            let v: toml::Table = toml::from_str(bad).unwrap();
            assert!(Claims::from_validation(&v).is_err(), "{bad}");
        }
        assert_eq!(Claims::from_validation(&toml::Table::new()).unwrap(), None);
    }

    /// A series of `n` slices of `slab` mm, with `hot` of them at probability 0.9 and the rest 0.1.
    fn row(label: bool, n: usize, hot: usize, slab: f64) -> SeriesRow {
        let evidence: Vec<SliceEvidence> = (0..n).map(|i| SliceEvidence { prob: if i < hot { 0.9 } else { 0.1 }, lung_fraction: 0.2, slab_mm: Some(slab), scored: true }).collect();
        SeriesRow {
            series_key: String::new(),
            series_uid: String::new(),
            label,
            verdict: Verdict::Negative,
            slices: n,
            positives: hot,
            max_prob: 0.9,
            positive_extent_mm: None,
            positive_share: 0.0,
            mean_prob: None,
            lung_hu: None,
            trained_on: false,
            evidence,
        }
    }

    #[test]
    fn operating_points_replay_the_rule_at_each_threshold() {
        let rule = Rule {
            threshold: 0.5,
            threshold_source: "manifest".into(),
            min_positive_slices: 2,
            min_positive_source: "manifest".into(),
            min_positive_extent_mm: 20.0,
            min_positive_share: 0.0,
            physical_source: "manifest".into(),
            min_lung_fraction: 0.02,
        };
        // Two positives (50 mm and 30 mm positive), two negatives (10 mm, 0 mm).
        let rows = [row(true, 40, 10, 5.0), row(true, 20, 10, 3.0), row(false, 40, 2, 5.0), row(false, 40, 0, 5.0)];
        let (sens, spec) = series_rates(&rows, &rule);
        assert_eq!((sens.value, spec.value), (Some(1.0), Some(1.0)));
        let points = operating_points(&rows, &rule);
        assert_eq!(points.len(), 19, "0.05…0.95, the rule's 0.5 among them");
        // Below 0.1 every slice is positive: every series alerts, both negatives falsely.
        let low = points[0];
        assert_eq!((low.sensitivity.value, low.specificity.value, low.false_alerts_per_100), (Some(1.0), Some(0.0), Some(100.0)));
        // At 0.95 no slice is positive.
        let high = points[18];
        assert_eq!((high.sensitivity.value, high.specificity.value), (Some(0.0), Some(1.0)));
    }
}
