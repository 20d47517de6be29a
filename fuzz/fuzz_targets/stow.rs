//! A STOW-RS request body through the multipart reader the route uses,
//! and each part through ingest's checks. The input is the Content-Type
//! header, a newline, then the body.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use meridian_ingest::dataset;
use meridian_ingest::stow::{Part, PartReader, StowLimits};

const LIMITS: StowLimits = StowLimits { max_instance_bytes: 64 * 1024, max_request_bytes: 256 * 1024 };

fuzz_target!(init: common::abort_on_panics_ingest_does_not_catch(), |input: &[u8]| {
    let split = input.iter().position(|b| *b == b'\n').unwrap_or(input.len());
    let content_type = String::from_utf8_lossy(&input[..split]).into_owned();
    let body = bytes::Bytes::copy_from_slice(input.get(split + 1..).unwrap_or_default());
    // Two chunks, so a part boundary may fall between them as on a socket.
    let cut = body.len() / 2;
    let chunks = [body.slice(..cut), body.slice(cut..)].map(Ok::<_, std::io::Error>);
    let Ok(mut parts) = PartReader::new(futures_util::stream::iter(chunks), &content_type, LIMITS) else { return };
    futures_executor::block_on(async {
        while let Ok(Some(Part { index, bytes, .. })) = parts.next().await {
            assert_eq!(index, parts.read());
            let Some(file) = bytes else { continue };
            assert!(file.len() as u64 <= LIMITS.max_instance_bytes);
            if let Ok(instance) = meridian_ingest::stow::instance_of(&file) {
                let _ = dataset::read(&instance);
            }
        }
    });
});
