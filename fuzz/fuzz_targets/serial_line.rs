//! Serial lines: any byte stream, cut anywhere, gives bounded lines and parser results, never a
//! panic, and the same lines however it is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proofline_agent::source::line::{Framing, LineFramer, LineParser};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else { return };
    let cut = usize::from(cut).min(stream.len());
    let re = regex::Regex::new(r"^<(?P<program>\d+)>:\s*(?P<value>[-\d.]+)\s*(?P<unit>\S+):\((?P<status>OK|NOK)\)").unwrap();
    let parsers = [
        LineParser::Delimited { separator: b';' },
        LineParser::KeyValue { separator: b' ' },
        LineParser::Pattern(re),
    ];
    for framing in [Framing::Cr, Framing::Lf, Framing::CrLf, Framing::Byte(0x03)] {
        let mut whole = LineFramer::new(framing, 64);
        let all = whole.push(stream);
        let mut split = LineFramer::new(framing, 64);
        let mut parts = split.push(&stream[..cut]);
        parts.extend(split.push(&stream[cut..]));
        assert_eq!(all, parts);
        for line in all.into_iter().flatten() {
            assert!(line.len() <= 64);
            for p in &parsers {
                let _ = p.parse(&line);
            }
        }
    }
});
