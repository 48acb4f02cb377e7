//! Export and import of a store's live state: [`Store::export`],
//! [`Store::import`], [`verify_snapshot`]. The byte layout is in
//! docs/FORMAT.md ("Snapshot"); its offsets are in `format::snap`.
//!
//! ```text
//! header  32 bytes: magic, version, flags, created at, source store id, crc32
//! blocks  24-byte header (type 1, entries, payload length, xxh3) + entries
//! trailer 64 bytes: type 2, counts, its own offset, xxh3 of the whole stream
//! ```
//!
//! Export walks the index one shard at a time (memory: one shard's entries,
//! 16 bytes each, and one block), reads each entry's record from the log and
//! writes the live ones; a block is written only once every record in it is
//! durable. Import reads the stream twice: first to verify all of it (so a
//! damaged or truncated snapshot imports nothing), then to apply it through
//! the normal log append path, one batch (one sync under `Immediate`) at a
//! time, checking that each block is the one verified.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::SystemTime;

use xxhash_rust::xxh3::Xxh3;

use crate::claim::State;
use crate::clock::to_system_time;
use crate::error::{Error, Result};
use crate::format::{le, snap as at};
use crate::index::{Entry, Shard, SHARDS};
use crate::limits::{MAX_KEY_LEN, MAX_RESPONSE_LEN};
use crate::log::{lsn, record_at, Appender, Lsn};
use crate::record::{self, Body, Decoded};
use crate::store::{Inner, Store};
use crate::vfs::Vfs;

/// A block is written once its payload reaches this many bytes.
const BLOCK_TARGET: usize = 256 << 10;

/// The claim token written for a claim brought in by an import. It is below
/// every token an opening can issue (tokens are LSNs, at least segment 1's
/// header end), so the claim is orphaned (`claim::Opening`): no caller holds
/// a token for it, and the next `claim` of its key takes it over at once.
const IMPORTED_CLAIM_TOKEN: u64 = 0;

/// Which part of an export or import a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// `export`: writing the snapshot.
    Export,
    /// `import` (or `verify_snapshot`): checking the whole stream first.
    Verify,
    /// `import`: writing the verified entries into the store.
    Apply,
}

/// A progress report, given after each block (export, verify) or batch
/// (apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// What is being done.
    pub phase: Phase,
    /// IDs written (export), read (verify) or applied (apply) so far.
    pub ids: u64,
    /// Snapshot bytes written or read so far in this phase.
    pub bytes: u64,
    /// IDs in the whole snapshot, when known (apply).
    pub total_ids: Option<u64>,
    /// Bytes of the whole snapshot, when known (apply).
    pub total_bytes: Option<u64>,
}

/// What [`Store::export`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ExportReport {
    /// IDs written (inserts + claims + completes).
    pub ids: u64,
    /// IDs recorded by `check_and_insert`.
    pub inserts: u64,
    /// IDs in progress (claimed, lease not ended).
    pub claims: u64,
    /// IDs completed (with their response and fingerprint).
    pub completes: u64,
    /// Index entries skipped because their key was expired (or, for a
    /// removal or release, absent).
    pub skipped: u64,
    /// Blocks written.
    pub blocks: u64,
    /// Bytes of the snapshot.
    pub bytes: u64,
    /// The snapshot's creation time (when the export started, store clock).
    pub created_at: SystemTime,
}

/// What a snapshot holds, from its header and trailer, once every byte of
/// it was checked ([`verify_snapshot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotInfo {
    /// Its snapshot version.
    pub version: u32,
    /// When the export that wrote it started (the source store's clock).
    pub created_at: SystemTime,
    /// The id of the store it was exported from (`dedupstore.meta`).
    pub source_store_id: u32,
    /// IDs in it.
    pub ids: u64,
    /// Of which inserts.
    pub inserts: u64,
    /// Of which claims.
    pub claims: u64,
    /// Of which completes.
    pub completes: u64,
    /// Blocks.
    pub blocks: u64,
    /// Bytes of the stream.
    pub bytes: u64,
}

/// What [`Store::import`] did, per ID of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImportReport {
    /// The snapshot, as verified.
    pub info: SnapshotInfo,
    /// IDs absent in the store, written as the snapshot has them.
    pub added: u64,
    /// IDs present on both sides whose state changed by the merge rules.
    pub merged: u64,
    /// IDs present on both sides that the store already had in the
    /// merged state (nothing written): a second import of one snapshot
    /// counts every ID here or in `expired`.
    pub unchanged: u64,
    /// IDs whose snapshot entry had expired by the import (skipped).
    pub expired: u64,
}

/// An entry's kind, as its kind byte (the log's record kind numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SnapKind {
    Insert = 1,
    Claim = 3,
    Complete = 4,
}

impl SnapKind {
    /// The merge rank: done (with a response) over done (plain insert)
    /// over in progress.
    fn rank(self) -> u8 {
        match self {
            SnapKind::Claim => 0,
            SnapKind::Insert => 1,
            SnapKind::Complete => 2,
        }
    }
}

/// One ID of a snapshot, borrowed from the block it was decoded from.
#[derive(Debug, Clone, Copy)]
struct SnapEntry<'a> {
    kind: SnapKind,
    expires_at: u64,
    key: &'a [u8],
    fingerprint: Option<u64>,
    response: &'a [u8],
}

impl SnapEntry<'_> {
    fn encoded_len(&self) -> usize {
        at::E_HEADER_LEN
            + self.key.len()
            + if self.fingerprint.is_some() { 8 } else { 0 }
            + if self.kind == SnapKind::Complete {
                4 + self.response.len()
            } else {
                0
            }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + at::E_HEADER_LEN, 0);
        let h = &mut out[start..];
        h[at::E_KIND] = self.kind as u8;
        h[at::E_FLAGS] = u8::from(self.fingerprint.is_some());
        // Keys are at most MAX_KEY_LEN (checked when written to the log).
        le::put_u16(
            h,
            at::E_KEY_LEN,
            u16::try_from(self.key.len()).unwrap_or(u16::MAX),
        );
        le::put_u64(h, at::E_EXPIRES_AT, self.expires_at);
        out.extend_from_slice(self.key);
        if let Some(f) = self.fingerprint {
            out.extend_from_slice(&f.to_le_bytes());
        }
        if self.kind == SnapKind::Complete {
            let n = u32::try_from(self.response.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(self.response);
        }
        debug_assert_eq!(out.len() - start, self.encoded_len());
    }

    /// The log record this entry is written as (a claim gets the orphaned
    /// token).
    fn body(&self) -> Body<'_> {
        match self.kind {
            SnapKind::Insert => Body::Insert,
            SnapKind::Claim => Body::Claim {
                fingerprint: self.fingerprint,
                token: IMPORTED_CLAIM_TOKEN,
            },
            SnapKind::Complete => Body::Complete {
                fingerprint: self.fingerprint,
                response: self.response,
            },
        }
    }
}

/// Decodes a block's payload into `out`: exactly `count` entries that fill
/// it. `base`: the payload's offset in the stream, for errors.
fn decode_entries<'a>(
    payload: &'a [u8],
    count: u32,
    base: u64,
    out: &mut Vec<SnapEntry<'a>>,
) -> Result<()> {
    out.clear();
    let mut off = 0usize;
    let bad = |off: usize, reason| Error::SnapshotCorrupt {
        offset: base + off as u64,
        reason,
    };
    for _ in 0..count {
        let Some(h) = payload.get(off..off + at::E_HEADER_LEN) else {
            return Err(bad(off, "entry header runs past the end of its block"));
        };
        let kind = match h[at::E_KIND] {
            1 => SnapKind::Insert,
            3 => SnapKind::Claim,
            4 => SnapKind::Complete,
            _ => return Err(bad(off, "unknown entry kind")),
        };
        let flags = h[at::E_FLAGS];
        if flags & !1 != 0 || (flags != 0 && kind == SnapKind::Insert) {
            return Err(bad(off + at::E_FLAGS, "unknown entry flags"));
        }
        let key_len = usize::from(le::u16_at(h, at::E_KEY_LEN));
        if key_len == 0 || key_len > MAX_KEY_LEN {
            return Err(bad(off + at::E_KEY_LEN, "entry key length out of range"));
        }
        let expires_at = le::u64_at(h, at::E_EXPIRES_AT);
        let mut p = off + at::E_HEADER_LEN;
        let Some(key) = payload.get(p..p + key_len) else {
            return Err(bad(p, "entry key runs past the end of its block"));
        };
        p += key_len;
        let fingerprint = if flags & 1 != 0 {
            let Some(f) = payload.get(p..p + 8) else {
                return Err(bad(p, "entry fingerprint runs past the end of its block"));
            };
            p += 8;
            Some(le::u64_at(f, 0))
        } else {
            None
        };
        let mut response: &[u8] = &[];
        if kind == SnapKind::Complete {
            let Some(n) = payload.get(p..p + 4) else {
                return Err(bad(
                    p,
                    "entry response length runs past the end of its block",
                ));
            };
            let n = usize::try_from(le::u32_at(n, 0)).unwrap_or(usize::MAX);
            if n > MAX_RESPONSE_LEN {
                return Err(bad(p, "entry response length out of range"));
            }
            p += 4;
            let Some(r) = payload.get(p..p + n) else {
                return Err(bad(p, "entry response runs past the end of its block"));
            };
            response = r;
            p += n;
        }
        out.push(SnapEntry {
            kind,
            expires_at,
            key,
            fingerprint,
            response,
        });
        off = p;
    }
    if off != payload.len() {
        return Err(bad(off, "bytes after the last entry of a block"));
    }
    Ok(())
}

/// Counts per kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    inserts: u64,
    claims: u64,
    completes: u64,
}

impl Counts {
    fn add(&mut self, kind: SnapKind) {
        match kind {
            SnapKind::Insert => self.inserts += 1,
            SnapKind::Claim => self.claims += 1,
            SnapKind::Complete => self.completes += 1,
        }
    }
    fn total(&self) -> u64 {
        self.inserts + self.claims + self.completes
    }
}

/// The output stream, hashed as it is written.
struct SnapWriter<W: Write> {
    out: W,
    hash: Xxh3,
    bytes: u64,
}

impl<W: Write> SnapWriter<W> {
    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(|source| Error::SnapshotIo {
            op: "write",
            offset: self.bytes,
            source,
        })?;
        self.hash.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// Writes one block of `entries` entries.
    fn block(&mut self, payload: &[u8], entries: u32) -> Result<()> {
        let mut h = [0u8; at::BLOCK_HEADER_LEN];
        h[at::TYPE] = at::TYPE_BLOCK;
        le::put_u32(&mut h, at::BLOCK_ENTRIES, entries);
        // Blocks stay near BLOCK_TARGET: one entry is at most ~34 KiB.
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        le::put_u32(&mut h, at::BLOCK_LEN, len);
        let sum = block_sum(&h[..at::BLOCK_SUM], payload);
        le::put_u64(&mut h, at::BLOCK_SUM, sum);
        self.put(&h)?;
        self.put(payload)
    }
}

fn block_sum(head: &[u8], payload: &[u8]) -> u64 {
    let mut x = Xxh3::new();
    x.update(head);
    x.update(payload);
    x.digest()
}

/// The input stream, hashed as it is read; every short read is a
/// truncation error naming what was cut and where.
struct SnapReader<R: Read> {
    src: R,
    hash: Xxh3,
    offset: u64,
}

impl<R: Read> SnapReader<R> {
    fn new(src: R) -> Self {
        SnapReader {
            src,
            hash: Xxh3::new(),
            offset: 0,
        }
    }

    /// Fills `buf`, or fails with "truncated" (`what`) at the stream's end.
    fn take(&mut self, buf: &mut [u8], what: &'static str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.src.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(Error::SnapshotCorrupt {
                        offset: self.offset + got as u64,
                        reason: what,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::SnapshotIo {
                        op: "read",
                        offset: self.offset + got as u64,
                        source,
                    })
                }
            }
        }
        self.hash.update(buf);
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Fails unless the stream ends here.
    fn expect_end(&mut self) -> Result<()> {
        let mut one = [0u8; 1];
        loop {
            match self.src.read(&mut one) {
                Ok(0) => return Ok(()),
                Ok(_) => {
                    return Err(Error::SnapshotCorrupt {
                        offset: self.offset,
                        reason: "bytes after the snapshot trailer",
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(Error::SnapshotIo {
                        op: "read",
                        offset: self.offset,
                        source,
                    })
                }
            }
        }
    }
}

/// A verified stream: what it holds and its whole-stream checksum.
struct Read1 {
    info: SnapshotInfo,
    sum: u64,
}

/// Reads and checks a whole snapshot, calling `on_block` with each block's
/// offset, checksum and entries once the block is checked, and `progress`
/// after each block (phase `Verify`). Every check of docs/FORMAT.md is made
/// here; an error names the first failed check and its byte offset.
fn read_snapshot<R: Read>(
    src: R,
    mut on_block: impl FnMut(u64, u64, &[SnapEntry<'_>]) -> Result<()>,
    mut progress: impl FnMut(Progress),
) -> Result<Read1> {
    let mut r = SnapReader::new(io::BufReader::with_capacity(64 << 10, src));
    let mut h = [0u8; at::HEADER_LEN];
    r.take(&mut h, "snapshot truncated inside its header")?;
    let bad = |offset: u64, reason| Error::SnapshotCorrupt { offset, reason };
    if &h[..at::MAGIC.len()] != at::MAGIC {
        return Err(bad(0, "not a dedupstore snapshot (bad magic)"));
    }
    let version = le::u32_at(&h, at::VERSION);
    // The version is checked before the checksum: a newer version may lay
    // out (and check) its header differently.
    if version > at::VERSION_NUMBER {
        return Err(Error::UnsupportedSnapshotVersion {
            found: version,
            supported: at::VERSION_NUMBER,
        });
    }
    if crc32fast::hash(&h[..at::HEADER_CRC]) != le::u32_at(&h, at::HEADER_CRC) {
        return Err(bad(
            at::HEADER_CRC as u64,
            "snapshot header checksum mismatch",
        ));
    }
    if version == 0 {
        return Err(bad(at::VERSION as u64, "snapshot version 0"));
    }
    if le::u32_at(&h, at::FLAGS) != 0 {
        return Err(bad(at::FLAGS as u64, "unknown snapshot header flags"));
    }
    let created_at = le::u64_at(&h, at::CREATED_AT);
    let source_store_id = le::u32_at(&h, at::STORE_ID);

    let mut counts = Counts::default();
    let mut blocks = 0u64;
    let mut payload = Vec::new();
    loop {
        let frame = r.offset;
        let mut head = [0u8; at::TRAILER_LEN];
        r.take(&mut head[..8], "snapshot truncated before its trailer")?;
        match head[at::TYPE] {
            at::TYPE_BLOCK => {
                r.take(
                    &mut head[8..at::BLOCK_HEADER_LEN],
                    "snapshot truncated inside a block header",
                )?;
                if head[1..4] != [0; 3] || head[12..16] != [0; 4] {
                    return Err(bad(frame, "reserved block header bytes are not zero"));
                }
                let n = le::u32_at(&head, at::BLOCK_ENTRIES);
                let len = usize::try_from(le::u32_at(&head, at::BLOCK_LEN)).unwrap_or(usize::MAX);
                if n == 0 || len == 0 || len > at::MAX_BLOCK_PAYLOAD {
                    return Err(bad(
                        frame + at::BLOCK_ENTRIES as u64,
                        "block entry count or length out of range",
                    ));
                }
                payload.resize(len, 0);
                let base = r.offset;
                r.take(&mut payload, "snapshot truncated inside a block")?;
                let sum = le::u64_at(&head, at::BLOCK_SUM);
                if block_sum(&head[..at::BLOCK_SUM], &payload) != sum {
                    return Err(bad(frame + at::BLOCK_SUM as u64, "block checksum mismatch"));
                }
                let mut entries = Vec::new();
                decode_entries(&payload, n, base, &mut entries)?;
                for e in &entries {
                    counts.add(e.kind);
                }
                blocks += 1;
                on_block(frame, sum, &entries)?;
                progress(Progress {
                    phase: Phase::Verify,
                    ids: counts.total(),
                    bytes: r.offset,
                    total_ids: None,
                    total_bytes: None,
                });
            }
            at::TYPE_TRAILER => {
                r.take(
                    &mut head[8..at::TRAILER_SUM],
                    "snapshot truncated inside its trailer",
                )?;
                let sum = r.hash.digest();
                let mut stored = [0u8; 8];
                // The checksum field itself is not hashed.
                let mut tail = SnapReader {
                    src: &mut r.src,
                    hash: Xxh3::new(),
                    offset: r.offset,
                };
                tail.take(&mut stored, "snapshot truncated inside its trailer")?;
                tail.expect_end()?;
                if u64::from_le_bytes(stored) != sum {
                    return Err(bad(
                        frame + at::TRAILER_SUM as u64,
                        "snapshot checksum mismatch",
                    ));
                }
                let field = |off: usize| le::u64_at(&head, off);
                if head[1..8] != [0; 7] {
                    return Err(bad(frame, "reserved trailer bytes are not zero"));
                }
                if field(at::TRAILER_OFFSET) != frame {
                    return Err(bad(
                        frame + at::TRAILER_OFFSET as u64,
                        "trailer offset mismatch",
                    ));
                }
                if field(at::TRAILER_BLOCKS) != blocks
                    || field(at::TRAILER_ENTRIES) != counts.total()
                    || field(at::TRAILER_INSERTS) != counts.inserts
                    || field(at::TRAILER_CLAIMS) != counts.claims
                    || field(at::TRAILER_COMPLETES) != counts.completes
                {
                    return Err(bad(
                        frame + at::TRAILER_BLOCKS as u64,
                        "trailer counts do not match the blocks",
                    ));
                }
                return Ok(Read1 {
                    info: SnapshotInfo {
                        version,
                        created_at: to_system_time(created_at),
                        source_store_id,
                        ids: counts.total(),
                        inserts: counts.inserts,
                        claims: counts.claims,
                        completes: counts.completes,
                        blocks,
                        bytes: frame + at::TRAILER_LEN as u64,
                    },
                    sum,
                });
            }
            _ => {
                return Err(bad(
                    frame,
                    "unknown frame type (not a block or the trailer)",
                ))
            }
        }
    }
}

/// Checks a whole snapshot stream (every checksum, count and entry) without
/// writing anything, and says what it holds. The errors are those of
/// [`Store::import`]: `Error::SnapshotCorrupt` (damaged or truncated, with
/// the byte offset), `Error::UnsupportedSnapshotVersion`, `Error::SnapshotIo`.
pub fn verify_snapshot(src: impl Read) -> Result<SnapshotInfo> {
    Ok(read_snapshot(src, |_, _, _| Ok(()), |_| {})?.info)
}

/// What the merge did with one snapshot entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    Added,
    Merged,
    Unchanged,
    Expired,
}

impl<F: Vfs> Inner<F> {
    /// Merges one snapshot entry into its key, with its shard and the log
    /// locked (the rules are in docs/FORMAT.md and the README, "Export and
    /// import"). Returns what it did and the LSN the answer relies on.
    fn merge_locked<'l>(
        &'l self,
        log: &mut Appender<'l, F>,
        shard: &mut Shard,
        s: &SnapEntry<'_>,
        h: u64,
        now: u64,
    ) -> Result<(Merge, Lsn)> {
        if s.expires_at <= now {
            return Ok((Merge::Expired, 0));
        }
        let target = self
            .current(shard, s.key, h)?
            .map(|(_, c)| c)
            .filter(|c| !matches!(c.state, State::Removed) && c.expires_at > now);
        let Some(t) = target else {
            let (_, end) =
                self.write_record(Some(log), shard, s.key, h, s.expires_at, |_| s.body())?;
            return Ok((Merge::Added, end));
        };
        let t_rank = match t.state {
            State::Claimed { .. } => SnapKind::Claim.rank(),
            State::Plain => SnapKind::Insert.rank(),
            _ => SnapKind::Complete.rank(),
        };
        let s_rank = s.kind.rank();
        // Invariant (merge): the key stays present until the later of the
        // two expiries; the higher rank's record wins, and on equal rank the
        // later expiry (the target's on a tie, and always the target's
        // claim, which keeps its token: a worker of this opening holding it
        // is not fenced by an import).
        let expires_at = s.expires_at.max(t.expires_at);
        let source_wins = s_rank > t_rank
            || (s_rank == t_rank && s.kind != SnapKind::Claim && s.expires_at > t.expires_at);
        let end = if source_wins {
            self.write_record(Some(log), shard, s.key, h, expires_at, |_| s.body())?
                .1
        } else if expires_at > t.expires_at {
            let body = match &t.state {
                State::Claimed { fingerprint, token } => Body::Claim {
                    fingerprint: *fingerprint,
                    token: *token,
                },
                State::Done {
                    fingerprint,
                    response,
                } => Body::Complete {
                    fingerprint: *fingerprint,
                    response: response.as_slice(),
                },
                _ => Body::Insert,
            };
            self.write_record(Some(log), shard, s.key, h, expires_at, |_| body)?
                .1
        } else {
            return Ok((Merge::Unchanged, t.end));
        };
        Ok((Merge::Merged, end))
    }

    /// Applies entries as batches that fit the store's batch limit, each
    /// with one sync under `Immediate`; tallies what was done.
    fn apply_entries(
        &self,
        entries: &[SnapEntry<'_>],
        report: &mut ImportReport,
        mut after_batch: impl FnMut(u64),
    ) -> Result<()> {
        let max = self.max_batch_bytes();
        let mut start = 0;
        while start < entries.len() {
            let mut end = start;
            let mut bytes = 0;
            while let Some(e) = entries.get(end) {
                let len = record::body_len(e.key.len(), &e.body());
                if end > start && bytes + len > max {
                    break;
                }
                bytes += len;
                end += 1;
            }
            let chunk = &entries[start..end];
            // A lone entry above the limit (a long response in a small
            // segment) still goes in: the reservation is only a hint here,
            // since an import need not be all or nothing (see `import`).
            let merged = self.batch(
                chunk,
                |e| e.key,
                bytes.min(max),
                |log, shard, e, h, now| self.merge_locked(log, shard, e, h, now),
            )?;
            for m in merged {
                match m {
                    Merge::Added => report.added += 1,
                    Merge::Merged => report.merged += 1,
                    Merge::Unchanged => report.unchanged += 1,
                    Merge::Expired => report.expired += 1,
                }
            }
            after_batch(chunk.len() as u64);
            start = end;
        }
        Ok(())
    }
}

impl<F: Vfs> Store<F> {
    /// Writes a snapshot of the store's live state to `out`: every key
    /// present now (inserted, claimed with its lease end and fingerprint,
    /// completed with its fingerprint and response), with its expiry.
    /// Removed, released and expired keys are left out. `progress` is called
    /// after each block written. Layout: docs/FORMAT.md, "Snapshot".
    ///
    /// Memory stays bounded whatever the store's size: the index is walked
    /// one shard (1/256 of the keys) at a time, holding that shard's lock
    /// only to copy its 16-byte entries, and the snapshot is written in
    /// blocks of about 256 KiB. A running GC cannot break it: the segments
    /// it reads stay mapped (reference-counted) until it is done with them.
    ///
    /// **Consistency.** Each key is exported as it was when its shard was
    /// read; shards are read one after another. So with writers running,
    /// every insert acknowledged before the export started and not removed
    /// or expired before its shard was read is in the snapshot; a change
    /// made during the export may or may not be. With writes stopped (the
    /// handoff protocol's revoke step) the snapshot is the store's state at
    /// that point in time. Only durable records are exported: the export
    /// waits for (and if need be, runs) a sync covering each block's
    /// records before writing it, in every durability mode.
    ///
    /// Errors: a failed write of `out` (`Error::SnapshotIo`); a poisoned
    /// store (`Error::SyncFailed`); a damaged record (`Error::Corruption`).
    /// On error what was written to `out` is not a valid snapshot (it has
    /// no trailer), and import refuses it.
    pub fn export(
        &self,
        out: impl Write,
        mut progress: impl FnMut(Progress),
    ) -> Result<ExportReport> {
        let inner = self.inner();
        inner.log.poison.check()?;
        let now = inner.config.clock.now_ms();
        let mut w = SnapWriter {
            out,
            hash: Xxh3::new(),
            bytes: 0,
        };
        let mut h = [0u8; at::HEADER_LEN];
        h[..at::MAGIC.len()].copy_from_slice(at::MAGIC);
        le::put_u32(&mut h, at::VERSION, at::VERSION_NUMBER);
        le::put_u64(&mut h, at::CREATED_AT, now);
        le::put_u32(&mut h, at::STORE_ID, inner.store_id);
        let crc = crc32fast::hash(&h[..at::HEADER_CRC]);
        le::put_u32(&mut h, at::HEADER_CRC, crc);
        w.put(&h)?;

        let mut counts = Counts::default();
        let mut skipped = 0u64;
        let mut blocks = 0u64;
        let mut block = Vec::with_capacity(BLOCK_TARGET + (64 << 10));
        let mut in_block = 0u32;
        // The end of the latest record put in a block: what must be durable
        // before the block is written.
        let mut need: Lsn = 0;
        let mut entries: Vec<Entry> = Vec::new();
        let mut flush = |w: &mut SnapWriter<_>,
                         block: &mut Vec<u8>,
                         in_block: &mut u32,
                         need: Lsn,
                         counts: &Counts|
         -> Result<()> {
            // Invariant: only durable state is exported.
            inner.commit.wait_durable(&inner.log, need)?;
            w.block(block, *in_block)?;
            block.clear();
            *in_block = 0;
            blocks += 1;
            progress(Progress {
                phase: Phase::Export,
                ids: counts.total(),
                bytes: w.bytes,
                total_ids: None,
                total_bytes: None,
            });
            Ok(())
        };
        for s in 0..SHARDS {
            entries.clear();
            // The segments are taken with the shard locked: GC moves an
            // entry (compaction) only under its shard's lock and deletes a
            // segment whole only once every entry in it is past its
            // horizon, so each entry copied here either points into one of
            // these segments or is past its horizon. Holding them keeps
            // them mapped even if GC deletes them meanwhile.
            let segs = {
                let shard = inner.index.lock(s);
                entries.reserve(shard.len());
                shard.for_each(|e| entries.push(*e));
                inner.table.all()
            };
            // Log order: sequential reads of the mapped segments.
            entries.sort_unstable_by_key(|e| (e.seg, e.off));
            for e in &entries {
                let Ok(i) = segs.binary_search_by_key(&e.seg, |s| s.id) else {
                    skipped += 1; // deleted by GC: past its horizon
                    continue;
                };
                let seg = &segs[i];
                // `decode` checks the record's checksum.
                let Decoded::Record(r, len) = record::decode(record_at(seg, e.off)) else {
                    return Err(Error::Corruption {
                        file: seg.path.clone(),
                        offset: u64::from(e.off),
                        reason: "invalid record during export",
                    });
                };
                let (kind, fingerprint, response) = match r.body {
                    Body::Remove => {
                        skipped += 1;
                        continue;
                    }
                    Body::Insert => (SnapKind::Insert, None, &[][..]),
                    Body::Claim { fingerprint, .. } => (SnapKind::Claim, fingerprint, &[][..]),
                    Body::Complete {
                        fingerprint,
                        response,
                    } => (SnapKind::Complete, fingerprint, response),
                };
                if r.expires_at <= now {
                    skipped += 1;
                    continue;
                }
                let entry = SnapEntry {
                    kind,
                    expires_at: r.expires_at,
                    key: r.key,
                    fingerprint,
                    response,
                };
                entry.encode(&mut block);
                in_block += 1;
                counts.add(kind);
                need = need.max(lsn(e.seg, e.off as usize + len));
                if block.len() >= BLOCK_TARGET {
                    flush(&mut w, &mut block, &mut in_block, need, &counts)?;
                }
            }
        }
        if in_block > 0 {
            flush(&mut w, &mut block, &mut in_block, need, &counts)?;
        }
        let mut t = [0u8; at::TRAILER_LEN];
        t[at::TYPE] = at::TYPE_TRAILER;
        le::put_u64(&mut t, at::TRAILER_BLOCKS, blocks);
        le::put_u64(&mut t, at::TRAILER_ENTRIES, counts.total());
        le::put_u64(&mut t, at::TRAILER_INSERTS, counts.inserts);
        le::put_u64(&mut t, at::TRAILER_CLAIMS, counts.claims);
        le::put_u64(&mut t, at::TRAILER_COMPLETES, counts.completes);
        le::put_u64(&mut t, at::TRAILER_OFFSET, w.bytes);
        w.put(&t[..at::TRAILER_SUM])?;
        let sum = w.hash.digest();
        w.put(&sum.to_le_bytes())?;
        let bytes = w.bytes;
        w.out.flush().map_err(|source| Error::SnapshotIo {
            op: "flush",
            offset: bytes,
            source,
        })?;
        Ok(ExportReport {
            ids: counts.total(),
            inserts: counts.inserts,
            claims: counts.claims,
            completes: counts.completes,
            skipped,
            blocks,
            bytes,
            created_at: to_system_time(now),
        })
    }

    /// Imports a snapshot written by [`Store::export`] (of this or another
    /// store), merging it into this store's state. `progress` is called
    /// after each verified block and after each applied batch.
    ///
    /// **Nothing from a bad snapshot.** The whole stream is read and
    /// checked first (every checksum, count and entry, as
    /// [`verify_snapshot`] does), from the reader's current position; only
    /// then is it read again, from that position, and applied. A damaged or
    /// truncated snapshot is refused with `Error::SnapshotCorrupt` (what
    /// failed, at which byte), a newer one with
    /// `Error::UnsupportedSnapshotVersion`, and nothing is imported. While
    /// applying, each block must be the one verified (same checksum, in
    /// the same place); if the stream changed in between (another process
    /// rewrote the file), the import stops with `Error::SnapshotCorrupt`
    /// ("snapshot changed during import"), having applied the blocks before
    /// that one: each of them was valid and verified, and the merge keeps
    /// the store consistent; import the intended snapshot again.
    ///
    /// **Merge rules** (per ID; an entry already expired now is skipped):
    /// - absent in the store (never there, removed, released, expired):
    ///   written as the snapshot has it;
    /// - present on both sides: the ID stays present until the later of
    ///   the two expiries. The record kept is the higher of completed (with
    ///   its response and fingerprint) over inserted over in progress (a
    ///   claim); between two of the same kind, the later expiry's (the
    ///   store's on a tie), except that between two claims the store's
    ///   claim stays, with its token, and only its lease is extended;
    /// - an imported claim keeps its lease and fingerprint but is owned by
    ///   no caller here: it is *orphaned*, like a claim of an earlier
    ///   opening (README, "Takeover at open"): the source's tokens are
    ///   stale here, `peek` reports `InProgress { orphaned: true }`, and the
    ///   next `claim` of the key takes it over at once.
    ///
    /// Importing the same snapshot twice changes nothing the second time.
    ///
    /// **Durability.** Records are written through the normal log append
    /// path (recovery, GC and checkpoints apply), in batches of at most half
    /// a segment, each waiting for one sync under `Durability::Immediate`;
    /// when `import` returns `Ok`, everything it imported is durable in
    /// every mode. A crash during the apply phase leaves each ID either as
    /// it was or merged (never anything else), and a batch whose progress
    /// was reported (under `Immediate`) is durable; importing the snapshot
    /// again completes it. A poisoned store (a failed sync) refuses the
    /// import (`Error::SyncFailed`).
    pub fn import<R: Read + Seek>(
        &self,
        mut src: R,
        mut progress: impl FnMut(Progress),
    ) -> Result<ImportReport> {
        let inner = self.inner();
        inner.log.poison.check()?;
        let seek_err = |source| Error::SnapshotIo {
            op: "seek",
            offset: 0,
            source,
        };
        let start = src.stream_position().map_err(seek_err)?;
        let mut sums = Vec::new();
        let first = read_snapshot(
            &mut src,
            |frame, sum, _| {
                sums.push((frame, sum));
                Ok(())
            },
            &mut progress,
        )?;
        src.seek(SeekFrom::Start(start)).map_err(seek_err)?;
        let mut report = ImportReport {
            info: first.info,
            added: 0,
            merged: 0,
            unchanged: 0,
            expired: 0,
        };
        let total = Some(first.info.ids);
        let total_bytes = Some(first.info.bytes);
        let mut done = 0u64;
        let mut next = 0usize;
        let changed = |offset| Error::SnapshotCorrupt {
            offset,
            reason: "snapshot changed during import (a block differs from the verified one)",
        };
        let second = read_snapshot(
            &mut src,
            |frame, sum, entries| {
                // Invariant: only verified blocks are applied.
                if sums.get(next) != Some(&(frame, sum)) {
                    return Err(changed(frame));
                }
                next += 1;
                inner.apply_entries(entries, &mut report, |n| {
                    done += n;
                    progress(Progress {
                        phase: Phase::Apply,
                        ids: done,
                        bytes: frame,
                        total_ids: total,
                        total_bytes,
                    });
                })
            },
            |_| {},
        )?;
        if second.sum != first.sum || next != sums.len() {
            return Err(changed(second.info.bytes));
        }
        inner.sync()?;
        Ok(report)
    }
}
