//! The on-disk format's byte layout, every offset in one place, and the one
//! little-endian reader and writer. docs/FORMAT.md describes the same bytes;
//! `meta.rs`, `segment.rs` and `record.rs` encode and check them.

/// The format version written and the newest one read.
pub const FORMAT_VERSION: u32 = 1;

/// `dedupstore.meta`.
pub mod meta {
    /// Magic at 0..8.
    pub const MAGIC: &[u8; 8] = b"DDUPMETA";
    /// Length of the file.
    pub const LEN: usize = 20;
    /// u32 format version.
    pub const VERSION: usize = 8;
    /// u32 store id: random, fixed when the store is created (0 in stores
    /// created before checkpoints existed). Ties a checkpoint to its store.
    pub const STORE_ID: usize = 12;
    /// u32 CRC-32 of bytes `0..CRC`.
    pub const CRC: usize = 16;
}

/// The 64-byte segment header.
pub mod seg {
    /// Magic at 0..8.
    pub const MAGIC: &[u8; 8] = b"DDUPSEG\0";
    /// Bytes of header before the first record.
    pub const HEADER_LEN: usize = 64;
    /// u32 format version.
    pub const VERSION: usize = 8;
    /// u32 segment id (equals the id in the file name).
    pub const ID: usize = 12;
    /// u32 CRC-32 of bytes `0..HEADER_CRC`.
    pub const HEADER_CRC: usize = 20;
    /// u64 watermark: every byte below it was durable when it was written.
    pub const WATERMARK: usize = 24;
    /// u32 CRC-32 of the 8 watermark bytes.
    pub const WATERMARK_CRC: usize = 32;
    /// End of the watermark slot (watermark + its CRC).
    pub const WATERMARK_SLOT_END: usize = 36;
}

/// `index.ckpt`: a snapshot of the index at a durable log position.
pub mod ckpt {
    /// Magic at 0..8.
    pub const MAGIC: &[u8; 8] = b"DDUPCKPT";
    /// The checkpoint file's own version (independent of the log's).
    pub const VERSION_NUMBER: u32 = 1;
    /// u32 checkpoint version.
    pub const VERSION: usize = 8;
    /// u32 store id (from `dedupstore.meta`).
    pub const STORE_ID: usize = 12;
    /// u64 LSN `L`: the snapshot holds every record before it.
    pub const COVERS: usize = 16;
    /// u64 LSN `M`: it may also reflect records up to here (synced).
    pub const REFLECTS: usize = 24;
    /// u64 entries in the body.
    pub const ENTRIES: usize = 32;
    /// u32 rows in the segment table.
    pub const SEGMENTS: usize = 40;
    /// u32 index shards (256).
    pub const SHARDS: usize = 44;
    /// u64 wall clock (ms) when written; informational.
    pub const WRITTEN_AT: usize = 48;
    /// u32 CRC-32 of bytes `0..HEADER_CRC`.
    pub const HEADER_CRC: usize = 60;
    /// Bytes of the header.
    pub const HEADER_LEN: usize = 64;
    /// A segment table row: u32 id, u32 zero, u64 length covered, u64
    /// records, u64 latest horizon (ms), u64 fingerprint.
    pub const SEG_ROW: usize = 40;
    /// A shard directory row: u64 entries, u64 xxh3 of their bytes.
    pub const DIR_ROW: usize = 16;
    /// An entry: u32 tag, u32 segment, u32 offset, u32 horizon (s).
    pub const ENTRY: usize = 16;
    /// Bytes at each end of a segment's covered range that its fingerprint hashes.
    pub const FP_SPAN: usize = 4096;
}

/// A record: 16-byte header, key, then a body for claims and completes.
pub mod rec {
    /// u32 CRC-32 of bytes `KIND..` to the end of the record.
    pub const CRC: usize = 0;
    /// u8 kind: 1 insert, 2 remove, 3 claim, 4 complete.
    pub const KIND: usize = 4;
    /// u8 flags: bit 0 = a fingerprint is present (claim, complete only).
    pub const FLAGS: usize = 5;
    /// u16 key length.
    pub const KEY_LEN: usize = 6;
    /// u64 expiry, ms since the Unix epoch.
    pub const EXPIRES_AT: usize = 8;
    /// Bytes of the fixed header; the key starts here.
    pub const HEADER_LEN: usize = 16;
    /// Body offsets, from the end of the key: u64 fingerprint (claim and
    /// complete), u64 token (claim), u32 response length then the
    /// response (complete).
    pub const BODY_FINGERPRINT: usize = 0;
    /// See `BODY_FINGERPRINT`.
    pub const BODY_TOKEN: usize = 8;
    /// See `BODY_FINGERPRINT`.
    pub const BODY_RESPONSE_LEN: usize = 8;
    /// See `BODY_FINGERPRINT`.
    pub const BODY_RESPONSE: usize = 12;
    /// Body length of a claim.
    pub const CLAIM_BODY_LEN: usize = 16;
}

/// A snapshot (`Store::export`): its own layout and version, independent of
/// the log's. Header, then blocks, then a trailer; docs/FORMAT.md "Snapshot".
pub mod snap {
    /// Magic at 0..8.
    pub const MAGIC: &[u8; 8] = b"DDUPSNAP";
    /// The snapshot version written and the newest one read.
    pub const VERSION_NUMBER: u32 = 1;
    /// u32 snapshot version.
    pub const VERSION: usize = 8;
    /// u32 flags: none defined, all must be zero.
    pub const FLAGS: usize = 12;
    /// u64 wall clock (ms since the epoch) when the export started.
    pub const CREATED_AT: usize = 16;
    /// u32 store id of the exporting store (from `dedupstore.meta`).
    pub const STORE_ID: usize = 24;
    /// u32 CRC-32 of bytes `0..HEADER_CRC`.
    pub const HEADER_CRC: usize = 28;
    /// Bytes of the header.
    pub const HEADER_LEN: usize = 32;

    /// Frame type byte (offset 0 of a block or the trailer).
    pub const TYPE: usize = 0;
    /// Type byte of a block.
    pub const TYPE_BLOCK: u8 = 1;
    /// Type byte of the trailer.
    pub const TYPE_TRAILER: u8 = 2;
    /// Block header: u32 entries in the block.
    pub const BLOCK_ENTRIES: usize = 4;
    /// Block header: u32 payload length.
    pub const BLOCK_LEN: usize = 8;
    /// Block header: u64 xxh3 of header bytes `0..BLOCK_SUM` and the payload.
    pub const BLOCK_SUM: usize = 16;
    /// Bytes of a block header; the payload follows.
    pub const BLOCK_HEADER_LEN: usize = 24;
    /// Largest payload a reader accepts.
    pub const MAX_BLOCK_PAYLOAD: usize = 4 << 20;

    /// Trailer: u64 blocks.
    pub const TRAILER_BLOCKS: usize = 8;
    /// Trailer: u64 entries (IDs).
    pub const TRAILER_ENTRIES: usize = 16;
    /// Trailer: u64 inserts.
    pub const TRAILER_INSERTS: usize = 24;
    /// Trailer: u64 claims.
    pub const TRAILER_CLAIMS: usize = 32;
    /// Trailer: u64 completes.
    pub const TRAILER_COMPLETES: usize = 40;
    /// Trailer: u64 offset of the trailer in the stream.
    pub const TRAILER_OFFSET: usize = 48;
    /// Trailer: u64 xxh3 of every stream byte before this field.
    pub const TRAILER_SUM: usize = 56;
    /// Bytes of the trailer; the stream ends after it.
    pub const TRAILER_LEN: usize = 64;

    /// Entry: u8 kind (1 insert, 3 claim, 4 complete).
    pub const E_KIND: usize = 0;
    /// Entry: u8 flags, bit 0 = a fingerprint follows the key.
    pub const E_FLAGS: usize = 1;
    /// Entry: u16 key length.
    pub const E_KEY_LEN: usize = 2;
    /// Entry: u64 expiry (a claim's lease end), ms since the epoch.
    pub const E_EXPIRES_AT: usize = 4;
    /// Bytes of an entry's fixed part; the key follows.
    pub const E_HEADER_LEN: usize = 12;
}

/// Little-endian fields: the only place the format's integers are read or
/// written. Callers check bounds first (a short slice panics).
pub mod le {
    /// The u16 at `at`.
    pub fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }
    /// The u32 at `at`.
    pub fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }
    /// The u64 at `at`.
    pub fn u64_at(b: &[u8], at: usize) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    }
    /// Writes `v` at `at`.
    pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    /// Writes `v` at `at`.
    pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    /// Writes `v` at `at`.
    pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }
}

// The layout's relationships, checked at compile time.
const _: () = assert!(seg::WATERMARK_SLOT_END <= seg::HEADER_LEN);
const _: () = assert!(seg::WATERMARK_CRC == seg::WATERMARK + 8);
const _: () = assert!(seg::HEADER_CRC + 4 <= seg::WATERMARK);
const _: () = assert!(meta::CRC + 4 == meta::LEN);
const _: () = assert!(meta::STORE_ID + 4 == meta::CRC);
const _: () = assert!(ckpt::HEADER_CRC + 4 == ckpt::HEADER_LEN);
const _: () = assert!(ckpt::WRITTEN_AT + 8 <= ckpt::HEADER_CRC);
const _: () = assert!(rec::EXPIRES_AT + 8 == rec::HEADER_LEN);
const _: () = assert!(rec::KEY_LEN + 2 == rec::EXPIRES_AT);
