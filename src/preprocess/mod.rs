//! Preprocessing: one definition of how a CT slice becomes the classifier's input, shared by
//! training (`ctsentry prep`) and inference, so that there is no train/serve skew.
//!
//! The chain, for each slice of `rows × cols` stored values:
//! 1. **HU**: `hu = stored × slope + intercept` (computed in f64, rounded to f32).
//! 2. **Window**: `v = clamp((hu − (center − width/2)) / width, 0, 1)`.
//! 3. **Lung mask** (when the model asks for it): `v = 0` outside the lungs ([`lung`]).
//! 4. **Resize** to `size × size` by area weighting (no aliasing when shrinking): output pixel
//!    `(oy, ox)` averages the source over the rectangle `[oy·rows/size, (oy+1)·rows/size) ×
//!    [ox·cols/size, (ox+1)·cols/size)`, each source pixel `[j, j+1)` weighted by its overlap
//!    with the rectangle. The weights are separable: along one axis with `n` inputs and `m`
//!    outputs, `w(o, j) = max(0, min(b, j+1) − max(a, j)) / (b − a)` with `a = o·n/m`,
//!    `b = (o+1)·n/m`. In Python: `W = area_weights(n, m)` as an `m × n` matrix, `out = Wy @ img @ Wx.T`.
//! 5. **Normalise**: channel `c` of 3: `(v − mean[c]) / std[c]`.
//! 6. **Layout**: NCHW float32, `[N, 3, size, size]`.

pub mod conformance;
pub mod cpu;
#[cfg(any(feature = "cuda", feature = "cuda-12"))]
pub mod cuda;
#[cfg(not(any(feature = "cuda", feature = "cuda-12")))]
#[path = "cuda_stub.rs"]
pub mod cuda;
pub mod device;
pub mod lung;
pub mod npy;
pub mod reference;

use crate::ingest::{Pixels, Rescale, Slice};

/// Preprocessing parameters; they come from the model manifest.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    /// Window center (HU).
    pub window_center: f64,
    /// Window width (HU).
    pub window_width: f64,
    /// Whether to zero everything outside the lungs.
    pub lung_mask: bool,
    /// Output size (square).
    pub size: usize,
    /// Per-channel mean, subtracted after windowing.
    pub mean: [f32; 3],
    /// Per-channel standard deviation, divided after subtracting the mean.
    pub std: [f32; 3],
}

impl Default for Params {
    /// The lung window (center −600, width 1500), lung mask on, 224 × 224, ImageNet statistics.
    fn default() -> Self {
        Params { window_center: -600.0, window_width: 1500.0, lung_mask: true, size: 224, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] }
    }
}

impl Params {
    /// Checks the values make sense; the reason names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.window_width.is_finite() && self.window_width > 0.0 && self.window_center.is_finite()) {
            return Err(format!("window center/width {}/{} is not a valid window", self.window_center, self.window_width));
        }
        if !(1..=4096).contains(&self.size) {
            return Err(format!("size {} is outside 1..=4096", self.size));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) || self.mean.iter().any(|m| !m.is_finite()) {
            return Err("mean/std must be finite, std > 0".into());
        }
        Ok(())
    }

    /// Number of f32 values of one preprocessed slice.
    pub fn slice_len(&self) -> usize {
        3 * self.size * self.size
    }
}

/// One slice as the preprocessors read it: stored values, modality LUT and an optional mask.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Stored values, row-major.
    pub pixels: &'a Pixels,
    /// Modality LUT.
    pub rescale: Rescale,
    /// Lung mask (1 inside), `rows × cols`, when masking.
    pub mask: Option<&'a [u8]>,
}

impl<'a> Input<'a> {
    /// The input for `slice` with an optional mask.
    pub fn of(slice: &'a Slice, mask: Option<&'a [u8]>) -> Input<'a> {
        Input { rows: slice.rows, cols: slice.cols, pixels: &slice.pixels, rescale: slice.rescale, mask }
    }
}

/// Errors of preprocessing.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The output buffer does not hold N slices.
    #[error("output buffer holds {got} values, {want} needed")]
    OutputSize {
        /// Values in the buffer.
        got: usize,
        /// Values needed.
        want: usize,
    },
    /// A slice is inconsistent (pixel count, mask size).
    #[error("slice {index}: {reason}")]
    BadInput {
        /// Index in the batch.
        index: usize,
        /// What is wrong.
        reason: String,
    },
    /// The backend failed (e.g. a GPU error).
    #[error("{0}")]
    Backend(String),
}

/// A preprocessing implementation (CPU, CUDA). All give the same numbers within a named tolerance.
pub trait Preprocessor: Send + Sync {
    /// Short name (`reference`, `cpu`, `cuda`).
    fn name(&self) -> &'static str;
    /// Preprocesses `inputs` into `out` (`inputs.len() × 3 × size × size`, NCHW).
    fn run(&self, params: &Params, inputs: &[Input<'_>], out: &mut [f32]) -> Result<(), PreprocessError>;
}

/// Checks a batch's shapes against an output buffer of `out_len` values (exactly the batch's
/// size, or at least it when `at_least`, for reused device buffers).
pub(crate) fn check_shapes(params: &Params, inputs: &[Input<'_>], out_len: usize, at_least: bool) -> Result<(), PreprocessError> {
    let want = inputs.len() * params.slice_len();
    if out_len < want || (!at_least && out_len != want) {
        return Err(PreprocessError::OutputSize { got: out_len, want });
    }
    for (index, i) in inputs.iter().enumerate() {
        let n = i.rows * i.cols;
        if n == 0 || i.pixels.len() != n {
            return Err(PreprocessError::BadInput { index, reason: format!("{} pixels for {}×{}", i.pixels.len(), i.rows, i.cols) });
        }
        if i.mask.is_some_and(|m| m.len() != n) {
            return Err(PreprocessError::BadInput { index, reason: "mask size differs from the image".into() });
        }
    }
    Ok(())
}

/// Checks a batch's shapes against the host output buffer.
pub(crate) fn check_batch(params: &Params, inputs: &[Input<'_>], out: &[f32]) -> Result<(), PreprocessError> {
    check_shapes(params, inputs, out.len(), false)
}

/// A slice made ready for an engine, with what preprocessing learnt about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// `3 × size × size` values, CHW.
    pub tensor: Vec<f32>,
    /// Share of the image inside the lungs (0 when the model does not mask).
    pub lung_fraction: f32,
}

/// The lung mask of `slice` when the model asks for one.
pub fn mask_for(params: &Params, slice: &Slice) -> Option<lung::LungMask> {
    params.lung_mask.then(|| lung::segment_slice(slice))
}

/// Segments (when the model masks) and preprocesses one slice with `pre`; also returns the mask.
pub fn prepare(pre: &dyn Preprocessor, params: &Params, slice: &Slice) -> Result<(Prepared, Option<lung::LungMask>), PreprocessError> {
    let mask = mask_for(params, slice);
    let mut tensor = vec![0f32; params.slice_len()];
    pre.run(params, &[Input::of(slice, mask.as_ref().map(|m| m.mask.as_slice()))], &mut tensor)?;
    let lung_fraction = mask.as_ref().map(|m| m.fraction).unwrap_or(0.0);
    Ok((Prepared { tensor, lung_fraction }, mask))
}
