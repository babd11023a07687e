//! Pictures for people: PNG writing shared by `prep --png` and the evaluation reports.

use std::path::Path;

/// Writes 8-bit RGB pixels (`width × height × 3`, row-major) as a PNG file.
pub fn write_png_rgb(path: &Path, width: u32, height: u32, rgb: &[u8]) -> std::io::Result<()> {
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut enc = png::Encoder::new(file, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(std::io::Error::other)?;
    w.write_image_data(rgb).map_err(std::io::Error::other)?;
    w.finish().map_err(std::io::Error::other)
}

/// Draws a ROC curve (false positive rate → x, true positive rate → y) as a 480 × 480 PNG: a
/// grid every 0.1, the chance diagonal in grey, the curve in blue. (No text: the AUC and the
/// points are in the accompanying CSV and JSON.)
pub fn write_roc_png(path: &Path, points: &[crate::metrics::RocPoint]) -> std::io::Result<()> {
    const S: usize = 480;
    const M: usize = 20;
    let plot = S - 2 * M;
    let mut rgb = vec![255u8; S * S * 3];
    let mut put = |x: usize, y: usize, c: [u8; 3]| {
        if x < S && y < S {
            rgb[(y * S + x) * 3..(y * S + x) * 3 + 3].copy_from_slice(&c);
        }
    };
    let to_px = |fx: f64, fy: f64| (M as f64 + fx * plot as f64, (S - M) as f64 - fy * plot as f64);
    for k in 0..=10 {
        let v = M + k * plot / 10;
        let c = if k == 0 || k == 10 { [0, 0, 0] } else { [225, 225, 225] };
        for t in M..=S - M {
            put(v, t, c);
            put(t, v, c);
        }
    }
    let mut line = |a: (f64, f64), b: (f64, f64), c: [u8; 3], w: i64| {
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            for dx in -w..=w {
                for dy in -w..=w {
                    put((x.round() as i64 + dx) as usize, (y.round() as i64 + dy) as usize, c);
                }
            }
        }
    };
    line(to_px(0.0, 0.0), to_px(1.0, 1.0), [160, 160, 160], 0);
    for w in points.windows(2) {
        line(to_px(w[0].fpr, w[0].tpr), to_px(w[1].fpr, w[1].tpr), [20, 70, 200], 1);
    }
    write_png_rgb(path, S as u32, S as u32, &rgb)
}

/// A colour for `t` in [0, 1]: blue → cyan → yellow → red (a "jet"-like ramp).
fn ramp(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let r = (1.5 - (4.0 * t - 3.0).abs()).clamp(0.0, 1.0);
    let g = (1.5 - (4.0 * t - 2.0).abs()).clamp(0.0, 1.0);
    let b = (1.5 - (4.0 * t - 1.0).abs()).clamp(0.0, 1.0);
    [r, g, b]
}

/// The class activation map (`side × side`) over the windowed slice: the map is bilinearly
/// upsampled to the image (cell centres at the centres of the image's `side × side` blocks),
/// scaled to its own [min, max] and blended (45%) over the grey image where it is above a
/// quarter of its range. `hu` is `rows × cols`.
pub fn write_heatmap_png(path: &Path, hu: &[f32], rows: usize, cols: usize, window: (f64, f64), cam: &[f32], side: usize) -> std::io::Result<()> {
    let (lo, width) = (window.0 - window.1 / 2.0, window.1);
    let (mn, mx) = cam.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = if mx > mn { mx - mn } else { 1.0 };
    let sample = |r: usize, c: usize| -> f32 {
        let fy = ((r as f32 + 0.5) / rows as f32 * side as f32 - 0.5).clamp(0.0, (side - 1) as f32);
        let fx = ((c as f32 + 0.5) / cols as f32 * side as f32 - 0.5).clamp(0.0, (side - 1) as f32);
        let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
        let (y1, x1) = ((y0 + 1).min(side - 1), (x0 + 1).min(side - 1));
        let (ty, tx) = (fy - y0 as f32, fx - x0 as f32);
        let at = |y: usize, x: usize| cam[y * side + x];
        let top = at(y0, x0) * (1.0 - tx) + at(y0, x1) * tx;
        let bottom = at(y1, x0) * (1.0 - tx) + at(y1, x1) * tx;
        (top * (1.0 - ty) + bottom * ty - mn) / span
    };
    let mut rgb = Vec::with_capacity(rows * cols * 3);
    for r in 0..rows {
        for c in 0..cols {
            let g = ((f64::from(hu[r * cols + c]) - lo) / width).clamp(0.0, 1.0) as f32;
            let t = sample(r, c);
            let px = if t > 0.25 {
                let col = ramp(t);
                [0, 1, 2].map(|k| ((0.55 * g + 0.45 * col[k]) * 255.0).round() as u8)
            } else {
                let v = (g * 255.0).round() as u8;
                [v, v, v]
            };
            rgb.extend_from_slice(&px);
        }
    }
    write_png_rgb(path, cols as u32, rows as u32, &rgb)
}

/// A one-line progress indicator on stderr, shown only when stderr is a terminal (scripts and
/// logs never see it), redrawn at most every 100 ms.
pub struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    shown: Option<std::time::Instant>,
    enabled: bool,
}

impl Progress {
    /// A progress line for `total` items.
    pub fn new(label: &'static str, total: usize) -> Progress {
        use std::io::IsTerminal;
        Progress { label, total, done: 0, shown: None, enabled: std::io::stderr().is_terminal() }
    }

    /// Counts `n` more items done.
    pub fn add(&mut self, n: usize) {
        self.done += n;
        if self.enabled && self.shown.is_none_or(|t| t.elapsed().as_millis() >= 100) {
            eprint!("\r{} {}/{} ({:.0}%)  ", self.label, self.done, self.total, 100.0 * self.done as f64 / self.total.max(1) as f64);
            self.shown = Some(std::time::Instant::now());
        }
    }

    /// Clears the line.
    pub fn finish(self) {
        if self.enabled && self.shown.is_some() {
            eprint!("\r{}\r", " ".repeat(self.label.len() + 32));
        }
    }
}

/// The heat map of one slice: its class activation map `cam` (7 × 7) over the slice shown in the
/// model's window (`params`); see [`write_heatmap_png`].
pub fn write_slice_heatmap(path: &Path, slice: &crate::ingest::Slice, params: &crate::preprocess::Params, cam: &[f32]) -> std::io::Result<()> {
    let hu = slice.hu().into_raw_vec_and_offset().0;
    write_heatmap_png(path, &hu, slice.rows, slice.cols, (params.window_center, params.window_width), cam, crate::engine::CAM_SIDE)
}
