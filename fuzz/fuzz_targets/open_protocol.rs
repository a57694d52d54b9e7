//! Open Protocol: any byte stream gives frames or a reasoned refusal, never a panic; a decoded
//! tightening re-encodes to data that decodes to the same tightening.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proofline_common::open_protocol::{Frame, FrameReader, Tightening};

fuzz_target!(|data: &[u8]| {
    let mut r = FrameReader::new();
    r.push(data);
    while let Some(f) = r.next_frame() {
        let Ok(frame) = f else { continue };
        if let Ok(t) = Tightening::decode(&frame) {
            let again = Frame::encode(61, t.revision, &t.encode_data());
            let mut r2 = FrameReader::new();
            r2.push(&again);
            let back = Tightening::decode(&r2.next_frame().unwrap().unwrap()).unwrap();
            assert_eq!(back, t);
        }
    }
});
