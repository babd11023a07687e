//! Supervision: every thread the daemon starts is watched. A dead exporter is FAULT EXPORT by
//! name and comes back; a DICOM association whose thread panics gives its place back; a dead
//! receiver ends the daemon non-zero, naming the thread, for systemd to restart it. The threads
//! are made to fail with the debug build's failpoints (`CTSENTRY_FAILPOINTS`).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::common::*;
use super::harness::*;

fn faults(cfg: &Path) -> Vec<String> {
    status_json(cfg)["faults"].as_array().map(|a| a.iter().filter_map(|f| f.as_str().map(String::from)).collect()).unwrap_or_default()
}

#[test]
fn an_exporter_thread_that_dies_is_fault_export_by_name_and_the_results_still_arrive() {
    if !tools_installed(&[("storescp", "apt-get install dcmtk")]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // DCMTK's storescp as the PACS: it keeps what it receives in `pacs/`.
    let pacs_dir = root.join("pacs");
    std::fs::create_dir_all(&pacs_dir).unwrap();
    let pacs_port = free_port();
    let pacs = Command::new("storescp").args(["-od", pacs_dir.to_str().unwrap(), &pacs_port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _pacs = Proc(pacs);
    let cfg = config(root, &format!("[export]\nenabled = true\npeer = \"127.0.0.1:{pacs_port}\"\ncalled_ae = \"PACS\"\ncalling_ae = \"CTSENTRY\"\nretry_max_seconds = 1\n"));
    let log = root.join("daemon.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    // The sender thread panics on its first pass over the spool, at start.
    let mut d = start_with(&cfg, &log, &[("CTSENTRY_FAILPOINTS", "export-run:1")]);
    assert!(
        wait_until(Duration::from_secs(60), || read_log().contains("export: the sender thread stopped (it panicked: failpoint export-run")),
        "the exporter's end was not named:\n{}",
        read_log()
    );
    assert!(wait_until(Duration::from_secs(5), || faults(&cfg).contains(&"EXPORT".to_string())), "no FAULT EXPORT: {}", status_json(&cfg));
    // A negative series: its SR goes to the PACS once the sender is back (5 s later).
    let src = root.join("src");
    write_series(&src, "s", "1.2.826.0.1.3680043.9.7307.31.1", -900, 4);
    drop_into(&src, &root.join("var/incoming"));
    assert!(wait_until(Duration::from_secs(60), || finals(&root.join("var/results")).len() == 1), "no FINAL:\n{}", read_log());
    assert!(wait_until(Duration::from_secs(30), || !walk(&pacs_dir).is_empty()), "nothing reached the PACS:\n{}", read_log());
    assert!(read_log().contains("export: sender restarted"), "{}", read_log());
    assert!(wait_until(Duration::from_secs(10), || faults(&cfg).is_empty()), "FAULT EXPORT not cleared: {}\n{}", status_json(&cfg), read_log());
    let got = walk(&pacs_dir);
    assert_eq!(got.len(), 1, "one SR, once: {got:?}");
    assert!(got[0].file_name().unwrap().to_string_lossy().starts_with("SR"), "storescp names files by modality: {got:?}");
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0), "{}", read_log());
}

#[test]
fn an_association_whose_thread_panics_gives_its_place_back_and_the_next_caller_is_served() {
    if !tools_installed(&[("echoscu", "apt-get install dcmtk"), ("storescu", "apt-get install dcmtk")]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = free_port();
    // One association at a time: a place not given back would refuse every later caller.
    let cfg = config(root, &format!("[dicom]\nenabled = true\nae_title = \"CTSENTRY\"\nlisten = \"127.0.0.1:{port}\"\nmax_associations = 1\n"));
    let log = root.join("daemon.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut d = start_with(&cfg, &log, &[("CTSENTRY_FAILPOINTS", "scp-serve:1")]);
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("dicom: C-ECHO and C-STORE SCP")), "no receiver:\n{}", read_log());
    let dcmtk =
        |tool: &str, files: &[std::path::PathBuf]| Command::new(tool).args(["-aet", "SCANNER", "-aec", "CTSENTRY", "127.0.0.1", &port.to_string()]).args(files).output().unwrap();
    let first = dcmtk("echoscu", &[]);
    assert!(!first.status.success(), "the first association's thread panics: echo cannot succeed");
    assert!(wait_until(Duration::from_secs(5), || read_log().contains("internal error (failpoint scp-serve")), "{}", read_log());
    for _ in 0..3 {
        let echo = dcmtk("echoscu", &[]);
        assert!(echo.status.success(), "the place was not given back: {}\n{}", String::from_utf8_lossy(&echo.stderr), read_log());
    }
    let src = root.join("scanner");
    write_series(&src, "s", "1.2.826.0.1.3680043.9.7307.32.1", 200, 4);
    let sent = dcmtk("storescu", &walk(&src.join("s")));
    assert!(sent.status.success(), "storescu: {}", String::from_utf8_lossy(&sent.stderr));
    assert!(wait_until(Duration::from_secs(60), || finals(&root.join("var/results")).len() == 1), "no FINAL:\n{}", read_log());
    assert!(d.try_wait().unwrap().is_none(), "the daemon must keep running:\n{}", read_log());
    signal(&d, libc::SIGTERM);
    assert_eq!(wait_exit(&mut d, Duration::from_secs(30)), Some(0), "{}", read_log());
}

#[test]
fn a_receiver_that_dies_ends_the_daemon_non_zero_naming_the_thread() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let port = free_port();
    let cfg = config(root, &format!("[dicom]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n"));
    let log = root.join("daemon.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut d = start_with(&cfg, &log, &[("CTSENTRY_FAILPOINTS", "scp-accept:1")]);
    assert!(wait_until(Duration::from_secs(60), || read_log().contains("] ready: ")), "{}", read_log());
    // Any connection: the accept loop panics once it has accepted it.
    let _conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let code = wait_exit(&mut d, Duration::from_secs(10));
    assert_eq!(code, Some(1), "a daemon without its receiver must not run on:\n{}", read_log());
    assert!(read_log().contains("thread dicom-scp stopped unexpectedly (it panicked: failpoint scp-accept"), "{}", read_log());
}
