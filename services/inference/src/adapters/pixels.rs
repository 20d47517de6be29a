//! A slice as a model reads it: decoded (dicom-pixeldata), rescaled to the
//! modality's units by the instance's own Rescale Slope and Intercept,
//! windowed to [0, 1], resized (nearest neighbour) to the model's size.

use dicom_object::from_reader;
use dicom_pixeldata::PixelDecoder;

/// Why a slice could not be read: a reason code and what (no PHI).
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct SliceError {
    pub reason: &'static str,
    pub detail: String,
}

/// [`slice`] of each object, in order, decoded on `threads` blocking
/// threads at once (a JPEG 2000 study is seconds of decode on one core).
pub async fn slices(
    objects: Vec<Vec<u8>>,
    (centre, width): (f64, f64),
    (rows, columns): (u32, u32),
    threads: usize,
) -> Result<Vec<Vec<f32>>, SliceError> {
    let per_thread = objects.len().div_ceil(threads.max(1)).max(1);
    let mut parts = Vec::new();
    let mut objects = objects.into_iter().peekable();
    while objects.peek().is_some() {
        let part: Vec<Vec<u8>> = objects.by_ref().take(per_thread).collect();
        parts.push(tokio::task::spawn_blocking(move || {
            part.iter().map(|bytes| slice(bytes, centre, width, rows, columns)).collect::<Result<Vec<_>, _>>()
        }));
    }
    let mut out = Vec::new();
    for part in parts {
        let decoded =
            part.await.map_err(|e| SliceError { reason: "decode", detail: format!("the decoding thread: {e}") })??;
        out.extend(decoded);
    }
    Ok(out)
}

/// The first frame of the Part-10 `bytes`, as `rows` × `columns` values in
/// [0, 1] under the window (`centre`, `width`).
pub fn slice(bytes: &[u8], centre: f64, width: f64, rows: u32, columns: u32) -> Result<Vec<f32>, SliceError> {
    let object = from_reader(bytes)
        .map_err(|e| SliceError { reason: "decode", detail: format!("not a DICOM Part-10 object: {e}") })?;
    let syntax = object.meta().transfer_syntax().trim_end_matches('\0').to_owned();
    let decoded = object.decode_pixel_data().map_err(|e| SliceError {
        reason: if e.to_string().contains("Unsupported") || e.to_string().contains("unsupported") {
            "unsupported_transfer_syntax"
        } else {
            "decode"
        },
        detail: format!("transfer syntax {syntax}: {e}"),
    })?;
    let (h, w) = (decoded.rows() as usize, decoded.columns() as usize);
    let values: Vec<f32> = decoded
        .to_vec_frame::<f32>(0)
        .map_err(|e| SliceError { reason: "decode", detail: format!("frame 0 ({h}x{w}): {e}") })?;
    if values.len() < h * w || h == 0 || w == 0 {
        return Err(SliceError { reason: "decode", detail: format!("{} values for {h}x{w}", values.len()) });
    }
    Ok(window_and_resize(&values, h, w, centre, width, rows as usize, columns as usize))
}

/// Windows `values` (h × w) to [0, 1] and resizes them to `rows` × `columns`.
pub fn window_and_resize(
    values: &[f32],
    h: usize,
    w: usize,
    centre: f64,
    width: f64,
    rows: usize,
    columns: usize,
) -> Vec<f32> {
    let low = centre - width / 2.0;
    let mut out = Vec::with_capacity(rows * columns);
    for r in 0..rows {
        let y = r * h / rows;
        for c in 0..columns {
            let x = c * w / columns;
            let v = (f64::from(values[y * w + x]) - low) / width;
            out.push(v.clamp(0.0, 1.0) as f32);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_maps_its_range_to_zero_to_one_and_clips_the_rest() {
        let values = [30.0, 50.0, 70.0, 90.0, 1000.0, -1000.0];
        let out = window_and_resize(&values, 1, 6, 70.0, 40.0, 1, 6);
        assert_eq!(out, [0.0, 0.0, 0.5, 1.0, 1.0, 0.0]);
        // 4x4 to 2x2 takes every other pixel.
        let grid: Vec<f32> = (0..16).map(|v| v as f32).collect();
        assert_eq!(window_and_resize(&grid, 4, 4, 8.0, 16.0, 2, 2), [0.0, 0.125, 0.5, 0.625]);
    }
}
