//! Series in the daemon: display keys that collide, parts, the millimetre rule, a burst of
//! files with bounded memory.

use std::time::{Duration, Instant};

use super::common::*;
use super::harness::*;

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

/// Peak resident memory (VmHWM) of a process, in MiB.
fn peak_rss_mb(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
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
        let e = f.iter().find(|e| e.series_uid == *uid).unwrap_or_else(|| panic!("no FINAL for {uid}: {f:#?}"));
        assert_eq!(e.slices, n);
        let r = result_file(&results, uid, 1);
        assert_eq!((r.summary.series_uid.as_str(), r.summary.decision.slices, r.series_id), (uid.as_str(), n, ctsentry::alert::series_id(uid, 1)));
    }
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
    assert_eq!(f.iter().map(|e| e.part).collect::<Vec<_>>(), vec![1, 2], "{f:#?}");
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
        let r = result_file(&results, uid, 1).summary;
        let want = if verdict == "positive" { ctsentry::decide::Verdict::Positive } else { ctsentry::decide::Verdict::Negative };
        assert_eq!((r.decision.verdict, r.decision.positive_extent_mm, r.rule.min_positive_extent_mm), (want, Some(extent), 20.0), "{r:#?}");
        assert_eq!((r.rule.physical_source.as_str(), r.decision.positive_share), ("extent: config, share: default", 1.0), "{r:#?}");
        let f = finals(&results).into_iter().find(|e| e.series_uid == uid).unwrap();
        assert_eq!((f.event, f.min_positive_extent_mm), (if verdict == "positive" { FeedKind::Alert } else { FeedKind::Negative }, 20.0), "{f:?}");
    }
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
    let ok = wait_until(Duration::from_secs(240), || finals(&results).len() == 40);
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
