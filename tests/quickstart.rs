//! The README's quick start, typed the way a newcomer types it: in a folder shaped like a
//! checkout (the repository's own `config/ctsentry.toml`, byte for byte, and its `models/`), with
//! `../shared` beside it, `ctsentry run` with no `--config` and no `$CTSENTRY_CONFIG`, then
//! `cp -r ../shared/data/covid-ct-md/P001 var/incoming/`, then the feed in
//! `var/results/events.jsonl`, `ctsentry status --json` and `ctsentry ack`, all with relative
//! paths from the checkout's root. (A relative config once made every scored file "move" back
//! into the drop folder under a new name and be scored again, forever.)

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn bin(cwd: &Path) -> Command {
    let mut c = common::bin();
    c.current_dir(cwd).env_remove("CTSENTRY_CONFIG").env_remove("RUST_LOG");
    c
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walkdir(dir).iter().map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().to_string()).collect();
    out.sort();
    out
}

fn walkdir(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn events(checkout: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(checkout.join("var/results/events.jsonl")).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

fn status_json(checkout: &Path) -> (i32, serde_json::Value) {
    let out = bin(checkout).args(["status", "--json"]).output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

/// A checkout-shaped folder under `tmp`: `tmp/ctsentry/{config,models}` and `tmp/shared`. The
/// series is P001 from the shared data when present, else a generated 12-slice stand-in laid
/// out the same way.
fn layout(tmp: &Path) -> (PathBuf, PathBuf) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let checkout = tmp.join("ctsentry");
    std::fs::create_dir_all(checkout.join("config")).unwrap();
    std::fs::copy(repo.join("config/ctsentry.toml"), checkout.join("config/ctsentry.toml")).unwrap();
    std::os::unix::fs::symlink(repo.join("models"), checkout.join("models")).unwrap();
    let series = match shared_data("covid-ct-md/P001") {
        Some(data) => {
            std::os::unix::fs::symlink(data.parent().unwrap(), tmp.join("shared")).unwrap();
            tmp.join("shared/data/covid-ct-md/P001")
        }
        None => {
            let dir = tmp.join("shared/data/covid-ct-md/P001");
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..12 {
                let mut s = CtSlice::pattern(64, 64, k, 2.0 * k as f64);
                s.series_uid = "1.2.826.0.1.3680043.9.7307.1.1".into();
                s.sop_uid = format!("1.2.826.0.1.3680043.9.7307.1.1.{k}");
                s.rescale = Some((1.0, -1024.0));
                s.write(&dir.join(format!("IMG{k:04}.dcm")), EXPLICIT_LE);
            }
            dir
        }
    };
    (checkout, series)
}

#[test]
fn readme_quick_start_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (checkout, series) = layout(tmp.path());
    let sent = files_under(&series);
    assert!(!sent.is_empty());

    // `cargo run --release -- run`: the daemon on the default config found in the working directory.
    let log = std::fs::File::create(tmp.path().join("daemon.log")).unwrap();
    let mut daemon = common::Proc(bin(&checkout).arg("run").stdout(Stdio::null()).stderr(log).spawn().unwrap());
    let read_log = || std::fs::read_to_string(tmp.path().join("daemon.log")).unwrap_or_default();
    let t0 = Instant::now();
    while !checkout.join("var/state/status.json").exists() {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited:\n{}", read_log());
        assert!(t0.elapsed() < Duration::from_secs(120), "no status after 120 s:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, st) = status_json(&checkout);
    assert_eq!((code, st["running"].as_bool(), st["queue"].as_u64()), (0, Some(true), Some(0)), "{st}");

    // `cp -r ../shared/data/covid-ct-md/P001 var/incoming/`, in another terminal.
    let cp = Command::new("sh").arg("-c").arg("cp -r ../shared/data/covid-ct-md/P001 var/incoming/").current_dir(&checkout).status().unwrap();
    assert!(cp.success());

    // `tail -f var/results/events.jsonl` until the final verdict.
    let t0 = Instant::now();
    let finals = loop {
        let finals: Vec<serde_json::Value> = events(&checkout).into_iter().filter(|e| e["stage"] == "FINAL").collect();
        if !finals.is_empty() {
            break finals;
        }
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited:\n{}", read_log());
        assert!(t0.elapsed() < Duration::from_secs(600), "no FINAL verdict after 600 s:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(250));
    };
    // Give a re-scoring loop (the old bug) time to show itself.
    std::thread::sleep(Duration::from_secs(4));
    let all = events(&checkout);
    let finals_now: Vec<&serde_json::Value> = all.iter().filter(|e| e["stage"] == "FINAL").collect();
    assert_eq!(finals_now.len(), 1, "one FINAL for one series: {all:#?}");
    assert_eq!(finals[0]["slices"].as_u64(), Some(sent.len() as u64), "every slice counted once: {:#}", finals[0]);

    // Every file is in done/ under its own name; nothing is left in incoming/ or quarantined.
    let var = checkout.join("var");
    assert_eq!(files_under(&var.join("done/P001")), sent);
    assert_eq!(files_under(&var.join("done")).len(), sent.len(), "{:?}", files_under(&var.join("done")));
    assert!(files_under(&var.join("incoming")).is_empty(), "{:?}", files_under(&var.join("incoming")));
    assert!(files_under(&var.join("quarantine")).is_empty());
    // The inputs were copied, never touched at their source.
    assert_eq!(files_under(&series), sent);

    // `ctsentry status --json` from the checkout: keys of DESIGN.md, the verdict, the latch.
    let (code, st) = status_json(&checkout);
    assert_eq!(code, 0, "{st}");
    for key in ["latched", "open_series", "queue", "faults", "engine", "precision", "model", "uptime_s", "last_verdicts"] {
        assert!(st.get(key).is_some(), "status lacks {key}: {st:#}");
    }
    assert_eq!((st["open_series"].as_u64(), st["queue"].as_u64()), (Some(0), Some(0)), "{st:#}");
    assert_eq!(st["last_verdicts"][0]["slices"].as_u64(), Some(sent.len() as u64), "{st:#}");
    assert_eq!(st["last_verdicts"][0]["series_uid"], finals[0]["series_uid"]);
    assert_eq!(st["model"]["sha256"].as_str().map(str::len), Some(64));
    let alerted = finals[0]["event"] == "ALERT";
    if alerted {
        assert_eq!(st["latched"]["series_uid"], finals[0]["series_uid"], "{st:#}");
        assert_eq!(st["latched"]["series_key"], finals[0]["series_key"], "{st:#}");
    } else {
        assert!(st["latched"].is_null(), "{st:#}");
    }

    // `ctsentry ack`: clears a latched alert; with nothing latched it says so.
    let out = bin(&checkout).arg("ack").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let t0 = Instant::now();
    loop {
        let (_, st) = status_json(&checkout);
        if st["latched"].is_null() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "ack did not clear the latch: {st:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = bin(&checkout).arg("ack").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no alert is latched"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!checkout.join("var/state/ack.request").exists());

    // SIGTERM: orderly stop; status then says it is not running (exit 1).
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let code = daemon.wait().unwrap();
    assert!(code.success(), "{code:?}\n{}", read_log());
    let (code, st) = status_json(&checkout);
    assert_eq!((code, st["running"].as_bool()), (1, Some(false)));
    let log = read_log();
    assert!(!log.contains(".dup"), "{log}");
}
