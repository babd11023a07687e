//! The command line as scripts use it: exit codes, `inspect --json` and `check-config`.

mod common;

use std::process::Command;

use common::*;

fn ctsentry(args: &[&str]) -> (i32, String, String) {
    let out = common::bin().args(args).current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run ctsentry");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn shipped_config_is_valid() {
    let (code, out, _) = ctsentry(&["check-config", "config/ctsentry.toml"]);
    assert_eq!(code, 0);
    assert!(out.contains("ok"));
}

#[test]
fn check_config_reports_every_error_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[paths]\nincomming = \"x\"\n[series]\nquiet_seconds = -1\n").unwrap();
    let (code, _, err) = ctsentry(&["check-config", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("bad.toml:2:1: unknown field `incomming`"), "{err}");
    assert!(err.contains("bad.toml:4:17: series.quiet_seconds = -1 is outside"), "{err}");
}

#[test]
fn inspect_json_follows_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = CtSlice::pattern(4, 4, 1, 7.0);
    s.rescale = Some((1.0, -1024.0));
    s.stored = vec![0, 1024, 2048, 1024, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4000];
    s.write(&dir.path().join("a.dcm"), EXPLICIT_LE);
    std::fs::write(dir.path().join("junk.dcm"), b"garbage").unwrap();
    std::fs::write(dir.path().join(".hidden.dcm"), b"garbage").unwrap();
    let (code, out, _) = ctsentry(&["inspect", "--json", dir.path().to_str().unwrap()]);
    assert_eq!(code, 1, "a failed file makes the exit code 1");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "dot files are skipped: {out}");
    let a = &lines[0];
    assert_eq!(a["kind"], "dicom");
    assert_eq!(a["transfer_syntax"], EXPLICIT_LE);
    assert_eq!(a["modality"], "CT");
    assert_eq!((a["rows"].as_u64(), a["cols"].as_u64(), a["frames"].as_u64()), (Some(4), Some(4), Some(1)));
    assert_eq!(a["hu_min"], -1024.0);
    assert_eq!(a["hu_max"], 2976.0);
    assert_eq!(a["hu_mean"], (-1024.0 * 16.0 + 1024.0 + 2048.0 + 1024.0 + 4000.0) / 16.0);
    assert_eq!(a["series_uid"], s.series_uid);
    assert_eq!(a["slice_location"], 7.0);
    assert!(a["file"].as_str().unwrap().ends_with("a.dcm"));
    let j = &lines[1];
    assert!(j["file"].as_str().unwrap().ends_with("junk.dcm"));
    assert!(j["error"].as_str().unwrap().contains("not a DICOM file"));
    // NIfTI reports slices rather than frames.
    let vol = NiftiVol { dims: [3, 2, 5], data: vec![-1000; 30], slope: 1.0, inter: 0.0, srow: [[-1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]] };
    let p = dir.path().join("v.nii");
    std::fs::write(&p, vol.bytes(1)).unwrap();
    let (code, out, _) = ctsentry(&["inspect", "--json", p.to_str().unwrap()]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["kind"].as_str(), v["slices"].as_u64(), v["hu_max"].as_f64()), (Some("nifti"), Some(5), Some(-1000.0)));
}

#[test]
fn doctor_says_why_cuda_is_unavailable() {
    let (code, out, _) = ctsentry(&["doctor"]);
    assert_eq!(code, 0);
    assert!(out.contains("config        ok"), "{out}");
    let cuda = out.lines().find(|l| l.starts_with("cuda")).expect("a cuda line");
    // Either a usable device or the reason it is not usable.
    assert!(cuda.contains("usable: ") || cuda.contains("not usable"), "{cuda}");
    if cuda.contains("not usable") {
        assert!(out.contains("preprocess    cpu (auto: no usable GPU"), "{out}");
    }
}

#[test]
fn bench_measures_the_cpu_preprocessor() {
    let (code, out, _) = ctsentry(&["bench", "--preprocess", "cpu", "--batch", "4", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["backend"], "cpu");
    assert!(v["max_error_vs_reference"].as_f64().unwrap() <= 1e-5);
    assert!(v["slices_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn deep_check_without_a_usable_model_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[paths]\nincoming = \"in\"\nstate = \"st\"\ndone = \"d\"\nquarantine = \"q\"\nresults = \"r\"\n[model]\npath = \"none.onnx\"\n").unwrap();
    // The file itself is valid...
    let (code, out, _) = ctsentry(&["check-config", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    // ...but what it names is not usable. (`run` stays up with FAULT,MODEL instead: tests/daemon.rs.)
    let (code, _, err) = ctsentry(&["check-config", "--deep", p.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("none.toml") && err.contains("cannot read"), "{err}");
    let (code, _, _) = ctsentry(&["no-such-command"]);
    assert_eq!(code, 2);
}

/// `inspect` over pydicom's own test-file collection (pip package `pydicom`, installed by
/// `.ci/run`): every file yields stats or a clear error, and nothing crashes.
#[test]
fn inspect_survives_pydicom_test_files() {
    let out = Command::new("python3").args(["-c", "import pydicom, os; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))"]).output();
    let dir = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => {
            tool_missing("pydicom", "pip install pydicom");
            return;
        }
    };
    let files = ctsentry::ingest::collect_files(&[dir.clone().into()]).unwrap();
    let (code, out, err) = ctsentry(&["inspect", "--json", &dir]);
    assert!(code == 0 || code == 1, "exit {code}: {err}");
    assert!(!err.contains("internal error") && !err.contains("panicked"), "{err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), files.len());
    let ok = lines.iter().filter(|l| l.get("error").is_none()).count();
    for l in &lines {
        match l.get("error") {
            Some(e) => assert!(!e.as_str().unwrap().is_empty()),
            None => assert!(l["hu_min"].as_f64().unwrap() <= l["hu_max"].as_f64().unwrap()),
        }
    }
    println!("pydicom test files: {} files, {ok} read, {} refused with a reason", files.len(), files.len() - ok);
    assert!(ok >= 10, "the CT files among them must read");
}

/// A 600-byte file that declares a multi-gigabyte element is refused without allocating it.
#[test]
fn declared_lengths_past_the_end_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.dcm");
    CtSlice::pattern(4, 4, 1, 0.0).write(&p, EXPLICIT_LE);
    let mut b = std::fs::read(&p).unwrap();
    // Find the Modality element (0008,0060 CS) and make it claim 0xFFF0 bytes.
    let at = b.windows(6).position(|w| w == [0x08, 0x00, 0x60, 0x00, b'C', b'S']).unwrap();
    b[at + 6] = 0xF0;
    b[at + 7] = 0xFF;
    std::fs::write(&p, &b).unwrap();
    let (code, out, _) = ctsentry(&["inspect", "--json", p.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.contains("declares 65520 bytes"), "{out}");
}

fn ctsentry_in(cwd: &std::path::Path, env: Option<&std::path::Path>, args: &[&str]) -> (i32, String, String) {
    let mut c = common::bin();
    c.args(args).current_dir(cwd).env_remove("CTSENTRY_CONFIG");
    if let Some(e) = env {
        c.env("CTSENTRY_CONFIG", e);
    }
    let out = c.output().expect("run ctsentry");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn config_is_found_in_the_documented_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let checkout = root.join("checkout");
    std::fs::create_dir_all(checkout.join("config")).unwrap();
    let write = |p: &std::path::Path, state: &str| std::fs::write(p, format!("[paths]\nstate = \"{state}\"\n")).unwrap();
    write(&checkout.join("config/ctsentry.toml"), "st-checkout");
    let (env_cfg, flag_cfg) = (root.join("env.toml"), root.join("flag.toml"));
    write(&env_cfg, "st-env");
    write(&flag_cfg, "st-flag");
    let checked = |r: (i32, String, String)| {
        assert_eq!(r.0, 0, "{} {}", r.1, r.2);
        r.1
    };
    // A checkout's config from its working directory...
    assert!(checked(ctsentry_in(&checkout, None, &["check-config"])).starts_with("config/ctsentry.toml: ok"));
    // ...unless $CTSENTRY_CONFIG names one...
    assert!(checked(ctsentry_in(&checkout, Some(&env_cfg), &["check-config"])).contains("env.toml: ok"));
    // ...unless --config does, before or after the subcommand.
    let flag = flag_cfg.to_str().unwrap();
    assert!(checked(ctsentry_in(&checkout, Some(&env_cfg), &["--config", flag, "check-config"])).contains("flag.toml: ok"));
    assert!(checked(ctsentry_in(&checkout, Some(&env_cfg), &["check-config", "--config", flag])).contains("flag.toml: ok"));
    // `ack` and `status` use the same lookup: the state folder named by the env's config.
    let (code, _, err) = ctsentry_in(&checkout, Some(&env_cfg), &["status"]);
    assert_eq!(code, 1);
    assert!(err.contains("st-env/status.json"), "{err}");
    // Nowhere to find one: commands that need a config refuse and say where they looked.
    if !std::path::Path::new("/etc/ctsentry/ctsentry.toml").exists() {
        let (code, _, err) = ctsentry_in(root, None, &["ack"]);
        assert_eq!(code, 2);
        assert!(err.contains("no config file") && err.contains("/etc/ctsentry/ctsentry.toml"), "{err}");
    }
}

#[test]
fn doctor_exits_1_with_one_fix_per_problem() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(
        &p,
        "[paths]\nincoming = \"in\"\nstate = \"st\"\ndone = \"d\"\nquarantine = \"q\"\nresults = \"r\"\n[model]\npath = \"none.onnx\"\n\
         [alert.serial]\nenabled = true\nport = \"/dev/ttyNOSUCHPORT\"\n",
    )
    .unwrap();
    let (code, out, _) = ctsentry(&["--config", p.to_str().unwrap(), "doctor"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("problems      2"), "{out}");
    assert!(out.contains("fix: put the model bundle there"), "{out}");
    assert!(out.contains("fix: plug the serial adapter in"), "{out}");
    // The shipped config in a checkout has none.
    let (code, out, _) = ctsentry(&["doctor"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("problems      none"), "{out}");
}

#[test]
fn a_precision_the_engine_does_not_run_is_refused_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_unmasked(dir.path());
    let write = |precision: &str| {
        let p = dir.path().join(format!("{precision}.toml"));
        std::fs::write(&p, format!("[paths]\nincoming = \"in\"\nstate = \"st\"\ndone = \"d\"\nquarantine = \"q\"\nresults = \"r\"\n[model]\npath = \"{}\"\n[engine]\nbackend = \"tract\"\nprecision = \"{precision}\"\n", model.display())).unwrap();
        p
    };
    for ok in ["auto", "f32"] {
        let (code, out, err) = ctsentry(&["check-config", "--deep", write(ok).to_str().unwrap()]);
        assert_eq!(code, 0, "{ok}: {out}{err}");
    }
    let (code, _, err) = ctsentry(&["check-config", "--deep", write("bf16").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("engine.precision = \"bf16\": the tract engine runs f32"), "{err}");
    let (code, _, err) = ctsentry(&["check-config", write("f64").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("engine.precision = \"f64\" is not one of auto, f32, bf16, f16"), "{err}");
}

/// A configured drift reference that the daemon could not use is a problem for `check-config
/// --deep` (naming the file and what is wrong) and for `doctor`; a good one is shown by `doctor`
/// with where it came from; `threshold_provenance` without a threshold is refused.
#[test]
fn a_drift_reference_is_checked_before_the_daemon_relies_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_unmasked(dir.path());
    let reference = dir.path().join("reference.toml");
    let write = |extra: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            format!(
                "[paths]\nincoming = \"in\"\nstate = \"st\"\ndone = \"d\"\nquarantine = \"q\"\nresults = \"r\"\n[model]\npath = \"{}\"\n[engine]\nbackend = \"tract\"\n{extra}",
                model.display()
            ),
        )
        .unwrap();
        p
    };
    let cfg = write(&format!("[drift]\nreference = \"{}\"\n", reference.display()));
    std::fs::write(&reference, "alert_rate = 1.7\nprob_mean = 0.2\nprob_sd = 0.05\nlung_hu_mean = -800.0\nlung_hu_sd = 40.0\nseries = 40\nsource = \"commission X\"\n").unwrap();
    let (code, _, err) = ctsentry(&["check-config", "--deep", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&format!("drift.reference {}", reference.display())) && err.contains("alert_rate, prob_mean and prob_sd must lie in [0, 1]"), "{err}");
    std::fs::write(
        &reference,
        "alert_rate = 0.1\nprob_mean = 0.2\nprob_sd = 0.05\nlung_hu_mean = -800.0\nlung_hu_sd = 40.0\nseries = 40\nsource = \"commission 20261206T000000Z (tiny)\"\n",
    )
    .unwrap();
    let (code, out, err) = ctsentry(&["check-config", "--deep", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = ctsentry(&["--config", cfg.to_str().unwrap(), "doctor"]);
    assert!(out.contains("drift         the last 50 series against commission 20261206T000000Z (tiny)"), "{out}");
    // No reference anywhere (the test model's manifest has none): doctor says drift is not watched and how to fix it.
    let (_, out, _) = ctsentry(&["--config", write("").to_str().unwrap(), "doctor"]);
    assert!(out.contains("drift         NOT WATCHED: ") && out.contains("ctsentry commission --out DIR"), "{out}");
    let (code, _, err) = ctsentry(&["check-config", write("[decision]\nthreshold_provenance = \"me\"\n").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("decision.threshold_provenance without decision.threshold"), "{err}");
}

/// `commission` with a model whose manifest makes no claims (the test model) says so rather than
/// "within", scores each series once even when its files lie in two folders, counts a series
/// positive when any of its files is, and flags a run this small as too few to tell.
#[test]
fn commission_without_claims_says_so_and_scores_a_series_split_over_folders_once() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_unmasked(dir.path());
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[model]\npath = \"{}\"\n[engine]\nbackend = \"tract\"\n[decision]\nthreshold = 0.5\nmin_positive_slices = 1\n", model.display())).unwrap();
    let root = dir.path().join("studies");
    let mut labels = String::from("file,covid\n");
    for (series, folders, label) in [("1.2.826.0.1.3680043.8.498.501", ["a", "b"], [0, 1]), ("1.2.826.0.1.3680043.8.498.502", ["c", "c"], [0, 0])] {
        for (k, (folder, y)) in folders.iter().zip(label).enumerate() {
            std::fs::create_dir_all(root.join(folder)).unwrap();
            let mut s = CtSlice::pattern(48, 48, k as i32, 2.5 * k as f64);
            s.series_uid = series.into();
            s.sop_uid = format!("{series}.{k}");
            s.write(&root.join(format!("{folder}/{k}.dcm")), EXPLICIT_LE);
            labels += &format!("{folder}/{k}.dcm,{y}\n");
        }
    }
    std::fs::write(dir.path().join("labels.csv"), labels).unwrap();
    let (code, out, err) =
        ctsentry(&["--config", cfg.to_str().unwrap(), "commission", "--json", "--labels", dir.path().join("labels.csv").to_str().unwrap(), root.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((v["series"].as_u64(), v["positive_series"].as_u64(), v["negative_series"].as_u64()), (Some(2), Some(1), Some(1)), "{v}");
    let slices: Vec<u64> = v["rows"].as_array().unwrap().iter().map(|r| r["slices"].as_u64().unwrap()).collect();
    assert_eq!(slices, [2, 2], "the series in folders a and b is one series of 2 slices: {v}");
    assert_eq!(v["claims"].as_array().map(Vec::len), Some(0));
    assert_eq!((v["few_series"].as_bool(), v["within_claims"].as_bool()), (Some(true), Some(true)));
    let (_, text, _) = ctsentry(&["--config", cfg.to_str().unwrap(), "commission", "--labels", dir.path().join("labels.csv").to_str().unwrap(), root.to_str().unwrap()]);
    assert!(text.contains("NO CLAIMS to compare with") && !text.contains("WITHIN"), "{text}");
    assert!(text.contains("note: 2 series (1 positive, 1 negative)"), "{text}");
}
