//! Real inference with the tract engine on the tiny test model (models/testdata), checked
//! against the same graph computed by hand; model bundle validation.

mod common;

use std::path::{Path, PathBuf};

use ctsentry::engine::{tract::TractEngine, Engine, EngineError};
use ctsentry::model::{Model, ModelError};
use ctsentry::preprocess::conformance::Rng;

const W1: [[f32; 3]; 4] = [[0.9, 0.5, 0.1], [0.2, 0.8, -0.3], [-0.5, 0.4, 0.7], [0.3, -0.2, 0.6]];
const B1: [f32; 4] = [0.05, -0.1, 0.2, 0.0];
const W2: [f32; 4] = [1.5, -0.7, 0.9, 0.4];
const B2: f32 = -0.25;

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/testdata/tiny-densenet.onnx")
}

/// The tiny graph by hand: (prob, cam[49]) of one CHW slice.
fn by_hand(x: &[f32]) -> (f32, Vec<f32>) {
    let s = 224;
    let mut features = vec![[0f32; 4]; 49];
    for by in 0..7 {
        for bx in 0..7 {
            let mut pooled = [0f32; 3];
            for (c, p) in pooled.iter_mut().enumerate() {
                let mut sum = 0.0;
                for y in 0..32 {
                    for xx in 0..32 {
                        sum += x[(c * s + by * 32 + y) * s + bx * 32 + xx];
                    }
                }
                *p = sum / 1024.0;
            }
            for k in 0..4 {
                let v: f32 = B1[k] + (0..3).map(|c| W1[k][c] * pooled[c]).sum::<f32>();
                features[by * 7 + bx][k] = v.max(0.0);
            }
        }
    }
    let gap: Vec<f32> = (0..4).map(|k| features.iter().map(|f| f[k]).sum::<f32>() / 49.0).collect();
    let logit = B2 + (0..4).map(|k| W2[k] * gap[k]).sum::<f32>();
    let cam = features.iter().map(|f| (0..4).map(|k| W2[k] * f[k]).sum()).collect();
    (1.0 / (1.0 + (-logit).exp()), cam)
}

#[test]
fn tract_matches_the_graph_computed_by_hand() {
    let model = Model::load(&tiny()).unwrap();
    let engine = TractEngine::load(&model).unwrap();
    assert_eq!(engine.name(), "tract");
    let mut rng = Rng::new(3);
    let n = 3;
    let len = 3 * 224 * 224;
    // Different brightness per slice so the probabilities differ.
    let batch: Vec<f32> = (0..n * len).map(|i| (rng.unit() as f32 - 0.3) * (1 + i / len) as f32).collect();
    let out = engine.infer(&batch, n).unwrap();
    assert_eq!((out.prob.len(), out.cam.len()), (n, n * 49));
    for k in 0..n {
        let (p, cam) = by_hand(&batch[k * len..(k + 1) * len]);
        assert!((out.prob[k] - p).abs() < 1e-5, "slice {k}: {} vs {p}", out.prob[k]);
        for (a, b) in out.cam[k * 49..(k + 1) * 49].iter().zip(&cam) {
            assert!((a - b).abs() < 1e-4, "cam {a} vs {b}");
        }
    }
    assert!(out.prob.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3), "{:?}", out.prob);
    assert!(engine.infer(&batch[..10], 1).is_err());
}

/// The OpenVINO library where the appliance finds it, or `None` after reporting it missing
/// (a failure under CI, where .ci/run installs it).
fn openvino_library() -> Option<PathBuf> {
    let lib = ctsentry::engine::openvino::library(None).ok();
    if lib.is_none() {
        common::tool_missing("the OpenVINO library", "pip install openvino");
    }
    lib
}

/// `n` random 224² three-channel slices in [-1, 1), from `seed`.
fn random_batch(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * 3 * 224 * 224).map(|_| rng.unit() as f32 * 2.0 - 1.0).collect()
}

/// Copies the tiny bundle into a temp folder with the manifest edited by `edit`.
fn bundle(edit: impl Fn(String) -> String) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let onnx = dir.path().join("m.onnx");
    std::fs::copy(tiny(), &onnx).unwrap();
    let manifest = std::fs::read_to_string(tiny().with_extension("toml")).unwrap();
    std::fs::write(dir.path().join("m.toml"), edit(manifest)).unwrap();
    (dir, onnx)
}

#[test]
fn mismatches_are_refused_with_what_differs() {
    let (_d, p) = bundle(|m| m.replace("prob = \"prob\"", "prob = \"probability\""));
    let e = TractEngine::load(&Model::load(&p).unwrap()).err().unwrap();
    assert!(matches!(&e, EngineError::Load { reason, .. } if reason.contains("\"probability\" is not among them")), "{e}");

    let (_d, p) = bundle(|m| m.replace("name = \"input\"", "name = \"image\""));
    let e = TractEngine::load(&Model::load(&p).unwrap()).err().unwrap();
    assert!(e.to_string().contains("expects one input \"image\""), "{e}");

    // A smaller input than the graph was made for is refused, naming the shape tried.
    let (_d, p) = bundle(|m| m.replace("size = 224", "size = 96"));
    let e = TractEngine::load(&Model::load(&p).unwrap()).err().unwrap();
    assert!(e.to_string().contains("[1, 3, 96, 96]"), "{e}");

    let (_d, p) = bundle(|m| m.replace("sha256 = \"1", "sha256 = \"0"));
    assert!(matches!(Model::load(&p), Err(ModelError::Hash { .. })));

    let (_d, p) = bundle(|m| m.replace("layout = \"NCHW\"", "layout = \"NHWC\"").replace("threshold = 0.5", "threshold = 1.5"));
    let e = Model::load(&p).err().unwrap().to_string();
    assert!(e.contains("layout") && e.contains("threshold"), "{e}");

    let (_d, p) = bundle(|m| m + "\n[extra]\nx = 1\n");
    assert!(Model::load(&p).err().unwrap().to_string().contains("unknown field"));

    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(Model::load(&dir.path().join("none.onnx")), Err(ModelError::Io { .. })));
}

/// ONNX Runtime gives the same outputs as tract (when this build has it and ORT_DYLIB_PATH
/// points at a library).
#[cfg(feature = "onnxruntime")]
#[test]
fn onnxruntime_matches_tract() {
    let Ok(lib) = ctsentry::engine::onnxruntime::library(None) else {
        common::tool_missing("the ONNX Runtime library (ORT_DYLIB_PATH)", "the PyPI wheel onnxruntime, as .ci/run fetches it");
        return;
    };
    let model = Model::load(&tiny()).unwrap();
    let ort = ctsentry::engine::onnxruntime::OrtEngine::load(&model, &lib, 2).unwrap();
    let tract = TractEngine::load(&model).unwrap();
    let n = 11; // more than one ONNX Runtime batch of 8
    let batch = random_batch(11, n);
    let (a, b) = (ort.infer(&batch, n).unwrap(), tract.infer(&batch, n).unwrap());
    assert_eq!(ort.name(), "onnxruntime");
    assert!(a.prob.iter().zip(&b.prob).all(|(x, y)| (x - y).abs() < 1e-5), "{:?} vs {:?}", a.prob, b.prob);
    assert!(a.cam.iter().zip(&b.cam).all(|(x, y)| (x - y).abs() < 1e-4));
}

/// OpenVINO (loaded from where the appliance finds it: pip's `openvino` package here, which
/// .ci/run installs) gives tract's outputs in f32, and within the bf16 parity bound (0.01 on a
/// probability) in bf16 where the CPU runs it; names that differ from the manifest are refused.
#[test]
fn openvino_matches_tract_in_f32_and_in_bf16_within_parity() {
    use ctsentry::engine::openvino::{cpu_has_bf16, OpenVinoEngine};
    let Some(lib) = openvino_library() else { return };
    let model = Model::load(&tiny()).unwrap();
    let tract = TractEngine::load(&model).unwrap();
    let n = 11; // more than one OpenVINO batch (4 slices)
    let batch = random_batch(5, n);
    let want = tract.infer(&batch, n).unwrap();
    let f32_engine = OpenVinoEngine::load(&model, &lib, "f32", 2, None).unwrap();
    assert_eq!((f32_engine.name(), f32_engine.precision(), f32_engine.fixed_batch()), ("openvino", "f32", Some(4)));
    let got = f32_engine.infer(&batch, n).unwrap();
    assert!(got.prob.iter().zip(&want.prob).all(|(x, y)| (x - y).abs() < 1e-5), "{:?} vs {:?}", got.prob, want.prob);
    assert!(got.cam.iter().zip(&want.cam).all(|(x, y)| (x - y).abs() < 1e-4));
    // The engine is compiled for batches of 4: the last 3 slices above and a lone slice here are
    // padded, and the padding changes no result.
    let one = f32_engine.infer(&batch[..batch.len() / n], 1).unwrap();
    assert_eq!((one.prob.len(), one.cam.len()), (1, want.cam.len() / n));
    assert!((one.prob[0] - want.prob[0]).abs() < 1e-5 && one.cam.iter().zip(&want.cam).all(|(x, y)| (x - y).abs() < 1e-4), "{:?} vs {:?}", one.prob, want.prob);
    if cpu_has_bf16() {
        let bf16 = OpenVinoEngine::load(&model, &lib, "bf16", 2, None).unwrap();
        assert_eq!((bf16.precision(), bf16.fixed_batch()), ("bf16", None));
        let got = bf16.infer(&batch, n).unwrap();
        let worst = got.prob.iter().zip(&want.prob).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= 0.01, "bf16 vs f32: max |prob difference| {worst}");
    } else {
        eprintln!("notice: this CPU runs no bf16; the bf16 half of this test did not run");
    }
    let (_d, p) = bundle(|m| m.replace("cam = \"cam\"", "cam = \"heat\""));
    let e = OpenVinoEngine::load(&Model::load(&p).unwrap(), &lib, "f32", 2, None).err().unwrap();
    assert!(e.to_string().contains("\"heat\" is not among them"), "{e}");
}

/// The compiled-model cache: the first load compiles and writes it, a second load imports it
/// (OpenVINO's LOADED_FROM_CACHE) and gives the same outputs as an uncached engine; a cache
/// folder OpenVINO cannot take (a path that is not UTF-8) falls back to compiling without one;
/// only a process that owns the state folder gets a cache, and the state folder is never made;
/// one folder per graph, marked as loaded at each load (which keeps it from pruning).
#[test]
fn openvino_compiled_model_cache_is_written_reused_marked_and_never_fatal() {
    use ctsentry::engine::openvino::{cache_dir, OpenVinoEngine, CACHE_DIR};
    use std::os::unix::ffi::OsStrExt;
    let Some(lib) = openvino_library() else { return };
    let model = Model::load(&tiny()).unwrap();
    let n = 3;
    let batch = random_batch(9, n);
    let uncached = OpenVinoEngine::load(&model, &lib, "f32", 2, None).unwrap();
    assert!(!uncached.from_cache());
    let want = uncached.infer(&batch, n).unwrap();
    let state = tempfile::tempdir().unwrap();
    let sha = &model.manifest.model.sha256;
    // One folder per graph, marked as loaded by each call (here: one left 40 days ago).
    let dir = state.path().join(CACHE_DIR).join(format!("f32-2t-{}", &sha[..12]));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::open(&dir).unwrap().set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(40 * 86_400)).unwrap();
    assert_eq!(cache_dir(state.path(), "f32", 2, sha).expect("a state folder this user owns gets a cache"), dir);
    assert!(std::fs::metadata(&dir).unwrap().modified().unwrap().elapsed().unwrap() < std::time::Duration::from_secs(60), "the folder was not marked as loaded");
    assert_eq!(ctsentry::engine::openvino::prune_cache(state.path()), 0, "the folder just loaded was pruned");
    let first = OpenVinoEngine::load(&model, &lib, "f32", 2, Some(&dir)).unwrap();
    assert!(!first.from_cache(), "nothing was cached yet");
    let files = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).filter(|e| e.path().is_file()).count();
    assert!(files > 0, "the first load wrote no compiled model into {}", dir.display());
    let second = OpenVinoEngine::load(&model, &lib, "f32", 2, Some(&dir)).unwrap();
    assert!(second.from_cache(), "the second load compiled again instead of importing");
    for e in [&first, &second] {
        let got = e.infer(&batch, n).unwrap();
        assert!(got.prob.iter().zip(&want.prob).all(|(x, y)| (x - y).abs() < 1e-6), "{:?} vs {:?}", got.prob, want.prob);
        assert!(got.cam.iter().zip(&want.cam).all(|(x, y)| (x - y).abs() < 1e-5));
    }
    let odd = state.path().join(std::ffi::OsStr::from_bytes(b"cache-\xff"));
    let e = OpenVinoEngine::load(&model, &lib, "f32", 2, Some(&odd)).unwrap();
    assert!(!e.from_cache());
    assert!(e.infer(&batch, n).unwrap().prob.iter().zip(&want.prob).all(|(x, y)| (x - y).abs() < 1e-6));
    let missing = state.path().join("no-state-yet");
    assert!(cache_dir(&missing, "f32", 2, sha).is_err());
    assert!(!missing.exists(), "cache_dir must not create the state folder");
    if unsafe { libc::geteuid() } == 0 {
        let other = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(other.path(), Some(4242), None).unwrap();
        let why = cache_dir(other.path(), "f32", 2, sha).unwrap_err();
        assert!(why.contains("not a folder owned by this user"), "{why}");
        assert!(!other.path().join(CACHE_DIR).exists(), "root left a cache in another user's state folder");
    }
}

/// Pruning the compiled-model cache (no OpenVINO needed): folders not loaded for over
/// `CACHE_KEEP` go, with what they hold; recent folders, files and links (and what a link points
/// to) stay, and a cache folder that is a link is not followed; a state folder without a cache is no
/// error.
#[test]
fn compiled_model_cache_folders_not_loaded_for_30_days_are_pruned() {
    use ctsentry::engine::openvino::{prune_cache, CACHE_DIR, CACHE_KEEP};
    use std::time::{Duration, SystemTime};
    let state = tempfile::tempdir().unwrap();
    assert_eq!(prune_cache(state.path()), 0);
    let root = state.path().join(CACHE_DIR);
    let aged = |p: &Path, days: u64| std::fs::File::open(p).unwrap().set_modified(SystemTime::now() - Duration::from_secs(days * 86_400)).unwrap();
    let folder = |name: &str, days: u64| {
        let p = root.join(name);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("1234.blob"), b"compiled").unwrap();
        aged(&p, days);
        p
    };
    let (old_release, old_model, recent) = (folder("f32-2t", 31), folder("bf16-2t-0123456789ab", 40), folder("int8-f32-2t-ba9876543210", 29));
    let file = root.join("notes.txt");
    std::fs::write(&file, b"an admin's").unwrap();
    aged(&file, 90);
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("keep.blob"), b"not ours").unwrap();
    aged(elsewhere.path(), 90);
    let link = root.join("linked");
    std::os::unix::fs::symlink(elsewhere.path(), &link).unwrap();
    assert_eq!(CACHE_KEEP, Duration::from_secs(30 * 86_400), "the documented 30 days");
    assert_eq!(prune_cache(state.path()), 2);
    assert!(!old_release.exists() && !old_model.exists(), "folders not loaded for over CACHE_KEEP were kept");
    assert!(recent.join("1234.blob").exists(), "a folder loaded within CACHE_KEEP was removed");
    assert!(file.exists() && link.symlink_metadata().is_ok() && elsewhere.path().join("keep.blob").exists(), "a file, a link or its target was removed");
    assert_eq!(prune_cache(state.path()), 0);
    // A cache folder that is a link is not followed.
    let linked_state = tempfile::tempdir().unwrap();
    let target = tempfile::tempdir().unwrap();
    let far = target.path().join("bf16-2t-0123456789ab");
    std::fs::create_dir_all(&far).unwrap();
    aged(&far, 90);
    std::os::unix::fs::symlink(target.path(), linked_state.path().join(CACHE_DIR)).unwrap();
    assert_eq!(prune_cache(linked_state.path()), 0);
    assert!(far.exists(), "pruning followed a linked cache folder");
    if unsafe { libc::geteuid() } == 0 {
        // Root prunes nothing in another user's state folder.
        folder("f32-2t-0000000000aa", 40);
        std::os::unix::fs::chown(state.path(), Some(4242), None).unwrap();
        assert_eq!(prune_cache(state.path()), 0);
        assert!(root.join("f32-2t-0000000000aa").exists());
    }
}

/// The tiny bundle with its int8 variant (models/testdata/tiny-densenet.int8.onnx, beside it as
/// `m.int8.onnx`) and an `[int8]` table whose parity record is `parity` (TOML lines) and whose
/// extra lines are `extra`; the variant's bytes are replaced by `bytes` when given.
fn int8_bundle(parity: &str, extra: &str, bytes: Option<&[u8]>) -> (tempfile::TempDir, PathBuf) {
    let variant = tiny().with_file_name("tiny-densenet.int8.onnx");
    let sha = ctsentry::model::sha256_hex(&std::fs::read(&variant).unwrap());
    let (dir, onnx) = bundle(|m| {
        format!("{m}\n[int8]\nfile = \"m.int8.onnx\"\nsha256 = \"{sha}\"\nmethod = \"make_tiny_model.py\"\n{extra}\n[int8.parity]\n{parity}\nmeasured_with = \"test\"\n")
    });
    match bytes {
        Some(b) => std::fs::write(dir.path().join("m.int8.onnx"), b).unwrap(),
        None => drop(std::fs::copy(&variant, dir.path().join("m.int8.onnx")).unwrap()),
    }
    (dir, onnx)
}

// Measured without VNNI (`vnni = false`), so that `auto` may take it on any CPU the tests run on.
const WITHIN: &str = "max_abs_prob_diff = 0.004\nauc_diff = 0.0\nseries_verdicts_identical = true\nslices = 100\nseries = 3\nvnni = false";
const OUTSIDE: &str = "max_abs_prob_diff = 0.3\nauc_diff = 0.0\nseries_verdicts_identical = true\nslices = 100\nseries = 3";

/// The int8 variant runs in OpenVINO with its convolution in int8, close to the f32 model (its
/// quantization steps are 1/127 of the weights' and 3/127 of the inputs' range), and is refused
/// when its bytes are not the ones the manifest hashed; a malformed `[int8]` table is refused
/// with what is wrong.
#[test]
fn int8_variant_runs_hash_checked_and_close_to_f32() {
    use ctsentry::engine::openvino::OpenVinoEngine;
    let (_d, p) = bundle(|m| m + "\n[int8]\nfile = \"../m.int8.onnx\"\nsha256 = \"xyz\"\nmethod = \"\"\nthreshold = 0.4\n[int8.parity]\n" + WITHIN + "\nmeasured_with = \"\"\n");
    let e = Model::load(&p).err().unwrap().to_string();
    assert!(e.contains("int8.file = \"../m.int8.onnx\" must be a file name") && e.contains("int8.sha256") && e.contains("int8.threshold needs int8.threshold_method"), "{e}");
    let Some(lib) = openvino_library() else { return };
    let (_d, p) = int8_bundle(WITHIN, "", None);
    let model = Model::load(&p).unwrap();
    let n = 6;
    let batch = random_batch(21, n);
    let want = OpenVinoEngine::load(&model, &lib, "f32", 2, None).unwrap().infer(&batch, n).unwrap();
    let int8 = OpenVinoEngine::load(&model, &lib, "int8", 2, None).unwrap();
    assert_eq!((int8.name(), int8.precision()), ("openvino", "int8"));
    let got = int8.infer(&batch, n).unwrap();
    let worst = got.prob.iter().zip(&want.prob).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst > 0.0, "the int8 variant gave f32's outputs exactly: it did not run quantized");
    assert!(worst < 0.01, "int8 vs f32: max |prob difference| {worst}");
    assert!(got.cam.iter().zip(&want.cam).all(|(x, y)| (x - y).abs() < 0.05));
    let (_d, p) = int8_bundle(WITHIN, "", Some(b"not the variant"));
    let model = Model::load(&p).unwrap();
    let e = OpenVinoEngine::load(&model, &lib, "int8", 2, None).err().unwrap().to_string();
    assert!(e.contains("m.int8.onnx") && e.contains("sha256"), "{e}");
    assert_eq!(OpenVinoEngine::load(&model, &lib, "f32", 2, None).unwrap().precision(), "f32", "a damaged variant does not stop f32");
}

/// How `engine.precision` meets the bundle: `auto` takes the int8 variant only within the parity
/// bound, and then its own threshold (`[int8] threshold`, shown as its source); outside the
/// bound, or configured `f32`, the float model and the `[decision]` threshold; `int8` named on
/// a bundle without a variant is refused with the reason.
#[test]
fn auto_takes_int8_within_parity_with_its_own_threshold() {
    use ctsentry::config::{EngineBackend, Precision, Settings};
    use ctsentry::score::Scorer;
    if openvino_library().is_none() {
        return;
    }
    let own = "threshold = 0.42\nthreshold_method = \"test\"";
    let scorer = |p: &Path, precision: Precision| {
        let mut s = Settings::defaults(p.parent().unwrap());
        (s.model_path, s.engine, s.precision) = (p.to_path_buf(), EngineBackend::OpenVino, precision);
        Scorer::from_settings(&s)
    };
    let (_d, p) = int8_bundle(WITHIN, own, None);
    let sc = scorer(&p, Precision::Auto).unwrap();
    assert_eq!(sc.engine.precision(), "int8");
    assert!(sc.engine.precision_reason().unwrap().contains("within the parity bound (max |Δprob| 0.004"), "{:?}", sc.engine.precision_reason());
    assert_eq!((sc.rule.threshold, sc.rule.threshold_source.as_str()), (0.42, "manifest (int8)"));
    let sc = scorer(&p, Precision::F32).unwrap();
    assert_eq!((sc.engine.precision(), sc.rule.threshold, sc.rule.threshold_source.as_str()), ("f32", 0.5, "manifest"));
    let (_d, p) = int8_bundle(OUTSIDE, own, None);
    let sc = scorer(&p, Precision::Auto).unwrap();
    assert_ne!(sc.engine.precision(), "int8", "auto took a variant outside the parity bound");
    assert!(sc.engine.precision_reason().unwrap().contains("outside the parity bound (max |Δprob| 0.3 > 0.02)"), "{:?}", sc.engine.precision_reason());
    assert_eq!(sc.rule.threshold, 0.5);
    let sc = scorer(&p, Precision::Int8).unwrap();
    assert_eq!((sc.engine.precision(), sc.rule.threshold), ("int8", 0.42));
    let e = scorer(&tiny(), Precision::Int8).err().unwrap().to_string();
    assert!(e.contains("no int8 variant"), "{e}");
    // A variant within the bound that cannot be loaded leaves auto on the float model, saying why.
    let (_d, p) = int8_bundle(WITHIN, own, Some(b"damaged"));
    let sc = scorer(&p, Precision::Auto).unwrap();
    assert_ne!(sc.engine.precision(), "int8");
    assert_eq!(sc.rule.threshold, 0.5);
    assert!(
        sc.engine.precision_reason().unwrap().contains("could not be loaded") && sc.engine.precision_reason().unwrap().contains("sha256"),
        "{:?}",
        sc.engine.precision_reason()
    );
    // The config's threshold wins over the variant's; int8 needs OpenVINO (tract is refused).
    let (_d, p) = int8_bundle(WITHIN, own, None);
    let mut s = Settings::defaults(p.parent().unwrap());
    (s.model_path, s.engine, s.precision, s.threshold) = (p.clone(), EngineBackend::OpenVino, Precision::Int8, Some(0.3));
    let sc = Scorer::from_settings(&s).unwrap();
    assert_eq!((sc.engine.precision(), sc.rule.threshold), ("int8", 0.3));
    (s.engine, s.threshold) = (EngineBackend::Tract, None);
    let e = Scorer::from_settings(&s).err().unwrap().to_string();
    assert!(e.contains("engine.precision = \"int8\"") && e.contains("tract engine runs f32"), "{e}");
}

/// The shipped bundle's int8 variant is the file its manifest hashed, and its recorded parity is
/// outside the bound (as the README and models/README.md say), so `auto` does not take it on any
/// CPU.
#[test]
fn shipped_int8_variant_is_hashed_and_auto_follows_its_parity() {
    use ctsentry::config::Precision;
    use ctsentry::engine::openvino::{resolve_precision, Choice, Cpu};
    let model = Model::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/densenet121-covid.onnx")).unwrap();
    let q = model.manifest.int8.as_ref().expect("the shipped manifest has an [int8] table");
    assert!(!model.int8_bytes().unwrap().is_empty());
    assert!(q.parity.outside_bound().is_some_and(|why| why.contains("max |Δprob| 0.0241 > 0.02")), "{:?}", q.parity.outside_bound());
    for bf16 in [true, false] {
        let Choice { precision: p, why, warn } = resolve_precision(Precision::Auto, Cpu { bf16, vnni: true, bf16_limited: false, vnni_limited: false }, Some(q)).unwrap();
        assert!(p != "int8" && !warn, "{why}");
    }
}

/// `doctor` says what OpenVINO may use on this CPU (bf16, VNNI, from /proc/cpuinfo) and what
/// oneDNN's instruction-set limit takes away, and `auto`'s reason says so too.
#[test]
fn doctor_names_the_cpu_and_the_instruction_set_limit() {
    let (dir, _p) = bundle(|m| m);
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[model]\npath = \"m.onnx\"\n").unwrap();
    let doctor = |limit: Option<&str>| {
        let mut c = common::bin();
        c.args(["--config", cfg.to_str().unwrap(), "doctor"]).env_remove("ONEDNN_MAX_CPU_ISA").env_remove("DNNL_MAX_CPU_ISA");
        if let Some(l) = limit {
            c.env("ONEDNN_MAX_CPU_ISA", l);
        }
        String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = cpuinfo.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
    let has = |names: &[&str]| names.iter().any(|n| flags.contains(n));
    let (bf16, vnni) = (has(&["amx_bf16", "avx512_bf16"]), has(&["avx512_vnni", "avx_vnni", "amx_int8"]));
    let line = |text: &str, head: &str| text.lines().find(|l| l.starts_with(head)).unwrap_or_else(|| panic!("no {head} line:\n{text}")).to_string();
    let free = line(&doctor(None), "cpu ");
    assert!(free.contains(&format!("bf16 {}", if bf16 { "yes" } else { "no" })) && free.contains(&format!("VNNI {}", if vnni { "yes" } else { "no" })), "{free}");
    assert!(!free.contains("ONEDNN_MAX_CPU_ISA"), "{free}");
    let text = doctor(Some("AVX2"));
    let limited = line(&text, "cpu ");
    assert!(limited.contains("bf16 no") && limited.contains("VNNI no"), "{limited}");
    assert_eq!(limited.contains("ONEDNN_MAX_CPU_ISA=AVX2"), bf16 || vnni, "{limited}");
    if openvino_library().is_some() {
        let ov = line(&text, "engine ov");
        let why = if bf16 { "ONEDNN_MAX_CPU_ISA keeps OpenVINO below" } else { "neither AMX nor AVX512-BF16" };
        assert!(ov.contains("precision auto: f32") && ov.contains(why), "{ov}");
    }
}

/// What an admin sees of the variant: `bench --engine openvino` measures every precision this
/// machine runs, the int8 variant's row saying whether it is within the parity bound, and
/// `doctor` names the variant and why `auto` takes it or not.
#[test]
fn bench_and_doctor_show_the_int8_variant_and_its_parity() {
    if openvino_library().is_none() {
        return;
    }
    for (parity, says) in [(WITHIN, "within the parity bound"), (OUTSIDE, "outside the parity bound")] {
        let (dir, _p) = int8_bundle(parity, "", None);
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, "[model]\npath = \"m.onnx\"\n").unwrap();
        let out = common::bin().args(["--config", cfg.to_str().unwrap(), "bench", "--engine", "openvino", "--seconds", "0.2"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let int8 = text.lines().find(|l| l.starts_with("openvino     int8")).unwrap_or_else(|| panic!("no int8 row:\n{text}"));
        assert!(int8.contains("images/s") && int8.contains(says), "{int8}");
        assert!(text.lines().any(|l| l.starts_with("openvino     f32")), "{text}");
        let out = common::bin().args(["--config", cfg.to_str().unwrap(), "doctor"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().find(|l| l.starts_with("model int8")).unwrap_or_else(|| panic!("no model int8 line:\n{text}"));
        assert!(line.contains("m.int8.onnx") && line.contains(says), "{line}");
        let ov = text.lines().find(|l| l.starts_with("engine ov")).unwrap();
        assert!(ov.contains(if parity == WITHIN { "precision auto: int8" } else { "outside the parity bound" }), "{ov}");
    }
}
