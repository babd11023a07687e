//! Evaluation metrics of the reference work's table: confusion counts at a threshold,
//! accuracy, loss (mean binary cross-entropy), misclassification rate, AUC, plus sensitivity,
//! specificity, PPV and NPV; the ROC curve; the threshold meeting a target sensitivity.
//!
//! Conventions: a ratio whose denominator is zero is `None` (reported as null / "n/a"), never 0
//! or NaN; AUC is undefined (None) when one class is absent. AUC is the Mann–Whitney statistic:
//! the probability that a random positive scores above a random negative, ties counting half.

use serde::Serialize;

/// Probabilities are clamped to [EPS, 1 − EPS] in the loss (as Keras does), so a confident
/// mistake costs a large but finite loss.
pub const EPS: f64 = 1e-7;

/// The evaluation table (DESIGN.md `eval --json` keys).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Table {
    /// True positives.
    pub tp: usize,
    /// True negatives.
    pub tn: usize,
    /// False positives.
    #[serde(rename = "fp")]
    pub fp: usize,
    /// False negatives.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// (TP + TN) / N.
    pub accuracy: Option<f64>,
    /// Mean binary cross-entropy.
    pub loss: Option<f64>,
    /// (FP + FN) / N.
    pub misclassification_rate: Option<f64>,
    /// Area under the ROC curve.
    pub auc: Option<f64>,
    /// TP / (TP + FN).
    pub sensitivity: Option<f64>,
    /// TN / (TN + FP).
    pub specificity: Option<f64>,
    /// TP / (TP + FP).
    pub ppv: Option<f64>,
    /// TN / (TN + FN).
    pub npv: Option<f64>,
    /// The threshold the counts were taken at.
    pub threshold: f64,
}

fn ratio(a: usize, b: usize) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Computes the table for `(probability, label)` pairs at `threshold` (positive when ≥).
pub fn table(scores: &[(f64, bool)], threshold: f64) -> Table {
    let (mut tp, mut tn, mut fp, mut fn_) = (0, 0, 0, 0);
    let mut loss = 0.0;
    for &(p, y) in scores {
        match (p >= threshold, y) {
            (true, true) => tp += 1,
            (false, false) => tn += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
        }
        let q = p.clamp(EPS, 1.0 - EPS);
        loss -= if y { q.ln() } else { (1.0 - q).ln() };
    }
    let n = scores.len();
    Table {
        tp,
        tn,
        fp,
        fn_,
        accuracy: ratio(tp + tn, n),
        loss: (n > 0).then(|| loss / n as f64),
        misclassification_rate: ratio(fp + fn_, n),
        auc: auc(scores),
        sensitivity: ratio(tp, tp + fn_),
        specificity: ratio(tn, tn + fp),
        ppv: ratio(tp, tp + fp),
        npv: ratio(tn, tn + fn_),
        threshold,
    }
}

/// AUC by ranks (ties share their average rank); None when either class is empty.
pub fn auc(scores: &[(f64, bool)]) -> Option<f64> {
    let pos = scores.iter().filter(|s| s.1).count();
    let neg = scores.len() - pos;
    if pos == 0 || neg == 0 {
        return None;
    }
    let mut sorted: Vec<(f64, bool)> = scores.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1].0 == sorted[i].0 {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg_rank * sorted[i..=j].iter().filter(|s| s.1).count() as f64;
        i = j + 1;
    }
    Some((rank_sum - (pos * (pos + 1)) as f64 / 2.0) / (pos * neg) as f64)
}

/// One point of the ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RocPoint {
    /// Threshold (positive when ≥).
    pub threshold: f64,
    /// False positive rate.
    pub fpr: f64,
    /// True positive rate (sensitivity).
    pub tpr: f64,
}

/// The ROC curve from (1, 1) at the lowest threshold to (0, 0) above the highest score, one
/// point per distinct score; empty when a class is absent.
pub fn roc(scores: &[(f64, bool)]) -> Vec<RocPoint> {
    let pos = scores.iter().filter(|s| s.1).count() as f64;
    let neg = scores.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return Vec::new();
    }
    let mut sorted: Vec<(f64, bool)> = scores.to_vec();
    sorted.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut points = vec![RocPoint { threshold: f64::INFINITY, fpr: 0.0, tpr: 0.0 }];
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut i = 0;
    while i < sorted.len() {
        let t = sorted[i].0;
        while i < sorted.len() && sorted[i].0 == t {
            if sorted[i].1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        points.push(RocPoint { threshold: t, fpr: fp / neg, tpr: tp / pos });
    }
    points.reverse();
    points
}

/// The highest threshold whose sensitivity is at least `target` (so specificity is as high as
/// it can be at that sensitivity); None without positives.
pub fn threshold_for_sensitivity(scores: &[(f64, bool)], target: f64) -> Option<f64> {
    roc(scores).into_iter().filter(|p| p.tpr >= target && p.threshold.is_finite()).map(|p| p.threshold).reduce(f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_table() {
        // p:     0.9 0.8 0.6 0.4 | 0.7 0.3 0.2 0.1
        // label:  1   1   1   1  |  0   0   0   0
        let s = [(0.9, true), (0.8, true), (0.6, true), (0.4, true), (0.7, false), (0.3, false), (0.2, false), (0.1, false)];
        let t = table(&s, 0.5);
        assert_eq!((t.tp, t.tn, t.fp, t.fn_), (3, 3, 1, 1));
        assert_eq!(t.accuracy, Some(0.75));
        assert_eq!(t.misclassification_rate, Some(0.25));
        assert_eq!((t.sensitivity, t.specificity, t.ppv, t.npv), (Some(0.75), Some(0.75), Some(0.75), Some(0.75)));
        // Pairs where the positive scores higher: 0.9,0.8 beat all 4; 0.6 beats 3; 0.4 beats 3 → 14/16.
        assert_eq!(t.auc, Some(14.0 / 16.0));
        let bce = -[0.9f64, 0.8, 0.6, 0.4].iter().map(|p| p.ln()).sum::<f64>() - [0.3f64, 0.7, 0.8, 0.9].iter().map(|p| p.ln()).sum::<f64>();
        assert!((t.loss.unwrap() - bce / 8.0).abs() < 1e-12);
    }

    #[test]
    fn ties_count_half_and_one_class_has_no_auc() {
        assert_eq!(auc(&[(0.5, true), (0.5, false)]), Some(0.5));
        assert_eq!(auc(&[(0.5, true), (0.5, false), (0.7, true), (0.1, false)]), Some((1.0 + 1.0 + 1.0 + 0.5) / 4.0));
        let only_neg = table(&[(0.2, false), (0.9, false)], 0.5);
        assert_eq!(only_neg.auc, None);
        assert_eq!(only_neg.sensitivity, None);
        assert_eq!(only_neg.ppv, Some(0.0));
        assert_eq!(only_neg.specificity, Some(0.5));
        assert!(roc(&[(0.2, false)]).is_empty());
        assert_eq!(table(&[], 0.5).accuracy, None);
        // Confident mistakes are finite.
        assert!(table(&[(0.0, true), (1.0, false)], 0.5).loss.unwrap().is_finite());
    }

    #[test]
    fn roc_and_threshold_for_a_target() {
        let s = [(0.9, true), (0.8, true), (0.6, true), (0.4, true), (0.7, false), (0.3, false), (0.2, false), (0.1, false)];
        let r = roc(&s);
        assert_eq!(r.first().map(|p| (p.fpr, p.tpr)), Some((1.0, 1.0)));
        assert_eq!(r.last().map(|p| (p.fpr, p.tpr)), Some((0.0, 0.0)));
        assert!(r.windows(2).all(|w| w[0].fpr >= w[1].fpr && w[0].tpr >= w[1].tpr));
        assert_eq!(threshold_for_sensitivity(&s, 1.0), Some(0.4));
        assert_eq!(threshold_for_sensitivity(&s, 0.75), Some(0.6));
        assert_eq!(threshold_for_sensitivity(&s, 0.5), Some(0.8));
        assert_eq!(threshold_for_sensitivity(&[(0.3, false)], 0.9), None);
    }
}
