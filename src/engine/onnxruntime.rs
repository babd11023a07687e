//! The ONNX Runtime engine (cargo feature `onnxruntime`): the `ort` crate with dynamic loading,
//! so nothing is downloaded at build time. The library is found from `engine.onnxruntime_library`
//! in the config, else `ORT_DYLIB_PATH`; the PyPI `onnxruntime` wheel ships one as
//! `onnxruntime/capi/libonnxruntime.so.*`. ONNX Runtime is fastest here with batches of 8 on
//! all cores (intra-op threads), so batches are run in chunks of 8.

use std::path::Path;
use std::sync::Mutex;

use ort::session::Session;
use ort::value::Tensor;

use super::{check_batch, Engine, EngineError, Output};
use crate::model::Model;

/// Slices per ONNX Runtime call.
const BATCH: usize = 8;

/// The ONNX Runtime engine.
pub struct OrtEngine {
    _environment: ort::environment::Environment,
    session: Mutex<Session>,
    size: usize,
    input: String,
    prob: String,
    cam: String,
}

pub use super::onnxruntime_library as library;

impl OrtEngine {
    /// Loads ONNX Runtime from `lib`, then the model, checking names against the manifest.
    pub fn load(model: &Model, lib: &Path, threads: usize) -> Result<OrtEngine, EngineError> {
        let m = &model.manifest;
        let err = |reason: String| EngineError::Load { model: model.path.display().to_string(), reason };
        let env = ort::init_from(lib).map_err(|e| err(format!("cannot load ONNX Runtime from {}: {e}", lib.display())))?.build().map_err(|e| err(format!("ONNX Runtime: {e}")))?;
        let session = Session::builder(&env)
            .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(Into::into))
            .and_then(|mut b| b.commit_from_memory(&model.bytes))
            .map_err(|e| err(format!("ONNX Runtime cannot load the model: {e}")))?;
        let inputs: Vec<String> = session.inputs().iter().map(|o| o.name().to_string()).collect();
        let outputs: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
        if inputs != [m.input.name.clone()] {
            return Err(err(format!("graph inputs are {inputs:?}, the manifest expects one input {:?}", m.input.name)));
        }
        for name in [&m.output.prob, &m.output.cam] {
            if !outputs.contains(name) {
                return Err(err(format!("graph outputs are {outputs:?}; the manifest's output {name:?} is not among them")));
            }
        }
        Ok(OrtEngine { _environment: env, session: Mutex::new(session), size: m.input.size, input: m.input.name.clone(), prob: m.output.prob.clone(), cam: m.output.cam.clone() })
    }
}

impl Engine for OrtEngine {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn infer(&self, batch: &[f32], n: usize) -> Result<Output, EngineError> {
        let len = check_batch(batch, n, self.size)?;
        let run = |e: ort::Error| EngineError::Run(e.to_string());
        let mut out = Output::with_capacity(n);
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in batch.chunks(BATCH * len) {
            let k = chunk.len() / len;
            let tensor = Tensor::from_array(([k, 3, self.size, self.size], chunk.to_vec())).map_err(run)?;
            let outputs = session.run(ort::inputs![self.input.as_str() => tensor]).map_err(run)?;
            let (_, prob) = outputs[self.prob.as_str()].try_extract_tensor::<f32>().map_err(run)?;
            let (_, cam) = outputs[self.cam.as_str()].try_extract_tensor::<f32>().map_err(run)?;
            out.append(k, (&self.prob, prob), (&self.cam, cam))?;
        }
        Ok(out)
    }
}
