//! The daemon end to end, as a separate process: drop folder to verdicts, SIGKILL at random
//! moments, SIGTERM, SIGHUP, `ctsentry ack`, the burst of many files.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ctsentry"))
}

/// A daemon config over `root/var` with the tiny model (lung mask off: synthetic slices have no
/// lungs), `extra` appended.
fn config(root: &Path, extra: &str) -> PathBuf {
    let model = tiny_model_unmasked(root);
    let p = root.join("c.toml");
    std::fs::write(
        &p,
        format!(
            "[paths]\nincoming = \"var/incoming\"\ndone = \"var/done\"\nquarantine = \"var/quarantine\"\nresults = \"var/results\"\nstate = \"var/state\"\n\
             [model]\npath = \"{}\"\n[preprocess]\nbackend = \"cpu\"\n[engine]\nbackend = \"tract\"\nthreads = 2\n\
             [decision]\nthreshold = 0.5\nmin_positive_slices = 2\n[series]\nquiet_seconds = 1.0\n\
             [watch]\nmode = \"inotify\"\npoll_seconds = 0.2\nstable_seconds = 0.2\n[disk]\nmin_free_mb = 0\n{extra}",
            model.display()
        ),
    )
    .unwrap();
    p
}

/// Writes series `name` (6 slices) under `dir/name/`; `base` HU shifts its density (the tiny
/// model scores denser series higher).
fn write_series(dir: &Path, name: &str, uid: &str, base: i32, n: i32) {
    std::fs::create_dir_all(dir.join(name)).unwrap();
    for k in 0..n {
        let mut s = CtSlice::pattern(48, 48, k, 2.5 * k as f64);
        s.series_uid = uid.into();
        s.sop_uid = format!("{uid}.{k}");
        s.rescale = Some((1.0, -1024.0));
        s.stored = s.stored.iter().map(|v| (v / 10 + base + 1024).max(0)).collect();
        s.write(&dir.join(format!("{name}/{k}.dcm")), EXPLICIT_LE);
    }
}

/// Moves every file of `src` into `incoming` the way a careful sender does: write under a
/// temporary name, then rename.
fn drop_into(src: &Path, incoming: &Path) {
    for f in walk(src) {
        let rel = f.strip_prefix(src).unwrap();
        let dst = incoming.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let tmp = dst.with_file_name(format!(".{}.part", dst.file_name().unwrap().to_string_lossy()));
        std::fs::copy(&f, &tmp).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn rels(dir: &Path) -> Vec<String> {
    walk(dir).iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect()
}

fn start(cfg: &Path, log: &Path) -> Child {
    start_with(cfg, log, &[])
}

/// Starts the daemon with extra environment variables (the debug builds' failpoints), its
/// stderr appended to `log`.
fn start_with(cfg: &Path, log: &Path, env: &[(&str, &str)]) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    bin().args(["--config", cfg.to_str().unwrap(), "run"]).envs(env.iter().copied()).stdout(Stdio::null()).stderr(log).spawn().unwrap()
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn events(results: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(results.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("events.jsonl line {l:?}: {e}")))
        .collect()
}

/// The final verdicts in the feed, in order.
fn finals(results: &Path) -> Vec<serde_json::Value> {
    events(results).into_iter().filter(|e| e["stage"] == "FINAL").collect()
}

/// What `ctsentry score --json` says about each series (the batch path; the daemon must agree).
fn batch_verdicts(cfg: &Path, src: &Path) -> BTreeMap<String, (String, u64)> {
    let out = bin().args(["--config", cfg.to_str().unwrap(), "score", "--json", src.to_str().unwrap()]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "series")
        .map(|v| (v["series_uid"].as_str().unwrap().to_string(), (v["verdict"].as_str().unwrap().to_string(), v["positives"].as_u64().unwrap())))
        .collect()
}

/// Starts the daemon of `cfg` (its folders under `root/var`, its log in `root/daemon.log`) and
/// drops `root/src` into its incoming folder: the child, the results folder and the log.
fn start_and_drop(root: &Path, cfg: &Path) -> (Child, PathBuf, PathBuf) {
    let var = root.join("var");
    std::fs::create_dir_all(var.join("incoming")).unwrap();
    let log = root.join("daemon.log");
    let child = start(cfg, &log);
    drop_into(&root.join("src"), &var.join("incoming"));
    (child, var.join("results"), log)
}

fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn sigkill_at_random_moments_loses_nothing_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    let src = root.join("src");
    // Three series: two dense (positive under the tiny model), one light (negative), arriving
    // in three waves, one of them nested as scanner exports do; plus a file that is not DICOM.
    write_series(&src.join("w1"), "light", "1.2.826.0.1.3680043.8.498.10", -900, 6);
    std::fs::write(src.join("w1/light/notes.dcm"), b"not a dicom file").unwrap();
    write_series(&src.join("w2/study1"), "dense", "1.2.826.0.1.3680043.8.498.11", 200, 6);
    write_series(&src.join("w3"), "dense2", "1.2.826.0.1.3680043.8.498.12", 300, 6);
    let expected = batch_verdicts(&cfg, &src);
    assert_eq!(expected.len(), 3, "{expected:?}");
    assert!(expected.values().filter(|v| v.0 == "positive").count() >= 1 && expected.values().any(|v| v.0 == "negative"), "{expected:?}");

    let var = root.join("var");
    let incoming = var.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let log = root.join("daemon.log");
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261127);
    let kills = 24;
    for k in 0..kills {
        match k {
            0 => drop_into(&src.join("w1"), &incoming),
            6 => drop_into(&src.join("w2"), &incoming),
            12 => drop_into(&src.join("w3"), &incoming),
            _ => {}
        }
        let mut child = start(&cfg, &log);
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..700)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Let it finish, then stop it politely (once it is up: a signal before its handlers exist
    // kills any process).
    let readies = |log: &Path| std::fs::read_to_string(log).unwrap_or_default().matches("] ready: ").count();
    let before = readies(&log);
    let mut child = start(&cfg, &log);
    assert!(wait_until(Duration::from_secs(30), || readies(&log) > before));
    let results = var.join("results");
    let done = wait_until(Duration::from_secs(120), || {
        walk(&incoming).is_empty() && events(&results).iter().filter(|e| e["stage"] == "FINAL").count() >= 3
    });
    signal(&child, libc::SIGTERM);
    let code = wait_exit(&mut child, Duration::from_secs(20));
    let logtext = std::fs::read_to_string(&log).unwrap();
    assert!(done, "not finished; log:\n{logtext}");
    let resumed = logtext.matches("] ready: ").filter(|_| true).count();
    let mid = logtext.lines().filter(|l| l.contains("] ready: ") && !l.ends_with("; 0 series open from before")).count();
    eprintln!("{kills} kills; {resumed} starts reached ready, {mid} of them resumed open series");
    assert!(mid >= 5, "the kills should hit while series are open:\n{logtext}");
    assert_eq!(code, Some(0), "SIGTERM exits 0");

    // Every input is in done/ or quarantine/, exactly once, under its own name.
    let mut inputs: Vec<String> = rels(&src).iter().map(|r| r.split_once('/').unwrap().1.to_string()).collect();
    inputs.sort();
    let mut outputs: Vec<String> = rels(&var.join("done"));
    let quarantined: Vec<String> = rels(&var.join("quarantine")).into_iter().filter(|r| !r.ends_with(".reason")).collect();
    outputs.extend(quarantined.iter().cloned());
    outputs.sort();
    assert_eq!(outputs, inputs, "log:\n{logtext}");
    assert_eq!(quarantined, vec!["light/notes.dcm".to_string()]);
    let reason = std::fs::read_to_string(var.join("quarantine/light/notes.dcm.reason")).unwrap();
    assert!(reason.contains("notes.dcm") && reason.contains("not a DICOM"), "{reason}");
    assert!(walk(&incoming).is_empty());

    // Exactly one final verdict per series, agreeing with `score`; exactly one early alert per
    // positive series; nothing for the negative one.
    let ev = events(&results);
    let finals: Vec<&serde_json::Value> = ev.iter().filter(|e| e["stage"] == "FINAL").collect();
    let earlies: Vec<&serde_json::Value> = ev.iter().filter(|e| e["stage"] == "EARLY").collect();
    assert_eq!(finals.len(), 3, "{ev:#?}");
    let ids: BTreeSet<&str> = ev.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), ev.len(), "no event twice");
    for (uid, (verdict, positives)) in &expected {
        let f: Vec<_> = finals.iter().filter(|e| e["series_uid"] == uid.as_str()).collect();
        assert_eq!(f.len(), 1, "{uid}: {ev:#?}");
        assert_eq!(f[0]["event"], if verdict == "positive" { "ALERT" } else { "NEGATIVE" });
        assert_eq!(f[0]["positives"].as_u64().unwrap(), *positives, "{uid}");
        assert_eq!(f[0]["part"], 1);
        let e = earlies.iter().filter(|e| e["series_uid"] == uid.as_str()).count();
        assert_eq!(e, usize::from(verdict == "positive"), "{uid}: {ev:#?}");
        // The result file.
        let id = f[0]["series_id"].as_str().unwrap();
        assert!(id.len() == 64 && id.starts_with(f[0]["series_key"].as_str().unwrap()), "{id}");
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(results.join(format!("{id}.json"))).unwrap()).unwrap();
        assert_eq!(r["verdict"], verdict.as_str());
        assert_eq!(r["slice_scores"].as_array().unwrap().len(), 6);
        assert_eq!(r["threshold"], 0.5);
        assert_eq!(r["model"]["name"], "tiny-densenet");
        let idx: Vec<u64> = r["slice_scores"].as_array().unwrap().iter().map(|s| s["slice_index"].as_u64().unwrap()).collect();
        assert_eq!(idx, (0..6).collect::<Vec<_>>());
    }
    assert_eq!(walk(&results).iter().filter(|p| p.extension().is_some_and(|e| e == "json")).count(), 3);
    // Heat maps for positive slices only.
    let maps = walk(&results).iter().filter(|p| p.extension().is_some_and(|e| e == "png")).count();
    let positives: u64 = expected.values().map(|v| v.1).sum();
    assert_eq!(maps as u64, positives);
    // No patient data in the log.
    assert!(!logtext.contains("PatientName") && !logtext.to_lowercase().contains("doe^"), "{logtext}");
}

#[test]
fn ack_reload_and_bad_reload_while_running() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    let log = root.join("daemon.log");
    let var = root.join("var");
    let mut child = start(&cfg, &log);
    write_series(&root.join("src"), "dense", "1.2.826.0.1.3680043.8.498.21", 200, 4);
    std::fs::create_dir_all(var.join("incoming")).unwrap();
    drop_into(&root.join("src"), &var.join("incoming"));
    let results = var.join("results");
    assert!(wait_until(Duration::from_secs(60), || events(&results).iter().any(|e| e["stage"] == "FINAL")), "{}", std::fs::read_to_string(&log).unwrap());
    // A broken config on SIGHUP is refused and the daemon keeps running.
    let good = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, good.replace("min_positive_slices = 2", "min_positive_slices = \"x\"")).unwrap();
    signal(&child, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log).unwrap().contains("reload refused")));
    // A good one with a fixed field changed: applied, the fixed field named.
    std::fs::write(&cfg, good.replace("threshold = 0.5", "threshold = 0.6").replace("threads = 2", "threads = 1")).unwrap();
    signal(&child, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || std::fs::read_to_string(&log).unwrap().contains("threshold 0.6000 (config)")));
    assert!(std::fs::read_to_string(&log).unwrap().contains("engine.threads cannot change while running"));
    // Acknowledge the latched alert.
    let out = bin().args(["--config", cfg.to_str().unwrap(), "ack", "--by", "tech 12"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("daemon clears the alert"));
    assert!(wait_until(Duration::from_secs(10), || !var.join("state/ack.request").exists()));
    let journal = std::fs::read_to_string(var.join("state/journal.jsonl")).unwrap();
    assert!(journal.contains("\"ev\":\"ack\"") && journal.contains("tech 12"), "{journal}");
    // A second daemon on the same state folder refuses to start.
    let second = bin().args(["--config", cfg.to_str().unwrap(), "run"]).output().unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&second.stderr).contains("another `ctsentry run`"));
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

fn status_json(cfg: &Path) -> serde_json::Value {
    let out = bin().args(["status", "--json", "--config", cfg.to_str().unwrap()]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Reads serial lines until one satisfies `done` (or `within` passes); returns all read.
fn read_until(port: &mut serialport::TTYPort, buf: &mut Vec<u8>, within: Duration, done: impl Fn(&[String]) -> bool) -> Vec<Vec<String>> {
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < within {
        let lines = read_lines(port, buf, 1, Duration::from_millis(200));
        let hit = lines.iter().any(|l| done(l));
        seen.extend(lines);
        if hit {
            break;
        }
    }
    seen
}

/// A pty and a sysfs-shaped LED tree under `root`, and the config lines that point the daemon's
/// serial and LED sinks at them.
fn alert_peers(root: &Path) -> (serialport::TTYPort, [PathBuf; 3], String) {
    let link = root.join("ttyCTS");
    let port = plug(&link);
    let leds = led_tree(&root.join("leds"));
    let extra = format!(
        "[alert.serial]\nenabled = true\nport = \"{}\"\nheartbeat_seconds = 3600\n[alert.led]\nenabled = true\ndriver = \"sysfs\"\ngreen = \"{}\"\nred = \"{}\"\namber = \"{}\"\n",
        link.display(),
        leds[0].display(),
        leds[1].display(),
        leds[2].display()
    );
    (port, leds, extra)
}

#[test]
fn a_missing_model_keeps_the_daemon_up_with_a_visible_fault_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut port, leds, extra) = alert_peers(root);
    let cfg = config(root, &extra);
    let model = root.join("tiny.onnx");
    std::fs::rename(&model, root.join("tiny.onnx.aside")).unwrap();
    let log = root.join("daemon.log");
    let var = root.join("var");
    let mut child = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut buf = Vec::new();

    // Up, and saying what is wrong: READY, FAULT,MODEL, red blinking, status naming the fault.
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(30), |l| l[2] == "FAULT");
    let kinds: Vec<&str> = lines.iter().map(|l| l[2].as_str()).collect();
    assert_eq!(kinds, ["READY", "FAULT"], "{lines:?}\n{}", read_log());
    assert_eq!(lines[1][3], "MODEL");
    assert!(wait_until(Duration::from_secs(5), || look(&leds) == ["off", "blink", "off"]), "{:?}", look(&leds));
    assert!(wait_until(Duration::from_secs(5), || var.join("state/status.json").exists()));
    let st = status_json(&cfg);
    assert_eq!((st["running"].as_bool(), st["faults"].clone()), (Some(true), serde_json::json!(["MODEL"])), "{st:#}");
    assert!(child.try_wait().unwrap().is_none(), "{}", read_log());
    assert!(read_log().contains("staying up with FAULT MODEL"), "{}", read_log());

    // Files that arrive meanwhile wait, untouched.
    write_series(&root.join("src"), "s", "1.2.826.0.1.3680043.8.498.31", 0, 3);
    drop_into(&root.join("src"), &var.join("incoming"));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rels(&var.join("incoming")).len(), 3);

    // The model put back, SIGHUP: CLEAR,MODEL, then the waiting series is scored.
    std::fs::rename(root.join("tiny.onnx.aside"), &model).unwrap();
    signal(&child, libc::SIGHUP);
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(60), |l| l.get(7).is_some_and(|s| s == "FINAL"));
    assert_eq!(lines[0][2..4], ["CLEAR".to_string(), "MODEL".to_string()], "{lines:?}\n{}", read_log());
    assert!(lines.last().is_some_and(|l| l[2] == "NEGATIVE" || l[2] == "ALERT"), "{lines:?}\n{}", read_log());
    assert!(look(&leds)[1] != "blink", "{:?}", look(&leds));
    assert_eq!(status_json(&cfg)["faults"], serde_json::json!([]));

    // SIGTERM: STOPPING on the line, exit 0.
    signal(&child, libc::SIGTERM);
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(20), |l| l[2] == "STOPPING");
    assert!(lines.iter().any(|l| l[2] == "STOPPING"), "{lines:?}\n{}", read_log());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

/// Starts the daemon broken (`broken` edits the config text), checks READY then FAULT,`kind` on a
/// pty and red blinking on a LED tree, applies `fix` (given the root and the config), sends SIGHUP,
/// and checks CLEAR,`kind`, READY with the model's version and green again; then a file that is
/// not an image gives REJECT,CONTENT; SIGTERM gives STOPPING and exit 0.
fn starts_broken_then_recovers(kind: &str, broken: impl Fn(&Path, String) -> String, fix: impl Fn(&Path, &Path)) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let (mut port, leds, extra) = alert_peers(root);
    let cfg = config(root, &extra);
    std::fs::write(&cfg, broken(root, std::fs::read_to_string(&cfg).unwrap())).unwrap();
    let log = root.join("daemon.log");
    let mut child = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut buf = Vec::new();
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(30), |l| l[2] == "FAULT");
    let got: Vec<Vec<String>> = lines.iter().map(|l| l[2..].to_vec()).collect();
    assert_eq!(got, [vec!["READY".to_string(), "0.1.0;no-model".into(), "CLEAR".into()], vec!["FAULT".into(), kind.into()]], "{}", read_log());
    assert!(wait_until(Duration::from_secs(5), || look(&leds) == ["off", "blink", "off"]), "{:?}", look(&leds));
    assert!(child.try_wait().unwrap().is_none(), "{}", read_log());

    fix(root, &cfg);
    signal(&child, libc::SIGHUP);
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(30), |l| l[2] == "READY");
    assert!(lines.iter().any(|l| l[2..4] == ["CLEAR".to_string(), kind.into()]), "{lines:?}\n{}", read_log());
    assert!(lines.last().is_some_and(|l| l[3].contains("tiny-densenet")), "{lines:?}");
    assert!(wait_until(Duration::from_secs(5), || look(&leds) == ["on", "off", "off"]), "{:?}", look(&leds));

    std::fs::write(root.join("var/incoming/notes.dcm"), b"not a DICOM file at all").unwrap();
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(30), |l| l[2] == "REJECT");
    assert_eq!(lines.last().map(|l| l[2..].to_vec()), Some(vec!["REJECT".to_string(), "CONTENT".into()]), "{lines:?}\n{}", read_log());
    assert!(root.join("var/quarantine/notes.dcm.reason").exists());

    signal(&child, libc::SIGTERM);
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(20), |l| l[2] == "STOPPING");
    assert!(lines.iter().any(|l| l[2] == "STOPPING"), "{lines:?}\n{}", read_log());
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

#[test]
fn an_output_folder_that_cannot_be_made_is_fault_disk_until_fixed() {
    // results/ would have to be created inside a plain file (root may write anywhere: a mode
    // bit would not stop the tests' user).
    starts_broken_then_recovers(
        "DISK",
        |root, cfg| {
            std::fs::write(root.join("blocked"), "not a folder").unwrap();
            cfg.replace("results = \"var/results\"", "results = \"blocked/results\"")
        },
        |root, _| std::fs::remove_file(root.join("blocked")).unwrap(),
    );
}

#[test]
fn an_engine_that_cannot_start_is_fault_engine_until_fixed() {
    if cfg!(feature = "onnxruntime") {
        eprintln!("notice: this build has the onnxruntime engine; the unavailable-engine case is tested in the default build");
        return;
    }
    starts_broken_then_recovers(
        "ENGINE",
        |_, cfg| cfg.replace("backend = \"tract\"", "backend = \"onnxruntime\""),
        |_, cfg| {
            let text = std::fs::read_to_string(cfg).unwrap().replace("backend = \"onnxruntime\"", "backend = \"tract\"");
            std::fs::write(cfg, text).unwrap();
        },
    );
}

#[test]
fn a_daemon_waiting_for_its_model_holds_its_state_folder_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    std::fs::remove_file(root.join("tiny.onnx")).unwrap();
    let log = root.join("daemon.log");
    let mut child = start(&cfg, &log);
    assert!(wait_until(Duration::from_secs(30), || root.join("var/state/status.json").exists()), "{}", std::fs::read_to_string(&log).unwrap());
    let st = status_json(&cfg);
    assert_eq!((st["faults"].clone(), st["running"].as_bool()), (serde_json::json!(["MODEL"]), Some(true)), "{st:#}");
    // It holds its state folder while it waits: a second daemon is refused.
    let second = bin().args(["--config", cfg.to_str().unwrap(), "run"]).output().unwrap();
    assert_eq!(second.status.code(), Some(2), "{}", String::from_utf8_lossy(&second.stderr));
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

/// Two Series Instance UIDs whose 8-hex-digit keys are equal (found by search: 32 bits collide
/// after about 80,000 tries).
fn colliding_uids() -> (String, String) {
    let mut seen = std::collections::HashMap::new();
    for n in 0u64.. {
        let uid = format!("1.2.826.0.1.3680043.9.7307.{n}");
        let key = ctsentry::alert::SeriesKey::of(&uid, 1).to_string();
        if let Some(first) = seen.insert(key, uid.clone()) {
            return (first, uid);
        }
    }
    unreachable!()
}

#[test]
fn two_series_sharing_a_display_key_keep_their_own_verdicts_and_results() {
    let (a, b) = colliding_uids();
    assert_eq!(ctsentry::alert::SeriesKey::of(&a, 1), ctsentry::alert::SeriesKey::of(&b, 1));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    write_series(&root.join("src"), "a", &a, 200, 3);
    write_series(&root.join("src"), "b", &b, 0, 4);
    let (mut child, results, log) = start_and_drop(root, &cfg);
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() >= 2), "{:#?}\n{}", events(&results), std::fs::read_to_string(&log).unwrap());
    let f = finals(&results);
    assert_eq!(f.len(), 2, "{f:#?}");
    for (uid, n) in [(&a, 3), (&b, 4)] {
        let e = f.iter().find(|e| e["series_uid"] == uid.as_str()).unwrap_or_else(|| panic!("no FINAL for {uid}: {f:#?}"));
        assert_eq!(e["slices"], n);
        let id = ctsentry::alert::series_id(uid, 1);
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(results.join(format!("{id}.json"))).unwrap()).unwrap();
        assert_eq!((r["series_uid"].as_str(), r["slices"].as_u64()), (Some(uid.as_str()), Some(n)));
    }
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

#[test]
fn a_file_that_makes_a_worker_panic_is_quarantined_and_its_batch_mates_are_scored() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    let uid = "1.2.826.0.1.3680043.8.498.61";
    write_series(&root.join("src"), "s", uid, 0, 6);
    // Slice 3 is the poison: the failpoint (debug builds) panics while reading it.
    std::fs::rename(root.join("src/s/3.dcm"), root.join("src/s/poison.dcm")).unwrap();
    let var = root.join("var");
    std::fs::create_dir_all(var.join("incoming")).unwrap();
    let log = root.join("daemon.log");
    let mut child = start_with(&cfg, &log, &[("CTSENTRY_TEST_PANIC_ON", "poison.dcm")]);
    // All six at once, so the poison shares a batch with the others.
    drop_into(&root.join("src"), &var.join("incoming"));
    let results = var.join("results");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || events(&results).iter().any(|e| e["stage"] == "FINAL")), "{}", read_log());
    let f = finals(&results);
    assert_eq!(f[0]["slices"], 5, "the five good slices, once each: {f:#?}");
    let reason = std::fs::read_to_string(var.join("quarantine/s/poison.dcm.reason")).unwrap();
    assert!(reason.contains("internal error while reading or scoring this file"), "{reason}");
    assert_eq!(rels(&var.join("done")).len(), 5);
    assert!(child.try_wait().unwrap().is_none(), "still running: {}", read_log());
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

#[test]
fn a_file_that_kills_the_process_is_quarantined_after_three_deaths_not_read_forever() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    write_series(&root.join("src"), "s", "1.2.826.0.1.3680043.8.498.71", 0, 5);
    std::fs::rename(root.join("src/s/2.dcm"), root.join("src/s/poison.dcm")).unwrap();
    let var = root.join("var");
    std::fs::create_dir_all(var.join("incoming")).unwrap();
    drop_into(&root.join("src"), &var.join("incoming"));
    let log = root.join("daemon.log");
    let results = var.join("results");
    let mut deaths = 0;
    for _ in 0..8 {
        // The failpoint (debug builds) aborts the process while it reads poison.dcm, as a
        // crashing C++ decoder would.
        let mut child = start_with(&cfg, &log, &[("CTSENTRY_TEST_ABORT_ON", "poison.dcm")]);
        let finished = wait_until(Duration::from_secs(30), || {
            child.try_wait().unwrap().is_some() || events(&results).iter().any(|e| e["stage"] == "FINAL")
        });
        assert!(finished, "{}", std::fs::read_to_string(&log).unwrap());
        if child.try_wait().unwrap().is_some() {
            deaths += 1;
            continue;
        }
        signal(&child, libc::SIGTERM);
        assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
        break;
    }
    assert_eq!(deaths, 3, "died reading the file three times, then left it alone: {}", std::fs::read_to_string(&log).unwrap());
    let reason = std::fs::read_to_string(var.join("quarantine/s/poison.dcm.reason")).unwrap();
    assert!(reason.contains("stopped while reading this file 3 times"), "{reason}");
    let f = finals(&results);
    assert_eq!((f.len(), f[0]["slices"].as_u64()), (1, Some(4)), "{f:#?}");
    assert_eq!(rels(&var.join("done")).len(), 4, "the batch-mates were not blamed");
}

#[test]
fn a_file_waiting_for_an_engine_retry_keeps_its_series_open() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    write_series(&root.join("src"), "s", "1.2.826.0.1.3680043.8.498.81", 0, 4);
    let var = root.join("var");
    std::fs::create_dir_all(var.join("incoming")).unwrap();
    let log = root.join("daemon.log");
    // The engine fails twice on calls that include 2.dcm (its batch, then 2.dcm alone); the
    // retry 10 s later works. quiet_seconds is 1: without the hold, the series would get a FINAL
    // verdict over 3 slices, then a second part.
    let mut child = start_with(&cfg, &log, &[("CTSENTRY_TEST_ENGINE_FAIL_ON", "2.dcm:2")]);
    drop_into(&root.join("src"), &var.join("incoming"));
    let results = var.join("results");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || events(&results).iter().any(|e| e["stage"] == "FINAL")), "{}", read_log());
    std::thread::sleep(Duration::from_secs(2));
    let f = finals(&results);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0]["slices"].as_u64(), f[0]["part"].as_u64()), (Some(4), Some(1)), "{f:#?}");
    assert!(read_log().contains("scoring failed (1)"), "{}", read_log());
    assert_eq!(rels(&var.join("done")).len(), 4);
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}

#[test]
fn a_series_sent_again_after_the_journal_forgot_it_gets_a_new_part_and_its_own_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    let uid = "1.2.826.0.1.3680043.8.498.91";
    write_series(&root.join("src"), "s", uid, 200, 3);
    let var = root.join("var");
    std::fs::create_dir_all(var.join("incoming")).unwrap();
    let log = root.join("daemon.log");
    let results = var.join("results");
    for round in 1..=2u64 {
        let mut child = start(&cfg, &log);
        drop_into(&root.join("src"), &var.join("incoming"));
        assert!(wait_until(Duration::from_secs(60), || finals(&results).len() as u64 == round), "{}", std::fs::read_to_string(&log).unwrap());
        signal(&child, libc::SIGTERM);
        assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
        // The journal forgets closed series after a day; here at once.
        std::fs::remove_file(var.join("state/journal.jsonl")).unwrap();
    }
    let f = finals(&results);
    assert_eq!(f.iter().map(|e| e["part"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2], "{f:#?}");
    assert!(results.join(format!("{}.2.json", ctsentry::alert::series_id(uid, 1))).exists());
}

/// The physical series rule in the daemon: from the config (reloadable like the count), in the
/// result file, the feed and `status`; a series of 12 dense slices 2.5 mm apart (30 mm) alerts
/// at `min_positive_extent_mm = 20`, one of 4 (10 mm) does not, and `score --json` agrees.
#[test]
fn the_daemon_decides_by_millimetres_of_positive_slices() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace("min_positive_slices = 2\n", "min_positive_slices = 2\nmin_positive_extent_mm = 20\n");
    std::fs::write(&cfg, text).unwrap();
    let (long, short) = ("1.2.826.0.1.3680043.8.498.301", "1.2.826.0.1.3680043.8.498.302");
    write_series(&root.join("src"), "long", long, 200, 12);
    write_series(&root.join("src"), "short", short, 200, 4);
    let batch = batch_verdicts(&cfg, &root.join("src"));
    assert_eq!((batch[long].0.as_str(), batch[short].0.as_str()), ("positive", "negative"), "{batch:?}");
    assert_eq!((batch[long].1, batch[short].1), (12, 4), "every slice positive in both: {batch:?}");
    let (mut child, results, log) = start_and_drop(root, &cfg);
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 2), "{}", std::fs::read_to_string(&log).unwrap());
    let st = status_json(&cfg);
    assert_eq!(st["series_rule"], "≥ 2 slices, ≥ 20 mm positive (count: config, physical: extent: config, share: default)", "{st:#}");
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
    for (uid, verdict, extent) in [(long, "positive", 30.0), (short, "negative", 10.0)] {
        let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(results.join(format!("{}.json", ctsentry::alert::series_id(uid, 1)))).unwrap()).unwrap();
        assert_eq!((r["verdict"].as_str(), r["positive_extent_mm"].as_f64(), r["min_positive_extent_mm"].as_f64()), (Some(verdict), Some(extent), Some(20.0)), "{r:#}");
        assert_eq!((r["physical_source"].as_str(), r["positive_share"].as_f64()), (Some("extent: config, share: default"), Some(1.0)), "{r:#}");
        let f = finals(&results).into_iter().find(|e| e["series_uid"] == uid).unwrap();
        assert_eq!((f["event"].as_str(), f["min_positive_extent_mm"].as_f64()), (Some(if verdict == "positive" { "ALERT" } else { "NEGATIVE" }), Some(20.0)), "{f}");
    }
}

/// Peak resident memory (VmHWM) of a process, in MiB.
fn peak_rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

#[test]
fn a_burst_of_2000_files_is_processed_with_bounded_memory_and_sigterm_stays_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let cfg = config(root, "[results]\nheatmaps = false\n");
    let var = root.join("var");
    let incoming = var.join("incoming");
    // 2,000 small slices in 40 series of 50, written straight into the folder before start.
    for s in 0..40 {
        let d = incoming.join(format!("s{s:02}"));
        std::fs::create_dir_all(&d).unwrap();
        for k in 0..50 {
            let mut c = CtSlice::pattern(16, 16, k, k as f64);
            c.series_uid = format!("1.2.826.0.1.3680043.8.498.3{s:02}");
            c.sop_uid = format!("{}.{k}", c.series_uid);
            c.write(&d.join(format!("{k}.dcm")), EXPLICIT_LE);
        }
    }
    let log = root.join("daemon.log");
    let mut child = start(&cfg, &log);
    // Mid-burst, SIGTERM: it finishes the files in flight and exits 0 promptly.
    assert!(wait_until(Duration::from_secs(60), || rels(&var.join("done")).len() >= 300));
    let t = Instant::now();
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0), "{}", std::fs::read_to_string(&log).unwrap());
    let stop_s = t.elapsed().as_secs_f64();
    let left = walk(&incoming).len();
    assert!(left > 0, "stopped mid-burst");
    // Restart: the rest.
    let mut child = start(&cfg, &log);
    let results = var.join("results");
    let ok = wait_until(Duration::from_secs(240), || events(&results).iter().filter(|e| e["stage"] == "FINAL").count() == 40);
    let peak = peak_rss_mb(child.id());
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)), Some(0));
    assert!(ok, "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(rels(&var.join("done")).len(), 2000);
    assert!(walk(&incoming).is_empty());
    eprintln!("burst: SIGTERM to exit {stop_s:.2} s with {left} files waiting; peak RSS of the second run {peak:.0} MiB");
    // Only paths wait, never pixels: memory does not grow with the backlog.
    assert!(peak < 400.0, "peak RSS {peak} MiB");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The DICOM receiver with DCMTK as the scanner: C-ECHO answers, an unknown calling AE is
/// refused (and logged with its title), and a series sent with storescu lands in the drop folder
/// and gets one FINAL verdict over every slice, its files then in done/.
#[test]
fn a_series_sent_by_dcmtk_storescu_gets_one_final_verdict() {
    if Command::new("storescu").arg("--version").output().is_err() || Command::new("echoscu").arg("--version").output().is_err() {
        tool_missing("DCMTK (storescu, echoscu)", "apt-get install dcmtk");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = free_port();
    let cfg = config(root, &format!("[dicom]\nenabled = true\nae_title = \"CTSENTRY\"\nlisten = \"127.0.0.1:{port}\"\nallowed_callers = [\"SCANNER\"]\nmax_instance_mb = 1\n"));
    let log = root.join("daemon.log");
    let mut d = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("dicom: C-ECHO and C-STORE SCP")), "no receiver:\n{}", read_log());
    let dcmtk = |tool: &str, aet: &str, files: &[PathBuf]| {
        Command::new(tool).args(["-aet", aet, "-aec", "CTSENTRY", "127.0.0.1", &port.to_string()]).args(files).output().unwrap()
    };
    let echo = dcmtk("echoscu", "SCANNER", &[]);
    assert!(echo.status.success(), "echoscu: {}", String::from_utf8_lossy(&echo.stderr));
    let refused = dcmtk("echoscu", "INTRUDER", &[]);
    assert!(!refused.status.success(), "an unknown calling AE was accepted");
    assert!(wait_until(Duration::from_secs(5), || read_log().contains("calling AE \"INTRUDER\"")), "refusal not logged:\n{}", read_log());

    let src = root.join("scanner");
    write_series(&src, "s", "1.2.826.0.1.3680043.9.7307.17.1", 200, 6);
    let files = walk(&src.join("s"));
    let sent = dcmtk("storescu", "SCANNER", &files);
    assert!(sent.status.success(), "storescu: {}{}", String::from_utf8_lossy(&sent.stdout), String::from_utf8_lossy(&sent.stderr));
    let results = root.join("var/results");
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "no FINAL:\n{}", read_log());
    let f = &finals(&results)[0];
    assert_eq!((f["series_uid"].as_str(), f["slices"].as_u64()), (Some("1.2.826.0.1.3680043.9.7307.17.1"), Some(6)), "{f}");
    assert_eq!(rels(&root.join("var/done")).iter().filter(|r| r.starts_with("dicom-SCANNER/") && r.ends_with(".dcm")).count(), 6, "{:?}", rels(&root.join("var/done")));
    assert!(walk(&root.join("var/incoming")).is_empty(), "left in incoming: {:?}", walk(&root.join("var/incoming")));
    // An instance over dicom.max_instance_mb (1 MiB here; this one is 2.4 MB) is refused with
    // "out of resources" and leaves nothing behind.
    let mut big = CtSlice::pattern(1100, 1100, 1, 0.0);
    big.series_uid = "1.2.826.0.1.3680043.9.7307.17.2".into();
    big.sop_uid = "1.2.826.0.1.3680043.9.7307.17.2.1".into();
    big.write(&root.join("big.dcm"), EXPLICIT_LE);
    let sent = dcmtk("storescu", "SCANNER", &[root.join("big.dcm")]);
    let said = format!("{}{}", String::from_utf8_lossy(&sent.stdout), String::from_utf8_lossy(&sent.stderr));
    assert!(said.to_lowercase().contains("a700") || said.contains("Out of Resources") || !sent.status.success(), "storescu was not told of the refusal: {said}");
    assert!(wait_until(Duration::from_secs(5), || read_log().contains("larger than dicom.max_instance_mb (1 MiB): refused")), "{}", read_log());
    std::thread::sleep(Duration::from_millis(500));
    let everything: Vec<String> = [walk(&root.join("var/incoming")), walk(&root.join("var/done")), walk(&root.join("var/quarantine"))].concat().iter().map(|p| p.display().to_string()).collect();
    assert!(!everything.iter().any(|p| p.contains("17.2.1") || p.ends_with(".part")), "the refused instance left {everything:?}");
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
}

/// GET `path` from `addr` (HTTP/1.0: the server closes after the body): (status code, body).
fn http_get_bytes(addr: &str, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut bytes = Vec::new();
    s.read_to_end(&mut bytes).unwrap();
    let at = bytes.windows(4).position(|w| w == b"\r\n\r\n").map_or(bytes.len(), |p| p + 4);
    let code = String::from_utf8_lossy(&bytes[..at]).split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, bytes[at..].to_vec())
}

/// [`http_get_bytes`] with a text body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (code, body) = http_get_bytes(addr, path);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// /metrics parsed by the Prometheus project's own Python client parser: what was scored is
/// counted; /healthz is 200 while all is well and 503 naming the fault during one.
#[test]
fn metrics_parse_with_prometheus_and_healthz_turns_503_on_a_fault() {
    let parser = "import sys, json\nfrom prometheus_client.parser import text_string_to_metric_families as f\n\
                  print(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value for m in f(sys.stdin.read()) for s in m.samples}))";
    if !Command::new("python3").args(["-c", "import prometheus_client"]).status().is_ok_and(|s| s.success()) {
        tool_missing("the Prometheus Python client (its text parser)", "pip install prometheus-client");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = config(root, &format!("[metrics]\nlisten = \"{addr}\"\n"));
    let log = root.join("daemon.log");
    let mut d = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("metrics: Prometheus text")), "{}", read_log());
    let src = root.join("src");
    write_series(&src, "a", "1.2.826.0.1.3680043.9.7307.18.1", 200, 6);
    std::fs::write(src.join("a/notes.txt"), "not an image").unwrap();
    drop_into(&src, &root.join("var/incoming"));
    let results = root.join("var/results");
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "{}", read_log());
    let parse = |body: &str| -> serde_json::Value {
        use std::io::Write;
        let mut p = Command::new("python3").args(["-c", parser]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
        let out = p.wait_with_output().unwrap();
        assert!(out.status.success(), "the Prometheus parser refused:\n{body}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let verdict = finals(&results)[0]["event"].as_str().unwrap().to_string();
    let label = if verdict == "ALERT" { "positive" } else { "negative" };
    assert!(wait_until(Duration::from_secs(5), || {
        let (code, body) = http_get(&addr, "/metrics");
        let m = parse(&body);
        code == 200 && m["ctsentry_slices_scored_total{}"] == 6.0 && m[format!("ctsentry_series_total{{\"verdict\": \"{label}\"}}")] == 1.0
            && m["ctsentry_files_quarantined_total{}"] == 1.0 && m["ctsentry_inference_seconds_count{}"].as_f64().unwrap() >= 1.0
            && m["ctsentry_fault{\"kind\": \"DISK\"}"] == 0.0
    }), "metrics: {}", http_get(&addr, "/metrics").1);
    assert_eq!(http_get(&addr, "/healthz"), (200, "ok\n".to_string()));
    // A fault: the free-space watermark above what any disk has (a live setting: SIGHUP).
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("min_free_mb = 0", "min_free_mb = 999999999")).unwrap();
    signal(&d, libc::SIGHUP);
    assert!(wait_until(Duration::from_secs(10), || http_get(&addr, "/healthz") == (503, "faults: DISK\n".to_string())), "{:?}\n{}", http_get(&addr, "/healthz"), read_log());
    assert_eq!(parse(&http_get(&addr, "/metrics").1)["ctsentry_fault{\"kind\": \"DISK\"}"], 1.0);
    assert_eq!(http_get(&addr, "/nothing").0, 404);
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
}

/// Whether `tool` is on the PATH.
fn installed(tool: &str) -> bool {
    Command::new("which").arg(tool).output().is_ok_and(|o| o.status.success())
}

/// Whether DCMTK (storescu, dsrdump) and Orthanc are installed; reports the first one missing
/// ([`tool_missing`]: a failure under CI).
fn pacs_peers_installed() -> bool {
    for (tool, install) in [("storescu", "apt-get install dcmtk"), ("dsrdump", "apt-get install dcmtk"), ("Orthanc", "apt-get install orthanc")] {
        if !installed(tool) {
            tool_missing(tool, install);
            return false;
        }
    }
    true
}

/// A PACS for the test: Orthanc (Debian's package) on loopback ports, with a temporary JSON
/// config and storage under `dir`; started and stopped (killed, as a crash) by the test.
struct Pacs {
    config: PathBuf,
    dicom_port: u16,
    http: String,
    child: Option<Child>,
}

impl Pacs {
    fn new(dir: &Path) -> Pacs {
        std::fs::create_dir_all(dir.join("db")).unwrap();
        let (dicom_port, http_port) = (free_port(), free_port());
        let config = dir.join("orthanc.json");
        let json = serde_json::json!({
            "Name": "TESTPACS", "StorageDirectory": dir.join("db"), "IndexDirectory": dir.join("db"),
            "DicomAet": "PACS", "DicomPort": dicom_port, "HttpPort": http_port, "RemoteAccessAllowed": false,
            "AuthenticationEnabled": false, "DicomCheckCalledAet": true, "DicomAlwaysAllowStore": true,
            "DicomAlwaysAllowEcho": true, "Plugins": [], "StableAge": 1
        });
        std::fs::write(&config, serde_json::to_string_pretty(&json).unwrap()).unwrap();
        Pacs { config, dicom_port, http: format!("127.0.0.1:{http_port}"), child: None }
    }

    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.config.with_extension("log")).unwrap();
        self.child = Some(Command::new("Orthanc").arg(&self.config).stdout(Stdio::null()).stderr(log).spawn().unwrap());
        assert!(wait_until(Duration::from_secs(30), || std::net::TcpStream::connect(&self.http).is_ok()), "Orthanc did not start");
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// GET from Orthanc's REST API; anything but 200 fails the test.
    fn get(&self, path: &str) -> Vec<u8> {
        let (code, body) = http_get_bytes(&self.http, path);
        assert_eq!(code, 200, "GET {path}: {}", String::from_utf8_lossy(&body));
        body
    }

    fn json(&self, path: &str) -> serde_json::Value {
        serde_json::from_slice(&self.get(path)).unwrap()
    }

    /// The study with this Study Instance UID: its series as (modality, series UID, instance ids).
    fn study(&self, study_uid: &str) -> Vec<(String, String, Vec<String>)> {
        let ids: Vec<String> = serde_json::from_value(self.json("/studies")).unwrap();
        let Some(id) = ids.into_iter().find(|id| self.json(&format!("/studies/{id}"))["MainDicomTags"]["StudyInstanceUID"] == study_uid) else { return Vec::new() };
        let series: Vec<String> = serde_json::from_value(self.json(&format!("/studies/{id}"))["Series"].clone()).unwrap();
        let mut out: Vec<(String, String, Vec<String>)> = series
            .iter()
            .map(|s| {
                let v = self.json(&format!("/series/{s}"));
                let t = &v["MainDicomTags"];
                (t["Modality"].as_str().unwrap_or("").to_string(), t["SeriesInstanceUID"].as_str().unwrap_or("").to_string(), serde_json::from_value(v["Instances"].clone()).unwrap())
            })
            .collect();
        out.sort();
        out
    }

    /// The study's series as (modality, number of instances), sorted. Orthanc indexes what the
    /// exporter sends one instance at a time: wait on this, not on the number of series.
    fn counts(&self, study_uid: &str) -> Vec<(String, usize)> {
        let mut c: Vec<(String, usize)> = self.study(study_uid).into_iter().map(|s| (s.0, s.2.len())).collect();
        c.sort();
        c
    }
}

/// `(modality, instances)` pairs as [`Pacs::counts`] gives them.
fn modalities(pairs: &[(&str, usize)]) -> Vec<(String, usize)> {
    let mut c: Vec<(String, usize)> = pairs.iter().map(|(m, n)| (m.to_string(), *n)).collect();
    c.sort();
    c
}

impl Drop for Pacs {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Results back to the PACS, against Orthanc as the PACS and DCMTK as the scanner and the
/// validator: a series received by C-STORE gets its SR and (positive) heat maps in the same study
/// at Orthanc; dsrdump reads the verdict in the SR, dciodvfy finds no error in it nor in a heat map;
/// the PACS down at the verdict, and again killed while the daemon runs, means FAULT EXPORT
/// and the results waiting, then delivery once it is back and CLEAR; a restart sends nothing
/// again.
#[test]
fn results_reach_orthanc_in_the_scanned_study_once_through_pacs_outages() {
    if !pacs_peers_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut pacs = Pacs::new(&root.join("pacs"));
    let port = free_port();
    let (mut serial, leds, peers) = alert_peers(root);
    let cfg = config(
        root,
        &format!(
            "[dicom]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n\
             [export]\nenabled = true\npeer = \"127.0.0.1:{}\"\ncalled_ae = \"PACS\"\ncalling_ae = \"CTSENTRY\"\nmax_heatmaps = 3\nretry_max_seconds = 1\n{peers}",
            pacs.dicom_port
        ),
    );
    let mut buf = Vec::new();
    let is = |l: &[String], event: &str, kind: &str| l.get(2).is_some_and(|e| e == event) && l.get(3).is_some_and(|k| k == kind);
    // Every slice positive: the series gets heat maps.
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("threshold = 0.5", "threshold = 0.000001")).unwrap();
    let log = root.join("daemon.log");
    let mut d = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("dicom: C-ECHO and C-STORE SCP")), "{}", read_log());
    let storescu = |port: u16, aec: &str, files: &[PathBuf]| {
        let out = Command::new("storescu").args(["-aet", "SCANNER", "-aec", aec, "127.0.0.1", &port.to_string()]).args(files).output().unwrap();
        assert!(out.status.success(), "storescu to {aec}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let faults = |cfg: &Path| status_json(cfg)["faults"].as_array().cloned().unwrap_or_default();
    let study_uid = "1.2.826.0.1.3680043.8.498.9"; // what the synthetic slices carry
    let src = root.join("scanner");
    let (a, b) = ("1.2.826.0.1.3680043.9.7307.19.1", "1.2.826.0.1.3680043.9.7307.19.2");
    write_series(&src, "a", a, 200, 5);
    write_series(&src, "b", b, 200, 4);
    let spool = root.join("var/state/export");
    let results = root.join("var/results");

    // The PACS is down when series a's verdict comes: FAULT EXPORT, the results wait.
    storescu(port, "CTSENTRY", &walk(&src.join("a")));
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "{}", read_log());
    assert!(wait_until(Duration::from_secs(10), || faults(&cfg).iter().any(|f| f == "EXPORT")), "no FAULT EXPORT: {}\n{}", status_json(&cfg), read_log());
    assert!(read_log().contains("results wait in the spool"), "{}", read_log());
    // On the serial line and the LEDs, as a technician sees it: FAULT,EXPORT, red blinking.
    let lines = read_until(&mut serial, &mut buf, Duration::from_secs(10), |l| is(l, "FAULT", "EXPORT"));
    assert!(lines.iter().any(|l| is(l, "FAULT", "EXPORT")), "{lines:?}");
    assert!(wait_until(Duration::from_secs(5), || look(&leds)[1] == "blink"), "{:?}", look(&leds));
    let waiting = rels(&spool).into_iter().filter(|r| r.ends_with(".dcm") && !r.starts_with("failed/")).count();
    assert_eq!(waiting, 4, "the SR and 3 heat maps (export.max_heatmaps) wait: {:?}", rels(&spool));

    // The PACS comes up; the scanner's own copy of the series arrives there too.
    pacs.start();
    storescu(pacs.dicom_port, "PACS", &walk(&src.join("a")));
    assert!(wait_until(Duration::from_secs(20), || faults(&cfg).is_empty()), "FAULT EXPORT not cleared: {}\n{}", status_json(&cfg), read_log());
    let lines = read_until(&mut serial, &mut buf, Duration::from_secs(10), |l| is(l, "CLEAR", "EXPORT"));
    assert!(lines.iter().any(|l| is(l, "CLEAR", "EXPORT")), "{lines:?}");
    // Red steady again: the positive series' alert stays latched, the fault is gone.
    assert!(wait_until(Duration::from_secs(5), || look(&leds)[1] == "on"), "{:?}", look(&leds));
    let want = modalities(&[("CT", 5), ("OT", 3), ("SR", 1)]);
    assert!(wait_until(Duration::from_secs(20), || pacs.counts(study_uid) == want), "{:?}", pacs.study(study_uid));
    let series = pacs.study(study_uid);
    let by_modality = |m: &str| series.iter().filter(|s| s.0 == m).cloned().collect::<Vec<_>>();
    assert_eq!((by_modality("CT").len(), by_modality("CT")[0].1.as_str(), by_modality("CT")[0].2.len()), (1, a, 5), "{series:?}");
    assert_eq!(by_modality("SR").iter().map(|s| s.2.len()).collect::<Vec<_>>(), vec![1], "one SR in the scanned study: {series:?}");
    assert_eq!(by_modality("OT").iter().map(|s| s.2.len()).collect::<Vec<_>>(), vec![3], "3 heat maps in the scanned study: {series:?}");
    // The SR, as DCMTK reads it: the verdict in words, the counts, the threshold, the model.
    let sr_file = root.join("sr.dcm");
    std::fs::write(&sr_file, pacs.get(&format!("/instances/{}/file", by_modality("SR")[0].2[0]))).unwrap();
    let dump = Command::new("dsrdump").args(["+Pl", "+Pu"]).arg(&sr_file).output().unwrap();
    let text = String::from_utf8_lossy(&dump.stdout).to_string();
    assert!(dump.status.success(), "dsrdump: {}", String::from_utf8_lossy(&dump.stderr));
    for want in ["Comprehensive SR Document", "\"Verdict\")=\"positive: 5 of 5 slices", "\"Slices scored\")=\"5\"", "\"Positive slices\")=\"5\"", "\"Slice threshold\")=\"0.000001\"", "threshold 0.000001, ", "(needed: >= 2 slices positive (count: config, physical: default))",
        "\"Craniocaudal extent of positive slices\")=\"", "\"Positive extent needed\")=\"0\"", "\"Share of the lung in positive slices\")=\"", "\"Algorithm Name\")=\"tiny", "Manufacturer        : ctsentry"] {
        assert!(text.contains(want), "dsrdump lacks {want:?}:\n{text}");
    }
    assert_eq!(text.matches("IMAGE:(,,\"Slice at or above threshold\")").count(), 5, "the SR references every positive slice:\n{text}");
    for k in 0..5 {
        assert!(text.contains(&format!("(CT image,\"{a}.{k}\")")), "slice {k} not referenced:\n{text}");
    }
    let sc_file = root.join("sc.dcm");
    std::fs::write(&sc_file, pacs.get(&format!("/instances/{}/file", by_modality("OT")[0].2[0]))).unwrap();
    // The SR and a Secondary Capture against their IODs (dicom3tools; .ci/run installs it).
    if installed("dciodvfy") {
        for (what, file) in [("SR", &sr_file), ("Secondary Capture", &sc_file)] {
            let v = Command::new("dciodvfy").arg(file).output().unwrap();
            let said = String::from_utf8_lossy(&v.stderr).to_string() + &String::from_utf8_lossy(&v.stdout);
            assert!(!said.lines().any(|l| l.starts_with("Error")), "dciodvfy on the {what}:\n{said}");
        }
    } else {
        tool_missing("dciodvfy", "apt-get install dicom3tools");
    }
    let sc = pacs.json(&format!("/instances/{}/simplified-tags", by_modality("OT")[0].2[0]));
    assert_eq!((sc["SOPClassUID"].as_str(), sc["BurnedInAnnotation"].as_str(), sc["PhotometricInterpretation"].as_str()), (Some("1.2.840.10008.5.1.4.1.1.7"), Some("YES"), Some("RGB")), "{sc}");
    assert!(sc["ImageComments"].as_str().unwrap_or("").contains("NOT FOR DIAGNOSTIC USE"), "{sc}");

    // The PACS dies while the daemon runs, before series b arrives: its results wait (FAULT
    // EXPORT), and go once the PACS is back.
    pacs.kill();
    storescu(port, "CTSENTRY", &walk(&src.join("b")));
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 2), "{}", read_log());
    assert!(wait_until(Duration::from_secs(10), || faults(&cfg).iter().any(|f| f == "EXPORT")), "no FAULT EXPORT: {}", status_json(&cfg));
    pacs.start();
    assert!(wait_until(Duration::from_secs(20), || faults(&cfg).is_empty()), "{}\n{}", status_json(&cfg), read_log());
    let want = modalities(&[("CT", 5), ("OT", 3), ("OT", 3), ("SR", 1), ("SR", 1)]);
    assert!(wait_until(Duration::from_secs(20), || pacs.counts(study_uid) == want), "the study at the PACS: the CT series, and per verdict one SR and 3 heat maps: {:?}", pacs.study(study_uid));

    // A restart sends nothing again: every object was stored once, and the spool is empty.
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
    let before = read_log();
    let mut d = start(&cfg, &log);
    assert!(wait_until(Duration::from_secs(60), || read_log().len() > before.len() && read_log()[before.len()..].contains("ready: watching")), "{}", read_log());
    std::thread::sleep(Duration::from_secs(3));
    let stored: Vec<String> = read_log().lines().filter(|l| l.contains("stored by the PACS")).map(|l| l.split_whitespace().nth(4).unwrap_or("").to_string()).collect();
    let unique: BTreeSet<&String> = stored.iter().collect();
    assert_eq!((stored.len(), unique.len()), (8, 8), "each of the 8 objects (2 SRs, 6 heat maps) stored exactly once: {stored:?}");
    assert!(!read_log()[before.len()..].contains("stored by the PACS"), "sent again after the restart");
    assert!(rels(&spool).iter().all(|r| !r.ends_with(".dcm")), "left in the spool: {:?}", rels(&spool));
    assert_eq!(pacs.counts(study_uid), want, "the study at the PACS after the restart: as before");
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
}

/// Copies of `files` with valid UIDs (COVID-CT-MD is de-identified with UUID strings where UIDs
/// belong, which DCMTK refuses to send): study, series and instance UIDs become `2.25.` UIDs
/// derived from the originals; pixel data and everything else stay as they are.
fn with_valid_uids(files: &[PathBuf], out: &Path) -> (Vec<PathBuf>, String, String) {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    std::fs::create_dir_all(out).unwrap();
    let valid = |s: &str| ctsentry::net::export::derived_uid(&["test", s.trim_end_matches('\0')]);
    let (mut study, mut series) = (String::new(), String::new());
    let copies = files
        .iter()
        .map(|f| {
            let mut obj = dicom_object::open_file(f).unwrap();
            let uid = |o: &dicom_object::DefaultDicomObject, t| o.element(t).unwrap().to_str().unwrap().to_string();
            let (st, se, sop) = (valid(&uid(&obj, tags::STUDY_INSTANCE_UID)), valid(&uid(&obj, tags::SERIES_INSTANCE_UID)), valid(&uid(&obj, tags::SOP_INSTANCE_UID)));
            for (t, v) in [(tags::STUDY_INSTANCE_UID, &st), (tags::SERIES_INSTANCE_UID, &se), (tags::SOP_INSTANCE_UID, &sop)] {
                obj.put(DataElement::new(t, VR::UI, PrimitiveValue::from(v.as_str())));
            }
            obj.meta_mut().media_storage_sop_instance_uid = format!("{sop}\0");
            obj.meta_mut().update_information_group_length();
            (study, series) = (st, se);
            let p = out.join(f.file_name().unwrap());
            obj.write_to_file(&p).unwrap();
            p
        })
        .collect();
    (copies, study, series)
}

/// The whole network path on a real series, as in the scanner room: DCMTK's storescu sends
/// COVID-CT-MD's P001 (148 slices, JPEG lossless; valid UIDs given first) to the daemon running
/// the shipped model and to Orthanc; one FINAL verdict over all 148 slices, and its SR (and heat
/// maps, when positive) in P001's study at Orthanc, stating the same verdict.
#[test]
fn a_shared_series_sent_by_storescu_gets_one_verdict_over_every_slice_and_its_results_at_the_pacs() {
    let Some(data) = shared_data("covid-ct-md/P001") else { return };
    if !pacs_peers_installed() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let (files, study_uid, series_uid) = with_valid_uids(&walk(&data.join("covid-ct-md/P001")), &root.join("scanner"));
    assert_eq!(files.len(), 148);
    let mut pacs = Pacs::new(&root.join("pacs"));
    pacs.start();
    let port = free_port();
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/densenet121-covid.onnx");
    let cfg = root.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[paths]\nincoming = \"var/incoming\"\ndone = \"var/done\"\nquarantine = \"var/quarantine\"\nresults = \"var/results\"\nstate = \"var/state\"\n\
             [model]\npath = \"{}\"\n[series]\nquiet_seconds = 2.0\n[disk]\nmin_free_mb = 0\n\
             [dicom]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\nallowed_callers = [\"SCANNER\"]\n\
             [export]\nenabled = true\npeer = \"127.0.0.1:{}\"\ncalled_ae = \"PACS\"\n",
            model.display(),
            pacs.dicom_port
        ),
    )
    .unwrap();
    let log = root.join("daemon.log");
    let mut d = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(120), || read_log().contains("dicom: C-ECHO and C-STORE SCP")), "{}", read_log());
    for (port, aec) in [(port, "CTSENTRY"), (pacs.dicom_port, "PACS")] {
        // -xs: propose JPEG lossless (P001's transfer syntax), not only uncompressed ones.
        let out = Command::new("storescu").args(["-xs", "-aet", "SCANNER", "-aec", aec, "127.0.0.1", &port.to_string()]).args(&files).output().unwrap();
        assert!(out.status.success(), "storescu to {aec}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let results = root.join("var/results");
    assert!(wait_until(Duration::from_secs(300), || finals(&results).len() == 1), "{}", read_log());
    let f = &finals(&results)[0];
    assert_eq!((f["series_uid"].as_str(), f["slices"].as_u64()), (Some(series_uid.as_str()), Some(148)), "{f}");
    assert_eq!(rels(&root.join("var/done")).len(), 148);
    let positive = f["event"] == "ALERT";
    let positives = f["positives"].as_u64().unwrap();
    let maps = if positive { positives.min(16) as usize } else { 0 };
    let want = if maps > 0 { modalities(&[("CT", 148), ("SR", 1), ("OT", maps)]) } else { modalities(&[("CT", 148), ("SR", 1)]) };
    assert!(wait_until(Duration::from_secs(60), || pacs.counts(&study_uid) == want), "{:?}\n{}", pacs.study(&study_uid), read_log());
    let series = pacs.study(&study_uid);
    let sr = series.iter().find(|s| s.0 == "SR").unwrap();
    std::fs::write(root.join("sr.dcm"), pacs.get(&format!("/instances/{}/file", sr.2[0]))).unwrap();
    let text = String::from_utf8_lossy(&Command::new("dsrdump").arg(root.join("sr.dcm")).output().unwrap().stdout).to_string();
    let verdict = format!("\"Verdict\")=\"{}: {positives} of 148 slices", if positive { "positive" } else { "negative" });
    assert!(text.contains(&verdict), "dsrdump lacks {verdict:?}:\n{text}");
    assert!(text.contains("\"Algorithm Name\")=\"densenet121-covid\""), "{text}");
    eprintln!("P001 over DICOM: {} of 148 positive ({}), SR and {maps} heat map(s) at Orthanc", positives, f["event"]);
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0));
}
