//! The tract engine (pure Rust, CPU, always built). Measured on 2 cores: tract is fastest at
//! batch 1 and with several single-thread runs of one optimised plan in parallel, so the plan is
//! fixed to batch 1 and a batch is spread over the rayon pool, one slice per run.

use std::sync::Arc;

use rayon::prelude::*;
use tract_onnx::prelude::*;

use super::{check_batch, Engine, EngineError, Output, CAM_SIDE};
use crate::model::Model;

type Plan = Arc<TypedRunnableModel>;

/// The tract engine.
pub struct TractEngine {
    plan: Plan,
    size: usize,
    prob_index: usize,
    cam_index: usize,
}

impl TractEngine {
    /// Loads and optimises the model, checking input/output names and shapes against the manifest.
    pub fn load(model: &Model) -> Result<TractEngine, EngineError> {
        let m = &model.manifest;
        let err = |reason: String| EngineError::Load { model: model.path.display().to_string(), reason };
        let graph = tract_onnx::onnx().model_for_read(&mut model.bytes.as_slice()).map_err(|e| err(format!("not a loadable ONNX model: {e}")))?;
        // Names as the graph declares them.
        let inputs: Vec<String> = graph.input_outlets().map_err(|e| err(e.to_string()))?.iter().map(|o| graph.node(o.node).name.clone()).collect();
        let outputs: Vec<String> = graph
            .output_outlets()
            .map_err(|e| err(e.to_string()))?
            .iter()
            .map(|o| graph.outlet_label(*o).map(str::to_string).unwrap_or_else(|| graph.node(o.node).name.clone()))
            .collect();
        if inputs != [m.input.name.clone()] {
            return Err(err(format!("graph inputs are {inputs:?}, the manifest expects one input {:?}", m.input.name)));
        }
        let find =
            |name: &str| outputs.iter().position(|o| o == name).ok_or_else(|| err(format!("graph outputs are {outputs:?}; the manifest's output {name:?} is not among them")));
        let (prob_index, cam_index) = (find(&m.output.prob)?, find(&m.output.cam)?);
        let size = m.input.size;
        let typed = graph
            .with_input_fact(0, f32::fact([1, 3, size, size]).into())
            .and_then(|g| g.into_optimized())
            .map_err(|e| err(format!("cannot prepare the graph for input [1, 3, {size}, {size}]: {e}")))?;
        let shape = |i: usize| -> Result<Vec<usize>, EngineError> {
            let outlet = typed.output_outlets().map_err(|e| err(e.to_string()))?[i];
            let fact = typed.outlet_fact(outlet).map_err(|e| err(e.to_string()))?;
            fact.shape.as_concrete().map(|s| s.to_vec()).ok_or_else(|| err(format!("output {} has no concrete shape", outputs[i])))
        };
        let (ps, cs) = (shape(prob_index)?, shape(cam_index)?);
        if ps != [1, 1] {
            return Err(err(format!("output {:?} has shape {ps:?} for one slice, expected [1, 1]", m.output.prob)));
        }
        if cs != [1, CAM_SIDE, CAM_SIDE] {
            return Err(err(format!("output {:?} has shape {cs:?} for one slice, expected [1, 7, 7]", m.output.cam)));
        }
        let plan = typed.into_runnable().map_err(|e| err(e.to_string()))?;
        Ok(TractEngine { plan, size, prob_index, cam_index })
    }

    fn one(&self, slice: &[f32]) -> Result<(f32, Vec<f32>), EngineError> {
        let s = self.size;
        let input = Tensor::from_shape(&[1, 3, s, s], slice).map_err(|e| EngineError::Run(e.to_string()))?;
        let out = self.plan.run(tvec!(input.into())).map_err(|e| EngineError::Run(e.to_string()))?;
        let view = |i: usize| out[i].to_plain_array_view::<f32>().map(|v| v.iter().copied().collect::<Vec<f32>>()).map_err(|e| EngineError::Run(e.to_string()));
        let prob = view(self.prob_index)?;
        Ok((prob[0], view(self.cam_index)?))
    }
}

impl Engine for TractEngine {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn infer(&self, batch: &[f32], n: usize) -> Result<Output, EngineError> {
        let len = check_batch(batch, n, self.size)?;
        let results: Vec<(f32, Vec<f32>)> = batch.par_chunks(len).map(|s| self.one(s)).collect::<Result<_, _>>()?;
        let mut out = Output { prob: Vec::with_capacity(n), cam: Vec::with_capacity(n * CAM_SIDE * CAM_SIDE) };
        for (p, c) in results {
            out.prob.push(p);
            out.cam.extend(c);
        }
        Ok(out)
    }
}
