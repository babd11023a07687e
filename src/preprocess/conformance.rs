//! The conformance check every [`Preprocessor`] must pass against the [`Reference`]: random
//! slices of random (odd) sizes, extreme HU, slopes ≠ 1, all pixel types, with and without lung
//! masks, shrinking and enlarging, batched. It lives in the library (not only in tests) so that
//! the shipped binary can run it on a GPU machine that has no Rust toolchain.

use super::reference::Reference;
use super::{Input, Params, Preprocessor};
use crate::ingest::{Pixels, Rescale};

/// Tolerance of the fast CPU preprocessor against the reference.
pub const CPU_TOLERANCE: f32 = 1e-5;
/// Tolerance of GPU preprocessors against the reference (f32 with fused operations).
pub const GPU_TOLERANCE: f32 = 1e-4;

/// A small deterministic generator (xorshift64*), so the check needs no dependency and repeats.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `[lo, hi)`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo) as u64) as usize
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One generated case: pixels, rescale and an optional mask.
pub struct Case {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Stored values.
    pub pixels: Pixels,
    /// Modality LUT.
    pub rescale: Rescale,
    /// Optional mask.
    pub mask: Option<Vec<u8>>,
}

impl Case {
    /// The case as a preprocessor input.
    pub fn input(&self) -> Input<'_> {
        Input { rows: self.rows, cols: self.cols, pixels: &self.pixels, rescale: self.rescale, mask: self.mask.as_deref() }
    }
}

/// Random cases from `seed`: sizes from 1 to 700 on each side (so both shrinking and
/// enlarging), every pixel type, slopes 0.5–3, intercepts ±3000, values across the full range.
pub fn cases(seed: u64, count: usize) -> Vec<Case> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|k| {
            let (rows, cols) = match k % 4 {
                0 => (512, 512),
                1 => (rng.range(1, 40), rng.range(1, 40)),
                _ => (rng.range(200, 700), rng.range(150, 700)),
            };
            let n = rows * cols;
            let pixels = match k % 3 {
                0 => Pixels::I16((0..n).map(|_| rng.next_u64() as i16).collect()),
                1 => Pixels::U16((0..n).map(|_| (rng.next_u64() % 4096) as u16).collect()),
                _ => Pixels::F32((0..n).map(|_| (rng.unit() * 6000.0 - 3000.0) as f32).collect()),
            };
            let rescale = Rescale { slope: 0.5 + rng.unit() * 2.5, intercept: rng.unit() * 6000.0 - 3000.0 };
            let mask = (k % 2 == 1).then(|| (0..n).map(|_| u8::from(!rng.next_u64().is_multiple_of(3))).collect());
            Case { rows, cols, pixels, rescale, mask }
        })
        .collect()
}

/// Runs `pre` and the reference on the same random batch; returns the largest absolute
/// difference over all output values.
pub fn max_error(pre: &dyn Preprocessor, params: &Params, seed: u64, count: usize) -> Result<f32, String> {
    let cases = cases(seed, count);
    let inputs: Vec<Input<'_>> = cases.iter().map(Case::input).collect();
    let len = inputs.len() * params.slice_len();
    let (mut want, mut got) = (vec![0f32; len], vec![f32::NAN; len]);
    Reference.run(params, &inputs, &mut want).map_err(|e| e.to_string())?;
    pre.run(params, &inputs, &mut got).map_err(|e| format!("{}: {e}", pre.name()))?;
    Ok(want.iter().zip(&got).map(|(a, b)| if b.is_finite() { (a - b).abs() } else { f32::INFINITY }).fold(0.0, f32::max))
}

/// The full check: several seeds, windows and sizes, with and without masks. Returns the
/// largest error seen, or the first failure over `tolerance`.
pub fn check(pre: &dyn Preprocessor, tolerance: f32) -> Result<f32, String> {
    let mut worst = 0f32;
    let settings = [
        Params::default(),
        Params { window_center: 40.0, window_width: 400.0, size: 97, mean: [0.0; 3], std: [1.0; 3], lung_mask: false },
        Params { window_center: -600.0, window_width: 1.0, size: 224, ..Params::default() },
    ];
    for (i, p) in settings.iter().enumerate() {
        let e = max_error(pre, p, 17 + i as u64, 6)?;
        if e > tolerance {
            return Err(format!("{}: max error {e} > {tolerance} with {p:?}", pre.name()));
        }
        worst = worst.max(e);
    }
    Ok(worst)
}
