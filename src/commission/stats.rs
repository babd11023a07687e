//! The statistics of a commissioning run: 95 % Wilson score intervals for proportions, the
//! Hanley–McNeil interval for an AUC, and the comparison of a site's measurement with a claim.
//!
//! A site's result is *within* a claim when the two 95 % intervals overlap on the side that
//! matters (the site's upper bound reaches the claim's lower bound for sensitivity, specificity
//! and AUC; its lower bound stays under the claim's upper bound for false alerts). Overlap of
//! two 95 % intervals is a conservative test (it flags a difference at roughly p < 0.006): a box
//! is called outside its claims only when the evidence says so, and a claim measured on few
//! series is correspondingly easy to meet, which the report says.

use serde::{Deserialize, Serialize};

/// z for a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// A measured value with its 95 % interval (all null when nothing was measured).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The point estimate.
    pub value: Option<f64>,
    /// Lower bound.
    pub low: Option<f64>,
    /// Upper bound.
    pub high: Option<f64>,
}

impl Interval {
    /// Nothing measured.
    pub const NONE: Interval = Interval { value: None, low: None, high: None };

    /// The interval scaled by `k` (a proportion as a rate per 100).
    pub fn scaled(self, k: f64) -> Interval {
        Interval { value: self.value.map(|v| v * k), low: self.low.map(|v| v * k), high: self.high.map(|v| v * k) }
    }

    /// One minus the interval (specificity to false-alert proportion), bounds swapped.
    pub fn complement(self) -> Interval {
        Interval { value: self.value.map(|v| 1.0 - v), low: self.high.map(|v| 1.0 - v), high: self.low.map(|v| 1.0 - v) }
    }
}

/// The Wilson score interval of `k` successes in `n` trials (`Interval::NONE` when `n` is 0).
pub fn wilson(k: usize, n: usize) -> Interval {
    if n == 0 {
        return Interval::NONE;
    }
    let (k, n) = (k as f64, n as f64);
    let p = k / n;
    let z2 = Z95 * Z95;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Interval { value: Some(p), low: Some((centre - half).max(0.0)), high: Some((centre + half).min(1.0)) }
}

/// The Hanley–McNeil (1982) 95 % interval of an AUC measured on `positives` and `negatives`.
pub fn auc_interval(auc: Option<f64>, positives: usize, negatives: usize) -> Interval {
    let Some(a) = auc.filter(|_| positives > 0 && negatives > 0) else { return Interval::NONE };
    let (n1, n2) = (positives as f64, negatives as f64);
    let q1 = a / (2.0 - a);
    let q2 = 2.0 * a * a / (1.0 + a);
    let var = (a * (1.0 - a) + (n1 - 1.0) * (q1 - a * a) + (n2 - 1.0) * (q2 - a * a)) / (n1 * n2);
    let se = var.max(0.0).sqrt();
    Interval { value: Some(a), low: Some((a - Z95 * se).max(0.0)), high: Some((a + Z95 * se).min(1.0)) }
}

/// Which way a measure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    /// Sensitivity, specificity, AUC.
    Higher,
    /// False alerts.
    Lower,
}

/// One claim of the manifest checked against the site's measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimCheck {
    /// `series_sensitivity`, `series_specificity`, `false_alerts_per_100`, `slice_auc`.
    pub name: String,
    /// The claim with its interval, as the manifest's counts give it.
    pub claimed: Interval,
    /// What was measured here.
    pub measured: Interval,
    /// Which way is better.
    pub better: Better,
    /// true within, false outside, null when this run could not measure it (e.g. no positive series).
    pub within: Option<bool>,
}

impl ClaimCheck {
    /// Compares `measured` with `claimed` (see the module's rule).
    pub fn new(name: &str, claimed: Interval, measured: Interval, better: Better) -> ClaimCheck {
        let within = match better {
            Better::Higher => measured.high.zip(claimed.low.or(claimed.value)).map(|(site, claim)| site >= claim - 1e-12),
            Better::Lower => measured.low.zip(claimed.high.or(claimed.value)).map(|(site, claim)| site <= claim + 1e-12),
        };
        ClaimCheck { name: name.into(), claimed, measured, better, within }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64, tol: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < tol)
    }

    #[test]
    fn wilson_matches_published_values() {
        // Newcombe (1998), table I: 81 of 263 → 0.2553–0.3662; 15 of 148 → 0.0624–0.1605; 0 of 10 → 0–0.2775.
        let w = wilson(81, 263);
        assert!(close(w.low, 0.2553, 5e-4) && close(w.high, 0.3662, 5e-4), "{w:?}");
        let w = wilson(15, 148);
        assert!(close(w.low, 0.0624, 5e-4) && close(w.high, 0.1605, 5e-4), "{w:?}");
        let w = wilson(0, 10);
        assert!(close(w.low, 0.0, 1e-12) && close(w.high, 0.2775, 5e-4), "{w:?}");
        assert_eq!(wilson(0, 0), Interval::NONE);
        let w = wilson(1, 1);
        assert!(close(w.low, 0.2065, 5e-4) && close(w.high, 1.0, 1e-12), "{w:?}");
    }

    #[test]
    fn hanley_mcneil_matches_the_formula_by_hand() {
        // Hanley & McNeil (1982), eq. 2 by hand: AUC 0.90 with 50 + 50: Q1 = 0.9/1.1, Q2 = 1.62/1.9,
        // SE² = (0.09 + 49 (Q1 − 0.81) + 49 (Q2 − 0.81)) / 2500 → SE 0.03212.
        let i = auc_interval(Some(0.9), 50, 50);
        assert!(close(i.low, 0.9 - Z95 * 0.03212, 2e-4) && close(i.high, 0.9 + Z95 * 0.03212, 2e-4), "{i:?}");
        assert_eq!(auc_interval(None, 5, 5), Interval::NONE);
        assert_eq!(auc_interval(Some(0.8), 0, 5), Interval::NONE);
    }

    #[test]
    fn a_claim_is_met_while_the_intervals_overlap_and_missed_once_they_part() {
        let claim = wilson(45, 50); // 0.90, 0.79–0.96
        assert_eq!(ClaimCheck::new("s", claim, wilson(17, 20), Better::Higher).within, Some(true));
        assert_eq!(ClaimCheck::new("s", claim, wilson(10, 20), Better::Higher).within, Some(false));
        assert_eq!(ClaimCheck::new("s", claim, Interval::NONE, Better::Higher).within, None);
        let fa = wilson(3, 100).scaled(100.0); // 3 per 100, up to ~8.5
        assert_eq!(ClaimCheck::new("f", fa, wilson(2, 20).scaled(100.0), Better::Lower).within, Some(true));
        assert_eq!(ClaimCheck::new("f", fa, wilson(12, 20).scaled(100.0), Better::Lower).within, Some(false));
        let spec = wilson(18, 20);
        let fa = spec.complement();
        assert!(close(fa.value, 0.1, 1e-12) && close(fa.low, 1.0 - spec.high.unwrap(), 1e-12));
    }
}
