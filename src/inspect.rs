//! What ingest sees of a file: the `inspect` command's report, one per image or volume.

use std::path::Path;

use serde::Serialize;

use crate::ingest::{self, IngestOptions, SourceKind};

/// One `inspect` line (DESIGN.md contract). On failure only `file` and `error` are set.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The file.
    pub file: String,
    /// `dicom` or `nifti`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<SourceKind>,
    /// Transfer syntax UID (DICOM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_syntax: Option<String>,
    /// Modality.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modality: Option<String>,
    /// Rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    /// Columns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cols: Option<usize>,
    /// Frames of a DICOM object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frames: Option<usize>,
    /// Slices of a NIfTI volume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slices: Option<usize>,
    /// Smallest HU value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hu_min: Option<f64>,
    /// Largest HU value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hu_max: Option<f64>,
    /// Mean HU value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hu_mean: Option<f64>,
    /// Series Instance UID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series_uid: Option<String>,
    /// Slice Location of the first slice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slice_location: Option<f64>,
    /// Why the file could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Report {
    fn error(file: &Path, reason: String) -> Report {
        Report {
            file: file.display().to_string(),
            kind: None,
            transfer_syntax: None,
            modality: None,
            rows: None,
            cols: None,
            frames: None,
            slices: None,
            hu_min: None,
            hu_max: None,
            hu_mean: None,
            series_uid: None,
            slice_location: None,
            error: Some(reason),
        }
    }
}

/// Reads one file and reports what ingest sees.
pub fn inspect_file(path: &Path, opts: &IngestOptions) -> Report {
    let slices = match ingest::read_file(path, opts) {
        Ok(s) => s,
        Err(e) => {
            let reason = match e {
                ingest::IngestError::Rejected { reason, .. } => reason,
                ingest::IngestError::Io { source, .. } => format!("cannot read: {source}"),
            };
            return Report::error(path, reason);
        }
    };
    let Some(first) = slices.first() else { return Report::error(path, "no image data".into()) };
    let (mut lo, mut hi, mut sum, mut n) = (f64::INFINITY, f64::NEG_INFINITY, 0.0f64, 0usize);
    let mut buf = Vec::new();
    for s in &slices {
        buf.resize(s.rows * s.cols, 0.0);
        s.hu_into(&mut buf);
        for &v in &buf {
            let v = f64::from(v);
            lo = lo.min(v);
            hi = hi.max(v);
            sum += v;
        }
        n += buf.len();
    }
    let count = Some(slices.len());
    Report {
        file: path.display().to_string(),
        kind: Some(first.kind),
        transfer_syntax: first.transfer_syntax.clone(),
        modality: first.modality.clone(),
        rows: Some(first.rows),
        cols: Some(first.cols),
        frames: if first.kind == SourceKind::Dicom { count } else { None },
        slices: if first.kind == SourceKind::Nifti { count } else { None },
        hu_min: Some(lo),
        hu_max: Some(hi),
        hu_mean: Some(if n > 0 { sum / n as f64 } else { 0.0 }),
        series_uid: Some(first.uids.series.clone()),
        slice_location: first.geometry.slice_location,
        error: None,
    }
}
