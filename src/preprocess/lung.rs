//! Classic lung segmentation of one axial slice (no network), on Hounsfield units.
//!
//! 1. **Body**: pixels above −500 HU; the largest 4-connected component; holes filled (the lungs
//!    are holes in the body, so they are inside it now; the air around the patient is not).
//! 2. **Candidates**: air-density pixels (below −400 HU) inside the body.
//! 3. **Components**: 4-connected components of the candidates; those touching the image border
//!    those smaller than 0.25% of the image (bowel gas pockets, the trachea), and gas (median below −950 HU, or more than a quarter
//!    of its pixels below −980 HU: stomach and bowel gas is air, aerated lung is not) are dropped; the two largest are kept (one when the lungs
//!    merge at the front).
//! 4. **Fill and close**: holes filled (vessels, nodules), then a closing with a Euclidean disc of
//!    radius 3% of the image side (≈ 10 mm on a 512² slice of a 35 cm field) so that dense
//!    consolidations and pleural lesions at the lung edge stay inside, then holes filled again.
//!    A closing cannot restore the outer shell of a bite out of a flat boundary, so the mask is
//!    finally dilated by 1% of the side (≈ 3.5 mm): the pleural rim is kept and lesions against
//!    the chest wall stay inside; a triage aid must rather show a little chest wall than hide a
//!    lesion. Lesions wider than about 2 cm that push the lung boundary in are partly restored.
//!
//! `fraction` is the share of the image inside the mask.

/// Body threshold (HU).
pub const BODY_HU: f32 = -500.0;
/// Air-density threshold for lung candidates (HU).
pub const AIR_HU: f32 = -400.0;
/// A candidate whose median is below this is gas (stomach, bowel), not lung: aerated lung
/// holds vessels and interstitium (median about −830 to −890 HU here); gas is air (about −1000).
pub const GAS_MEDIAN_HU: f32 = -950.0;
/// HU below which a pixel is pure air.
pub const AIR_CORE_HU: f32 = -980.0;
/// A candidate with more than this share of pure-air pixels is gas (a small bowel pocket whose
/// wall raises its median), not lung.
pub const GAS_AIR_SHARE: f64 = 0.25;
/// Smallest kept lung component, as a share of the image.
pub const MIN_COMPONENT_FRACTION: f64 = 0.0025;
/// Closing radius, as a share of the larger image side.
pub const CLOSING_RADIUS_FRACTION: f64 = 0.03;
/// Final dilation radius, as a share of the larger image side: the pleural rim is kept so that
/// lesions against the chest wall stay inside (a triage aid must rather show too much).
pub const RIM_RADIUS_FRACTION: f64 = 0.01;

/// A lung mask.
#[derive(Debug, Clone, PartialEq)]
pub struct LungMask {
    /// 1 inside the lungs, row-major, `rows × cols`.
    pub mask: Vec<u8>,
    /// Share of the image inside the lungs.
    pub fraction: f32,
}

/// 4-connected components of `on`: a label per pixel (0 = off) and each label's size
/// (`sizes[0]` unused) and whether it touches the border.
fn components(on: &[bool], rows: usize, cols: usize) -> (Vec<u32>, Vec<usize>, Vec<bool>) {
    let mut labels = vec![0u32; on.len()];
    let mut sizes = vec![0usize];
    let mut border = vec![false];
    let mut stack = Vec::new();
    for seed in 0..on.len() {
        if !on[seed] || labels[seed] != 0 {
            continue;
        }
        let l = sizes.len() as u32;
        sizes.push(0);
        border.push(false);
        labels[seed] = l;
        stack.push(seed);
        while let Some(i) = stack.pop() {
            sizes[l as usize] += 1;
            let (r, c) = (i / cols, i % cols);
            if r == 0 || c == 0 || r + 1 == rows || c + 1 == cols {
                border[l as usize] = true;
            }
            let mut visit = |j: usize| {
                if on[j] && labels[j] == 0 {
                    labels[j] = l;
                    stack.push(j);
                }
            };
            if r > 0 {
                visit(i - cols);
            }
            if r + 1 < rows {
                visit(i + cols);
            }
            if c > 0 {
                visit(i - 1);
            }
            if c + 1 < cols {
                visit(i + 1);
            }
        }
    }
    (labels, sizes, border)
}

/// Sets every pixel of `m` that the border cannot reach through off pixels (a hole).
fn fill_holes(m: &mut [bool], rows: usize, cols: usize) {
    let off: Vec<bool> = m.iter().map(|&v| !v).collect();
    let (labels, _, border) = components(&off, rows, cols);
    for (v, &l) in m.iter_mut().zip(&labels) {
        if l != 0 && !border[l as usize] {
            *v = true;
        }
    }
}

/// 1-D squared Euclidean distance transform (Felzenszwalb & Huttenlocher), in place.
fn edt_1d(f: &mut [f32], v: &mut [usize], z: &mut [f32], d: &mut [f32]) {
    let n = f.len();
    let mut k = 0usize;
    v[0] = 0;
    z[0] = f32::NEG_INFINITY;
    z[1] = f32::INFINITY;
    for q in 1..n {
        if f[q] == f32::INFINITY {
            continue;
        }
        loop {
            let p = v[k];
            if f[p] == f32::INFINITY {
                // The only parabola so far is at infinity: replace it.
                v[k] = q;
                z[k] = f32::NEG_INFINITY;
                z[k + 1] = f32::INFINITY;
                break;
            }
            let s = ((f[q] + (q * q) as f32) - (f[p] + (p * p) as f32)) / (2.0 * (q as f32 - p as f32));
            if s <= z[k] && k > 0 {
                k -= 1;
                continue;
            }
            if s <= z[k] {
                v[k] = q;
                z[k + 1] = f32::INFINITY;
                break;
            }
            k += 1;
            v[k] = q;
            z[k] = s;
            z[k + 1] = f32::INFINITY;
            break;
        }
    }
    k = 0;
    for (q, dq) in d.iter_mut().enumerate().take(n) {
        while z[k + 1] < q as f32 {
            k += 1;
        }
        let p = v[k];
        *dq = if f[p] == f32::INFINITY { f32::INFINITY } else { (q as f32 - p as f32).powi(2) + f[p] };
    }
    f.copy_from_slice(&d[..n]);
}

/// Squared Euclidean distance from each pixel to the nearest pixel where `feature` is true.
pub fn distance_sq(feature: &[bool], rows: usize, cols: usize) -> Vec<f32> {
    let mut g: Vec<f32> = feature.iter().map(|&f| if f { 0.0 } else { f32::INFINITY }).collect();
    let n = rows.max(cols);
    let (mut v, mut z, mut d, mut line) = (vec![0usize; n], vec![0f32; n + 1], vec![0f32; n], vec![0f32; n]);
    for c in 0..cols {
        for r in 0..rows {
            line[r] = g[r * cols + c];
        }
        edt_1d(&mut line[..rows], &mut v, &mut z, &mut d);
        for r in 0..rows {
            g[r * cols + c] = line[r];
        }
    }
    for r in 0..rows {
        edt_1d(&mut g[r * cols..(r + 1) * cols], &mut v, &mut z, &mut d);
    }
    g
}

/// Morphological dilation of `m` with a Euclidean disc of `radius` pixels.
pub fn dilate(m: &[bool], rows: usize, cols: usize, radius: f32) -> Vec<bool> {
    distance_sq(m, rows, cols).iter().map(|&d| d <= radius * radius).collect()
}

/// Morphological closing of `m` with a Euclidean disc of `radius` pixels.
pub fn close(m: &[bool], rows: usize, cols: usize, radius: f32) -> Vec<bool> {
    let r2 = radius * radius;
    let dilated = dilate(m, rows, cols, radius);
    let outside: Vec<bool> = dilated.iter().map(|&v| !v).collect();
    let to_outside = distance_sq(&outside, rows, cols);
    // Outside the image counts as background too.
    (0..rows * cols)
        .map(|i| {
            let (r, c) = ((i / cols) as f32, (i % cols) as f32);
            let edge = r.min(c).min(rows as f32 - 1.0 - r).min(cols as f32 - 1.0 - c) + 1.0;
            dilated[i] && to_outside[i] > r2 && edge * edge > r2
        })
        .collect()
}

/// Side length (pixels) the segmentation works at: larger slices are averaged down by an integer
/// factor first (a 512² slice is segmented at 256²) and the mask is scaled back up.
pub const WORKING_SIDE: usize = 256;

/// Segments the lungs of one slice given in Hounsfield units (`rows × cols`, row-major).
///
/// A slice larger than [`WORKING_SIDE`] is reduced by the integer factor `f = side / 256`
/// (mean of each `f × f` block; leftover edge rows/columns join the last block) and segmented
/// there; each full-resolution pixel takes the mask value of its block.
pub fn segment(hu: &[f32], rows: usize, cols: usize) -> LungMask {
    assert_eq!(hu.len(), rows * cols, "hu has rows × cols values");
    let f = (rows.max(cols) / WORKING_SIDE).max(1);
    let (r2, c2) = ((rows / f).max(1), (cols / f).max(1));
    if f == 1 || r2 < 8 || c2 < 8 {
        return segment_at_full_resolution(hu, rows, cols);
    }
    let mut sum = vec![0f32; r2 * c2];
    let mut count = vec![0u32; r2 * c2];
    for r in 0..rows {
        let br = (r / f).min(r2 - 1);
        for c in 0..cols {
            let k = br * c2 + (c / f).min(c2 - 1);
            sum[k] += hu[r * cols + c];
            count[k] += 1;
        }
    }
    let small: Vec<f32> = sum.iter().zip(&count).map(|(s, &n)| s / n as f32).collect();
    let m = segment_at_full_resolution(&small, r2, c2);
    let mut mask = vec![0u8; rows * cols];
    for r in 0..rows {
        let br = (r / f).min(r2 - 1);
        for c in 0..cols {
            mask[r * cols + c] = m.mask[br * c2 + (c / f).min(c2 - 1)];
        }
    }
    let fraction = mask.iter().filter(|&&v| v != 0).count() as f32 / (rows * cols) as f32;
    LungMask { mask, fraction }
}

/// The segmentation itself, at the resolution given.
fn segment_at_full_resolution(hu: &[f32], rows: usize, cols: usize) -> LungMask {
    let n = rows * cols;
    // 1. Body.
    let above: Vec<bool> = hu.iter().map(|&v| v > BODY_HU).collect();
    let (labels, sizes, _) = components(&above, rows, cols);
    let Some(body_label) = (1..sizes.len()).max_by_key(|&l| sizes[l]) else {
        return LungMask { mask: vec![0; n], fraction: 0.0 };
    };
    let mut body: Vec<bool> = labels.iter().map(|&l| l as usize == body_label).collect();
    fill_holes(&mut body, rows, cols);
    // 2.–3. Air inside the body; the largest two inner components.
    let cand: Vec<bool> = hu.iter().zip(&body).map(|(&v, &b)| b && v < AIR_HU).collect();
    let (labels, sizes, border) = components(&cand, rows, cols);
    let min_size = (MIN_COMPONENT_FRACTION * n as f64).ceil() as usize;
    let mut values: Vec<Vec<f32>> = vec![Vec::new(); sizes.len()];
    for (&h, &l) in hu.iter().zip(&labels) {
        if l != 0 && sizes[l as usize] >= min_size && !border[l as usize] {
            values[l as usize].push(h);
        }
    }
    let mut kept: Vec<usize> = (1..sizes.len())
        .filter(|&l| {
            let v = &mut values[l];
            if v.is_empty() {
                return false;
            }
            let air = v.iter().filter(|&&h| h < AIR_CORE_HU).count() as f64 / v.len() as f64;
            let mid = v.len() / 2;
            let median = *v.select_nth_unstable_by(mid, f32::total_cmp).1;
            log::trace!("lung candidate: {} px, median {median} HU, {:.0}% below {AIR_CORE_HU} HU", sizes[l], air * 100.0);
            median >= GAS_MEDIAN_HU && air <= GAS_AIR_SHARE
        })
        .collect();
    kept.sort_by_key(|&l| std::cmp::Reverse(sizes[l]));
    kept.truncate(2);
    let mut lungs: Vec<bool> = labels.iter().map(|&l| l != 0 && kept.contains(&(l as usize))).collect();
    if kept.is_empty() {
        return LungMask { mask: vec![0; n], fraction: 0.0 };
    }
    // 4. Fill, close, fill.
    fill_holes(&mut lungs, rows, cols);
    let side = rows.max(cols) as f64;
    let lungs = close(&lungs, rows, cols, (CLOSING_RADIUS_FRACTION * side).max(1.0) as f32);
    let mut lungs = dilate(&lungs, rows, cols, (RIM_RADIUS_FRACTION * side).max(1.0) as f32);
    fill_holes(&mut lungs, rows, cols);
    let count = lungs.iter().filter(|&&v| v).count();
    LungMask { mask: lungs.iter().map(|&v| u8::from(v)).collect(), fraction: count as f32 / n as f32 }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;

    #[test]
    fn distance_transform_matches_brute_force() {
        let (rows, cols) = (9, 13);
        let feature: Vec<bool> = (0..rows * cols).map(|i| i % 17 == 3 || i == 50).collect();
        let d = distance_sq(&feature, rows, cols);
        for i in 0..rows * cols {
            let (r, c) = ((i / cols) as f32, (i % cols) as f32);
            let best = (0..rows * cols)
                .filter(|&j| feature[j])
                .map(|j| ((j / cols) as f32 - r).powi(2) + ((j % cols) as f32 - c).powi(2))
                .fold(f32::INFINITY, f32::min);
            assert_eq!(d[i], best, "pixel {i}");
        }
    }

    #[test]
    fn closing_fills_a_notch_and_keeps_a_disc() {
        let (rows, cols) = (40, 40);
        let disc = |r0: f32| -> Vec<bool> {
            (0..rows * cols).map(|i| (((i / cols) as f32 - 20.0).powi(2) + ((i % cols) as f32 - 20.0).powi(2)) <= r0 * r0).collect()
        };
        let full = disc(12.0);
        let mut notched = full.clone();
        for r in 18..23 {
            for c in 28..33 {
                notched[r * cols + c] = false; // a bite at the edge, like a pleural lesion
            }
        }
        let closed = close(&notched, rows, cols, 6.0);
        let dist = |i: usize| (((i / cols) as f32 - 20.0).powi(2) + ((i % cols) as f32 - 20.0).powi(2)).sqrt();
        for i in 0..rows * cols {
            // The closing restores the notch except a sliver at the rim, where the disc's own
            // boundary curves away from the structuring element.
            if dist(i) <= 10.0 {
                assert!(closed[i], "pixel {i} inside the disc must be filled");
            }
            if dist(i) > 12.5 {
                assert!(!closed[i], "pixel {i} outside the disc must stay out");
            }
        }
        assert_eq!(close(&full, rows, cols, 6.0), full, "a convex shape is its own closing");
    }
}
