//! Parsing of signalling messages from clients.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = medsfu_api::parse_client_message(text);
    }
});
