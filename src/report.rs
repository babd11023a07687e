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

/// An RGB drawing surface with the few primitives the reports need: pixels, rectangles, lines
/// and text in an 8 × 8 bitmap font (printable ASCII; `font8x8`'s public-domain glyphs), scaled
/// by whole pixels.
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Row-major RGB.
    pub rgb: Vec<u8>,
}

/// Width and height of one glyph at scale 1.
pub const GLYPH: usize = 8;

impl Canvas {
    /// A canvas filled with `bg`.
    pub fn new(width: usize, height: usize, bg: [u8; 3]) -> Canvas {
        Canvas { width, height, rgb: bg.iter().copied().cycle().take(width * height * 3).collect() }
    }

    /// Sets one pixel (outside the canvas: ignored).
    pub fn put(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.rgb[i..i + 3].copy_from_slice(&c);
        }
    }

    /// Fills a rectangle.
    pub fn fill(&mut self, x: i64, y: i64, w: usize, h: usize, c: [u8; 3]) {
        for dy in 0..h as i64 {
            for dx in 0..w as i64 {
                self.put(x + dx, y + dy, c);
            }
        }
    }

    /// A straight line `w` pixels either side of its centre.
    pub fn line(&mut self, a: (f64, f64), b: (f64, f64), c: [u8; 3], w: i64) {
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()) * 2.0).ceil().max(1.0) as usize;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let (x, y) = ((a.0 + (b.0 - a.0) * t).round() as i64, (a.1 + (b.1 - a.1) * t).round() as i64);
            for dx in -w..=w {
                for dy in -w..=w {
                    self.put(x + dx, y + dy, c);
                }
            }
        }
    }

    /// Text with its top-left corner at (`x`, `y`), each glyph pixel drawn `scale × scale`;
    /// characters outside printable ASCII show as `?`. Returns the width drawn.
    pub fn text(&mut self, x: i64, y: i64, s: &str, scale: usize, c: [u8; 3]) -> usize {
        for (k, ch) in s.chars().enumerate() {
            let code = if ch.is_ascii() && !ch.is_ascii_control() { ch as usize } else { '?' as usize };
            let glyph = font8x8::legacy::BASIC_LEGACY[code];
            let gx = x + (k * GLYPH * scale) as i64;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..GLYPH {
                    if bits >> col & 1 == 1 {
                        self.fill(gx + (col * scale) as i64, y + (row * scale) as i64, scale, scale, c);
                    }
                }
            }
        }
        s.chars().count() * GLYPH * scale
    }

    /// Writes the canvas as a PNG file.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        write_png_rgb(path, self.width as u32, self.height as u32, &self.rgb)
    }
}

/// What the ROC picture says besides the curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RocLabels {
    /// Area under the curve, if defined.
    pub auc: Option<f64>,
    /// The operating point: threshold in use and its (false positive rate, true positive rate).
    pub operating: Option<(f64, f64, f64)>,
    /// Positive and negative slices.
    pub counts: (usize, usize),
}

/// Draws a ROC curve (false positive rate → x, true positive rate → y) as a 560 × 560 PNG: a
/// grid every 0.1 with tick labels, axis titles, the chance diagonal in grey, the curve in
/// blue, the AUC and counts in the title, and the operating point (the threshold in use) as a
/// red dot with its sensitivity and specificity. `points`: (false positive rate, true positive
/// rate) in curve order.
pub fn write_roc_png(path: &Path, points: &[(f64, f64)], labels: &RocLabels) -> std::io::Result<()> {
    const S: usize = 560;
    const L: usize = 64; // left margin (tick labels, axis title)
    const T: usize = 48; // top margin (title)
    const P: usize = 460; // plot side
    let black = [0, 0, 0];
    let mut cv = Canvas::new(S, S, [255, 255, 255]);
    let to_px = |fx: f64, fy: f64| (L as f64 + fx * P as f64, (T + P) as f64 - fy * P as f64);
    for k in 0..=10 {
        let v = k * P / 10;
        let c = if k == 0 || k == 10 { black } else { [225, 225, 225] };
        cv.line(((L + v) as f64, T as f64), ((L + v) as f64, (T + P) as f64), c, 0);
        cv.line((L as f64, (T + v) as f64), ((L + P) as f64, (T + v) as f64), c, 0);
        if k % 5 == 0 {
            let label = format!("{:.1}", k as f64 / 10.0);
            cv.text((L + v) as i64 - 12, (T + P + 6) as i64, &label, 1, black);
            cv.text(L as i64 - 30, (T + P - v) as i64 - 4, &label, 1, black);
        }
    }
    cv.text(L as i64 + 90, (T + P + 22) as i64, "False positive rate (1 - specificity)", 1, black);
    cv.text(4, T as i64 - 14, "True positive rate (sensitivity)", 1, black);
    let auc = labels.auc.map(|a| format!("{a:.3}")).unwrap_or_else(|| "n/a".into());
    cv.text(L as i64, 8, &format!("ROC  AUC {auc}  ({} pos, {} neg)", labels.counts.0, labels.counts.1), 2, black);
    cv.line(to_px(0.0, 0.0), to_px(1.0, 1.0), [160, 160, 160], 0);
    for w in points.windows(2) {
        cv.line(to_px(w[0].0, w[0].1), to_px(w[1].0, w[1].1), [20, 70, 200], 1);
    }
    if let Some((thr, fpr, tpr)) = labels.operating {
        let (x, y) = to_px(fpr, tpr);
        cv.fill(x as i64 - 4, y as i64 - 4, 9, 9, [210, 30, 30]);
        let text = format!("threshold {thr:.3}: sens {tpr:.2}, spec {:.2}", 1.0 - fpr);
        let tx = (x as i64 + 10).min((S - text.len() * GLYPH - 4) as i64);
        let ty = if y as i64 + 14 < (T + P) as i64 { y as i64 + 8 } else { y as i64 - 16 };
        cv.text(tx, ty, &text, 1, [210, 30, 30]);
    }
    cv.save(path)
}

/// A colour for `t` in [0, 1]: blue → cyan → yellow → red (a "jet"-like ramp).
fn ramp(t: f32) -> [f32; 3] {
    let t = t.clamp(0.0, 1.0);
    let r = (1.5 - (4.0 * t - 3.0).abs()).clamp(0.0, 1.0);
    let g = (1.5 - (4.0 * t - 2.0).abs()).clamp(0.0, 1.0);
    let b = (1.5 - (4.0 * t - 1.0).abs()).clamp(0.0, 1.0);
    [r, g, b]
}

/// What a heat map is labelled with.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapLabel {
    /// The series key (never a patient identifier).
    pub series_key: String,
    /// Which image: Instance Number (`#12`) or frame.
    pub image: String,
    /// The slice's probability.
    pub prob: f32,
    /// The threshold in force.
    pub threshold: f64,
}

/// The words burned into every heat map.
pub const NOT_FOR_DIAGNOSIS: &str = "NOT FOR DIAGNOSTIC USE";

/// The class activation map (`side × side`) over the windowed slice, confined to the lung mask
/// `mask` (1 inside; `None`: the whole image): the map is bilinearly upsampled to the image (cell
/// centres at the centres of the image's `side × side` blocks), scaled to its own [min, max]
/// and blended (45%) over the grey image where it is above a quarter of its range. A colour bar
/// (relative activation, low to high) stands on the right; below the image, the series key,
/// image, probability and threshold, and [`NOT_FOR_DIAGNOSIS`]. `hu` is `rows × cols`.
#[allow(clippy::too_many_arguments)]
pub fn write_heatmap_png(
    path: &Path,
    hu: &[f32],
    rows: usize,
    cols: usize,
    window: (f64, f64),
    cam: &[f32],
    side: usize,
    mask: Option<&[u8]>,
    label: &HeatmapLabel,
) -> std::io::Result<()> {
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
    let scale = (cols / 256).max(1);
    let line_h = GLYPH * scale + 4 * scale;
    let bar_w = 6 * GLYPH * scale;
    let mut cv = Canvas::new(cols + bar_w, rows + 2 * line_h + 4 * scale, [0, 0, 0]);
    for r in 0..rows {
        for c in 0..cols {
            let g = ((f64::from(hu[r * cols + c]) - lo) / width).clamp(0.0, 1.0) as f32;
            let inside = mask.is_none_or(|m| m[r * cols + c] != 0);
            let t = if inside { sample(r, c) } else { 0.0 };
            let px = if t > 0.25 {
                let col = ramp(t);
                [0, 1, 2].map(|k| ((0.55 * g + 0.45 * col[k]) * 255.0).round() as u8)
            } else {
                let v = (g * 255.0).round() as u8;
                [v, v, v]
            };
            cv.put(c as i64, r as i64, px);
        }
    }
    // Colour bar: high at the top.
    let (bx, bw) = ((cols + 2 * scale) as i64, 2 * GLYPH * scale);
    let (top, bottom) = ((line_h) as i64, rows as i64 - line_h as i64);
    for y in top..bottom.max(top + 1) {
        let t = 1.0 - (y - top) as f32 / (bottom - top).max(1) as f32;
        let col = ramp(0.25 + 0.75 * t).map(|v| (v * 255.0).round() as u8);
        cv.fill(bx, y, bw, 1, col);
    }
    let white = [255, 255, 255];
    cv.text(bx, 2 * scale as i64, "high", scale, white);
    cv.text(bx, bottom + 2 * scale as i64, "low", scale, white);
    let y0 = (rows + 2 * scale) as i64;
    cv.text(2, y0, &format!("{} {} p={:.3} thr={:.3}", label.series_key, label.image, label.prob, label.threshold), scale, white);
    cv.text(2, y0 + line_h as i64, NOT_FOR_DIAGNOSIS, scale, [255, 200, 0]);
    cv.save(path)
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
/// model's window (`params`), confined to the lungs (segmented here, whatever the model's
/// manifest says about masking), labelled with `series_key`, the image, `prob` and
/// `threshold`; see [`write_heatmap_png`].
pub fn write_slice_heatmap(
    path: &Path,
    slice: &crate::ingest::Slice,
    params: &crate::preprocess::Params,
    cam: &[f32],
    series_key: &str,
    prob: f32,
    threshold: f64,
) -> std::io::Result<()> {
    let hu = slice.hu().into_raw_vec_and_offset().0;
    let mask = crate::preprocess::lung::segment(&hu, slice.rows, slice.cols);
    let image = match slice.geometry.instance_number {
        Some(n) => format!("#{n}"),
        None => format!("frame {}", slice.frame),
    };
    let label = HeatmapLabel { series_key: series_key.to_string(), image, prob, threshold };
    write_heatmap_png(path, &hu, slice.rows, slice.cols, (params.window_center, params.window_width), cam, crate::engine::CAM_SIDE, Some(&mask.mask), &label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_png(path: &Path) -> (usize, usize, Vec<u8>) {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size()];
        let info = r.next_frame(&mut buf).unwrap();
        (info.width as usize, info.height as usize, buf[..info.buffer_size()].to_vec())
    }

    #[test]
    fn text_draws_the_glyph_bits_scaled() {
        let mut cv = Canvas::new(40, 20, [0, 0, 0]);
        let w = cv.text(0, 0, "I1", 2, [255, 255, 255]);
        assert_eq!(w, 32);
        let lit = |cv: &Canvas, x: usize, y: usize| cv.rgb[(y * cv.width + x) * 3] == 255;
        let glyph = font8x8::legacy::BASIC_LEGACY['I' as usize];
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..GLYPH {
                let on = bits >> col & 1 == 1;
                assert_eq!(lit(&cv, 2 * col, 2 * row), on, "I at ({col},{row})");
                assert_eq!(lit(&cv, 2 * col + 1, 2 * row + 1), on);
            }
        }
        assert!((32..40).all(|x| (0..20).all(|y| !lit(&cv, x, y))), "nothing past the text");
    }

    #[test]
    fn heat_map_is_confined_to_the_mask_and_labelled() {
        let dir = tempfile::tempdir().unwrap();
        let (rows, cols) = (64, 64);
        let hu = vec![-600.0f32; rows * cols];
        // Left half is "lung"; the map is hottest on the left.
        let mask: Vec<u8> = (0..rows * cols).map(|i| u8::from(i % cols < cols / 2)).collect();
        let cam: Vec<f32> = (0..49).map(|i| 1.0 - (i % 7) as f32 / 6.0).collect();
        let label = HeatmapLabel { series_key: "1a2b3c4d".into(), image: "#3".into(), prob: 0.9, threshold: 0.5 };
        let p = dir.path().join("h.png");
        write_heatmap_png(&p, &hu, rows, cols, (-600.0, 1500.0), &cam, 7, Some(&mask), &label).unwrap();
        let (w, h, rgb) = read_png(&p);
        assert_eq!(w, cols + 6 * GLYPH);
        assert!(h > rows + 2 * GLYPH, "a label band under the image");
        let px = |x: usize, y: usize| [rgb[(y * w + x) * 3], rgb[(y * w + x) * 3 + 1], rgb[(y * w + x) * 3 + 2]];
        let grey = |p: [u8; 3]| p[0] == p[1] && p[1] == p[2];
        assert!((0..rows).all(|y| (cols / 2..cols).all(|x| grey(px(x, y)))), "no colour outside the lungs");
        assert!((0..rows).any(|y| (0..cols / 2).any(|x| !grey(px(x, y)))), "colour inside");
        assert!((rows..h).any(|y| (0..cols).any(|x| px(x, y) == [255, 200, 0])), "the warning is written");
    }
}
