//! The fast CPU preprocessor: the reference chain as two separable passes with precomputed
//! area weights, f32 arithmetic, scratch buffers reused per worker, slices in parallel (rayon).
//! Equal to [`super::reference`] within 1e-5 (tested on random inputs).

use rayon::prelude::*;

use super::{check_batch, Input, Params, PreprocessError, Preprocessor};
use crate::ingest::Pixels;

/// Area weights along one axis from `n` inputs to `m` outputs: for each output, the first input
/// index and the weights of the inputs from there on (they sum to 1).
#[derive(Debug, Clone, PartialEq)]
pub struct AxisWeights {
    /// First input index of each output.
    pub start: Vec<usize>,
    /// Offsets into `weights` of each output's taps (`m + 1` entries).
    pub offsets: Vec<usize>,
    /// All taps, output after output.
    pub weights: Vec<f32>,
}

impl AxisWeights {
    /// Weights for resampling `n` inputs to `m` outputs (see the module docs of `preprocess`).
    pub fn new(n: usize, m: usize) -> AxisWeights {
        let scale = n as f64 / m as f64;
        let mut w = AxisWeights { start: Vec::with_capacity(m), offsets: vec![0], weights: Vec::new() };
        for o in 0..m {
            let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
            let j0 = a.floor() as usize;
            let j1 = (b.ceil() as usize).min(n);
            w.start.push(j0);
            for j in j0..j1 {
                let ov = (b.min(j as f64 + 1.0) - a.max(j as f64)).max(0.0);
                w.weights.push((ov / (b - a)) as f32);
            }
            w.offsets.push(w.weights.len());
        }
        w
    }

    /// The taps of output `o`.
    #[inline]
    pub fn taps(&self, o: usize) -> (usize, &[f32]) {
        (self.start[o], &self.weights[self.offsets[o]..self.offsets[o + 1]])
    }
}

/// The fast CPU implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct Cpu;

/// Scratch memory of one worker.
#[derive(Default)]
struct Scratch {
    row: Vec<f32>,
    tmp: Vec<f32>,
    plane: Vec<f32>,
}

/// Windowed (and masked) values of one row, into `out`. HU is computed in f64 and rounded to
/// f32 exactly as the definition says; the window then runs in f32.
fn window_row(pixels: &Pixels, start: usize, out: &mut [f32], w: &Window, mask: Option<&[u8]>) {
    let end = start + out.len();
    macro_rules! go {
        ($v:expr) => {
            for (o, &x) in out.iter_mut().zip(&$v[start..end]) {
                let hu = (f64::from(x) * w.slope + w.intercept) as f32;
                *o = ((hu - w.lo) * w.inv_width).clamp(0.0, 1.0);
            }
        };
    }
    match pixels {
        Pixels::U16(v) => go!(v),
        Pixels::I16(v) => go!(v),
        Pixels::F32(v) => go!(v),
    }
    if let Some(m) = mask {
        for (o, &k) in out.iter_mut().zip(&m[start..end]) {
            if k == 0 {
                *o = 0.0;
            }
        }
    }
}

/// The modality LUT and window of one slice.
struct Window {
    slope: f64,
    intercept: f64,
    lo: f32,
    inv_width: f32,
}

fn one(p: &Params, input: &Input<'_>, out: &mut [f32], s: &mut Scratch) {
    let (rows, cols, size) = (input.rows, input.cols, p.size);
    let wx = AxisWeights::new(cols, size);
    let wy = AxisWeights::new(rows, size);
    let w =
        Window { slope: input.rescale.slope, intercept: input.rescale.intercept, lo: (p.window_center - p.window_width / 2.0) as f32, inv_width: (1.0 / p.window_width) as f32 };
    s.row.resize(cols, 0.0);
    s.tmp.resize(rows * size, 0.0);
    s.plane.resize(size * size, 0.0);
    // Horizontal pass: rows × size.
    for r in 0..rows {
        window_row(input.pixels, r * cols, &mut s.row, &w, input.mask);
        let t = &mut s.tmp[r * size..(r + 1) * size];
        for (ox, v) in t.iter_mut().enumerate() {
            let (j0, w) = wx.taps(ox);
            *v = w.iter().zip(&s.row[j0..]).map(|(a, b)| a * b).sum();
        }
    }
    // Vertical pass: size × size, vectorised along the row.
    for oy in 0..size {
        let (j0, w) = wy.taps(oy);
        let dst = &mut s.plane[oy * size..(oy + 1) * size];
        dst.fill(0.0);
        for (k, &wk) in w.iter().enumerate() {
            let src = &s.tmp[(j0 + k) * size..(j0 + k + 1) * size];
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = wk.mul_add(x, *d);
            }
        }
    }
    // Normalise into the three channels.
    let plane_len = size * size;
    for c in 0..3 {
        let (m, inv) = (p.mean[c], 1.0 / p.std[c]);
        for (o, &v) in out[c * plane_len..(c + 1) * plane_len].iter_mut().zip(&s.plane) {
            *o = (v - m) * inv;
        }
    }
}

impl Preprocessor for Cpu {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn run(&self, p: &Params, inputs: &[Input<'_>], out: &mut [f32]) -> Result<(), PreprocessError> {
        check_batch(p, inputs, out)?;
        let len = p.slice_len();
        if inputs.len() == 1 {
            one(p, &inputs[0], out, &mut Scratch::default());
        } else {
            out.par_chunks_mut(len).zip(inputs.par_iter()).for_each_init(Scratch::default, |s, (o, i)| one(p, i, o, s));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_cover_the_source() {
        for (n, m) in [(512, 224), (224, 224), (100, 224), (7, 3), (3, 7), (1, 5)] {
            let w = AxisWeights::new(n, m);
            let mut coverage = vec![0f64; n];
            for o in 0..m {
                let (j0, taps) = w.taps(o);
                let sum: f32 = taps.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "{n}->{m} output {o}: {sum}");
                for (k, t) in taps.iter().enumerate() {
                    coverage[j0 + k] += f64::from(*t) * n as f64 / m as f64;
                }
            }
            // Each source pixel contributes exactly its own area in total.
            assert!(coverage.iter().all(|c| (c - 1.0).abs() < 1e-4), "{n}->{m}: {coverage:?}");
        }
    }
}
