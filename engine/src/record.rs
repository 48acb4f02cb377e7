//! One log record: encode and decode. Layout in docs/FORMAT.md.
//!
//! ```text
//! 0..4   crc32 of bytes 4..len
//! 4      kind (1 = insert, 2 = remove)
//! 5      flags (0)
//! 6..8   key length, 1..=1024
//! 8..16  expires_at, ms since the Unix epoch
//! 16..   key
//! ```

pub const RECORD_HEADER_LEN: usize = 16;
pub const MAX_KEY_LEN: usize = 1024;
pub const MAX_RECORD_LEN: usize = RECORD_HEADER_LEN + MAX_KEY_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Insert = 1,
    Remove = 2,
}

/// A record borrowed from the bytes it was decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: Kind,
    /// For an insert, when it expires; for a remove, when the insert it
    /// removes would have expired (so GC knows how long the tombstone matters).
    pub expires_at: u64,
    pub key: &'a [u8],
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

pub fn encoded_len(key_len: usize) -> usize {
    RECORD_HEADER_LEN + key_len
}

/// Encodes into `out`, which must be exactly `encoded_len(key.len())` long.
/// The caller has validated the key length.
pub fn encode(out: &mut [u8], kind: Kind, expires_at: u64, key: &[u8]) {
    debug_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
    debug_assert_eq!(out.len(), encoded_len(key.len()));
    out[4] = kind as u8;
    out[5] = 0;
    out[6..8].copy_from_slice(&(key.len() as u16).to_le_bytes());
    out[8..16].copy_from_slice(&expires_at.to_le_bytes());
    out[16..].copy_from_slice(key);
    let crc = crc32fast::hash(&out[4..]);
    out[0..4].copy_from_slice(&crc.to_le_bytes());
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
    let kind = match head[4] {
        1 => Kind::Insert,
        2 => Kind::Remove,
        _ => return Decoded::Invalid("unknown record kind"),
    };
    if head[5] != 0 {
        return Decoded::Invalid("unknown record flags");
    }
    let key_len = u16::from_le_bytes([head[6], head[7]]) as usize;
    if key_len == 0 || key_len > MAX_KEY_LEN {
        return Decoded::Invalid("key length out of range");
    }
    let len = encoded_len(key_len);
    let Some(body) = buf.get(..len) else {
        return Decoded::Invalid("record extends past the end of the segment");
    };
    let stored = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if crc32fast::hash(&body[4..]) != stored {
        return Decoded::Invalid("record checksum mismatch");
    }
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&head[8..16]);
    Decoded::Record(
        Record {
            kind,
            expires_at: u64::from_le_bytes(exp),
            key: &body[RECORD_HEADER_LEN..],
        },
        len,
    )
}

/// Reads the expiry of a record already known to be valid (index hits).
pub fn expires_at_of(rec: &[u8]) -> u64 {
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&rec[8..16]);
    u64::from_le_bytes(exp)
}

/// Reads the key length of a record already known to be valid.
pub fn key_len_of(rec: &[u8]) -> usize {
    u16::from_le_bytes([rec[6], rec[7]]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(kind: Kind, exp: u64, key: &[u8]) -> Vec<u8> {
        let mut v = vec![0; encoded_len(key.len())];
        encode(&mut v, kind, exp, key);
        v
    }

    #[test]
    fn roundtrip() {
        let v = enc(Kind::Remove, 0x0102_0304_0506_0708, b"hello");
        assert_eq!(v.len(), 21);
        assert_eq!(&v[6..8], &[5, 0], "key length is little-endian");
        assert_eq!(
            &v[8..16],
            &[8, 7, 6, 5, 4, 3, 2, 1],
            "expiry is little-endian"
        );
        assert_eq!(
            decode(&v),
            Decoded::Record(
                Record {
                    kind: Kind::Remove,
                    expires_at: 0x0102_0304_0506_0708,
                    key: b"hello"
                },
                21
            )
        );
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let v = enc(Kind::Insert, 99, b"0123456789abcdef");
        for i in 0..v.len() * 8 {
            let mut w = v.clone();
            w[i / 8] ^= 1 << (i % 8);
            assert!(
                matches!(decode(&w), Decoded::Invalid(_)),
                "flip of bit {i} not detected"
            );
        }
    }

    #[test]
    fn every_truncation_is_invalid_not_a_record() {
        let v = enc(Kind::Insert, 99, b"0123456789abcdef");
        for cut in 1..v.len() {
            assert!(
                matches!(decode(&v[..cut]), Decoded::Invalid(_)),
                "cut at {cut}"
            );
        }
        assert_eq!(decode(&[]), Decoded::End);
        assert_eq!(decode(&[0u8; 40]), Decoded::End);
    }
}
