//! The CUDA preprocessor (cargo feature `cuda`, or `cuda-12` for CUDA 12 boxes such as JetPack):
//! one fused kernel (`kernels/preprocess.cu`) from stored pixels to the engine's NCHW input,
//! float32 or float16, batched over slices.
//!
//! - cudarc with dynamic loading: the binary starts without a driver; [`CudaPreprocessor::new`]
//!   checks that libcuda and libnvrtc can be loaded before any CUDA call (cudarc panics
//!   otherwise) and reports why not.
//! - The `.cu` source is embedded and compiled with NVRTC at first use for the device's
//!   architecture; the PTX is cached on disk, keyed by a hash of the source and the architecture.
//! - The lung mask is computed on the CPU ([`super::lung`]) and uploaded with the pixels.
//! - Inputs are staged in pinned host memory and copied asynchronously on the preprocessor's
//!   stream; [`CudaPreprocessor::run_on_device`] leaves the output on the device for a GPU engine.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DeviceRepr, LaunchConfig, PinnedHostSlice, PushKernelArg};
use cudarc::nvrtc::{CompileOptions, Ptx};

pub use super::device::{CudaUnavailable, DeviceInfo};
use super::{check_batch, Input, Params, PreprocessError, Preprocessor};
use crate::ingest::Pixels;

/// The kernel source: the shared header inlined ahead of the kernels (NVRTC gets one string).
const SOURCE: &str = concat!(include_str!("../../kernels/preprocess.cuh"), "\n", include_str!("../../kernels/preprocess.cu"));

/// Per-slice descriptor; layout matches `SliceDesc` in `kernels/preprocess.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct SliceDesc {
    src_offset: u64,
    mask_offset: i64,
    rows: i32,
    cols: i32,
    kind: i32,
    pad: i32,
    slope: f64,
    intercept: f64,
    taps_y: i32,
    taps_x: i32,
    start_y: i32,
    start_x: i32,
    weight_y: i32,
    weight_x: i32,
}

/// Kernel parameters; layout matches `PrepParams` in `kernels/preprocess.cuh`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct PrepParams {
    size: i32,
    lo: f32,
    inv_width: f32,
    mean: [f32; 3],
    inv_std: [f32; 3],
}

// SAFETY: both are plain #[repr(C)] data with the same layout as their C counterparts.
unsafe impl DeviceRepr for SliceDesc {}
unsafe impl DeviceRepr for PrepParams {}
// SAFETY: all-zero bits are a valid SliceDesc (integers and floats).
unsafe impl cudarc::driver::ValidAsZeroBits for SliceDesc {}

/// Checks the driver and NVRTC libraries can be loaded, without any CUDA call that would panic.
pub fn libraries_present() -> Result<(), CudaUnavailable> {
    // SAFETY: these only try to dlopen the libraries.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(CudaUnavailable("the NVIDIA driver library (libcuda.so) cannot be loaded: no NVIDIA driver on this machine".into()));
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaUnavailable("the NVRTC runtime compiler (libnvrtc.so.13 or .12) cannot be loaded: install the CUDA runtime compiler".into()));
    }
    Ok(())
}

/// The first device, if CUDA is usable.
pub fn probe() -> Result<DeviceInfo, CudaUnavailable> {
    libraries_present()?;
    let err = |e: cudarc::driver::DriverError| CudaUnavailable(format!("driver: {e}"));
    let count = CudaContext::device_count().map_err(err)?;
    if count < 1 {
        return Err(CudaUnavailable("the driver found no CUDA device".into()));
    }
    let ctx = CudaContext::new(0).map_err(err)?;
    let mut version = 0i32;
    // SAFETY: the library is loaded; the pointer is valid for the call.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) }.result().map_err(err)?;
    Ok(DeviceInfo { name: ctx.name().map_err(err)?, compute_capability: ctx.compute_capability().map_err(err)?, driver_version: version, memory: ctx.total_mem().map_err(err)? })
}

/// Device buffers reused between batches (grown as needed).
struct Buffers {
    staging: Option<PinnedHostSlice<u8>>,
    src: Option<CudaSlice<u8>>,
    masks: Option<CudaSlice<u8>>,
    mask_staging: Option<PinnedHostSlice<u8>>,
    descs: Option<CudaSlice<SliceDesc>>,
    tab_i: Option<CudaSlice<i32>>,
    tab_w: Option<CudaSlice<f32>>,
    last: Option<Batch>,
}

/// What was uploaded: the slice count and the shared memory the tiled kernel needs.
#[derive(Debug, Clone)]
struct Batch {
    n: usize,
    tile_bytes: usize,
}

/// The area weights of one axis (`n` inputs to the output size), padded to a fixed tap count
/// for the tiled kernel, and the largest source span of a tile of outputs.
struct AxisTable {
    taps: usize,
    start_at: usize,
    weight_at: usize,
    span: usize,
}

/// Appends the weight table of an axis of `n` inputs to `tab_i`/`tab_w`.
fn axis_table(n: usize, size: usize, tab_i: &mut Vec<i32>, tab_w: &mut Vec<f32>) -> AxisTable {
    let w = super::cpu::AxisWeights::new(n, size);
    let taps = (0..size).map(|o| w.taps(o).1.len()).max().unwrap_or(1).max(1);
    let (start_at, weight_at) = (tab_i.len(), tab_w.len());
    for o in 0..size {
        let (j0, ws) = w.taps(o);
        tab_i.push(j0 as i32);
        tab_w.extend(ws.iter().copied().chain(std::iter::repeat(0.0)).take(taps));
    }
    let span = (0..size).step_by(TILE as usize).map(|t| w.start[(t + TILE as usize).min(size) - 1] + taps - w.start[t]).max().unwrap_or(taps);
    AxisTable { taps, start_at, weight_at, span }
}

/// Output tile side of the tiled kernel (`TILE` in kernels/preprocess.cu).
const TILE: u32 = 16;
/// Shared memory the tiled kernel may use per block (the default limit without opt-in).
const MAX_TILE_SHARED_BYTES: usize = 48 * 1024;

/// The CUDA preprocessor.
pub struct CudaPreprocessor {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    f32_kernel: CudaFunction,
    f16_kernel: CudaFunction,
    tiled_f32: CudaFunction,
    tiled_f16: CudaFunction,
    buffers: Mutex<Buffers>,
    /// Device description, for logs and `doctor`.
    pub info: DeviceInfo,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Where compiled PTX is cached: `$CTSENTRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ctsentry`, else
/// `~/.cache/ctsentry`.
fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("CTSENTRY_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("ctsentry")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ctsentry")))
}

/// Compiles the kernels for `arch` (e.g. `compute_90`) with NVRTC, without the cache and
/// without touching a device (needs only libnvrtc): the PTX text.
pub fn compile_kernels(arch: &str) -> Result<String, CudaUnavailable> {
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(CudaUnavailable("libnvrtc cannot be loaded".into()));
    }
    compile(arch).map(|p| p.to_src())
}

fn compile(arch: &str) -> Result<Ptx, CudaUnavailable> {
    let source = SOURCE.replace("#include \"preprocess.cuh\"", "");
    let opts = CompileOptions { options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()], ..Default::default() };
    cudarc::nvrtc::compile_ptx_with_opts(&source, opts).map_err(|e| CudaUnavailable(format!("NVRTC could not compile kernels/preprocess.cu for {arch}: {e}")))
}

/// Compiles the kernels for `arch` (e.g. `compute_90`), or loads them from the disk cache.
fn ptx_for(arch: &str) -> Result<Ptx, CudaUnavailable> {
    let source = SOURCE.replace("#include \"preprocess.cuh\"", "");
    let key = format!("preprocess-{:016x}-{arch}.ptx", fnv1a(source.as_bytes()));
    let cached = cache_dir().map(|d| d.join(&key));
    if let Some(text) = cached.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        log::debug!("CUDA kernels from the cache {}", key);
        return Ok(Ptx::from_src(text));
    }
    let ptx = compile(arch)?;
    if let Some(p) = cached {
        let written = p.parent().map(std::fs::create_dir_all).transpose().and_then(|_| std::fs::write(&p, ptx.to_src()));
        if let Err(e) = written {
            log::debug!("PTX not cached at {}: {e}", p.display());
        }
    }
    Ok(ptx)
}

impl CudaPreprocessor {
    /// Opens device `ordinal`, compiles (or loads) the kernels. Never panics: a missing driver or
    /// compiler is an error saying so.
    pub fn new(ordinal: usize) -> Result<CudaPreprocessor, CudaUnavailable> {
        let info = probe()?;
        let err = |e: cudarc::driver::DriverError| CudaUnavailable(format!("driver: {e}"));
        let ctx = CudaContext::new(ordinal).map_err(err)?;
        let (major, minor) = info.compute_capability;
        let module = ctx.load_module(ptx_for(&format!("compute_{major}{minor}"))?).map_err(err)?;
        let f32_kernel = module.load_function("preprocess_f32").map_err(err)?;
        let f16_kernel = module.load_function("preprocess_f16").map_err(err)?;
        let tiled_f32 = module.load_function("preprocess_tiled_f32").map_err(err)?;
        let tiled_f16 = module.load_function("preprocess_tiled_f16").map_err(err)?;
        let stream = ctx.new_stream().map_err(err)?;
        Ok(CudaPreprocessor {
            ctx,
            stream,
            f32_kernel,
            f16_kernel,
            tiled_f32,
            tiled_f16,
            buffers: Mutex::new(Buffers { staging: None, src: None, masks: None, mask_staging: None, descs: None, tab_i: None, tab_w: None, last: None }),
            info,
        })
    }

    /// The stream the preprocessor works on (a GPU engine enqueues after it).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The context (a GPU engine shares it).
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Allocates a device buffer for `n` slices of float32 output.
    pub fn alloc_output(&self, params: &Params, n: usize) -> Result<CudaSlice<f32>, PreprocessError> {
        self.stream.alloc_zeros::<f32>(n * params.slice_len()).map_err(backend)
    }

    /// Uploads a batch (pixels, masks, descriptors) into the reused device buffers.
    fn upload(&self, b: &mut Buffers, params: &Params, inputs: &[Input<'_>]) -> Result<Batch, PreprocessError> {
        let align = |x: usize| x.div_ceil(16) * 16;
        let mut descs = Vec::with_capacity(inputs.len());
        let (mut src_len, mut mask_len) = (0usize, 0usize);
        let (mut tab_i, mut tab_w) = (Vec::new(), Vec::new());
        let mut tables: std::collections::HashMap<usize, AxisTable> = std::collections::HashMap::new();
        let mut tile_bytes = 0usize;
        for i in inputs {
            for len in [i.rows, i.cols] {
                tables.entry(len).or_insert_with(|| axis_table(len, params.size, &mut tab_i, &mut tab_w));
            }
            let (ty, tx) = (&tables[&i.rows], &tables[&i.cols]);
            tile_bytes = tile_bytes.max(ty.span * tx.span * 4);
            let bytes = i.rows * i.cols * if matches!(i.pixels, Pixels::F32(_)) { 4 } else { 2 };
            let kind = match i.pixels {
                Pixels::U16(_) => 0,
                Pixels::I16(_) => 1,
                Pixels::F32(_) => 2,
            };
            descs.push(SliceDesc {
                src_offset: src_len as u64,
                mask_offset: if i.mask.is_some() { mask_len as i64 } else { -1 },
                rows: i.rows as i32,
                cols: i.cols as i32,
                kind,
                pad: 0,
                slope: i.rescale.slope,
                intercept: i.rescale.intercept,
                taps_y: ty.taps as i32,
                taps_x: tx.taps as i32,
                start_y: ty.start_at as i32,
                start_x: tx.start_at as i32,
                weight_y: ty.weight_at as i32,
                weight_x: tx.weight_at as i32,
            });
            src_len += align(bytes);
            if i.mask.is_some() {
                mask_len += align(i.rows * i.cols);
            }
        }
        let grow_pinned = |slot: &mut Option<PinnedHostSlice<u8>>, len: usize| -> Result<(), PreprocessError> {
            if slot.as_ref().is_none_or(|s| s.len() < len) {
                // SAFETY: the buffer is fully written before it is read (below).
                *slot = Some(unsafe { self.ctx.alloc_pinned::<u8>(len.max(1)) }.map_err(backend)?);
            }
            Ok(())
        };
        let grow_dev = |slot: &mut Option<CudaSlice<u8>>, len: usize| -> Result<(), PreprocessError> {
            if slot.as_ref().is_none_or(|s| s.len() < len) {
                *slot = Some(self.stream.alloc_zeros::<u8>(len.max(1)).map_err(backend)?);
            }
            Ok(())
        };
        grow_pinned(&mut b.staging, src_len)?;
        grow_pinned(&mut b.mask_staging, mask_len)?;
        grow_dev(&mut b.src, src_len)?;
        grow_dev(&mut b.masks, mask_len)?;
        // The previous batch's copies must be done before the staging memory is rewritten.
        self.stream.synchronize().map_err(backend)?;
        {
            let staging = b.staging.as_mut().expect("allocated").as_mut_slice().map_err(backend)?;
            let masks = b.mask_staging.as_mut().expect("allocated").as_mut_slice().map_err(backend)?;
            for (i, d) in inputs.iter().zip(&descs) {
                let at = d.src_offset as usize;
                let bytes = pixel_bytes(i.pixels);
                staging[at..at + bytes.len()].copy_from_slice(bytes);
                if let Some(m) = i.mask {
                    let mo = d.mask_offset as usize;
                    masks[mo..mo + m.len()].copy_from_slice(m);
                }
            }
        }
        self.stream.memcpy_htod(b.staging.as_ref().expect("allocated"), b.src.as_mut().expect("allocated")).map_err(backend)?;
        if mask_len > 0 {
            self.stream.memcpy_htod(b.mask_staging.as_ref().expect("allocated"), b.masks.as_mut().expect("allocated")).map_err(backend)?;
        }
        if b.descs.as_ref().is_none_or(|d| d.len() < descs.len()) {
            b.descs = Some(self.stream.alloc_zeros::<SliceDesc>(descs.len().max(1)).map_err(backend)?);
        }
        self.stream.memcpy_htod(&descs, b.descs.as_mut().expect("allocated")).map_err(backend)?;
        // Small tables: uploaded with each batch.
        b.tab_i = Some(self.stream.clone_htod(&tab_i).map_err(backend)?);
        b.tab_w = Some(self.stream.clone_htod(&tab_w).map_err(backend)?);
        Ok(Batch { n: inputs.len(), tile_bytes })
    }

    fn launch<T>(&self, params: &Params, b: &Buffers, batch: &Batch, half: bool, out: &mut CudaSlice<T>) -> Result<(), PreprocessError> {
        let n = batch.n;
        if n == 0 {
            return Ok(());
        }
        let p = PrepParams {
            size: params.size as i32,
            lo: (params.window_center - params.window_width / 2.0) as f32,
            inv_width: (1.0 / params.window_width) as f32,
            mean: params.mean,
            inv_std: params.std.map(|s| 1.0 / s),
        };
        // The tiled kernel when every slice's tile footprint fits in shared memory.
        let tiles = (params.size as u32).div_ceil(TILE);
        let tiled = batch.tile_bytes <= MAX_TILE_SHARED_BYTES && n <= 65_535;
        let (kernel, cfg) = if tiled {
            let k = if half { &self.tiled_f16 } else { &self.tiled_f32 };
            (k, LaunchConfig { grid_dim: (tiles, tiles, n as u32), block_dim: (TILE, TILE, 1), shared_mem_bytes: batch.tile_bytes as u32 })
        } else {
            let k = if half { &self.f16_kernel } else { &self.f32_kernel };
            let threads = 256u32;
            let blocks = ((params.size * params.size) as u32).div_ceil(threads).max(1);
            (k, LaunchConfig { grid_dim: (blocks, n as u32, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 })
        };
        let mut l = self.stream.launch_builder(kernel);
        l.arg(b.src.as_ref().expect("uploaded"));
        l.arg(b.masks.as_ref().expect("uploaded"));
        l.arg(b.descs.as_ref().expect("uploaded"));
        if tiled {
            l.arg(b.tab_i.as_ref().expect("uploaded"));
            l.arg(b.tab_w.as_ref().expect("uploaded"));
        }
        l.arg(&p);
        l.arg(out);
        // SAFETY: argument types and order match the kernel's signature; every offset and size
        // in the descriptors lies within the uploaded buffers; `out` holds n × 3 × size² values.
        unsafe { l.launch(cfg) }.map_err(backend)?;
        Ok(())
    }

    /// Preprocesses `inputs` into the float32 device buffer `out` (`n × 3 × size²`), leaving the
    /// result on the device; work is queued on [`Self::stream`].
    pub fn run_on_device(&self, params: &Params, inputs: &[Input<'_>], out: &mut CudaSlice<f32>) -> Result<(), PreprocessError> {
        self.upload_and_launch(params, inputs, false, out)
    }

    /// As [`Self::run_on_device`], with IEEE float16 output (bits in u16) for FP16 engines.
    pub fn run_on_device_f16(&self, params: &Params, inputs: &[Input<'_>], out: &mut CudaSlice<u16>) -> Result<(), PreprocessError> {
        self.upload_and_launch(params, inputs, true, out)
    }

    fn upload_and_launch<T>(&self, params: &Params, inputs: &[Input<'_>], half: bool, out: &mut CudaSlice<T>) -> Result<(), PreprocessError> {
        check_batch_len(params, inputs, out.len())?;
        let mut b = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let batch = self.upload(&mut b, params, inputs)?;
        self.launch(params, &b, &batch, half, out)?;
        b.last = Some(batch);
        Ok(())
    }

    /// Seconds taken by the work `f` queues on the stream, timed with device events.
    fn time_on_stream(&self, f: impl FnOnce() -> Result<(), PreprocessError>) -> Result<f64, PreprocessError> {
        let timing = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (self.ctx.new_event(timing).map_err(backend)?, self.ctx.new_event(timing).map_err(backend)?);
        start.record(&self.stream).map_err(backend)?;
        f()?;
        end.record(&self.stream).map_err(backend)?;
        end.synchronize().map_err(backend)?;
        Ok(f64::from(start.elapsed_ms(&end).map_err(backend)?) / 1e3)
    }

    /// Seconds per launch of the float32 kernel on the batch last uploaded (by
    /// [`Self::run_on_device`]), timed with device events over `reps` launches after a warm-up.
    pub fn time_kernel(&self, params: &Params, out: &mut CudaSlice<f32>, reps: usize) -> Result<f64, PreprocessError> {
        let b = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let batch = b.last.clone().ok_or_else(|| PreprocessError::Backend("no batch uploaded yet".into()))?;
        self.launch(params, &b, &batch, false, out)?;
        let secs = self.time_on_stream(|| (0..reps).try_for_each(|_| self.launch(params, &b, &batch, false, out)))?;
        Ok(secs / reps as f64)
    }

    /// The device's copy bandwidth in bytes/s (bytes read plus bytes written) for a
    /// device-to-device copy of `bytes`, timed with events over `reps` copies.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64, PreprocessError> {
        let src = self.stream.alloc_zeros::<u8>(bytes).map_err(backend)?;
        let mut dst = self.stream.alloc_zeros::<u8>(bytes).map_err(backend)?;
        self.stream.memcpy_dtod(&src, &mut dst).map_err(backend)?;
        let secs = self.time_on_stream(|| (0..reps).try_for_each(|_| self.stream.memcpy_dtod(&src, &mut dst).map_err(backend)))?;
        Ok(2.0 * bytes as f64 * reps as f64 / secs)
    }
}

/// The stored values as native-endian bytes (what the kernel reads).
fn pixel_bytes(p: &Pixels) -> &[u8] {
    let (ptr, len) = match p {
        Pixels::U16(v) => (v.as_ptr().cast::<u8>(), v.len() * 2),
        Pixels::I16(v) => (v.as_ptr().cast::<u8>(), v.len() * 2),
        Pixels::F32(v) => (v.as_ptr().cast::<u8>(), v.len() * 4),
    };
    // SAFETY: the vector's memory is `len` initialised bytes, u8 has no alignment or validity
    // requirement, and the borrow of `p` outlives the returned slice.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}

fn backend(e: impl std::fmt::Display) -> PreprocessError {
    PreprocessError::Backend(format!("CUDA: {e}"))
}

fn check_batch_len(params: &Params, inputs: &[Input<'_>], out_len: usize) -> Result<(), PreprocessError> {
    // The shape checks of every preprocessor, then the kernel's own index range.
    super::check_shapes(params, inputs, out_len, true)?;
    for (index, i) in inputs.iter().enumerate() {
        if i.rows > i32::MAX as usize / 2 || i.cols > i32::MAX as usize / 2 {
            return Err(PreprocessError::BadInput { index, reason: "too large for the kernel's indices".into() });
        }
    }
    Ok(())
}

impl Preprocessor for CudaPreprocessor {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn run(&self, params: &Params, inputs: &[Input<'_>], out: &mut [f32]) -> Result<(), PreprocessError> {
        check_batch(params, inputs, out)?;
        let mut dev = self.alloc_output(params, inputs.len())?;
        self.run_on_device(params, inputs, &mut dev)?;
        self.stream.memcpy_dtoh(&dev, out).map_err(backend)?;
        self.stream.synchronize().map_err(backend)
    }
}
