//! The OpenVINO engine: Intel's runtime for edge inference on the CPU, bf16 where the CPU has
//! AMX or AVX512-BF16 (several times the f32 throughput of the same cores), f32 elsewhere.
//!
//! The library is loaded at run time (crate `openvino`, feature `runtime-linking`), so the default
//! build needs nothing of OpenVINO and runs where it is absent. Where it comes from, in order: the
//! config's `engine.openvino_library`; `/usr/lib/ctsentry/openvino` (the Debian package carries
//! it there); the `openvino` package of the machine's `python3` (`pip install openvino`: its
//! `openvino/libs/libopenvino_c.so.*`). The ONNX bundle is read from the verified bytes in memory.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use openvino::{CompiledModel, Core, DeviceType, ElementType, InferRequest, PartialShape, PropertyKey, RwPropertyKey, Shape, Tensor};

use super::{check_batch, Engine, EngineError, Output, CAM_SIDE};
use crate::config::Precision;
use crate::model::{Int8Info, Model};

/// Slices per OpenVINO call. On 2 cores batches of 2, 4 and 8 run at the same speed (50–55
/// images/s in bf16), but the activations of a batch of 8 take about 100 MiB more than those of
/// 4 (DenseNet's concatenated feature maps), which the daemon's memory bound needs.
///
/// In f32 the model is compiled for exactly this batch (a static shape; a shorter call is padded
/// with zeros, whose results are dropped): with the graph's dynamic batch, OpenVINO's CPU plugin
/// plans f32 memory per shape at run time, and the daemon's peak RSS on a 148-slice series was
/// 423 MiB (432 limited to AVX2), above the 400 MB bound, against 298 (both) with the static
/// shape, at the same latency. (So `bench --batch` 1–3 in f32 pays for 4 slices per call.)
/// bf16 and int8 keep the dynamic batch: there the static shape made the daemon slower (bf16
/// +0.5 s, int8 +1.4 s after the last file) and, for int8, larger (404 MiB against 266), and
/// bf16's 341 MiB is within the bound.
const BATCH: usize = 4;

/// Where the Debian package installs the OpenVINO libraries.
pub const PACKAGED_DIR: &str = "/usr/lib/ctsentry/openvino";

/// Whether this CPU runs bfloat16 matrix math natively (AMX or AVX512-BF16), from
/// `/proc/cpuinfo`.
pub fn cpu_has_bf16() -> bool {
    Cpu::this().bf16
}

/// The environment variables with which oneDNN (the kernels of OpenVINO's CPU plugin) is told to
/// use no instruction set above a given one: an admin's way to keep a box off AVX512, and the way
/// to measure here what an AVX2-only CPU runs.
const MAX_ISA_VARS: [&str; 2] = ["ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"];

/// What this CPU offers the OpenVINO engine, from the flags of `/proc/cpuinfo`, within the
/// limit of `ONEDNN_MAX_CPU_ISA` (or `DNNL_MAX_CPU_ISA`) where set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    /// bfloat16 matrix math (AMX or AVX512-BF16).
    pub bf16: bool,
    /// VNNI int8 dot products (AVX512-VNNI, AVX-VNNI or AMX-INT8).
    pub vnni: bool,
    /// Whether an instruction-set limit in the environment took this CPU's bf16 away.
    pub bf16_limited: bool,
    /// Whether an instruction-set limit in the environment took this CPU's VNNI away.
    pub vnni_limited: bool,
}

impl Cpu {
    /// This machine's CPU, as OpenVINO may use it: its flags, less what an instruction-set
    /// limit in the environment ([`isa_limit`]) rules out.
    pub fn this() -> Cpu {
        let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = text.lines().find(|l| l.starts_with("flags")).map(|l| l.split_whitespace().collect()).unwrap_or_default();
        Cpu::from_flags(&flags, isa_limit().as_ref().map(|(_, v)| v.as_str()))
    }

    /// In words, for `doctor`: whether OpenVINO may use bf16 and VNNI here, and what `limit`
    /// (the variable and its value, as [`isa_limit`] gives them) took away.
    pub fn describe(self, limit: Option<(&str, &str)>) -> String {
        let said = |on: bool, limited: bool| match (on, limited, limit) {
            (true, _, _) => "yes".to_string(),
            (false, true, Some((var, value))) => format!("no (the CPU has it; {var}={value} keeps OpenVINO below it)"),
            (false, _, _) => "no".to_string(),
        };
        format!("bf16 {}, VNNI {}", said(self.bf16, self.bf16_limited), said(self.vnni, self.vnni_limited))
    }

    /// A CPU with these `/proc/cpuinfo` flags, under oneDNN's instruction-set limit `max_isa`
    /// (its names, case-insensitive: `AVX2`, `AVX2_VNNI`, `AVX512_CORE`, `AVX512_CORE_VNNI`,
    /// `AVX512_CORE_BF16`, `AVX512_CORE_AMX`, `AVX10_1_512`, ...). A name oneDNN does not know
    /// sets no limit, as in oneDNN.
    pub fn from_flags(flags: &[&str], max_isa: Option<&str>) -> Cpu {
        let usable = |names: &[&str]| {
            let have = names.iter().any(|n| flags.contains(n));
            let allowed = names.iter().any(|n| flags.contains(n) && max_isa.is_none_or(|l| isa_allows(l, n)));
            (allowed, have && !allowed)
        };
        let (bf16, bf16_limited) = usable(&["amx_bf16", "avx512_bf16"]);
        let (vnni, vnni_limited) = usable(&["avx512_vnni", "avx_vnni", "amx_int8"]);
        Cpu { bf16, vnni, bf16_limited, vnni_limited }
    }

    /// The float precision `auto` runs here (and that int8 runs its float operations in), with
    /// the reason.
    pub fn float(self) -> (&'static str, &'static str) {
        if self.bf16 {
            ("bf16", "bf16: this CPU has AMX or AVX512-BF16")
        } else if self.bf16_limited {
            ("f32", "f32: ONEDNN_MAX_CPU_ISA keeps OpenVINO below this CPU's AMX or AVX512-BF16")
        } else {
            ("f32", "f32: this CPU has neither AMX nor AVX512-BF16")
        }
    }
}

/// The instruction-set limit set in the environment, as (variable, value): `ONEDNN_MAX_CPU_ISA`,
/// else `DNNL_MAX_CPU_ISA`, the first one not empty (oneDNN skips an empty value too).
pub fn isa_limit() -> Option<(&'static str, String)> {
    MAX_ISA_VARS.iter().find_map(|v| std::env::var(v).ok().filter(|x| !x.trim().is_empty()).map(|x| (*v, x)))
}

/// Whether oneDNN's instruction-set limit `limit` leaves OpenVINO the kernels of the CPU flag
/// `flag` (`avx512_vnni`, `avx_vnni`, `amx_int8`, `avx512_bf16`, `amx_bf16`). oneDNN's limits
/// are sets, not a line: `AVX2_VNNI` holds `avx_vnni` but not `avx512_vnni`, `AVX512_CORE_VNNI`
/// the reverse; the AVX10 / FP16 sets hold both; AMX only the `*AMX*` sets. A name oneDNN does
/// not know sets no limit.
fn isa_allows(limit: &str, flag: &str) -> bool {
    const KNOWN: [&str; 16] = [
        "SSE41",
        "AVX",
        "AVX2",
        "AVX2_VNNI",
        "AVX2_VNNI_2",
        "AVX512_CORE",
        "AVX512_CORE_VNNI",
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX512_CORE_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512",
        "AVX10_1_512_AMX",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
    ];
    let l = limit.trim().to_ascii_uppercase();
    if !KNOWN.contains(&l.as_str()) {
        return true; // DEFAULT, ALL, or a name oneDNN ignores
    }
    let avx10 = l.starts_with("AVX10") || l.starts_with("AVX512_CORE_FP16") || l.starts_with("AVX512_CORE_AMX");
    let amx = l.contains("AMX");
    match flag {
        "avx_vnni" => avx10 || l.starts_with("AVX2_VNNI"),
        "avx512_vnni" => avx10 || l == "AVX512_CORE_VNNI" || l == "AVX512_CORE_BF16",
        "avx512_bf16" => avx10 || l == "AVX512_CORE_BF16",
        "amx_int8" | "amx_bf16" => amx,
        _ => true,
    }
}

/// The precision chosen for the engine: what it runs, why, and whether that deserves a warning
/// (int8 named outside the parity bound, or on a CPU its parity was not measured for).
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// `f32`, `bf16` or `int8`.
    pub precision: &'static str,
    /// Why, in words.
    pub why: String,
    /// Whether the log and `doctor` should warn.
    pub warn: bool,
}

/// The precision the engine runs for `wanted` on this CPU with this bundle's int8 variant (if
/// any), and why, or why it cannot. `auto` takes the fastest within parity: int8 when the
/// variant's measured parity is within the bound ([`crate::model::Int8Parity::outside_bound`]), else bf16 where
/// the CPU runs it, else f32. A named `int8` runs outside the bound too, with a warning. A
/// record measured with VNNI does not count on a CPU without it.
pub fn resolve_precision(wanted: Precision, cpu: Cpu, int8: Option<&Int8Info>) -> Result<Choice, String> {
    let choice = |precision, why: String, warn| Ok(Choice { precision, why, warn });
    let (float, float_why) = cpu.float();
    let unmeasured = |q: &Int8Info| q.parity.vnni && !cpu.vnni;
    match wanted {
        Precision::Auto => match int8 {
            Some(q) if q.parity.outside_bound().is_some() => choice(float, format!("{float_why}; the bundle's int8 variant is {}", q.parity.status()), false),
            Some(q) if unmeasured(q) => choice(
                float,
                format!(
                    "{float_why}; the bundle's int8 variant is within the parity bound as measured with VNNI, which this CPU lacks (no avx512_vnni, avx_vnni or amx_int8{})",
                    if cpu.vnni_limited { ", or ONEDNN_MAX_CPU_ISA keeps OpenVINO below them" } else { "" }
                ),
                false,
            ),
            Some(q) => choice("int8", format!("int8: the bundle's int8 variant is {}", q.parity.status()), false),
            None => choice(float, format!("{float_why}; the bundle has no int8 variant"), false),
        },
        Precision::F32 => choice("f32", "f32: configured".into(), false),
        Precision::Bf16 if cpu.bf16 => choice("bf16", "bf16: configured".into(), false),
        Precision::Bf16 if cpu.bf16_limited => Err("engine.precision = \"bf16\": ONEDNN_MAX_CPU_ISA keeps OpenVINO below this CPU's AMX or AVX512-BF16".into()),
        Precision::Bf16 => Err("engine.precision = \"bf16\": this CPU has neither AMX nor AVX512-BF16 (/proc/cpuinfo flags amx_bf16, avx512_bf16)".into()),
        Precision::Int8 => match int8 {
            Some(q) if q.parity.outside_bound().is_some() => choice(
                "int8",
                format!(
                    "int8: configured, OUTSIDE the parity bound ({}): its decisions can differ from the validated f32 model's; commission it on this site's studies (ctsentry commission --parity)",
                    q.parity.outside_bound().unwrap_or_default()
                ),
                true,
            ),
            Some(q) if unmeasured(q) => {
                choice("int8", "int8: configured; its parity was measured with VNNI, which this CPU lacks: commission it on this site's studies (ctsentry commission --parity)".into(), true)
            }
            Some(q) => choice("int8", format!("int8: configured; {}", q.parity.status()), false),
            None => Err("engine.precision = \"int8\": the model bundle has no int8 variant (no [int8] table in its manifest; models/README.md says how one is made)".into()),
        },
        Precision::F16 => Err("engine.precision = \"f16\": the OpenVINO CPU engine runs int8, bf16 or f32 (f16 is for a TensorRT plan)".into()),
    }
}

/// `libopenvino_c.so*` in `dir`, if there is one.
fn c_library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libopenvino_c.so")))
        .collect();
    found.sort();
    found.into_iter().next()
}

/// The `openvino` package folder of `python3` (without importing it), if installed.
fn python_package_dir() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import importlib.util as u; s = u.find_spec('openvino'); print(s.submodule_search_locations[0] if s else '')"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !dir.is_empty()).then(|| PathBuf::from(dir))
}

/// The OpenVINO C library the engine would load, or why there is none. Available in every
/// build, for `doctor`.
pub fn library(configured: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = configured {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(format!("engine.openvino_library {} does not exist", p.display())) };
    }
    if let Some(p) = c_library_in(Path::new(PACKAGED_DIR)) {
        return Ok(p);
    }
    if let Some(p) = python_package_dir().and_then(|d| c_library_in(&d.join("libs"))) {
        return Ok(p);
    }
    Err(format!("no OpenVINO library: not in {PACKAGED_DIR} (the Debian package), and python3 has no `openvino` package (pip install openvino); or set engine.openvino_library"))
}

/// The compiled-model cache folder for `precision` on `threads` threads of the graph whose
/// sha256 is `sha256` under `state`, created when missing, or why there is none. Only a process
/// that owns `state` gets it (the daemon's user on a box, the developer in a checkout): a command
/// run by root or another user must not leave files there that the daemon cannot replace, nor
/// load blobs another user wrote. `state` itself is never created here.
///
/// Each call marks the folder as loaded now, which keeps it from [`prune_cache`].
pub fn cache_dir(state: &Path, precision: &str, threads: usize, sha256: &str) -> Result<PathBuf, String> {
    owned(state)?;
    let dir = state.join(CACHE_DIR).join(format!("{precision}-{}t-{}", threads.max(1), sha256.get(..12).unwrap_or(sha256)));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // A folder's time moves only when an entry is written: mark this one as loaded.
    if let Err(e) = std::fs::File::open(&dir).and_then(|f| f.set_modified(std::time::SystemTime::now())) {
        log::warn!("OpenVINO compiled-model cache {}: cannot mark it as loaded ({e}); the daemon may remove it after {} days", dir.display(), CACHE_KEEP.as_secs() / 86_400);
    }
    Ok(dir)
}

/// Whether `state` is a folder this process's user owns (or why not): only then does it keep a
/// compiled-model cache there.
fn owned(state: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(state).map_err(|e| format!("{}: {e}", state.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(format!("{} is not a folder owned by this user (uid {me})", state.display()));
    }
    Ok(())
}

/// How long [`prune_cache`] keeps a compiled-model cache folder that no process has loaded.
pub const CACHE_KEEP: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Removes the folders of `state`'s compiled-model cache that no process has loaded for
/// [`CACHE_KEEP`] (a replaced model's or variant's, another precision's or thread count's, an
/// older release's layout), logging each; returns how many. The daemon calls it once its own
/// engine is loaded (so its own folder is marked), at each start: only the one process that holds
/// the state folder's lock prunes, and only in a state folder its user owns (as [`cache_dir`]).
/// Files and links in the cache folder are left alone.
pub fn prune_cache(state: &Path) -> usize {
    if owned(state).is_err() {
        return 0;
    }
    // The cache folder itself, not followed: a link planted there must not point pruning elsewhere.
    let root = state.join(CACHE_DIR);
    if !std::fs::symlink_metadata(&root).is_ok_and(|m| m.is_dir()) {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(&root) else { return 0 };
    let days = CACHE_KEEP.as_secs() / 86_400;
    let mut removed = 0;
    for e in entries.flatten() {
        // The entry's own type and time: a link is not followed.
        let Ok(meta) = e.metadata() else { continue };
        let unused = meta.modified().is_ok_and(|t| t.elapsed().is_ok_and(|age| age > CACHE_KEEP));
        if !meta.is_dir() || !unused {
            continue;
        }
        match std::fs::remove_dir_all(e.path()) {
            Ok(()) => {
                removed += 1;
                log::info!("OpenVINO compiled-model cache: removed {}, not loaded for more than {days} days", e.path().display());
            }
            // Removed meanwhile by someone else: what was asked for.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => log::warn!("OpenVINO compiled-model cache: cannot remove {}, not loaded for more than {days} days: {err}", e.path().display()),
        }
    }
    removed
}

/// The folder under `paths.state` that holds OpenVINO's compiled models, one sub-folder per
/// precision, thread count and graph (OpenVINO's own key covers the graph, the device and its
/// version).
pub const CACHE_DIR: &str = "openvino-cache";

/// Fields drop in declaration order: the request, then the compiled model, then the core that
/// owns the plugins they run on.
struct Session {
    request: InferRequest,
    _compiled: CompiledModel,
    _core: Core,
}

/// The OpenVINO engine (CPU device).
pub struct OpenVinoEngine {
    session: Mutex<Session>,
    precision: &'static str,
    float: &'static str,
    reason: Option<String>,
    from_cache: bool,
    /// The batch the model is compiled for (f32), or `None`: any batch up to [`BATCH`].
    fixed_batch: Option<usize>,
    size: usize,
    input: String,
    prob: String,
    cam: String,
}

impl OpenVinoEngine {
    /// Loads OpenVINO from `lib`, reads and compiles the model for the CPU in `precision`
    /// (`bf16`, `f32`, or `int8`: the bundle's int8 variant, hash-checked, with its float
    /// operations in bf16 where the CPU has it, else f32) on `threads` threads, checking names
    /// against the manifest and that the compiled model runs the precision asked for.
    ///
    /// With `cache` (see [`cache_dir`]), OpenVINO keeps the compiled model there (its
    /// `CACHE_DIR`) and later loads import it instead of compiling (OpenVINO itself recompiles
    /// over a stale or damaged entry). A cache OpenVINO cannot use is left out with a warning and
    /// the model compiled without it, never a failure.
    pub fn load(model: &Model, lib: &Path, precision: &'static str, threads: usize, cache: Option<&Path>) -> Result<OpenVinoEngine, EngineError> {
        let m = &model.manifest;
        let err = |reason: String| EngineError::Load { model: model.path.display().to_string(), reason };
        let ov = |what: &'static str| move |e: openvino::InferenceError| err(format!("OpenVINO {what}: {e}"));
        let (bytes, float) = match precision {
            "int8" => (Some(model.int8_bytes().map_err(|e| err(e.to_string()))?), Cpu::this().float().0),
            p => (None, p),
        };
        let bytes = bytes.as_deref().unwrap_or(&model.bytes);
        openvino_sys::library::load_from(lib.to_path_buf()).map_err(|e| err(format!("cannot load OpenVINO from {}: {e}", lib.display())))?;
        let new_core = || -> Result<Core, EngineError> {
            let mut core = Core::new().map_err(|e| err(format!("OpenVINO: {e}")))?;
            core.set_property(&DeviceType::CPU, &RwPropertyKey::HintInferencePrecision, float).map_err(ov("precision hint"))?;
            core.set_property(&DeviceType::CPU, &RwPropertyKey::InferenceNumThreads, &threads.max(1).to_string()).map_err(ov("threads"))?;
            Ok(core)
        };
        let mut core = new_core()?;
        let mut graph = core.read_model_from_buffer(bytes, None).map_err(ov("cannot read the model"))?;
        let names = |n: usize, at: &dyn Fn(usize) -> Result<String, openvino::InferenceError>| (0..n).map(at).collect::<Result<Vec<String>, _>>();
        let inputs = names(graph.get_inputs_len().map_err(ov("inputs"))?, &|i| graph.get_input_by_index(i)?.get_name()).map_err(ov("inputs"))?;
        let outputs = names(graph.get_outputs_len().map_err(ov("outputs"))?, &|i| graph.get_output_by_index(i)?.get_name()).map_err(ov("outputs"))?;
        if inputs != [m.input.name.clone()] {
            return Err(err(format!("graph inputs are {inputs:?}, the manifest expects one input {:?}", m.input.name)));
        }
        for name in [&m.output.prob, &m.output.cam] {
            if !outputs.contains(name) {
                return Err(err(format!("graph outputs are {outputs:?}; the manifest's output {name:?} is not among them")));
            }
        }
        let fixed_batch = (precision == "f32").then_some(BATCH);
        if let Some(b) = fixed_batch {
            let side = m.input.size as i64;
            let shape = PartialShape::new_static(4, &[b as i64, 3, side, side]).map_err(ov("input shape"))?;
            graph.reshape_single_input(&shape).map_err(ov("cannot fix the batch"))?;
        }
        let cached = cache.map(|dir| {
            let tried = match dir.to_str() {
                Some(d) => core.set_property(&DeviceType::CPU, &RwPropertyKey::CacheDir, d).and_then(|()| core.compile_model(&graph, DeviceType::CPU)).map_err(|e| e.to_string()),
                None => Err("the path is not UTF-8".to_string()),
            };
            tried.map_err(|why| log::warn!("OpenVINO compiled-model cache {} not used: {why}", dir.display()))
        });
        let mut compiled = match cached {
            Some(Ok(c)) => c,
            _ => {
                if cache.is_some() {
                    core = new_core()?; // without the cache folder
                }
                core.compile_model(&graph, DeviceType::CPU).map_err(ov("cannot compile the model"))?
            }
        };
        let from_cache =
            cache.is_some() && compiled.get_property(&PropertyKey::Other("LOADED_FROM_CACHE".into())).is_ok_and(|v| v.eq_ignore_ascii_case("yes") || v == "true" || v == "1");
        let runs = compiled.get_property(&PropertyKey::Rw(RwPropertyKey::HintInferencePrecision)).map_err(ov("precision"))?.to_string();
        if runs != float {
            return Err(err(format!("OpenVINO compiled the model for {runs}, not the {float} asked for")));
        }
        let request = compiled.create_infer_request().map_err(ov("infer request"))?;
        Ok(OpenVinoEngine {
            session: Mutex::new(Session { request, _compiled: compiled, _core: core }),
            precision,
            float,
            reason: None,
            from_cache,
            fixed_batch,
            size: m.input.size,
            input: m.input.name.clone(),
            prob: m.output.prob.clone(),
            cam: m.output.cam.clone(),
        })
    }

    /// The precision of the operations that are not int8 (`bf16` or `f32`; all of them unless the
    /// precision is `int8`).
    pub fn float_precision(&self) -> &'static str {
        self.float
    }

    /// The engine with the reason its precision was chosen ([`Engine::precision_reason`]).
    pub fn with_reason(mut self, why: String) -> OpenVinoEngine {
        self.reason = Some(why);
        self
    }

    /// The batch the model is compiled for (f32: [`BATCH`], padded), or `None` where it takes
    /// any batch up to it.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// Whether the compiled model was imported from the cache rather than compiled.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }
}

impl Engine for OpenVinoEngine {
    fn name(&self) -> &'static str {
        "openvino"
    }

    fn precision(&self) -> &str {
        self.precision
    }

    fn precision_reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    fn infer(&self, batch: &[f32], n: usize) -> Result<Output, EngineError> {
        let len = check_batch(batch, n, self.size)?;
        let run = |e: openvino::InferenceError| EngineError::Run(e.to_string());
        let mut out = Output::with_capacity(n);
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in batch.chunks(BATCH * len) {
            let k = chunk.len() / len;
            let rows = self.fixed_batch.unwrap_or(k);
            let dims = [rows as i64, 3, self.size as i64, self.size as i64];
            let mut tensor = Tensor::new(ElementType::F32, &Shape::new(&dims).map_err(run)?).map_err(run)?;
            let data = tensor.get_data_mut::<f32>().map_err(run)?;
            data[..chunk.len()].copy_from_slice(chunk);
            data[chunk.len()..].fill(0.0); // padding to the compiled batch; its results are dropped
            session.request.set_tensor(&self.input, &tensor).map_err(run)?;
            session.request.infer().map_err(run)?;
            let (prob, cam) = (session.request.get_tensor(&self.prob).map_err(run)?, session.request.get_tensor(&self.cam).map_err(run)?);
            let (prob, cam) = (prob.get_data::<f32>().map_err(run)?, cam.get_data::<f32>().map_err(run)?);
            let per_row = CAM_SIDE * CAM_SIDE;
            if prob.len() != rows || cam.len() != rows * per_row {
                return Err(EngineError::Run(format!("outputs {} and {} hold {} and {} values for a batch of {rows}", self.prob, self.cam, prob.len(), cam.len())));
            }
            out.append(k, (&self.prob, &prob[..k]), (&self.cam, &cam[..k * per_row]))?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// oneDNN's instruction-set limit takes bf16 and VNNI away as oneDNN does, says so, and an
    /// unknown name sets no limit.
    #[test]
    fn the_instruction_set_limit_is_honoured() {
        let epyc = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"];
        let c = |limit| Cpu::from_flags(&epyc, limit);
        let cpu = |bf16, vnni, bf16_limited, vnni_limited| Cpu { bf16, vnni, bf16_limited, vnni_limited };
        assert_eq!(c(None), cpu(true, true, false, false));
        assert_eq!(c(Some("avx2")), cpu(false, false, true, true));
        assert_eq!(c(Some("AVX512_CORE_VNNI")), cpu(false, true, true, false));
        assert_eq!(c(Some("AVX512_CORE_BF16")), cpu(true, true, false, false));
        // Sets, not a line: AVX2_VNNI holds avx_vnni, not avx512_vnni.
        assert_eq!(c(Some("AVX2_VNNI")), cpu(false, false, true, true));
        let alder = ["avx2", "avx_vnni"];
        assert_eq!(Cpu::from_flags(&alder, Some("AVX2_VNNI")), cpu(false, true, false, false));
        assert_eq!(Cpu::from_flags(&alder, Some("AVX512_CORE_VNNI")), cpu(false, false, false, true));
        assert_eq!(Cpu::from_flags(&alder, Some("AVX10_1_512")), cpu(false, true, false, false));
        let sapphire = ["avx2", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8"];
        assert_eq!(Cpu::from_flags(&sapphire, Some("AVX512_CORE_BF16")), cpu(true, true, false, false));
        assert_eq!(Cpu::from_flags(&sapphire, Some("AVX512_CORE_AMX")), cpu(true, true, false, false));
        for none in ["ALL", "DEFAULT", "no-such-isa"] {
            assert_eq!(c(Some(none)), c(None));
        }
        // A limit takes nothing the CPU does not have.
        assert_eq!(Cpu::from_flags(&["avx2"], Some("avx2")), cpu(false, false, false, false));
        let (p, why) = c(Some("AVX2")).float();
        assert_eq!(p, "f32");
        assert!(why.contains("ONEDNN_MAX_CPU_ISA"), "{why}");
        assert!(resolve_precision(Precision::Bf16, c(Some("AVX2")), None).unwrap_err().contains("ONEDNN_MAX_CPU_ISA"));
        // VNNI taken away, bf16 never there: the float reason does not blame the limit.
        let cascade = ["avx2", "avx512_vnni"];
        assert!(Cpu::from_flags(&cascade, Some("AVX2")).float().1.contains("neither AMX nor AVX512-BF16"));
        assert_eq!(c(None).describe(None), "bf16 yes, VNNI yes");
        assert_eq!(Cpu::from_flags(&cascade, None).describe(None), "bf16 no, VNNI yes");
        assert_eq!(
            c(Some("AVX512_CORE_VNNI")).describe(Some(("DNNL_MAX_CPU_ISA", "AVX512_CORE_VNNI"))),
            "bf16 no (the CPU has it; DNNL_MAX_CPU_ISA=AVX512_CORE_VNNI keeps OpenVINO below it), VNNI yes"
        );
        assert_eq!(
            Cpu::from_flags(&cascade, Some("AVX2")).describe(Some(("ONEDNN_MAX_CPU_ISA", "AVX2"))),
            "bf16 no, VNNI no (the CPU has it; ONEDNN_MAX_CPU_ISA=AVX2 keeps OpenVINO below it)"
        );
    }

    #[test]
    fn precision_is_resolved_never_silently_changed() {
        let cpu = |bf16| Cpu { bf16, vnni: true, bf16_limited: false, vnni_limited: false };
        let p = |w, bf16| resolve_precision(w, cpu(bf16), None).map(|c| c.precision);
        assert_eq!(p(Precision::Auto, true), Ok("bf16"));
        assert_eq!(p(Precision::Auto, false), Ok("f32"));
        assert_eq!(p(Precision::F32, true), Ok("f32"));
        assert_eq!(p(Precision::Bf16, true), Ok("bf16"));
        assert!(p(Precision::Bf16, false).unwrap_err().contains("neither AMX nor AVX512-BF16"));
        assert!(p(Precision::F16, true).is_err());
        assert!(p(Precision::Int8, true).unwrap_err().contains("has no int8 variant"));
        assert!(resolve_precision(Precision::Auto, cpu(false), None).unwrap().why.contains("has no int8 variant"));
    }

    /// `auto` takes int8 only within every parity bound, and says why not; a named int8 runs
    /// outside the bound, saying so.
    #[test]
    fn auto_takes_int8_only_within_the_parity_bound() {
        use crate::model::Int8Parity;
        let within = Int8Parity {
            max_abs_prob_diff: 0.015,
            auc_diff: 0.002,
            series_verdicts_identical: true,
            slices: 2000,
            series: 12,
            vnni: true,
            decisions_flipped: Some(0),
            measured_with: "test".into(),
        };
        let q = |parity: Int8Parity| Int8Info { file: "m.int8.onnx".into(), sha256: "0".repeat(64), method: "test".into(), threshold: None, threshold_method: None, parity };
        for bf16 in [true, false] {
            let Choice { precision: p, why, warn } =
                resolve_precision(Precision::Auto, Cpu { bf16, vnni: true, bf16_limited: false, vnni_limited: false }, Some(&q(within.clone()))).unwrap();
            assert_eq!((p, warn), ("int8", false));
            assert!(why.contains("within the parity bound") && why.contains("0.015"), "{why}");
            // Measured with VNNI: not on a CPU without it; measured without: there too.
            let Choice { precision: p, why, warn } =
                resolve_precision(Precision::Auto, Cpu { bf16, vnni: false, bf16_limited: false, vnni_limited: false }, Some(&q(within.clone()))).unwrap();
            assert_eq!((p, warn), (if bf16 { "bf16" } else { "f32" }, false));
            assert!(why.contains("which this CPU lacks"), "{why}");
            let without = Int8Parity { vnni: false, ..within.clone() };
            assert_eq!(resolve_precision(Precision::Auto, Cpu { bf16, vnni: false, bf16_limited: false, vnni_limited: false }, Some(&q(without))).unwrap().precision, "int8");
            let named = resolve_precision(Precision::Int8, Cpu { bf16, vnni: false, bf16_limited: false, vnni_limited: false }, Some(&q(within.clone()))).unwrap();
            assert!(named.warn && named.why.contains("which this CPU lacks"), "{named:?}");
        }
        let outside = [
            Int8Parity { max_abs_prob_diff: 0.021, ..within.clone() },
            Int8Parity { auc_diff: 0.006, ..within.clone() },
            Int8Parity { series_verdicts_identical: false, ..within.clone() },
            Int8Parity { series: 0, ..within.clone() },
            Int8Parity { max_abs_prob_diff: f64::NAN, ..within.clone() },
        ];
        for (parity, says) in
            outside.into_iter().zip(["max |Δprob| 0.021 > 0.02", "AUC change 0.006 > 0.005", "series verdicts differ", "no slices or no series", "max |Δprob| NaN"])
        {
            let Choice { precision: p, why, warn } =
                resolve_precision(Precision::Auto, Cpu { bf16: true, vnni: true, bf16_limited: false, vnni_limited: false }, Some(&q(parity.clone()))).unwrap();
            assert_eq!((p, warn), ("bf16", false));
            assert!(why.contains("outside the parity bound") && why.contains(says), "{why}");
            assert_eq!(
                resolve_precision(Precision::Auto, Cpu { bf16: false, vnni: true, bf16_limited: false, vnni_limited: false }, Some(&q(parity.clone()))).unwrap().precision,
                "f32"
            );
            let Choice { precision: p, why, warn } =
                resolve_precision(Precision::Int8, Cpu { bf16: false, vnni: true, bf16_limited: false, vnni_limited: false }, Some(&q(parity))).unwrap();
            assert_eq!((p, warn), ("int8", true));
            assert!(why.contains("OUTSIDE the parity bound") && why.contains(says), "{why}");
        }
    }

    #[test]
    fn a_configured_library_that_does_not_exist_is_named() {
        let e = library(Some(Path::new("/nonexistent/libopenvino_c.so"))).unwrap_err();
        assert!(e.contains("/nonexistent/libopenvino_c.so does not exist"), "{e}");
    }
}
