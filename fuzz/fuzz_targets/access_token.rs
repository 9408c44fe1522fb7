//! Verification of access tokens presented by clients.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let key = medsfu_api::TokenKey::new(b"fuzzing secret, 32 bytes or more");
        assert!(key.verify(text, std::time::SystemTime::UNIX_EPOCH).is_err() || text.contains('.'));
    }
});
