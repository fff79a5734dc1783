//! BDAT receiver (text and BINARYMIME): segmentation does not change the stored form, every
//! octet is consumed, and no stored line is a lone dot; in text mode every line that starts
//! with a dot is stuffed and line endings are CRLF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posta::protocol::data::{BodyLimits, BodyReceiver, Mode};

fn run(mode: Mode, max_line: usize, segs: &[&[u8]]) -> (Vec<u8>, u64) {
    let mut r = BodyReceiver::new(mode, BodyLimits { max_bytes: 0, max_line });
    let mut out = Vec::new();
    for s in segs {
        let f = r.feed(s, &mut out);
        assert!(!f.done);
        assert_eq!(f.consumed, s.len());
    }
    r.finish(&mut out);
    (out, r.bytes())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let mode = if data[0] & 1 == 0 { Mode::Bdat } else { Mode::Binary };
    let max_line = if data[0] & 2 == 0 {
        0
    } else {
        80 + (data[0] >> 2) as usize
    };
    let step = 1 + data[1] as usize % 64;
    let input = &data[2..];
    let whole = run(mode, max_line, &[input]);
    let segs: Vec<&[u8]> = input.chunks(step).collect();
    let split = run(mode, max_line, &segs);
    assert_eq!(whole, split, "segmentation changed the result");
    assert_eq!(whole.1, input.len() as u64);
    let out = &whole.0;
    assert!(!out.starts_with(b".\r\n"));
    assert!(!out.windows(5).any(|w| w == b"\r\n.\r\n"));
    if mode == Mode::Bdat {
        assert!(out.is_empty() || out.ends_with(b"\r\n"));
        for line in out.split(|&b| b == b'\n') {
            if line.first() == Some(&b'.') {
                assert!(line.starts_with(b".."), "unstuffed line");
            }
        }
        for (i, &b) in out.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'));
            }
        }
    }
});
