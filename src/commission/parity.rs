//! `commission --parity`: the precision the box runs (bf16, int8) against f32 on the site's own
//! studies, measured as the manifest's `[int8.parity]` record is on the development series
//! (`scripts/parity.py`): the largest slice probability difference, the slice decisions that
//! differ (each precision at its own threshold), the series verdicts, and the slice AUC change,
//! judged against the same bound ([`crate::model::PARITY_MAX_PROB_DIFF`],
//! [`crate::model::PARITY_MAX_AUC_DIFF`]). It lets a site check a precision `auto` did not take
//! on its own studies before it names it in the config.

use std::path::Path;

use crate::config::{Precision, Settings};
use crate::decide::Verdict;
use crate::model::Int8Parity;
use crate::score::{Scorer, SeriesScore, SetupError};

/// The f32 scorer to compare `sc` with: the same config at `engine.precision = "f32"`, or `None`
/// when `sc` runs f32 already (nothing to compare).
pub(super) fn reference(settings: &Settings, sc: &Scorer) -> Result<Option<Scorer>, SetupError> {
    if sc.engine.precision() == "f32" {
        return Ok(None);
    }
    let mut f32 = settings.clone();
    f32.precision = Precision::F32;
    Scorer::from_settings(&f32).map(Some)
}

/// One series scored at both precisions.
#[derive(Debug, Clone)]
pub(super) struct SeriesParity {
    /// Largest |prob − prob at f32| over the slices both sent to the engine.
    max_abs_prob_diff: f64,
    /// Slices both sent to the engine.
    compared: usize,
    /// Of those, slices whose decision differs.
    flipped: usize,
    /// `UID: VERDICT here, VERDICT at f32` where the series verdicts differ.
    differs: Option<String>,
    /// The labelled slices' f32 `(probability, label)`, as the run's own AUC counts them.
    pub(super) labelled_f32: Vec<(f64, bool)>,
}

/// Compares `run` with `f32`, the same series scored by the reference; `label` gives a slice
/// file's label where it has one. An error says why the two cannot be compared.
pub(super) fn compare(run: &SeriesScore, f32: &SeriesScore, label: impl Fn(&Path) -> Option<bool>) -> Result<SeriesParity, String> {
    if run.slices.len() != f32.slices.len() || run.slices.iter().zip(&f32.slices).any(|(a, b)| a.file != b.file) {
        return Err("the f32 run assembled the series differently".into());
    }
    let word = |v: Verdict| if v == Verdict::Positive { "positive" } else { "negative" };
    let (here, there) = (run.decision.verdict, f32.decision.verdict);
    let differs = (here != there).then(|| format!("{}: {} here, {} at f32", run.uid, word(here), word(there)));
    let mut p = SeriesParity { max_abs_prob_diff: 0.0, compared: 0, flipped: 0, differs, labelled_f32: Vec::new() };
    for (a, b) in run.slices.iter().zip(&f32.slices) {
        if a.skipped.is_none() && b.skipped.is_none() {
            p.compared += 1;
            p.max_abs_prob_diff = p.max_abs_prob_diff.max(f64::from((a.prob - b.prob).abs()));
            p.flipped += usize::from(a.positive != b.positive);
        }
        if let Some(y) = label(&b.file) {
            p.labelled_f32.push((f64::from(b.prob), y));
        }
    }
    Ok(p)
}

/// The record of `series`: `auc` is the run's slice AUC, `auc_f32` the reference's over the same
/// slices; `vnni` whether this CPU gave OpenVINO VNNI; `what` how it was measured.
/// Figures are rounded up to 4 decimals (as `scripts/parity.py` writes them), never down across
/// the bound.
pub(super) fn record(series: &[SeriesParity], auc: Option<f64>, auc_f32: Option<f64>, vnni: bool, what: String) -> Int8Parity {
    // (less a hair, so that 0.021 stays 0.021 whatever its last binary digit)
    let up = |x: f64| (x * 1e4 - 1e-6).ceil() / 1e4;
    Int8Parity {
        max_abs_prob_diff: up(series.iter().map(|s| s.max_abs_prob_diff).fold(0.0, f64::max)),
        // No AUC (one class only) cannot show the change is within the bound.
        auc_diff: match (auc, auc_f32) {
            (Some(a), Some(b)) => up((a - b).abs()),
            _ => f64::NAN,
        },
        series_verdicts_identical: series.iter().all(|s| s.differs.is_none()),
        slices: series.iter().map(|s| s.compared).sum(),
        series: series.len(),
        vnni,
        decisions_flipped: Some(series.iter().map(|s| s.flipped).sum()),
        measured_with: what,
    }
}

/// The series whose verdict differs between the precisions (`UID: VERDICT here, VERDICT at f32`).
pub(super) fn differing(series: &[SeriesParity]) -> Vec<String> {
    series.iter().filter_map(|s| s.differs.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(max: f64, compared: usize, flipped: usize, same: bool) -> SeriesParity {
        let differs = (!same).then(|| "1.2.3: positive here, negative at f32".to_string());
        SeriesParity { max_abs_prob_diff: max, compared, flipped, differs, labelled_f32: Vec::new() }
    }

    #[test]
    fn the_record_takes_the_largest_difference_and_sums_the_rest() {
        let r = record(&[part(0.004, 10, 0, true), part(0.01912, 20, 2, true)], Some(0.91), Some(0.912), true, "test".into());
        assert_eq!((r.max_abs_prob_diff, r.slices, r.series, r.decisions_flipped), (0.0192, 30, 2, Some(2)));
        assert!((r.auc_diff - 0.002).abs() < 1e-9 && r.series_verdicts_identical);
        assert_eq!(r.outside_bound(), None);
        // Rounded up, never down into the bound.
        assert_eq!(record(&[part(0.020001, 1, 0, true)], Some(0.9), Some(0.9), true, "test".into()).max_abs_prob_diff, 0.0201);
        let r = record(&[part(0.004, 10, 0, true), part(0.021, 20, 2, false)], Some(0.91), None, true, "test".into());
        let why = r.outside_bound().unwrap();
        assert!(why.contains("0.021 > 0.02") && why.contains("AUC change NaN") && why.contains("series verdicts differ"), "{why}");
        assert_eq!(differing(&[part(0.0, 1, 0, true), part(0.0, 1, 0, false)]), ["1.2.3: positive here, negative at f32"]);
    }
}
