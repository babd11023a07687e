//! `score` and `eval` end to end: generated DICOM series, the tiny test model, the JSON contract.

mod common;

use std::path::Path;

use common::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = common::bin().args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A config using the tiny model (its manifest with the lung mask off: the synthetic slices
/// have no lungs), with `extra` appended.
fn config(dir: &Path, extra: &str) -> String {
    let model = tiny_model_unmasked(dir);
    let p = dir.join("c.toml");
    std::fs::write(&p, format!("[model]\npath = \"{}\"\n{extra}", model.display())).unwrap();
    p.display().to_string()
}

/// Two series of 5 slices; series B is brighter (denser), so the tiny model scores it higher.
fn series(dir: &Path) {
    for (name, uid, base) in [("a", "1.2.3.1", -900), ("b", "1.2.3.2", 200)] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for k in 0..5 {
            let mut s = CtSlice::pattern(64, 64, k, 3.0 * k as f64);
            s.series_uid = uid.into();
            s.rescale = Some((1.0, -1024.0));
            s.stored = s.stored.iter().map(|v| (v / 10 + base + 1024).max(0)).collect();
            s.write(&dir.join(format!("{name}/{}.dcm", 4 - k)), EXPLICIT_LE);
        }
    }
}

#[test]
fn score_json_follows_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    series(&dir.path().join("in"));
    std::fs::write(dir.path().join("in/readme.txt"), "not an image").unwrap();
    let cfg = config(dir.path(), "[decision]\nthreshold = 0.5\nmin_positive_slices = 2\n[preprocess]\nbackend = \"cpu\"\n");
    let (code, out, err) = run(&["--config", &cfg, "score", "--json", dir.path().join("in").to_str().unwrap()]);
    assert_eq!(code, 1, "an unreadable file makes the exit code 1: {err}");
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let errors: Vec<_> = lines.iter().filter(|l| l["type"] == "error").collect();
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["file"].as_str().unwrap().ends_with("readme.txt"));
    let slices: Vec<_> = lines.iter().filter(|l| l["type"] == "slice").collect();
    let series: Vec<_> = lines.iter().filter(|l| l["type"] == "series").collect();
    assert_eq!((slices.len(), series.len()), (10, 2));
    for s in &slices {
        for key in ["file", "series_uid", "slice_index", "z", "lung_fraction", "prob", "positive"] {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
        assert_eq!(s["positive"].as_bool().unwrap(), s["prob"].as_f64().unwrap() >= 0.5);
    }
    // Feet to head: slice_index 0 has z 0 and the lowest position (file 4.dcm).
    let first = slices.iter().find(|s| s["series_uid"] == "1.2.3.1" && s["slice_index"] == 0).unwrap();
    assert_eq!(first["z"], 0.0);
    assert!(first["file"].as_str().unwrap().ends_with("a/4.dcm"));
    for s in &series {
        for key in [
            "series_uid",
            "slices",
            "positives",
            "max_prob",
            "verdict",
            "threshold",
            "min_positive_slices",
            "model",
            "engine",
            "precision",
            "min_positive_extent_mm",
            "min_positive_share",
            "physical_source",
            "positive_extent_mm",
            "positive_share",
        ] {
            assert!(s.get(key).is_some(), "{key} missing in {s}");
        }
        assert_eq!(s["threshold_source"], "config");
        assert_eq!(s["model"]["name"], "tiny-densenet");
        let positives = s["positives"].as_u64().unwrap();
        assert_eq!(s["verdict"], if positives >= 2 { "positive" } else { "negative" });
    }
    let max = |uid: &str| series.iter().find(|s| s["series_uid"] == uid).unwrap()["max_prob"].as_f64().unwrap();
    assert!(max("1.2.3.2") > max("1.2.3.1"), "the denser series scores higher");
    // The same lines read back as types, and written again, say the same.
    for l in out.lines() {
        let typed: ctsentry::output::ScoreLine = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}"));
        assert_eq!(serde_json::to_string(&typed).unwrap(), l);
    }
}

#[test]
fn eval_prints_the_table_and_writes_the_roc() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    series(&root);
    let mut labels = String::from("file,covid,note\n");
    for k in 0..5 {
        labels += &format!("a/{k}.dcm,0,x\nb/{k}.dcm,1,y\n");
    }
    std::fs::write(dir.path().join("labels.csv"), labels).unwrap();
    let cfg = config(dir.path(), "");
    let out_dir = dir.path().join("report");
    let (code, out, err) = run(&[
        "--config",
        &cfg,
        "eval",
        "--json",
        "--labels",
        dir.path().join("labels.csv").to_str().unwrap(),
        "--out",
        out_dir.to_str().unwrap(),
        "--pick-threshold",
        "sensitivity=1.0",
        root.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["tp", "tn", "fp", "fn", "accuracy", "loss", "misclassification_rate", "auc", "sensitivity", "specificity", "ppv", "npv", "threshold"] {
        assert!(v.get(key).is_some(), "{key} missing in {v}");
    }
    assert_eq!(v["tp"].as_u64().unwrap() + v["tn"].as_u64().unwrap() + v["fp"].as_u64().unwrap() + v["fn"].as_u64().unwrap(), 10);
    assert_eq!(v["auc"], 1.0, "denser slices score higher, so the classes separate: {v}");
    assert!(v["picked_threshold"]["threshold"].as_f64().is_some());
    let scores = std::fs::read_to_string(out_dir.join("scores.csv")).unwrap();
    assert_eq!(scores.lines().count(), 11);
    assert!(out_dir.join("roc.png").exists() && out_dir.join("roc.csv").exists());
    // One heat map per positive slice.
    let positives = scores.lines().skip(1).filter(|l| l.ends_with(",1")).count();
    assert_eq!(std::fs::read_dir(out_dir.join("heatmaps")).unwrap().count(), positives);
    // The human table has the reference work's rows.
    let (code, out, _) = run(&["--config", &cfg, "eval", "--labels", dir.path().join("labels.csv").to_str().unwrap(), root.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.contains("TP ") && out.contains("misclassification rate") && out.contains("AUC") && out.contains("NPV"), "{out}");
    assert!(!err.contains("training data"), "no series of this set was trained on: {err}");
    assert_eq!(v["series_in_training"], 0);
    // A model whose manifest says it was trained on series B: eval says so.
    let manifest = dir.path().join("tiny.toml");
    let text = std::fs::read_to_string(&manifest).unwrap() + "\n[training]\nseries_uids = [\"1.2.3.2\"]\n";
    std::fs::write(&manifest, text).unwrap();
    let (code, out, err) = run(&["--config", &cfg, "eval", "--json", "--labels", dir.path().join("labels.csv").to_str().unwrap(), root.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: 1 of 2 evaluated series were in the model's training data"), "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["series_in_training"], 1);
}

#[test]
fn a_missing_or_mismatched_model_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, "[model]\npath = \"nothing.onnx\"\n").unwrap();
    let (code, _, err) = run(&["--config", p.to_str().unwrap(), "score", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("nothing.toml") && err.contains("cannot read"), "{err}");
    let cfg = config(dir.path(), "[engine]\nbackend = \"tensorrt\"\n");
    let (code, _, err) = run(&["--config", &cfg, "score", dir.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(err.contains("engine.backend = \"tensorrt\"") && (err.contains("--features tensorrt") || err.contains("no plan at")), "{err}");
}

#[test]
fn bench_measures_decode_and_end_to_end_on_files() {
    let dir = tempfile::tempdir().unwrap();
    series(&dir.path().join("in"));
    let cfg = config(dir.path(), "[preprocess]\nbackend = \"cpu\"\n");
    let (code, out, err) = run(&["--config", &cfg, "bench", "--json", "--input", dir.path().join("in").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["slices"], 10);
    assert!(v["decode_slices_per_s"].as_f64().unwrap() > 0.0 && v["end_to_end_slices_per_s"].as_f64().unwrap() > 0.0);
    // auto: OpenVINO where its library is found (pip's package here and under CI), else tract.
    let expected = if ctsentry::engine::openvino::library(None).is_ok() { "openvino" } else { "tract" };
    assert_eq!(v["engine"], expected);
}

/// The tiny test model copied into `dir` with `decision` lines appended to its manifest.
fn tiny_model_with(dir: &Path, decision: &str) -> std::path::PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/testdata/tiny-densenet.onnx");
    let model = dir.join("tiny.onnx");
    std::fs::copy(&src, &model).unwrap();
    std::fs::write(model.with_extension("toml"), std::fs::read_to_string(src.with_extension("toml")).unwrap() + decision).unwrap();
    model
}

/// Slices without lung are not sent to the engine when the manifest says so (`min_lung_fraction`):
/// probability 0 and a reason; the manifest's `min_positive_slices` applies unless the config
/// sets one, and every result says which.
#[test]
fn slices_without_lung_are_skipped_and_the_rule_names_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_with(dir.path(), "min_positive_slices = 1\nmin_lung_fraction = 0.05\n");
    // 20 chest slices (two lungs), three of them (one before the others, one across a chunk of
    // 16) soft tissue only; the chest slices differ in density so that their scores differ.
    let input = dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let (hu, _) = chest(128, 128, 0.0);
    let lungless = [0usize, 7, 17];
    for k in 0..20 {
        let mut s = CtSlice::pattern(128, 128, k, 2.0 * k as f64);
        s.stored = if lungless.contains(&(k as usize)) { vec![40; 128 * 128] } else { hu.iter().map(|&v| v.round() as i32 + if v > -500.0 { 3 * k } else { 0 }).collect() };
        s.write(&input.join(format!("{k}.dcm")), EXPLICIT_LE);
    }
    let score = |extra: &str| {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, format!("[model]\npath = \"{}\"\n[preprocess]\nbackend = \"cpu\"\n{extra}", model.display())).unwrap();
        let (code, out, err) = run(&["--config", cfg.to_str().unwrap(), "score", "--json", input.to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        out.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).collect::<Vec<_>>()
    };
    let lines = score("");
    let slices: Vec<_> = lines.iter().filter(|l| l["type"] == "slice").collect();
    assert_eq!(slices.len(), 20);
    // The same slices scored alone, one file at a time: every score in place, none shifted.
    for s in &slices {
        let alone = run(&["--config", dir.path().join("c.toml").to_str().unwrap(), "score", "--json", s["file"].as_str().unwrap()]).1;
        let alone: serde_json::Value = serde_json::from_str(alone.lines().next().unwrap()).unwrap();
        assert!((alone["prob"].as_f64().unwrap() - s["prob"].as_f64().unwrap()).abs() < 1e-5, "{s} vs alone {alone}");
    }
    for s in &slices {
        let lungless = lungless.contains(&(s["slice_index"].as_u64().unwrap() as usize));
        assert_eq!(s.get("skipped").is_some(), lungless, "{s}");
        if lungless {
            assert!(s["skipped"].as_str().unwrap().starts_with("no lung: lung fraction 0.000 < 0.05"), "{s}");
            assert_eq!((s["prob"].as_f64(), s["positive"].as_bool()), (Some(0.0), Some(false)), "{s}");
        } else {
            assert!(s["lung_fraction"].as_f64().unwrap() > 0.1 && s["prob"].as_f64().unwrap() > 0.0, "{s}");
        }
    }
    let series = lines.iter().find(|l| l["type"] == "series").unwrap();
    assert_eq!((series["skipped"].as_u64(), series["min_lung_fraction"].as_f64()), (Some(3), Some(0.05)), "{series}");
    assert_eq!((series["min_positive_slices"].as_u64(), series["min_positive_source"].as_str()), (Some(1), Some("manifest")), "{series}");
    let lines = score("[decision]\nmin_positive_slices = 3\n");
    let series = lines.iter().find(|l| l["type"] == "series").unwrap();
    assert_eq!((series["min_positive_slices"].as_u64(), series["min_positive_source"].as_str()), (Some(3), Some("config")), "{series}");
}

/// The physical series rule (`min_positive_extent_mm`, `min_positive_share`) comes from the
/// manifest unless the config sets it, is shown with its inputs in the series line, and gives
/// the same verdict for a series and for every 4th slice of it; a count rule that the full
/// series meets is missed by the thick cut.
#[test]
fn the_physical_series_rule_decides_the_same_for_thin_and_thick_cuts() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model_with(dir.path(), "min_positive_extent_mm = 12.0\nmin_positive_share = 0.3\n");
    // 24 chest slices, 2 mm apart; a stretch of 10 (20 mm) has denser lungs (-650 HU instead of
    // -850, still lung to the mask), which the tiny model scores differently from the rest.
    let input = dir.path().join("in");
    std::fs::create_dir_all(input.join("full")).unwrap();
    std::fs::create_dir_all(input.join("thick")).unwrap();
    let (hu, _) = chest(128, 128, 0.0);
    for k in 0..24 {
        let dense = (6..16).contains(&k);
        let mut s = CtSlice::pattern(128, 128, k, 2.0 * k as f64);
        s.stored = hu.iter().map(|&v| v.round() as i32 + if v <= -800.0 && v > -950.0 && dense { 200 } else { 0 }).collect();
        s.write(&input.join(format!("full/{k}.dcm")), EXPLICIT_LE);
        if k % 4 == 0 {
            let mut t = s.clone();
            t.series_uid = format!("{}.4", t.series_uid);
            t.write(&input.join(format!("thick/{k}.dcm")), EXPLICIT_LE);
        }
    }
    let score = |extra: &str, folder: &str| {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, format!("[model]\npath = \"{}\"\n[preprocess]\nbackend = \"cpu\"\n{extra}", model.display())).unwrap();
        let (code, out, err) = run(&["--config", cfg.to_str().unwrap(), "score", "--json", input.join(folder).to_str().unwrap()]);
        assert_eq!(code, 0, "{err}");
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let probs: Vec<f64> = lines.iter().filter(|l| l["type"] == "slice").map(|l| l["prob"].as_f64().unwrap()).collect();
        (lines.into_iter().find(|l| l["type"] == "series").unwrap(), probs)
    };
    // A threshold between the dense and the plain slices' scores.
    let (_, probs) = score("", "full");
    let (lo, hi) = (probs[..6].iter().chain(&probs[16..]).copied().fold(0.0, f64::max), probs[6..16].iter().copied().fold(1.0, f64::min));
    assert!(hi > lo, "dense slices should score higher: {probs:?}");
    let t = format!("[decision]\nthreshold = {}\n", (lo + hi) / 2.0);
    let (full, _) = score(&t, "full");
    assert_eq!((full["positives"].as_u64(), full["positive_extent_mm"].as_f64()), (Some(10), Some(20.0)), "{full}");
    assert_eq!(
        (full["min_positive_extent_mm"].as_f64(), full["min_positive_share"].as_f64(), full["physical_source"].as_str()),
        (Some(12.0), Some(0.3), Some("manifest")),
        "{full}"
    );
    assert!(full["positive_share"].as_f64().unwrap() > 0.3, "{full}");
    assert_eq!(full["verdict"], "positive", "{full}");
    let (thick, _) = score(&t, "thick");
    assert_eq!((thick["slices"].as_u64(), thick["positives"].as_u64(), thick["positive_extent_mm"].as_f64()), (Some(6), Some(2), Some(16.0)), "{thick}");
    assert_eq!(thick["verdict"], "positive", "{thick}");
    // A count rule the full series meets (8 slices) misses the thick cut; the config's values win.
    let count = format!("{t}min_positive_slices = 8\nmin_positive_extent_mm = 0\nmin_positive_share = 0\n");
    assert_eq!(score(&count, "full").0["verdict"], "positive");
    let (thick, _) = score(&count, "thick");
    assert_eq!((thick["verdict"].as_str(), thick["physical_source"].as_str()), (Some("negative"), Some("config")), "{thick}");
}
