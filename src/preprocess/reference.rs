//! The reference preprocessor: plain scalar code for the whole chain, written to be obviously
//! correct rather than fast (f64 throughout, the 2-D area integral computed directly). Every
//! faster implementation is tested against it.

use super::{check_batch, Input, Params, PreprocessError, Preprocessor};

/// The reference implementation.
#[derive(Debug, Default, Clone, Copy)]
pub struct Reference;

/// Overlap of source pixel `[j, j+1)` with `[a, b)`.
fn overlap(j: usize, a: f64, b: f64) -> f64 {
    let (lo, hi) = (a.max(j as f64), b.min(j as f64 + 1.0));
    (hi - lo).max(0.0)
}

impl Preprocessor for Reference {
    fn name(&self) -> &'static str {
        "reference"
    }

    fn run(&self, p: &Params, inputs: &[Input<'_>], out: &mut [f32]) -> Result<(), PreprocessError> {
        check_batch(p, inputs, out)?;
        let s = p.size;
        let lo = p.window_center - p.window_width / 2.0;
        for (n, input) in inputs.iter().enumerate() {
            let (rows, cols) = (input.rows, input.cols);
            // Steps 1–3: HU, window, mask, at full resolution.
            let windowed: Vec<f64> = (0..rows * cols)
                .map(|i| {
                    let hu = (input.pixels.get(i) * input.rescale.slope + input.rescale.intercept) as f32 as f64;
                    let v = ((hu - lo) / p.window_width).clamp(0.0, 1.0);
                    match input.mask {
                        Some(m) if m[i] == 0 => 0.0,
                        _ => v,
                    }
                })
                .collect();
            // Step 4: area-weighted resize, the 2-D integral over each output rectangle.
            let (sy, sx) = (rows as f64 / s as f64, cols as f64 / s as f64);
            for oy in 0..s {
                let (ay, by) = (oy as f64 * sy, (oy + 1) as f64 * sy);
                for ox in 0..s {
                    let (ax, bx) = (ox as f64 * sx, (ox + 1) as f64 * sx);
                    let mut acc = 0.0;
                    for j in (ay.floor() as usize)..(by.ceil() as usize).min(rows) {
                        let wy = overlap(j, ay, by);
                        for i in (ax.floor() as usize)..(bx.ceil() as usize).min(cols) {
                            acc += wy * overlap(i, ax, bx) * windowed[j * cols + i];
                        }
                    }
                    let v = acc / ((by - ay) * (bx - ax));
                    // Steps 5–6: normalise per channel, NCHW.
                    for c in 0..3 {
                        out[((n * 3 + c) * s + oy) * s + ox] = ((v - f64::from(p.mean[c])) / f64::from(p.std[c])) as f32;
                    }
                }
            }
        }
        Ok(())
    }
}
