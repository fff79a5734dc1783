//! Arbitrary bytes through the PROXY header reader (as the driver feeds it: only what it asks
//! for) and through the XCLIENT attribute parser. Neither may panic, and the reader may never
//! take more than a v1 line or a v2 header's announced length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posta::protocol::proxy::{HeaderReader, Next};

fuzz_target!(|data: &[u8]| {
    let mut reader = HeaderReader::new();
    let mut pos = 0;
    loop {
        let take = match reader.next() {
            Next::Done(_) => break,
            Next::Exact(n) => n,
            Next::Line(max) => {
                let rest = &data[pos..data.len().min(pos + max)];
                rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |i| i + 1)
            }
        };
        if take == 0 || pos + take > data.len() {
            break;
        }
        reader.push(&data[pos..pos + take]);
        pos += take;
    }
    assert!(pos <= 16 + 65535);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(r) = posta::protocol::xclient::parse(text) {
            assert_eq!(r.code, 501);
        }
    }
});
