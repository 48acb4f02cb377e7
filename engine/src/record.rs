//! One log record: encode and decode. Layout in docs/FORMAT.md.
//!
//! ```text
//! 0..4   crc32 of bytes 4..len
//! 4      kind: 1 insert, 2 remove, 3 claim, 4 complete
//! 5      flags: bit 0 = a fingerprint follows the key (claim, complete only)
//! 6..8   key length, 1..=1024
//! 8..16  expires_at, ms since the Unix epoch
//! 16..   key
//! then, claim:    fingerprint u64, token u64
//!       complete: fingerprint u64, response length u32, response
//! ```

pub use crate::limits::{MAX_KEY_LEN, MAX_RESPONSE_LEN};

use crate::format::{le, rec as at};

/// Bytes of the fixed record header (checksum, kind, flags, key length, expiry).
pub const RECORD_HEADER_LEN: usize = at::HEADER_LEN;
/// The longest record: header, longest key, complete body, longest response.
pub const MAX_RECORD_LEN: usize = RECORD_HEADER_LEN + MAX_KEY_LEN + 12 + MAX_RESPONSE_LEN;

const FLAG_FINGERPRINT: u8 = 1;

/// Kind bytes (offset 4), as `Kind` discriminants.
pub const KIND_INSERT: u8 = Kind::Insert as u8;
pub const KIND_REMOVE: u8 = Kind::Remove as u8;
pub const KIND_CLAIM: u8 = Kind::Claim as u8;
pub const KIND_COMPLETE: u8 = Kind::Complete as u8;

/// A record's kind, as stored in its kind byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// The key is recorded until the record's expiry.
    Insert = 1,
    /// A removal (tombstone): the key is absent.
    Remove = 2,
    /// The key is in progress, owned by a claim token, until the lease ends.
    Claim = 3,
    /// The claimed work is done; carries the stored response.
    Complete = 4,
}

/// What a record carries besides its key and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body<'a> {
    /// Nothing beyond key and expiry.
    Insert,
    /// Nothing beyond key and expiry (the expiry is the removal's horizon).
    Remove,
    /// Work on the key is owned by `token` until the record expires (the lease).
    Claim {
        /// Payload fingerprint given to `claim`, if any.
        fingerprint: Option<u64>,
        /// The claim token: the LSN where the claim record was first written.
        token: u64,
    },
    /// The work is done; `response` is replayed to duplicates until expiry.
    Complete {
        /// The claim's payload fingerprint, if any.
        fingerprint: Option<u64>,
        /// The stored response (empty = none).
        response: &'a [u8],
    },
}

impl Body<'_> {
    /// The kind of record this body makes.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Insert => Kind::Insert,
            Body::Remove => Kind::Remove,
            Body::Claim { .. } => Kind::Claim,
            Body::Complete { .. } => Kind::Complete,
        }
    }

    fn extra_len(&self) -> usize {
        match self {
            Body::Insert | Body::Remove => 0,
            Body::Claim { .. } => 16,
            Body::Complete { response, .. } => 12 + response.len(),
        }
    }

    /// The payload fingerprint, for a claim or complete that has one.
    pub fn fingerprint(&self) -> Option<u64> {
        match self {
            Body::Claim { fingerprint, .. } | Body::Complete { fingerprint, .. } => *fingerprint,
            _ => None,
        }
    }
}

/// A record borrowed from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's kind.
    pub kind: Kind,
    /// For an insert, claim or complete, when it expires (ms since the
    /// epoch); for a remove, its horizon: until when the records it removed
    /// could still have been present (so GC knows how long it matters).
    pub expires_at: u64,
    /// The key bytes.
    pub key: &'a [u8],
    /// What follows the key.
    pub body: Body<'a>,
}

/// What sits at a position in a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A valid record, and its encoded length.
    Record(Record<'a>, usize),
    /// Zero bytes: the unwritten (preallocated) end of the log.
    End,
    /// Bytes that are not a valid record: torn write or corruption.
    Invalid(&'static str),
}

/// Length of an insert or remove record.
pub fn encoded_len(key_len: usize) -> usize {
    RECORD_HEADER_LEN + key_len
}

/// Length of a record with this key length and body.
pub fn body_len(key_len: usize, body: &Body<'_>) -> usize {
    RECORD_HEADER_LEN + key_len + body.extra_len()
}

/// Encodes an insert or remove into `out` (exactly `encoded_len` long).
#[cfg(feature = "internals")] // only the micro-benchmarks use it, through `internals`
pub fn encode(out: &mut [u8], kind: Kind, expires_at: u64, key: &[u8]) {
    let body = match kind {
        Kind::Remove => Body::Remove,
        _ => Body::Insert,
    };
    encode_body(out, &body, expires_at, key);
}

/// Encodes into `out`, which must be exactly `body_len(key.len(), body)`
/// long. The caller has validated the key and response lengths.
pub fn encode_body(out: &mut [u8], body: &Body<'_>, expires_at: u64, key: &[u8]) {
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
    debug_assert_eq!(out.len(), body_len(key.len(), body));
    out[at::KIND] = body.kind() as u8;
    out[at::FLAGS] = if body.fingerprint().is_some() {
        FLAG_FINGERPRINT
    } else {
        0
    };
    le::put_u16(
        out,
        at::KEY_LEN,
        u16::try_from(key.len()).unwrap_or(u16::MAX),
    );
    le::put_u64(out, at::EXPIRES_AT, expires_at);
    let k = RECORD_HEADER_LEN + key.len();
    out[RECORD_HEADER_LEN..k].copy_from_slice(key);
    match body {
        Body::Insert | Body::Remove => {}
        Body::Claim { fingerprint, token } => {
            le::put_u64(out, k + at::BODY_FINGERPRINT, fingerprint.unwrap_or(0));
            le::put_u64(out, k + at::BODY_TOKEN, *token);
        }
        Body::Complete {
            fingerprint,
            response,
        } => {
            le::put_u64(out, k + at::BODY_FINGERPRINT, fingerprint.unwrap_or(0));
            let n = u32::try_from(response.len()).unwrap_or(u32::MAX);
            le::put_u32(out, k + at::BODY_RESPONSE_LEN, n);
            out[k + at::BODY_RESPONSE..].copy_from_slice(response);
        }
    }
    let crc = crc32fast::hash(&out[at::KIND..]);
    le::put_u32(out, at::CRC, crc);
    // Paired assertion: what was encoded decodes to the same record.
    debug_assert!(matches!(
        decode(out),
        Decoded::Record(r, n) if n == out.len() && r.key == key && r.body == *body
            && r.expires_at == expires_at
    ));
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    le::u64_at(b, at)
}

/// Decodes the record at the start of `buf`. Never panics, whatever the bytes.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    let Some(head) = buf.get(..RECORD_HEADER_LEN) else {
        // Too short for a header: the end if blank, else a torn header.
        return if buf.iter().all(|&b| b == 0) {
            Decoded::End
        } else {
            Decoded::Invalid("truncated record header")
        };
    };
    // Invariant: a valid record never has an all-zero header (kind is never 0),
    // so zeros can only be the unwritten end of a preallocated segment.
    if head.iter().all(|&b| b == 0) {
        return Decoded::End;
    }
    let kind = match head[at::KIND] {
        KIND_INSERT => Kind::Insert,
        KIND_REMOVE => Kind::Remove,
        KIND_CLAIM => Kind::Claim,
        KIND_COMPLETE => Kind::Complete,
        _ => return Decoded::Invalid("unknown record kind"),
    };
    let flags = head[at::FLAGS];
    let allowed = if matches!(kind, Kind::Claim | Kind::Complete) {
        FLAG_FINGERPRINT
    } else {
        0
    };
    if flags & !allowed != 0 {
        return Decoded::Invalid("unknown record flags");
    }
    let key_len = usize::from(le::u16_at(head, at::KEY_LEN));
    if key_len == 0 || key_len > MAX_KEY_LEN {
        return Decoded::Invalid("key length out of range");
    }
    let k = RECORD_HEADER_LEN + key_len;
    let len = match kind {
        Kind::Insert | Kind::Remove => k,
        Kind::Claim => k + at::CLAIM_BODY_LEN,
        Kind::Complete => {
            let Some(n) = buf.get(k + at::BODY_RESPONSE_LEN..k + at::BODY_RESPONSE) else {
                return Decoded::Invalid("record extends past the end of the segment");
            };
            let n = usize::try_from(le::u32_at(n, 0)).unwrap_or(usize::MAX);
            if n > MAX_RESPONSE_LEN {
                return Decoded::Invalid("response length out of range");
            }
            k + at::BODY_RESPONSE + n
        }
    };
    let Some(rec) = buf.get(..len) else {
        return Decoded::Invalid("record extends past the end of the segment");
    };
    let stored = le::u32_at(head, at::CRC);
    if crc32fast::hash(&rec[at::KIND..]) != stored {
        return Decoded::Invalid("record checksum mismatch");
    }
    let fingerprint = match (kind, flags & FLAG_FINGERPRINT != 0) {
        (Kind::Claim | Kind::Complete, true) => Some(u64_at(rec, k + at::BODY_FINGERPRINT)),
        // One encoding per record: without the flag the field must be zero.
        (Kind::Claim | Kind::Complete, false) if u64_at(rec, k) != 0 => {
            return Decoded::Invalid("fingerprint field set without its flag")
        }
        _ => None,
    };
    let body = match kind {
        Kind::Insert => Body::Insert,
        Kind::Remove => Body::Remove,
        Kind::Claim => Body::Claim {
            fingerprint,
            token: u64_at(rec, k + at::BODY_TOKEN),
        },
        Kind::Complete => Body::Complete {
            fingerprint,
            response: &rec[k + at::BODY_RESPONSE..],
        },
    };
    Decoded::Record(
        Record {
            kind,
            expires_at: u64_at(head, at::EXPIRES_AT),
            key: &rec[RECORD_HEADER_LEN..k],
            body,
        },
        len,
    )
}

/// Reads the expiry of a record already known to be valid (index hits).
pub fn expires_at_of(rec: &[u8]) -> u64 {
    u64_at(rec, at::EXPIRES_AT)
}

/// Reads the key length of a record already known to be valid.
pub fn key_len_of(rec: &[u8]) -> usize {
    usize::from(le::u16_at(rec, at::KEY_LEN))
}

/// Reads the kind byte of a record already known to be valid.
pub fn kind_byte_of(rec: &[u8]) -> u8 {
    rec[at::KIND]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(body: Body<'_>, exp: u64, key: &[u8]) -> Vec<u8> {
        let mut v = vec![0; body_len(key.len(), &body)];
        encode_body(&mut v, &body, exp, key);
        v
    }

    #[test]
    fn roundtrip() {
        let v = enc(Body::Remove, 0x0102_0304_0506_0708, b"hello");
        assert_eq!(v.len(), 21);
        assert_eq!(&v[6..8], &[5, 0], "key length is little-endian");
        assert_eq!(
            &v[8..16],
            &[8, 7, 6, 5, 4, 3, 2, 1],
            "expiry is little-endian"
        );
        let rec = Record {
            kind: Kind::Remove,
            expires_at: 0x0102_0304_0506_0708,
            key: b"hello",
            body: Body::Remove,
        };
        assert_eq!(decode(&v), Decoded::Record(rec, 21));
    }

    #[test]
    fn claim_and_complete_roundtrip() {
        for body in [
            Body::Claim {
                fingerprint: Some(7),
                token: 99,
            },
            Body::Claim {
                fingerprint: None,
                token: 1,
            },
            Body::Complete {
                fingerprint: Some(1 << 63),
                response: b"{\"ok\":true}",
            },
            Body::Complete {
                fingerprint: None,
                response: b"",
            },
        ] {
            let v = enc(body, 5, b"key");
            match decode(&v) {
                Decoded::Record(r, len) => {
                    assert_eq!(
                        (r.body, r.key, r.expires_at, len),
                        (body, &b"key"[..], 5, v.len())
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    /// Found by the record_decode fuzzer: a valid complete record must
    /// re-encode to the same bytes (the fuzz target re-encoded it as an
    /// insert), and a fingerprint field without its flag is refused.
    #[test]
    fn fuzz_regression_complete_record_round_trips() {
        let input: [u8; 39] = [
            239, 203, 79, 246, 4, 0, 2, 0, 0, 0, 0, 202, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 4, 0, 123, 123, 123, 123, 123, 123, 123,
        ];
        let Decoded::Record(rec, len) = decode(&input) else {
            panic!("valid record")
        };
        assert_eq!(
            rec.body,
            Body::Complete {
                fingerprint: None,
                response: b""
            }
        );
        let mut again = vec![0u8; body_len(rec.key.len(), &rec.body)];
        encode_body(&mut again, &rec.body, rec.expires_at, rec.key);
        assert_eq!(&again[..], &input[..len]);

        let mut flagless = enc(
            Body::Claim {
                fingerprint: Some(9),
                token: 1,
            },
            5,
            b"k",
        );
        flagless[5] = 0;
        let crc = crc32fast::hash(&flagless[4..]);
        flagless[0..4].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&flagless), Decoded::Invalid(_)));
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        for body in [
            Body::Insert,
            Body::Complete {
                fingerprint: Some(3),
                response: b"resp",
            },
        ] {
            let v = enc(body, 99, b"0123456789abcdef");
            for i in 0..v.len() * 8 {
                let mut w = v.clone();
                w[i / 8] ^= 1 << (i % 8);
                assert!(
                    matches!(decode(&w), Decoded::Invalid(_)),
                    "flip of bit {i} not detected"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_invalid_not_a_record() {
        for body in [
            Body::Insert,
            Body::Claim {
                fingerprint: None,
                token: 4,
            },
            Body::Complete {
                fingerprint: None,
                response: b"xyz",
            },
        ] {
            let v = enc(body, 99, b"0123456789abcdef");
            for cut in 1..v.len() {
                assert!(
                    matches!(decode(&v[..cut]), Decoded::Invalid(_)),
                    "cut at {cut}"
                );
            }
        }
        assert_eq!(decode(&[]), Decoded::End);
        assert_eq!(decode(&[0u8; 40]), Decoded::End);
    }
}
