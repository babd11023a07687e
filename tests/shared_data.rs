//! Checks on the real data in ../shared/data, when present (each test prints a notice and passes
//! when the folder is absent, so that `cargo test` needs no external data).

mod common;

use std::collections::HashMap;
use std::path::Path;

use ctsentry::ingest::{self, series, IngestOptions};

fn read_one(p: &Path) -> ingest::Slice {
    let mut v = ingest::read_file(p, &IngestOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v.len(), 1, "{}", p.display());
    v.remove(0)
}

#[test]
fn every_dicom_codec_decodes_to_the_reference() {
    let Some(data) = common::shared_data("dicom-codecs") else { return };
    let dir = data.join("dicom-codecs");
    let reference = read_one(&dir.join("REF_CT1_UNC.dcm")).hu();
    for (file, max_diff) in
        [("RLE_CT1_RLE.dcm", 0.0), ("JPLL_CT1_JPLL.dcm", 0.0), ("JLSL_CT1_JLSL.dcm", 0.0), ("J2KR_CT1_J2KR.dcm", 0.0), ("JLSN_CT1_JLSN.dcm", 8.0), ("J2KI_CT1_J2KI.dcm", 2000.0)]
    {
        let hu = read_one(&dir.join(file)).hu();
        assert_eq!(hu.dim(), reference.dim(), "{file}");
        let d = hu.iter().zip(reference.iter()).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("{file}: max |HU - REF| = {d}");
        assert!(d <= max_diff, "{file}: max difference {d} > {max_diff}");
    }
}

#[test]
fn covid_ct_md_series_decode_and_order_like_the_labels() {
    let Some(data) = common::shared_data("covid-ct-md/labels.csv") else { return };
    let root = data.join("covid-ct-md");
    let csv = std::fs::read_to_string(root.join("labels.csv")).unwrap();
    let mut expected: HashMap<String, usize> = HashMap::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        expected.insert(f[0].to_string(), f[3].parse().unwrap());
    }
    let mut total = 0;
    for patient in ["P001", "normal001", "cap001"] {
        let files = ingest::collect_files(&[root.join(patient)]).unwrap();
        let slices: Vec<_> = files.iter().map(|p| read_one(p)).collect();
        total += slices.len();
        let ser = series::assemble(slices);
        assert_eq!(ser.len(), 1, "{patient}: one series");
        let ser = &ser[0];
        assert!(ser.duplicates.is_empty(), "{patient}: {:?}", ser.duplicates);
        for (i, s) in ser.slices.iter().enumerate() {
            let rel = s.source.strip_prefix(&root).unwrap().display().to_string();
            assert_eq!(expected[&rel], i, "{rel}");
        }
        println!("{patient}: {} slices ordered by {:?}, gaps {:?}", ser.slices.len(), ser.order_key, ser.gaps);
    }
    assert_eq!(total, 470);
}

#[test]
fn covid_ct_md_through_dcm2niix_gives_the_same_hu() {
    let Some(data) = common::shared_data("covid-ct-md/normal001") else { return };
    if std::process::Command::new("dcm2niix").arg("-h").output().is_err() {
        eprintln!("notice: dcm2niix is not installed; skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = data.join("covid-ct-md/normal001");
    let st = std::process::Command::new("dcm2niix").args(["-z", "y", "-f", "vol", "-o"]).arg(dir.path()).arg(&src).output().unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let files = ingest::collect_files(&[src]).unwrap();
    let ds = series::assemble(files.iter().map(|p| read_one(p)).collect()).remove(0);
    let ns = series::assemble(ingest::read_file(&dir.path().join("vol.nii.gz"), &IngestOptions::default()).unwrap()).remove(0);
    assert_eq!(ds.slices.len(), ns.slices.len());
    let mut worst = 0f32;
    for (a, b) in ds.slices.iter().zip(&ns.slices) {
        let d = a.hu().iter().zip(b.hu().iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        worst = worst.max(d);
    }
    println!("normal001 via dcm2niix: {} slices, max |HU difference| = {worst}", ds.slices.len());
    assert!(worst <= 1.0);
}

/// Lung fractions on the real series: no lung below the diaphragm or in the neck, plenty in
/// the mid chest.
#[test]
fn covid_ct_md_lung_fractions() {
    use ctsentry::preprocess::{cpu::Cpu, prepare, Params};
    let Some(data) = common::shared_data("covid-ct-md/normal001") else { return };
    let params = Params::default();
    for (patient, abdomen) in [("normal001", 0..15), ("cap001", 0..14)] {
        let files = ingest::collect_files(&[data.join("covid-ct-md").join(patient)]).unwrap();
        let ser = series::assemble(files.iter().map(|p| read_one(p)).collect()).remove(0);
        let n = ser.slices.len();
        let fractions: Vec<f32> = ser.slices.iter().map(|s| prepare(&Cpu, &params, s).unwrap().0.lung_fraction).collect();
        for i in abdomen.clone().chain(n - 4..n) {
            assert!(fractions[i] < 0.01, "{patient} slice {i} (abdomen or neck): lung_fraction {}", fractions[i]);
        }
        for (i, f) in fractions.iter().enumerate() {
            if (0.35..=0.75).contains(&ser.z[i]) {
                assert!(*f > 0.10, "{patient} slice {i} (mid chest): lung_fraction {f}");
            }
        }
        println!("{patient}: lung_fraction < 0.01 on slices {abdomen:?} and {:?}; > 0.10 for z in [0.35, 0.75]", n - 4..n);
    }
}

/// The lung mask in use (span morphology, straight from the decoded pixels) equals the first
/// implementation (distance transforms on a full-size HU copy) on every real CT slice here.
#[test]
fn fast_lung_mask_equals_the_reference_on_every_shared_ct_slice() {
    use ctsentry::preprocess::lung::{segment_slice, segment_with, Morphology};
    let Some(data) = common::shared_data("covid-ct-md/P001") else { return };
    let files = ingest::collect_files(&[data.join("covid-ct-md"), data.join("lung-pet-ct-dx"), data.join("dicom-codecs")]).unwrap();
    let (slices, _) = ingest::read_files(&files, &IngestOptions::default());
    assert!(slices.len() >= 594, "{} slices", slices.len());
    let mut with_lungs = 0;
    for s in &slices {
        let fast = segment_slice(s);
        let reference = segment_with(&s.hu().into_raw_vec_and_offset().0, s.rows, s.cols, Morphology::DistanceTransform);
        assert!(fast == reference, "{}: masks differ ({} vs {})", s.source.display(), fast.fraction, reference.fraction);
        with_lungs += usize::from(fast.fraction > 0.05);
    }
    println!("{} slices, {with_lungs} with lungs: identical masks", slices.len());
    assert!(with_lungs > 300);
}

/// The shipped series rule on real series: P001 (COVID-19, 2 mm) alerts, and so does every
/// cut of it to every 2nd, 3rd and 4th slice (4-8 mm, every offset), while normal001 stays
/// negative at every cut; the count rule that 3.0.0 shipped (68 slices) misses P001 at 8 mm.
/// The slices are scored once by `ctsentry score` (a slice's score does not depend on its
/// neighbours, tests/score.rs); the cuts are ordered and decided by the library, as the
/// appliance does.
#[test]
fn the_shipped_series_rule_holds_when_the_series_is_cut_thicker() {
    use ctsentry::decide::{Rule, SliceEvidence, Verdict};
    let Some(data) = common::shared_data("covid-ct-md/P001") else { return };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = root.join("models/densenet121-covid.onnx");
    // The rule as the appliance makes it from the shipped manifest (no [decision] in the config).
    let rule = ctsentry::score::rule_for(&ctsentry::config::Settings::defaults(root), &ctsentry::model::Model::load(&model).unwrap().manifest, "f32");
    assert_eq!((rule.physical_source.as_str(), rule.threshold_source.as_str()), ("extent: manifest, share: default", "manifest"));
    let count = Rule { min_positive_slices: 68, min_positive_extent_mm: 0.0, min_positive_share: 0.0, ..rule.clone() };
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, format!("[model]\npath = \"{}\"\n", model.display())).unwrap();
    for (patient, expected) in [("P001", Verdict::Positive), ("normal001", Verdict::Negative)] {
        let folder = data.join("covid-ct-md").join(patient);
        let out = common::bin().arg("--config").arg(&cfg).args(["score", "--json"]).arg(&folder).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let by_file: HashMap<String, (f64, f64, bool)> = lines
            .iter()
            .filter(|l| l["type"] == "slice")
            .map(|l| (l["file"].as_str().unwrap().to_string(), (l["prob"].as_f64().unwrap(), l["lung_fraction"].as_f64().unwrap(), l.get("skipped").is_none())))
            .collect();
        let shipped = lines.iter().find(|l| l["type"] == "series").unwrap();
        let files = ingest::collect_files(&[folder]).unwrap();
        // In slice order (file names do not give it), so that a cut is every k-th slice along the patient.
        let slices = series::order(patient.into(), files.iter().map(|p| read_one(p)).collect()).slices;
        let n = slices.len();
        for k in 1..=4 {
            for offset in 0..k {
                let ser = series::order(patient.into(), slices.iter().skip(offset).step_by(k).cloned().collect());
                let ev: Vec<SliceEvidence> = ser
                    .slices
                    .iter()
                    .zip(ser.slab_mm())
                    .map(|(s, slab_mm)| {
                        let (prob, lung_fraction, scored) = by_file[&s.source.display().to_string()];
                        SliceEvidence { prob, lung_fraction, slab_mm, scored }
                    })
                    .collect();
                let got = rule.series(&ev);
                println!(
                    "{patient} every {k} (offset {offset}): {} slices, {} positive, {:.0} mm, share {:.2}: {:?}",
                    ev.len(),
                    got.positives,
                    got.positive_extent_mm.unwrap(),
                    got.positive_share,
                    got.verdict
                );
                assert_eq!(got.verdict, expected, "{patient}, every {k}th slice from {offset}: {got:?}");
                if k == 1 {
                    assert_eq!(
                        (shipped["verdict"].as_str(), shipped["positives"].as_u64()),
                        (Some(if expected == Verdict::Positive { "positive" } else { "negative" }), Some(got.positives as u64)),
                        "{shipped}"
                    );
                    assert_eq!(got.slices, n);
                }
                if patient == "P001" && k == 4 {
                    assert_eq!(count.series(&ev).verdict, Verdict::Negative, "68 slices cannot be reached by {} slices", ev.len());
                }
            }
        }
    }
}

/// `commission --parity` on the shared COVID-CT-MD series with the bundle's int8 variant named, as a
/// site checks a precision `auto` did not take before it names it: every series is scored at
/// f32 too, and the run reports int8's parity against it as the manifest's record does (slices
/// both scored, series, the largest difference, decisions, verdicts, AUC change, within or not),
/// in the JSON, the text and the report. A box running f32 has nothing to compare and says so.
#[test]
fn commissioning_with_parity_measures_the_precision_in_use_against_f32() {
    let Some(data) = common::shared_data("covid-ct-md/labels.csv") else { return };
    if ctsentry::engine::openvino::library(None).is_err() {
        return common::tool_missing("the OpenVINO library", "pip install openvino");
    }
    let root = data.join("covid-ct-md");
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/densenet121-covid.onnx");
    let run = |precision: &str, json: bool, parity: bool| {
        let cfg = dir.path().join(format!("{precision}.toml"));
        let state = dir.path().join("state");
        std::fs::write(&cfg, format!("[model]\npath = \"{}\"\n[engine]\nprecision = \"{precision}\"\n[paths]\nstate = \"{}\"\n", shipped.display(), state.display())).unwrap();
        let out = dir.path().join(format!("{precision}-{parity}"));
        let mut c = common::bin();
        c.arg("--config").arg(&cfg).args(["commission", "--labels"]).arg(root.join("labels.csv")).arg("--out").arg(&out).arg(&root);
        if json {
            c.arg("--json");
        }
        if parity {
            c.arg("--parity");
        }
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
        (String::from_utf8_lossy(&o.stdout).into_owned(), std::fs::read_to_string(out.join("report.html")).unwrap())
    };
    let (out, report) = run("int8", true, true);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let p = &v["parity"];
    assert_eq!(v["precision"], "int8");
    let slices = p["slices"].as_u64().unwrap();
    assert!((300..470).contains(&slices), "slices both sent to the engine, of 470 labelled (lung-less ones are not): {slices}");
    assert_eq!(p["series"].as_u64(), Some(3));
    let max = p["max_abs_prob_diff"].as_f64().unwrap();
    assert!(max > 0.0 && max < 0.05, "int8 differs from f32, by little: {max}");
    assert_eq!(max, (max * 1e4).round() / 1e4, "rounded to 4 decimals (up: the unit tests): {max}");
    let auc_diff = p["auc_diff"].as_f64().unwrap();
    assert!((0.0..0.005).contains(&auc_diff), "{auc_diff}");
    assert!(p["decisions_flipped"].as_u64().unwrap() < 30, "{p}");
    assert_eq!(p["series_verdicts_identical"], true);
    assert_eq!((v["parity_verdicts_differ"].as_array().map(Vec::len), v["parity_failed"].as_array().map(Vec::len)), (Some(0), Some(0)));
    let (plain, _) = run("int8", true, false);
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert!(plain["parity"].is_null() && plain["parity_note"].is_null(), "{}", plain["parity_note"]);
    for key in ["series", "rows", "slice_auc", "sensitivity", "specificity", "within_claims", "operating_points", "failed_series"] {
        assert!(!v[key].is_null(), "{key}");
        assert_eq!(v[key], plain[key], "{key}: the run's own results as without --parity");
    }
    assert!(p["measured_with"].as_str().unwrap().contains("openvino int8 against openvino f32 on 3 series"), "{p}");
    assert!(report.contains("Precision parity: int8 against f32 on these studies") && report.contains(&format!("max |Δprob| {max}")), "report.html");
    let (text, report) = run("f32", false, true);
    assert!(text.contains("precision parity     not measured: the engine runs openvino f32"), "{text}");
    assert!(report.contains("<h2>Precision parity</h2><p>Not measured: the engine runs openvino f32"), "report.html");
}

/// `commission` on the shared COVID-CT-MD series, as a site would run it: P001 alerts (series
/// sensitivity 1 of 1), normal001 stays quiet and cap001 (community-acquired pneumonia, which the
/// model flags) alerts (specificity 1 of 2), each with its Wilson interval; every claim of the
/// shipped manifest is within (exit 0); the report, the per-series CSV and the drift reference are
/// written. The same studies against a manifest claiming 99 of 100 quiet negatives are outside
/// (exit 1), and a threshold chosen by the site shows its provenance.
#[test]
fn commissioning_on_covid_ct_md_reports_series_level_intervals_against_the_claims() {
    let Some(data) = common::shared_data("covid-ct-md/labels.csv") else { return };
    let root = data.join("covid-ct-md");
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/densenet121-covid.onnx");
    let run = |model: &Path, extra: &str, out: &Path| {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, format!("[model]\npath = \"{}\"\n{extra}", model.display())).unwrap();
        let o = common::bin().arg("--config").arg(&cfg).args(["commission", "--json", "--labels"]).arg(root.join("labels.csv")).arg("--out").arg(out).arg(&root).output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)));
        (o.status.code(), v)
    };
    let out = dir.path().join("site");
    let (code, v) = run(&shipped, "", &out);
    println!("{}", serde_json::to_string_pretty(&v["claims"]).unwrap());
    assert_eq!(code, Some(0), "{v}");
    assert_eq!((v["series"].as_u64(), v["positive_series"].as_u64(), v["negative_series"].as_u64()), (Some(3), Some(1), Some(2)));
    assert_eq!((v["sensitivity"]["value"].as_f64(), v["specificity"]["value"].as_f64()), (Some(1.0), Some(0.5)), "{v}");
    assert!((v["sensitivity"]["low"].as_f64().unwrap() - 0.2065).abs() < 1e-3, "Wilson 1 of 1: {v}");
    assert_eq!(v["false_alerts_per_100"]["value"].as_f64(), Some(50.0));
    let auc = v["slice_auc"].as_f64().unwrap();
    assert!((0.80..0.90).contains(&auc), "slice AUC over all 470 labelled slices: {auc}");
    assert_eq!((v["within_claims"].as_bool(), v["few_series"].as_bool()), (Some(true), Some(true)), "3 series are too few to tell");
    let names: Vec<&str> = v["claims"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["series_sensitivity", "series_specificity", "false_alerts_per_100", "slice_auc"]);
    assert_eq!(v["series_in_training"].as_u64(), Some(1), "cap001 is in the manifest's training series");
    let verdicts: Vec<(bool, &str)> = v["rows"].as_array().unwrap().iter().map(|r| (r["label"].as_bool().unwrap(), r["verdict"].as_str().unwrap())).collect();
    assert_eq!(verdicts.iter().filter(|(l, verdict)| !l && *verdict == "positive").count(), 1, "{verdicts:?}");
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("WITHIN the manifest&#39;s claims") && report.contains("<svg class=\"roc\"") && report.contains("(in force)"), "report.html");
    assert_eq!(std::fs::read_to_string(out.join("series.csv")).unwrap().lines().count(), 4);
    let reference = std::fs::read_to_string(out.join("reference.toml")).unwrap();
    assert!(reference.contains("series = 3") && reference.contains("alert_rate = 0.66"), "{reference}");

    let strict = dir.path().join("strict.onnx");
    std::fs::copy(&shipped, &strict).unwrap();
    let manifest = std::fs::read_to_string(shipped.with_extension("toml"))
        .unwrap()
        .replace("series_specificity = { quiet = 6, series = 8 }", "series_specificity = { quiet = 99, series = 100 }");
    std::fs::write(strict.with_extension("toml"), manifest).unwrap();
    let (code, v) = run(
        &strict,
        "[decision]\nthreshold = 0.2\nthreshold_provenance = \"chosen by the site's physicist on 2026-12-06 from commission run 20261206T000000Z\"\n",
        &dir.path().join("strict"),
    );
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["within_claims"], false);
    let outside: Vec<&str> = v["claims"].as_array().unwrap().iter().filter(|c| c["within"] == false).map(|c| c["name"].as_str().unwrap()).collect();
    assert!(outside.contains(&"series_specificity") && outside.contains(&"false_alerts_per_100"), "{outside:?}");
    assert_eq!(v["threshold_source"], "config: chosen by the site's physicist on 2026-12-06 from commission run 20261206T000000Z");
}
