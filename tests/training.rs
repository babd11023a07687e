//! The training tools that ship with the model (`models/training`): the lesion simulator draws
//! into the lungs serving segments, deterministically, and `ctsentry prep` reads back what it
//! writes. Needs python3 with numpy, scipy and pydicom (`.ci/run` installs them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{bin, tool_missing, CtSlice, EXPLICIT_LE};

fn python_ready() -> bool {
    let ok = Command::new("python3").args(["-c", "import numpy, scipy, pydicom"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        tool_missing("python3 with numpy, scipy and pydicom", "pip install numpy scipy pydicom");
    }
    ok
}

/// Whether python3 has onnx and onnxruntime (the int8 tools' graph editing); a notice (a
/// failure under CI) when not.
fn onnx_ready() -> bool {
    let ok = Command::new("python3").args(["-c", "import numpy, onnx, onnxruntime"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        tool_missing("python3 with numpy, onnx and onnxruntime", "pip install numpy onnx onnxruntime");
    }
    ok
}

/// The data of a `.npy` file (format 1.0), after its header.
fn npy_data(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&b[..6], b"\x93NUMPY", "{}", path.display());
    let len = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + len..].to_vec()
}

fn npy_i16(path: &Path) -> Vec<i16> {
    npy_data(path).chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
}

/// Every file under `dir` with its bytes, by relative path.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.strip_prefix(dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// `python3 models/training/NAME`, to be given its arguments.
fn training_script(name: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("models/training").join(name));
    c
}

/// Runs a Python snippet with `models/training` on its import path; it must succeed.
fn training_python(code: &str) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/training");
    python(&format!("import sys; sys.path.insert(0, {:?})\n{code}", dir.display().to_string()));
}

/// Runs a Python snippet (`python3 -c`), which must succeed.
fn python(code: &str) {
    let o = Command::new("python3").args(["-c", code]).output().unwrap();
    assert!(o.status.success(), "python3 -c {code}: {}", String::from_utf8_lossy(&o.stderr));
}

fn simulate(background: &Path, seed: u32, out: &Path) {
    let o = training_script("lesions.py")
        .args([
            "--background".as_ref(),
            background.as_os_str(),
            "--variants".as_ref(),
            "2".as_ref(),
            "--seed".as_ref(),
            seed.to_string().as_ref(),
            "--out".as_ref(),
            out.as_os_str(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "lesions.py: {}", String::from_utf8_lossy(&o.stderr));
}

fn prep(args: &[&str], out: &Path, root: &Path) {
    let o = bin().arg("prep").args(args).arg("--out").arg(out).arg(root).output().unwrap();
    assert!(o.status.success(), "prep: {}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn lesion_simulator_draws_into_the_lungs_deterministically() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    // Background: four slices of the synthetic chest, 256², 0.7 mm pixels, as a scanner writes them.
    let (hu, _) = common::chest(256, 256, 0.0);
    std::fs::create_dir_all(t.join("bg/CHEST")).unwrap();
    for k in 0..4 {
        let mut s = CtSlice::pattern(256, 256, k, 2.0 * f64::from(k));
        s.stored = hu.iter().map(|&v| v.round() as i32).collect();
        s.spacing = [0.7, 0.7];
        s.write(&t.join(format!("bg/CHEST/IMG{k:04}.dcm")), EXPLICIT_LE);
    }
    prep(&["--hu"], &t.join("prep-bg"), &t.join("bg"));

    simulate(&t.join("prep-bg"), 5, &t.join("a"));
    simulate(&t.join("prep-bg"), 5, &t.join("b"));
    simulate(&t.join("prep-bg"), 6, &t.join("c"));
    // params.json names the output folder; everything else must match byte for byte.
    let outputs = |d: &str| tree(&t.join(d)).into_iter().filter(|(p, _)| p != Path::new("params.json")).collect::<Vec<_>>();
    let (a, b, c) = (outputs("a"), outputs("b"), outputs("c"));
    assert_eq!(a.iter().filter(|(p, _)| p.extension().is_some_and(|e| e == "dcm")).count(), 8, "4 slices × 2 variants");
    assert!(a == b, "the same seed must give the same bytes");
    let dicom = |t: &[(PathBuf, Vec<u8>)]| t.iter().filter(|(p, _)| p.starts_with("dicom")).cloned().collect::<Vec<_>>();
    assert!(dicom(&a) != dicom(&c), "another seed must give other lesions");

    // Each lesioned slice against its background: changed only inside the lung mask serving
    // computes, the lesion mask inside it, the lesion denser than the lung it was drawn into.
    let lung = npy_data(&t.join("prep-bg/hu/000000.mask.npy"));
    let before = npy_i16(&t.join("prep-bg/hu/000000.npy"));
    assert!(lung.iter().filter(|&&m| m != 0).count() > 5000, "the background has lungs");
    prep(&["--hu", "--labels", t.join("a/labels.csv").to_str().unwrap()], &t.join("prep-sim"), &t.join("a/dicom"));
    let index = std::fs::read_to_string(t.join("prep-sim/index.csv")).unwrap();
    let rows: Vec<&str> = index.lines().skip(1).collect();
    assert_eq!(rows.len(), 8, "{index}");
    assert!(rows.iter().all(|r| r.ends_with(",1")), "every simulated slice is labelled positive:\n{index}");
    assert_eq!(std::fs::read_to_string(t.join("prep-sim/skipped.csv")).unwrap().lines().count(), 1, "nothing skipped");
    for (n, row) in rows.iter().enumerate() {
        let file = row.split(',').next().unwrap();
        let after = npy_i16(&t.join(format!("prep-sim/hu/{n:06}.npy")));
        let lesion = npy_data(&t.join("a/masks").join(file.replace(".dcm", ".npy")));
        let (mut rise, mut count, mut changed) = (0f64, 0usize, 0usize);
        for i in 0..after.len() {
            let d = i32::from(after[i]) - i32::from(before[i]);
            if d != 0 {
                changed += 1;
                assert!(lung[i] != 0, "{file}: pixel {i} changed outside the lung mask");
            }
            if lesion[i] != 0 {
                assert!(lung[i] != 0, "{file}: lesion mask outside the lungs at {i}");
                assert!((-1024..=600).contains(&after[i]), "{file}: {} HU in a lesion", after[i]);
                rise += f64::from(d);
                count += 1;
            }
        }
        assert!(count > 50 && changed >= count, "{file}: a lesion of {count} pixels, {changed} changed");
        assert!(rise / count as f64 > 10.0, "{file}: the lesion raises the lung by {:.0} HU on average", rise / count as f64);
    }
}

/// Writes an evaluate.py output folder of `run`: its held-out patients, `eval-NAME/scores.csv`
/// for each (NAME, rows of file, prob, label) and the series probabilities `ctsentry score` gave.
/// Rows of a `scores.csv`: file, probability, label.
type Scores<'a> = &'a [(&'a str, f64, u8)];

fn fold(dir: &Path, run: &str, held: &[&str], evals: &[(&str, Scores)], series: &[(&str, &[f64])]) {
    for (name, rows) in evals {
        std::fs::create_dir_all(dir.join(format!("eval-{name}"))).unwrap();
        let mut csv = String::from("file,slice_index,z,lung_fraction,prob,label,positive\n");
        for (i, (file, prob, label)) in rows.iter().enumerate() {
            csv += &format!("{file},{i},0,0.3,{prob},{label},0\n");
        }
        std::fs::write(dir.join(format!("eval-{name}/scores.csv")), csv).unwrap();
    }
    let series: serde_json::Map<String, serde_json::Value> =
        series.iter().map(|(name, probs)| (name.to_string(), serde_json::json!({"slices": probs.len(), "probs": probs, "held_out": true}))).collect();
    let report = serde_json::json!({"run": run, "held_out": held, "series": series});
    std::fs::write(dir.join("report.json"), report.to_string()).unwrap();
}

/// Runs crossval.py on `folds` (sensitivity target 0.9), the report written to `out`.
fn crossval(folds: &[&Path], out: &Path) -> std::process::Output {
    let mut c = training_script("crossval.py");
    c.args(["--sensitivity", "0.9", "--out"]).arg(out);
    for f in folds {
        c.arg("--fold").arg(f);
    }
    c.output().unwrap()
}

#[test]
fn crossval_pools_each_slice_from_the_fold_that_held_it_out() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (a, b) = (t.join("a"), t.join("b"));
    let full_a: Scores = &[
        ("P001/1.dcm", 0.9, 1),
        ("P001/2.dcm", 0.8, 1),
        ("P001/3.dcm", 0.7, 1),
        ("P001/4.dcm", 0.1, 0),
        ("normal001/1.dcm", 0.2, 0),
        ("normal001/2.dcm", 0.3, 0),
        ("normal001/3.dcm", 0.05, 0),
    ];
    fold(
        &a,
        "/runs/a",
        &["P001", "normal001"],
        &[
            ("full-held_out", full_a),
            // The reference protocol is a subset of full: it must not be counted again.
            ("reference-held_out", &full_a[..3]),
            // Every slice, trained on or not: never pooled (cap001 is fold b's to score).
            ("full-all", &[("cap001/1.dcm", 0.0, 0), ("cap001/9.dcm", 0.99, 0)]),
        ],
        &[("P001", &[0.9, 0.8, 0.7, 0.1]), ("normal001", &[0.2, 0.3, 0.05])],
    );
    fold(
        &b,
        "/runs/b",
        &["cap001", "A0002"],
        &[("full-held_out", &[("cap001/1.dcm", 0.75, 0), ("cap001/2.dcm", 0.72, 0), ("cap001/3.dcm", 0.1, 0)]), ("lung-pet-ct-dx-held_out", &[("A0002-B40f/1.dcm", 0.4, 0)])],
        &[("cap001", &[0.75, 0.72, 0.1]), ("A0002-B40f", &[0.4])],
    );
    let o = crossval(&[&a, &b], &t.join("cv.json"));
    assert!(o.status.success(), "crossval.py: {}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(t.join("cv.json")).unwrap()).unwrap();
    // Three positives: sensitivity ≥ 0.9 needs all three, so the threshold is just below the
    // lowest, 0.7 (scores.csv rounds to 6 decimals; the slice that sets it must stay above it).
    assert_eq!(r["threshold"].as_f64(), Some(0.699999), "{r}");
    let full = &r["pooled"]["full"];
    assert_eq!((full["slices"].as_u64(), full["positives"].as_u64()), (Some(10), Some(3)), "{full}");
    // Of 3 × 7 pairs, (0.7, 0.75) and (0.7, 0.72) are ranked wrong.
    assert!((full["auc"].as_f64().unwrap() - 19.0 / 21.0).abs() < 1e-9, "{full}");
    assert!((full["specificity"].as_f64().unwrap() - 5.0 / 7.0).abs() < 1e-9, "{full}");
    assert_eq!(r["pooled"]["all real CT"]["slices"].as_u64(), Some(11), "full + lung-pet-ct-dx: {r}");
    assert_eq!(r["per_fold"]["full (b)"]["slices"].as_u64(), Some(3), "{r}");
    assert_eq!(r["series"]["P001"]["positives_at_threshold"].as_u64(), Some(3), "{r}");
    assert_eq!(r["series"]["cap001"]["positives_at_threshold"].as_u64(), Some(2), "{r}");
    // COVID-19: 3 positive slices; the most of a non-COVID series: 2. A series alerts at ≥ the
    // rule, so only 3 separates them (a midpoint rounded down, 2, would alert on cap001).
    assert_eq!((r["min_positive_slices"].as_u64(), r["series_margin"].as_i64()), (Some(3), Some(1)), "{r}");

    // A patient held out by two folds would be counted twice; a run is one fold: both refused.
    let c = t.join("c");
    fold(&c, "/runs/c", &["P001"], &[("full-held_out", &[("P001/1.dcm", 0.5, 1)])], &[("P001", &[0.5])]);
    let o = crossval(&[&a, &b, &c], &t.join("cv2.json"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("P001 is held out by both"), "{err}");
    let d = t.join("d");
    fold(&d, "/runs/a", &["A0001"], &[("full-held_out", &[("A0001-L/1.dcm", 0.5, 0)])], &[]);
    let o = crossval(&[&a, &d], &t.join("cv3.json"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("same run (/runs/a)"), "{err}");
    assert!(!t.join("cv2.json").exists() && !t.join("cv3.json").exists());
}

/// Writes `n` slices of one patient under `dir`: file IMG000k.dcm at the z of `z[k]`.
fn release_patient(dir: &Path, series: u32, z: &[f64]) {
    std::fs::create_dir_all(dir).unwrap();
    for (k, &zk) in z.iter().enumerate() {
        let mut s = CtSlice::pattern(32, 32, k as i32, zk);
        s.series_uid = format!("1.2.826.0.1.3680043.8.498.5{series}");
        s.sop_uid = format!("1.2.826.0.1.3680043.8.498.5{series}.{k}");
        s.write(&dir.join(format!("IMG{k:04}.dcm")), EXPLICIT_LE);
    }
}

/// Runs covid_ct_md.py on `release` with `extra` options (`--index`, `--labels`), writing `out`.
fn convert(release: &Path, out: &Path, extra: &[(&str, &Path)]) -> std::process::Output {
    let mut c = training_script("covid_ct_md.py");
    c.arg("--release").arg(release).arg("--out").arg(out);
    for (flag, path) in extra {
        c.arg(flag).arg(path);
    }
    c.output().unwrap()
}

#[test]
fn covid_ct_md_release_labels_follow_slice_location_and_prep_reads_them() {
    if !python_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let rel = t.join("COVID-CT-MD");
    // A stand-in of the release: file names do not give slice order (z 6, 0, 4, 2).
    release_patient(&rel.join("COVID-19 Cases/P001"), 1, &[6.0, 0.0, 4.0, 2.0]);
    release_patient(&rel.join("COVID-19 Cases/P002"), 2, &[0.0, 2.0]);
    release_patient(&rel.join("Cap Cases/cap001"), 3, &[4.0, 2.0, 0.0]);
    release_patient(&rel.join("Cap Cases/cap002"), 5, &[0.0, 2.0]);
    release_patient(&rel.join("Normal Cases/normal001"), 4, &[0.0, 2.0]);
    // cap001's Slice Location runs against its Image Position (z 4, 2, 0; location -4, -2, 0):
    // the labels follow the location.
    let relocate = format!(
        "import pydicom\nfor k, z in enumerate([4, 2, 0]):\n    p = {:?} + f'/IMG{{k:04}}.dcm'\n    ds = pydicom.dcmread(p); ds.SliceLocation = -z; ds.save_as(p)",
        rel.join("Cap Cases/cap001").to_str().unwrap()
    );
    python(&relocate);
    // Not DICOM: skipped with a note (a hidden file is not even read).
    std::fs::write(rel.join("COVID-19 Cases/P001/notes.txt"), "reader's notes").unwrap();
    std::fs::write(rel.join("COVID-19 Cases/P001/.DS_Store"), [0u8; 8]).unwrap();
    // Label indices skip a number and are not in Index.csv's row order, as the release's; P002
    // has no slice labels; cap002 is not listed at all.
    std::fs::write(
        rel.join("Index.csv"),
        "Folder/ID,Diagnosis,Relative Path,Label Index\ncap001,CAP,Cap Cases/,2\nP001,COVID-19,COVID-19 Cases/,0\nP002,COVID-19,COVID-19 Cases/,\n",
    )
    .unwrap();
    let npy = |rows: &str, path: &Path| {
        python(&format!("import numpy as np; np.save({:?}, np.array({rows}, dtype=np.uint8))", path.to_str().unwrap()));
    };
    // Row 0 (index 0, P001): its 2nd and 3rd slices from the feet (IMG0003, IMG0002) are
    // infected; row 1 (index 2, cap001): its lowest by location (IMG0000) is.
    npy("[[0,1,1,0,0,0],[1,0,0,0,0,0]]", &rel.join("Slice-level-labels.npy"));
    let before = tree(&rel);

    let labels = t.join("labels.csv");
    let o = convert(&rel, &labels, &[]);
    assert!(o.status.success(), "covid_ct_md.py: {}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("left out 1 COVID-19 patients without slice labels: P002"), "{stdout}");
    assert!(stdout.contains("P001/notes.txt: skipped, not a DICOM image") && !stdout.contains("DS_Store"), "{stdout}");
    let text = std::fs::read_to_string(&labels).unwrap();
    let row = |file: &str| text.lines().find(|l| l.starts_with(file)).unwrap_or_else(|| panic!("{file} not in\n{text}")).to_string();
    assert_eq!(row("COVID-19 Cases/P001/IMG0001.dcm"), "COVID-19 Cases/P001/IMG0001.dcm,P001,COVID-19,0,4,0.0,0,0");
    assert_eq!(row("COVID-19 Cases/P001/IMG0003.dcm"), "COVID-19 Cases/P001/IMG0003.dcm,P001,COVID-19,1,4,2.0,1,1");
    assert_eq!(row("COVID-19 Cases/P001/IMG0002.dcm"), "COVID-19 Cases/P001/IMG0002.dcm,P001,COVID-19,2,4,4.0,1,1");
    assert_eq!(row("COVID-19 Cases/P001/IMG0000.dcm"), "COVID-19 Cases/P001/IMG0000.dcm,P001,COVID-19,3,4,6.0,0,0");
    // CAP: the expert's infection label is kept, but it is not COVID-19.
    assert_eq!(row("Cap Cases/cap001/IMG0000.dcm"), "Cap Cases/cap001/IMG0000.dcm,cap001,CAP,0,3,-4.0,0,1");
    assert_eq!(row("Cap Cases/cap001/IMG0002.dcm"), "Cap Cases/cap001/IMG0002.dcm,cap001,CAP,2,3,0.0,0,0");
    // Unlisted CAP patients are negatives whose infection is unknown (empty), not 0.
    assert_eq!(row("Cap Cases/cap002/IMG0001.dcm"), "Cap Cases/cap002/IMG0001.dcm,cap002,CAP,1,2,2.0,0,");
    assert_eq!(text.lines().filter(|l| l.contains("/normal001/")).count(), 2);
    assert!(!text.contains("P002"), "{text}");
    assert!(tree(&rel) == before, "the release is only read");

    // `ctsentry prep` reads the release with these labels.
    prep(&["--labels", labels.to_str().unwrap()], &t.join("prep"), &rel);
    let index = std::fs::read_to_string(t.join("prep/index.csv")).unwrap();
    let header: Vec<&str> = index.lines().next().unwrap().split(',').collect();
    let (fi, li) = (header.iter().position(|h| *h == "file").unwrap(), header.iter().position(|h| *h == "label").unwrap());
    let positives: Vec<&str> = index.lines().skip(1).map(|l| l.split(',').collect::<Vec<_>>()).filter(|f| f[li] == "1").map(|f| f[fi]).collect::<Vec<_>>();
    assert_eq!(positives, ["COVID-19 Cases/P001/IMG0003.dcm", "COVID-19 Cases/P001/IMG0002.dcm"], "{index}");

    // A label array that does not match the labelled patients, and an output inside the release,
    // are refused, naming the file.
    npy("[[0,1],[1,0],[0,0]]", &t.join("three.npy"));
    let o = convert(&rel, &t.join("x.csv"), &[("--labels", &t.join("three.npy"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("three.npy: 3 label rows for 2 labelled patients"), "{err}");
    let o = convert(&rel, &rel.join("labels.csv"), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("inside the release"), "{err}");
    // Two patients given one label row.
    std::fs::write(t.join("dup.csv"), "Folder/ID,Diagnosis,Relative Path,Label Index\ncap001,CAP,Cap Cases/,0\nP001,COVID-19,COVID-19 Cases/,0\n").unwrap();
    let o = convert(&rel, &t.join("y.csv"), &[("--index", &t.join("dup.csv"))]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("dup.csv: a Label Index is given to two patients"), "{err}");
    assert!(tree(&rel) == before);
}

/// The pointing game's geometry (`models/training/pointing.py`, torch-free): the heat maps'
/// bilinear upsampling puts a one-hot map's maximum at its cell centre, the peak is searched
/// inside the lung only, a hit is within 15 px per 512 of the lesion, and the reach (what the 49
/// one-hot 7 × 7 maps can point at) misses a small lesion that lies between the cell centres.
#[test]
fn pointing_game_geometry_follows_the_heat_maps() {
    if !python_ready() {
        return;
    }
    training_python(
        r#"
import numpy as np
import pointing as P
hot = lambda i, j: np.eye(1, 49, 7 * i + j).reshape(7, 7)
everywhere = np.ones((512, 512), bool)
# Cell centres at block centres: cell 3 of 7 covers 219.4..292.6 of 512; its centre, 255.5,
# falls between pixels 255 and 256 (a tie: the first wins).
p = P.peak(P.upsample(hot(3, 3), 512, 512), everywhere)
assert p == (255, 255), p
# Cell 1's centre is 1.5 blocks in: 109.2 (corner-aligned sampling would put it at 85).
assert P.peak(P.upsample(hot(1, 1), 512, 512), everywhere) == (109, 109)
assert P.peak(P.upsample(hot(1, 5), 224, 224), np.ones((224, 224), bool)) == (47, 175), "47.5 and 175.5: ties"
up = P.upsample(np.full((7, 7), 0.3), 300, 200)
assert up.shape == (300, 200) and np.allclose(up, 0.3), "the weights of every pixel sum to 1"
# Confined to the lung: a hot corner cell outside it peaks at the lung pixel nearest the corner.
lung = np.zeros((512, 512), bool); lung[100:450, 60:450] = True
assert P.peak(P.upsample(hot(6, 0), 512, 512), lung) == (449, 60)
assert P.peak(P.upsample(hot(0, 6), 512, 512), lung) == (100, 449)
assert P.peak(P.upsample(hot(0, 0), 512, 512), np.zeros((512, 512), bool)) == (0, 0), "no lung: the whole image"
def disc(r, c, radius=3, shape=(512, 512)):
    y, x = np.ogrid[:shape[0], :shape[1]]
    return (y - r) ** 2 + (x - c) ** 2 <= radius ** 2
assert P.hit(p, P.lesion_distance(disc(255 + 17, 255))), "14 px from the lesion: within 15"
assert not P.hit(p, P.lesion_distance(disc(255 + 20, 255))), "17 px away: a miss"
assert not P.hit(p, P.lesion_distance(np.zeros((512, 512), bool))), "no lesion: never a hit"
# The tolerance scales with the width: 15 px per 512 is 6.6 px at 224.
assert P.hit((100, 100), P.lesion_distance(disc(100, 108, 2, (224, 224))))
assert not P.hit((100, 100), P.lesion_distance(disc(100, 109, 2, (224, 224))))
# The reach: a lesion on a cell centre can be pointed at, one midway between four centres
# (about 48 px from each) by no one-hot map.
assert P.reach_hit(everywhere, P.lesion_distance(disc(329, 183)))
assert not P.reach_hit(everywhere, P.lesion_distance(disc(292, 292)))
"#,
    );
}

/// The operating-point rule's parts that need no torch: every (source, label) cell weighs the
/// same; Platt scaling recovers a known logit transform; the ECE is near 0 for calibrated and
/// large for overconfident scores; the threshold keeps the sensitivity averaged over sources
/// (each one vote) at the target, with each source's own threshold as the spread.
#[test]
fn operating_point_helpers_weigh_sources_alike_and_calibrate() {
    if !python_ready() {
        return;
    }
    training_python(
        r#"
import numpy as np
import folds, headfit as H
y = np.array([1] * 90 + [0] * 10 + [0] * 5)
src = np.array(["big"] * 100 + ["small"] * 5)
w = H.weights(y, src)
cells = {(s, l): w[(src == s) & (y == l)].sum() for s, l in [("big", 1), ("big", 0), ("small", 0)]}
assert np.allclose(list(cells.values()), len(y) / 3), cells
assert abs(w.mean() - 1) < 1e-12
rng = np.random.default_rng(1)
z = rng.normal(0, 2, 4000)
truth = H.sig(0.5 * z - 0.3)
lab = (rng.random(4000) < truth).astype(float)
a, b = H.platt(z, lab, np.ones(4000))
assert abs(a - 0.5) < 0.08 and abs(b + 0.3) < 0.12, (a, b)
assert H.ece(truth, lab) < 0.04, H.ece(truth, lab)
assert H.ece(H.sig(3 * z), lab) > 0.15, H.ece(H.sig(3 * z), lab)
t, per = folds.threshold_for_mean_sensitivity({"a": [0.9, 0.8, 0.7, 0.6], "b": [0.5, 0.4]}, 0.75)
assert (t, per) == (0.5, {"a": 0.7, "b": 0.4}), (t, per)
# One vote per source: 1,000 easy positives of one source do not lower the bar for the other.
t, _ = folds.threshold_for_mean_sensitivity({"many": [0.9] * 1000, "few": [0.3, 0.2]}, 0.75)
assert t == 0.3, t
"#,
    );
}

/// The scale equalisation before int8 (`models/training/equalize.py`) finds the convolutions fed
/// by ReLU(BN) and ReLU(a convolution with a bias), leaves the first one (it reads the input)
/// alone, computes the same function afterwards (BN with a negative scale, a bias and statistics
/// included), gives every channel the quantizer sees the same largest value with alpha 1 however
/// unequal they were, and leaves out a ReLU read twice and a grouped convolution.
#[test]
fn equalisation_keeps_the_function_and_evens_the_channels() {
    if !onnx_ready() {
        return;
    }
    training_python(
        r#"
import numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, numpy_helper as nh, TensorProto as T
import equalize as E
rng = np.random.default_rng(3)
w = lambda name, *shape: nh.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
inits = [w("w0", 6, 4, 1, 1), w("b0", 6),
         nh.from_array(np.array([0.02, -0.3, 1, 3, 10, 40], np.float32), "g"),
         nh.from_array(np.array([0.01, 0.2, -0.5, 1, 2, -3], np.float32), "beta"),
         nh.from_array(np.array([0.3, -0.2, 0.1, 0, 0.5, -0.4], np.float32), "mu"),
         nh.from_array(np.array([0.5, 2, 1, 0.7, 1.5, 3], np.float32), "var"),
         w("w1", 5, 6, 3, 3), w("b1", 5), w("w2", 3, 5, 1, 1)]
nodes = [h.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="c0"),
         h.make_node("BatchNormalization", ["c0", "g", "beta", "mu", "var"], ["bn"], name="bn"),
         h.make_node("Relu", ["bn"], ["r1"], name="r1"),
         h.make_node("Conv", ["r1", "w1", "b1"], ["c1"], name="c1", pads=[1, 1, 1, 1]),
         h.make_node("Relu", ["c1"], ["r2"], name="r2"),
         h.make_node("Conv", ["r2", "w2"], ["y"], name="c2")]
g = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", T.FLOAT, [None, 4, 8, 8])],
                 [h.make_tensor_value_info("y", T.FLOAT, [None, 3, 8, 8])], inits)
m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)  # what any onnxruntime reads
onnx.checker.check_model(m)
rows = [rng.normal(0, 1, (1, 4, 8, 8)).astype(np.float32) for _ in range(6)]
assert [(p.name, r.name, c.name) for p, r, c in E.pairs(m)] == [("bn", "r1", "c1"), ("c1", "r2", "c2")]
before = E.channel_max(m, ["r1", "r2"], rows)
assert before["r1"].max() / before["r1"].min() > 50, before["r1"]
q, info = E.equalize(m, rows, 1.0)
assert info["convolutions"] == 2, info
after = E.channel_max(q, ["r1", "r2"], rows)
for r in ("r1", "r2"):
    assert np.allclose(after[r], 1.0, rtol=1e-5), (r, after[r])
run = lambda model, x: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y"], {"x": x})[0]
x = np.concatenate(rows)
assert np.allclose(run(m, x), run(q, x), rtol=1e-4, atol=1e-5)
init = lambda model: {t.name: nh.to_array(t) for t in model.graph.initializer}
assert np.array_equal(init(m)["w0"], init(q)["w0"]) and np.array_equal(init(m)["mu"], init(q)["mu"])
assert not np.array_equal(init(m)["w1"], init(q)["w1"]) and not np.array_equal(init(m)["g"], init(q)["g"])
# alpha 0: the weights' ranges are evened instead (each channel's largest weight becomes 1).
q0, _ = E.equalize(m, rows, 0.0)
assert np.allclose(np.abs(init(q0)["w2"]).max(axis=(0, 2, 3)), 1.0, rtol=1e-5)
assert np.allclose(run(m, x), run(q0, x), rtol=1e-4, atol=1e-5)
# Not safe to rescale, so left out: a ReLU read by a second node, a grouped convolution.
twice = onnx.ModelProto(); twice.CopyFrom(m)
twice.graph.node.append(h.make_node("Relu", ["r1"], ["r1b"], name="other"))
assert [c.name for _, _, c in E.pairs(twice)] == ["c2"]
grouped = onnx.ModelProto(); grouped.CopyFrom(m)
c2 = next(n for n in grouped.graph.node if n.name == "c2")
c2.attribute.append(h.make_attribute("group", 5))
assert [c.name for _, _, c in E.pairs(grouped)] == ["c1"]
"#,
    );
}

/// The quantizer ranking's graph surgery (`sensitivity.py`): it finds the quantizers of
/// activations (not of weights), and taking one out removes it and its readers, every reader's
/// consumer reading the float input instead: the graph then computes what the same graph built
/// without that quantizer computes, and the rest is untouched; a name not in the graph stops it.
/// Rescaling widens only the quantizers of convolution outputs, as documented, never narrows.
#[test]
fn a_quantizer_taken_out_leaves_the_rest_of_the_int8_graph_as_it_was() {
    if !onnx_ready() {
        return;
    }
    training_python(
        r#"
import numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, numpy_helper as nh, TensorProto as T
import sensitivity as S
rng = np.random.default_rng(5)
c = lambda name, a: nh.from_array(np.asarray(a), name)
inits = [c("w", rng.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)), c("w2", rng.normal(0, 0.5, (2, 4, 1, 1)).astype(np.float32)),
         c("s", np.float32(0.02)), c("z", np.int8(0)), c("sw", np.float32(0.01)), c("s2", np.float32(0.05)), c("z2", np.uint8(0))]
def graph(with_q2):
    relu_out = "r" if not with_q2 else "r_dq_a"
    nodes = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q1"),
             h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq1"),
             h.make_node("QuantizeLinear", ["w", "sw", "z"], ["wq"], name="qw"),
             h.make_node("DequantizeLinear", ["wq", "sw", "z"], ["wd"], name="dqw"),
             h.make_node("Conv", ["xd", "wd"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"], name="relu")]
    if with_q2:  # one quantizer, two readers
        nodes += [h.make_node("QuantizeLinear", ["r", "s2", "z2"], ["rq"], name="q2"),
                  h.make_node("DequantizeLinear", ["rq", "s2", "z2"], ["r_dq_a"], name="dq2a"),
                  h.make_node("DequantizeLinear", ["rq", "s2", "z2"], ["r_dq_b"], name="dq2b")]
    nodes += [h.make_node("Conv", [relu_out, "w2"], ["y"], name="conv2"),
              h.make_node("ReduceMean", ["r_dq_b" if with_q2 else "r"], ["m"], name="mean", keepdims=0, axes=[2, 3])]
    g = h.make_graph(nodes, "t", [h.make_tensor_value_info("x", T.FLOAT, [None, 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, [None, 2, 8, 8]), h.make_tensor_value_info("m", T.FLOAT, [None, 4])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
m, want = graph(True), graph(False)
onnx.checker.check_model(m)
assert S.activation_quantizers(m) == ["q1", "q2"], S.activation_quantizers(m)
out = S.bypass(m, ["q2"])
onnx.checker.check_model(out)
names = [n.name for n in out.graph.node]
assert "q2" not in names and "dq2a" not in names and "dq2b" not in names and {"q1", "dq1", "qw", "dqw"} <= set(names), names
assert [n.name for n in m.graph.node if n.name == "q2"] == ["q2"], "the input graph was changed"
run = lambda model, x: ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(["y", "m"], {"x": x})
x = rng.normal(0, 1, (2, 3, 8, 8)).astype(np.float32)
for a, b in zip(run(out, x), run(want, x)):
    assert np.allclose(a, b, rtol=1e-6, atol=1e-6)
assert not np.allclose(run(m, x)[0], run(want, x)[0], rtol=1e-4, atol=1e-4), "the quantizer changed nothing: the test proves nothing"
for wrong in (["q9"], ["conv"], ["qw"]):  # unknown, not a quantizer, a weight's quantizer
    try:
        S.bypass(m, wrong)
        raise AssertionError(f"{wrong} was accepted")
    except SystemExit as e:
        assert wrong[0] in str(e), e
# Rescaling widens only the quantizers of convolution outputs (here the one before "y2"), to the
# geometric mean of their scale and the one covering the largest |value| of the rows, never narrower.
cw = [c("k", rng.normal(0, 1, (2, 3, 1, 1)).astype(np.float32)), c("t", np.float32(0.001)), c("zi", np.int8(0)),
      c("u", np.float32(0.001)), c("zu", np.uint8(0))]
g = h.make_graph([h.make_node("Conv", ["x", "k"], ["cv"], name="cv"),
                  h.make_node("QuantizeLinear", ["cv", "t", "zi"], ["cq"], name="qc"),
                  h.make_node("DequantizeLinear", ["cq", "t", "zi"], ["y2"], name="dqc"),
                  h.make_node("Relu", ["cv"], ["rl"], name="rl"),
                  h.make_node("QuantizeLinear", ["rl", "u", "zu"], ["rq"], name="qr"),
                  h.make_node("DequantizeLinear", ["rq", "u", "zu"], ["y3"], name="dqr"),
                  h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq2"], name="qx"),
                  h.make_node("DequantizeLinear", ["xq2", "s", "z"], ["x2"], name="dqx")],
                 "r", [h.make_tensor_value_info("x", T.FLOAT, [None, 3, 8, 8])],
                 [h.make_tensor_value_info("y2", T.FLOAT, [None, 2, 8, 8]), h.make_tensor_value_info("y3", T.FLOAT, [None, 2, 8, 8]),
                  h.make_tensor_value_info("x2", T.FLOAT, [None, 3, 8, 8])], cw + inits[2:4])
r = h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
rows = [rng.normal(0, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
big = max(float(np.abs(np.einsum("oc,nchw->nohw", nh.to_array(cw[0])[:, :, 0, 0], x)).max()) for x in rows)
wide, changed = S.rescale(r, rows)
scale = lambda model, name: float(next(nh.to_array(t) for t in model.graph.initializer if t.name == name))
assert list(changed) == ["qc"], changed
assert np.isclose(scale(wide, "t"), np.sqrt(0.001 * big / 127), rtol=1e-5), (scale(wide, "t"), big)
assert scale(wide, "s") == scale(r, "s") == np.float32(0.02) and scale(r, "t") == np.float32(0.001)
assert scale(wide, "u") == scale(r, "u"), "a ReLU output's quantizer was rescaled"
narrow, _ = S.rescale(wide, [x * 1e-3 for x in rows])
assert scale(narrow, "t") == scale(wide, "t"), "a scale was narrowed"
"#,
    );
}
