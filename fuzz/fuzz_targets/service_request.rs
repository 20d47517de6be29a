//! A FHIR R4 ServiceRequest posted to `/fhir/ServiceRequest`: JSON read
//! into an order, or refused naming the element at fault.

#![no_main]

use libfuzzer_sys::fuzz_target;
use meridian_reporting::adapters::orders;

fuzz_target!(|input: &[u8]| {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(input) else { return };
    if let Err((element, why)) = orders::service_request(&body, "acme", "acme-general") {
        assert!(!element.is_empty() && !why.is_empty());
    }
});
