//! Where verdicts go: the feed (`results/events.jsonl`, each verdict exactly once), the alert
//! sinks, the counters, and the status snapshot `ctsentry status` reads.

use std::time::Instant;

use super::faults::DiskCause;
use super::journal::{self, Journal, Record};
use super::Daemon;
use crate::alert::{self, Event, SeriesKey, Stage};
use crate::durable::now;
use crate::output::{FeedEvent, FeedKind, FeedStage};

impl Daemon {
    /// Puts a verdict event in the feed (exactly once) and, when it was not there yet, hands it
    /// to the sinks.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(&mut self, uid: &str, part: u16, stage: Stage, positive: bool, positives: usize, slices: usize, max_prob: f64) {
        let key = SeriesKey::of(uid, part);
        let stage_name = if stage == Stage::Early { "EARLY" } else { "FINAL" };
        let id = format!("{}:{stage_name}", alert::series_id(uid, part));
        if stage == Stage::Final && !self.last_verdicts.iter().any(|v| v.series_uid == uid && v.series_key == key.to_string()) {
            self.last_verdicts.push_front(crate::status::VerdictView {
                series_key: key.to_string(),
                series_uid: uid.to_string(),
                verdict: if positive { "positive" } else { "negative" }.into(),
                positives,
                slices,
                max_prob,
                t: now(),
            });
            self.last_verdicts.truncate(crate::status::LAST_VERDICTS);
        }
        // Feeds written before ids were full hashes hold `KEY:STAGE`: treat those as published
        // too, so that an upgrade does not send the last day's verdicts again.
        if self.outbox.contains(&id) || self.outbox.contains(&format!("{key}:{stage_name}")) {
            return;
        }
        let rule = self.rule();
        let m = &self.scorer.model.manifest.model;
        let line = FeedEvent {
            id,
            t: now(),
            event: if positive { FeedKind::Alert } else { FeedKind::Negative },
            stage: if stage == Stage::Early { FeedStage::Early } else { FeedStage::Final },
            series_uid: uid.to_string(),
            series_id: alert::series_id(uid, part),
            series_key: key.to_string(),
            part,
            positives,
            slices,
            max_prob,
            threshold: rule.threshold,
            min_positive_slices: rule.min_positive_slices,
            min_positive_extent_mm: rule.min_positive_extent_mm,
            min_positive_share: rule.min_positive_share,
            model: format!("{} {}", m.name, m.version),
        };
        match self.outbox.append(&line) {
            Ok(_) => self.disk(DiskCause::Feed, false),
            Err(e) => {
                log::error!("{}: {e}", self.outbox.path().display());
                self.disk(DiskCause::Feed, true);
            }
        }
        let count = |c: &std::sync::atomic::AtomicU64| c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match (stage, positive) {
            (Stage::Final, true) => {
                count(&self.metrics.series_positive);
                count(&self.metrics.alerts_final);
            }
            (Stage::Final, false) => {
                count(&self.metrics.series_negative);
            }
            _ => {
                count(&self.metrics.alerts_early);
            }
        }
        let (positives, slices, max_prob) = (positives as u32, slices as u32, max_prob as f32);
        self.emit(if positive { Event::Alert { key, positives, slices, max_prob, stage } } else { Event::Negative { key, positives, slices, max_prob } });
    }

    /// Re-publishes events the journal holds but the feed lacks (a crash between the two).
    pub(super) fn republish(&mut self) {
        let open: Vec<(String, journal::OpenSeries)> = self.state.open.iter().filter(|(_, o)| o.alert_t.is_some()).map(|(k, o)| (k.clone(), o.clone())).collect();
        for (uid, o) in open {
            let part = o.part;
            let d = self.decide_open(&uid, &o);
            self.publish(&uid, part, Stage::Early, true, d.positives, d.slices, d.max_prob);
        }
        let finals: Vec<Record> = Journal::read(self.journal.path()).unwrap_or_default().into_iter().filter(|r| matches!(r, Record::Final { .. })).collect();
        for r in finals {
            if let Record::Final { series, part, verdict, positives, slices, max_prob, .. } = r {
                self.publish(&series, part, Stage::Final, verdict == "positive", positives, slices, max_prob);
            }
        }
    }

    /// The key of the latched alert's series, if one is latched.
    pub(super) fn latched_key(&self) -> Option<SeriesKey> {
        self.state.latched.as_ref().map(|l| SeriesKey::of(&l.series, l.part))
    }

    /// Replaces the status snapshot (`ctsentry status`).
    pub(super) fn write_status(&mut self) {
        let rule = self.rule();
        let m = &self.scorer.model.manifest.model;
        let faults: Vec<String> = self.faults.kinds().iter().map(|f| f.name().to_string()).collect();
        let snap = crate::status::Snapshot {
            pid: std::process::id(),
            started: self.started,
            updated: now(),
            latched: self.state.latched.as_ref().map(journal::Latched::view),
            open_series: self.state.open.len(),
            queue: self.files.waiting(),
            scoring: self.files.in_flight(),
            faults,
            engine: self.scorer.engine.name().into(),
            precision: self.scorer.engine.precision().into(),
            precision_reason: self.scorer.engine.precision_reason().map(str::to_string),
            preprocess: self.scorer.pre.name().into(),
            model: crate::output::ModelView::of(m),
            threshold: Some(rule.threshold),
            threshold_source: Some(rule.threshold_source.clone()),
            min_positive_slices: Some(rule.min_positive_slices),
            series_rule: Some(rule.describe()),
            files_handled: self.state.handled,
            last_verdicts: self.last_verdicts.iter().cloned().collect(),
            degraded: self.degraded,
            drift: self.drift.as_ref().map(|w| crate::status::DriftStatus::from(&w.view())),
        };
        *self.metrics.gauges.lock().unwrap_or_else(|p| p.into_inner()) = crate::metrics::Gauges {
            queue: snap.queue,
            open_series: snap.open_series,
            faults: self.faults.kinds(),
            latched: snap.latched.is_some(),
            drift: snap.drift.as_ref().filter(|d| d.state == "drift").map(|d| d.reasons.join("; ")),
            updated: Some(Instant::now()),
            export_queue: if self.exporter.is_some() { crate::net::export::pending(&self.state_dir.export_spool()).len() } else { 0 },
        };
        if let Err(e) = crate::status::write(&self.settings.paths.state, &snap) {
            log::warn!("{}: status not written: {e}", self.settings.paths.state.display());
        }
    }
}
