//! Envelope and payload decoding as every consumer does it: what decodes
//! encodes back to the same envelope, and a payload is decoded by its type
//! name and schema version without a panic, whatever the bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_events::{Envelope, Payload, payload::CATALOGUE};

fuzz_target!(|input: &[u8]| {
    if let Ok(envelope) = Envelope::decode(input) {
        let again = Envelope::decode(&envelope.encode_to_vec()).expect("a decoded envelope encodes to one that decodes");
        assert_eq!(again.encode_to_vec(), envelope.encode_to_vec());
        let _ = envelope.digest(input);
        let _ = envelope.open_plain();
    }
    let Some((&which, bytes)) = input.split_first() else { return };
    let info = &CATALOGUE[usize::from(which) % CATALOGUE.len()];
    if let Ok(payload) = Payload::decode(info.type_name, info.schema_version, bytes) {
        assert_eq!(payload.type_name(), info.type_name);
        let bytes = payload.encode_to_vec();
        let again = Payload::decode(info.type_name, info.schema_version, &bytes)
            .expect("a decoded payload encodes to one that decodes");
        // Compared as bytes: a float field may hold NaN, never equal to itself.
        assert_eq!(again.encode_to_vec(), bytes);
    }
});
