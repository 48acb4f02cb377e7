//! Replication support: a consistent view of a store's durable log, for
//! shipping it elsewhere (an object store: crate `dedupstore-replicate`),
//! and [`ReplicaWriter`], which turns shipped record bytes back into a
//! store directory that [`Store::open`] recovers normally.
//!
//! What is shipped is the log itself, record bytes only: each segment's
//! bytes from the end of its 64-byte header to the end of its records. A
//! segment's header is not shipped (the writer makes a new one, its
//! watermark at the end of the bytes written), nor the preallocated zeros
//! after the records, nor `index.ckpt` (the restored store replays its log
//! at first open) or `dedupstore.meta` (the restored store gets a new one,
//! with a new store id).
//!
//! # The view ([`Store::replica_view`])
//!
//! - Every sealed segment, whole: its bytes never change again.
//! - The durable prefix of the active segment: up to the store's durable
//!   LSN, never beyond (bytes past it may vanish at a power loss, and the
//!   same offsets may later hold other records). Call [`Store::sync`] first
//!   to ship everything acknowledged under `Durability::Interval`/`None`.
//!
//! It is taken under the GC lock, so no segment is deleted or compacted
//! while the list is read, and it is a state the store was in: a segment
//! GC compacted away is gone only once its copies are durable, so either
//! the segment is in the view or its copies are below the durable LSN.
//! The view holds the segments' mappings: a segment GC deletes afterwards
//! stays readable through the view (a mapping outlives the unlinked file).
//!
//! Invariant (what makes byte ranges shippable once): the bytes a view
//! shows for a segment at an offset are the bytes every later view shows
//! there, as long as the segment exists; sealed segments are immutable, and
//! the active segment's records below the durable LSN are never rewritten
//! (only recovery writes below the log end, and only past the watermark,
//! which the durable LSN never exceeds).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{io_err, Error, Result};
use crate::record::{self, Decoded};
use crate::segment::{self, Segment, HEADER_LEN};
use crate::store::Store;
use crate::vfs::{OsFs, Vfs};

/// A consistent, GC-safe view of a store's durable log (see the module
/// documentation). Holds the segments' mappings while it lives.
pub struct ReplicaView<F: Vfs = OsFs> {
    segments: Vec<ReplicaSegment<F>>,
}

/// One segment of a [`ReplicaView`].
pub struct ReplicaSegment<F: Vfs = OsFs> {
    seg: Arc<Segment<F>>,
    end: usize,
    sealed: bool,
}

impl<F: Vfs> ReplicaView<F> {
    /// The segments, in ascending id order (what a restore needs, all of
    /// them).
    pub fn segments(&self) -> &[ReplicaSegment<F>] {
        &self.segments
    }

    /// Record bytes in the view, all segments together.
    pub fn record_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.records().len() as u64).sum()
    }
}

impl<F: Vfs> ReplicaSegment<F> {
    /// The segment id (its file is `seg-<id, 10 digits>.log`).
    pub fn id(&self) -> u32 {
        self.seg.id
    }

    /// True if the segment is sealed: its bytes are final. False for the
    /// active segment, whose durable prefix grows.
    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// The record bytes: from the end of the segment header to the end of
    /// its (durable) records. Never changes for a given length (see the
    /// module invariant).
    pub fn records(&self) -> &[u8] {
        self.seg.read(HEADER_LEN, self.end - HEADER_LEN)
    }
}

impl<F: Vfs> Store<F> {
    /// A consistent view of the durable log for replication (see
    /// [`crate::replica`]). Cheap: it copies nothing. Waits for a GC run in
    /// progress. Fails on a store poisoned by a failed sync (what is
    /// durable is then not known).
    pub fn replica_view(&self) -> Result<ReplicaView<F>> {
        let inner = self.inner();
        inner.log.poison.check()?;
        let _no_gc = inner.gc_lock.lock().unwrap_or_else(|p| p.into_inner());
        // Durable LSN first, then the segments: a roll in between only adds
        // segments past the durable one, shown sealed (a roll seals a
        // segment, watermark included, before the next one exists) or
        // empty.
        let durable = inner.commit.synced();
        let (active, _) = inner.log.head();
        let durable_seg = u32::try_from(durable >> 32).unwrap_or(u32::MAX);
        let durable_off = usize::try_from(durable & 0xFFFF_FFFF).unwrap_or(usize::MAX);
        let mut segments = Vec::new();
        for seg in inner.table.all() {
            let (end, sealed) = if seg.id < active.id {
                // Sealed: synced whole and its watermark set before the next
                // segment was created (`Appender::roll`).
                (usize::try_from(seg.watermark()).unwrap_or(usize::MAX), true)
            } else if seg.id == active.id && seg.id == durable_seg {
                (durable_off, false)
            } else {
                // The active segment with nothing durable in it yet, or one
                // rolled after `head` was read.
                (HEADER_LEN, false)
            };
            // Invariant: a view never shows bytes outside the records.
            if end < HEADER_LEN || end > seg.capacity() {
                return Err(Error::Corruption {
                    file: seg.path.clone(),
                    offset: end as u64,
                    reason: "replica view: record end outside the segment",
                });
            }
            segments.push(ReplicaSegment { seg, end, sealed });
        }
        Ok(ReplicaView { segments })
    }
}

/// Writes shipped segments into a new, empty directory as a store that
/// [`Store::open`] recovers normally (it replays the whole log at the first
/// open: no index checkpoint is written).
///
/// Crash safety: the metadata file is written last (temp file, fsync,
/// rename, directory fsync). Until [`ReplicaWriter::finish`] has returned,
/// the directory holds segments without `dedupstore.meta`, which
/// `Store::open` refuses as corruption: a restore cut short is never taken
/// for a store. Callers that want no trace at all build in a temporary
/// directory and rename it into place (crate `dedupstore-replicate` does).
pub struct ReplicaWriter {
    dir: PathBuf,
    last_id: u32,
    segments: u32,
}

impl ReplicaWriter {
    /// Starts a restore into `dir`, which must be empty or not exist
    /// (created, with its parents); otherwise `Error::RestoreTarget`.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let fs = OsFs;
        fs.create_dir_all(&dir)
            .map_err(io_err("create dir", &dir))?;
        let names = fs.list(&dir).map_err(io_err("list", &dir))?;
        if !names.is_empty() {
            return Err(Error::RestoreTarget {
                dir,
                reason: "the directory is not empty".into(),
            });
        }
        Ok(ReplicaWriter {
            dir,
            last_id: 0,
            segments: 0,
        })
    }

    /// Writes segment `id` holding `records` (its record bytes, as
    /// [`ReplicaSegment::records`] gave them), fsynced. Ids must ascend. Every record is checked
    /// (kind, length, CRC) before anything is written: bytes that are not
    /// a whole number of valid records are `Error::Corruption`, with the
    /// offset in the segment of the first bad one.
    pub fn write_segment(&mut self, id: u32, records: &[u8]) -> Result<()> {
        let path = self.dir.join(segment::file_name(id));
        if id == 0 || id <= self.last_id {
            return Err(Error::RestoreTarget {
                dir: self.dir.clone(),
                reason: format!(
                    "segment {id} given after segment {}: ids must ascend from 1",
                    self.last_id
                ),
            });
        }
        let end = HEADER_LEN + records.len();
        if u32::try_from(end).is_err() {
            return Err(Error::Corruption {
                file: path,
                offset: u64::from(u32::MAX),
                reason: "shipped segment larger than 4 GiB",
            });
        }
        check_records(records, &path)?;
        let header = segment::encode_header_with_watermark(id, end as u64);
        let write = || -> std::io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            f.write_all(&header)?;
            f.write_all(records)?;
            f.sync_all()
        };
        write().map_err(io_err("write restored segment", &path))?;
        self.last_id = id;
        self.segments += 1;
        Ok(())
    }

    /// Writes `dedupstore.meta` (a new store id), fsynced, and fsyncs the
    /// directory: the store is complete. Returns the segments written.
    pub fn finish(self) -> Result<u32> {
        let fs = OsFs;
        fs.sync_dir(&self.dir)
            .map_err(io_err("fsync dir", &self.dir))?;
        // Empty `names`: the segments written above are meant to be there.
        crate::meta::open_or_create(&fs, &self.dir, &[])?;
        Ok(self.segments)
    }
}

/// Checks that `records` is a sequence of valid records and nothing else
/// (see [`ReplicaWriter::write_segment`]).
fn check_records(records: &[u8], path: &Path) -> Result<()> {
    let mut off = 0;
    while off < records.len() {
        let reason = match record::decode(&records[off..]) {
            Decoded::Record(_, n) => {
                off += n;
                continue;
            }
            Decoded::End => "shipped segment holds zeros among its records",
            Decoded::Invalid(reason) => reason,
        };
        return Err(Error::Corruption {
            file: path.to_path_buf(),
            offset: (HEADER_LEN + off) as u64,
            reason,
        });
    }
    Ok(())
}
