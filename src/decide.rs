//! Decisions: a slice is positive when its probability is at or above the threshold; a series
//! is positive when at least `min_positive_slices` of its slices are positive.
//!
//! Why a count and not one slice: a single slice above threshold is often noise (an artefact, a
//! vessel, a motion-blurred slice); COVID-19 pneumonia is multifocal and spans several slices.
//! Two slices (the default) keep sensitivity high while ignoring isolated outliers; an admin can
//! set 1 for the most sensitive behaviour. Both values appear in every result.

use serde::Serialize;

/// Positive slices a series needs when neither the config nor the manifest says.
pub const DEFAULT_MIN_POSITIVE_SLICES: usize = 2;

/// The decision rule, with where its threshold came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rule {
    /// Slice positive when prob ≥ threshold.
    pub threshold: f64,
    /// Where the threshold came from (`manifest` or `config`).
    pub threshold_source: String,
    /// Series positive when at least this many slices are positive.
    pub min_positive_slices: usize,
    /// Where `min_positive_slices` came from (`config`, `manifest` or `default`).
    pub min_positive_source: String,
    /// Slices with less lung than this share of the image are not scored (the manifest's).
    pub min_lung_fraction: f64,
}

/// A series verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The rule is met.
    Positive,
    /// The rule is not met.
    Negative,
}

impl Rule {
    /// Why a slice with `lung_fraction` of lung is not scored, or `None` when it is.
    pub fn skips(&self, lung_fraction: f32) -> Option<String> {
        // Compared in f32, the precision lung fractions are computed in.
        (lung_fraction < self.min_lung_fraction as f32).then(|| format!("no lung: lung fraction {lung_fraction:.3} < {} (manifest)", self.min_lung_fraction))
    }

    /// Whether a slice with probability `prob` is positive.
    pub fn slice_positive(&self, prob: f64) -> bool {
        prob >= self.threshold
    }

    /// The verdict for a series whose slices have probabilities `probs`.
    pub fn series(&self, probs: &[f64]) -> SeriesDecision {
        let positives = probs.iter().filter(|&&p| self.slice_positive(p)).count();
        let max_prob = probs.iter().copied().fold(0.0, f64::max);
        let verdict = if positives >= self.min_positive_slices { Verdict::Positive } else { Verdict::Negative };
        SeriesDecision { slices: probs.len(), positives, max_prob, verdict }
    }
}

/// What the rule says about one series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SeriesDecision {
    /// Slices scored.
    pub slices: usize,
    /// Slices at or above the threshold.
    pub positives: usize,
    /// Largest slice probability.
    pub max_prob: f64,
    /// Positive when `positives ≥ min_positive_slices`.
    pub verdict: Verdict,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_is_inclusive_and_the_count_decides() {
        let r = Rule { threshold: 0.5, threshold_source: "config".into(), min_positive_slices: 2, min_positive_source: "config".into(), min_lung_fraction: 0.02 };
        assert_eq!(r.skips(0.0199), Some("no lung: lung fraction 0.020 < 0.02 (manifest)".into()));
        assert_eq!(r.skips(0.02), None);
        assert!(r.slice_positive(0.5));
        assert!(!r.slice_positive(0.4999));
        let d = r.series(&[0.1, 0.5, 0.2]);
        assert_eq!((d.positives, d.verdict, d.max_prob), (1, Verdict::Negative, 0.5));
        assert_eq!(r.series(&[0.9, 0.5, 0.2]).verdict, Verdict::Positive);
        assert_eq!(r.series(&[]).verdict, Verdict::Negative);
        let one = Rule { min_positive_slices: 1, ..r.clone() };
        assert_eq!(one.series(&[0.1, 0.7]).verdict, Verdict::Positive);
    }
}
