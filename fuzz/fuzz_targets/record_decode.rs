//! The record, segment-header and metadata decoders on arbitrary bytes:
//! never a panic, and every record they accept re-encodes to the same bytes.

#![no_main]

use std::path::Path;

use dedupstore::internals::{
    check_meta, check_segment_header, decode, encode, encoded_len, Decoded,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Decoded::Record(rec, len) = decode(data) {
        assert_eq!(len, encoded_len(rec.key.len()));
        let mut again = vec![0u8; len];
        encode(&mut again, rec.kind, rec.expires_at, rec.key);
        assert_eq!(&again[..], &data[..len], "decode/encode round trip");
    }
    let _ = check_segment_header(data, 1, Path::new("seg"));
    let _ = check_meta(data, Path::new("meta"));
});
