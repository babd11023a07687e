//! Canonical in-plane orientation of axial slices, shared by the DICOM and NIfTI readers.
//!
//! Convention (the radiological view of an axial slice, and what almost every CT scanner stores):
//! the column index increases towards the patient's left (+x in DICOM LPS coordinates) and the row
//! index towards the patient's posterior (+y). A slice stored otherwise (transposed, or flipped
//! left-right or front-back) is rearranged so that the same anatomy lands on the same pixel
//! whatever the source, and its geometry is updated to match. Slices whose normal is not mainly
//! along the patient's head-feet axis (sagittal or coronal) are left as they are.

use super::Slice;

/// How much of the normal must point along z for a slice to count as axial.
const AXIAL_MIN_NORMAL_Z: f64 = 0.5;

/// Rearranges `slice` into the canonical orientation, when its orientation is known and axial.
/// Returns true when the slice is axial (oriented or not); false for a known non-axial plane.
pub fn canonicalize(slice: &mut Slice) -> bool {
    let Some(o) = slice.geometry.orientation else { return true };
    let Some(n) = slice.geometry.normal() else { return true };
    if n[2].abs() < AXIAL_MIN_NORMAL_Z {
        return false;
    }
    let (mut r, mut c) = ([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    let (mut rows, mut cols) = (slice.rows, slice.cols);
    let mut spacing = slice.geometry.pixel_spacing.unwrap_or([1.0, 1.0]);
    let transpose = r[0].abs() < c[0].abs();
    if transpose {
        std::mem::swap(&mut r, &mut c);
        std::mem::swap(&mut rows, &mut cols);
        spacing = [spacing[1], spacing[0]];
    }
    let flip_cols = r[0] < 0.0;
    let flip_rows = c[1] < 0.0;
    if !(transpose || flip_cols || flip_rows) {
        return true;
    }
    let src_cols = slice.cols;
    slice.pixels = slice.pixels.remap(rows * cols, |idx| {
        let (i, j) = (idx / cols, idx % cols);
        let i0 = if flip_rows { rows - 1 - i } else { i };
        let j0 = if flip_cols { cols - 1 - j } else { j };
        if transpose {
            j0 * src_cols + i0
        } else {
            i0 * src_cols + j0
        }
    });
    if let Some(p) = slice.geometry.position.as_mut() {
        for k in 0..3 {
            if flip_cols {
                p[k] += r[k] * (cols as f64 - 1.0) * spacing[1];
            }
            if flip_rows {
                p[k] += c[k] * (rows as f64 - 1.0) * spacing[0];
            }
        }
    }
    if flip_cols {
        r = r.map(|v| -v);
    }
    if flip_rows {
        c = c.map(|v| -v);
    }
    slice.rows = rows;
    slice.cols = cols;
    slice.geometry.orientation = Some([r[0], r[1], r[2], c[0], c[1], c[2]]);
    if slice.geometry.pixel_spacing.is_some() {
        slice.geometry.pixel_spacing = Some(spacing);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{Geometry, Pixels, Rescale, SourceKind, Uids};

    fn slice(rows: usize, cols: usize, orientation: [f64; 6]) -> Slice {
        Slice {
            source: "t".into(),
            frame: 0,
            rows,
            cols,
            pixels: Pixels::I16((0..(rows * cols) as i16).collect()),
            rescale: Rescale::default(),
            geometry: Geometry { position: Some([0.0, 0.0, 5.0]), orientation: Some(orientation), pixel_spacing: Some([2.0, 1.0]), ..Default::default() },
            uids: Uids::default(),
            modality: None,
            image_type: vec![],
            transfer_syntax: None,
            kind: SourceKind::Dicom,
        }
    }

    /// Physical position of pixel (i, j) in the slice.
    fn world(s: &Slice, i: usize, j: usize) -> [f64; 3] {
        let o = s.geometry.orientation.unwrap();
        let p = s.geometry.position.unwrap();
        let sp = s.geometry.pixel_spacing.unwrap();
        [0, 1, 2].map(|k| p[k] + o[k] * j as f64 * sp[1] + o[3 + k] * i as f64 * sp[0])
    }

    #[test]
    fn every_axial_storage_maps_to_the_same_physical_pixels() {
        for orient in
            [[1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 1.0, 0.0, 0.0], [0.0, -1.0, 0.0, -1.0, 0.0, 0.0]]
        {
            let orig = slice(3, 4, orient);
            let mut s = orig.clone();
            assert!(canonicalize(&mut s));
            let o = s.geometry.orientation.unwrap();
            assert!(o[0] > 0.9 && o[4] > 0.9, "{orient:?} -> {o:?}");
            // Every output pixel holds the value stored at the same physical point.
            for i in 0..s.rows {
                for j in 0..s.cols {
                    let w = world(&s, i, j);
                    let v = s.pixels.get(i * s.cols + j) as usize;
                    let w0 = world(&orig, v / orig.cols, v % orig.cols);
                    for k in 0..3 {
                        assert!((w[k] - w0[k]).abs() < 1e-9, "{orient:?} pixel ({i},{j})");
                    }
                }
            }
        }
    }

    #[test]
    fn sagittal_is_reported_and_left_alone() {
        let mut s = slice(3, 4, [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]);
        let before = s.clone();
        assert!(!canonicalize(&mut s));
        assert_eq!(s, before);
    }
}
