//! DICOM RLE Lossless (PS3.5 Annex G) decoding, with every length checked.
//!
//! dicom-rs has an RLE decoder, but fuzzing showed it indexes past a short segment (a panic on
//! truncated data); frames are decoded here instead.

/// Decodes one RLE frame of `pixels` samples of `bytes_per_sample` bytes (one sample per pixel)
/// into little-endian samples. The reason names what is malformed.
pub fn decode_frame(fragment: &[u8], pixels: usize, bytes_per_sample: usize) -> Result<Vec<u8>, String> {
    if fragment.len() < 64 {
        return Err(format!("RLE header needs 64 bytes, fragment has {}", fragment.len()));
    }
    let word = |i: usize| u32::from_le_bytes([fragment[4 * i], fragment[4 * i + 1], fragment[4 * i + 2], fragment[4 * i + 3]]) as usize;
    let segments = word(0);
    if segments != bytes_per_sample {
        return Err(format!("RLE frame has {segments} segments, {bytes_per_sample} expected for one sample of {} bits", 8 * bytes_per_sample));
    }
    let mut out = vec![0u8; pixels * bytes_per_sample];
    for s in 0..segments {
        let start = word(1 + s);
        let end = if s + 1 < segments { word(2 + s) } else { fragment.len() };
        if start < 64 || start > end || end > fragment.len() {
            return Err(format!("RLE segment {s} range {start}..{end} lies outside the {}-byte fragment", fragment.len()));
        }
        // Segment 0 holds the most significant bytes.
        let byte = bytes_per_sample - 1 - s;
        let n = packbits(&fragment[start..end], pixels, |i, v| out[i * bytes_per_sample + byte] = v);
        if n < pixels {
            return Err(format!("RLE segment {s} decodes to {n} bytes, {pixels} needed (truncated data)"));
        }
    }
    Ok(out)
}

/// PackBits-decodes `src`, calling `put(index, byte)` for the first `limit` output bytes;
/// returns how many bytes were produced (at most `limit`).
fn packbits(src: &[u8], limit: usize, mut put: impl FnMut(usize, u8)) -> usize {
    let (mut i, mut n) = (0usize, 0usize);
    while i < src.len() && n < limit {
        let h = src[i] as i8;
        i += 1;
        if h >= 0 {
            let count = h as usize + 1;
            let take = count.min(src.len() - i).min(limit - n);
            for k in 0..take {
                put(n + k, src[i + k]);
            }
            n += take;
            i += count;
        } else if h != -128 {
            let count = (1 - h as isize) as usize;
            let Some(&v) = src.get(i) else { break };
            i += 1;
            for k in 0..count.min(limit - n) {
                put(n + k, v);
            }
            n += count.min(limit - n);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packbits_literal_and_repeat_runs() {
        let mut out = vec![0u8; 8];
        let n = packbits(&[2, 1, 2, 3, 0xFE, 9, 0x80, 0], 8, |i, v| out[i] = v);
        assert_eq!((n, out), (6, vec![1, 2, 3, 9, 9, 9, 0, 0]), "a literal run cut short yields what is there");
    }

    #[test]
    fn truncated_or_bad_headers_are_errors() {
        let mut f = vec![0u8; 64];
        f[0] = 2;
        f[4] = 64;
        f[8] = 66;
        f.extend([0, 7, 0]); // segment 0: one literal byte; segment 1: starts at 66, "0" then missing byte
        assert!(decode_frame(&f, 2, 2).unwrap_err().contains("truncated"));
        f[8] = 200;
        assert!(decode_frame(&f, 1, 2).unwrap_err().contains("outside"));
        f[0] = 3;
        assert!(decode_frame(&f, 1, 2).unwrap_err().contains("segments"));
        assert!(decode_frame(&[0; 10], 1, 2).is_err());
    }
}
