//! HL7 v2 orders as an interface engine sends them over MLLP: frames cut
//! from the byte stream, each message parsed, read into an order and
//! answered with an ACK; and an ACK read as the delivery worker reads a
//! receiver's answer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_events::UnixMicros;
use meridian_reporting::adapters::{hl7, hl7_order, orders};

fuzz_target!(|input: &[u8]| {
    let mut buffer = input.to_vec();
    while let Some(frame) = orders::next_frame(&mut buffer) {
        let text = String::from_utf8_lossy(&frame);
        let Ok(message) = hl7_order::Message::parse(&text) else { continue };
        let header = hl7_order::header(&message);
        let refused = hl7_order::order(&message, "acme", "acme-general").err();
        let ack = hl7_order::ack(&header, refused.as_ref(), "us-east", UnixMicros(1_800_000_000_000_000));
        // Our own answer is one the other side can read.
        let read = hl7::ack(&ack).expect("our ACK reads as an ACK");
        assert_eq!(read.code, refused.as_ref().map_or("AA", |r| r.code));
    }
    let _ = hl7::ack(&String::from_utf8_lossy(input));
});
