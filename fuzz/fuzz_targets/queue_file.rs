//! Queue file decoder on arbitrary bytes: never panics; whatever it accepts re-encodes to a file
//! that decodes to the same todo and message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use posta::queue::{decode, encode_header};

fuzz_target!(|data: &[u8]| {
    if let Ok((todo, msg)) = decode(data) {
        let mut file = encode_header(&todo);
        file.extend_from_slice(msg);
        let (again, msg2) = decode(&file).expect("re-encoded queue file does not decode");
        assert_eq!(again, todo);
        assert_eq!(msg2, msg);
    }
});
