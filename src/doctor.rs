//! `ctsentry doctor`: what this machine can use and, for what it cannot, why.

use std::fmt::Write;
use std::path::Path;

use crate::config::{PreprocessBackend, Settings};
use crate::preprocess::cuda;

/// The report, as text for a person.
pub fn run(config: &Path) -> String {
    let mut r = String::new();
    let settings = match Settings::load(config) {
        Ok(s) => {
            let _ = writeln!(r, "config        ok: {}", config.display());
            Some(s)
        }
        Err(e) => {
            let _ = writeln!(r, "config        NOT USABLE: {}", e.to_string().replace('\n', "\n              "));
            None
        }
    };
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
    if let Some(s) = &settings {
        let choice = match (s.preprocess, gpu.is_ok()) {
            (PreprocessBackend::Cpu, _) => "cpu (configured)".to_string(),
            (PreprocessBackend::Cuda, true) => "cuda (configured)".to_string(),
            (PreprocessBackend::Cuda, false) => "NONE: preprocess.backend = \"cuda\" but CUDA is not usable; the daemon will refuse to start".to_string(),
            (PreprocessBackend::Auto, true) => "cuda (auto: a GPU is usable)".to_string(),
            (PreprocessBackend::Auto, false) => "cpu (auto: no usable GPU; status LED amber)".to_string(),
        };
        let _ = writeln!(r, "preprocess    {choice}");
        match crate::model::Model::load(&s.model_path) {
            Ok(m) => {
                let i = &m.manifest.model;
                let _ = writeln!(r, "model         {} {} (sha256 {}…): ok", i.name, i.version, &i.sha256[..12]);
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
    }
    let lib = settings.as_ref().and_then(|s| s.tensorrt_library.clone());
    let _ = writeln!(r, "engine trt    {}", crate::engine::tensorrt_status(lib.as_deref()));
    if let Some(s) = &settings {
        alerts(&mut r, s);
        let p = &s.paths;
        for (name, d) in [("incoming", &p.incoming), ("done", &p.done), ("quarantine", &p.quarantine), ("results", &p.results), ("state", &p.state)] {
            let free = crate::daemon::free_mb(d).or_else(|| d.parent().and_then(crate::daemon::free_mb));
            let state = match std::fs::metadata(d) {
                Ok(m) if m.is_dir() => if m.permissions().readonly() { "read-only".to_string() } else { "ok".to_string() },
                Ok(_) => "NOT A FOLDER".to_string(),
                Err(_) => "missing (created at start)".to_string(),
            };
            let _ = writeln!(r, "folder {name:<10} {} {state}{}", d.display(), free.map(|f| format!(", {f:.0} MiB free (watermark {:.0})", s.daemon.min_free_mb)).unwrap_or_default());
        }
    }
    r
}

/// Serial ports and LEDs: the configured ones, whether they open, and what else is present.
fn alerts(r: &mut String, s: &Settings) {
    use crate::alert::{led, serial::SerialSink};
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
    let opened = match l.driver {
        crate::config::LedDriver::Sysfs => led::SysfsLeds::open([l.green.clone().into(), l.red.clone().into(), l.amber.clone().into()]).map(|_| ()),
        crate::config::LedDriver::Gpio => led::GpioLeds::open([&l.green, &l.red, &l.amber], l.active_low).map(|_| ()),
    };
    match opened {
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
