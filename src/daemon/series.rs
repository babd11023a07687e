//! The series rule on open series: each one ordered from the journal's geometry as `score`
//! orders a series, an EARLY alert as soon as the rule is met, the FINAL verdict once the series
//! is quiet, written as its result file and handed to the feed, the sinks and the exporter.

use std::path::PathBuf;

use super::faults::DiskCause;
use super::journal::{self, Record, SliceRec};
use super::Daemon;
use crate::alert::{self, SeriesKey, Stage};
use crate::decide::{Rule, SliceEvidence, Verdict};
use crate::durable::{now, write_atomic};
use crate::ingest::{series, Pixels, Rescale, Slice, SourceKind, Uids};
use crate::output::{ResultFile, ResultSlice, SeriesResult, SeriesSummary, Times};

impl Daemon {
    /// The series rule in force (the live settings' copy).
    pub(super) fn rule(&self) -> Rule {
        self.live.lock().expect("live settings").rule.clone()
    }

    /// What the series rule needs of each slice of an ordered open series (`complete`: for the
    /// final verdict; else slabs as [`series::Series::slab_mm_received`] counts them).
    pub(super) fn evidence(&self, rule: &Rule, ordered: &series::Series, recs: &[SliceRec], complete: bool) -> Vec<SliceEvidence> {
        let slabs = if complete { ordered.slab_mm() } else { ordered.slab_mm_received() };
        recs.iter()
            .zip(slabs)
            .map(|(r, slab_mm)| SliceEvidence {
                prob: f64::from(r.prob),
                lung_fraction: f64::from(r.lung_fraction),
                slab_mm,
                scored: self.scorer.skip_reason(rule, r.lung_fraction).is_none(),
            })
            .collect()
    }

    /// Whether an EARLY verdict on `o` could be positive, from its records alone (no ordering):
    /// enough positive slices, and, an early slab being at most its Slice Thickness, enough
    /// thickness among them. `check_early` runs after every scored file; this keeps it from
    /// ordering the whole series each time while the rule cannot be met.
    pub(super) fn early_possible(&self, rule: &Rule, o: &journal::OpenSeries) -> bool {
        let positive: Vec<&SliceRec> =
            o.slices().into_iter().map(|(_, r)| r).filter(|r| self.scorer.skip_reason(rule, r.lung_fraction).is_none() && rule.slice_positive(f64::from(r.prob))).collect();
        let thickness: Option<f64> = positive.iter().map(|r| r.geometry.slice_thickness.filter(|t| t.is_finite() && *t > 0.0)).sum();
        positive.len() >= rule.min_positive_slices && thickness.is_none_or(|t| t >= rule.min_positive_extent_mm)
    }

    /// The rule's EARLY verdict on an open series as it stands.
    pub(super) fn decide_open(&self, uid: &str, o: &journal::OpenSeries) -> crate::decide::SeriesDecision {
        let rule = self.rule();
        let (ordered, recs) = order_open(uid, o);
        rule.series(&self.evidence(&rule, &ordered, &recs, false))
    }

    pub(super) fn check_early(&mut self, series: &str) {
        let Some(o) = self.state.open.get(series) else { return };
        if o.alert_t.is_some() || !self.early_possible(&self.rule(), o) {
            return;
        }
        let d = self.decide_open(series, o);
        if d.verdict == Verdict::Positive {
            let part = o.part;
            if self.record(Record::Alert { t: now(), series: series.to_string(), part, positives: d.positives, slices: d.slices, max_prob: d.max_prob }) {
                self.publish(series, part, Stage::Early, true, d.positives, d.slices, d.max_prob);
                self.write_status(); // the latch shows in `status` (and `ack`) at once
            }
        }
    }

    /// Gives the final verdict to every series quiet for `quiet_seconds` whose window holds no
    /// unscored file (`all`: every open series, regardless).
    pub(super) fn finalize_quiet_series(&mut self, all: bool) {
        let quiet = self.settings.quiet_seconds;
        let oldest_waiting = self.files.oldest_unscored();
        let t = now();
        let due: Vec<String> = self.state.open.iter().filter(|(_, o)| all || (t - o.last_t >= quiet && oldest_waiting > o.last_t + quiet)).map(|(k, _)| k.clone()).collect();
        for uid in due {
            self.finalize(&uid);
        }
    }

    pub(super) fn finalize(&mut self, uid: &str) {
        let Some(o) = self.state.open.get(uid).cloned() else { return };
        let rule = self.rule();
        let key = SeriesKey::of(uid, o.part);
        let (ordered, recs) = order_open(uid, &o);
        let d = rule.series(&self.evidence(&rule, &ordered, &recs, true));
        if d.positive_extent_mm.is_none() && rule.min_positive_extent_mm > 0.0 {
            log::warn!("series {key}: slice spacing unknown (no positions, no Slice Thickness): decided without the extent condition");
        }
        let slice_scores = ordered
            .slices
            .iter()
            .zip(&recs)
            .enumerate()
            .map(|(i, (s, r))| {
                let skipped = self.scorer.skip_reason(&rule, r.lung_fraction);
                ResultSlice {
                    file: s.source.display().to_string(),
                    frame: s.frame,
                    slice_index: i,
                    z: ordered.z[i],
                    lung_fraction: r.lung_fraction,
                    prob: r.prob,
                    positive: skipped.is_none() && rule.slice_positive(f64::from(r.prob)),
                    skipped,
                }
            })
            .collect();
        let t = now();
        let summary = SeriesSummary::new(uid, d, &rule, &self.scorer);
        let result = ResultFile::Series(Box::new(SeriesResult {
            summary: summary.clone(),
            series_id: alert::series_id(uid, o.part),
            series_key: key.to_string(),
            part: o.part,
            ctsentry: env!("CARGO_PKG_VERSION").into(),
            order_key: ordered.order_key,
            duplicates: ordered.duplicates.clone(),
            gaps: ordered.gaps.clone(),
            times: Times {
                first_scored: o.first_t,
                last_scored: o.last_t,
                early_alert: o.alert_t,
                final_t: t,
                early_alert_after_first_s: o.alert_t.map(|a| a - o.first_t),
                final_after_last_s: t - o.last_t,
            },
            slice_scores,
            unwritten_outputs: o.unwritten.clone(),
        }));
        let path = self.settings.paths.results.join(format!("{}.json", alert::series_id(uid, o.part)));
        if let Err(e) = write_atomic(&path, serde_json::to_string_pretty(&result).expect("json").as_bytes()) {
            log::error!("{}: result not written: {e}; retrying", path.display());
            self.disk(DiskCause::Result, true);
            return;
        }
        self.disk(DiskCause::Result, false);
        if self.exporter.is_some() {
            let in_order: Vec<(&str, &SliceRec, bool)> = ordered
                .slices
                .iter()
                .zip(&recs)
                .map(|(s, r)| (s.source.to_str().unwrap_or_default(), r, self.scorer.skip_reason(&rule, r.lung_fraction).is_none() && rule.slice_positive(f64::from(r.prob))))
                .collect();
            self.spool_export(&o, &summary, &in_order);
        }
        let verdict = d.verdict.as_str();
        if !self.record(Record::Final {
            t,
            series: uid.to_string(),
            part: o.part,
            verdict: verdict.into(),
            positives: d.positives,
            slices: d.slices,
            max_prob: d.max_prob,
            result: path.display().to_string(),
        }) {
            return;
        }
        log::info!(
            "series {key}: {verdict} ({} of {} slices ≥ {:.4}, {} mm, {:.1} % of the lung; needed {}) -> {}",
            d.positives,
            d.slices,
            rule.threshold,
            d.positive_extent_mm.map_or("unknown".into(), |e| format!("{e:.1}")),
            d.positive_share * 100.0,
            rule.describe(),
            path.display()
        );
        self.publish(uid, o.part, Stage::Final, d.verdict == Verdict::Positive, d.positives, d.slices, d.max_prob);
        self.observe_drift(&recs, &rule, d.verdict == Verdict::Positive);
    }
}

/// Orders an open series' slices as `score` does, from the journal's geometry: the series (of
/// pixel-less stand-ins) and each slice's record, in series order.
fn order_open(uid: &str, o: &journal::OpenSeries) -> (series::Series, Vec<SliceRec>) {
    let mut stubs = Vec::new();
    let mut by_name = std::collections::HashMap::new();
    for (file, r) in o.slices() {
        stubs.push(Slice {
            source: PathBuf::from(file),
            frame: r.frame,
            rows: 0,
            cols: 0,
            pixels: Pixels::I16(Vec::new()),
            rescale: Rescale::default(),
            geometry: r.geometry,
            uids: Uids { series: uid.to_string(), ..Default::default() },
            modality: None,
            image_type: Vec::new(),
            transfer_syntax: None,
            kind: SourceKind::Dicom,
        });
        by_name.insert((file.to_string(), r.frame), r.clone());
    }
    let ordered = series::order(uid.to_string(), stubs);
    let recs = ordered.slices.iter().map(|s| by_name[&(s.source.display().to_string(), s.frame)].clone()).collect();
    (ordered, recs)
}
