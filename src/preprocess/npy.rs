//! Writing NumPy `.npy` files (format 1.0, little-endian float32, C order) in a stream: the
//! header is written with room for the final shape and patched when the file is finished.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Header length (magic + version + length + dict, padded), fixed so it can be rewritten.
const HEADER_LEN: usize = 128;

/// A float32 array `[N, dims...]` written slice by slice along N.
pub struct NpyWriter {
    path: PathBuf,
    file: BufWriter<File>,
    inner_dims: Vec<usize>,
    rows: usize,
}

fn header(shape: &[usize]) -> Vec<u8> {
    header_for("<f4", shape, Some(HEADER_LEN))
}

/// A format 1.0 header for `descr` and `shape`, `len` bytes long (the shortest multiple of 64
/// when `None`).
fn header_for(descr: &str, shape: &[usize], len: Option<usize>) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let len = len.unwrap_or_else(|| (10 + dict.len() + 1).div_ceil(64) * 64);
    let mut h = b"\x93NUMPY\x01\x00".to_vec();
    h.extend_from_slice(&((len - 10) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.resize(len - 1, b' ');
    h.push(b'\n');
    h
}

impl NpyWriter {
    /// Creates `path` for rows of shape `inner_dims`.
    pub fn create(path: &Path, inner_dims: &[usize]) -> std::io::Result<NpyWriter> {
        let mut file = BufWriter::new(File::create(path)?);
        let mut shape = vec![0];
        shape.extend_from_slice(inner_dims);
        file.write_all(&header(&shape))?;
        Ok(NpyWriter { path: path.to_path_buf(), file, inner_dims: inner_dims.to_vec(), rows: 0 })
    }

    /// Appends one row (`product(inner_dims)` values).
    pub fn push(&mut self, row: &[f32]) -> std::io::Result<()> {
        let want: usize = self.inner_dims.iter().product();
        if row.len() != want {
            return Err(std::io::Error::other(format!("{}: row of {} values, {want} expected", self.path.display(), row.len())));
        }
        let mut bytes = Vec::with_capacity(row.len() * 4);
        for v in row {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        self.file.write_all(&bytes)?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the final shape into the header and flushes to disk.
    pub fn finish(mut self) -> std::io::Result<usize> {
        let mut shape = vec![self.rows];
        shape.extend_from_slice(&self.inner_dims);
        self.file.seek(SeekFrom::Start(0))?;
        self.file.write_all(&header(&shape))?;
        let f = self.file.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(self.rows)
    }
}

/// Writes a whole little-endian array in one go: `descr` is NumPy's type string (`<i2`, `|u1`,
/// `<f4`, …) and `data` the C-order bytes of `shape`.
pub fn write_array(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> std::io::Result<()> {
    let mut bytes = header_for(descr, shape, None);
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_fixed_size_and_parsable() {
        let h = header(&[12345, 3, 224, 224]);
        assert_eq!(h.len(), HEADER_LEN);
        assert_eq!(HEADER_LEN % 64, 0);
        let text = String::from_utf8_lossy(&h[10..]);
        assert!(text.contains("'shape': (12345, 3, 224, 224)"));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let mut w = NpyWriter::create(&p, &[2]).unwrap();
        w.push(&[1.0, 2.0]).unwrap();
        w.push(&[3.0, -4.5]).unwrap();
        assert_eq!(w.finish().unwrap(), 2);
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), HEADER_LEN + 16);
        assert!(String::from_utf8_lossy(&b[..HEADER_LEN]).contains("'shape': (2, 2)"));
        assert_eq!(f32::from_le_bytes(b[HEADER_LEN + 12..].try_into().unwrap()), -4.5);
    }
}
