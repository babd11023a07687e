//! NIfTI-1 and NIfTI-2 volumes (`.nii`, `.nii.gz`): header, scaling (scl_slope/scl_inter) and
//! orientation (sform, else qform, else the voxel sizes alone), cut into axial slices in the same
//! convention as the DICOM path.
//!
//! The `nifti` crate parses NIfTI-1 headers and converts voxel data; it does not read NIfTI-2,
//! whose 540-byte header is parsed here and handed to the same data path.

use std::io::Read;
use std::path::Path;

use nifti::{Endianness, InMemNiftiVolume, NiftiHeader, NiftiType};

use super::{orient, Geometry, IngestError, Limits, Pixels, Rescale, Slice, SourceKind, Uids};

/// The header fields ingest needs, from either NIfTI version.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeHeader {
    /// NIfTI version (1 or 2).
    pub version: u8,
    /// `dim[0..8]`.
    pub dim: [i64; 8],
    /// NIfTI datatype code.
    pub datatype: i16,
    /// `pixdim[0..8]` (`pixdim[0]` is qfac).
    pub pixdim: [f64; 8],
    /// Offset of the voxel data in the file.
    pub vox_offset: u64,
    /// scl_slope (0 means no scaling).
    pub scl_slope: f64,
    /// scl_inter.
    pub scl_inter: f64,
    /// qform_code.
    pub qform_code: i32,
    /// sform_code.
    pub sform_code: i32,
    /// quatern_b, c, d and qoffset_x, y, z.
    pub quatern: [f64; 6],
    /// srow_x, srow_y, srow_z.
    pub srow: [[f64; 4]; 3],
    /// Byte order of header and data.
    pub endianness: Endianness,
}

/// True when the bytes start like a NIfTI-1 or NIfTI-2 header (either byte order).
pub fn looks_like_nifti(bytes: &[u8]) -> bool {
    if bytes.len() < 4 {
        return false;
    }
    let le = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let be = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let n1 = bytes.len() >= 348 && matches!(&bytes[344..347], b"n+1" | b"ni1");
    let n2 = bytes.len() >= 540 && matches!(&bytes[4..7], b"n+2" | b"ni2");
    ((le == 348 || be == 348) && n1) || ((le == 540 || be == 540) && n2)
}

/// Decompresses gzip input, refusing to inflate past `cap` bytes.
fn inflate(path: &Path, bytes: &[u8], cap: u64) -> Result<Vec<u8>, IngestError> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes).take(cap + 1).read_to_end(&mut out).map_err(|e| IngestError::rejected(path, format!("gzip stream is corrupt: {e}")))?;
    if out.len() as u64 > cap {
        return Err(IngestError::rejected(path, format!("decompressed size exceeds the limit of {cap} bytes")));
    }
    Ok(out)
}

/// Parses the header of a (decompressed) NIfTI-1 or NIfTI-2 file.
pub fn parse_header(path: &Path, bytes: &[u8]) -> Result<VolumeHeader, IngestError> {
    if !looks_like_nifti(bytes) {
        return Err(IngestError::rejected(path, "not a NIfTI-1 or NIfTI-2 file (bad header size or magic)"));
    }
    if matches!(&bytes[344..347.min(bytes.len())], b"ni1") || (bytes.len() >= 7 && &bytes[4..7] == b"ni2") {
        return Err(IngestError::rejected(path, "NIfTI header/image pairs (.hdr/.img) are not supported; send a single .nii"));
    }
    let le = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let big = !(le == 348 || le == 540);
    if le == 348 || i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) == 348 {
        let h = NiftiHeader::from_reader(bytes).map_err(|e| IngestError::rejected(path, format!("bad NIfTI-1 header: {e}")))?;
        Ok(VolumeHeader {
            version: 1,
            dim: h.dim.map(i64::from),
            datatype: h.datatype,
            pixdim: h.pixdim.map(f64::from),
            vox_offset: if h.vox_offset.is_finite() && h.vox_offset >= 0.0 { h.vox_offset as u64 } else { u64::MAX },
            scl_slope: f64::from(h.scl_slope),
            scl_inter: f64::from(h.scl_inter),
            qform_code: i32::from(h.qform_code),
            sform_code: i32::from(h.sform_code),
            quatern: [h.quatern_b, h.quatern_c, h.quatern_d, h.quatern_x, h.quatern_y, h.quatern_z].map(f64::from),
            srow: [h.srow_x, h.srow_y, h.srow_z].map(|r| r.map(f64::from)),
            endianness: h.endianness,
        })
    } else {
        parse_nifti2(bytes, big)
    }
}

fn parse_nifti2(b: &[u8], big: bool) -> Result<VolumeHeader, IngestError> {
    let get = |o: usize, n: usize| -> [u8; 8] {
        let mut a = [0u8; 8];
        a[..n].copy_from_slice(&b[o..o + n]);
        if big {
            a[..n].reverse();
        }
        a
    };
    let i16_at = |o| {
        let a = get(o, 2);
        i16::from_le_bytes([a[0], a[1]])
    };
    let i32_at = |o| {
        let a = get(o, 4);
        i32::from_le_bytes([a[0], a[1], a[2], a[3]])
    };
    let i64_at = |o| i64::from_le_bytes(get(o, 8));
    let f64_at = |o| f64::from_le_bytes(get(o, 8));
    Ok(VolumeHeader {
        version: 2,
        dim: std::array::from_fn(|i| i64_at(16 + 8 * i)),
        datatype: i16_at(12),
        pixdim: std::array::from_fn(|i| f64_at(104 + 8 * i)),
        vox_offset: u64::try_from(i64_at(168)).unwrap_or(u64::MAX),
        scl_slope: f64_at(176),
        scl_inter: f64_at(184),
        qform_code: i32_at(344),
        sform_code: i32_at(348),
        quatern: std::array::from_fn(|i| f64_at(352 + 8 * i)),
        srow: std::array::from_fn(|r| std::array::from_fn(|c| f64_at(400 + 32 * r + 8 * c))),
        endianness: if big { Endianness::Big } else { Endianness::Little },
    })
}

impl VolumeHeader {
    /// The voxel-to-world affine in NIfTI RAS+ millimetres: sform when set, else qform, else the
    /// voxel sizes alone (NIfTI "method 1").
    pub fn affine_ras(&self) -> [[f64; 4]; 3] {
        if self.sform_code > 0 {
            return self.srow;
        }
        let px = [self.pixdim[1], self.pixdim[2], self.pixdim[3]].map(|p| if p.is_finite() && p > 0.0 { p } else { 1.0 });
        if self.qform_code <= 0 {
            return [[px[0], 0.0, 0.0, 0.0], [0.0, px[1], 0.0, 0.0], [0.0, 0.0, px[2], 0.0]];
        }
        let [b, c, d, qx, qy, qz] = self.quatern;
        let a = (1.0 - (b * b + c * c + d * d)).max(0.0).sqrt();
        let qfac = if self.pixdim[0] < 0.0 { -1.0 } else { 1.0 };
        let r = [
            [a * a + b * b - c * c - d * d, 2.0 * (b * c - a * d), 2.0 * (b * d + a * c)],
            [2.0 * (b * c + a * d), a * a + c * c - b * b - d * d, 2.0 * (c * d - a * b)],
            [2.0 * (b * d - a * c), 2.0 * (c * d + a * b), a * a + d * d - c * c - b * b],
        ];
        let s = [px[0], px[1], px[2] * qfac];
        let off = [qx, qy, qz];
        std::array::from_fn(|i| [r[i][0] * s[0], r[i][1] * s[1], r[i][2] * s[2], off[i]])
    }
}

/// Reads a NIfTI file held in memory into axial slices in the canonical orientation.
pub fn read_bytes(path: &Path, raw: &[u8], limits: &Limits) -> Result<Vec<Slice>, IngestError> {
    let bytes = inflate(path, raw, limits.max_decompressed_bytes)?;
    let h = parse_header(path, &bytes)?;
    let ndim = h.dim[0];
    if !(2..=7).contains(&ndim) {
        return Err(IngestError::rejected(path, format!("dim[0] = {ndim} is not a valid number of dimensions")));
    }
    let d = |i: usize| if (i as i64) <= ndim { h.dim[i] } else { 1 };
    let (nx, ny, nz) = (d(1), d(2), d(3));
    if nx <= 0 || ny <= 0 || nz <= 0 || (4..=7).any(|i| d(i) <= 0) {
        return Err(IngestError::rejected(path, format!("invalid dimensions {:?}", &h.dim[..=ndim as usize])));
    }
    if (4..=7).any(|i| d(i) > 1) {
        return Err(IngestError::rejected(path, "4-D (time or vector) volumes are not CT volumes; send one 3-D volume"));
    }
    if nx > 65535 || ny > 65535 || nz > 65535 {
        return Err(IngestError::rejected(path, "a dimension exceeds 65535"));
    }
    let dtype = <NiftiType as num_traits::FromPrimitive>::from_i16(h.datatype)
        .filter(|t| !matches!(t, NiftiType::Rgb24 | NiftiType::Rgba32 | NiftiType::Complex64 | NiftiType::Complex128 | NiftiType::Complex256 | NiftiType::Float128))
        .ok_or_else(|| IngestError::rejected(path, format!("unsupported NIfTI datatype code {}", h.datatype)))?;
    // The largest in-plane extent is bounded by max_pixels_per_slice whichever axis is the slice axis.
    let max_plane = (nx * ny).max(nx * nz).max(ny * nz) as u64;
    if max_plane > limits.max_pixels_per_slice || (nx.min(ny).min(nz) as u64) > limits.max_frames {
        return Err(IngestError::rejected(path, format!("volume {nx}×{ny}×{nz} exceeds the size limits")));
    }
    let n = (nx * ny * nz) as usize;
    let nbytes = n * dtype.size_of();
    let start = usize::try_from(h.vox_offset).unwrap_or(usize::MAX);
    let header_len = if h.version == 1 { 348 } else { 540 };
    if start < header_len || start > bytes.len() || bytes.len() - start < nbytes {
        return Err(IngestError::rejected(
            path,
            format!(
                "truncated voxel data: {} bytes after offset {} for {nx}×{ny}×{nz} voxels of {} bytes",
                bytes.len().saturating_sub(start.min(bytes.len())),
                h.vox_offset,
                dtype.size_of()
            ),
        ));
    }
    let mut dim16 = [1u16; 8];
    dim16[0] = 3;
    dim16[1..4].copy_from_slice(&[nx as u16, ny as u16, nz as u16]);
    let raw = &bytes[start..start + nbytes];
    let voxels = match wide_voxels(raw, dtype, h.endianness) {
        // 32- and 64-bit integers and float64: the nifti crate converts them to nothing smaller
        // than themselves; decoded here (to f32: exact for every integer a CT volume holds).
        Some(v) => Pixels::F32(v),
        None => {
            let vol = InMemNiftiVolume::from_raw_fields(dim16, dtype, 1.0, 0.0, raw.to_vec(), h.endianness).map_err(|e| IngestError::rejected(path, format!("voxel data: {e}")))?;
            let conv = |e: nifti::NiftiError| IngestError::rejected(path, format!("voxel data: {e}"));
            match dtype {
                NiftiType::Int16 => Pixels::I16(vol.into_nifti_typed_data::<i16>().map_err(conv)?),
                NiftiType::Uint16 => Pixels::U16(vol.into_nifti_typed_data::<u16>().map_err(conv)?),
                NiftiType::Uint8 => Pixels::U16(vol.into_nifti_typed_data::<u8>().map_err(conv)?.into_iter().map(u16::from).collect()),
                NiftiType::Int8 => Pixels::I16(vol.into_nifti_typed_data::<i8>().map_err(conv)?.into_iter().map(i16::from).collect()),
                _ => Pixels::F32(vol.into_nifti_typed_data::<f32>().map_err(conv)?),
            }
        }
    };
    if let Pixels::F32(v) = &voxels {
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(IngestError::rejected(path, format!("voxel value {bad} is not a number of Hounsfield units (NaN or infinite voxels are not supported)")));
        }
    }
    let rescale =
        if h.scl_slope != 0.0 && h.scl_slope.is_finite() && h.scl_inter.is_finite() { Rescale { slope: h.scl_slope, intercept: h.scl_inter } } else { Rescale::default() };

    // Voxel axes in DICOM LPS: NIfTI world is RAS, so x and y change sign.
    let a = h.affine_ras();
    let lps = |row: usize, col: usize| if row < 2 { -a[row][col] } else { a[row][col] };
    let axis = |i: usize| [lps(0, i), lps(1, i), lps(2, i)];
    let norm = |v: [f64; 3]| (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let axes = [axis(0), axis(1), axis(2)];
    if axes.iter().any(|v| norm(*v).partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) || !norm(*v).is_finite()) {
        return Err(IngestError::rejected(path, "degenerate orientation (a voxel axis has zero or non-finite length)"));
    }
    // Slice axis: the voxel axis most aligned with head-feet; the other two, in order, span the image.
    let k = (0..3).max_by(|&p, &q| (axes[p][2].abs() / norm(axes[p])).total_cmp(&(axes[q][2].abs() / norm(axes[q])))).unwrap_or(2);
    let (p, q) = match k {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let dims = [nx as usize, ny as usize, nz as usize];
    let strides = [1, dims[0], dims[0] * dims[1]];
    let (cols, rows, count) = (dims[p], dims[q], dims[k]);
    let unit = |v: [f64; 3]| {
        let l = norm(v);
        [v[0] / l, v[1] / l, v[2] / l]
    };
    let (r, c) = (unit(axes[p]), unit(axes[q]));
    let series = format!("nifti:{}", path.display());
    let mut slices = Vec::with_capacity(count);
    for s in 0..count {
        let base = s * strides[k];
        let idx = |o: usize| base + (o % cols) * strides[p] + (o / cols) * strides[q];
        let pixels = voxels.remap(rows * cols, idx);
        let pos = [0, 1, 2].map(|i| {
            let w = a[i][k] * s as f64 + a[i][3];
            if i < 2 {
                -w
            } else {
                w
            }
        });
        let mut slice = Slice {
            source: path.to_path_buf(),
            frame: s,
            rows,
            cols,
            pixels,
            rescale,
            geometry: Geometry {
                position: Some(pos),
                orientation: Some([r[0], r[1], r[2], c[0], c[1], c[2]]),
                pixel_spacing: Some([norm(axes[q]), norm(axes[p])]),
                slice_location: None,
                slice_thickness: Some(norm(axes[k])),
                instance_number: None,
            },
            uids: Uids { study: String::new(), series: series.clone(), sop: String::new() },
            modality: None,
            image_type: vec![],
            transfer_syntax: None,
            kind: SourceKind::Nifti,
        };
        orient::canonicalize(&mut slice);
        slices.push(slice);
    }
    Ok(slices)
}

/// Voxels of the datatypes the nifti crate will not convert to f32 (32- and 64-bit integers,
/// float64), read from `raw` in the file's byte order; `None` for any other type.
fn wide_voxels(raw: &[u8], dtype: NiftiType, order: Endianness) -> Option<Vec<f32>> {
    let size = dtype.size_of();
    let big = order == Endianness::Big;
    // The value's bytes, least significant first, in the low `size` bytes.
    let word = |c: &[u8]| -> [u8; 8] {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(c);
        if big {
            b[..size].reverse();
        }
        b
    };
    let conv: fn([u8; 8]) -> f32 = match dtype {
        NiftiType::Int32 => |b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        NiftiType::Uint32 => |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
        NiftiType::Int64 => |b| i64::from_le_bytes(b) as f32,
        NiftiType::Uint64 => |b| u64::from_le_bytes(b) as f32,
        NiftiType::Float64 => |b| f64::from_le_bytes(b) as f32,
        _ => return None,
    };
    Some(raw.chunks_exact(size).map(|c| conv(word(c))).collect())
}
