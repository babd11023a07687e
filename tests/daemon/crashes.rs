//! Crashes and failures inside the daemon: SIGKILL at random moments, files that panic a worker
//! or kill the process, engine failures and their retries.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use rand::{Rng, SeedableRng};

use super::harness::*;

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
    let done = wait_until(Duration::from_secs(120), || walk(&incoming).is_empty() && finals(&results).len() >= 3);
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
    let finals: Vec<&FeedEvent> = ev.iter().filter(|e| e.stage == FeedStage::Final).collect();
    let earlies: Vec<&FeedEvent> = ev.iter().filter(|e| e.stage == FeedStage::Early).collect();
    assert_eq!(finals.len(), 3, "{ev:#?}");
    let ids: BTreeSet<&str> = ev.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), ev.len(), "no event twice");
    for (uid, (verdict, positives)) in &expected {
        let f: Vec<_> = finals.iter().filter(|e| e.series_uid == *uid).collect();
        assert_eq!(f.len(), 1, "{uid}: {ev:#?}");
        assert_eq!(f[0].event, if verdict == "positive" { FeedKind::Alert } else { FeedKind::Negative });
        assert_eq!(f[0].positives as u64, *positives, "{uid}");
        assert_eq!(f[0].part, 1);
        let e = earlies.iter().filter(|e| e.series_uid == *uid).count();
        assert_eq!(e, usize::from(verdict == "positive"), "{uid}: {ev:#?}");
        // The result file.
        let id = &f[0].series_id;
        assert!(id.len() == 64 && id.starts_with(&f[0].series_key), "{id}");
        let r = result_file(&results, uid, 1);
        assert_eq!(&r.series_id, id);
        assert_eq!(serde_json::to_value(r.summary.decision.verdict).unwrap(), verdict.as_str());
        assert_eq!(r.slice_scores.len(), 6);
        assert_eq!(r.summary.rule.threshold, 0.5);
        assert_eq!(r.summary.model.name, "tiny-densenet");
        let idx: Vec<usize> = r.slice_scores.iter().map(|s| s.slice_index).collect();
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
    let mut child = start_with(&cfg, &log, &[("CTSENTRY_FAILPOINTS", "worker-panic@poison.dcm")]);
    // All six at once, so the poison shares a batch with the others.
    drop_into(&root.join("src"), &var.join("incoming"));
    let results = var.join("results");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || !finals(&results).is_empty()), "{}", read_log());
    let f = finals(&results);
    assert_eq!(f[0].slices, 5, "the five good slices, once each: {f:#?}");
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
        let mut child = start_with(&cfg, &log, &[("CTSENTRY_FAILPOINTS", "worker-abort@poison.dcm")]);
        let finished = wait_until(Duration::from_secs(30), || child.try_wait().unwrap().is_some() || !finals(&results).is_empty());
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
    assert_eq!((f.len(), f[0].slices), (1, 4), "{f:#?}");
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
    let mut child = start_with(&cfg, &log, &[("CTSENTRY_FAILPOINTS", "engine-fail@2.dcm:2")]);
    drop_into(&root.join("src"), &var.join("incoming"));
    let results = var.join("results");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(wait_until(Duration::from_secs(60), || !finals(&results).is_empty()), "{}", read_log());
    std::thread::sleep(Duration::from_secs(2));
    let f = finals(&results);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].slices, f[0].part), (4, 1), "{f:#?}");
    assert!(read_log().contains("scoring failed (1)"), "{}", read_log());
    assert_eq!(rels(&var.join("done")).len(), 4);
    signal(&child, libc::SIGTERM);
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
}
