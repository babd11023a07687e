//! The TensorRT engine proper: FFI to `shim.cpp`, device buffers and the stream from cudarc.
//!
//! Limitation of this version: the engine takes the batch from host memory (the [`Engine`]
//! trait's contract) and copies it to its device input buffer; the CUDA preprocessor's output
//! does not yet stay on the device between the two stages.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DevicePtrMut};

use super::{max_batch, validate, version_string, DType, EngineDesc, PlanInfo, TensorDesc};
use crate::engine::{check_batch, Engine, EngineError, Output, CAM_SIDE};
use crate::model::Model;

#[allow(missing_docs)]
extern "C" {
    fn ctrt_header_version() -> i32;
    fn ctrt_load(path: *const c_char, err: *mut c_char, len: usize) -> i32;
    fn ctrt_runtime_create(err: *mut c_char, len: usize) -> *mut c_void;
    fn ctrt_runtime_destroy(rt: *mut c_void);
    fn ctrt_engine_deserialize(rt: *mut c_void, data: *const c_void, size: usize, err: *mut c_char, len: usize) -> *mut c_void;
    fn ctrt_engine_destroy(e: *mut c_void);
    fn ctrt_engine_num_io(e: *mut c_void) -> i32;
    fn ctrt_engine_num_profiles(e: *mut c_void) -> i32;
    fn ctrt_engine_io(e: *mut c_void, i: i32, name: *mut c_char, namelen: usize, is_input: *mut i32, dtype: *mut i32, nb: *mut i32, dims: *mut i64) -> i32;
    fn ctrt_engine_profile(e: *mut c_void, name: *const c_char, which: i32, nb: *mut i32, dims: *mut i64) -> i32;
    fn ctrt_context_create(e: *mut c_void, err: *mut c_char, len: usize) -> *mut c_void;
    fn ctrt_context_destroy(c: *mut c_void);
    fn ctrt_context_set_input_shape(c: *mut c_void, name: *const c_char, nb: i32, dims: *const i64) -> i32;
    fn ctrt_context_set_address(c: *mut c_void, name: *const c_char, ptr: *mut c_void) -> i32;
    fn ctrt_context_enqueue(c: *mut c_void, stream: *mut c_void) -> i32;
}

fn err_text(buf: &[c_char]) -> String {
    // SAFETY: the shim always NUL-terminates what it writes (snprintf); the buffer starts zeroed.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// Loads libnvinfer (`library`, else `libnvinfer.so.11`, then `.so.10`); returns its version.
pub fn load_library(library: Option<&Path>) -> Result<i32, String> {
    let path = library.map(|p| CString::new(p.as_os_str().as_encoded_bytes()).map_err(|_| "library path holds a NUL byte".to_string())).transpose()?;
    let mut err = [0 as c_char; 1024];
    // SAFETY: valid C string (or null) and a writable error buffer of the given length.
    let v = unsafe { ctrt_load(path.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()), err.as_mut_ptr(), err.len()) };
    if v == 0 {
        return Err(err_text(&err));
    }
    // SAFETY: a constant from the compiled shim.
    let built = unsafe { ctrt_header_version() };
    if v / 10000 != built / 10000 {
        return Err(format!("TensorRT {} is installed but ctsentry was compiled against TensorRT {} headers (major versions differ)", version_string(v), version_string(built)));
    }
    Ok(v)
}

struct Inner {
    runtime: *mut c_void,
    engine: *mut c_void,
    ctx: *mut c_void,
    stream: Arc<CudaStream>,
    input: CudaSlice<f32>,
    prob: CudaSlice<f32>,
    cam: CudaSlice<f32>,
}

// SAFETY: the TensorRT objects are used from one thread at a time (behind the Mutex).
unsafe impl Send for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: pointers created by the shim, destroyed once, context before engine before runtime.
        unsafe {
            ctrt_context_destroy(self.ctx);
            ctrt_engine_destroy(self.engine);
            ctrt_runtime_destroy(self.runtime);
        }
    }
}

/// A TensorRT plan on the GPU.
pub struct TrtEngine {
    inner: Mutex<Inner>,
    names: [CString; 3],
    max_batch: usize,
    size: usize,
    /// What the engine says about itself.
    pub desc: EngineDesc,
    /// The TensorRT version loaded.
    pub version: i32,
    /// The plan's precision (its sidecar's `precision`).
    precision: String,
}

fn describe(engine: *mut c_void) -> EngineDesc {
    let mut tensors = Vec::new();
    // SAFETY: a live engine; buffers sized as the shim expects (name 256, dims 8).
    let n = unsafe { ctrt_engine_num_io(engine) };
    for i in 0..n {
        let mut name = [0 as c_char; 256];
        let (mut input, mut dtype, mut nb) = (0i32, 0i32, 0i32);
        let mut dims = [0i64; 8];
        if unsafe { ctrt_engine_io(engine, i, name.as_mut_ptr(), name.len(), &mut input, &mut dtype, &mut nb, dims.as_mut_ptr()) } == 1 {
            tensors.push(TensorDesc { name: err_text(&name), input: input == 1, dtype: DType::from_trt(dtype), dims: dims[..nb.clamp(0, 8) as usize].to_vec() });
        }
    }
    let mut batch = None;
    if unsafe { ctrt_engine_num_profiles(engine) } > 0 {
        if let Some(inp) = tensors.iter().find(|t| t.input && t.dims.first() == Some(&-1)) {
            let cname = CString::new(inp.name.clone()).expect("no NUL in tensor names");
            let mut b = [0i64; 3];
            for (which, slot) in b.iter_mut().enumerate() {
                let (mut nb, mut dims) = (0i32, [0i64; 8]);
                if unsafe { ctrt_engine_profile(engine, cname.as_ptr(), which as i32, &mut nb, dims.as_mut_ptr()) } == 1 && nb > 0 {
                    *slot = dims[0];
                }
            }
            batch = Some((b[0], b[1], b[2]));
        }
    }
    EngineDesc { tensors, batch }
}

impl TrtEngine {
    /// Loads libnvinfer, deserialises `plan`, validates it against `model`'s manifest and the
    /// plan's sidecar, and allocates device buffers for its largest batch.
    pub fn load(model: &Model, plan: &Path, library: Option<&Path>) -> Result<TrtEngine, String> {
        let version = load_library(library)?;
        let info = PlanInfo::load(plan)?;
        let bytes = std::fs::read(plan).map_err(|e| format!("{}: {e}", plan.display()))?;
        let dev = |e: cudarc::driver::DriverError| format!("CUDA: {e}");
        let cuda = CudaContext::new(0).map_err(dev)?;
        let stream = cuda.new_stream().map_err(dev)?;
        let mut err = [0 as c_char; 1024];
        // SAFETY: FFI calls with live pointers and sized error buffers; results checked for null.
        let runtime = unsafe { ctrt_runtime_create(err.as_mut_ptr(), err.len()) };
        if runtime.is_null() {
            return Err(err_text(&err));
        }
        let engine = unsafe { ctrt_engine_deserialize(runtime, bytes.as_ptr().cast(), bytes.len(), err.as_mut_ptr(), err.len()) };
        if engine.is_null() {
            unsafe { ctrt_runtime_destroy(runtime) };
            return Err(format!("{}: {}", plan.display(), err_text(&err)));
        }
        let desc = describe(engine);
        if let Err(why) = validate(&desc, &info, version, &model.manifest) {
            unsafe {
                ctrt_engine_destroy(engine);
                ctrt_runtime_destroy(runtime);
            }
            return Err(format!("{}: refused:\n  {}", plan.display(), why.join("\n  ")));
        }
        let ctx = unsafe { ctrt_context_create(engine, err.as_mut_ptr(), err.len()) };
        if ctx.is_null() {
            unsafe {
                ctrt_engine_destroy(engine);
                ctrt_runtime_destroy(runtime);
            }
            return Err(err_text(&err));
        }
        let m = &model.manifest;
        let size = m.input.size;
        let max_batch = max_batch(&desc);
        let alloc = |n: usize| stream.alloc_zeros::<f32>(n).map_err(dev);
        let input = alloc(max_batch * 3 * size * size)?;
        let prob = alloc(max_batch)?;
        let cam = alloc(max_batch * CAM_SIDE * CAM_SIDE)?;
        let names = [m.input.name.clone(), m.output.prob.clone(), m.output.cam.clone()].map(|n| CString::new(n).expect("no NUL in tensor names"));
        log::info!("engine: tensorrt {} (plan built with {}, {}), batches up to {max_batch}", version_string(version), info.tensorrt_version, info.precision);
        let precision = info.precision.clone();
        Ok(TrtEngine { inner: Mutex::new(Inner { runtime, engine, ctx, stream, input, prob, cam }), names, max_batch, size, desc, version, precision })
    }
}

impl Engine for TrtEngine {
    fn name(&self) -> &'static str {
        "tensorrt"
    }

    fn precision(&self) -> &str {
        &self.precision
    }

    fn infer(&self, batch: &[f32], n: usize) -> Result<Output, EngineError> {
        let len = check_batch(batch, n, self.size)?;
        let mut g = self.inner.lock().map_err(|_| EngineError::Run("engine poisoned".into()))?;
        let inner = &mut *g;
        let run = |e: cudarc::driver::DriverError| EngineError::Run(format!("CUDA: {e}"));
        let (mut prob, mut cam) = (vec![0f32; n], vec![0f32; n * CAM_SIDE * CAM_SIDE]);
        let mut start = 0;
        while start < n {
            let k = (n - start).min(self.max_batch);
            let stream = inner.stream.clone();
            stream.memcpy_htod(&batch[start * len..(start + k) * len], &mut inner.input.slice_mut(0..k * len)).map_err(run)?;
            let dims = [k as i64, 3, self.size as i64, self.size as i64];
            {
                let (pi, _gi) = inner.input.device_ptr_mut(&stream);
                let (pp, _gp) = inner.prob.device_ptr_mut(&stream);
                let (pc, _gc) = inner.cam.device_ptr_mut(&stream);
                // SAFETY: live context; device pointers valid for the buffers' lifetime; names NUL-terminated.
                let ok = unsafe {
                    ctrt_context_set_input_shape(inner.ctx, self.names[0].as_ptr(), 4, dims.as_ptr()) == 1
                        && ctrt_context_set_address(inner.ctx, self.names[0].as_ptr(), pi as *mut c_void) == 1
                        && ctrt_context_set_address(inner.ctx, self.names[1].as_ptr(), pp as *mut c_void) == 1
                        && ctrt_context_set_address(inner.ctx, self.names[2].as_ptr(), pc as *mut c_void) == 1
                        && ctrt_context_enqueue(inner.ctx, stream.cu_stream() as *mut c_void) == 1
                };
                if !ok {
                    return Err(EngineError::Run(format!("TensorRT refused a batch of {k} (profile allows up to {})", self.max_batch)));
                }
            }
            stream.memcpy_dtoh(&inner.prob.slice(0..k), &mut prob[start..start + k]).map_err(run)?;
            let c = CAM_SIDE * CAM_SIDE;
            stream.memcpy_dtoh(&inner.cam.slice(0..k * c), &mut cam[start * c..(start + k) * c]).map_err(run)?;
            stream.synchronize().map_err(run)?;
            start += k;
        }
        Ok(Output { prob, cam })
    }
}
