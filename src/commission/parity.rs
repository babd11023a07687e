//! `commission --parity`: the precision OpenVINO runs on this box (bf16, int8) against its f32 on
//! the site's own studies, measured as the manifest's `[int8.parity]` record is on the
//! development series: the largest slice probability difference and the slice decisions that
//! differ (each precision at the threshold it runs with: its own, or the config's
//! `[decision] threshold` for both where set) over the slices both sent to the engine, the
//! series verdicts, and the slice AUC change over the labelled slices both sent to the engine;
//! judged against the same bound ([`crate::model::PARITY_MAX_PROB_DIFF`],
//! [`crate::model::PARITY_MAX_AUC_DIFF`]). It lets a site check a precision on its own studies
//! before it names it in the config.
//!
//! `scripts/parity.py`, which writes the manifest's record, takes the largest difference over
//! every slice and the AUC over the slices the first precision sent to the engine, and rounds
//! with a plain ceiling; the lung mask, and so which slices are skipped, does not depend on the
//! precision, so the figures agree but for a last digit at most.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Precision, Settings};
use crate::decide::Verdict;
use crate::eval::table;
use crate::model::Int8Parity;
use crate::score::{engine_named, rule_for, Scorer, SliceScore};

/// The f32 reference for `sc`: the same model, preprocessor and config, with OpenVINO at
/// `engine.precision = "f32"` (and f32's threshold); or why there is nothing to compare (an
/// engine other than OpenVINO, f32 already, or no f32 engine to be had).
pub(super) fn reference(settings: &Settings, sc: &Scorer) -> Result<Scorer, String> {
    let (name, precision) = (sc.engine.name(), sc.engine.precision());
    if name != "openvino" {
        return Err(format!("the engine is {name} {precision}: --parity compares OpenVINO's bf16 or int8 with its f32"));
    }
    if precision == "f32" {
        return Err("the engine runs openvino f32: there is no other precision to compare".into());
    }
    let mut f32 = settings.clone();
    f32.precision = Precision::F32;
    let engine = engine_named(&sc.model, &f32, "openvino").map_err(|e| format!("OpenVINO f32 cannot be loaded: {e}"))?;
    let rule = rule_for(&f32, &sc.model.manifest, engine.precision());
    Ok(Scorer { model: sc.model.clone(), params: sc.params.clone(), engine, pre: Arc::clone(&sc.pre), rule })
}

/// One series scored at both precisions.
#[derive(Debug, Clone)]
pub(super) struct SeriesParity {
    /// Largest |prob − prob at f32| over the slices both sent to the engine (NaN if any is).
    max_abs_prob_diff: f64,
    /// Slices both sent to the engine.
    compared: usize,
    /// Of those, slices whose decision differs.
    flipped: usize,
    /// `UID: VERDICT here, VERDICT at f32` where the series verdicts differ.
    differs: Option<String>,
    /// The labelled slices both sent to the engine: `(probability, probability at f32, label)`.
    labelled: Vec<(f64, f64, bool)>,
}

/// The larger of two, NaN when either is.
fn max_nan(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Compares series `uid` as scored (`here`: slices and verdict) with the same series scored by the
/// reference (`f32`); `label` gives a slice file's label where it has one. An error says why the
/// two cannot be compared.
pub(super) fn compare(uid: &str, here: (&[SliceScore], Verdict), f32: (&[SliceScore], Verdict), label: impl Fn(&Path) -> Option<bool>) -> Result<SeriesParity, String> {
    let ((a_slices, a_verdict), (b_slices, b_verdict)) = (here, f32);
    if a_slices.len() != b_slices.len() || a_slices.iter().zip(b_slices).any(|(a, b)| a.file != b.file) {
        return Err("the f32 run assembled the series differently".into());
    }
    let differs = (a_verdict != b_verdict).then(|| format!("{uid}: {} here, {} at f32", a_verdict.as_str(), b_verdict.as_str()));
    let mut p = SeriesParity { max_abs_prob_diff: 0.0, compared: 0, flipped: 0, differs, labelled: Vec::new() };
    for (a, b) in a_slices.iter().zip(b_slices).filter(|(a, b)| a.skipped.is_none() && b.skipped.is_none()) {
        p.compared += 1;
        p.max_abs_prob_diff = max_nan(p.max_abs_prob_diff, f64::from((a.prob - b.prob).abs()));
        p.flipped += usize::from(a.positive != b.positive);
        if let Some(y) = label(&b.file) {
            p.labelled.push((f64::from(a.prob), f64::from(b.prob), y));
        }
    }
    Ok(p)
}

/// The record of `series`, `vnni` whether this CPU gave OpenVINO VNNI, `what` how it was
/// measured. The AUC change is NaN (outside the bound) where the labelled slices are of one
/// class. Figures are rounded up to 4 decimals, never down into the bound. `None` where no series
/// was compared: nothing measured is not a measurement outside the bound.
pub(super) fn record(series: &[SeriesParity], vnni: bool, what: String) -> Option<Int8Parity> {
    if series.is_empty() {
        return None;
    }
    // (less a relative hair, so that 0.021 stays 0.021 whatever its last binary digit)
    let up = |x: f64| (x * 1e4 * (1.0 - 4.0 * f64::EPSILON)).ceil() / 1e4;
    let labelled: Vec<&(f64, f64, bool)> = series.iter().flat_map(|s| &s.labelled).collect();
    let here: Vec<(f64, bool)> = labelled.iter().map(|&&(p, _, y)| (p, y)).collect();
    let at_f32: Vec<(f64, bool)> = labelled.iter().map(|&&(_, p, y)| (p, y)).collect();
    Some(Int8Parity {
        max_abs_prob_diff: up(series.iter().map(|s| s.max_abs_prob_diff).fold(0.0, max_nan)),
        auc_diff: match (table::auc(&here), table::auc(&at_f32)) {
            (Some(a), Some(b)) => up((a - b).abs()),
            _ => f64::NAN,
        },
        series_verdicts_identical: series.iter().all(|s| s.differs.is_none()),
        slices: series.iter().map(|s| s.compared).sum(),
        series: series.len(),
        vnni,
        decisions_flipped: Some(series.iter().map(|s| s.flipped).sum()),
        measured_with: what,
    })
}

/// The series whose verdict differs between the precisions (`UID: VERDICT here, VERDICT at f32`).
pub(super) fn differing(series: &[SeriesParity]) -> Vec<String> {
    series.iter().filter_map(|s| s.differs.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn slice(i: usize, prob: f32, threshold: f32, skipped: bool) -> SliceScore {
        SliceScore {
            file: PathBuf::from(format!("s/{i}.dcm")),
            slice_index: i,
            z: i as f64,
            lung_fraction: if skipped { 0.0 } else { 0.3 },
            prob: if skipped { 0.0 } else { prob },
            positive: !skipped && prob >= threshold,
            skipped: skipped.then(|| "no lung".to_string()),
            cam: Vec::new(),
            lung_hu: None,
        }
    }

    /// Slices are matched by file; only those both sent to the engine count (a slice without lung
    /// at either precision is left out, labelled or not); decisions at each precision's own
    /// threshold; the AUC change over the labelled slices both scored.
    #[test]
    fn compare_counts_the_slices_both_scored_and_the_record_bounds_them() {
        let here = [slice(0, 0.1, 0.19, true), slice(1, 0.30, 0.19, false), slice(2, 0.185, 0.19, false), slice(3, 0.60, 0.19, false), slice(4, 0.05, 0.19, false)];
        let f32 = [slice(0, 0.1, 0.2, true), slice(1, 0.31, 0.2, false), slice(2, 0.205, 0.2, false), slice(3, 0.59, 0.2, false), slice(4, 0.9, 0.2, true)];
        // Labels: 0 (skipped: not counted) positive, 1 negative, 2 positive, 3 positive; 4 unlabelled.
        let label = |f: &Path| match f.to_str().unwrap() {
            "s/0.dcm" | "s/2.dcm" | "s/3.dcm" => Some(true),
            "s/1.dcm" => Some(false),
            _ => None,
        };
        let p = compare("1.2.3", (&here, Verdict::Positive), (&f32, Verdict::Negative), label).unwrap();
        assert_eq!((p.compared, p.flipped), (3, 1), "slices 1-3 both scored; slice 2 flips (0.185 < 0.19, 0.205 >= 0.2)");
        assert!((p.max_abs_prob_diff - 0.02).abs() < 1e-6, "{}", p.max_abs_prob_diff);
        assert_eq!(p.labelled.len(), 3);
        let r = record(std::slice::from_ref(&p), true, "test".into()).unwrap();
        assert_eq!((r.slices, r.series, r.decisions_flipped, r.series_verdicts_identical), (3, 1, Some(1), false));
        assert_eq!(r.auc_diff, 0.0, "the same ranking at both precisions: slice 2 below the negative slice 1, slice 3 above it");
        assert_eq!(differing(&[p]), ["1.2.3: positive here, negative at f32"]);
        let moved = [slice(0, 0.1, 0.2, true), slice(1, 0.31, 0.2, false), slice(2, 0.205, 0.2, false), slice(3, 0.2, 0.2, false), slice(4, 0.9, 0.2, true)];
        assert!(compare("1.2.3", (&here, Verdict::Positive), (&moved[..4], Verdict::Positive), label).is_err(), "different slices");
        let p = compare("1.2.3", (&here, Verdict::Positive), (&moved, Verdict::Positive), label).unwrap();
        let r = record(&[p], true, "test".into()).unwrap();
        assert!(r.auc_diff > 0.3 && r.outside_bound().unwrap().contains("AUC change"), "slice 3 fell below the negative slice 1 at f32: {r:?}");
    }

    fn part(max: f64, compared: usize, flipped: usize, same: bool) -> SeriesParity {
        let differs = (!same).then(|| "1.2.3: positive here, negative at f32".to_string());
        SeriesParity { max_abs_prob_diff: max, compared, flipped, differs, labelled: vec![(0.9, 0.9, true), (0.1, 0.1, false)] }
    }

    #[test]
    fn the_record_takes_the_largest_difference_rounds_it_up_and_sums_the_rest() {
        let r = record(&[part(0.004, 10, 0, true), part(0.01912, 20, 2, true)], true, "test".into()).unwrap();
        assert_eq!((r.max_abs_prob_diff, r.auc_diff, r.slices, r.series, r.decisions_flipped), (0.0192, 0.0, 30, 2, Some(2)));
        assert_eq!(r.outside_bound(), None);
        assert_eq!(record(&[part(0.020001, 1, 0, true)], true, "test".into()).unwrap().max_abs_prob_diff, 0.0201, "rounded up, never down into the bound");
        assert_eq!(record(&[part(0.021, 1, 0, true)], true, "test".into()).unwrap().max_abs_prob_diff, 0.021);
        let r = record(&[part(0.004, 10, 0, true), part(f64::NAN, 20, 2, false)], true, "test".into()).unwrap();
        let why = r.outside_bound().unwrap();
        assert!(why.contains("NaN") && why.contains("series verdicts differ"), "{why}");
        let one_class = SeriesParity { labelled: vec![(0.9, 0.8, true)], ..part(0.001, 1, 0, true) };
        assert!(record(&[one_class], true, "test".into()).unwrap().outside_bound().unwrap().contains("AUC change NaN"));
        assert!(record(&[], true, "test".into()).is_none(), "no series compared: no record, a note");
    }
}
