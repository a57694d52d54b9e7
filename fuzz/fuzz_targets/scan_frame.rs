//! Scanner frames: any bytes give a UII or a coded refusal, never a panic; an accepted
//! MIL-STD-130 UII obeys its character set and length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proofline_common::scan::{parse_scan, Construct, ScanOptions, MAX_UII_CHARS};

fuzz_target!(|data: &[u8]| {
    for require_aim in [false, true] {
        if let Ok(p) = parse_scan(data, &ScanOptions { require_aim }) {
            let uii = p.uii.as_str();
            assert!(!uii.is_empty());
            if !matches!(p.construct, Construct::GtinSerial | Construct::Giai) {
                assert!(uii.len() <= MAX_UII_CHARS);
                assert!(uii.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'/'));
            }
        }
    }
});
