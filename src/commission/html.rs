//! The commissioning report: one self-contained HTML file (no scripts, no external resources;
//! the ROC curve and the histograms are inline SVG) that an admin can open from a USB stick or
//! attach to the site's acceptance record.

use std::fmt::Write;

use super::{Commission, Interval};
use crate::decide::Verdict;

use crate::output::html_escape as esc;

fn ci(i: &Interval, digits: usize, scale: f64) -> String {
    match (i.value, i.low, i.high) {
        (Some(v), Some(l), Some(h)) => format!("{:.digits$} <small>({:.digits$}–{:.digits$})</small>", v * scale, l * scale, h * scale),
        _ => "n/a".into(),
    }
}

/// The ROC curve of `(probability, label)` pairs as an SVG, with the operating threshold marked.
fn roc_svg(scores: &[(f64, bool)], threshold: f64, auc: Option<f64>) -> String {
    let curve = crate::eval::roc(scores);
    let (w, h, m) = (320.0, 320.0, 36.0);
    let px = |fpr: f64, tpr: f64| (m + fpr * (w - 2.0 * m), h - m - tpr * (h - 2.0 * m));
    let mut s = format!("<svg class=\"roc\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"slice ROC curve\">");
    let (x0, y0) = px(0.0, 0.0);
    let (x1, y1) = px(1.0, 1.0);
    let _ = write!(s, "<rect x=\"{x0}\" y=\"{y1}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>", x1 - x0, y0 - y1);
    let _ = write!(s, "<line x1=\"{x0}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y1}\" stroke=\"#ccc\" stroke-dasharray=\"4 4\"/>");
    if !curve.is_empty() {
        let pts: Vec<String> = curve.iter().map(|p| px(p.fpr, p.tpr)).map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let _ = write!(s, "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2\"/>", pts.join(" "));
        let t = crate::eval::table::table(scores, threshold);
        if let (Some(sens), Some(spec)) = (t.sensitivity, t.specificity) {
            let (x, y) = px(1.0 - spec, sens);
            let _ = write!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#c62828\"><title>threshold {threshold:.4}</title></circle>");
        }
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">false-positive rate (slices)</text><text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\" font-size=\"12\">sensitivity</text>",
        w / 2.0,
        h - 8.0,
        h / 2.0,
        h / 2.0
    );
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" font-size=\"13\">AUC {}</text></svg>", x0 + 110.0, y0 - 12.0, auc.map(|a| format!("{a:.3}")).unwrap_or_else(|| "n/a".into()));
    s
}

/// Histograms of the series' largest slice probability, positive and negative series apart, with
/// the threshold as a line.
fn histogram_svg(c: &Commission) -> String {
    const BINS: usize = 20;
    let count = |label: bool| {
        let mut h = [0usize; BINS];
        for r in c.rows.iter().filter(|r| r.label == label) {
            h[((r.max_prob * BINS as f64) as usize).min(BINS - 1)] += 1;
        }
        h
    };
    let (pos, neg) = (count(true), count(false));
    let top = pos.iter().chain(&neg).copied().max().unwrap_or(0).max(1) as f64;
    let (w, h, m) = (420.0, 240.0, 30.0);
    let bw = (w - 2.0 * m) / BINS as f64;
    let mut s = format!("<svg class=\"hist\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"largest slice probability per series\">");
    for (i, (&p, &n)) in pos.iter().zip(&neg).enumerate() {
        let x = m + i as f64 * bw;
        for (k, colour, dx) in [(n, "#1f5fbf", 0.0), (p, "#c62828", bw / 2.0)] {
            let bh = k as f64 / top * (h - 2.0 * m);
            let _ = write!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"{colour}\"><title>{k} series</title></rect>",
                x + dx,
                h - m - bh,
                bw / 2.0 - 1.0
            );
        }
    }
    let tx = m + c.threshold * (w - 2.0 * m);
    let _ = write!(s, "<line x1=\"{tx:.1}\" y1=\"{}\" x2=\"{tx:.1}\" y2=\"{}\" stroke=\"#000\" stroke-dasharray=\"3 3\"/>", m / 2.0, h - m);
    let _ = write!(
        s,
        "<line x1=\"{m}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#888\"/><text x=\"{m}\" y=\"{}\" font-size=\"11\">0</text><text x=\"{}\" y=\"{}\" font-size=\"11\">1</text>",
        h - m,
        w - m,
        h - m,
        h - m + 14.0,
        w - m - 6.0,
        h - m + 14.0
    );
    let _ = write!(s, "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"12\">largest slice probability of the series (threshold dashed)</text>", w / 2.0, h - 4.0);
    let _ = write!(s, "<text x=\"{}\" y=\"14\" font-size=\"12\" fill=\"#c62828\">■ positive series ({})</text>", m, c.positive_series);
    let _ = write!(s, "<text x=\"{}\" y=\"14\" font-size=\"12\" fill=\"#1f5fbf\">■ negative series ({})</text></svg>", m + 170.0, c.negative_series);
    s
}

/// The report page.
pub fn report(c: &Commission) -> String {
    let mut h = String::new();
    let colour = if !c.within_claims {
        "#c62828"
    } else if c.claims.is_empty() || !c.unmeasured.is_empty() || c.few_series {
        "#b26a00"
    } else {
        "#2e7d32"
    };
    let banner = esc(&c.verdict_text());
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>ctsentry commissioning {id}</title><style>\
body{{font-family:sans-serif;margin:24px;color:#222}}table{{border-collapse:collapse;margin:8px 0 16px}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
th{{background:#f2f2f2}}td.l,th.l{{text-align:left}}.banner{{color:#fff;padding:10px 16px;font-size:20px;font-weight:bold}}small{{color:#666}}\
tr.miss td{{background:#fdecea}}.figs{{display:flex;gap:24px;flex-wrap:wrap}}</style></head><body>\
<h1>ctsentry commissioning run {id}</h1><div class=\"banner\" style=\"background:{colour}\">{banner}</div>",
        id = esc(&c.run_id)
    );
    let _ = write!(
        h,
        "<p>{} series ({} positive, {} negative) and {} labelled slices, scored as the daemon scores them: model <b>{} {}</b> (sha256 {}), engine <b>{} {}</b>, \
slice threshold <b>{:.4}</b> ({}), series rule {}.</p>",
        c.series,
        c.positive_series,
        c.negative_series,
        c.slices,
        esc(&c.model.name),
        esc(&c.model.version),
        esc(&c.model.sha256),
        esc(&c.engine),
        esc(&c.precision),
        c.threshold,
        esc(&c.threshold_source),
        esc(&c.series_rule)
    );
    if c.few_series {
        let _ = write!(
            h,
            "<p><b>Only {} series ({} positive, {} negative):</b> the intervals are too wide to tell a box that meets its claims from one that does not; \
commission on {} or more, {} or more of each.</p>",
            c.series,
            c.positive_series,
            c.negative_series,
            super::ENOUGH_SERIES,
            super::ENOUGH_OF_EACH
        );
    }
    for f in &c.failed_series {
        let _ = write!(h, "<p><b>Not scored:</b> {}</p>", esc(f));
    }
    if c.series_in_training > 0 {
        let _ = write!(h, "<p><b>Warning:</b> {} of these series were trained on by this model; their results are not evidence.</p>", c.series_in_training);
    }
    if !c.skipped_files.is_empty() {
        let _ = write!(h, "<p><b>{} labelled file(s) could not be read</b> and are not counted (series.csv lists what was).</p>", c.skipped_files.len());
    }
    h += "<h2>Results and the manifest's claims (95 % intervals)</h2><table><tr><th class=\"l\">measure</th><th>here</th><th>claimed</th><th class=\"l\">judged</th></tr>";
    let claim = |name: &str| c.claims.iter().find(|k| k.name == name);
    for (name, label, measured, digits, scale) in [
        ("series_sensitivity", "series sensitivity", c.sensitivity, 3, 1.0),
        ("series_specificity", "series specificity", c.specificity, 3, 1.0),
        ("false_alerts_per_100", "false alerts per 100 negative series", c.false_alerts_per_100, 1, 1.0),
        ("slice_auc", "slice AUC", c.slice_auc_interval, 3, 1.0),
    ] {
        let (claimed, judged, miss) = match claim(name) {
            Some(k) => (
                ci(&k.claimed, digits, scale),
                match k.within {
                    Some(true) => "within",
                    Some(false) => "<b>outside</b>",
                    None => "not measured here",
                },
                k.within == Some(false),
            ),
            None => ("no claim".into(), "–", false),
        };
        let _ = write!(
            h,
            "<tr{}><td class=\"l\">{label}</td><td>{}</td><td>{claimed}</td><td class=\"l\">{judged}</td></tr>",
            if miss { " class=\"miss\"" } else { "" },
            ci(&measured, digits, scale)
        );
    }
    let _ = write!(
        h,
        "</table><p><small>Claims from: {}. Within = the two 95 % intervals overlap on the side that matters. \
The slice AUC's interval treats slices as independent; slices of one series are not, so it is too narrow.</small></p>",
        esc(c.claims_provenance.trim_end_matches('.'))
    );
    let _ = write!(
        h,
        "<div class=\"figs\"><div><h3>Slice ROC (red: the threshold)</h3>{}</div><div><h3>Series</h3>{}</div></div>",
        roc_svg(&c.slice_scores, c.threshold, c.slice_auc),
        histogram_svg(c)
    );
    h += "<h2>Operating points (series level, the rule's other conditions unchanged)</h2><table><tr><th>threshold</th><th>sensitivity</th><th>specificity</th><th>false alerts / 100</th></tr>";
    for p in &c.operating_points {
        let now = (p.threshold - c.threshold).abs() < 1e-9;
        let _ = write!(
            h,
            "<tr><td>{:.4}{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.threshold,
            if now { " (in force)" } else { "" },
            ci(&p.sensitivity, 3, 1.0),
            ci(&p.specificity, 3, 1.0),
            p.false_alerts_per_100.map(|f| format!("{f:.1}")).unwrap_or_else(|| "n/a".into())
        );
    }
    let _ = write!(
        h,
        "</table><p>To run this box at another operating point, an admin sets it in <code>/etc/ctsentry/ctsentry.toml</code> with who chose it, when, and from which run; \
every result, <code>ctsentry status</code> and the admin's page then show it:</p><pre>[decision]\nthreshold = 0.30\nthreshold_provenance = \"chosen by NAME on DATE from commission run {}\"</pre>",
        esc(&c.run_id)
    );
    if let Some(r) = &c.reference {
        let _ = write!(
            h,
            "<h2>Drift reference measured here</h2><p>alert rate {:.2}, mean slice probability {:.3} ± {:.3}, {} over {} series (<code>reference.toml</code>; \
set <code>[drift] reference</code> to it so that the daemon compares its recent series with this site's, not the manifest's).</p>",
            r.alert_rate,
            r.prob_mean,
            r.prob_sd,
            match (r.lung_hu_mean, r.lung_hu_sd) {
                (Some(m), Some(sd)) => format!("lung {m:.0} ± {sd:.0} HU"),
                _ => "no lung HU (the model masks no lungs)".into(),
            },
            r.series
        );
    }
    if let Some(p) = &c.parity {
        let _ = write!(
            h,
            "<h2>Precision parity: {} against f32 on these studies</h2><p><b>{}</b>. {} of {} slice decisions differ (each precision at the threshold it runs with). \
Measured and bounded as the model's own int8 record; where it is within, this site may name <code>engine.precision = \"{}\"</code> in the config.</p>",
            esc(&c.precision),
            esc(&p.status()),
            p.decisions_flipped.unwrap_or(0),
            p.slices,
            esc(&c.precision)
        );
        if !c.parity_verdicts_differ.is_empty() {
            h += "<ul>";
            for d in &c.parity_verdicts_differ {
                let _ = write!(h, "<li>verdict differs: {}</li>", esc(d));
            }
            h += "</ul>";
        }
    }
    for f in &c.parity_failed {
        let _ = write!(h, "<p><b>Not compared at f32</b> (the parity above leaves it out): {}</p>", esc(f));
    }
    if let Some(n) = &c.parity_note {
        let _ = write!(h, "<h2>Precision parity</h2><p>Not measured: {}.</p>", esc(n));
    }
    h += "<h2>Series</h2><table><tr><th class=\"l\">key</th><th class=\"l\">Series Instance UID</th><th>label</th><th>verdict</th><th>slices</th><th>positive</th><th>extent mm</th><th>share</th><th>max prob</th><th>mean prob</th><th>lung HU</th></tr>";
    for r in &c.rows {
        let alerted = r.verdict == Verdict::Positive;
        let _ = write!(
            h,
            "<tr{}><td class=\"l\">{}</td><td class=\"l\">{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.3}</td><td>{}</td><td>{}</td></tr>",
            if alerted != r.label { " class=\"miss\"" } else { "" },
            esc(&r.series_key),
            esc(&r.series_uid),
            if r.trained_on { " <small>(trained on)</small>" } else { "" },
            if r.label { "positive" } else { "negative" },
            if alerted { "ALERT" } else { "quiet" },
            r.slices,
            r.positives,
            r.positive_extent_mm.map(|e| format!("{e:.0}")).unwrap_or_else(|| "?".into()),
            r.positive_share,
            r.max_prob,
            r.mean_prob.map(|p| format!("{p:.3}")).unwrap_or_else(|| "–".into()),
            r.lung_hu.map(|v| format!("{v:.0}")).unwrap_or_else(|| "–".into())
        );
    }
    h += "</table><p><small>ctsentry is a triage aid, not a diagnostic device. This report shows Series Instance UIDs, no patient names.</small></p></body></html>\n";
    h
}
