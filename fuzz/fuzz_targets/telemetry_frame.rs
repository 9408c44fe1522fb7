//! Telemetry frames from vehicles and participants, and WFDB headers.
#![no_main]
use libfuzzer_sys::fuzz_target;
use medsfu_telemetry::frame::Frame;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((f, n)) = Frame::decode(rest) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(f.encode().expect("re-encodes"), &rest[..n]);
        rest = &rest[n..];
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = medsfu_telemetry::wfdb::parse_header(text);
    }
});
