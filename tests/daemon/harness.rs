//! What the daemon's tests share: a config over a temporary root, synthetic series, a daemon
//! child that is killed when its handle is dropped (a failed assert leaves nothing running), the
//! feed read back, waits with deadlines, the serial and LED peers, HTTP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::*;
pub use ctsentry::output::{FeedEvent, FeedKind, FeedStage, ResultFile, SeriesResult};

/// A daemon config over `root/var` with the tiny model (lung mask off: synthetic slices have no
/// lungs), `extra` appended.
pub fn config(root: &Path, extra: &str) -> PathBuf {
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
pub fn write_series(dir: &Path, name: &str, uid: &str, base: i32, n: i32) {
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
pub fn drop_into(src: &Path, incoming: &Path) {
    for f in walk(src) {
        let rel = f.strip_prefix(src).unwrap();
        let dst = incoming.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        let tmp = dst.with_file_name(format!(".{}.part", dst.file_name().unwrap().to_string_lossy()));
        std::fs::copy(&f, &tmp).unwrap();
        std::fs::rename(&tmp, &dst).unwrap();
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
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

pub fn rels(dir: &Path) -> Vec<String> {
    walk(dir).iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect()
}

pub fn start(cfg: &Path, log: &Path) -> Proc {
    start_with(cfg, log, &[])
}

/// Starts the daemon with extra environment variables (the debug builds' failpoints), its
/// stderr appended to `log`.
pub fn start_with(cfg: &Path, log: &Path, env: &[(&str, &str)]) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Proc(bin().args(["--config", cfg.to_str().unwrap(), "run"]).envs(env.iter().copied()).stdout(Stdio::null()).stderr(log).spawn().unwrap())
}

pub fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, sig) };
}

pub fn wait_exit(child: &mut Child, within: Duration) -> Option<i32> {
    let t = Instant::now();
    while t.elapsed() < within {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

pub fn events(results: &Path) -> Vec<FeedEvent> {
    std::fs::read_to_string(results.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("events.jsonl line {l:?}: {e}")))
        .collect()
}

/// The final verdicts in the feed, in order.
pub fn finals(results: &Path) -> Vec<FeedEvent> {
    events(results).into_iter().filter(|e| e.stage == FeedStage::Final).collect()
}

/// The result file of series `uid`, part `part`, read as its type.
pub fn result_file(results: &Path, uid: &str, part: u16) -> SeriesResult {
    let p = results.join(format!("{}.json", ctsentry::alert::series_id(uid, part)));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    match serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", p.display())) {
        ResultFile::Series(r) => *r,
    }
}

pub fn batch_verdicts(cfg: &Path, src: &Path) -> BTreeMap<String, (String, u64)> {
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
pub fn start_and_drop(root: &Path, cfg: &Path) -> (Proc, PathBuf, PathBuf) {
    let var = root.join("var");
    std::fs::create_dir_all(var.join("incoming")).unwrap();
    let log = root.join("daemon.log");
    let child = start(cfg, &log);
    drop_into(&root.join("src"), &var.join("incoming"));
    (child, var.join("results"), log)
}

pub fn wait_until(within: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

pub fn status_json(cfg: &Path) -> serde_json::Value {
    let out = bin().args(["status", "--json", "--config", cfg.to_str().unwrap()]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Reads serial lines until one satisfies `done` (or `within` passes); returns all read.
pub fn read_until(port: &mut serialport::TTYPort, buf: &mut Vec<u8>, within: Duration, done: impl Fn(&[String]) -> bool) -> Vec<Vec<String>> {
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
pub fn alert_peers(root: &Path) -> (serialport::TTYPort, [PathBuf; 3], String) {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// GET `path` from `addr` (HTTP/1.0: the server closes after the body): (status code, body).
pub fn http_get_bytes(addr: &str, path: &str) -> (u16, Vec<u8>) {
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
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let (code, body) = http_get_bytes(addr, path);
    (code, String::from_utf8_lossy(&body).into_owned())
}

/// Whether `tool` is on the PATH.
pub fn installed(tool: &str) -> bool {
    Command::new("which").arg(tool).output().is_ok_and(|o| o.status.success())
}

/// Whether every `(tool, how to install it)` is installed; reports the first one missing
/// ([`tool_missing`]: a failure under CI, where `.ci/run` installs them).
pub fn tools_installed(tools: &[(&str, &str)]) -> bool {
    match tools.iter().find(|(t, _)| !installed(t)) {
        Some((t, how)) => {
            tool_missing(t, how);
            false
        }
        None => true,
    }
}

/// CPU seconds (user + system) the process `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), in clock ticks of 1/100 s.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

/// Fails when the process `pid` burns CPU while idle (a thread left spinning).
pub fn assert_idle(pid: u32, log: &str) {
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(pid) - before;
    assert!(used < 0.5, "the daemon used {used:.2} CPU-seconds in 2 idle seconds: a thread spins\n{log}");
}
