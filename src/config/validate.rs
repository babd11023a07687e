//! Raw structs to typed [`Settings`]: ranges, enums, addresses, AE titles, paths (absolute,
//! normalised, folders that cannot overlap), every issue collected with its position.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::diagnose::position;
use super::raw::*;
use super::*;

/// Whether `t` (trimmed) can be a DICOM AE title: 1 to 16 printable ASCII characters, no backslash.
fn is_ae_title(t: &str) -> bool {
    !t.is_empty() && t.len() <= 16 && t.chars().all(|ch| ch.is_ascii_graphic() || ch == ' ') && !t.contains('\\')
}

pub(super) struct Checker<'a> {
    pub(super) text: &'a str,
    pub(super) issues: Vec<ConfigIssue>,
}

impl Checker<'_> {
    pub(super) fn fail<T>(&mut self, span: &Spanned<T>, reason: String) {
        let (line, column) = if span.span().is_empty() { (0, 0) } else { position(self.text, span.span().start) };
        self.issues.push(ConfigIssue { line, column, reason });
    }

    pub(super) fn choice<T: Copy>(&mut self, key: &str, v: &Spanned<String>, options: &[(&str, T)]) -> Option<T> {
        let found = options.iter().find(|(n, _)| *n == v.get_ref().as_str()).map(|(_, t)| *t);
        if found.is_none() {
            let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
            self.fail(v, format!("{key} = \"{}\" is not one of {}", v.get_ref(), names.join(", ")));
        }
        found
    }

    pub(super) fn range_i(&mut self, key: &str, v: &Spanned<i64>, lo: i64, hi: i64) -> i64 {
        let x = *v.get_ref();
        if x < lo || x > hi {
            self.fail(v, format!("{key} = {x} is outside {lo}..={hi}"));
        }
        x.clamp(lo, hi)
    }

    pub(super) fn range_f(&mut self, key: &str, v: &Spanned<f64>, lo: f64, hi: f64) -> f64 {
        let x = *v.get_ref();
        if !(x >= lo && x <= hi) {
            self.fail(v, format!("{key} = {x} is outside {lo}..={hi}"));
        }
        if x.is_finite() {
            x.clamp(lo, hi)
        } else {
            lo
        }
    }

    pub(super) fn path(&mut self, key: &str, v: &Spanned<String>, base: &Path) -> PathBuf {
        if v.get_ref().trim().is_empty() {
            self.fail(v, format!("{key} must not be empty"));
        }
        normalize(&base.join(v.get_ref()))
    }
}

/// `path` made absolute (against the working directory) with `.` and `..` resolved lexically,
/// so that two spellings of one folder compare equal and a path derived from a watched one
/// strips its prefix (a relative `config/../var/incoming` once made every scored file "move"
/// back into the drop folder under a new name).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Folders that must not lie inside one another: a scored file moved into a `done/` inside the
/// drop folder would be picked up again, forever; a `state/` inside `results/` would be pruned
/// by retention.
fn check_folders(c: &mut Checker<'_>, raw: &RawPaths, paths: &Paths) {
    let named = [
        ("paths.incoming", &raw.incoming, &paths.incoming),
        ("paths.done", &raw.done, &paths.done),
        ("paths.quarantine", &raw.quarantine, &paths.quarantine),
        ("paths.results", &raw.results, &paths.results),
        ("paths.state", &raw.state, &paths.state),
    ];
    for (i, (key, span, p)) in named.iter().enumerate() {
        for (other_key, other_span, q) in named.iter().skip(i + 1) {
            // The error points at the later key (same folder) or the inner one (nested).
            let clash = if p == q {
                Some((*other_span, format!("{key} and {other_key} are the same folder ({})", p.display())))
            } else if p.starts_with(q) || q.starts_with(p) {
                // The drop folder is walked for input, done/ and results/ for retention: a
                // folder inside another would be read or pruned as part of it.
                let (inner, outer) = if p.starts_with(q) { ((key, p, *span), (other_key, q)) } else { ((other_key, q, *other_span), (key, p)) };
                Some((inner.2, format!("{} ({}) lies inside {} ({}): the five folders must be apart", inner.0, inner.1.display(), outer.0, outer.1.display())))
            } else {
                None
            };
            if let Some((at, reason)) = clash {
                c.fail(at, reason);
            }
        }
    }
}

pub(super) fn validate(raw: RawConfig, base: &Path, text: &str) -> Result<Settings, Vec<ConfigIssue>> {
    let mut c = Checker { text, issues: Vec::new() };
    let paths = Paths {
        incoming: c.path("paths.incoming", &raw.paths.incoming, base),
        done: c.path("paths.done", &raw.paths.done, base),
        quarantine: c.path("paths.quarantine", &raw.paths.quarantine, base),
        results: c.path("paths.results", &raw.paths.results, base),
        state: c.path("paths.state", &raw.paths.state, base),
    };
    check_folders(&mut c, &raw.paths, &paths);
    let model_path = c.path("model.path", &raw.model.path, base);
    let engine = c.choice(
        "engine.backend",
        &raw.engine.backend,
        &[
            ("auto", EngineBackend::Auto),
            ("tract", EngineBackend::Tract),
            ("tensorrt", EngineBackend::TensorRt),
            ("onnxruntime", EngineBackend::OnnxRuntime),
            ("openvino", EngineBackend::OpenVino),
        ],
    );
    let precision = c.choice(
        "engine.precision",
        &raw.engine.precision,
        &[("auto", Precision::Auto), ("f32", Precision::F32), ("bf16", Precision::Bf16), ("f16", Precision::F16), ("int8", Precision::Int8)],
    );
    let engine_threads = raw.engine.threads.as_ref().map(|t| c.range_i("engine.threads", t, 1, 256) as usize);
    let onnxruntime_library = raw.engine.onnxruntime_library.as_ref().map(|p| c.path("engine.onnxruntime_library", p, base));
    let openvino_library = raw.engine.openvino_library.as_ref().map(|p| c.path("engine.openvino_library", p, base));
    let tensorrt_plan = raw.engine.tensorrt_plan.as_ref().map(|p| c.path("engine.tensorrt_plan", p, base));
    let tensorrt_library = raw.engine.tensorrt_library.as_ref().map(|p| c.path("engine.tensorrt_library", p, base));
    let preprocess =
        c.choice("preprocess.backend", &raw.preprocess.backend, &[("auto", PreprocessBackend::Auto), ("cpu", PreprocessBackend::Cpu), ("cuda", PreprocessBackend::Cuda)]);
    let threshold = raw.decision.threshold.as_ref().map(|t| {
        let v = c.range_f("decision.threshold", t, 0.0, 1.0);
        if v == 0.0 {
            // Every probability is >= 0: every slice, even one skipped for having no lung, would count.
            c.fail(t, "decision.threshold = 0 makes every slice positive; use a value above 0".into());
        }
        v
    });
    let min_positive_slices = raw.decision.min_positive_slices.as_ref().map(|v| c.range_i("decision.min_positive_slices", v, 1, 10_000) as usize);
    let min_positive_extent_mm = raw.decision.min_positive_extent_mm.as_ref().map(|v| c.range_f("decision.min_positive_extent_mm", v, 0.0, 2_000.0));
    let min_positive_share = raw.decision.min_positive_share.as_ref().map(|v| c.range_f("decision.min_positive_share", v, 0.0, 1.0));
    let threshold_provenance = raw.decision.threshold_provenance.as_ref().map(|p| p.get_ref().trim().to_string()).filter(|p| !p.is_empty());
    if let (Some(p), None) = (&raw.decision.threshold_provenance, &raw.decision.threshold) {
        c.fail(p, "decision.threshold_provenance without decision.threshold: it records who chose the threshold set here".into());
    }
    let dr = &raw.drift;
    let drift = DriftConfig {
        enabled: dr.enabled,
        reference: dr.reference.as_ref().map(|p| c.path("drift.reference", p, base)),
        window: c.range_i("drift.window", &dr.window, 5, 10_000) as usize,
        min_series: c.range_i("drift.min_series", &dr.min_series, 2, 10_000) as usize,
    };
    if drift.min_series > drift.window {
        c.fail(&dr.min_series, format!("drift.min_series = {} is more than drift.window = {}: drift could never be judged", drift.min_series, drift.window));
    }
    let quiet_seconds = c.range_f("series.quiet_seconds", &raw.series.quiet_seconds, 0.1, 86_400.0);
    let ing = &raw.ingest;
    let modalities: Vec<String> = ing.modalities.get_ref().iter().map(|m| m.trim().to_ascii_uppercase()).collect();
    if modalities.iter().any(|m| m.is_empty() || m.len() > 16) {
        c.fail(&ing.modalities, "ingest.modalities holds an empty or over-long code".into());
    }
    let mb = |x: f64| (x * 1024.0 * 1024.0) as u64;
    let limits = Limits {
        max_file_bytes: mb(c.range_f("ingest.max_file_mb", &ing.max_file_mb, 1.0, 65_536.0)),
        max_pixels_per_slice: c.range_i("ingest.max_pixels_per_slice", &ing.max_pixels_per_slice, 1, 65_536 * 65_536) as u64,
        max_frames: c.range_i("ingest.max_frames", &ing.max_frames, 1, 100_000) as u64,
        max_decompressed_bytes: mb(c.range_f("ingest.max_decompressed_mb", &ing.max_decompressed_mb, 1.0, 65_536.0)),
    };
    let baud = c.range_i("alert.serial.baud", &raw.alert.serial.baud, 50, 4_000_000) as u32;
    let sr = &raw.alert.serial;
    let fr: Vec<char> = sr.framing.get_ref().to_ascii_uppercase().chars().collect();
    let framing = match fr.as_slice() {
        [d @ '5'..='8', p @ ('N' | 'E' | 'O'), s @ ('1' | '2')] => (*d as u8 - b'0', *p, *s as u8 - b'0'),
        _ => {
            c.fail(&sr.framing, format!("alert.serial.framing = \"{}\" is not DATA BITS (5-8), PARITY (N/E/O), STOP BITS (1/2), e.g. 8N1", sr.framing.get_ref()));
            (8, 'N', 1)
        }
    };
    let heartbeat_seconds = c.range_f("alert.serial.heartbeat_seconds", &sr.heartbeat_seconds, 1.0, 3600.0);
    let ack_timeout_seconds = c.range_f("alert.serial.ack_timeout_seconds", &sr.ack_timeout_seconds, 0.05, 60.0);
    let watch = c.choice("watch.mode", &raw.watch.mode, &[("inotify", WatchMode::Inotify), ("poll", WatchMode::Poll)]);
    let daemon = DaemonSettings {
        watch: watch.unwrap_or(WatchMode::Poll),
        poll_seconds: c.range_f("watch.poll_seconds", &raw.watch.poll_seconds, 0.05, 3600.0),
        stable_seconds: c.range_f("watch.stable_seconds", &raw.watch.stable_seconds, 0.0, 3600.0),
        heatmaps: raw.results.heatmaps,
        min_free_mb: c.range_f("disk.min_free_mb", &raw.disk.min_free_mb, 0.0, 1e9),
        done_days: c.range_f("retention.done_days", &raw.retention.done_days, 0.0, 36_500.0),
        results_days: c.range_f("retention.results_days", &raw.retention.results_days, 0.0, 36_500.0),
    };
    let driver = c.choice("alert.led.driver", &raw.alert.led.driver, &[("sysfs", LedDriver::Sysfs), ("gpio", LedDriver::Gpio)]);
    let log_level = c.choice(
        "log.level",
        &raw.log.level,
        &[
            ("off", log::LevelFilter::Off),
            ("error", log::LevelFilter::Error),
            ("warn", log::LevelFilter::Warn),
            ("info", log::LevelFilter::Info),
            ("debug", log::LevelFilter::Debug),
            ("trace", log::LevelFilter::Trace),
        ],
    );
    let dr = &raw.dicom;
    let title = dr.ae_title.get_ref().trim().to_string();
    if !is_ae_title(&title) {
        c.fail(&dr.ae_title, format!("dicom.ae_title = {title:?}: 1 to 16 printable ASCII characters, no backslash"));
    }
    let listen = match dr.listen.get_ref().parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.fail(&dr.listen, format!("dicom.listen = {:?}: expected ADDRESS:PORT, e.g. \"0.0.0.0:11112\"", dr.listen.get_ref()));
            std::net::SocketAddr::from(([0, 0, 0, 0], 11112))
        }
    };
    let mut allowed_callers = Vec::new();
    for a in &dr.allowed_callers {
        match Caller::parse(a.get_ref()) {
            Ok(caller) if is_ae_title(&caller.ae_title) => allowed_callers.push(caller),
            Ok(caller) => c.fail(a, format!("dicom.allowed_callers: {:?} is not an AE title (1 to 16 characters, no backslash)", caller.ae_title)),
            Err(why) => c.fail(a, format!("dicom.allowed_callers: {:?}: {why}", a.get_ref())),
        }
    }
    let max_associations = c.range_i("dicom.max_associations", &dr.max_associations, 1, 256) as usize;
    let metrics_listen = raw.metrics.listen.as_ref().map(|l| match l.get_ref().parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            c.fail(l, format!("metrics.listen = {:?}: expected ADDRESS:PORT, e.g. \"127.0.0.1:9464\"", l.get_ref()));
            std::net::SocketAddr::from(([127, 0, 0, 1], 9464))
        }
    });
    let metrics_token = raw.metrics.token.as_ref().and_then(|t| {
        let v = t.get_ref().trim();
        // Also a cookie value for the admin's page in a browser: no `;`, `,`, quotes, spaces.
        if v.chars().count() < 16 || !v.chars().all(|ch| ch.is_ascii_alphanumeric() || "._~+/=-".contains(ch)) {
            c.fail(t, "metrics.token: at least 16 characters of letters, digits and . _ ~ + / = - (e.g. `openssl rand -hex 24`)".into());
            None
        } else {
            Some(Secret::new(v))
        }
    });
    if let (Some(addr), None, None) = (metrics_listen, &metrics_token, &raw.metrics.token) {
        if !addr.ip().is_loopback() {
            let span = raw.metrics.listen.as_ref().expect("listen given");
            c.fail(span, format!("metrics.listen = \"{addr}\" is outside loopback: set metrics.token (requests then need `Authorization: Bearer TOKEN`; /healthz stays open), or listen on 127.0.0.1"));
        }
    }
    let dicom = DicomSettings {
        enabled: dr.enabled,
        ae_title: title,
        listen,
        allowed_callers,
        max_associations,
        max_associations_per_address: c.range_i("dicom.max_associations_per_address", &dr.max_associations_per_address, 1, 256) as usize,
        artim: std::time::Duration::from_secs_f64(c.range_f("dicom.artim_seconds", &dr.artim_seconds, 0.5, 300.0)),
        max_instance_bytes: c.range_i("dicom.max_instance_mb", &dr.max_instance_mb, 1, 65_536) as u64 * 1024 * 1024,
        tls: dr.tls.as_ref().map(|t| ReceiverTls {
            certificate: c.path("dicom.tls.certificate", &t.certificate, base),
            private_key: c.path("dicom.tls.private_key", &t.private_key, base),
            client_ca: c.path("dicom.tls.client_ca", &t.client_ca, base),
        }),
    };
    let ex = &raw.export;
    for (key, v) in [("export.called_ae", &ex.called_ae), ("export.calling_ae", &ex.calling_ae)] {
        if !is_ae_title(v.get_ref().trim()) {
            c.fail(v, format!("{key} = {:?}: 1 to 16 printable ASCII characters, no backslash", v.get_ref()));
        }
    }
    let peer = ex.peer.get_ref().trim().to_string();
    let port_ok = peer.rsplit_once(':').is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        c.fail(&ex.peer, format!("export.peer = {peer:?}: expected HOST:PORT, e.g. \"10.0.0.5:104\""));
    }
    for item in ex.send.get_ref() {
        if !["sr", "heatmaps"].contains(&item.as_str()) {
            c.fail(&ex.send, format!("export.send: {item:?} is not one of \"sr\", \"heatmaps\""));
        }
    }
    let export = ExportSettings {
        enabled: ex.enabled,
        peer,
        called_ae: ex.called_ae.get_ref().trim().to_string(),
        calling_ae: ex.calling_ae.get_ref().trim().to_string(),
        sr: ex.send.get_ref().iter().any(|s| s == "sr"),
        heatmaps: ex.send.get_ref().iter().any(|s| s == "heatmaps"),
        max_heatmaps: c.range_i("export.max_heatmaps", &ex.max_heatmaps, 0, 1000) as usize,
        retry_max_seconds: c.range_f("export.retry_max_seconds", &ex.retry_max_seconds, 1.0, 3600.0),
        tls: ex.tls.as_ref().map(|t| {
            if t.certificate.is_some() != t.private_key.is_some() {
                let span = t.certificate.as_ref().or(t.private_key.as_ref()).expect("one is set");
                c.fail(span, "export.tls: certificate and private_key go together (both, or neither)".into());
            }
            ExportTls {
                ca: c.path("export.tls.ca", &t.ca, base),
                certificate: t.certificate.as_ref().map(|v| c.path("export.tls.certificate", v, base)),
                private_key: t.private_key.as_ref().map(|v| c.path("export.tls.private_key", v, base)),
            }
        }),
    };
    if !c.issues.is_empty() {
        c.issues.sort_by_key(|i| (i.line, i.column));
        return Err(c.issues);
    }
    Ok(Settings {
        source: None,
        paths,
        model_path,
        engine: engine.expect("checked"),
        precision: precision.expect("checked"),
        engine_threads,
        onnxruntime_library,
        openvino_library,
        tensorrt_plan,
        tensorrt_library,
        preprocess: preprocess.expect("checked"),
        threshold,
        min_positive_slices,
        min_positive_extent_mm,
        min_positive_share,
        threshold_provenance,
        quiet_seconds,
        ingest: IngestOptions { limits, modalities, allow_missing_modality: ing.allow_missing_modality, display_window: None },
        daemon,
        serial: SerialSettings {
            enabled: sr.enabled,
            port: sr.port.clone(),
            baud,
            data_bits: framing.0,
            parity: framing.1,
            stop_bits: framing.2,
            heartbeat_seconds,
            ack: sr.ack,
            ack_timeout_seconds,
        },
        led: LedSettings {
            enabled: raw.alert.led.enabled,
            driver: driver.expect("checked"),
            green: raw.alert.led.green,
            red: raw.alert.led.red,
            amber: raw.alert.led.amber,
            active_low: raw.alert.led.active_low,
            button: raw.alert.led.button.clone(),
        },
        dicom,
        export,
        metrics_listen,
        metrics_token,
        drift,
        log_level: log_level.expect("checked"),
        log_patient_names: raw.log.patient_names,
    })
}
