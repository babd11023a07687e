//! The admin's page: a read-only HTML view of the daemon's status snapshot (the LEDs as the box
//! shows them, faults, work, the latched alert and the last verdicts with their heat maps, the
//! model, engine, precision, operating point and drift), served by the metrics server at `/`,
//! and the heat-map files it shows. No JavaScript: the page reloads itself every
//! [`REFRESH_SECONDS`]; blinking lamps blink by CSS.
//!
//! Files: only `results/<series id>/heatmaps/<name>.png` can be read through [`heatmap_file`],
//! by names made only of letters, digits, `.`, `_` and `-`, and only where the resolved path
//! stays inside the results folder (no `..`, no symbolic link out of it).

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::alert::led::{Lamp, LedState};
use crate::alert::FaultKind;
use crate::status::Snapshot;

/// Seconds between the page's own reloads.
pub const REFRESH_SECONDS: u32 = 5;
/// Heat maps shown per series at most.
pub const MAX_HEATMAPS: usize = 6;
/// A snapshot older than this means the control loop is not writing it.
pub const STALE_SECONDS: f64 = 30.0;

/// Where the page finds what it shows.
#[derive(Debug, Clone)]
pub struct Site {
    /// The state folder (`status.json`).
    pub state: PathBuf,
    /// The results folder (heat maps).
    pub results: PathBuf,
}

fn esc(s: &str) -> String {
    crate::output::html_escape(s)
}

/// The lamps a snapshot stands for: green, red, amber (as `alert::led` lights them).
pub fn lamps(snap: &Snapshot, now: f64) -> [Lamp; 3] {
    let running = now - snap.updated < STALE_SECONDS;
    let faults: Vec<FaultKind> = FaultKind::ALL.into_iter().filter(|k| snap.faults.iter().any(|f| f == k.name())).collect();
    let drift = snap.drift.as_ref().is_some_and(|d| d.state == "drift");
    LedState::of(running, snap.scoring > 0, snap.latched.is_some(), snap.degraded, drift, faults).lamps()
}

/// The heat maps of a series (`results/<series id>/heatmaps/*.png`), by name, at most `max`.
pub fn heatmaps_of(results: &Path, series_uid: &str, max: usize) -> Vec<String> {
    let id = crate::alert::series_id(series_uid, 1);
    let Ok(dir) = std::fs::read_dir(results.join(&id).join("heatmaps")) else { return Vec::new() };
    let mut names: Vec<String> = dir.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).filter(|n| safe_name(n) && n.ends_with(".png")).collect();
    names.sort();
    names.truncate(max);
    names.into_iter().map(|n| format!("/heatmaps/{id}/{n}")).collect()
}

/// A path component the page may serve: letters, digits, `.`, `_`, `-`, not starting with a dot.
fn safe_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && !n.starts_with('.') && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// The file behind `/heatmaps/<series id>/<name>.png`, or None when the request names anything
/// else (other folders, other kinds of file, a way out of the results folder).
pub fn heatmap_file(results: &Path, request_path: &str) -> Option<PathBuf> {
    let rest = request_path.strip_prefix("/heatmaps/")?;
    let (id, name) = rest.split_once('/')?;
    if !safe_name(id) || !safe_name(name) || !name.ends_with(".png") {
        return None;
    }
    let path = results.join(id).join("heatmaps").join(name);
    let (root, real) = (results.canonicalize().ok()?, path.canonicalize().ok()?);
    (real.starts_with(&root) && real.is_file()).then_some(real)
}

fn lamp_html(name: &str, colour: &str, lamp: Lamp) -> String {
    let (class, word) = match lamp {
        Lamp::Off => ("off", "off"),
        Lamp::On => ("on", "on"),
        Lamp::Blink => ("blink", "blinking"),
    };
    format!("<div class=\"lamp\"><span class=\"led {class}\" style=\"--c:{colour}\" data-led=\"{name}\" data-state=\"{word}\"></span>{name} <small>{word}</small></div>")
}

fn ago(now: f64, t: f64) -> String {
    let s = (now - t).max(0.0);
    if s < 120.0 {
        format!("{s:.0} s ago")
    } else if s < 7200.0 {
        format!("{:.0} min ago", s / 60.0)
    } else {
        format!("{:.1} h ago", s / 3600.0)
    }
}

/// The page for `snap` (None: the daemon has not written a snapshot yet) at time `now`.
pub fn render(snap: Option<&Snapshot>, site: &Site, now: f64) -> String {
    let mut h = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\"><title>ctsentry</title><style>\
body{{font-family:sans-serif;margin:20px;color:#222;max-width:1100px}}h1{{margin:0 0 8px}}section{{margin:14px 0}}\
.lamps{{display:flex;gap:28px;font-size:18px}}.led{{display:inline-block;width:22px;height:22px;border-radius:50%;margin-right:6px;vertical-align:middle;border:2px solid #555}}\
.led.on{{background:var(--c)}}.led.off{{background:#ddd}}.led.blink{{background:var(--c);animation:b 1s steps(1) infinite}}@keyframes b{{50%{{background:#ddd}}}}\
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}th{{background:#f2f2f2}}.alert{{border:3px solid #c62828;padding:10px}}\
.drift{{border:3px solid #e69a00;padding:10px}}img.hm{{width:224px;height:auto;margin:4px;border:1px solid #999}}small{{color:#666}}</style></head><body><h1>ctsentry</h1>"
    );
    let Some(s) = snap else {
        h += "<p><b>No status yet</b>: the daemon has not written its first snapshot.</p></body></html>\n";
        return h;
    };
    let [green, red, amber] = lamps(s, now);
    let running = now - s.updated < STALE_SECONDS;
    let _ = write!(
        h,
        "<section class=\"lamps\" id=\"leds\">{}{}{}</section>",
        lamp_html("green", "#2e7d32", green),
        lamp_html("red", "#c62828", red),
        lamp_html("amber", "#e69a00", amber)
    );
    let _ = write!(
        h,
        "<p>{} · pid {} · up {} · status {}</p>",
        if running { "<b>running</b>" } else { "<b>NOT RUNNING</b> (its status is stale)" },
        s.pid,
        ago(now, s.started).replace(" ago", ""),
        ago(now, s.updated)
    );
    let _ = write!(
        h,
        "<section id=\"faults\"><b>Faults:</b> {}{}</section>",
        if s.faults.is_empty() { "none".to_string() } else { s.faults.iter().map(|f| format!("<b>{}</b>", esc(f))).collect::<Vec<_>>().join(", ") },
        if s.degraded { " · <b>degraded</b> (below full capability; see the log)" } else { "" }
    );
    let _ = write!(
        h,
        "<section id=\"work\"><b>Work:</b> {} file(s) waiting, {} scoring, {} series open, {} files handled</section>",
        s.queue, s.scoring, s.open_series, s.files_handled
    );
    match &s.latched {
        Some(l) => {
            let _ = write!(
                h,
                "<section class=\"alert\" id=\"latched\"><b>ALERT LATCHED</b>: series <b class=\"key\">{}</b> ({}) since {}; a person acknowledges it with <code>ctsentry ack</code> or the button.<br>",
                esc(&l.series_key),
                esc(&l.series_uid),
                ago(now, l.since)
            );
            for src in heatmaps_of(&site.results, &l.series_uid, MAX_HEATMAPS) {
                let _ = write!(h, "<img class=\"hm\" src=\"{}\" alt=\"heat map of a positive slice\">", esc(&src));
            }
            h += "</section>";
        }
        None => h += "<section id=\"latched\"><b>Alert:</b> none latched</section>",
    }
    match &s.drift {
        Some(d) if d.state == "drift" => {
            let _ = write!(
                h,
                "<section class=\"drift\" id=\"drift\"><b>DRIFT</b> (amber): {}<br><small>{} recent series, alert rate {:.2} (expected {:.2}); reference: {}. Alerts are raised as always.</small></section>",
                d.reasons.iter().map(|r| esc(r)).collect::<Vec<_>>().join("; "),
                d.series,
                d.alert_rate,
                d.expected_alert_rate,
                esc(&d.reference)
            );
        }
        Some(d) => {
            let _ = write!(
                h,
                "<section id=\"drift\"><b>Drift:</b> ok · {} recent series, alert rate {:.2} (expected {:.2}) <small>reference: {}</small></section>",
                d.series,
                d.alert_rate,
                d.expected_alert_rate,
                esc(&d.reference)
            );
        }
        None => h += "<section id=\"drift\"><b>Drift:</b> not watched</section>",
    }
    let _ = write!(
        h,
        "<section id=\"model\"><table><tr><th>model</th><td>{} {} <small>sha256 {}</small></td></tr><tr><th>engine</th><td>{} {} · preprocess {}</td></tr>\
<tr><th>operating point</th><td>threshold {} <small>({})</small></td></tr><tr><th>series rule</th><td>{}</td></tr></table></section>",
        esc(&s.model.name),
        esc(&s.model.version),
        esc(&s.model.sha256),
        esc(&s.engine),
        esc(&s.precision),
        esc(&s.preprocess),
        s.threshold.map(|t| format!("{t:.4}")).unwrap_or_else(|| "unknown".into()),
        esc(s.threshold_source.as_deref().unwrap_or("unknown")),
        esc(s.series_rule.as_deref().unwrap_or("unknown"))
    );
    h += "<section id=\"verdicts\"><h2>Last verdicts</h2>";
    if s.last_verdicts.is_empty() {
        h += "<p>none yet</p>";
    } else {
        h += "<table><tr><th>series</th><th>verdict</th><th>positive slices</th><th>max prob</th><th>when</th><th>heat maps</th></tr>";
        for v in &s.last_verdicts {
            let maps: String = if v.verdict == "positive" {
                heatmaps_of(&site.results, &v.series_uid, 2).iter().map(|src| format!("<img class=\"hm\" src=\"{}\" alt=\"heat map\">", esc(src))).collect()
            } else {
                String::new()
            };
            let _ = write!(
                h,
                "<tr class=\"verdict\"><td>{}</td><td><b>{}</b></td><td>{} of {}</td><td>{:.3}</td><td>{}</td><td>{maps}</td></tr>",
                esc(&v.series_key),
                esc(&v.verdict.to_uppercase()),
                v.positives,
                v.slices,
                v.max_prob,
                ago(now, v.t)
            );
        }
        h += "</table>";
    }
    let _ = writeln!(
        h,
        "</section><p><small>Read-only. Series keys and UIDs only, no patient names. A triage aid, not a diagnostic device. JSON: <a href=\"/api/status\">/api/status</a>. Reloads every {REFRESH_SECONDS} s.</small></p></body></html>"
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
    }

    /// Everything a DICOM sender or an admin can put into the snapshot (a Series Instance UID, the
    /// threshold's provenance, a drift reason, the model's name) reaches the page escaped.
    #[test]
    fn the_page_escapes_what_senders_and_admins_wrote_and_draws_the_lamps() {
        use crate::status::{DriftStatus, LatchedView, ModelView, VerdictView};
        let evil = "<script>alert(1)</script>";
        let snap = Snapshot {
            pid: 1,
            started: 0.0,
            updated: 100.0,
            latched: Some(LatchedView { series_key: "0a1b2c3d".into(), series_uid: evil.into(), since: 90.0 }),
            open_series: 0,
            queue: 0,
            scoring: 0,
            faults: vec![],
            engine: "tract".into(),
            precision: "f32".into(),
            precision_reason: None,
            preprocess: "cpu".into(),
            model: ModelView { name: evil.into(), version: "1".into(), sha256: String::new() },
            threshold: Some(0.3),
            threshold_source: Some(format!("config: {evil}")),
            min_positive_slices: Some(2),
            series_rule: Some(evil.into()),
            files_handled: 0,
            last_verdicts: vec![VerdictView {
                series_key: "0a1b2c3d".into(),
                series_uid: evil.into(),
                verdict: "positive".into(),
                positives: 3,
                slices: 9,
                max_prob: 0.9,
                t: 95.0,
            }],
            degraded: false,
            drift: Some(DriftStatus { state: "drift".into(), series: 30, alert_rate: 0.5, expected_alert_rate: 0.1, reasons: vec![evil.into()], reference: evil.into() }),
        };
        let dir = tempfile::tempdir().unwrap();
        let site = Site { state: dir.path().into(), results: dir.path().into() };
        let page = render(Some(&snap), &site, 101.0);
        assert!(!page.contains("<script>"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(
            page.contains("data-led=\"green\" data-state=\"on\"") && page.contains("data-led=\"red\" data-state=\"on\"") && page.contains("data-led=\"amber\" data-state=\"on\""),
            "{page}"
        );
        assert!(page.contains("ALERT LATCHED") && page.contains("<b>DRIFT</b>") && page.contains("threshold 0.3000"));
        // Stale: the lamps go dark and the page says the daemon is not running.
        let page = render(Some(&snap), &site, 100.0 + STALE_SECONDS + 1.0);
        assert!(page.contains("NOT RUNNING") && page.contains("data-led=\"red\" data-state=\"off\""), "{page}");
    }

    #[test]
    fn only_heat_maps_inside_the_results_folder_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        let id = crate::alert::series_id("1.2.3", 1);
        std::fs::create_dir_all(results.join(&id).join("heatmaps")).unwrap();
        std::fs::write(results.join(&id).join("heatmaps/a_b-1.png"), b"png").unwrap();
        std::fs::write(results.join(&id).join("result.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("secret.png"), b"no").unwrap();
        assert!(heatmap_file(&results, &format!("/heatmaps/{id}/a_b-1.png")).is_some());
        assert_eq!(heatmaps_of(&results, "1.2.3", 6), [format!("/heatmaps/{id}/a_b-1.png")]);
        for bad in [
            format!("/heatmaps/{id}/result.json"),
            format!("/heatmaps/{id}/../result.json"),
            "/heatmaps/../secret.png".to_string(),
            "/heatmaps/..%2fsecret.png".to_string(),
            format!("/heatmaps/{id}/missing.png"),
            "/etc/passwd".to_string(),
        ] {
            assert_eq!(heatmap_file(&results, &bad), None, "{bad}");
        }
        // A symbolic link out of the results folder is not followed.
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("secret.png"), results.join(&id).join("heatmaps/link.png")).unwrap();
            assert_eq!(heatmap_file(&results, &format!("/heatmaps/{id}/link.png")), None);
        }
    }
}
