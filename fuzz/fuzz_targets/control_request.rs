//! Control API request bodies and the audit listing's query string.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // At most every kind accepts the input; none may panic.
    assert!(medsfu_api::control_api::parse_request_bodies(data) <= 6);
});
