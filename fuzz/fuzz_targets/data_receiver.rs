//! DATA receiver: the input fed in one call and in pieces (cut points from the first bytes)
//! gives the same stored form and the same end; the stored form never holds a lone-dot line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posta::protocol::data::{BodyLimits, BodyReceiver, Mode};

fn run(max_line: usize, segs: &[&[u8]]) -> (Vec<u8>, usize, bool, bool) {
    let mut r = BodyReceiver::new(Mode::Data, BodyLimits { max_bytes: 0, max_line });
    let mut out = Vec::new();
    let mut consumed = 0;
    for s in segs {
        let f = r.feed(s, &mut out);
        assert!(f.consumed <= s.len());
        consumed += f.consumed;
        if f.done {
            return (out, consumed, true, r.bare_eol());
        }
        assert_eq!(f.consumed, s.len());
    }
    (out, consumed, false, r.bare_eol())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    // Folding at 0 (never) or 80..=335, like the config allows.
    let max_line = if data[0] == 0 { 0 } else { 80 + data[0] as usize };
    let step = 1 + data[1] as usize % 64;
    let input = &data[2..];
    let whole = run(max_line, &[input]);
    let segs: Vec<&[u8]> = input.chunks(step).collect();
    let split = run(max_line, &segs);
    assert_eq!(whole, split, "segmentation changed the result");
    let out = &whole.0;
    assert!(!out.starts_with(b".\r\n"));
    assert!(!out.windows(5).any(|w| w == b"\r\n.\r\n"));
    if whole.2 {
        // Complete: CRLF line endings only.
        for (i, &b) in out.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'));
            }
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r');
            }
        }
    }
});
