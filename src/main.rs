//! The `ctsentry` command line. Only argument handling lives here; the work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use ctsentry::config::{ConfigSource, Settings};
use ctsentry::output::{ScoreLine, SeriesSummary};
use ctsentry::preprocess::{cpu::Cpu, Params};
use ctsentry::{ingest, inspect, logging, prep};

/// The system allocator with a per-thread cap used while parsers read untrusted files.
#[global_allocator]
static GLOBAL: ctsentry::alloc_guard::GuardedAlloc = ctsentry::alloc_guard::GuardedAlloc;

#[derive(Parser)]
#[command(name = "ctsentry", version, about = "CT triage appliance: scores chest CT slices for COVID-19 pneumonia")]
struct Cli {
    /// Config file; without it: $CTSENTRY_CONFIG, then ./config/ctsentry.toml (a checkout), then
    /// /etc/ctsentry/ctsentry.toml (an installed box). Accepted before or after the subcommand.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: watch the drop folder, score, alert.
    Run,
    /// Acknowledge the latched alert (red LED steady): clears it and journals who did.
    Ack {
        /// Who acknowledges (kept in the journal).
        #[arg(long, default_value = "ctsentry ack")]
        by: String,
    },
    /// What the running daemon is doing: latched alert, faults, queue, engine, recent verdicts.
    /// Exit 0 while it runs, 1 when it does not.
    Status {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Score DICOM files, series folders or NIfTI volumes.
    Score {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Evaluate against labelled slices (the reference work's table).
    Eval {
        /// CSV with columns `file` (relative to ROOT) and `covid` (0/1).
        #[arg(long)]
        labels: PathBuf,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Folder for the ROC curve (roc.png, roc.csv), per-slice scores (scores.csv) and heat
        /// maps of the positive slices (heatmaps/).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also report the threshold meeting a target, e.g. `sensitivity=0.95`.
        #[arg(long)]
        pick_threshold: Option<String>,
        /// Also read 8-bit PNG images, mapping grey 0–255 linearly onto this display window
        /// `CENTER,WIDTH` in HU (e.g. `-600,1500`); training material without Hounsfield units.
        #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
        assume_window: Option<(f64, f64)>,
        /// Root the CSV's paths are relative to.
        root: PathBuf,
    },
    /// Check this box on the site's own labelled studies: series-level sensitivity and
    /// specificity with 95 % intervals, false alerts per 100 negative series and slice AUC,
    /// compared with the model's claims; exit 0 within them, 1 outside.
    Commission {
        /// CSV with columns `file` (relative to ROOT) and `covid` (0/1); a series is positive when
        /// any of its files is.
        #[arg(long)]
        labels: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Folder for report.html, series.csv and reference.toml (the drift reference).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also score every series at f32 and measure the precision in use (bf16, int8) against
        /// it, bounded as the manifest's int8 parity record is (twice the time or more)
        #[arg(long)]
        parity: bool,
        /// Root the CSV's paths are relative to.
        root: PathBuf,
    },
    /// Show what ingest sees, one object per image or volume.
    Inspect {
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// Files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Validate a config file; reports every error with line and column.
    CheckConfig {
        /// Also try what it names as the daemon would: load the model and engine, check the
        /// folders are writable by the service user, open the serial port and LEDs if enabled.
        #[arg(long)]
        deep: bool,
        /// The config file to check (default: the one the other commands use).
        path: Option<PathBuf>,
    },
    /// Which backends, devices and ports are usable, and why not.
    Doctor,
    /// Throughput per stage (this version: preprocessing, CPU and CUDA).
    Bench {
        /// Preprocessing backend(s) to measure: cpu, cuda or all (those available).
        #[arg(long, default_value = "all", value_parser = ["cpu", "cuda", "all"])]
        preprocess: String,
        /// Slices per batch.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// One JSON object per backend instead of a table.
        #[arg(long)]
        json: bool,
        /// Measure inference instead, with the configured model: tract, openvino, onnxruntime,
        /// tensorrt or all (those available; OpenVINO in f32, where the CPU runs it bf16, and
        /// the bundle's int8 variant, if any, with its parity).
        #[arg(long, value_parser = ["tract", "openvino", "onnxruntime", "tensorrt", "all"])]
        engine: Option<String>,
        /// Seconds per engine measurement.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Measure decoding and end to end (decode, lung mask, preprocess, infer with the
        /// configured engine) on these files or folders instead.
        #[arg(long)]
        input: Vec<PathBuf>,
    },
    /// Write preprocessed tensors for training (tensors.npy, index.csv, params.json).
    Prep {
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// CSV with columns `file` (relative to its ROOT) and `covid` (0/1).
        #[arg(long)]
        labels: Option<PathBuf>,
        /// Also write a window + lung-mask picture per slice (png/).
        #[arg(long)]
        png: bool,
        /// Also write each slice's Hounsfield units and lung mask as .npy (hu/), for the
        /// lesion simulator.
        #[arg(long)]
        hu: bool,
        /// Window center (HU).
        #[arg(long, default_value_t = Params::default().window_center, allow_negative_numbers = true)]
        window_center: f64,
        /// Window width (HU).
        #[arg(long, default_value_t = Params::default().window_width)]
        window_width: f64,
        /// Do not mask outside the lungs.
        #[arg(long)]
        no_lung_mask: bool,
        /// Output size (square).
        #[arg(long, default_value_t = Params::default().size)]
        size: usize,
        /// Also read 8-bit PNG images, mapping grey 0–255 linearly onto this display window
        /// `CENTER,WIDTH` in HU (e.g. `-600,1500`); training material without Hounsfield units.
        #[arg(long, value_parser = parse_window, allow_hyphen_values = true)]
        assume_window: Option<(f64, f64)>,
        /// Input files or folders.
        #[arg(required = true)]
        roots: Vec<PathBuf>,
    },
}

/// Parses `CENTER,WIDTH` (HU) with a positive width.
fn parse_window(v: &str) -> Result<(f64, f64), String> {
    let bad = || format!("{v:?}: expected CENTER,WIDTH in HU with WIDTH > 0, e.g. -600,1500");
    let (c, w) = v.split_once(',').ok_or_else(bad)?;
    let (c, w) = (c.trim().parse::<f64>().map_err(|_| bad())?, w.trim().parse::<f64>().map_err(|_| bad())?);
    if w > 0.0 && c.is_finite() && w.is_finite() {
        Ok((c, w))
    } else {
        Err(bad())
    }
}

/// A failure with its exit code: 1 runtime, 2 usage or configuration.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure { code: 1, error }
    }
}

fn usage(msg: impl std::fmt::Display) -> Failure {
    Failure { code: 2, error: anyhow::anyhow!("{msg}") }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = match cli.verbose {
        0 => None,
        1 => Some(log::LevelFilter::Debug),
        _ => Some(log::LevelFilter::Trace),
    };
    logging::init(verbosity.unwrap_or(log::LevelFilter::Info));
    // Never a panic: a bug anywhere becomes an error message and exit code 1.
    std::panic::set_hook(Box::new(|info| {
        if ingest::in_guarded_decoder() {
            log::debug!("decoder panic on malformed input (caught): {info}");
        } else {
            log::error!("internal error: {info}");
        }
    }));
    let result = std::panic::catch_unwind(|| dispatch(cli, verbosity))
        .unwrap_or_else(|_| Err(Failure { code: 1, error: anyhow::anyhow!("internal error (see the log above); please report it") }));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

/// Loads the config found by the lookup order; where there is none, read-only commands use the
/// built-in defaults and the others (`required`) refuse, naming the places tried.
fn settings(source: &ConfigSource, verbosity: Option<log::LevelFilter>, required: bool) -> Result<Settings, Failure> {
    let s = match source.path() {
        Some(path) => Settings::load(path).map_err(usage)?,
        None if !required => Settings::defaults(std::path::Path::new(".")),
        None => return Err(usage(format!("no config file: {source}"))),
    };
    log::debug!("config: {source}");
    logging::set_level(verbosity.unwrap_or(s.log_level));
    Ok(s)
}

fn dispatch(cli: Cli, verbosity: Option<log::LevelFilter>) -> Result<u8, Failure> {
    let config = ConfigSource::locate(cli.config.as_deref());
    match cli.command {
        Command::CheckConfig { path, deep } => {
            let source = path.map(ConfigSource::Flag).unwrap_or(config);
            let Some(path) = source.path() else { return Err(usage(format!("no config file to check: {source}"))) };
            match Settings::load(path) {
                Ok(s) if deep => {
                    let problems = ctsentry::doctor::check(&s, &ctsentry::doctor::ServiceUser::guess());
                    for p in &problems {
                        eprintln!("{}: {p}", path.display());
                    }
                    for w in ctsentry::doctor::tls_warnings(&s) {
                        eprintln!("{}: warning: {w}", path.display());
                    }
                    if problems.is_empty() {
                        println!("{}: ok (model, engine, folders, alert devices, TLS files, drift reference checked)", path.display());
                    }
                    Ok(if problems.is_empty() { 0 } else { 2 })
                }
                Ok(_) => {
                    println!("{}: ok", path.display());
                    Ok(0)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(2)
                }
            }
        }
        Command::Inspect { json, paths } => {
            let s = settings(&config, verbosity, false)?;
            cmd_inspect(&s, json, &paths)
        }
        Command::Run => {
            let s = settings(&config, verbosity, true)?;
            let path = config.path().expect("run requires a config file");
            match ctsentry::daemon::run(s, path) {
                Ok(()) => Ok(0),
                Err(e @ (ctsentry::daemon::DaemonError::Setup(_) | ctsentry::daemon::DaemonError::Locked(_))) => Err(usage(e)),
                Err(e) => Err(Failure::from(anyhow::Error::new(e))),
            }
        }
        Command::Ack { by } => {
            let s = settings(&config, verbosity, true)?;
            // The daemon's last word on the latch (written every second and at stop).
            if let Ok(snap) = ctsentry::status::read(&s.paths.state) {
                if snap.latched.is_none() {
                    eprintln!("no alert is latched; nothing to acknowledge (nothing sent)");
                    return Ok(0);
                }
            }
            let p = ctsentry::durable::StateDir::new(&s.paths.state).request_ack(&by).with_context(|| format!("writing to {}", s.paths.state.display()))?;
            if ctsentry::durable::StateDir::new(&s.paths.state).is_locked() {
                eprintln!("acknowledgement requested ({}); the daemon clears the alert within a second", p.display());
            } else {
                eprintln!("acknowledgement stored ({}); no daemon is running on this state folder: it applies at its next start", p.display());
            }
            Ok(0)
        }
        Command::Status { json } => {
            let s = settings(&config, verbosity, true)?;
            let snap = ctsentry::status::read(&s.paths.state).map_err(|e| Failure::from(anyhow::Error::new(e)))?;
            let running = ctsentry::durable::StateDir::new(&s.paths.state).is_locked();
            let now = ctsentry::durable::now();
            if json {
                println!("{}", ctsentry::status::to_json(&snap, running, now));
            } else {
                print!("{}", ctsentry::status::to_text(&snap, running, now));
            }
            Ok(if running { 0 } else { 1 })
        }
        Command::Score { json, paths } => {
            let s = settings(&config, verbosity, false)?;
            cmd_score(&s, json, &paths)
        }
        Command::Eval { labels, json, out, pick_threshold, assume_window, root } => {
            let mut s = settings(&config, verbosity, false)?;
            s.ingest.display_window = assume_window;
            cmd_eval(&s, &labels, json, out.as_deref(), pick_threshold.as_deref(), &root)
        }
        Command::Commission { labels, json, out, parity, root } => {
            let s = settings(&config, verbosity, false)?;
            cmd_commission(&s, &ctsentry::commission::Request { labels: &labels, root: &root, out: out.as_deref(), parity }, json)
        }
        Command::Doctor => {
            let report = ctsentry::doctor::run(&config);
            print!("{}", report.text);
            Ok(if report.problems.is_empty() { 0 } else { 1 })
        }
        Command::Bench { input, json, .. } if !input.is_empty() => {
            let s = settings(&config, verbosity, true)?;
            cmd_bench_files(&s, &input, json)
        }
        Command::Bench { engine: Some(engine), batch, json, seconds, .. } => {
            let s = settings(&config, verbosity, true)?;
            cmd_bench_engines(&s, &engine, batch.max(1), json, seconds)
        }
        Command::Bench { preprocess, batch, json, .. } => cmd_bench(&preprocess, batch.max(1), json),
        Command::Prep { out, labels, png, hu, window_center, window_width, no_lung_mask, size, assume_window, roots } => {
            let mut s = settings(&config, verbosity, false)?;
            s.ingest.display_window = assume_window;
            let params = Params { window_center, window_width, lung_mask: !no_lung_mask, size, ..Params::default() };
            params.validate().map_err(usage)?;
            let labels = labels.map(|l| prep::read_labels(&l)).transpose().map_err(usage)?;
            let t = std::time::Instant::now();
            let sum = prep::run(&roots, &out, labels.as_ref(), prep::Extras { png, hu }, &params, &s.ingest, &Cpu).context("prep")?;
            eprintln!(
                "prep: {} slices of {} series ({} labelled) in {:.1} s; {} inputs skipped (see skipped.csv) -> {}",
                sum.slices,
                sum.series,
                sum.labelled,
                t.elapsed().as_secs_f64(),
                sum.skipped,
                out.display()
            );
            Ok(0)
        }
    }
}

fn scorer(s: &Settings) -> Result<ctsentry::score::Scorer, Failure> {
    ctsentry::score::Scorer::from_settings(s).map_err(usage)
}

/// One JSON line of a typed output.
fn json_line(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("output types serialise")
}

fn cmd_score(s: &Settings, json: bool, paths: &[PathBuf]) -> Result<u8, Failure> {
    let files = ingest::collect_files(paths).map_err(usage)?;
    // The model loads (and the engine compiles it) while the files are decoded.
    let (sc, (slices, errors)) = std::thread::scope(|scope| {
        let loading = scope.spawn(|| scorer(s));
        let read = ingest::read_files(&files, &s.ingest);
        (loading.join().unwrap_or_else(|p| std::panic::resume_unwind(p)), read)
    });
    let sc = sc?;
    for e in &errors {
        if json {
            println!("{}", json_line(&ScoreLine::Error { file: e.path().display().to_string(), error: e.to_string() }));
        } else {
            eprintln!("skipped: {e}");
        }
    }
    let m = &sc.model.manifest.model;
    let mut progress = ctsentry::report::Progress::new("scoring", slices.len());
    for ser in ingest::series::assemble(slices) {
        let r = sc.score(&ser).map_err(|e| Failure::from(anyhow::anyhow!("series {}: {e}", ser.uid)))?;
        progress.add(r.slices.len());
        if json {
            for sl in &r.slices {
                println!("{}", json_line(&ScoreLine::Slice { series_uid: r.uid.clone(), score: sl.clone() }));
            }
            let skipped = r.slices.iter().filter(|s| s.skipped.is_some()).count();
            println!("{}", json_line(&ScoreLine::Series { summary: Box::new(SeriesSummary::new(&r.uid, r.decision, &sc.rule, &sc)), skipped }));
        } else {
            println!("series {}  ({} slices)", r.uid, r.slices.len());
            println!("  {:>5} {:>6} {:>6} {:>7}  file", "index", "z", "lung", "prob");
            for sl in &r.slices {
                let prob = if sl.skipped.is_some() { "skipped".to_string() } else { format!("{:.4}", sl.prob) };
                println!("  {:>5} {:>6.3} {:>6.3} {:>7}{} {}", sl.slice_index, sl.z, sl.lung_fraction, prob, if sl.positive { "*" } else { " " }, sl.file.display());
            }
            println!(
                "  verdict: {:?} — {} of {} slices ≥ {:.3} ({}), {} mm, {:.1} % of the lung; needed {}; {} without lung not scored; max prob {:.4}; model {} {} (sha256 {}…), engine {} {}, preprocess {}",
                r.decision.verdict, r.decision.positives, r.decision.slices, sc.rule.threshold, sc.rule.threshold_source,
                r.decision.positive_extent_mm.map_or("unknown".into(), |e| format!("{e:.1}")), r.decision.positive_share * 100.0, sc.rule.describe(), r.slices.iter().filter(|s| s.skipped.is_some()).count(), r.decision.max_prob, m.name, m.version, &m.sha256[..12], sc.engine.name(), sc.engine.precision(), sc.pre.name()
            );
        }
    }
    progress.finish();
    Ok(if errors.is_empty() { 0 } else { 1 })
}

fn cmd_commission(s: &Settings, req: &ctsentry::commission::Request<'_>, json: bool) -> Result<u8, Failure> {
    use ctsentry::commission::{run, CommissionError};
    let c = run(s, req).map_err(|e| match e {
        CommissionError::Labels(_) | CommissionError::Setup(_) | CommissionError::Claims { .. } | CommissionError::Empty(_) => usage(e),
        e => Failure::from(anyhow::Error::new(e)),
    })?;
    for err in &c.skipped_files {
        eprintln!("skipped: {err}");
    }
    if json {
        println!("{}", serde_json::to_string(&c).expect("the result serialises"));
    } else {
        print!("{}", c.to_text());
        if let Some(dir) = req.out {
            println!("report: {}", dir.join("report.html").display());
        }
    }
    Ok(if c.within_claims { 0 } else { 1 })
}

fn cmd_eval(s: &Settings, labels: &std::path::Path, json: bool, out: Option<&std::path::Path>, pick: Option<&str>, root: &std::path::Path) -> Result<u8, Failure> {
    let target_sensitivity = pick
        .map(|p| {
            p.strip_prefix("sensitivity=")
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| (0.0..=1.0).contains(v))
                .ok_or_else(|| usage(format!("--pick-threshold {p:?}: expected sensitivity=VALUE with VALUE in [0, 1]")))
        })
        .transpose()?;
    let req = ctsentry::eval::Request { labels, root, out, target_sensitivity };
    let e = ctsentry::eval::run(s, &req).map_err(|e| match e {
        ctsentry::eval::EvalError::Labels(_) | ctsentry::eval::EvalError::Setup(_) => usage(e),
        e => Failure::from(anyhow::Error::new(e)),
    })?;
    for err in &e.skipped_files {
        eprintln!("skipped: {err}");
    }
    if !e.seen_in_training.is_empty() {
        eprintln!(
            "warning: {} of {} evaluated series were in the model's training data (manifest [training] series_uids: {}); these numbers do not estimate performance on new patients",
            e.seen_in_training.len(),
            e.series,
            e.seen_in_training.join(", ")
        );
    }
    if json {
        println!("{}", e.to_json());
    } else {
        let (table, m) = (&e.table, &e.model);
        let f = |v: Option<f64>| v.map(|x| format!("{x:.4}")).unwrap_or_else(|| "n/a".into());
        println!("evaluation of {} labelled slices (model {} {}, threshold {} from {})", e.slices, m.name, m.version, e.threshold.0, e.threshold.1);
        println!("  TP {}  TN {}  FP {}  FN {}", table.tp, table.tn, table.fp, table.fn_);
        println!("  accuracy {}  loss {}  misclassification rate {}  AUC {}", f(table.accuracy), f(table.loss), f(table.misclassification_rate), f(table.auc));
        println!("  sensitivity {}  specificity {}  PPV {}  NPV {}", f(table.sensitivity), f(table.specificity), f(table.ppv), f(table.npv));
        if let Some((t, p)) = e.picked {
            println!("  threshold for sensitivity ≥ {t}: {}", p.map(|x| format!("{x:.6}")).unwrap_or_else(|| "n/a (no positives)".into()));
        }
        if !e.skipped_files.is_empty() {
            println!("  {} labelled files could not be read (see above)", e.skipped_files.len());
        }
    }
    Ok(0)
}

fn cmd_bench(which: &str, batch: usize, json: bool) -> Result<u8, Failure> {
    use ctsentry::bench;
    let mut results = Vec::new();
    let mut failed = false;
    if which != "cuda" {
        results.push(bench::cpu(batch));
    }
    if which != "cpu" {
        match bench::cuda(batch) {
            Err(e) if which == "all" => eprintln!("cuda: skipped: {e}"),
            r => results.push(r),
        }
    }
    if !json {
        println!(
            "{:<6} {:>12} {:>8} {:>6} {:>12} {:>14} {:>10} {:>10} {:>7}",
            "stage", "max err", "limit", "batch", "slices/s", "kernel sl/s", "kernel GB/s", "copy GB/s", "% copy"
        );
    }
    for r in results {
        match r {
            Ok(b) => {
                if json {
                    println!("{}", serde_json::to_string(&b).context("serialising")?);
                } else {
                    let opt = |v: Option<f64>, p: usize| v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into());
                    let share = b.kernel_gb_per_s.zip(b.copy_gb_per_s).map(|(k, c)| 100.0 * k / c);
                    println!(
                        "{:<6} {:>12.3e} {:>8.0e} {:>6} {:>12.0} {:>14} {:>10} {:>10} {:>7}",
                        format!("{}", b.backend),
                        b.max_error_vs_reference,
                        b.tolerance,
                        b.batch,
                        b.slices_per_s,
                        opt(b.kernel_slices_per_s, 0),
                        opt(b.kernel_gb_per_s, 1),
                        opt(b.copy_gb_per_s, 1),
                        opt(share, 1)
                    );
                    if let Some(d) = b.device {
                        println!("       device: {d}");
                    }
                }
            }
            Err(e) => {
                eprintln!("bench failed: {e}");
                failed = true;
            }
        }
    }
    eprintln!("(inference: ctsentry bench --engine all; decoding: cargo bench --bench decode)");
    Ok(if failed { 1 } else { 0 })
}

fn cmd_bench_files(s: &Settings, input: &[PathBuf], json: bool) -> Result<u8, Failure> {
    let files = ingest::collect_files(input).map_err(usage)?;
    let t = std::time::Instant::now();
    let (slices, errors) = ingest::read_files(&files, &s.ingest);
    let decode = slices.len() as f64 / t.elapsed().as_secs_f64();
    drop(slices);
    let sc = scorer(s)?;
    let t = std::time::Instant::now();
    let (slices, _) = ingest::read_files(&files, &s.ingest);
    let n = slices.len();
    for ser in ingest::series::assemble(slices) {
        sc.score(&ser).map_err(|e| Failure::from(anyhow::anyhow!("series {}: {e}", ser.uid)))?;
    }
    let e2e = n as f64 / t.elapsed().as_secs_f64();
    let v = serde_json::json!({"slices": n, "unreadable": errors.len(), "decode_slices_per_s": decode, "end_to_end_slices_per_s": e2e,
        "engine": sc.engine.name(), "preprocess": sc.pre.name(), "threads": rayon::current_num_threads()});
    if json {
        println!("{v}");
    } else {
        println!("{n} slices ({} unreadable files), {} threads", errors.len(), rayon::current_num_threads());
        println!("decode      {decode:8.1} slices/s");
        println!("end to end  {e2e:8.1} slices/s (decode, lung mask, preprocess {}, infer {})", sc.pre.name(), sc.engine.name());
    }
    Ok(0)
}

fn cmd_bench_engines(s: &Settings, which: &str, batch: usize, json: bool, seconds: f64) -> Result<u8, Failure> {
    let model = ctsentry::model::Model::load(&s.model_path).map_err(usage)?;
    let m = &model.manifest;
    let label = format!("{} {}", m.model.name, m.model.version);
    use ctsentry::config::Precision;
    // Each engine in each precision it runs here: OpenVINO in f32, (where the CPU runs it) bf16,
    // and (where the bundle has one) the int8 variant, whatever its parity: the row says it.
    let mut runs: Vec<(&str, Precision)> = Vec::new();
    for name in if which == "all" { vec!["tract", "openvino", "onnxruntime", "tensorrt"] } else { vec![which] } {
        if name == "openvino" && s.precision == Precision::Auto {
            runs.push((name, Precision::F32));
            if ctsentry::engine::openvino::cpu_has_bf16() {
                runs.push((name, Precision::Bf16));
            }
            if m.int8.is_some() {
                runs.push((name, Precision::Int8));
            }
        } else {
            runs.push((name, s.precision));
        }
    }
    let mut failed = false;
    for (name, precision) in runs {
        let mut with = s.clone();
        with.precision = precision;
        let r = ctsentry::score::engine_named(&model, &with, name).and_then(|e| ctsentry::bench::infer(e.as_ref(), &label, m.input.size, batch, seconds));
        match r {
            Ok(b) if json => println!("{}", serde_json::to_string(&b).context("serialising")?),
            Ok(b) => {
                let parity = match (b.precision.as_str(), m.int8.as_ref()) {
                    ("int8", Some(q)) => format!("  ({})", q.parity.status()),
                    _ => String::new(),
                };
                println!("{:<12} {:<5} {:<28} batch {:>3}  {:>8.1} images/s{parity}", b.engine, b.precision, b.model, b.batch, b.images_per_s)
            }
            Err(e) if which == "all" => eprintln!("{name}: skipped: {e}"),
            Err(e) => {
                eprintln!("{name}: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

fn cmd_inspect(s: &Settings, json: bool, paths: &[PathBuf]) -> Result<u8, Failure> {
    let files = ingest::collect_files(paths).map_err(usage)?;
    let mut failures = 0;
    if !json {
        println!("{:<48} {:<6} {:<24} {:<4} {:>9} {:>6} {:>8} {:>8} {:>8}", "file", "kind", "transfer syntax", "mod", "size", "n", "hu_min", "hu_max", "hu_mean");
    }
    for f in &files {
        let r = inspect::inspect_file(f, &s.ingest);
        failures += usize::from(r.error.is_some());
        if json {
            println!("{}", serde_json::to_string(&r).context("serialising report")?);
        } else if let Some(e) = &r.error {
            println!("{:<48} error: {e}", r.file);
        } else {
            let ts = r.transfer_syntax.as_deref().map(|t| ingest::dicom::transfer_syntax_name(t).to_string()).unwrap_or_else(|| "-".into());
            println!(
                "{:<48} {:<6} {:<24.24} {:<4} {:>9} {:>6} {:>8.0} {:>8.0} {:>8.1}",
                r.file,
                match r.kind {
                    Some(ingest::SourceKind::Dicom) => "dicom",
                    Some(ingest::SourceKind::Image) => "image",
                    _ => "nifti",
                },
                ts,
                r.modality.as_deref().unwrap_or("-"),
                format!("{}x{}", r.rows.unwrap_or(0), r.cols.unwrap_or(0)),
                r.frames.or(r.slices).unwrap_or(0),
                r.hu_min.unwrap_or(0.0),
                r.hu_max.unwrap_or(0.0),
                r.hu_mean.unwrap_or(0.0),
            );
        }
    }
    Ok(if failures > 0 { 1 } else { 0 })
}
