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
