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

/// The runs of set pixels of one row: `(first column, one past the last)`, left to right.
fn row_runs(line: &[bool]) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut c = 0;
    std::iter::from_fn(move || {
        while c < line.len() && !line[c] {
            c += 1;
        }
        let s = c;
        while c < line.len() && line[c] {
            c += 1;
        }
        (c > s).then_some((s, c))
    })
}

/// The runs of set pixels of `on`, row by row, each as (row, first column, one past the last),
/// in raster order, with the root of each run's 4-connected component: the smallest index of its
/// runs (each row's runs are joined by union-find with the runs above that they touch).
fn connected_runs(on: &[bool], cols: usize) -> (Vec<(u32, u32, u32)>, Vec<u32>) {
    let mut runs: Vec<(u32, u32, u32)> = Vec::new();
    let mut parent: Vec<u32> = Vec::new();
    fn find(parent: &mut [u32], mut x: u32) -> u32 {
        while parent[x as usize] != x {
            let up = parent[parent[x as usize] as usize];
            parent[x as usize] = up;
            x = up;
        }
        x
    }
    let mut above = 0..0;
    for (r, line) in on.chunks_exact(cols).enumerate() {
        let start = runs.len();
        let mut p = above.start;
        for (s, c) in row_runs(line) {
            let id = runs.len() as u32;
            runs.push((r as u32, s as u32, c as u32));
            parent.push(id);
            // Runs of the row above sharing a column with [s, c) are 4-connected to it.
            while p < above.end && (runs[p].2 as usize) <= s {
                p += 1;
            }
            let mut q = p;
            while q < above.end && (runs[q].1 as usize) < c {
                let (a, b) = (find(&mut parent, id), find(&mut parent, q as u32));
                // The smaller index (the earlier run) stays the root.
                if a != b {
                    parent[a.max(b) as usize] = a.min(b);
                }
                q += 1;
            }
        }
        above = start..runs.len();
    }
    // Roots are smaller than the runs under them: one pass in order resolves every run.
    for i in 0..parent.len() {
        parent[i] = parent[parent[i] as usize];
    }
    (runs, parent)
}

/// [`components`] by runs ([`connected_runs`]), labelled in the order of each component's first
/// pixel in raster order, which is the order [`components`]' seeds find them in: the very same
/// labels, sizes and border flags, with work per run instead of per pixel.
fn components_by_runs(on: &[bool], rows: usize, cols: usize) -> (Vec<u32>, Vec<usize>, Vec<bool>) {
    let (runs, root) = connected_runs(on, cols);
    let mut labels = vec![0u32; on.len()];
    let mut sizes = vec![0usize];
    let mut border = vec![false];
    let mut label_of_root = vec![0u32; runs.len()];
    for (i, &(r, s, e)) in runs.iter().enumerate() {
        let root = root[i] as usize;
        if label_of_root[root] == 0 {
            label_of_root[root] = sizes.len() as u32;
            sizes.push(0);
            border.push(false);
        }
        let l = label_of_root[root];
        let (r, s, e) = (r as usize, s as usize, e as usize);
        labels[r * cols + s..r * cols + e].fill(l);
        sizes[l as usize] += e - s;
        if r == 0 || r + 1 == rows || s == 0 || e == cols {
            border[l as usize] = true;
        }
    }
    (labels, sizes, border)
}

/// Sets every pixel of `m` that the border cannot reach through unset pixels (a hole), by the
/// runs of unset pixels ([`connected_runs`]): the same result as [`fill_holes`].
fn fill_holes_by_runs(m: &mut [bool], rows: usize, cols: usize) {
    let off: Vec<bool> = m.iter().map(|&v| !v).collect();
    let (runs, root) = connected_runs(&off, cols);
    let mut open = vec![false; runs.len()];
    for (i, &(r, s, e)) in runs.iter().enumerate() {
        if r == 0 || r as usize + 1 == rows || s == 0 || e as usize == cols {
            open[root[i] as usize] = true;
        }
    }
    for (i, &(r, s, e)) in runs.iter().enumerate() {
        if !open[root[i] as usize] {
            let at = r as usize * cols;
            m[at + s as usize..at + e as usize].fill(true);
        }
    }
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

/// Which morphology implementation [`segment_with`] uses. Both give the same masks; the tests
/// and `cargo bench --bench preprocess` check it on every slice they see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Morphology {
    /// Dilation and closing by row spans of the disc stamped from boundary pixels only (on the
    /// lungs' bounding box), component labelling and hole filling by runs of pixels joined by
    /// union-find: the fast one, in use.
    Spans,
    /// Dilation and closing through full-image Euclidean distance transforms, hole filling by
    /// labelling every background component: the first implementation, kept whole (with its
    /// block reduction) as the reference.
    DistanceTransform,
}

/// Segments the lungs of one slice given in Hounsfield units (`rows × cols`, row-major).
///
/// A slice larger than [`WORKING_SIDE`] is reduced by the integer factor `f = side / 256`
/// (mean of each `f × f` block; leftover edge rows/columns join the last block) and segmented
/// there; each full-resolution pixel takes the mask value of its block.
pub fn segment(hu: &[f32], rows: usize, cols: usize) -> LungMask {
    segment_with(hu, rows, cols, Morphology::Spans)
}

/// [`segment`] with the implementation `how` ([`Morphology::DistanceTransform`]: the first
/// implementation whole, its block reduction included, as it was before the fast one).
pub fn segment_with(hu: &[f32], rows: usize, cols: usize, how: Morphology) -> LungMask {
    assert_eq!(hu.len(), rows * cols, "hu has rows × cols values");
    match how {
        Morphology::Spans => segment_blocks(rows, cols, how, |r, out: &mut [f32]| out.copy_from_slice(&hu[r * cols..(r + 1) * cols])),
        Morphology::DistanceTransform => segment_first(hu, rows, cols),
    }
}

/// The first implementation's block reduction, unchanged (the reference).
fn segment_first(hu: &[f32], rows: usize, cols: usize) -> LungMask {
    let how = Morphology::DistanceTransform;
    let f = (rows.max(cols) / WORKING_SIDE).max(1);
    let (r2, c2) = ((rows / f).max(1), (cols / f).max(1));
    if f == 1 || r2 < 8 || c2 < 8 {
        return segment_at_full_resolution(hu, rows, cols, how);
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
    let m = segment_at_full_resolution(&small, r2, c2, how);
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

/// [`segment`] of a decoded slice, converting each row to Hounsfield units as it is averaged
/// down (no full-size copy of the slice): the same mask as `segment(&slice.hu(), …)`.
pub fn segment_slice(slice: &crate::ingest::Slice) -> LungMask {
    use crate::ingest::Pixels;
    let (rows, cols, s, b) = (slice.rows, slice.cols, slice.rescale.slope, slice.rescale.intercept);
    let f = (rows.max(cols) / WORKING_SIDE).max(1);
    // Integer pixels with slope 1 and a whole intercept (most CT): each block's HU sum is a whole
    // number under 2^24, which f32 holds exactly in any order, so summing the stored integers and
    // adding the intercept once gives the very sums the definition's f32 additions give.
    let exact = s == 1.0 && b.fract() == 0.0 && ((f * f) as f64) * (65_536.0 + b.abs()) < 16_777_216.0;
    match &slice.pixels {
        Pixels::I16(v) if exact && f > 1 => segment_integer_blocks(v, rows, cols, b),
        Pixels::U16(v) if exact && f > 1 => segment_integer_blocks(v, rows, cols, b),
        _ => segment_blocks(rows, cols, Morphology::Spans, |r, out: &mut [f32]| {
            let range = r * cols..(r + 1) * cols;
            match &slice.pixels {
                Pixels::U16(v) => out.iter_mut().zip(&v[range]).for_each(|(o, &p)| *o = (f64::from(p) * s + b) as f32),
                Pixels::I16(v) => out.iter_mut().zip(&v[range]).for_each(|(o, &p)| *o = (f64::from(p) * s + b) as f32),
                Pixels::F32(v) => out.iter_mut().zip(&v[range]).for_each(|(o, &p)| *o = (f64::from(p) * s + b) as f32),
            }
        }),
    }
}

/// Mean Hounsfield units of `slice` inside `mask` (1 = lung), or `None` when the mask is empty or
/// does not fit the slice. What drift watching compares across series: a scanner whose
/// calibration or protocol changes moves it.
pub fn mean_hu_inside(slice: &crate::ingest::Slice, mask: &LungMask) -> Option<f64> {
    use crate::ingest::Pixels;
    if mask.mask.len() != slice.rows * slice.cols {
        return None;
    }
    let (s, b) = (slice.rescale.slope, slice.rescale.intercept);
    let (mut sum, mut n) = (0f64, 0usize);
    let mut add = |m: u8, v: f64| {
        if m != 0 {
            sum += v * s + b;
            n += 1;
        }
    };
    match &slice.pixels {
        Pixels::U16(v) => v.iter().zip(&mask.mask).for_each(|(&p, &m)| add(m, f64::from(p))),
        Pixels::I16(v) => v.iter().zip(&mask.mask).for_each(|(&p, &m)| add(m, f64::from(p))),
        Pixels::F32(v) => v.iter().zip(&mask.mask).for_each(|(&p, &m)| add(m, f64::from(p))),
    }
    (n > 0).then(|| sum / n as f64)
}

/// The block reduction of [`segment_slice`] on integer pixels (see there why it is exact).
fn segment_integer_blocks<T: Copy + Into<i64>>(pixels: &[T], rows: usize, cols: usize, intercept: f64) -> LungMask {
    let f = (rows.max(cols) / WORKING_SIDE).max(1);
    let (r2, c2) = ((rows / f).max(1), (cols / f).max(1));
    if r2 < 8 || c2 < 8 {
        let hu: Vec<f32> = pixels.iter().map(|&p| (p.into() as f64 + intercept) as f32).collect();
        return segment_at_full_resolution(&hu, rows, cols, Morphology::Spans);
    }
    let blocks = Blocks::new(rows, cols, f);
    let mut sum = vec![0i64; r2 * c2];
    for (r, line) in pixels.chunks_exact(cols).enumerate() {
        let base = (r / f).min(r2 - 1) * c2;
        for (&p, &bc) in line.iter().zip(&blocks.block_of) {
            sum[base + bc] += p.into();
        }
    }
    let b = intercept as i64;
    let small: Vec<f32> = sum.iter().zip(&blocks.count).map(|(&s, &n)| (s + i64::from(n) * b) as f32 / n as f32).collect();
    scale_up(&small, &blocks, rows, cols, Morphology::Spans)
}

/// The blocks of the reduction by `f`: column `c` is in block column `block_of[c]` (the last one
/// takes the leftover columns, as the last block row takes the leftover rows), and `count` holds
/// each block's pixel count, row-major (counted once, not per pixel).
struct Blocks {
    f: usize,
    block_of: Vec<usize>,
    count: Vec<u32>,
}

impl Blocks {
    fn new(rows: usize, cols: usize, f: usize) -> Blocks {
        let (r2, c2) = ((rows / f).max(1), (cols / f).max(1));
        let span = |j: usize, n: usize, last: usize| (j * f, if j == last { n } else { (j + 1) * f });
        let col_spans: Vec<(usize, usize)> = (0..c2).map(|j| span(j, cols, c2 - 1)).collect();
        let count = (0..r2)
            .flat_map(|i| {
                let (a, b) = span(i, rows, r2 - 1);
                col_spans.iter().map(move |&(c, d)| ((b - a) * (d - c)) as u32)
            })
            .collect();
        Blocks { f, block_of: (0..cols).map(|c| (c / f).min(c2 - 1)).collect(), count }
    }
}

/// The block-mean reduction of [`segment`], reading the image a row at a time through `row`
/// (row index, output of `cols` HU values); sums in row-major order, as the definition does.
fn segment_blocks(rows: usize, cols: usize, how: Morphology, mut row: impl FnMut(usize, &mut [f32])) -> LungMask {
    let f = (rows.max(cols) / WORKING_SIDE).max(1);
    let (r2, c2) = ((rows / f).max(1), (cols / f).max(1));
    let mut line = vec![0f32; cols];
    if f == 1 || r2 < 8 || c2 < 8 {
        let mut hu = vec![0f32; rows * cols];
        for (r, out) in hu.chunks_exact_mut(cols).enumerate() {
            row(r, out);
        }
        return segment_at_full_resolution(&hu, rows, cols, how);
    }
    let blocks = Blocks::new(rows, cols, f);
    let mut sum = vec![0f32; r2 * c2];
    for r in 0..rows {
        row(r, &mut line);
        let base = (r / f).min(r2 - 1) * c2;
        for (&v, &bc) in line.iter().zip(&blocks.block_of) {
            sum[base + bc] += v;
        }
    }
    let small: Vec<f32> = sum.iter().zip(&blocks.count).map(|(s, &n)| s / n as f32).collect();
    scale_up(&small, &blocks, rows, cols, how)
}

/// Segments the reduced image and gives each full-resolution pixel its block's value; the
/// fraction counts each block's pixels (`count`).
fn scale_up(small: &[f32], blocks: &Blocks, rows: usize, cols: usize, how: Morphology) -> LungMask {
    let f = blocks.f;
    let (r2, c2) = ((rows / f).max(1), (cols / f).max(1));
    let m = segment_at_full_resolution(small, r2, c2, how);
    let mut mask = vec![0u8; rows * cols];
    for (r, out) in mask.chunks_exact_mut(cols).enumerate() {
        let src = &m.mask[(r / f).min(r2 - 1) * c2..][..c2];
        for (o, &bc) in out.iter_mut().zip(&blocks.block_of) {
            *o = src[bc];
        }
    }
    let inside: u64 = m.mask.iter().zip(&blocks.count).filter(|(&v, _)| v != 0).map(|(_, &n)| u64::from(n)).sum();
    LungMask { mask, fraction: inside as f32 / (rows * cols) as f32 }
}

/// The segmentation itself, at the resolution given.
fn segment_at_full_resolution(hu: &[f32], rows: usize, cols: usize, how: Morphology) -> LungMask {
    let n = rows * cols;
    // 1. Body.
    let label = match how {
        Morphology::Spans => components_by_runs,
        Morphology::DistanceTransform => components,
    };
    let above: Vec<bool> = hu.iter().map(|&v| v > BODY_HU).collect();
    let (labels, sizes, _) = label(&above, rows, cols);
    let Some(body_label) = (1..sizes.len()).max_by_key(|&l| sizes[l]) else {
        return LungMask { mask: vec![0; n], fraction: 0.0 };
    };
    let mut body: Vec<bool> = labels.iter().map(|&l| l as usize == body_label).collect();
    match how {
        Morphology::Spans => fill_holes_by_runs(&mut body, rows, cols),
        Morphology::DistanceTransform => fill_holes(&mut body, rows, cols),
    }
    // 2.–3. Air inside the body; the largest two inner components.
    let cand: Vec<bool> = hu.iter().zip(&body).map(|(&v, &b)| b && v < AIR_HU).collect();
    let (labels, sizes, border) = label(&cand, rows, cols);
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
    let lungs: Vec<bool> = labels.iter().map(|&l| l != 0 && kept.contains(&(l as usize))).collect();
    if kept.is_empty() {
        return LungMask { mask: vec![0; n], fraction: 0.0 };
    }
    // 4. Fill, close, fill.
    let side = rows.max(cols) as f64;
    let (closing, rim) = ((CLOSING_RADIUS_FRACTION * side).max(1.0) as f32, (RIM_RADIUS_FRACTION * side).max(1.0) as f32);
    let lungs = match how {
        Morphology::Spans => fill_close_dilate_fill(&lungs, rows, cols, closing, rim),
        Morphology::DistanceTransform => {
            let mut lungs = lungs;
            fill_holes(&mut lungs, rows, cols);
            let lungs = close(&lungs, rows, cols, closing);
            let mut lungs = dilate(&lungs, rows, cols, rim);
            fill_holes(&mut lungs, rows, cols);
            lungs
        }
    };
    let count = lungs.iter().filter(|&&v| v).count();
    LungMask { mask: lungs.iter().map(|&v| u8::from(v)).collect(), fraction: count as f32 / n as f32 }
}

/// Step 4 on the lungs' bounding box grown by both radii and 2 pixels (everything outside it
/// stays background, so the result equals the whole-image computation): fill holes, close
/// with a disc of `closing`, dilate with a disc of `rim`, fill holes.
fn fill_close_dilate_fill(lungs: &[bool], rows: usize, cols: usize, closing: f32, rim: f32) -> Vec<bool> {
    let (mut r0, mut r1, mut c0, mut c1) = (rows, 0, cols, 0);
    for (i, _) in lungs.iter().enumerate().filter(|(_, &v)| v) {
        let (r, c) = (i / cols, i % cols);
        (r0, r1, c0, c1) = (r0.min(r), r1.max(r + 1), c0.min(c), c1.max(c + 1));
    }
    let margin = closing.ceil() as usize + rim.ceil() as usize + 2;
    let (r0, r1, c0, c1) = (r0.saturating_sub(margin), (r1 + margin).min(rows), c0.saturating_sub(margin), (c1 + margin).min(cols));
    let (h, w) = (r1 - r0, c1 - c0);
    let mut crop: Vec<bool> = (r0..r1).flat_map(|r| lungs[r * cols + c0..r * cols + c1].iter().copied()).collect();
    fill_holes_by_runs(&mut crop, h, w);
    let dilated = dilate_by_spans(&crop, h, w, closing);
    // Closing: the dilation minus what lies within `closing` of its outside (and of the image's
    // edge, which counts as outside, in whole-image coordinates).
    let outside: Vec<bool> = dilated.iter().map(|&v| !v).collect();
    let near_outside = dilate_by_spans(&outside, h, w, closing);
    let r2 = closing * closing;
    let mut closed = vec![false; h * w];
    for (i, v) in closed.iter_mut().enumerate() {
        let (r, c) = ((r0 + i / w) as f32, (c0 + i % w) as f32);
        let edge = r.min(c).min(rows as f32 - 1.0 - r).min(cols as f32 - 1.0 - c) + 1.0;
        *v = dilated[i] && !near_outside[i] && edge * edge > r2;
    }
    let mut out = dilate_by_spans(&closed, h, w, rim);
    fill_holes_by_runs(&mut out, h, w);
    let mut full = vec![false; rows * cols];
    for (k, r) in (r0..r1).enumerate() {
        full[r * cols + c0..r * cols + c1].copy_from_slice(&out[k * w..(k + 1) * w]);
    }
    full
}

/// Half-widths of the rows of a Euclidean disc: `(dy, w)` with `dx² + dy² ≤ radius²` exactly
/// for `|dx| ≤ w` (squared distances compared in f32, as [`dilate`] compares them).
fn disc_rows(radius: f32) -> Vec<(isize, isize)> {
    let r2 = radius * radius;
    let reach = radius.floor() as isize;
    (-reach..=reach)
        .filter_map(|dy| {
            let w = (0..=reach).take_while(|&dx| ((dx * dx + dy * dy) as f32) <= r2).last()?;
            Some((dy, w))
        })
        .collect()
}

/// Morphological dilation of `m` with a Euclidean disc of `radius` pixels: the same set as
/// [`dilate`]. The disc is a stack of row spans `(dy, w)`, so the dilation is the union, over
/// them, of each row's runs widened by `w` on both sides and moved `dy` rows: work per run and
/// disc row, not per pixel.
pub fn dilate_by_spans(m: &[bool], rows: usize, cols: usize, radius: f32) -> Vec<bool> {
    let disc = disc_rows(radius);
    let mut out = m.to_vec();
    for (r, line) in m.chunks_exact(cols).enumerate() {
        for (s, c) in row_runs(line) {
            for &(dy, w) in &disc {
                let rr = r as isize + dy;
                if rr < 0 || rr >= rows as isize {
                    continue;
                }
                let (a, b) = ((s as isize - w).max(0) as usize, ((c as isize + w) as usize).min(cols));
                out[rr as usize * cols + a..rr as usize * cols + b].fill(true);
            }
        }
    }
    out
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
            let best = (0..rows * cols).filter(|&j| feature[j]).map(|j| ((j / cols) as f32 - r).powi(2) + ((j % cols) as f32 - c).powi(2)).fold(f32::INFINITY, f32::min);
            assert_eq!(d[i], best, "pixel {i}");
        }
    }

    #[test]
    fn closing_fills_a_notch_and_keeps_a_disc() {
        let (rows, cols) = (40, 40);
        let disc = |r0: f32| -> Vec<bool> { (0..rows * cols).map(|i| (((i / cols) as f32 - 20.0).powi(2) + ((i % cols) as f32 - 20.0).powi(2)) <= r0 * r0).collect() };
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

    /// A deterministic pseudo-random blob mask (smoothed noise, thresholded).
    fn blobs(rows: usize, cols: usize, seed: u64) -> Vec<bool> {
        let mut rng = crate::preprocess::conformance::Rng::new(seed);
        let noise: Vec<f32> = (0..rows * cols).map(|_| rng.unit() as f32).collect();
        let mut out = vec![false; rows * cols];
        for r in 0..rows {
            for c in 0..cols {
                let mut s = 0.0;
                let mut n = 0.0;
                for dr in -3i64..=3 {
                    for dc in -3i64..=3 {
                        let (rr, cc) = (r as i64 + dr, c as i64 + dc);
                        if rr >= 0 && cc >= 0 && (rr as usize) < rows && (cc as usize) < cols {
                            s += noise[rr as usize * cols + cc as usize];
                            n += 1.0;
                        }
                    }
                }
                out[r * cols + c] = s / n > 0.55;
            }
        }
        out
    }

    #[test]
    fn span_morphology_equals_the_distance_transform() {
        for seed in 0..6 {
            let (rows, cols) = (37 + seed as usize * 5, 53);
            let m = blobs(rows, cols, seed);
            for radius in [1.0f32, 2.56, 4.0, 7.68] {
                assert_eq!(dilate_by_spans(&m, rows, cols, radius), dilate(&m, rows, cols, radius), "dilate seed {seed} radius {radius}");
            }
            let mut a = m.clone();
            let mut b = m.clone();
            fill_holes(&mut a, rows, cols);
            fill_holes_by_runs(&mut b, rows, cols);
            assert_eq!(a, b, "fill seed {seed}");
        }
    }

    #[test]
    fn labelling_by_runs_equals_the_flood_fill() {
        for seed in 0..12 {
            let (rows, cols) = (31 + seed as usize * 7, 47 + seed as usize % 3);
            let m = blobs(rows, cols, seed);
            let inverse: Vec<bool> = m.iter().map(|&v| !v).collect();
            for on in [&m, &inverse] {
                let (a, b) = (components(on, rows, cols), components_by_runs(on, rows, cols));
                assert!(a.1.len() > 2, "seed {seed}: several components to compare");
                assert_eq!(a, b, "seed {seed}");
            }
        }
        // A U shape: two runs in one row that join below, and a run spanning two above.
        let u = ["#.#.#", "#.#.#", "#####", ".....", "##.##", ".###."];
        let on: Vec<bool> = u.iter().flat_map(|r| r.chars().map(|ch| ch == '#')).collect();
        assert_eq!(components(&on, 6, 5), components_by_runs(&on, 6, 5));
        assert_eq!(components_by_runs(&on, 6, 5).1, vec![0, 11, 7]);
    }
}
