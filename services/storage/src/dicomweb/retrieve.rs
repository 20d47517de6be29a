//! What WADO-RS sends: the transfer syntax an Accept header asks for,
//! transcoding, frames, and multipart/related bodies.

use dicom_object::{FileDicomObject, InMemDicomObject, OpenFileOptions};
use dicom_pixeldata::Transcode;
use dicom_transfer_syntax_registry::{TransferSyntaxIndex, TransferSyntaxRegistry};

pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";

/// What a client will take, from its Accept header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The stored transfer syntax (`transfer-syntax=*`).
    AsStored,
    Syntax(String),
}

impl Wanted {
    pub fn resolve<'a>(&'a self, stored: &'a str) -> &'a str {
        match self {
            Wanted::AsStored => stored,
            Wanted::Syntax(ts) => ts,
        }
    }
}

/// The media type of one part of a multipart/related response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acceptable {
    pub part_type: String,
    pub wanted: Wanted,
    /// The bare part asked for, not multipart/related (one instance as
    /// `application/dicom`, PS3.18 table 10.4.4-1).
    pub single_part: bool,
}

/// A media type (lower case) and its parameters (names lower case, values
/// unquoted as given), from one Accept range or a Content-Type.
pub fn media_type(range: &str) -> (String, Vec<(String, String)>) {
    let mut it = range.split(';');
    let media = it.next().unwrap_or("").trim().to_ascii_lowercase();
    let params = it
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_owned()))
        .collect();
    (media, params)
}

/// Picks the first media range of `accept` that `part_types` can serve as
/// multipart/related (a missing header takes the first part type). The
/// transfer syntax defaults to Explicit VR Little Endian (PS3.18 8.7.3.5).
pub fn negotiate(accept: Option<&str>, part_types: &[&str]) -> Result<Acceptable, String> {
    negotiate_single(accept, part_types, false)
}

/// [`negotiate`], where a bare part type (e.g. `application/dicom`) is
/// also served when `single` (the resource is one instance).
pub fn negotiate_single(accept: Option<&str>, part_types: &[&str], single: bool) -> Result<Acceptable, String> {
    let default = Acceptable {
        part_type: part_types[0].to_owned(),
        wanted: Wanted::Syntax(EXPLICIT_VR_LE.into()),
        single_part: false,
    };
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else { return Ok(default) };
    for range in accept.split(',') {
        let (media, params) = media_type(range);
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let wanted = match param("transfer-syntax") {
            Some(ts) if ts == "*" => Wanted::AsStored,
            Some(ts) => Wanted::Syntax(ts),
            None => Wanted::Syntax(EXPLICIT_VR_LE.into()),
        };
        match media.as_str() {
            "*/*" | "multipart/*" => return Ok(Acceptable { wanted, ..default }),
            bare if single && part_types.contains(&bare) => {
                return Ok(Acceptable { part_type: bare.to_owned(), wanted, single_part: true });
            }
            "multipart/related" => {
                let part_type = param("type").unwrap_or_else(|| part_types[0].to_owned()).to_ascii_lowercase();
                if part_types.contains(&part_type.as_str()) {
                    return Ok(Acceptable { part_type, wanted, single_part: false });
                }
            }
            _ => {}
        }
    }
    Err(format!(
        "Accept {accept:?} names nothing this resource is served as; it is served as multipart/related; type=\"{}\" \
         (optionally with transfer-syntax=* or a transfer syntax UID){}",
        part_types.join("\" or \""),
        if single { ", or as one bare part" } else { "; a bare part only for one instance" }
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum RetrieveError {
    /// The instance cannot be given in the asked transfer syntax: 406.
    #[error("{0}")]
    NotAcceptable(String),
    /// The stored object is unreadable: 500.
    #[error("a stored object does not parse: {0}")]
    Corrupt(String),
}

fn open(bytes: &[u8]) -> Result<FileDicomObject<InMemDicomObject>, RetrieveError> {
    OpenFileOptions::new()
        .from_reader(bytes.get(128..).unwrap_or_default())
        .map_err(|e| RetrieveError::Corrupt(e.to_string()))
}

/// The Part-10 bytes in transfer syntax `want`: as stored when they match,
/// else transcoded where a codec exists.
pub fn in_syntax(stored: Vec<u8>, stored_ts: &str, want: &str) -> Result<Vec<u8>, RetrieveError> {
    if want == stored_ts {
        return Ok(stored);
    }
    let obj = transcoded(&stored, stored_ts, want)?;
    let mut out = Vec::with_capacity(stored.len() + 1024);
    obj.write_all(&mut out).map_err(|e| RetrieveError::Corrupt(e.to_string()))?;
    Ok(out)
}

fn transcoded(stored: &[u8], stored_ts: &str, want: &str) -> Result<FileDicomObject<InMemDicomObject>, RetrieveError> {
    let target = TransferSyntaxRegistry
        .get(want)
        .ok_or_else(|| RetrieveError::NotAcceptable(format!("transfer syntax {want} is unknown")))?;
    let mut obj = open(stored)?;
    obj.transcode(target).map_err(|e| {
        RetrieveError::NotAcceptable(format!(
            "the instance is stored as {stored_ts} and cannot be given as {want} ({e}); ask for transfer-syntax=*"
        ))
    })?;
    Ok(obj)
}

/// Frames (1-based) of an instance in transfer syntax `want`, and the
/// syntax they are in. Native pixel data is cut into frames; encapsulated
/// pixel data gives one frame per fragment, or every fragment of a
/// single-frame instance.
pub fn frames(stored: &[u8], stored_ts: &str, want: &str, numbers: &[u32]) -> Result<Vec<Vec<u8>>, RetrieveError> {
    use dicom_core::value::Value as DicomValue;
    use dicom_dictionary_std::tags;
    let obj = if want == stored_ts { open(stored)? } else { transcoded(stored, stored_ts, want)? };
    let int = |tag| obj.get(tag).and_then(|e| e.to_int::<u32>().ok());
    let count = int(tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    if let Some(n) = numbers.iter().find(|n| **n == 0 || **n > count) {
        return Err(RetrieveError::NotAcceptable(format!("frame {n} is not in 1..={count}")));
    }
    let pixels = obj
        .get(tags::PIXEL_DATA)
        .ok_or_else(|| RetrieveError::NotAcceptable("the instance has no pixel data".into()))?;
    match pixels.value() {
        DicomValue::PixelSequence(seq) => {
            let fragments = seq.fragments();
            numbers
                .iter()
                .map(|n| {
                    if count == 1 {
                        Ok(fragments.iter().flat_map(|f| f.iter().copied()).collect())
                    } else if fragments.len() == count as usize {
                        Ok(fragments[*n as usize - 1].to_vec())
                    } else {
                        Err(RetrieveError::NotAcceptable(format!(
                            "the frames of this multi-frame instance span {} fragments; ask for \
                             transfer-syntax={EXPLICIT_VR_LE}",
                            fragments.len()
                        )))
                    }
                })
                .collect()
        }
        _ => {
            let data = pixels.to_bytes().map_err(|e| RetrieveError::Corrupt(e.to_string()))?;
            let rows = int(tags::ROWS).unwrap_or(0) as usize;
            let columns = int(tags::COLUMNS).unwrap_or(0) as usize;
            let samples = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1) as usize;
            let bits = int(tags::BITS_ALLOCATED).unwrap_or(8) as usize;
            let frame_bytes = (rows * columns * samples * bits).div_ceil(8);
            numbers
                .iter()
                .map(|n| {
                    let start = (*n as usize - 1) * frame_bytes;
                    let frame = data
                        .get(start..start + frame_bytes)
                        .ok_or_else(|| RetrieveError::Corrupt(format!("frame {n} runs past the pixel data")))?;
                    Ok(frame.to_vec())
                })
                .collect()
        }
    }
}

/// One part of a multipart/related body.
pub fn part(boundary: &str, content_type: &str, location: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 160);
    out.extend_from_slice(format!("--{boundary}\r\nContent-Type: {content_type}\r\n").as_bytes());
    if let Some(location) = location {
        out.extend_from_slice(format!("Content-Location: {location}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
    out
}

pub fn closing(boundary: &str) -> Vec<u8> {
    format!("--{boundary}--\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_pick_the_part_type_and_transfer_syntax() {
        let dicom = ["application/dicom"];
        assert_eq!(negotiate(None, &dicom).unwrap().wanted, Wanted::Syntax(EXPLICIT_VR_LE.into()));
        let star = negotiate(Some("multipart/related; type=\"application/dicom\"; transfer-syntax=*"), &dicom);
        assert_eq!(star.unwrap().wanted, Wanted::AsStored);
        let jpeg = negotiate(
            Some("multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"),
            &dicom,
        );
        assert_eq!(jpeg.unwrap().wanted, Wanted::Syntax("1.2.840.10008.1.2.4.50".into()));
        assert!(negotiate(Some("*/*"), &dicom).is_ok());
        // A bare application/dicom: one instance only.
        let bare = negotiate_single(Some("application/dicom; transfer-syntax=*"), &dicom, true).unwrap();
        assert_eq!((bare.single_part, bare.wanted), (true, Wanted::AsStored));
        let e = negotiate_single(Some("application/dicom"), &dicom, false).unwrap_err();
        assert!(e.contains("a bare part only for one instance"), "{e}");
        assert!(!negotiate_single(Some("*/*"), &dicom, true).unwrap().single_part, "a wildcard stays multipart");
        let e = negotiate(Some("application/json"), &dicom).unwrap_err();
        assert!(e.contains("application/json") && e.contains("multipart/related"), "{e}");
        let frames = ["application/octet-stream", "image/jpeg"];
        let jpeg = negotiate(Some("multipart/related; type=\"image/jpeg\"; transfer-syntax=*"), &frames).unwrap();
        assert_eq!(jpeg.part_type, "image/jpeg");
    }

    #[test]
    fn a_multipart_body_frames_each_part() {
        let mut body = part("b1", "application/dicom", None, b"abc");
        body.extend(closing("b1"));
        assert_eq!(body, b"--b1\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--b1--\r\n");
    }
}
