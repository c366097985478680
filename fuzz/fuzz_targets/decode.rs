//! Any bytes: decoding never panics, and whatever decodes re-encodes to the same bytes;
//! verification with a key never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_protocol::{verify, Frame};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        let bytes = frame.encode().expect("a decoded frame encodes");
        assert_eq!(bytes, data, "decode/encode is not canonical");
    }
    let _ = verify(data, b"fuzz key");
});
