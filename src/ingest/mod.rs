//! Ingest: turns files a scanner, PACS or research pipeline sends (DICOM, NIfTI) into axial CT
//! slices with their stored pixel values, modality LUT, geometry and identifiers.
//!
//! Every slice leaves ingest in one orientation convention, whatever the source stored: as a
//! radiologist views an axial image (columns run towards the patient's left, rows towards the
//! patient's posterior, i.e. the patient's right is on the image's left), and a series is ordered
//! feet to head (see [`series`]). Inputs are only read, never modified. Every error names the file
//! and the reason; no input may panic the process.

pub mod dicom;
pub mod dicom_scan;
pub mod image8;
pub mod nifti;
pub mod orient;
pub mod rle;
pub mod series;

use std::path::{Path, PathBuf};

use ndarray::Array2;

/// Limits checked before any large allocation, so that a hostile or broken file cannot exhaust
/// memory. Configured in `[ingest]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest input file read, in bytes.
    pub max_file_bytes: u64,
    /// Largest rows × columns of one slice.
    pub max_pixels_per_slice: u64,
    /// Most frames of a multi-frame DICOM object or slices of a NIfTI volume.
    pub max_frames: u64,
    /// Largest decompressed NIfTI payload, in bytes.
    pub max_decompressed_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_file_bytes: 2 << 30, max_pixels_per_slice: 4096 * 4096, max_frames: 4096, max_decompressed_bytes: 4 << 30 }
    }
}

/// What ingest accepts beyond the limits.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestOptions {
    /// Size caps.
    pub limits: Limits,
    /// Accepted values of DICOM Modality (0008,0060), upper case. Empty accepts every modality.
    pub modalities: Vec<String>,
    /// Accept DICOM objects without a Modality element (common in research exports).
    pub allow_missing_modality: bool,
    /// Read 8-bit display images (PNG) as if shown in this window (center, width in HU); see
    /// [`image8`]. `None` (the default, and always in the daemon) refuses them.
    pub display_window: Option<(f64, f64)>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions { limits: Limits::default(), modalities: vec!["CT".to_string()], allow_missing_modality: true, display_window: None }
    }
}

/// Errors of ingest. Each carries the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The file could not be read from disk.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but its content is not acceptable; `reason` says why.
    #[error("{path}: {reason}")]
    Rejected {
        /// The file.
        path: PathBuf,
        /// Why it was rejected, in words for an admin.
        reason: String,
    },
}

impl IngestError {
    /// A rejection of `path` for `reason`.
    pub fn rejected(path: &Path, reason: impl Into<String>) -> Self {
        IngestError::Rejected { path: path.to_path_buf(), reason: reason.into() }
    }

    /// The file the error concerns.
    pub fn path(&self) -> &Path {
        match self {
            IngestError::Io { path, .. } | IngestError::Rejected { path, .. } => path,
        }
    }
}

/// The stored pixel values of one slice, row-major, in the canonical orientation.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// Unsigned stored values (DICOM Pixel Representation 0, NIfTI uint8/uint16).
    U16(Vec<u16>),
    /// Signed stored values (DICOM Pixel Representation 1, NIfTI int16).
    I16(Vec<i16>),
    /// Values of any other type, converted to f32 (NIfTI int32/float/double).
    F32(Vec<f32>),
}

impl Pixels {
    /// Number of pixels.
    pub fn len(&self) -> usize {
        match self {
            Pixels::U16(v) => v.len(),
            Pixels::I16(v) => v.len(),
            Pixels::F32(v) => v.len(),
        }
    }

    /// True when there are no pixels.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored value at `i`, as f64.
    pub fn get(&self, i: usize) -> f64 {
        match self {
            Pixels::U16(v) => f64::from(v[i]),
            Pixels::I16(v) => f64::from(v[i]),
            Pixels::F32(v) => f64::from(v[i]),
        }
    }

    /// Short name of the stored type (`uint16`, `int16`, `float32`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Pixels::U16(_) => "uint16",
            Pixels::I16(_) => "int16",
            Pixels::F32(_) => "float32",
        }
    }

    /// Applies an index permutation: output pixel `i` takes input pixel `map(i)`.
    pub(crate) fn remap(&self, n: usize, map: impl Fn(usize) -> usize) -> Pixels {
        match self {
            Pixels::U16(v) => Pixels::U16((0..n).map(|i| v[map(i)]).collect()),
            Pixels::I16(v) => Pixels::I16((0..n).map(|i| v[map(i)]).collect()),
            Pixels::F32(v) => Pixels::F32((0..n).map(|i| v[map(i)]).collect()),
        }
    }
}

/// The modality LUT: HU = stored × slope + intercept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rescale {
    /// Rescale Slope (0028,1053) or NIfTI scl_slope; 1 when absent.
    pub slope: f64,
    /// Rescale Intercept (0028,1052) or NIfTI scl_inter; 0 when absent.
    pub intercept: f64,
}

impl Default for Rescale {
    fn default() -> Self {
        Rescale { slope: 1.0, intercept: 0.0 }
    }
}

/// Where a slice lies in the patient, in DICOM patient coordinates (LPS, millimetres).
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    /// Image Position (Patient): the centre of the first pixel (row 0, column 0) as delivered.
    pub position: Option<[f64; 3]>,
    /// Image Orientation (Patient): direction of increasing column index, then of increasing row
    /// index, as delivered (after canonical reorientation).
    pub orientation: Option<[f64; 6]>,
    /// Pixel Spacing: distance between rows, then between columns (mm).
    pub pixel_spacing: Option<[f64; 2]>,
    /// Slice Location (0020,1041).
    pub slice_location: Option<f64>,
    /// Slice Thickness (0018,0050).
    pub slice_thickness: Option<f64>,
    /// Instance Number (0020,0013).
    pub instance_number: Option<i64>,
}

impl Geometry {
    /// Unit normal of the slice plane (row direction × column direction), if oriented.
    pub fn normal(&self) -> Option<[f64; 3]> {
        let o = self.orientation?;
        let n = [o[1] * o[5] - o[2] * o[4], o[2] * o[3] - o[0] * o[5], o[0] * o[4] - o[1] * o[3]];
        let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        (len > 1e-6).then(|| [n[0] / len, n[1] / len, n[2] / len])
    }
}

/// Identifiers of a slice. Strings are kept as received: they need not be valid DICOM UIDs.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Uids {
    /// Study Instance UID.
    pub study: String,
    /// Series Instance UID (for NIfTI: `nifti:` and the file path).
    pub series: String,
    /// SOP Instance UID (for NIfTI: empty).
    pub sop: String,
}

/// Which kind of file a slice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A DICOM Part 10 file (or a bare data set).
    Dicom,
    /// A NIfTI-1 or NIfTI-2 volume.
    Nifti,
    /// An 8-bit display image (PNG) read under an assumed window; training material only.
    Image,
}

/// One axial slice as ingest delivers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Slice {
    /// The file it came from.
    pub source: PathBuf,
    /// Frame of a multi-frame DICOM object, or slice of a NIfTI volume (stored order).
    pub frame: usize,
    /// Rows (image height).
    pub rows: usize,
    /// Columns (image width).
    pub cols: usize,
    /// Stored values, row-major.
    pub pixels: Pixels,
    /// Modality LUT.
    pub rescale: Rescale,
    /// Position and orientation.
    pub geometry: Geometry,
    /// Identifiers.
    pub uids: Uids,
    /// Modality (0008,0060), when present.
    pub modality: Option<String>,
    /// Image Type (0008,0008) values.
    pub image_type: Vec<String>,
    /// Transfer syntax UID (DICOM only).
    pub transfer_syntax: Option<String>,
    /// DICOM or NIfTI.
    pub kind: SourceKind,
}

impl Slice {
    /// Hounsfield units, `rows × cols`.
    pub fn hu(&self) -> Array2<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        self.hu_into(&mut out);
        Array2::from_shape_vec((self.rows, self.cols), out).expect("rows × cols pixels")
    }

    /// Writes Hounsfield units into `out` (length `rows × cols`), without allocating.
    pub fn hu_into(&self, out: &mut [f32]) {
        let (s, b) = (self.rescale.slope, self.rescale.intercept);
        match &self.pixels {
            Pixels::U16(v) => out.iter_mut().zip(v).for_each(|(o, &p)| *o = (f64::from(p) * s + b) as f32),
            Pixels::I16(v) => out.iter_mut().zip(v).for_each(|(o, &p)| *o = (f64::from(p) * s + b) as f32),
            Pixels::F32(v) => out.iter_mut().zip(v).for_each(|(o, &p)| *o = (f64::from(p) * s + b) as f32),
        }
    }
}

/// True when a file name marks a file still being written or hidden (dot files, `.part`, `.tmp`).
pub fn is_temporary_name(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.starts_with('.') || name.ends_with(".part") || name.ends_with(".tmp") || name.ends_with('~')
}

/// True when the file name says NIfTI (`.nii`, `.nii.gz`).
pub fn is_nifti_name(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    name.ends_with(".nii") || name.ends_with(".nii.gz")
}

/// Reads one file (DICOM or NIfTI, chosen by name then content) into slices.
///
/// Symbolic links are refused rather than followed. A multi-frame DICOM object or a NIfTI volume
/// yields several slices; a classic DICOM image yields one.
pub fn read_file(path: &Path, opts: &IngestOptions) -> Result<Vec<Slice>, IngestError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| IngestError::Io { path: path.to_path_buf(), source })?;
    if meta.file_type().is_symlink() {
        return Err(IngestError::rejected(path, "is a symbolic link; links are not followed"));
    }
    if !meta.is_file() {
        return Err(IngestError::rejected(path, "is not a regular file"));
    }
    if meta.len() > opts.limits.max_file_bytes {
        return Err(IngestError::rejected(path, format!("file size {} bytes exceeds the limit of {} bytes", meta.len(), opts.limits.max_file_bytes)));
    }
    let bytes = std::fs::read(path).map_err(|source| IngestError::Io { path: path.to_path_buf(), source })?;
    guard_panics(path, || {
        if image8::is_image_name(path) {
            match opts.display_window {
                Some(w) => image8::read_bytes(path, &bytes, w, &opts.limits),
                None => Err(IngestError::rejected(path, "an 8-bit display image carries no Hounsfield units; only prep and eval read it, with --assume-window")),
            }
        } else if is_nifti_name(path) || nifti::looks_like_nifti(&bytes) {
            nifti::read_bytes(path, &bytes, &opts.limits)
        } else {
            dicom::read_bytes(path, &bytes, opts)
        }
    })
}

static CAUGHT_PANICS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many decoder panics `guard_panics` has caught in this process (a health figure: each
/// is a third-party decoder bug that malformed input reached).
pub fn caught_decoder_panics() -> u64 {
    CAUGHT_PANICS.load(std::sync::atomic::Ordering::Relaxed)
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while this thread runs third-party decoding code under `guard_panics`; a panic hook
/// uses it to report such panics as rejected input rather than as internal errors.
pub fn in_guarded_decoder() -> bool {
    GUARDED.with(std::cell::Cell::get)
}

/// Runs a decoder, turning a panic inside third-party decoding code into a rejection.
pub(crate) fn guard_panics<T>(path: &Path, f: impl FnOnce() -> Result<T, IngestError>) -> Result<T, IngestError> {
    let was = GUARDED.with(|g| g.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(was));
    match result {
        Ok(r) => r,
        Err(payload) => {
            CAUGHT_PANICS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let msg = crate::failpoint::panic_message(payload.as_ref());
            Err(IngestError::rejected(path, format!("decoder failed on malformed data ({msg})")))
        }
    }
}

/// Reads files in parallel; returns the slices (in file order) and the files that could not be
/// read, each error naming its file.
pub fn read_files(files: &[PathBuf], opts: &IngestOptions) -> (Vec<Slice>, Vec<IngestError>) {
    use rayon::prelude::*;
    let results: Vec<_> = files.par_iter().map(|f| read_file(f, opts)).collect();
    let (mut slices, mut errors) = (Vec::new(), Vec::new());
    for r in results {
        match r {
            Ok(s) => slices.extend(s),
            Err(e) => errors.push(e),
        }
    }
    (slices, errors)
}

/// Lists the input files under `roots` (files are taken as given, folders walked recursively),
/// sorted, skipping temporary names. Symbolic links are neither followed nor listed.
pub fn collect_files(roots: &[PathBuf]) -> Result<Vec<PathBuf>, IngestError> {
    let mut files = Vec::new();
    for root in roots {
        let meta = std::fs::symlink_metadata(root).map_err(|source| IngestError::Io { path: root.clone(), source })?;
        if meta.is_dir() {
            for entry in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
                let entry = entry.map_err(|e| IngestError::Io {
                    path: e.path().map(Path::to_path_buf).unwrap_or_else(|| root.clone()),
                    source: e.into_io_error().unwrap_or_else(|| std::io::Error::other("walk error")),
                })?;
                if entry.file_type().is_file() && !is_temporary_name(entry.path()) {
                    files.push(entry.into_path());
                }
            }
        } else {
            files.push(root.clone());
        }
    }
    Ok(files)
}
