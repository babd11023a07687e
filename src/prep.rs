//! `ctsentry prep`: preprocessed tensors for training, written by the same code that serves.
//!
//! Output folder:
//! - `tensors.npy`: float32 `[N, 3, size, size]`, one row per slice, series by series, each
//!   series feet to head;
//! - `index.csv`: `file,slice_index,z,lung_fraction,label` for each row (`file` relative to its
//!   root; `slice_index` the position in its series; `label` from `--labels`, empty when unknown);
//! - `params.json`: the preprocessing parameters used (copied into the model manifest);
//! - `skipped.csv`: `file,reason` for inputs that could not be read;
//! - with `--png`: `png/NNNNNN.png`, the windowed slice with the lung mask outlined in red;
//! - with `--hu`: `hu/NNNNNN.npy` (int16 Hounsfield units, `[rows, cols]`, clamped to the int16
//!   range), `hu/NNNNNN.mask.npy` (uint8, the lung mask serving computes) and `hu/index.csv`
//!   (`row,file,rows,cols,spacing_row,spacing_col`, spacing in mm, empty when unknown): what the
//!   lesion simulator (`models/training/lesions.py`) draws into.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::ingest::{self, series, IngestOptions, Slice};
use crate::preprocess::{
    lung,
    npy::{self, NpyWriter},
    prepare, Params, Preprocessor,
};

/// Errors of `prep`.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    /// Writing an output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The labels file is malformed.
    #[error("{path}: {reason}")]
    Labels {
        /// The labels file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An input root cannot be listed.
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    /// Preprocessing failed.
    #[error("{file}: {source}")]
    Preprocess {
        /// The file.
        file: PathBuf,
        /// The error.
        source: crate::preprocess::PreprocessError,
    },
}

/// What `prep` did.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Summary {
    /// Rows written.
    pub slices: usize,
    /// Series written.
    pub series: usize,
    /// Inputs that could not be read.
    pub skipped: usize,
    /// Rows with a label.
    pub labelled: usize,
}

/// Reads a labels CSV (header with `file` and `covid` columns; other columns ignored).
pub fn read_labels(path: &Path) -> Result<HashMap<String, u8>, PrepError> {
    let text = std::fs::read_to_string(path).map_err(|source| PrepError::Io { path: path.into(), source })?;
    let bad = |reason: String| PrepError::Labels { path: path.into(), reason };
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or_else(|| bad("empty file".into()))?.split(',').map(str::trim).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).ok_or_else(|| bad(format!("no `{name}` column")));
    let (fi, ci) = (col("file")?, col("covid")?);
    let mut labels = HashMap::new();
    for (n, line) in lines.enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let (Some(file), Some(v)) = (f.get(fi), f.get(ci)) else {
            return Err(bad(format!("line {}: too few columns", n + 2)));
        };
        let v = match *v {
            "0" => 0,
            "1" => 1,
            other => return Err(bad(format!("line {}: covid = {other:?}, expected 0 or 1", n + 2))),
        };
        labels.insert(file.to_string(), v);
    }
    Ok(labels)
}

/// The path of `file` relative to the root it was found under, with `/` separators.
pub fn relative(file: &Path, root: &Path) -> String {
    let rel = if root.is_file() { file.file_name().map(PathBuf::from).unwrap_or_default() } else { file.strip_prefix(root).unwrap_or(file).to_path_buf() };
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Optional per-slice outputs of `prep`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extras {
    /// `png/`: the windowed slice with the lung mask outlined.
    pub png: bool,
    /// `hu/`: Hounsfield units and the lung mask as `.npy`.
    pub hu: bool,
}

/// Runs `prep` over `roots` into `out`.
pub fn run(
    roots: &[PathBuf],
    out: &Path,
    labels: Option<&HashMap<String, u8>>,
    extras: Extras,
    params: &Params,
    ingest_opts: &IngestOptions,
    pre: &dyn Preprocessor,
) -> Result<Summary, PrepError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PrepError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    if extras.png {
        std::fs::create_dir_all(out.join("png")).map_err(io(&out.join("png")))?;
    }
    let hu_index_path = out.join("hu").join("index.csv");
    let mut hu_index = if extras.hu {
        std::fs::create_dir_all(out.join("hu")).map_err(io(&out.join("hu")))?;
        let mut f = std::io::BufWriter::new(std::fs::File::create(&hu_index_path).map_err(io(&hu_index_path))?);
        writeln!(f, "row,file,rows,cols,spacing_row,spacing_col").map_err(io(&hu_index_path))?;
        Some(f)
    } else {
        None
    };
    let mut npy = NpyWriter::create(&out.join("tensors.npy"), &[3, params.size, params.size]).map_err(io(&out.join("tensors.npy")))?;
    let index_path = out.join("index.csv");
    let mut index = std::io::BufWriter::new(std::fs::File::create(&index_path).map_err(io(&index_path))?);
    writeln!(index, "file,slice_index,z,lung_fraction,label").map_err(io(&index_path))?;
    let skipped_path = out.join("skipped.csv");
    let mut skipped = std::io::BufWriter::new(std::fs::File::create(&skipped_path).map_err(io(&skipped_path))?);
    writeln!(skipped, "file,reason").map_err(io(&skipped_path))?;
    let mut summary = Summary::default();

    for root in roots {
        let files = ingest::collect_files(std::slice::from_ref(root))?;
        let (slices, errors) = ingest::read_files(&files, ingest_opts);
        for e in errors {
            log::warn!("{e}");
            summary.skipped += 1;
            writeln!(skipped, "{},{}", csv_field(&relative(e.path(), root)), csv_field(&e.to_string())).map_err(io(&skipped_path))?;
        }
        for ser in series::assemble(slices) {
            let done: Vec<_> =
                ser.slices.par_iter().map(|s| prepare(pre, params, s).map_err(|source| PrepError::Preprocess { file: s.source.clone(), source })).collect::<Result<_, _>>()?;
            for (i, ((prepared, mask), slice)) in done.into_iter().zip(&ser.slices).enumerate() {
                npy.push(&prepared.tensor).map_err(io(&out.join("tensors.npy")))?;
                let rel = relative(&slice.source, root);
                let label = labels.and_then(|l| l.get(&rel)).copied();
                summary.labelled += usize::from(label.is_some());
                writeln!(index, "{},{i},{:.6},{:.6},{}", csv_field(&rel), ser.z[i], prepared.lung_fraction, label.map(|l| l.to_string()).unwrap_or_default())
                    .map_err(io(&index_path))?;
                if extras.png {
                    let p = out.join("png").join(format!("{:06}.png", summary.slices));
                    write_check_png(&p, slice, params, mask.as_ref()).map_err(io(&p))?;
                }
                if let Some(f) = hu_index.as_mut() {
                    write_hu(&out.join("hu"), summary.slices, slice, mask.as_ref()).map_err(io(&out.join("hu")))?;
                    let sp = slice.geometry.pixel_spacing.map(|s| (format!("{:.6}", s[0]), format!("{:.6}", s[1]))).unwrap_or_default();
                    writeln!(f, "{},{},{},{},{},{}", summary.slices, csv_field(&rel), slice.rows, slice.cols, sp.0, sp.1).map_err(io(&hu_index_path))?;
                }
                summary.slices += 1;
            }
            summary.series += 1;
        }
    }
    npy.finish().map_err(io(&out.join("tensors.npy")))?;
    index.flush().map_err(io(&index_path))?;
    skipped.flush().map_err(io(&skipped_path))?;
    if let Some(mut f) = hu_index {
        f.flush().map_err(io(&hu_index_path))?;
    }
    let params_path = out.join("params.json");
    std::fs::write(&params_path, serde_json::to_string_pretty(params).expect("params serialise")).map_err(io(&params_path))?;
    Ok(summary)
}

/// Writes row `n`'s Hounsfield units (int16) and lung mask (uint8; all zero without one) under `dir`.
fn write_hu(dir: &Path, n: usize, slice: &Slice, mask: Option<&lung::LungMask>) -> std::io::Result<()> {
    let shape = [slice.rows, slice.cols];
    let hu: Vec<u8> = slice.hu().iter().flat_map(|v| (v.round().clamp(-32768.0, 32767.0) as i16).to_le_bytes()).collect();
    npy::write_array(&dir.join(format!("{n:06}.npy")), "<i2", &shape, &hu)?;
    let m = mask.map(|m| m.mask.clone()).unwrap_or_else(|| vec![0; slice.rows * slice.cols]);
    npy::write_array(&dir.join(format!("{n:06}.mask.npy")), "|u1", &shape, &m)
}

/// Quotes a CSV field when needed.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The windowed slice at full resolution as RGB, with the lung mask's outline in red.
pub fn write_check_png(path: &Path, slice: &Slice, params: &Params, mask: Option<&lung::LungMask>) -> std::io::Result<()> {
    let (rows, cols) = (slice.rows, slice.cols);
    let hu = slice.hu();
    let lo = params.window_center - params.window_width / 2.0;
    let mut rgb = Vec::with_capacity(rows * cols * 3);
    for r in 0..rows {
        for c in 0..cols {
            let g = (((f64::from(hu[[r, c]]) - lo) / params.window_width).clamp(0.0, 1.0) * 255.0).round() as u8;
            let edge = mask.is_some_and(|m| {
                let inside = |rr: usize, cc: usize| m.mask[rr * cols + cc] != 0;
                inside(r, c) && (r == 0 || c == 0 || r + 1 == rows || c + 1 == cols || !inside(r - 1, c) || !inside(r + 1, c) || !inside(r, c - 1) || !inside(r, c + 1))
            });
            rgb.extend_from_slice(&if edge { [255, 0, 0] } else { [g, g, g] });
        }
    }
    crate::report::write_png_rgb(path, cols as u32, rows as u32, &rgb)
}
