//! The record, segment-header and metadata decoders on arbitrary bytes:
//! never a panic, and every record they accept re-encodes to the same bytes.

#![no_main]

use std::path::Path;

use dedupstore::internals::{
    body_len, check_meta, check_segment_header, decode, encode_body, Decoded,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Decoded::Record(rec, len) = decode(data) {
        assert_eq!(len, body_len(rec.key.len(), &rec.body));
        assert_eq!(rec.kind, rec.body.kind());
        let mut again = vec![0u8; len];
        encode_body(&mut again, &rec.body, rec.expires_at, rec.key);
        assert_eq!(&again[..], &data[..len], "decode/encode round trip");
    }
    let _ = check_segment_header(data, 1, Path::new("seg"));
    let _ = check_meta(data, Path::new("meta"));
});
