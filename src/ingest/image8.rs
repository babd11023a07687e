//! 8-bit display images (PNG), for training material such as the UCSD COVID-CT collection:
//! slices cut from published figures, already windowed for display, so without Hounsfield units.
//!
//! They are read only when the caller names the display window to assume
//! ([`super::IngestOptions::display_window`], `--assume-window` of `prep` and `eval`): grey
//! level g ∈ [0, 255] maps linearly onto that window, HU = (center − width/2) + g·width/255,
//! so that preprocessing with the same window gives back g/255 exactly. The daemon never sets it:
//! an 8-bit picture dropped on the appliance is refused, not guessed at.

use std::path::Path;

use super::{Geometry, IngestError, Limits, Pixels, Rescale, Slice, SourceKind, Uids};

/// True when the file name says PNG.
pub fn is_image_name(path: &Path) -> bool {
    path.extension().map(|e| e.eq_ignore_ascii_case("png")).unwrap_or(false)
}

/// Decodes a grayscale (or RGB, taken as luminance) PNG into one slice whose modality LUT maps
/// grey levels onto `window` (center, width in HU).
pub fn read_bytes(path: &Path, bytes: &[u8], window: (f64, f64), limits: &Limits) -> Result<Vec<Slice>, IngestError> {
    let bad = |r: String| IngestError::rejected(path, r);
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| bad(format!("not a readable PNG: {e}")))?;
    let (w, h) = (reader.info().width as usize, reader.info().height as usize);
    if (w as u64) * (h as u64) > limits.max_pixels_per_slice || w == 0 || h == 0 {
        return Err(bad(format!("image size {w}×{h} outside the accepted range")));
    }
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut buf).map_err(|e| bad(format!("PNG data: {e}")))?;
    let channels = frame.color_type.samples();
    let gray: Vec<u16> = buf[..frame.buffer_size()]
        .chunks_exact(channels)
        .map(|px| match channels {
            1 | 2 => u16::from(px[0]),
            // ITU-R BT.601 luma of an RGB(A) picture.
            _ => ((299 * u32::from(px[0]) + 587 * u32::from(px[1]) + 114 * u32::from(px[2]) + 500) / 1000) as u16,
        })
        .collect();
    let (center, width) = window;
    Ok(vec![Slice {
        source: path.to_path_buf(),
        frame: 0,
        rows: h,
        cols: w,
        pixels: Pixels::U16(gray),
        rescale: Rescale { slope: width / 255.0, intercept: center - width / 2.0 },
        geometry: Geometry::default(),
        uids: Uids { study: String::new(), series: format!("image:{}", path.display()), sop: String::new() },
        modality: None,
        image_type: vec!["DISPLAY8".into()],
        transfer_syntax: None,
        kind: SourceKind::Image,
    }])
}
