//! `ctsentry doctor`: what this machine can use and, for what it cannot, why; and the deep
//! check of a config ([`check`], also `ctsentry check-config --deep`): everything the config
//! names is tried as the daemon would use it, each problem with one fix.

use std::fmt::Write;
use std::path::Path;

use crate::config::{ConfigSource, PreprocessBackend, Settings};
use crate::preprocess::cuda;

/// Something configured that is not usable, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What (e.g. `model /usr/share/ctsentry/models/densenet121-covid.onnx`).
    pub what: String,
    /// Why it is not usable.
    pub why: String,
    /// One fix, in words an admin can act on.
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}\n  fix: {}", self.what, self.why, self.fix)
    }
}

/// The doctor's findings: the text for a person and the problems (exit 1 when there are any).
pub struct Report {
    /// The report.
    pub text: String,
    /// What is configured but unusable.
    pub problems: Vec<Problem>,
}

/// The user the daemon runs as: the `ctsentry` system user when it exists and this is root (an
/// installed box: checks then answer for the service, not for root), else the current user.
#[derive(Debug, Clone)]
pub struct ServiceUser {
    /// Name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary and supplementary groups.
    pub groups: Vec<u32>,
}

/// The system user the package creates.
pub const SERVICE_USER: &str = "ctsentry";

impl ServiceUser {
    /// See [`ServiceUser`].
    pub fn guess() -> ServiceUser {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        if euid == 0 {
            if let Some(u) = ServiceUser::lookup(SERVICE_USER) {
                return u;
            }
        }
        // SAFETY: getpwuid returns a pointer into static storage or null; read at once.
        let name = unsafe {
            let pw = libc::getpwuid(euid);
            if pw.is_null() {
                euid.to_string()
            } else {
                std::ffi::CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
            }
        };
        ServiceUser::lookup(&name).unwrap_or(ServiceUser { name, uid: euid, groups: vec![unsafe { libc::getegid() }] })
    }

    /// The user `name` with its groups, if it exists.
    pub fn lookup(name: &str) -> Option<ServiceUser> {
        let c = std::ffi::CString::new(name).ok()?;
        // SAFETY: getpwnam with a valid C string; the result is copied out before any other call.
        let (uid, gid) = unsafe {
            let pw = libc::getpwnam(c.as_ptr());
            if pw.is_null() {
                return None;
            }
            ((*pw).pw_uid, (*pw).pw_gid)
        };
        let mut n: libc::c_int = 64;
        let mut groups = vec![0 as libc::gid_t; n as usize];
        // SAFETY: the buffer holds n entries; getgrouplist writes at most n and updates n.
        let r = unsafe { libc::getgrouplist(c.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
        groups.truncate(if r < 0 { 0 } else { n as usize });
        if groups.is_empty() {
            groups.push(gid);
        }
        Some(ServiceUser { name: name.to_string(), uid, groups })
    }

    /// Whether this user may create files in the folder `dir` (by its mode bits; root may).
    pub fn can_write(&self, dir: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::metadata(dir) else { return false };
        let mode = m.mode();
        self.uid == 0
            || (m.uid() == self.uid && mode & 0o300 == 0o300)
            || (m.uid() != self.uid && self.groups.contains(&m.gid()) && mode & 0o030 == 0o030)
            || (m.uid() != self.uid && !self.groups.contains(&m.gid()) && mode & 0o003 == 0o003)
    }

    /// Whether this user may read the file `f` (its mode bits; the folders above are not checked).
    pub fn can_read(&self, f: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(m) = std::fs::metadata(f) else { return false };
        let mode = m.mode();
        self.uid == 0
            || (m.uid() == self.uid && mode & 0o400 != 0)
            || (m.uid() != self.uid && self.groups.contains(&m.gid()) && mode & 0o040 != 0)
            || (m.uid() != self.uid && !self.groups.contains(&m.gid()) && mode & 0o004 != 0)
    }

    /// Whether this user is in the group `name`.
    pub fn in_group(&self, name: &str) -> bool {
        let Ok(c) = std::ffi::CString::new(name) else { return false };
        // SAFETY: getgrnam with a valid C string; the gid is copied out at once.
        let gid = unsafe {
            let g = libc::getgrnam(c.as_ptr());
            if g.is_null() {
                return false;
            }
            (*g).gr_gid
        };
        self.groups.contains(&gid)
    }
}

/// A configured drift reference (`[drift] reference`) the daemon could not use: unreadable by the
/// service user, or not a reference (the daemon would start without drift watching).
fn drift_problem(s: &Settings, sc: &crate::score::Scorer, user: &ServiceUser) -> Option<Problem> {
    let path = s.drift.reference.as_ref().filter(|_| s.drift.enabled)?;
    let fix = "run `ctsentry commission --labels CSV --out DIR ROOT` as the service user and set drift.reference = \"DIR/reference.toml\" (or remove the key: the manifest's reference is used)";
    if !user.can_read(path) {
        return Some(Problem { what: format!("drift.reference {}", path.display()), why: format!("not readable by user {}", user.name), fix: fix.into() });
    }
    let manifest = crate::model::manifest_path(&sc.model.path);
    crate::commission::drift_reference(s, &sc.model.manifest, &manifest).err().map(|why| Problem { what: format!("drift.reference {}", path.display()), why, fix: fix.into() })
}

/// The drift line of `doctor`: what drift watching compares with, or why it does not watch
/// (`model`: the bundle as `doctor` loaded it, or why it could not).
fn drift_line(s: &Settings, model: &Result<crate::model::Model, crate::model::ModelError>) -> String {
    if !s.drift.enabled {
        return "off (drift.enabled = false)".into();
    }
    let reference = model.as_ref().map_err(|e| e.to_string()).and_then(|m| crate::commission::drift_reference(s, &m.manifest, &crate::model::manifest_path(&m.path)));
    match reference {
        Ok(r) => format!(
            "the last {} series against {} (alert rate {:.2}, mean slice probability {:.3}, {}; {} series)",
            s.drift.window,
            r.source,
            r.alert_rate,
            r.prob_mean,
            r.lung_hu_mean.map_or_else(|| "no lung HU".into(), |h| format!("lung {h:.0} HU")),
            r.series
        ),
        Err(why) => format!("NOT WATCHED: {why}"),
    }
}

/// Tries everything `s` names as the daemon would use it, as `user`: the model and engine (loaded
/// for real), the folders (writable, or creatable), and the serial port and LEDs when enabled.
pub fn check(s: &Settings, user: &ServiceUser) -> Vec<Problem> {
    use crate::score::SetupError;
    let mut out = Vec::new();
    match crate::score::Scorer::from_settings(s) {
        Ok(sc) => out.extend(drift_problem(s, &sc, user)),
        Err(SetupError::Model(e)) => out.push(Problem {
            what: format!("model {}", s.model_path.display()),
            why: e.to_string(),
            fix: "put the model bundle there (NAME.onnx with its NAME.toml manifest, unchanged: the package installs it in /usr/share/ctsentry/models) or point model.path at it"
                .into(),
        }),
        Err(e) => out.push(Problem {
            what: format!("engine {:?}", s.engine).to_lowercase(),
            why: e.to_string(),
            fix: "set engine.backend = \"auto\" (the fastest engine this machine has), or install what the named engine needs (README: Engines)".into(),
        }),
    }
    let p = &s.paths;
    for (key, d) in [("paths.incoming", &p.incoming), ("paths.done", &p.done), ("paths.quarantine", &p.quarantine), ("paths.results", &p.results), ("paths.state", &p.state)] {
        let existing = d.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
        if existing.is_dir() && user.can_write(existing) {
            continue;
        }
        let why = if existing == d.as_path() {
            format!("not writable by user {}", user.name)
        } else {
            format!("missing, and {} is not writable by user {} to create it", existing.display(), user.name)
        };
        out.push(Problem { what: format!("{key} {}", d.display()), why, fix: format!("mkdir -p {0} && chown {1}: {0} && chmod 750 {0}", d.display(), user.name) });
    }
    if s.serial.enabled {
        if let Err(e) = crate::alert::serial::SerialSink::open(&s.serial) {
            let port = Path::new(&s.serial.port);
            let fix = if !port.exists() {
                let present: Vec<String> = serialport::available_ports().map(|v| v.into_iter().map(|p| p.port_name).collect()).unwrap_or_default();
                format!(
                    "plug the serial adapter in, or set alert.serial.port to one that exists (present: {})",
                    if present.is_empty() { "none".into() } else { present.join(", ") }
                )
            } else if !user.in_group("dialout") {
                format!("usermod -aG dialout {} (then restart ctsentry)", user.name)
            } else {
                "check that no other program holds the port (fuser -v PORT)".into()
            };
            out.push(Problem { what: format!("alert.serial.port {}", s.serial.port), why: e.to_string(), fix });
        }
    }
    out.extend(tls_problems(s, user));
    if s.led.enabled {
        if let Err(e) = crate::alert::led::open_configured(&s.led) {
            let fix = if e.kind() == std::io::ErrorKind::PermissionDenied {
                match s.led.driver {
                    crate::config::LedDriver::Sysfs => format!(
                        "a udev rule giving {0} the LEDs, e.g. /etc/udev/rules.d/90-ctsentry-leds.rules: SUBSYSTEM==\"leds\", KERNEL==\"ctsentry:*\", RUN+=\"/bin/chgrp {0} /sys%p/brightness /sys%p/trigger /sys%p/delay_on /sys%p/delay_off\", RUN+=\"/bin/chmod g+w /sys%p/brightness /sys%p/trigger /sys%p/delay_on /sys%p/delay_off\"",
                        user.name
                    ),
                    crate::config::LedDriver::Gpio => format!("a udev rule: SUBSYSTEM==\"gpio\", KERNEL==\"gpiochip*\", GROUP=\"{}\", MODE=\"0660\"", user.name),
                }
            } else {
                "set alert.led.green/red/amber to LEDs that exist (see \"leds present\" above: /sys/class/leds)".into()
            };
            out.push(Problem { what: format!("alert.led ({:?})", s.led.driver).to_lowercase(), why: e.to_string(), fix });
        }
    }
    out
}

/// The TLS files in use: (config key, file, whether it holds certificates).
fn tls_files(s: &Settings) -> Vec<(&'static str, &Path, bool)> {
    let mut v = Vec::new();
    if let Some(t) = s.dicom.tls.as_ref().filter(|_| s.dicom.enabled) {
        v.extend([
            ("dicom.tls.certificate", t.certificate.as_path(), true),
            ("dicom.tls.private_key", t.private_key.as_path(), false),
            ("dicom.tls.client_ca", t.client_ca.as_path(), true),
        ]);
    }
    if let Some(t) = s.export.tls.as_ref().filter(|_| s.export.enabled) {
        v.push(("export.tls.ca", t.ca.as_path(), true));
        v.extend(t.certificate.as_deref().map(|c| ("export.tls.certificate", c, true)));
        v.extend(t.private_key.as_deref().map(|k| ("export.tls.private_key", k, false)));
    }
    v
}

/// What keeps DICOM TLS from working as `user`: a file it cannot read, a key that does not go
/// with its certificate, a certificate past its end.
fn tls_problems(s: &Settings, user: &ServiceUser) -> Vec<Problem> {
    let mut out = Vec::new();
    let now = crate::durable::now() as i64;
    for (key, f, has_certs) in tls_files(s) {
        if !user.can_read(f) {
            out.push(Problem {
                what: format!("{key} {}", f.display()),
                why: format!("not readable by user {}", user.name),
                fix: format!("chgrp {0} {1} && chmod 640 {1}", user.name, f.display()),
            });
            continue;
        }
        if has_certs {
            if let Err(e) = crate::net::tls::expiry(key, f, now) {
                out.push(Problem {
                    what: format!("{key} {}", f.display()),
                    why: e.reason,
                    fix: "install a renewed certificate at that path, then `systemctl reload ctsentry` (SIGHUP)".into(),
                });
            }
        }
    }
    let built = [
        s.dicom.tls.as_ref().filter(|_| s.dicom.enabled).map(|t| crate::net::tls::server_config(t).map(|_| ())),
        s.export.tls.as_ref().filter(|_| s.export.enabled).map(|t| crate::net::tls::client_config(t).map(|_| ())),
    ];
    for e in built.into_iter().flatten().filter_map(Result::err) {
        if !out.iter().any(|p| p.what.starts_with(e.key)) {
            out.push(Problem {
                what: format!("{} {}", e.key, e.path.display()),
                why: e.reason,
                fix: "PEM files: the certificate chain leaf first, its own private key, the CA certificates (see docs/security.md)".into(),
            });
        }
    }
    out
}

/// Certificates in use that end within 30 days (a warning: they still work).
pub fn tls_warnings(s: &Settings) -> Vec<String> {
    let now = crate::durable::now() as i64;
    tls_files(s).into_iter().filter(|(_, _, c)| *c).filter_map(|(key, f, _)| crate::net::tls::expiry(key, f, now).ok().and_then(|(_, w)| w)).collect()
}

/// The report, as text for a person, with the problems of what is configured.
pub fn run(source: &ConfigSource) -> Report {
    let mut r = String::new();
    let mut problems = Vec::new();
    let loaded = match source.path() {
        Some(p) => Settings::load(p),
        None => Ok(Settings::defaults(Path::new("."))),
    };
    let settings = match loaded {
        Ok(s) => {
            let _ = writeln!(r, "config        ok: {source}");
            Some(s)
        }
        Err(e) => {
            let _ = writeln!(r, "config        NOT USABLE: {}", e.to_string().replace('\n', "\n              "));
            problems.push(Problem { what: format!("config {source}"), why: e.to_string(), fix: "correct the lines named (ctsentry check-config PATH lists them all)".into() });
            None
        }
    };
    // Read and hashed once: the model line and the drift line both need it.
    let model = settings.as_ref().map(|s| crate::model::Model::load(&s.model_path));
    // The int8 variant, read and hashed once: why it cannot be used, if so.
    let int8_unusable = model.as_ref().and_then(|m| m.as_ref().ok()).filter(|m| m.manifest.int8.is_some()).and_then(|m| m.int8_bytes().err()).map(|e| e.to_string());
    let build = if cfg!(any(feature = "cuda", feature = "cuda-12")) { "built with CUDA support" } else { "built without CUDA support" };
    let gpu = cuda::probe();
    match &gpu {
        Ok(d) => {
            let _ = writeln!(
                r,
                "cuda          usable: {} (compute capability {}.{}, driver API {}.{}, {:.1} GiB)",
                d.name,
                d.compute_capability.0,
                d.compute_capability.1,
                d.driver_version / 1000,
                d.driver_version % 1000 / 10,
                d.memory as f64 / (1u64 << 30) as f64
            );
        }
        Err(e) => {
            let _ = writeln!(r, "cuda          not usable ({build}): {}", e.0);
        }
    }
    // This CPU as OpenVINO may use it: read once, for this line and for the engine's precision.
    let cpu = crate::engine::openvino::Cpu::this();
    let limit = crate::engine::openvino::isa_limit();
    let _ = writeln!(r, "cpu           {}", cpu.describe(limit.as_ref().map(|(var, value)| (*var, value.as_str()))));
    if let Some(s) = &settings {
        let choice = match (s.preprocess, gpu.is_ok()) {
            (PreprocessBackend::Cpu, _) => "cpu (configured)".to_string(),
            (PreprocessBackend::Cuda, true) => "cuda (configured)".to_string(),
            (PreprocessBackend::Cuda, false) => "NONE: preprocess.backend = \"cuda\" but CUDA is not usable; the daemon will refuse to start".to_string(),
            (PreprocessBackend::Auto, true) => "cuda (auto: a GPU is usable)".to_string(),
            (PreprocessBackend::Auto, false) => "cpu (auto: no usable GPU; status LED amber)".to_string(),
        };
        let _ = writeln!(r, "preprocess    {choice}");
        match model.as_ref().expect("loaded with the settings") {
            Ok(m) => {
                let i = &m.manifest.model;
                let _ = writeln!(r, "model         {} {} (sha256 {}…): ok", i.name, i.version, &i.sha256[..12]);
                if let Some(q) = &m.manifest.int8 {
                    let file = m.int8_path().map(|p| p.display().to_string()).unwrap_or_default();
                    let state = match &int8_unusable {
                        Some(e) => format!("NOT USABLE: {e}"),
                        None if q.parity.outside_bound().is_some() => format!("ok, {}: auto does not use it", q.parity.status()),
                        None => format!("ok, {}", q.parity.status()),
                    };
                    let _ = writeln!(r, "model int8    {file} (sha256 {}…): {state}", &q.sha256[..12.min(q.sha256.len())]);
                }
            }
            Err(e) => {
                let _ = writeln!(r, "model         NOT USABLE: {e}");
            }
        }
        let _ = writeln!(r, "engine tract  usable (built in)");
        let ort = if cfg!(feature = "onnxruntime") {
            match crate::engine::onnxruntime_library(s.onnxruntime_library.as_deref()) {
                Ok(p) => format!("library {} found", p.display()),
                Err(e) => format!("not usable: {e}"),
            }
        } else {
            "not usable: this build has no onnxruntime engine (rebuild with --features onnxruntime)".into()
        };
        let _ = writeln!(r, "engine ort    {ort}");
        let ov = match crate::engine::openvino::library(s.openvino_library.as_deref()) {
            Ok(p) => {
                let int8 = model.as_ref().and_then(|m| m.as_ref().ok()).and_then(|m| m.manifest.int8.as_ref());
                let precision = match crate::engine::openvino::resolve_precision(s.precision, cpu, int8) {
                    Ok(c) if c.precision == "int8" && int8_unusable.is_some() && s.precision == crate::config::Precision::Auto => {
                        "precision auto: int8 chosen by its parity, but the variant is NOT USABLE (see \"model int8\"): the float model runs instead".to_string()
                    }
                    Ok(c) => format!("precision {}: {}{} ({})", s.precision.name(), c.precision, if c.warn { " (WARNING)" } else { "" }, c.why),
                    Err(e) => format!("NOT USABLE: {e}"),
                };
                format!("library {} found; {precision}", p.display())
            }
            Err(e) => format!("not usable: {e}"),
        };
        let _ = writeln!(r, "engine ov     {ov}");
    }
    let lib = settings.as_ref().and_then(|s| s.tensorrt_library.clone());
    let _ = writeln!(r, "engine trt    {}", crate::engine::tensorrt_status(lib.as_deref()));
    if let Some(s) = &settings {
        let _ = writeln!(
            r,
            "dicom         {}",
            if s.dicom.enabled {
                format!(
                    "C-ECHO/C-STORE SCP {:?} on {}{}, callers {}",
                    s.dicom.ae_title,
                    s.dicom.listen,
                    if s.dicom.tls.is_some() { " (DICOM TLS only)" } else { "" },
                    s.dicom.callers_text()
                )
            } else {
                "receiver off (dicom.enabled = false)".into()
            }
        );
        if s.export.enabled {
            let e = &s.export;
            let what = [("SR", e.sr), ("heat maps", e.heatmaps)].iter().filter(|(_, on)| *on).map(|(w, _)| *w).collect::<Vec<_>>().join(" and ");
            let waiting = crate::net::export::pending(&s.paths.state.join(crate::net::export::SPOOL_DIR)).len();
            let echo = crate::net::export::echo(e, std::time::Duration::from_secs(5));
            let _ = writeln!(
                r,
                "export        {what} to {:?} at {} as {:?}: {}; {waiting} object(s) waiting",
                e.called_ae,
                e.peer,
                e.calling_ae,
                match &echo {
                    Ok(()) => "C-ECHO answered".to_string(),
                    Err(why) if why.is_transient() => format!("NOT REACHABLE: {why}"),
                    Err(why) => format!("REFUSES: {why}"),
                }
            );
            if let Err(why) = echo {
                let fix = if why.is_transient() {
                    format!("start the PACS, or correct export.peer and export.called_ae; the PACS must accept calling AE {:?} (results wait in the spool meanwhile)", e.calling_ae)
                } else {
                    format!("the PACS answers but refuses: configure it to accept calling AE {:?} and C-ECHO (results wait in the spool meanwhile)", e.calling_ae)
                };
                problems.push(Problem { what: format!("export.peer {}", e.peer), why: why.to_string(), fix });
            }
        } else {
            let _ = writeln!(r, "export        off (export.enabled = false)");
        }
        let _ = writeln!(
            r,
            "metrics       {}",
            s.metrics_listen.map(|a| format!("http://{a}/metrics, /healthz and the admin's page http://{a}/")).unwrap_or_else(|| "off ([metrics] absent)".into())
        );
        let _ = writeln!(r, "drift         {}", drift_line(s, model.as_ref().expect("loaded with the settings")));
        alerts(&mut r, s);
        let p = &s.paths;
        for (name, d) in [("incoming", &p.incoming), ("done", &p.done), ("quarantine", &p.quarantine), ("results", &p.results), ("state", &p.state)] {
            let free = crate::durable::free_mb(d).or_else(|| d.parent().and_then(crate::durable::free_mb));
            let state = match std::fs::metadata(d) {
                Ok(m) if m.is_dir() => {
                    if m.permissions().readonly() {
                        "read-only".to_string()
                    } else {
                        "ok".to_string()
                    }
                }
                Ok(_) => "NOT A FOLDER".to_string(),
                Err(_) => "missing (created at start)".to_string(),
            };
            let _ =
                writeln!(r, "folder {name:<10} {} {state}{}", d.display(), free.map(|f| format!(", {f:.0} MiB free (watermark {:.0})", s.daemon.min_free_mb)).unwrap_or_default());
        }
        let user = ServiceUser::guess();
        let _ = writeln!(r, "checked as    user {} (the service user)", user.name);
        problems.extend(check(s, &user));
        for w in tls_warnings(s) {
            let _ = writeln!(r, "warning       {w}");
        }
    }
    if problems.is_empty() {
        let _ = writeln!(r, "problems      none");
    } else {
        let _ = writeln!(r, "problems      {}", problems.len());
        for p in &problems {
            let _ = writeln!(r, "- {}", p.to_string().replace('\n', "\n  "));
        }
    }
    Report { text: r, problems }
}

/// Serial ports and LEDs: the configured ones, whether they open, and what else is present.
fn alerts(r: &mut String, s: &Settings) {
    use crate::alert::serial::SerialSink;
    let sc = &s.serial;
    let cfg = if sc.enabled { "enabled" } else { "disabled" };
    match SerialSink::open(sc) {
        Ok(_) => {
            let _ = writeln!(r, "serial        {} ({cfg}): opens ({} baud, {}{}{})", sc.port, sc.baud, sc.data_bits, sc.parity, sc.stop_bits);
        }
        Err(e) => {
            let _ = writeln!(r, "serial        {} ({cfg}): cannot open: {e}", sc.port);
        }
    }
    let ports: Vec<String> = serialport::available_ports().map(|v| v.into_iter().map(|p| p.port_name).collect()).unwrap_or_default();
    let _ = writeln!(r, "serial ports  {}", if ports.is_empty() { "none found".to_string() } else { ports.join(", ") });
    let l = &s.led;
    let cfg = if l.enabled { "enabled" } else { "disabled" };
    match crate::alert::led::open_configured(&s.led).map(|_| ()) {
        Ok(()) => {
            let _ = writeln!(r, "leds          {:?} ({cfg}): green, red, amber open", l.driver);
        }
        Err(e) => {
            let _ = writeln!(r, "leds          {:?} ({cfg}): cannot open: {e}", l.driver);
        }
    }
    let present: Vec<String> = std::fs::read_dir("/sys/class/leds").map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect()).unwrap_or_default();
    let _ = writeln!(r, "leds present  {}", if present.is_empty() { "none in /sys/class/leds".to_string() } else { present.join(", ") });
}
