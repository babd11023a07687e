//! What an admin watches: drift (a scanner whose calibration moved raises DEGRADED,DRIFT on
//! every channel, alerts go on, and it clears when the series return), and the admin's page as
//! a real browser (Debian's headless Chromium) renders it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::common::*;
use super::harness::*;

/// Writes a synthetic chest series of `n` slices (lungs about −850 HU) shifted by `shift` HU, as a
/// scanner with a calibration offset would write it.
fn write_chest_series(dir: &Path, name: &str, uid: &str, shift: i32, n: i32) {
    let (hu, _) = chest(128, 128, 0.0);
    std::fs::create_dir_all(dir.join(name)).unwrap();
    for k in 0..n {
        let mut s = CtSlice::pattern(128, 128, k, 2.5 * f64::from(k));
        s.series_uid = uid.into();
        s.sop_uid = format!("{uid}.{k}");
        s.rescale = Some((1.0, -1024.0));
        s.stored = hu.iter().map(|&v| (v.round() as i32 + shift + 1024).max(0)).collect();
        s.write(&dir.join(format!("{name}/{k}.dcm")), EXPLICIT_LE);
    }
}

/// The tiny model with its lung mask on (drift watches the HU inside the lungs), tract, and
/// `extra`; the rest as the harness's config.
fn masked_config(root: &Path, extra: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/testdata/tiny-densenet.onnx");
    let model = root.join("tiny.onnx");
    std::fs::copy(&src, &model).unwrap();
    std::fs::copy(src.with_extension("toml"), model.with_extension("toml")).unwrap();
    let p = root.join("c.toml");
    std::fs::write(
        &p,
        format!(
            "[paths]\nincoming = \"var/incoming\"\ndone = \"var/done\"\nquarantine = \"var/quarantine\"\nresults = \"var/results\"\nstate = \"var/state\"\n\
             [model]\npath = \"{}\"\n[preprocess]\nbackend = \"cpu\"\n[engine]\nbackend = \"tract\"\nthreads = 2\n[series]\nquiet_seconds = 1.0\n\
             [watch]\nmode = \"inotify\"\npoll_seconds = 0.2\nstable_seconds = 0.2\n[disk]\nmin_free_mb = 0\n{extra}",
            model.display()
        ),
    )
    .unwrap();
    p
}

const UID: &str = "1.2.826.0.1.3680043.8.498.77";

/// The reference comes from `ctsentry commission` on six in-distribution series (±15 HU); the
/// daemon then watches: three in-distribution series are ok; two from a scanner reading 140 HU
/// high raise DEGRADED,DRIFT (serial line, amber LED, status, /healthz body, metric) naming the
/// lung HU, while every series still gets its verdict; a restart keeps the drift (and says it
/// again); six in-distribution series clear it.
#[test]
fn hu_shifted_series_raise_drift_on_every_channel_and_it_clears_when_they_return() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The site's reference, measured by commissioning on its own (here: synthetic) studies.
    let cal = root.join("cal");
    let mut labels = String::from("file,covid\n");
    for (i, shift) in [-15, -9, -3, 3, 9, 15].into_iter().enumerate() {
        write_chest_series(&cal, &format!("s{i}"), &format!("{UID}.1{i}"), shift, 4);
        labels += &(0..4).map(|k| format!("s{i}/{k}.dcm,0\n")).collect::<String>();
    }
    std::fs::write(root.join("labels.csv"), labels).unwrap();
    let cfg0 = masked_config(root, "");
    let out = bin().arg("--config").arg(&cfg0).args(["commission", "--labels"]).arg(root.join("labels.csv")).arg("--out").arg(root.join("comm")).arg(&cal).output().unwrap();
    assert!(out.status.code().is_some_and(|c| c <= 1), "{}", String::from_utf8_lossy(&out.stderr));
    let reference = root.join("comm/reference.toml");
    let r: toml::Table = toml::from_str(&std::fs::read_to_string(&reference).unwrap()).unwrap();
    let (hu, sd) = (r["lung_hu_mean"].as_float().unwrap(), r["lung_hu_sd"].as_float().unwrap());
    assert!(r["series"].as_integer() == Some(6) && (-860.0..-700.0).contains(&hu), "lungs of the synthetic chest: {r}");
    assert!((sd - 11.22).abs() < 0.1, "the six series' offsets (±3, ±9, ±15 HU) are their only spread: {r}");

    let addr = format!("127.0.0.1:{}", free_port());
    let (mut port, leds, peers) = alert_peers(root);
    let cfg = masked_config(root, &format!("{peers}[metrics]\nlisten = \"{addr}\"\n[drift]\nreference = \"{}\"\nwindow = 6\nmin_series = 3\n", reference.display()));
    let log = root.join("daemon.log");
    let mut child = start(&cfg, &log);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let var = root.join("var");
    std::fs::create_dir_all(var.join("incoming")).unwrap();
    let results = var.join("results");
    let mut sent = 0;
    let mut send = |shifts: &[i32]| {
        let src = root.join(format!("batch{sent}"));
        for &shift in shifts {
            write_chest_series(&src, &format!("s{sent}"), &format!("{UID}.2{sent}"), shift, 4);
            sent += 1;
        }
        drop_into(&src, &var.join("incoming"));
        let want = sent;
        assert!(wait_until(Duration::from_secs(90), || finals(&results).len() == want), "{} of {want} verdicts\n{}", finals(&results).len(), read_log());
    };
    let drift = || status_json(&cfg)["drift"].clone();
    let mut buf = Vec::new();

    send(&[-6, 0, 6]);
    assert!(wait_until(Duration::from_secs(10), || drift()["series"] == 3), "{}", drift());
    assert_eq!(drift()["state"], "ok", "{}", drift());
    assert_eq!(look(&leds)[2], "off");

    send(&[140, 140]);
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(20), |l| l[2..] == ["DEGRADED".to_string(), "DRIFT".into()]);
    assert!(lines.iter().any(|l| l[2..] == ["DEGRADED".to_string(), "DRIFT".into()]), "{lines:?}\n{}", read_log());
    assert!(wait_until(Duration::from_secs(5), || drift()["state"] == "drift"), "{}", drift());
    let d = drift();
    assert!(d["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().starts_with("lung HU +")), "{d}");
    assert!(d["reference"].as_str().unwrap().starts_with("commission "), "{d}");
    assert!(wait_until(Duration::from_secs(5), || look(&leds)[2] == "on"), "{:?}", look(&leds));
    let (code, body) = http_get(&addr, "/healthz");
    assert!(code == 200 && body.starts_with("degraded: drift: lung HU +"), "{code} {body}");
    assert!(http_get(&addr, "/metrics").1.lines().any(|l| l == "ctsentry_drift 1"));
    assert_eq!(finals(&results).len(), 5, "every series has its verdict while drifting");

    // A restart neither forgets the drift nor judges it anew from nothing.
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(30)), Some(0), "{}", read_log());
    let _restarted = start(&cfg, &log);
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(30), |l| l[2..] == ["DEGRADED".to_string(), "DRIFT".into()]);
    assert!(lines.iter().any(|l| l[2..] == ["DEGRADED".to_string(), "DRIFT".into()]), "said again after the restart: {lines:?}\n{}", read_log());
    assert!(wait_until(Duration::from_secs(10), || drift()["state"] == "drift" && drift()["series"] == 5), "{}", drift());
    assert!(wait_until(Duration::from_secs(5), || look(&leds)[2] == "on"), "{:?}", look(&leds));

    send(&[-3, 3, 0, -6, 6, 0]);
    let lines = read_until(&mut port, &mut buf, Duration::from_secs(20), |l| l[2..] == ["CLEAR".to_string(), "DRIFT".into()]);
    assert!(lines.iter().any(|l| l[2..] == ["CLEAR".to_string(), "DRIFT".into()]), "{lines:?}\n{}", read_log());
    assert!(wait_until(Duration::from_secs(5), || drift()["state"] == "ok" && look(&leds)[2] == "off"), "{} {:?}", drift(), look(&leds));
    assert!(http_get(&addr, "/metrics").1.lines().any(|l| l == "ctsentry_drift 0"));
    assert!(!read_log().contains("Doe"), "no patient name in the log");
}

/// The admin's page in a real browser: Debian's headless Chromium renders it with the latched
/// alert's key, the verdict and the LEDs, and each heat map it shows loads as an image.
#[test]
fn the_admin_page_renders_in_chromium_with_the_latched_alert_and_heat_maps_that_load() {
    let Some(chromium) = ["chromium", "chromium-browser"].into_iter().find(|c| installed(c)) else {
        tool_missing("chromium", "apt-get install chromium");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = config(root, &format!("[metrics]\nlisten = \"{addr}\"\n"));
    let uid = "1.2.826.0.1.3680043.8.498.31";
    write_series(&root.join("src"), "dense", uid, 200, 4);
    let (_child, results, log) = start_and_drop(root, &cfg);
    assert!(wait_until(Duration::from_secs(60), || finals(&results).len() == 1), "{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(wait_until(Duration::from_secs(10), || status_json(&cfg)["last_verdicts"].as_array().is_some_and(|v| !v.is_empty())), "the verdict in the status");
    let key = status_json(&cfg)["latched"]["series_key"].as_str().expect("the dense series alerts and latches").to_string();

    let browser = |args: &[&str]| {
        let profile = root.join("chromium-profile");
        let out = std::process::Command::new(chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--virtual-time-budget=3000"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        out
    };
    let dom = String::from_utf8(browser(&["--dump-dom", &format!("http://{addr}/")]).stdout).unwrap();
    assert!(dom.contains("ALERT LATCHED") && dom.contains(&format!("<b class=\"key\">{key}</b>")), "{dom}");
    assert!(dom.contains("data-led=\"red\" data-state=\"on\"") && dom.contains("data-led=\"green\" data-state=\"on\""), "{dom}");
    assert!(dom.contains("<td><b>POSITIVE</b></td>") && dom.contains("tiny-densenet"), "{dom}");
    let srcs: Vec<String> = dom.split("src=\"").skip(1).filter_map(|s| s.split('"').next()).map(|s| s.replace("&amp;", "&")).collect();
    assert!(!srcs.is_empty() && srcs.iter().all(|s| s.starts_with("/heatmaps/")), "{srcs:?}");
    // Each heat map as the browser loads it: a page that reports the decoded size of each image.
    let probe = root.join("probe.html");
    let imgs: String = srcs.iter().map(|s| format!("<img src=\"http://{addr}{s}\">")).collect();
    std::fs::write(
        &probe,
        format!("<html><body>{imgs}<script>onload=()=>{{document.body.insertAdjacentHTML('beforeend','<p id=sizes>'+[...document.images].map(i=>i.naturalWidth+'x'+i.naturalHeight).join(' ')+'</p>')}}</script></body></html>"),
    )
    .unwrap();
    let dom = String::from_utf8(browser(&["--dump-dom", &format!("file://{}", probe.display())]).stdout).unwrap();
    let sizes = dom.split("<p id=\"sizes\">").nth(1).and_then(|s| s.split("</p>").next()).unwrap_or_else(|| panic!("{dom}"));
    assert_eq!(sizes.split(' ').count(), srcs.len(), "{sizes}");
    assert!(sizes.split(' ').all(|s| s != "0x0" && !s.is_empty()), "every heat map decodes: {sizes}");
    // A screenshot, to look at (the test prints where it is).
    let shot = std::env::var_os("CTSENTRY_PAGE_SCREENSHOT").map(PathBuf::from).unwrap_or_else(|| root.join("page.png"));
    browser(&["--window-size=1100,1000", &format!("--screenshot={}", shot.display()), &format!("http://{addr}/")]);
    assert!(std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000), "a screenshot of the page");
    println!("screenshot: {}", shot.display());
}
