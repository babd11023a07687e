//! Drift: the statistics core that tells whether recent series still look like a reference. It owns the [`Reference`] (what
//! "normal" looks like, per series), the [`Monitor`] (a window of the most recent finished series, judged after each one, with
//! hysteresis between raising and clearing) and the plain-language reasons it gives. Series are the unit throughout: slices
//! within a series are correlated, so slices are never tested. Three statistics are judged on the window:
//!
//! - **alert rate**: k alerts in n series against the reference's rate, by an exact two-sided test: Fisher's exact test of the
//!   window against the reference's own counts when the reference says how many series it was measured on (so that a small
//!   commissioning run, even one with no alert at all, is not taken for the truth), else the exact binomial test against the
//!   reference rate (clamped into [1e-6, 1 − 1e-6]); both sum, in log space, the probabilities of the outcomes no more likely
//!   than the one seen;
//! - **mean slice probability** and **mean lung HU**: the window mean of the series' values against the reference mean, as a
//!   two-sided normal test with standard error sd·√(1/m + 1/N) (m series in the window, N in the reference; 1/N left out when
//!   N is unknown), judged only when at least half of `min_series` window series have the value.
//!
//! Drift is raised when the window has `min_series` series and any statistic's p-value is below `raise_p`, and cleared when every
//! judged statistic's p-value is above `clear_p` (or the window falls below `min_series`). Drift only reports: it never silences
//! or changes an alert; what to do with it is the caller's business. No I/O; [`Reference`] and [`Observation`] are serde types
//! (`reference.toml`, the manifest's `[validation.reference]`, the daemon's saved window).

use std::collections::VecDeque;
use std::f64::consts::PI;

use serde::{Deserialize, Serialize};

/// Floor of the reference's between-series sd of the mean slice probability.
const PROB_SD_FLOOR: f64 = 0.01;
/// Floor of the reference's between-series sd of the mean lung HU.
const HU_SD_FLOOR: f64 = 5.0;
/// The binomial test's reference rate is kept this far from 0 and 1.
const RATE_CLAMP: f64 = 1e-6;
/// Outcomes whose log-probability is within this of the observed one's count as "no more likely" (as R's `binom.test` does).
const TIE_TOLERANCE: f64 = 1e-7;

/// What "normal" looks like, per series: from a model manifest (`[validation.reference]`) or a
/// site's commissioning run (`reference.toml`), both with these keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Expected share of series that alert (0..1).
    pub alert_rate: f64,
    /// Mean over series of the series' mean slice probability on lung-bearing slices.
    pub prob_mean: f64,
    /// Between-series standard deviation of the series' mean slice probability.
    pub prob_sd: f64,
    /// Mean over series of the series' mean Hounsfield units inside the lungs (absent for a model
    /// without a lung mask: that statistic is then not judged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_hu_mean: Option<f64>,
    /// Between-series standard deviation of the series' mean lung HU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lung_hu_sd: Option<f64>,
    /// How many series the reference was measured on (0: unknown; the reference is then taken as exact).
    pub series: usize,
    /// Where it came from, e.g. `manifest densenet121-covid 3.1.0` or `commission 2026-12-06T10:00Z`.
    pub source: String,
}

impl Reference {
    /// Builds a reference from per-series observations: the share of series that alerted, and the mean and sample sd of the mean
    /// slice probability and of the mean lung HU over the series that have them (non-finite values are left out like `None`).
    /// Each sd is floored (0.01 for the probability, 5 HU for lung HU) so that a reference of identical series does not make every
    /// later series "drift".
    ///
    /// # Errors
    ///
    /// An empty set, or one where no series has a mean slice probability, gives the reason as `Err`. Where no series has a
    /// lung HU (a model without a lung mask), `lung_hu_mean` and `lung_hu_sd` are `None` and that statistic is not judged.
    pub fn from_observations(obs: &[Observation], source: &str) -> Result<Reference, String> {
        if obs.is_empty() {
            return Err("no series to build a drift reference from".to_string());
        }
        let alerts = obs.iter().filter(|o| o.alerted).count();
        let probs: Vec<f64> = obs.iter().filter_map(|o| finite(o.mean_prob)).collect();
        let hus: Vec<f64> = obs.iter().filter_map(|o| finite(o.lung_hu)).collect();
        let n = obs.len();
        let (prob_mean, prob_sd) = mean_sd(&probs).ok_or_else(|| format!("none of the {n} series has a mean slice probability (no lung-bearing slice scored)"))?;
        let hu = mean_sd(&hus);
        Ok(Reference {
            alert_rate: alerts as f64 / n as f64,
            prob_mean,
            prob_sd: prob_sd.max(PROB_SD_FLOOR),
            lung_hu_mean: hu.map(|(m, _)| m),
            lung_hu_sd: hu.map(|(_, sd)| sd.max(HU_SD_FLOOR)),
            series: n,
            source: source.to_string(),
        })
    }
}

impl Reference {
    /// Whether the values can be a reference (as read from a file or a manifest): rates and
    /// probabilities in [0, 1], HU plausible, both HU values or neither.
    pub fn check(&self) -> Result<(), String> {
        let ok = |v: f64, lo: f64, hi: f64| v.is_finite() && (lo..=hi).contains(&v);
        let fine = ok(self.alert_rate, 0.0, 1.0)
            && ok(self.prob_mean, 0.0, 1.0)
            && ok(self.prob_sd, 0.0, 1.0)
            && self.lung_hu_mean.is_none_or(|v| ok(v, -1100.0, 500.0))
            && self.lung_hu_sd.is_none_or(|v| ok(v, 0.0, 1000.0))
            && self.lung_hu_mean.is_some() == self.lung_hu_sd.is_some();
        if fine {
            Ok(())
        } else {
            Err("alert_rate, prob_mean and prob_sd must lie in [0, 1], lung_hu_mean in [-1100, 500] HU and lung_hu_sd in [0, 1000] (both or neither)".into())
        }
    }
}

/// One finished series, as drift sees it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The series' final verdict was positive.
    pub alerted: bool,
    /// Mean slice probability over its lung-bearing (scored) slices; `None` when there were none.
    pub mean_prob: Option<f64>,
    /// Mean HU inside the lung mask over its lung-bearing slices; `None` when there were none.
    pub lung_hu: Option<f64>,
}

impl Observation {
    /// The observation of a series from its scored slices' `(probability, mean lung HU)`: the one
    /// definition both a commissioning run (the reference) and the daemon (the window) use.
    pub fn of(alerted: bool, scored: impl IntoIterator<Item = (f64, Option<f64>)>) -> Observation {
        let (mut probs, mut hus) = ((0.0, 0usize), (0.0, 0usize));
        for (p, hu) in scored {
            probs = (probs.0 + p, probs.1 + 1);
            if let Some(h) = hu {
                hus = (hus.0 + h, hus.1 + 1);
            }
        }
        let mean = |(sum, n): (f64, usize)| (n > 0).then(|| sum / n as f64);
        Observation { alerted, mean_prob: mean(probs), lung_hu: mean(hus) }
    }
}

/// How the monitor judges. [`Monitor::new`] keeps `window` ≥ 1, `min_series` ≤ `window` and `clear_p` ≥ `raise_p`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Series kept in the window (default 50).
    pub window: usize,
    /// No judgement before the window has this many series (default 20).
    pub min_series: usize,
    /// A statistic whose p-value is below this raises drift (default 1e-4, per statistic).
    pub raise_p: f64,
    /// Drift clears when every judged statistic's p-value is above this (default 0.01).
    pub clear_p: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { window: 50, min_series: 20, raise_p: 1e-4, clear_p: 0.01 }
    }
}

/// Whether the window departs from the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The window is consistent with the reference (or too short to judge).
    Ok,
    /// The window departs from the reference beyond chance.
    Drift,
}

/// What status, metrics and the admin page show.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// The current state.
    pub state: State,
    /// Series in the window now.
    pub series: usize,
    /// Share of the window's series that alerted (0 when empty).
    pub alert_rate: f64,
    /// The reference's alert rate.
    pub expected_alert_rate: f64,
    /// Plain-language reasons of the current drift, one per departing statistic (empty when `Ok`).
    pub reasons: Vec<String>,
    /// Where the reference came from ([`Reference::source`]).
    pub reference: String,
}

/// A change of state, as [`Monitor::observe`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Drift was raised, with its reasons.
    Raised(Vec<String>),
    /// Drift cleared.
    Cleared,
}

/// One judged statistic: its p-value and, should it depart, what to say.
struct Finding {
    p: f64,
    reason: String,
}

/// Watches the most recent series against a reference; see the module documentation for the statistics.
#[derive(Debug, Clone)]
pub struct Monitor {
    reference: Reference,
    settings: Settings,
    window: VecDeque<Observation>,
    state: State,
    reasons: Vec<String>,
}

impl Monitor {
    /// A monitor with an empty window, in `Ok`. Settings are made consistent: `window` at least 1, `min_series` at most `window`
    /// (else it could never judge), `clear_p` at least `raise_p` (else there would be no hysteresis).
    pub fn new(reference: Reference, settings: Settings) -> Monitor {
        let window = settings.window.max(1);
        let Settings { min_series, raise_p, clear_p, .. } = settings;
        let settings = Settings { window, min_series: min_series.min(window), raise_p, clear_p: clear_p.max(raise_p) };
        Monitor { reference, settings, window: VecDeque::with_capacity(window), state: State::Ok, reasons: Vec::new() }
    }

    /// Adds one finished series; returns `Some(change)` when the state changes. While drifting, the reasons are recomputed so
    /// that [`Monitor::view`] stays current.
    pub fn observe(&mut self, obs: Observation) -> Option<Change> {
        self.window.push_back(obs);
        while self.window.len() > self.settings.window {
            self.window.pop_front();
        }
        self.judge()
    }

    /// What status, metrics and the admin page show.
    pub fn view(&self) -> View {
        let n = self.window.len();
        let alerts = self.window.iter().filter(|o| o.alerted).count();
        View {
            state: self.state,
            series: n,
            alert_rate: if n == 0 { 0.0 } else { alerts as f64 / n as f64 },
            expected_alert_rate: self.reference.alert_rate,
            reasons: self.reasons.clone(),
            reference: self.reference.source.clone(),
        }
    }

    /// The window's observations, oldest first, to persist across restarts (see [`Monitor::restore`]).
    pub fn recent(&self) -> Vec<Observation> {
        self.window.iter().copied().collect()
    }

    /// Puts back what was saved before a restart: the window `recent` (oldest first; the newest `window` kept) and the
    /// `state` it was in, without judging the shorter windows along the way (a replay would judge windows the running monitor
    /// never judged, and could clear or raise a drift that was not so). A drifting monitor then judges the window once, as
    /// the next series would: its reasons are recomputed, and it clears only if every statistic is back above `clear_p`.
    /// Returns the change that judgement made (only ever `Cleared`).
    pub fn restore(&mut self, recent: &[Observation], state: State) -> Option<Change> {
        let skip = recent.len().saturating_sub(self.settings.window);
        self.window = recent[skip..].iter().copied().collect();
        self.state = state;
        self.reasons.clear();
        match state {
            State::Drift => self.judge(),
            State::Ok => None,
        }
    }

    /// The reference the window is judged against.
    pub fn reference(&self) -> &Reference {
        &self.reference
    }

    /// Moves the state machine after the window changed.
    fn judge(&mut self) -> Option<Change> {
        let n = self.window.len();
        let findings = self.evaluate();
        match self.state {
            State::Ok => {
                if n < self.settings.min_series {
                    return None;
                }
                let reasons: Vec<String> = findings.into_iter().filter(|f| f.p < self.settings.raise_p).map(|f| f.reason).collect();
                if reasons.is_empty() {
                    return None;
                }
                self.state = State::Drift;
                self.reasons.clone_from(&reasons);
                Some(Change::Raised(reasons))
            }
            State::Drift => {
                // What still holds the drift: every statistic not yet back above clear_p.
                let holding: Vec<String> = findings.into_iter().filter(|f| f.p <= self.settings.clear_p).map(|f| f.reason).collect();
                if n < self.settings.min_series || holding.is_empty() {
                    self.state = State::Ok;
                    self.reasons.clear();
                    Some(Change::Cleared)
                } else {
                    self.reasons = holding;
                    None
                }
            }
        }
    }

    /// The judged statistics of the window, in a fixed order (lung HU, mean probability, alert rate: from the input to its
    /// consequence); a statistic without enough data, or whose reference is not finite, is left out. Every p-value is finite.
    fn evaluate(&self) -> Vec<Finding> {
        let r = &self.reference;
        let n = self.window.len();
        let mut findings = Vec::with_capacity(3);
        let min_values = (self.settings.min_series / 2).max(1);
        let over = if r.series > 0 { format!(" over {} series", r.series) } else { String::new() };

        let hus: Vec<f64> = self.window.iter().filter_map(|o| finite(o.lung_hu)).collect();
        let (hu_mean, hu_sd) = (r.lung_hu_mean.unwrap_or(f64::NAN), r.lung_hu_sd.unwrap_or(f64::NAN));
        if let Some((p, mean, sd)) = mean_test(&hus, hu_mean, hu_sd, HU_SD_FLOOR, min_values, r.series) {
            let (shift, reference) = (mean - hu_mean, hu_mean);
            let reason = format!("lung HU {shift:+.0} against reference ({reference:.0} ± {sd:.0} HU{over}): scanner calibration or protocol changed");
            findings.push(Finding { p, reason });
        }

        let probs: Vec<f64> = self.window.iter().filter_map(|o| finite(o.mean_prob)).collect();
        if let Some((p, mean, sd)) = mean_test(&probs, r.prob_mean, r.prob_sd, PROB_SD_FLOOR, min_values, r.series) {
            let (shift, reference) = (mean - r.prob_mean, r.prob_mean);
            let reason = format!(
                "mean slice probability {mean:.2} ({shift:+.2}) against reference {reference:.2} ± {sd:.2}: \
                 the model sees these studies differently (new scanner, protocol or population)"
            );
            findings.push(Finding { p, reason });
        }

        if n > 0 && r.alert_rate.is_finite() {
            let k = self.window.iter().filter(|o| o.alerted).count();
            let p = if r.series > 0 {
                let reference_alerts = (r.alert_rate.clamp(0.0, 1.0) * r.series as f64).round() as usize;
                fisher_p(k, n, reference_alerts.min(r.series), r.series)
            } else {
                binomial_p(k, n, r.alert_rate)
            };
            let (rate, expected) = (k as f64 / n as f64, r.alert_rate);
            let reason = format!("alert rate {rate:.2} ({k} of {n} series) against expected {expected:.2}: check the studies, the population or the scanner");
            findings.push(Finding { p, reason });
        }
        findings
    }
}

/// The value when present and finite.
fn finite(value: Option<f64>) -> Option<f64> {
    value.filter(|v| v.is_finite())
}

/// Mean and sample sd (0 for a single value); `None` when empty.
fn mean_sd(values: &[f64]) -> Option<(f64, f64)> {
    if values.is_empty() {
        return None;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return Some((mean, 0.0));
    }
    let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
    Some((mean, (ss / (n - 1.0)).sqrt()))
}

/// Two-sided normal test of the mean of `values` against `ref_mean` with standard error sd·√(1/m + 1/N) (the sd floored, 1/N
/// left out when `ref_series` is 0). Returns (p, window mean, sd used); `None` with fewer than `min_values` values or a
/// non-finite reference mean.
fn mean_test(values: &[f64], ref_mean: f64, ref_sd: f64, floor: f64, min_values: usize, ref_series: usize) -> Option<(f64, f64, f64)> {
    if values.len() < min_values || !ref_mean.is_finite() {
        return None;
    }
    let (mean, _) = mean_sd(values)?;
    let sd = if ref_sd.is_finite() { ref_sd.max(floor) } else { floor };
    let reference_term = if ref_series > 0 { 1.0 / ref_series as f64 } else { 0.0 };
    let se = sd * (1.0 / values.len() as f64 + reference_term).sqrt();
    let z = (mean - ref_mean) / se;
    Some((erfc(z.abs() / std::f64::consts::SQRT_2), mean, sd))
}

/// Exact two-sided binomial p-value of `k` successes in `n` trials at rate `p0` (clamped into [1e-6, 1 − 1e-6]): the total
/// probability of the outcomes no more likely than `k`.
fn binomial_p(k: usize, n: usize, p0: f64) -> f64 {
    let p0 = if p0.is_nan() { 0.5 } else { p0.clamp(RATE_CLAMP, 1.0 - RATE_CLAMP) };
    let (lp, lq) = (p0.ln(), (1.0 - p0).ln());
    let log_pmf = |i: usize| ln_choose(n, i) + i as f64 * lp + (n - i) as f64 * lq;
    two_sided(0, n, log_pmf, k.min(n))
}

/// Fisher's exact two-sided p-value for `k` of `n` window series against `reference_alerts` of `reference_series`: the
/// hypergeometric probability, given all the margins, of the splits no more likely than the one seen.
fn fisher_p(k: usize, n: usize, reference_alerts: usize, reference_series: usize) -> f64 {
    let total = n + reference_series;
    let alerts = k.min(n) + reference_alerts.min(reference_series);
    let quiet = total - alerts;
    let log_total = ln_choose(total, n);
    let log_pmf = |x: usize| ln_choose(alerts, x) + ln_choose(quiet, n - x) - log_total;
    two_sided(n.saturating_sub(quiet), alerts.min(n), log_pmf, k.min(n))
}

/// Sum of exp(log_pmf(i)) over `lo..=hi` for the outcomes whose log-probability is at most the observed one's (with a small
/// relative tolerance for ties), summed in log space so that no term over- or underflows before it matters.
fn two_sided(lo: usize, hi: usize, log_pmf: impl Fn(usize) -> f64, observed: usize) -> f64 {
    let cut = log_pmf(observed) + TIE_TOLERANCE;
    let terms: Vec<f64> = (lo..=hi).map(&log_pmf).filter(|&l| l <= cut).collect();
    let top = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return 1.0;
    }
    let sum: f64 = terms.iter().map(|l| (l - top).exp()).sum();
    (top + sum.ln()).exp().clamp(0.0, 1.0)
}

/// ln C(n, k), for k ≤ n.
fn ln_choose(n: usize, k: usize) -> f64 {
    ln_gamma(n as f64 + 1.0) - ln_gamma(k as f64 + 1.0) - ln_gamma((n - k) as f64 + 1.0)
}

/// ln Γ(x) for x ≥ 0.5 (Lanczos, g = 7, nine coefficients; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let a = C.iter().enumerate().skip(1).fold(C[0], |acc, (i, c)| acc + c / (x + i as f64));
    let t = x + G + 0.5;
    0.5 * (2.0 * PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The complementary error function, to near double precision: a positive-term series for erf below 2, Lentz's continued
/// fraction from 2 on, erfc(−x) = 2 − erfc(x).
fn erfc(x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    if x.is_nan() {
        return f64::NAN;
    }
    if x < 0.0 {
        return 2.0 - erfc(-x);
    }
    if x < 2.0 {
        // erf(x) = 2/√π · e^(−x²) · Σ 2ⁿ x^(2n+1) / (1·3···(2n+1)).
        let mut term = x;
        let mut sum = x;
        for n in 1..200 {
            term *= 2.0 * x * x / f64::from(2 * n + 1);
            sum += term;
            if term <= sum * 1e-17 {
                break;
            }
        }
        return 1.0 - 2.0 / PI.sqrt() * (-x * x).exp() * sum;
    }
    // erfc(x) = e^(−x²)/√π / (x + ½/(x + 1/(x + (3/2)/(x + ...)))), evaluated by the modified Lentz method.
    let (mut f, mut c, mut d) = (x, x, 0.0_f64);
    for n in 1..1000 {
        let a = f64::from(n) / 2.0;
        d = x + a * d;
        d = if d.abs() < TINY { 1.0 / TINY } else { 1.0 / d };
        c = x + a / c;
        if c.abs() < TINY {
            c = TINY;
        }
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() < 1e-16 {
            break;
        }
    }
    (-x * x).exp() / (f * PI.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64 with Box–Muller normals: deterministic, no crates.
    struct Rng(u64);

    impl Rng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        /// Uniform in (0, 1).
        fn uniform(&mut self) -> f64 {
            ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u1, u2) = (self.uniform(), self.uniform());
            (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
        }
    }

    /// The population series are drawn from.
    #[derive(Clone, Copy)]
    struct Population {
        alert: f64,
        prob: f64,
        prob_sd: f64,
        hu: f64,
        hu_sd: f64,
    }

    const NORMAL: Population = Population { alert: 0.15, prob: 0.2, prob_sd: 0.05, hu: -820.0, hu_sd: 40.0 };

    fn draw(rng: &mut Rng, pop: Population) -> Observation {
        Observation {
            alerted: rng.uniform() < pop.alert,
            mean_prob: Some((pop.prob + pop.prob_sd * rng.normal()).clamp(0.0, 1.0)),
            lung_hu: Some(pop.hu + pop.hu_sd * rng.normal()),
        }
    }

    fn reference() -> Reference {
        Reference { alert_rate: 0.15, prob_mean: 0.2, prob_sd: 0.05, lung_hu_mean: Some(-820.0), lung_hu_sd: Some(40.0), series: 200, source: "test reference".to_string() }
    }

    /// Feeds `count` series from `pop`; returns (index, change) of every change.
    fn feed(monitor: &mut Monitor, rng: &mut Rng, pop: Population, count: usize) -> Vec<(usize, Change)> {
        (0..count).filter_map(|i| monitor.observe(draw(rng, pop)).map(|c| (i, c))).collect()
    }

    fn close(actual: f64, expected: f64, relative: f64) -> bool {
        ((actual - expected) / expected).abs() < relative
    }

    #[test]
    fn erfc_known_values() {
        assert_eq!(erfc(0.0), 1.0);
        for (x, want) in [
            (0.5, 0.479_500_122_186_953_5),
            (1.0, 0.157_299_207_050_285_13),
            (2.0, 0.004_677_734_981_047_266),
            (3.0, 2.209_049_699_858_544e-5),
            (4.0, 1.541_725_790_028_002e-8),
            (-1.0, 1.842_700_792_949_714_8),
            (10.0, 2.088_487_583_762_545e-45),
        ] {
            assert!(close(erfc(x), want, 1e-9), "erfc({x}) = {} want {want}", erfc(x));
        }
        assert!((ln_gamma(10.0) - 362_880f64.ln()).abs() < 1e-12);
        assert!(ln_gamma(1.0).abs() < 1e-14 && ln_gamma(2.0).abs() < 1e-14);
    }

    #[test]
    fn binomial_p_values() {
        assert!(binomial_p(5, 50, 0.1) > 0.5);
        assert!(binomial_p(31, 50, 0.1) < 1e-10);
        assert!((binomial_p(25, 50, 0.5) - 1.0).abs() < 1e-12);
        // Mirror images give the same p-value, and a fair coin's tails are symmetric.
        assert!(close(binomial_p(12, 50, 0.3), binomial_p(38, 50, 0.7), 1e-9));
        assert!(close(binomial_p(18, 50, 0.5), binomial_p(32, 50, 0.5), 1e-9));
        // 2 · P(X ≤ 1) for X ~ Bin(10, 0.5) = 2 · 11/1024.
        assert!(close(binomial_p(1, 10, 0.5), 22.0 / 1024.0, 1e-9));
        // Thousands of series work in log space (values from exact rational arithmetic).
        assert!((binomial_p(450, 3000, 0.15) - 1.0).abs() < 1e-9);
        assert!(close(binomial_p(600, 3000, 0.15), 1.892_530_733_613_788_4e-13, 1e-9));
        assert!(close(binomial_p(31, 50, 0.1), 4.395_749_473_033_231e-19, 1e-9));
        assert!(close(binomial_p(12, 50, 0.3), 0.440_672_723_276_743_67, 1e-9));
        // An impossible rate is clamped, not a division by zero.
        assert!(binomial_p(1, 50, 0.0) < 1e-4 && binomial_p(0, 50, 0.0) > 0.99);
        // Fisher: all 3 alerts in the window of 50, none in 30 reference series: (C(50,3) + C(30,3)) / C(80,3), the splits
        // (3, 0) and (0, 3) being no more likely than the one seen; large references tend to the binomial test.
        assert!(close(fisher_p(3, 50, 0, 30), (19_600.0 + 4_060.0) / 82_160.0, 1e-9));
        assert!(close(fisher_p(12, 50, 15_000, 100_000), binomial_p(12, 50, 0.15), 0.02));
    }

    #[test]
    fn no_false_drift_in_distribution() {
        let mut smallest = 1.0_f64;
        for seed in 1..=5u64 {
            let mut rng = Rng(seed * 0x1234_5678);
            let mut monitor = Monitor::new(reference(), Settings::default());
            for i in 0..1000 {
                let change = monitor.observe(draw(&mut rng, NORMAL));
                assert_eq!(change, None, "seed {seed} series {i}: {:?}", monitor.view().reasons);
                if monitor.view().series >= 20 {
                    smallest = monitor.evaluate().iter().map(|f| f.p).fold(smallest, f64::min);
                }
            }
            assert_eq!(monitor.view().state, State::Ok);
        }
        // Over these 5 × 1,000 series the smallest p-value is about 6.5e-4 (seeds as here), well above raise_p = 1e-4.
        eprintln!("smallest p {smallest:e}");
        assert!(smallest > 1e-4, "smallest p {smallest}");
    }

    #[test]
    fn hu_shift_raises_and_clears() {
        let mut rng = Rng(42);
        let mut monitor = Monitor::new(reference(), Settings::default());
        assert!(feed(&mut monitor, &mut rng, NORMAL, 60).is_empty());
        let shifted = Population { hu: NORMAL.hu + 140.0, ..NORMAL };
        let changes = feed(&mut monitor, &mut rng, shifted, 25);
        let Some((at, Change::Raised(reasons))) = changes.first().cloned() else { panic!("no drift raised: {changes:?}") };
        assert!(at < 25);
        assert!(reasons.iter().any(|r| r.starts_with("lung HU +")), "{reasons:?}");
        assert!(reasons.iter().all(|r| !r.contains("alert rate")), "{reasons:?}");
        let view = monitor.view();
        assert_eq!(view.state, State::Drift);
        assert!(view.reasons.iter().any(|r| r.contains("lung HU +") && r.contains("(-820 ± 40 HU over 200 series)")), "{:?}", view.reasons);
        let window = Settings::default().window;
        let changes = feed(&mut monitor, &mut rng, NORMAL, window + 10);
        assert_eq!(changes.iter().map(|(_, c)| c.clone()).collect::<Vec<_>>(), vec![Change::Cleared], "{changes:?}");
        assert_eq!(monitor.view().state, State::Ok);
        assert!(monitor.view().reasons.is_empty());
    }

    #[test]
    fn alert_rate_rise_raises() {
        let mut rng = Rng(7);
        let mut monitor = Monitor::new(reference(), Settings::default());
        assert!(feed(&mut monitor, &mut rng, NORMAL, 60).is_empty());
        let changes = feed(&mut monitor, &mut rng, Population { alert: 0.6, ..NORMAL }, 60);
        let Some((_, Change::Raised(reasons))) = changes.first().cloned() else { panic!("no drift raised: {changes:?}") };
        assert!(reasons.iter().any(|r| r.starts_with("alert rate ") && r.contains("against expected 0.15")), "{reasons:?}");
    }

    #[test]
    fn probability_shift_raises() {
        let mut rng = Rng(11);
        let mut monitor = Monitor::new(reference(), Settings::default());
        assert!(feed(&mut monitor, &mut rng, NORMAL, 60).is_empty());
        let changes = feed(&mut monitor, &mut rng, Population { prob: NORMAL.prob + 0.15, ..NORMAL }, 30);
        let Some((_, Change::Raised(reasons))) = changes.first().cloned() else { panic!("no drift raised: {changes:?}") };
        assert!(reasons.iter().any(|r| r.starts_with("mean slice probability ") && r.contains("against reference 0.20 ± 0.05")), "{reasons:?}");
    }

    #[test]
    fn never_before_min_series() {
        let wild = Observation { alerted: true, mean_prob: Some(0.95), lung_hu: Some(-200.0) };
        let mut monitor = Monitor::new(reference(), Settings::default());
        for _ in 0..19 {
            assert_eq!(monitor.observe(wild), None);
        }
        assert_eq!(monitor.view().state, State::Ok);
        assert!(matches!(monitor.observe(wild), Some(Change::Raised(r)) if r.len() == 3));
    }

    #[test]
    fn missing_values_are_tolerated() {
        let mut rng = Rng(3);
        let mut monitor = Monitor::new(reference(), Settings::default());
        let blank = |o: Observation| Observation { mean_prob: None, lung_hu: None, ..o };
        for _ in 0..300 {
            assert_eq!(monitor.observe(blank(draw(&mut rng, NORMAL))), None);
            assert!(monitor.evaluate().len() <= 1);
        }
        // Fewer than min_series / 2 values in the window: the wild HU and probability are not judged, the alert rate is.
        let wild = Observation { alerted: true, mean_prob: Some(0.99), lung_hu: Some(0.0) };
        let changes: Vec<Change> = (0..30).filter_map(|i| monitor.observe(if i % 4 == 0 { wild } else { blank(wild) })).collect();
        let [Change::Raised(reasons)] = changes.as_slice() else { panic!("{changes:?}") };
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("alert rate "));
        // Non-finite values count as missing.
        let _ = monitor.observe(Observation { alerted: false, mean_prob: Some(f64::NAN), lung_hu: Some(f64::INFINITY) });
        assert!(monitor.evaluate().iter().all(|f| f.p.is_finite()));
    }

    #[test]
    fn small_commissioning_run_without_alerts_does_not_drift_on_rare_alerts() {
        // 0 alerts in 30 commissioning series: a binomial test against a clamped rate of 1e-6 would raise on the first alert.
        let reference = Reference { alert_rate: 0.0, series: 30, ..reference() };
        let mut rng = Rng(99);
        let mut monitor = Monitor::new(reference, Settings::default());
        assert!(feed(&mut monitor, &mut rng, Population { alert: 0.03, ..NORMAL }, 500).is_empty());
    }

    #[test]
    fn restore_puts_back_the_window_and_the_state_as_they_were() {
        let mut rng = Rng(5);
        let mut seq: Vec<Observation> = (0..40).map(|_| draw(&mut rng, NORMAL)).collect();
        seq.extend((0..17).map(|_| draw(&mut rng, Population { hu: -680.0, ..NORMAL })));
        let mut fed = Monitor::new(reference(), Settings::default());
        for &o in &seq {
            let _ = fed.observe(o);
        }
        assert_eq!(fed.view().state, State::Drift);
        let mut restored = Monitor::new(reference(), Settings::default());
        assert_eq!(restored.restore(&seq, State::Drift), None);
        assert_eq!(restored.view(), fed.view());
        assert_eq!(restored.recent(), fed.recent());
        assert_eq!(restored.recent().len(), 50);
        assert_eq!(restored.recent().last(), seq.last());
        // A drift held by hysteresis (p between raise_p and clear_p) stays raised after a restart, where a replay from an
        // empty window would have lost it: the HU shift small enough that no window reaches raise_p, large enough to hold.
        // +20 HU over 50 series against 40 HU between series: z = 3.2, p = 0.0016.
        let held: Vec<Observation> = (0..50).map(|i| Observation { alerted: i % 7 == 0, mean_prob: Some(0.2), lung_hu: Some(if i % 2 == 0 { -795.0 } else { -805.0 }) }).collect();
        let mut m = Monitor::new(reference(), Settings::default());
        assert_eq!(m.restore(&held, State::Drift), None, "p for a +20 HU shift over 50 series is below clear_p");
        assert_eq!(m.view().state, State::Drift);
        assert_eq!(m.view().reasons.len(), 1, "{:?}", m.view().reasons);
        assert!(m.view().reasons[0].starts_with("lung HU +20"), "{:?}", m.view().reasons);
        let mut replayed = Monitor::new(reference(), Settings::default());
        held.iter().for_each(|&o| drop(replayed.observe(o)));
        assert_eq!(replayed.view().state, State::Ok, "fed from empty, the same series never raise");
        // A short history cannot be judged: a drifting monitor restored with it is Ok, and says so.
        assert_eq!(restored.restore(&seq[..5], State::Drift), Some(Change::Cleared));
        assert_eq!(restored.view().series, 5);
        assert!(restored.view().reasons.is_empty());
        // An Ok state is restored as Ok, even on a window that would raise if judged (no news at start-up).
        assert_eq!(restored.restore(&seq, State::Ok), None);
        assert_eq!(restored.view().state, State::Ok);
    }

    #[test]
    fn an_observation_is_the_mean_of_its_scored_slices() {
        let o = Observation::of(true, [(0.2, Some(-800.0)), (0.4, None), (0.6, Some(-820.0))]);
        assert!(o.alerted);
        assert!((o.mean_prob.unwrap() - 0.4).abs() < 1e-12 && (o.lung_hu.unwrap() - -810.0).abs() < 1e-12);
        assert_eq!(Observation::of(false, []), Observation { alerted: false, mean_prob: None, lung_hu: None });
    }

    #[test]
    fn reference_from_observations() {
        let obs = [
            Observation { alerted: true, mean_prob: Some(0.1), lung_hu: Some(-800.0) },
            Observation { alerted: false, mean_prob: Some(0.3), lung_hu: Some(-840.0) },
            Observation { alerted: false, mean_prob: Some(0.2), lung_hu: None },
            Observation { alerted: false, mean_prob: None, lung_hu: Some(-860.0) },
        ];
        let r = Reference::from_observations(&obs, "commission test").expect("reference");
        assert!((r.alert_rate - 0.25).abs() < 1e-12);
        assert!((r.prob_mean - 0.2).abs() < 1e-12 && (r.prob_sd - 0.1).abs() < 1e-12);
        assert!((r.lung_hu_mean.unwrap() - -833.333_333_333_333_3).abs() < 1e-9);
        assert!((r.lung_hu_sd.unwrap() - 30.550_504_633_038_93).abs() < 1e-9);
        assert_eq!((r.series, r.source.as_str()), (4, "commission test"));
        let same = [Observation { alerted: false, mean_prob: Some(0.2), lung_hu: Some(-820.0) }; 10];
        let r = Reference::from_observations(&same, "same").expect("reference");
        assert_eq!((r.prob_sd, r.lung_hu_sd), (PROB_SD_FLOOR, Some(HU_SD_FLOOR)));
        assert!(Reference::from_observations(&[], "empty").is_err());
        let no_hu = [Observation { alerted: false, mean_prob: Some(0.2), lung_hu: None }; 30];
        let r = Reference::from_observations(&no_hu, "no hu").expect("a model without a lung mask still gets a reference");
        assert_eq!((r.lung_hu_mean, r.lung_hu_sd), (None, None));
        let mut m = Monitor::new(r, Settings::default());
        assert!(no_hu.iter().all(|&o| m.observe(o).is_none()), "HU is not judged, the rest is");
    }

    #[test]
    fn settings_default_and_sanitised() {
        assert_eq!(Settings::default(), Settings { window: 50, min_series: 20, raise_p: 1e-4, clear_p: 0.01 });
        let monitor = Monitor::new(reference(), Settings { window: 0, min_series: 9, raise_p: 0.05, clear_p: 0.01 });
        assert_eq!(monitor.settings, Settings { window: 1, min_series: 1, raise_p: 0.05, clear_p: 0.05 });
        assert_eq!(monitor.view().alert_rate, 0.0);
        assert_eq!(monitor.reference().source, "test reference");
    }
}
