//! What ctsentry writes for machines, as types: the lines of `score --json`, the series result
//! file (`results/<series id>.json`) and the verdict feed's events (`results/events.jsonl`).
//! Each serialises to the keys DESIGN.md names (keys are only ever added) and deserialises
//! back, so that tests and tools read them as types rather than by key.

use serde::{Deserialize, Serialize};

use crate::decide::{Rule, SeriesDecision};
use crate::ingest::series::{Gap, OrderKey};
use crate::score::SliceScore;

/// Escapes text for HTML (the commissioning report and the admin's page).
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// The model that gave a result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    /// Name.
    pub name: String,
    /// Version.
    pub version: String,
    /// sha256 of the ONNX file.
    pub sha256: String,
}

impl ModelView {
    /// The identity of a bundle's model.
    pub fn of(m: &crate::model::ModelInfo) -> ModelView {
        ModelView { name: m.name.clone(), version: m.version.clone(), sha256: m.sha256.clone() }
    }
}

/// A series verdict as every result shows it: the counts and measures, the rule with the source
/// of each value, and the model and engine that gave it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSummary {
    /// Series Instance UID (or the NIfTI file).
    pub series_uid: String,
    /// What the rule found (`slices`, `positives`, `max_prob`, `positive_extent_mm`,
    /// `positive_share`, `verdict`).
    #[serde(flatten)]
    pub decision: SeriesDecision,
    /// The rule (`threshold`, `min_positive_slices`, … and their sources).
    #[serde(flatten)]
    pub rule: Rule,
    /// The model.
    pub model: ModelView,
    /// The engine's name.
    pub engine: String,
    /// The engine's precision (`f32`, `bf16`, `int8`, …).
    pub precision: String,
    /// Why that precision, where the engine chose it (e.g. why `auto` did not take int8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision_reason: Option<String>,
    /// The preprocessing backend (`cpu`, `cuda`).
    pub preprocess: String,
}

impl SeriesSummary {
    /// The summary of `decision` on series `uid` under `rule`, by `scorer`'s model and engine.
    pub fn new(uid: &str, decision: SeriesDecision, rule: &Rule, scorer: &crate::score::Scorer) -> SeriesSummary {
        SeriesSummary {
            series_uid: uid.to_string(),
            decision,
            rule: rule.clone(),
            model: ModelView::of(&scorer.model.manifest.model),
            engine: scorer.engine.name().into(),
            precision: scorer.engine.precision().into(),
            precision_reason: scorer.engine.precision_reason().map(str::to_string),
            preprocess: scorer.pre.name().into(),
        }
    }
}

/// One line of `ctsentry score --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ScoreLine {
    /// One scored (or skipped) slice.
    Slice {
        /// Its series.
        series_uid: String,
        /// The slice's score.
        #[serde(flatten)]
        score: SliceScore,
    },
    /// A series' verdict, after its slices.
    Series {
        /// The verdict.
        #[serde(flatten)]
        summary: Box<SeriesSummary>,
        /// Slices not sent to the engine (too little lung).
        skipped: usize,
    },
    /// A file that could not be read.
    Error {
        /// The file.
        file: String,
        /// Why.
        error: String,
    },
}

/// A series result file, as the daemon writes it at the final verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ResultFile {
    /// The only kind so far.
    Series(Box<SeriesResult>),
}

/// What a series result file holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesResult {
    /// The verdict.
    #[serde(flatten)]
    pub summary: SeriesSummary,
    /// The series' id in file names and the feed (a hash of UID and part).
    pub series_id: String,
    /// The short key the serial line and the LEDs show.
    pub series_key: String,
    /// The part (a series sent again after its verdict is a new part).
    pub part: u16,
    /// The ctsentry version.
    pub ctsentry: String,
    /// Which key ordered the slices.
    pub order_key: OrderKey,
    /// Consecutive slices at the same position.
    pub duplicates: Vec<(usize, usize)>,
    /// Unusually large spacings.
    pub gaps: Vec<Gap>,
    /// When it was scored and decided.
    pub times: Times,
    /// Every slice in series order.
    pub slice_scores: Vec<ResultSlice>,
    /// Outputs (heat maps) that could not be written.
    pub unwritten_outputs: Vec<String>,
}

/// When a series was scored and decided (unix seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Times {
    /// Its first slice scored.
    pub first_scored: f64,
    /// Its last slice scored.
    pub last_scored: f64,
    /// Its EARLY alert, if any.
    pub early_alert: Option<f64>,
    /// Its final verdict.
    #[serde(rename = "final")]
    pub final_t: f64,
    /// EARLY alert after the first slice (s).
    pub early_alert_after_first_s: Option<f64>,
    /// Final verdict after the last slice (s).
    pub final_after_last_s: f64,
}

/// One slice of a series result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultSlice {
    /// The file, relative to the drop folder.
    pub file: String,
    /// The frame in a multi-frame file.
    pub frame: usize,
    /// Position in the series.
    pub slice_index: usize,
    /// Normalised position.
    pub z: f64,
    /// Share of the image inside the lungs.
    pub lung_fraction: f32,
    /// Probability.
    pub prob: f32,
    /// Counted positive (scored, and prob ≥ threshold).
    pub positive: bool,
    /// Why it was not scored, when it was not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

/// A verdict event in the feed: `event` is ALERT (positive) or NEGATIVE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// `SERIES_ID:EARLY` or `SERIES_ID:FINAL`: each event once.
    pub id: String,
    /// When (unix s).
    pub t: f64,
    /// ALERT or NEGATIVE.
    pub event: FeedKind,
    /// EARLY or FINAL.
    pub stage: FeedStage,
    /// Series Instance UID.
    pub series_uid: String,
    /// The series' id in file names.
    pub series_id: String,
    /// The short key the serial line and the LEDs show.
    pub series_key: String,
    /// The part.
    pub part: u16,
    /// Positive slices.
    pub positives: usize,
    /// Slices.
    pub slices: usize,
    /// Largest probability.
    pub max_prob: f64,
    /// The threshold in force.
    pub threshold: f64,
    /// The rule's slice count.
    pub min_positive_slices: usize,
    /// The rule's extent.
    pub min_positive_extent_mm: f64,
    /// The rule's lung share.
    pub min_positive_share: f64,
    /// `NAME VERSION`.
    pub model: String,
}

/// A feed event's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FeedKind {
    /// The series is positive (EARLY or FINAL).
    Alert,
    /// The series is negative (FINAL only).
    Negative,
}

/// A feed event's stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FeedStage {
    /// While the series arrives.
    Early,
    /// At its end.
    Final,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Verdict;

    fn summary() -> SeriesSummary {
        SeriesSummary {
            series_uid: "1.2.3".into(),
            decision: SeriesDecision { slices: 10, positives: 3, max_prob: 0.9, positive_extent_mm: Some(7.5), positive_share: 0.25, verdict: Verdict::Positive },
            rule: Rule {
                threshold: 0.5,
                threshold_source: "manifest".into(),
                min_positive_slices: 2,
                min_positive_source: "manifest".into(),
                min_positive_extent_mm: 5.0,
                min_positive_share: 0.05,
                physical_source: "manifest".into(),
                min_lung_fraction: 0.01,
            },
            model: ModelView { name: "m".into(), version: "1".into(), sha256: "ab".into() },
            engine: "tract".into(),
            precision: "f32".into(),
            precision_reason: None,
            preprocess: "cpu".into(),
        }
    }

    #[test]
    fn lines_carry_the_design_keys_flat_and_read_back_as_types() {
        let line = ScoreLine::Series { summary: Box::new(summary()), skipped: 1 };
        let v = serde_json::to_value(&line).unwrap();
        for key in [
            "type",
            "series_uid",
            "slices",
            "positives",
            "verdict",
            "threshold",
            "threshold_source",
            "min_positive_slices",
            "min_positive_extent_mm",
            "positive_share",
            "model",
            "engine",
            "skipped",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert_eq!((v["type"].as_str(), v["verdict"].as_str()), (Some("series"), Some("positive")));
        assert_eq!(serde_json::from_value::<ScoreLine>(v).unwrap(), line);
        let err = ScoreLine::Error { file: "a.dcm".into(), error: "bad".into() };
        assert_eq!(serde_json::from_str::<ScoreLine>(&serde_json::to_string(&err).unwrap()).unwrap(), err);
        let ev = FeedEvent {
            id: "x:FINAL".into(),
            t: 1.0,
            event: FeedKind::Negative,
            stage: FeedStage::Final,
            series_uid: "1.2.3".into(),
            series_id: "x".into(),
            series_key: "k".into(),
            part: 1,
            positives: 0,
            slices: 4,
            max_prob: 0.1,
            threshold: 0.5,
            min_positive_slices: 2,
            min_positive_extent_mm: 0.0,
            min_positive_share: 0.0,
            model: "m 1".into(),
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!((v["event"].as_str(), v["stage"].as_str()), (Some("NEGATIVE"), Some("FINAL")));
        assert_eq!(serde_json::from_value::<FeedEvent>(v).unwrap(), ev);
    }
}
