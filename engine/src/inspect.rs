//! Read-only inspection of a store directory: for tools (`fsck`, dumps,
//! debugging), not for the hot path.
//!
//! Everything here reads the files with plain `std::fs` reads: no memory
//! mapping, no [`Store`](crate::Store), **no lock taken and no byte
//! written**, so it works on a directory that a store has open in another
//! process. It sees the files as they are on disk at the moment it reads
//! them. A store that is open may be appending to its newest segment (a torn
//! tail there is then a write in progress) and may delete or rewrite segments
//! (see [`Report::vanished_segments`]).
//!
//! Records are decoded, and damage is classified, exactly as opening the
//! store would (docs/FORMAT.md, "Recovery rules"): valid records; a torn tail
//! in the newest segment, which recovery truncates; corruption, which a strict
//! open refuses (a bad record below a segment's watermark or anywhere in a
//! sealed segment, a sealed segment without a readable watermark, a damaged
//! header or metadata file); and files of a newer format version. Where a
//! strict open would stop at the first damage, inspection goes on as
//! `RecoveryMode::Salvage` would, so that one report lists every damaged
//! place, and the records after a damaged place are still listed.
//!
//! Memory is bounded by one segment file (at most 1 GiB, default 16 MiB):
//! segments are read and checked one at a time.
//!
//! ```no_run
//! use dedupstore::inspect::{self, Dir};
//!
//! # fn main() -> dedupstore::Result<()> {
//! let dir = Dir::open("/var/lib/consumer/dedup")?;
//! if inspect::lock_state(dir.path())? == inspect::LockState::Locked {
//!     println!("a store has it open: the newest segment may be mid-write");
//! }
//! for file in dir.segment_files() {
//!     let seg = dir.read_segment(file)?;
//!     for rec in seg.records() {
//!         println!("{}:{} {} {:?}", rec.segment, rec.offset, rec.kind, rec.key);
//!     }
//! }
//! let report = dir.verify()?;
//! println!("clean: {}, problems: {:?}", report.is_clean(), report.problems);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use crate::error::{io_err, Error, Result};
use crate::meta;
use crate::record::{self, Body, Decoded, Kind, MAX_RECORD_LEN};
use crate::segment::{self, HEADER_LEN};

/// The lock file's name (the store's `LOCK_FILE`, docs/FORMAT.md).
const LOCK_FILE: &str = "LOCK";
/// The metadata file is 20 bytes; read at most this much of it.
const META_READ_LIMIT: u64 = 4096;
/// Segments larger than this are refused by the store without being read.
const MAX_SEGMENT_FILE: u64 = u32::MAX as u64;

/// Whether a store currently has the directory open, as far as a
/// non-blocking `flock` probe of its `LOCK` file tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockState {
    /// Nobody holds the lock: no store has the directory open.
    Unlocked,
    /// A store (in this or another process) has the directory open.
    Locked,
    /// There is no `LOCK` file: no store has ever opened the directory (or it
    /// was removed), so none has it open now.
    NoLockFile,
}

/// Probes whether a store has `dir` open, without blocking and without
/// creating or writing anything: takes a *shared* `flock` on `dir/LOCK` and
/// releases it at once. A store holds an exclusive lock while it is open.
///
/// The probe holds the lock for a moment, so a [`Store::open`](crate::Store::open)
/// racing with it can fail with [`Error::Locked`]; retry that open.
pub fn lock_state(dir: impl AsRef<Path>) -> Result<LockState> {
    let path = dir.as_ref().join(LOCK_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LockState::NoLockFile),
        Err(e) => return Err(io_err("open", &path)(e)),
    };
    match file.try_lock_shared() {
        Ok(()) => {
            file.unlock().map_err(io_err("unlock", &path))?;
            Ok(LockState::Unlocked)
        }
        Err(fs::TryLockError::WouldBlock) => Ok(LockState::Locked),
        Err(fs::TryLockError::Error(e)) => Err(io_err("lock probe", &path)(e)),
    }
}

/// One segment file as listed in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SegmentFile {
    /// The segment id, from the file name.
    pub id: u32,
    /// Its path.
    pub path: PathBuf,
    /// File length when the directory was listed.
    pub len: u64,
    /// The segment with the highest id: the only one that takes appends, and
    /// the only one where a torn tail is expected.
    pub is_newest: bool,
}

/// A store directory, listed and its metadata file checked. Opening it reads
/// the directory and `dedupstore.meta` only; segments are read on demand.
#[derive(Debug, Clone)]
pub struct Dir {
    path: PathBuf,
    segments: Vec<SegmentFile>,
    tmp_files: Vec<PathBuf>,
}

impl Dir {
    /// Lists `path` and checks its metadata file as opening the store would.
    ///
    /// Errors: [`Error::Io`] if the directory cannot be listed, or (with
    /// kind `NotFound`) if it holds neither a metadata file nor segments, i.e.
    /// is not a store; [`Error::Corruption`] for a damaged metadata file, or
    /// segments without one; [`Error::UnsupportedVersion`] for a metadata
    /// file of a newer format.
    pub fn open(path: impl AsRef<Path>) -> Result<Dir> {
        let path = path.as_ref().to_path_buf();
        let mut segments = Vec::new();
        let mut tmp_files = Vec::new();
        let mut has_meta = false;
        for entry in fs::read_dir(&path).map_err(io_err("list", &path))? {
            let entry = entry.map_err(io_err("list", &path))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue; // not one of ours: every store file name is ASCII
            };
            if name.ends_with(".tmp") {
                tmp_files.push(entry.path());
            } else if name == meta::FILE_NAME {
                has_meta = true;
            } else if let Some(id) = segment::parse_name(&name) {
                let seg_path = entry.path();
                let len = match fs::metadata(&seg_path) {
                    Ok(m) => m.len(),
                    // Deleted between the listing and now (GC of an open store).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err("stat", &seg_path)(e)),
                };
                segments.push(SegmentFile {
                    id,
                    path: seg_path,
                    len,
                    is_newest: false,
                });
            }
        }
        segments.sort_unstable_by_key(|s| s.id);
        if let Some(last) = segments.last_mut() {
            last.is_newest = true;
        }
        tmp_files.sort();
        let meta_path = path.join(meta::FILE_NAME);
        if has_meta {
            let mut bytes = Vec::with_capacity(meta::LEN);
            File::open(&meta_path)
                .and_then(|f| f.take(META_READ_LIMIT).read_to_end(&mut bytes))
                .map_err(io_err("read", &meta_path))?;
            meta::check(&bytes, &meta_path)?;
        } else if !segments.is_empty() {
            // The metadata file is made durable before the first segment exists.
            return Err(Error::Corruption {
                file: meta_path,
                offset: 0,
                reason: "metadata file missing beside log segments",
            });
        } else {
            return Err(Error::Io {
                op: "open metadata",
                path: meta_path,
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    "not a dedupstore directory (no dedupstore.meta and no segments)",
                ),
            });
        }
        Ok(Dir {
            path,
            segments,
            tmp_files,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The segment files, in id (log) order.
    pub fn segment_files(&self) -> &[SegmentFile] {
        &self.segments
    }

    /// Leftover `*.tmp` files: creations that did not finish, which opening
    /// the store deletes (while a store is open, one may be in progress).
    pub fn tmp_files(&self) -> &[PathBuf] {
        &self.tmp_files
    }

    /// Total length of the segment files, as listed.
    pub fn file_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// Reads one segment file whole and checks it. Damage is reported in
    /// [`Segment::problems`], not as an error; errors are I/O only (a
    /// `NotFound` one if the file was deleted since the listing).
    pub fn read_segment(&self, file: &SegmentFile) -> Result<Segment> {
        let mut f = File::open(&file.path).map_err(io_err("open segment", &file.path))?;
        let len = f.metadata().map_err(io_err("stat", &file.path))?.len();
        if len > MAX_SEGMENT_FILE {
            let mut seg = Segment::new(file, Vec::new());
            seg.problem(
                MAX_SEGMENT_FILE,
                ProblemKind::Corruption,
                "segment larger than 4 GiB".into(),
                len - MAX_SEGMENT_FILE,
            );
            return Ok(seg);
        }
        // Opening the store first extends a short newest segment with zeros
        // (to the configured size), so a record cut only in trailing zero
        // bytes still decodes there: pad it likewise, by one record at most.
        let pad = if file.is_newest { MAX_RECORD_LEN } else { 0 };
        let mut data = Vec::new();
        data.try_reserve_exact(
            usize::try_from(len)
                .unwrap_or(usize::MAX)
                .saturating_add(pad),
        )
        .map_err(|_| io_err("read segment", &file.path)(io::ErrorKind::OutOfMemory.into()))?;
        f.read_to_end(&mut data)
            .map_err(io_err("read segment", &file.path))?;
        let read_len = data.len();
        data.resize(read_len + pad, 0);
        let mut seg = Segment::new(file, data);
        seg.read_len = read_len;
        seg.scan();
        Ok(seg)
    }

    /// Reads and checks every segment, in log order, one at a time.
    pub fn segments(&self) -> impl Iterator<Item = Result<Segment>> + '_ {
        self.segments.iter().map(|f| self.read_segment(f))
    }

    /// Checks the whole store, like `fsck`. See [`Dir::verify_with`].
    pub fn verify(&self) -> Result<Report> {
        self.verify_with(|_| {})
    }

    /// Checks the whole store, calling `progress` after each segment file.
    /// Damage is reported in the [`Report`]; errors are I/O failures only. A
    /// segment deleted since the listing (by the GC of a store that has the
    /// directory open) is listed in [`Report::vanished_segments`].
    pub fn verify_with(&self, mut progress: impl FnMut(&SegmentFile)) -> Result<Report> {
        let mut report = Report {
            segments: self.segments.len() as u64,
            file_bytes: self.file_bytes(),
            tmp_files: self.tmp_files.clone(),
            ..Report::default()
        };
        for file in &self.segments {
            match self.read_segment(file) {
                Ok(seg) => {
                    report.records.add(&seg.counts);
                    report.problems.extend(seg.problems.iter().cloned());
                    if let Some(t) = &seg.torn_tail {
                        report.torn_tail = Some(t.clone());
                    }
                }
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    report.vanished_segments.push(file.id);
                }
                Err(e) => return Err(e),
            }
            progress(file);
        }
        Ok(report)
    }

    /// The state of `key` at `now_ms` (ms since the Unix epoch), computed by
    /// replaying its records in log order as opening the store would: the
    /// last record decides; a remove or an expired record means absent. See
    /// [`Dir::lookup_with`].
    pub fn lookup(&self, key: &[u8], now_ms: u64) -> Result<Lookup> {
        self.lookup_with(key, now_ms, |_| {})
    }

    /// [`Dir::lookup`], calling `progress` after each segment file. It reads
    /// the files as they are on disk: while a store has the directory open,
    /// the answer can lag behind it. Damaged bytes are skipped as
    /// `RecoveryMode::Salvage` would; [`Lookup::problems`] counts them.
    pub fn lookup_with(
        &self,
        key: &[u8],
        now_ms: u64,
        mut progress: impl FnMut(&SegmentFile),
    ) -> Result<Lookup> {
        let mut last: Option<LastRecord> = None;
        let mut response = Vec::new();
        let mut records = 0;
        let mut problems = 0;
        for file in &self.segments {
            let seg = match self.read_segment(file) {
                Ok(seg) => seg,
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    progress(file);
                    continue;
                }
                Err(e) => return Err(e),
            };
            problems += seg.problems.len() as u64;
            for rec in seg.records().filter(|r| r.key == key) {
                records += 1;
                response.clear();
                if let Some(r) = rec.response {
                    response.extend_from_slice(r);
                }
                last = Some(LastRecord {
                    segment: rec.segment,
                    offset: rec.offset,
                    kind: rec.kind,
                    expires_at_ms: rec.expires_at_ms,
                    fingerprint: rec.fingerprint,
                    token: rec.token,
                });
            }
            progress(file);
        }
        let state = match &last {
            None => KeyState::Absent,
            Some(l) if l.kind == RecordKind::Remove || l.expires_at_ms <= now_ms => {
                KeyState::Absent
            }
            Some(l) => match l.kind {
                RecordKind::Claim => KeyState::InProgress {
                    expires_at_ms: l.expires_at_ms,
                    token: l.token.unwrap_or(0),
                    fingerprint: l.fingerprint,
                },
                RecordKind::Complete => KeyState::Completed {
                    expires_at_ms: l.expires_at_ms,
                    fingerprint: l.fingerprint,
                    response,
                },
                _ => KeyState::Present {
                    expires_at_ms: l.expires_at_ms,
                },
            },
        };
        Ok(Lookup {
            state,
            last,
            records,
            problems,
        })
    }
}

/// The kind of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordKind {
    /// The key is recorded until `expires_at`.
    Insert,
    /// A tombstone: the key is forgotten.
    Remove,
    /// The key is in progress, owned by a claim token, until `expires_at`.
    Claim,
    /// The key is done until `expires_at`, with a stored response.
    Complete,
}

impl RecordKind {
    /// Lower-case name: `insert`, `remove`, `claim`, `complete`.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Insert => "insert",
            RecordKind::Remove => "remove",
            RecordKind::Claim => "claim",
            RecordKind::Complete => "complete",
        }
    }
}

impl fmt::Display for RecordKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl From<Kind> for RecordKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Insert => RecordKind::Insert,
            Kind::Remove => RecordKind::Remove,
            Kind::Claim => RecordKind::Claim,
            Kind::Complete => RecordKind::Complete,
        }
    }
}

/// One valid record, borrowed from the segment it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordView<'a> {
    /// Segment id.
    pub segment: u32,
    /// Byte offset of the record in the segment file.
    pub offset: u64,
    /// Encoded length in bytes.
    pub len: usize,
    /// The record's kind.
    pub kind: RecordKind,
    /// The key bytes.
    pub key: &'a [u8],
    /// Milliseconds since the Unix epoch (UTC). For a remove: its horizon,
    /// until when the records it removed could still have been present.
    pub expires_at_ms: u64,
    /// Payload fingerprint (claim and complete, when one was given).
    pub fingerprint: Option<u64>,
    /// Claim token (claim only): the LSN where the claim was first written
    /// (0 for a claim brought in by `Store::import`: orphaned).
    pub token: Option<u64>,
    /// Stored response (complete only).
    pub response: Option<&'a [u8]>,
}

impl RecordView<'_> {
    /// The record's log sequence number: `segment << 32 | offset`.
    pub fn lsn(&self) -> u64 {
        (u64::from(self.segment) << 32) | self.offset
    }
}

/// Records by kind, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordCounts {
    /// Insert records.
    pub insert: u64,
    /// Remove records.
    pub remove: u64,
    /// Claim records.
    pub claim: u64,
    /// Complete records.
    pub complete: u64,
    /// Encoded bytes of these records.
    pub bytes: u64,
}

impl RecordCounts {
    /// All records.
    pub fn total(&self) -> u64 {
        self.insert + self.remove + self.claim + self.complete
    }

    fn count(&mut self, kind: RecordKind, len: usize) {
        match kind {
            RecordKind::Insert => self.insert += 1,
            RecordKind::Remove => self.remove += 1,
            RecordKind::Claim => self.claim += 1,
            RecordKind::Complete => self.complete += 1,
        }
        self.bytes += len as u64;
    }

    fn add(&mut self, o: &RecordCounts) {
        self.insert += o.insert;
        self.remove += o.remove;
        self.claim += o.claim;
        self.complete += o.complete;
        self.bytes += o.bytes;
    }
}

/// What kind of damage a [`Problem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// Opening the store fails with [`Error::Corruption`] (unless in salvage
    /// mode).
    Corruption,
    /// A segment of a newer format version: opening fails with
    /// [`Error::UnsupportedVersion`]. Nothing in it was read.
    UnsupportedVersion,
}

/// One damaged place in a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The damaged file.
    pub file: PathBuf,
    /// Byte offset in the file: for a record, where it starts.
    pub offset: u64,
    /// What kind of damage.
    pub kind: ProblemKind,
    /// What check failed.
    pub reason: String,
    /// Bytes up to the next valid record, which salvage mode would skip (0
    /// for header damage, where nothing after it is read).
    pub skipped_bytes: u64,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at offset {}: {}",
            self.file.display(),
            self.offset,
            self.reason
        )
    }
}

/// Bytes after the last valid record of the newest segment: a write cut by a
/// crash (or, while a store has the directory open, one in progress).
/// Opening the store zeroes them; they are not damage.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TornTail {
    /// The newest segment's id.
    pub segment: u32,
    /// Its path.
    pub file: PathBuf,
    /// Where the log ends: the first byte that is not part of a valid record.
    pub offset: u64,
    /// Bytes from `offset` to the last non-zero byte of the file.
    pub bytes: u64,
    /// Records (torn or whole) found there, counted as recovery counts
    /// `Stats::truncated_records`.
    pub records: u64,
}

/// One segment file, read and checked.
#[derive(Debug, Clone)]
pub struct Segment {
    file: SegmentFile,
    /// The file's bytes (the newest segment's followed by zero padding).
    data: Vec<u8>,
    read_len: usize,
    watermark: Option<u64>,
    /// Ranges `[start, end)` of consecutive valid records.
    runs: Vec<(usize, usize)>,
    end: usize,
    counts: RecordCounts,
    problems: Vec<Problem>,
    torn_tail: Option<TornTail>,
}

impl Segment {
    fn new(file: &SegmentFile, data: Vec<u8>) -> Segment {
        Segment {
            file: file.clone(),
            read_len: data.len(),
            data,
            watermark: None,
            runs: Vec::new(),
            end: 0,
            counts: RecordCounts::default(),
            problems: Vec::new(),
            torn_tail: None,
        }
    }

    /// The file as listed.
    /// The file this segment was read from.
    pub fn file(&self) -> &SegmentFile {
        &self.file
    }

    /// The segment id.
    pub fn id(&self) -> u32 {
        self.file.id
    }

    /// Bytes read.
    pub fn len(&self) -> u64 {
        self.read_len as u64
    }

    /// True if the file was empty (or not read: larger than 4 GiB).
    pub fn is_empty(&self) -> bool {
        self.read_len == 0
    }

    /// The header's watermark (`synced_len`), if readable: every byte below
    /// it was durable when it was written.
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    /// Where the log ends in this segment (where the newest one's appends
    /// continue). 0 if the header could not be read.
    pub fn log_end(&self) -> u64 {
        self.end as u64
    }

    /// Valid records by kind.
    pub fn counts(&self) -> &RecordCounts {
        &self.counts
    }

    /// Damage found, in file order. Empty for a sound segment.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// The torn tail, if this is the newest segment and has one.
    pub fn torn_tail(&self) -> Option<&TornTail> {
        self.torn_tail.as_ref()
    }

    /// The valid records, in log order (past damaged bytes, as salvage mode
    /// keeps them; not those of a torn tail, which recovery discards).
    pub fn records(&self) -> Records<'_> {
        Records {
            seg: self,
            run: 0,
            off: self.runs.first().map_or(0, |r| r.0),
        }
    }

    fn problem(&mut self, offset: u64, kind: ProblemKind, reason: String, skipped: u64) {
        self.problems.push(Problem {
            file: self.file.path.clone(),
            offset,
            kind,
            reason,
            skipped_bytes: skipped,
        });
    }

    fn corrupt(&mut self, offset: usize, reason: &str, skipped: usize) {
        self.problem(
            offset as u64,
            ProblemKind::Corruption,
            reason.into(),
            skipped as u64,
        );
    }

    /// Classifies the bytes as recovery's `scan` does (docs/FORMAT.md,
    /// "Recovery rules"), going on past damage as salvage mode does.
    fn scan(&mut self) {
        let is_newest = self.file.is_newest;
        if self.read_len < HEADER_LEN {
            self.corrupt(self.read_len, "segment shorter than its header", 0);
            return;
        }
        let cap = self.data.len();
        let header = segment::check_header(&self.data[..HEADER_LEN], self.file.id, &self.file.path);
        let wm = match header {
            Ok(wm) => wm,
            Err(Error::UnsupportedVersion {
                found, supported, ..
            }) => {
                self.problem(
                    8,
                    ProblemKind::UnsupportedVersion,
                    format!("segment format version {found}; this build reads up to {supported}"),
                    0,
                );
                return;
            }
            Err(Error::Corruption { offset, reason, .. }) => {
                self.problem(offset, ProblemKind::Corruption, reason.into(), 0);
                return;
            }
            Err(e) => {
                self.problem(0, ProblemKind::Corruption, e.to_string(), 0);
                return;
            }
        };
        self.watermark = wm;
        // Sealed segments were synced whole and their watermark persisted
        // before the next segment was created; only the newest may lack one.
        let wm = match wm {
            Some(w) => w,
            None if is_newest => HEADER_LEN as u64,
            None => {
                self.corrupt(24, "sealed segment has no valid watermark", 0);
                cap as u64
            }
        };
        // Opening extends the newest segment to the configured size before
        // reading it; a watermark past its end then shows as damage below
        // the watermark, found by the scan.
        if wm > cap as u64 && !is_newest {
            self.corrupt(cap, "segment is shorter than its synced length", 0);
        }
        let mut off = HEADER_LEN;
        let mut run_start = off;
        let mut exhausted = false;
        let end = loop {
            let problem = match record::decode(&self.data[off..]) {
                Decoded::Record(rec, len) => {
                    self.counts.count(rec.kind.into(), len);
                    off += len;
                    continue;
                }
                Decoded::End => None,
                Decoded::Invalid(reason) => Some(reason),
            };
            let below_wm = (off as u64) < wm;
            // The log ends at the first blank or bad record, unless that spot
            // was already synced (damage, not a tail); and only the newest
            // segment can have a torn tail.
            if !below_wm && (problem.is_none() || is_newest) {
                break off;
            }
            let reason = problem.unwrap_or("blank bytes inside synced records");
            self.runs.push((run_start, off));
            match next_record(&self.data, off + 1) {
                Some(next) => {
                    self.corrupt(off, reason, next - off);
                    off = next;
                    run_start = next;
                }
                None => {
                    let skipped = last_nonzero(&self.data, off).map_or(off, |l| l + 1) - off;
                    // Blank to the end after damage already reported (a
                    // watermark past the end): nothing new to say.
                    if skipped > 0 || self.problems.is_empty() {
                        self.corrupt(off, reason, skipped);
                    }
                    exhausted = true;
                    break off;
                }
            }
        };
        if !exhausted {
            self.runs.push((run_start, end));
        }
        self.runs.retain(|r| r.0 < r.1);
        self.end = end;
        if is_newest && !exhausted {
            self.torn_tail = torn_tail(&self.data, end).map(|(bytes, records)| TornTail {
                segment: self.file.id,
                file: self.file.path.clone(),
                offset: end as u64,
                bytes: bytes as u64,
                records,
            });
        }
    }
}

/// First offset at or after `from` where a valid record starts.
fn next_record(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len()).find(|&p| matches!(record::decode(&data[p..]), Decoded::Record(..)))
}

/// Offset of the last non-zero byte at or after `from`.
fn last_nonzero(data: &[u8], from: usize) -> Option<usize> {
    data.get(from..)?
        .iter()
        .rposition(|&b| b != 0)
        .map(|p| from + p)
}

/// Bytes and records of what follows the log's end in the newest segment,
/// counted as recovery's torn-tail cleanup counts them.
fn torn_tail(data: &[u8], end: usize) -> Option<(usize, u64)> {
    let last = last_nonzero(data, end)?;
    let mut records = 0;
    let mut p = end;
    while p <= last {
        match record::decode(&data[p..]) {
            Decoded::Record(_, len) => {
                records += 1;
                p += len;
            }
            Decoded::End => {
                // Skip the blank run. A record after it may start with zero
                // bytes of its checksum, so look back up to three bytes.
                let next = p + data[p..=last]
                    .iter()
                    .position(|&b| b != 0)
                    .unwrap_or(last + 1 - p);
                p = (next.saturating_sub(3).max(p + 1)..=next)
                    .find(|&q| matches!(record::decode(&data[q..]), Decoded::Record(..)))
                    .unwrap_or(next);
            }
            Decoded::Invalid(_) => {
                records += 1;
                p += 1;
                while p <= last && matches!(record::decode(&data[p..]), Decoded::Invalid(_)) {
                    p += 1;
                }
            }
        }
    }
    Some((last + 1 - end, records))
}

/// Iterator over a segment's valid records; see [`Segment::records`].
#[derive(Debug, Clone)]
pub struct Records<'a> {
    seg: &'a Segment,
    run: usize,
    off: usize,
}

impl<'a> Iterator for Records<'a> {
    type Item = RecordView<'a>;

    fn next(&mut self) -> Option<RecordView<'a>> {
        loop {
            let &(_, run_end) = self.seg.runs.get(self.run)?;
            if self.off < run_end {
                // Every record in a run was decoded by the scan; a failure
                // here cannot happen, but would end the run, not panic.
                if let Decoded::Record(rec, len) = record::decode(self.seg.data.get(self.off..)?) {
                    let view = view(self.seg.file.id, self.off, len, &rec);
                    self.off += len;
                    return Some(view);
                }
            }
            self.run += 1;
            self.off = self.seg.runs.get(self.run).map_or(0, |r| r.0);
        }
    }
}

fn view<'a>(segment: u32, off: usize, len: usize, rec: &record::Record<'a>) -> RecordView<'a> {
    let (token, response) = match rec.body {
        Body::Insert | Body::Remove => (None, None),
        Body::Claim { token, .. } => (Some(token), None),
        Body::Complete { response, .. } => (None, Some(response)),
    };
    RecordView {
        segment,
        offset: off as u64,
        len,
        kind: rec.kind.into(),
        key: rec.key,
        expires_at_ms: rec.expires_at,
        fingerprint: rec.body.fingerprint(),
        token,
        response,
    }
}

/// The result of [`Dir::verify`]: an `fsck` of the store.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Report {
    /// Segment files listed.
    pub segments: u64,
    /// Their total length (preallocated size included).
    pub file_bytes: u64,
    /// Valid records by kind, and their bytes.
    pub records: RecordCounts,
    /// The newest segment's torn tail, if any: not damage.
    pub torn_tail: Option<TornTail>,
    /// Every damaged place, in log order. Empty means clean.
    pub problems: Vec<Problem>,
    /// Leftover `*.tmp` files (deleted on open): not damage.
    pub tmp_files: Vec<PathBuf>,
    /// Segments listed but deleted before they could be read: GC of a store
    /// that has the directory open. Not damage.
    pub vanished_segments: Vec<u32>,
}

impl Report {
    /// True if opening the store in strict mode would find nothing damaged
    /// (a torn tail and leftover temp files are not damage).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// True if some segment is of a newer format version than this build.
    pub fn has_unsupported_version(&self) -> bool {
        self.problems
            .iter()
            .any(|p| p.kind == ProblemKind::UnsupportedVersion)
    }
}

/// A key's state as the files on disk tell.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyState {
    /// Never recorded, removed, or expired.
    Absent,
    /// Recorded by an insert until `expires_at_ms` (exclusive).
    Present {
        /// Expiry, ms since the epoch.
        expires_at_ms: u64,
    },
    /// Claimed, the lease running until `expires_at_ms`.
    InProgress {
        /// Lease end, ms since the epoch.
        expires_at_ms: u64,
        /// The claim token.
        token: u64,
        /// The payload fingerprint, if one was given.
        fingerprint: Option<u64>,
    },
    /// Completed, kept until `expires_at_ms`, with its stored response.
    Completed {
        /// Expiry, ms since the epoch.
        expires_at_ms: u64,
        /// The payload fingerprint, if one was given.
        fingerprint: Option<u64>,
        /// The stored response (empty: none).
        response: Vec<u8>,
    },
}

/// The record that decided a key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LastRecord {
    /// Segment id.
    pub segment: u32,
    /// Byte offset in the segment.
    pub offset: u64,
    /// The record's kind.
    pub kind: RecordKind,
    /// Its expiry field, ms since the epoch.
    pub expires_at_ms: u64,
    /// Payload fingerprint (claim and complete).
    pub fingerprint: Option<u64>,
    /// Claim token (claim).
    pub token: Option<u64>,
}

/// The result of [`Dir::lookup`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Lookup {
    /// The key's state as the files tell it.
    pub state: KeyState,
    /// The last record of the key in log order, if any (for an absent key:
    /// the remove, or the expired record).
    pub last: Option<LastRecord>,
    /// Records of the key found.
    pub records: u64,
    /// Damaged places met in the store (their bytes were skipped).
    pub problems: u64,
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test data: truncation intended
mod tests {
    use super::*;
    use crate::{Claim, Config, Durability, Store};
    use std::time::Duration;

    const DAY: Duration = Duration::from_secs(86_400);

    /// Checkpoints off: these tests compare `verify` with an open that
    /// reads every record (with a checkpoint, open does not re-read what it
    /// covers, see docs/FORMAT.md).
    fn cfg() -> Config {
        Config::default()
            .segment_size(64 << 10)
            .durability(Durability::None)
            .gc_interval(None)
            .checkpoints(crate::config::Checkpoints::Off)
    }

    /// A closed store of `n` keys over several 64 KiB segments, some claimed,
    /// completed and removed.
    fn build(dir: &Path, n: u32) {
        let s = Store::open(dir, cfg()).unwrap();
        for i in 0..n {
            let k = format!("key-{i}");
            match i % 10 {
                0 => {
                    if let Claim::Acquired(t) = s.claim(k.as_bytes(), DAY, Some(7)).unwrap() {
                        s.complete(&t, Some(b"done"), DAY).unwrap();
                    }
                }
                1 => {
                    let _in_progress = s.claim(k.as_bytes(), DAY, None).unwrap();
                }
                _ => {
                    let _ = s.check_and_insert(k.as_bytes(), DAY).unwrap();
                }
            }
            if i % 17 == 0 {
                s.remove(k.as_bytes()).unwrap();
            }
        }
        s.close().unwrap();
    }

    fn seg_path(dir: &Path, id: u32) -> PathBuf {
        dir.join(segment::file_name(id))
    }

    #[test]
    fn clean_store_lists_every_record() {
        let t = tempfile::tempdir().unwrap();
        build(t.path(), 3000);
        let d = Dir::open(t.path()).unwrap();
        assert!(d.segment_files().len() >= 2);
        let r = d.verify().unwrap();
        assert!(r.is_clean(), "{:?}", r.problems);
        assert!(r.torn_tail.is_none());
        assert_eq!(r.records.claim, 600);
        assert_eq!(r.records.complete, 300);
        assert_eq!(r.records.insert, 2400);
        assert_eq!(
            r.records.remove,
            (0..3000).filter(|i| i % 17 == 0).count() as u64
        );
        let mut n = 0;
        let mut last_lsn = 0;
        for seg in d.segments() {
            for rec in seg.unwrap().records() {
                assert!(rec.lsn() > last_lsn);
                last_lsn = rec.lsn();
                n += 1;
            }
        }
        assert_eq!(n, r.records.total());
        let now = 1;
        let l = d.lookup(b"key-10", now).unwrap();
        assert!(
            matches!(&l.state, KeyState::Completed { response, fingerprint: Some(7), .. } if response == b"done"),
            "{l:?}"
        );
        let l = d.lookup(b"key-11", now).unwrap();
        assert!(matches!(l.state, KeyState::InProgress { .. }), "{l:?}");
        let l = d.lookup(b"key-12", now).unwrap();
        assert!(matches!(l.state, KeyState::Present { .. }), "{l:?}");
        let l = d.lookup(b"key-17", now).unwrap();
        assert_eq!(l.state, KeyState::Absent);
        assert_eq!(l.last.map(|r| r.kind), Some(RecordKind::Remove));
        let l = d.lookup(b"nope", now).unwrap();
        assert_eq!((l.state, l.records), (KeyState::Absent, 0));
        // Expired: absent, whatever the last record was.
        let l = d.lookup(b"key-12", u64::MAX).unwrap();
        assert_eq!(l.state, KeyState::Absent);
    }

    #[test]
    fn not_a_store_and_newer_versions_are_errors() {
        let t = tempfile::tempdir().unwrap();
        match Dir::open(t.path()) {
            Err(Error::Io { source, .. }) => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Dir::open(t.path().join("missing")),
            Err(Error::Io { .. })
        ));
        build(t.path(), 10);
        let meta = t.path().join(meta::FILE_NAME);
        let mut b = fs::read(&meta).unwrap();
        b[8] = 2;
        fs::write(&meta, &b).unwrap();
        assert!(matches!(
            Dir::open(t.path()),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        fs::remove_file(&meta).unwrap();
        assert!(matches!(Dir::open(t.path()), Err(Error::Corruption { .. })));
    }

    #[test]
    fn lock_probe_sees_an_open_store_and_leaves_it_open() {
        let t = tempfile::tempdir().unwrap();
        build(t.path(), 10);
        assert_eq!(lock_state(t.path()).unwrap(), LockState::Unlocked);
        let s = Store::open(t.path(), cfg()).unwrap();
        assert_eq!(lock_state(t.path()).unwrap(), LockState::Locked);
        let _ = s.check_and_insert(b"after-probe", DAY).unwrap();
        drop(s);
        assert_eq!(lock_state(t.path()).unwrap(), LockState::Unlocked);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(lock_state(empty.path()).unwrap(), LockState::NoLockFile);
        // Open and close again: the probe released its lock.
        Store::open(t.path(), cfg()).unwrap().close().unwrap();
    }

    /// Small deterministic PRNG (xorshift64*), to keep the crate's
    /// dependencies as they are.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn walk_all(d: &Dir) -> Result<Report> {
        for seg in d.segments() {
            let seg = seg?;
            for rec in seg.records() {
                assert!(rec.key.len() <= crate::MAX_KEY_LEN);
            }
            let _ = (seg.torn_tail(), seg.problems(), seg.log_end());
        }
        let _ = d.lookup(b"key-5", 0)?;
        d.verify()
    }

    /// Random bytes as segment and metadata files, and random damage to a
    /// real store: inspection never panics, and its verdict matches what a
    /// strict open does (clean ⇔ opens; else the first problem is the error),
    /// and its torn-tail count matches `Stats::truncated_records`.
    #[test]
    fn never_panics_and_agrees_with_recovery() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Pure noise, including headers that pass and records that decode.
        for round in 0..40 {
            let t = tempfile::tempdir().unwrap();
            build(t.path(), 0);
            let header = fs::read(seg_path(t.path(), 1)).unwrap();
            for id in 1..=2u32 {
                let len = [0, 10, 63, 64, 65, 200, 4096][rng.below(7)];
                let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if len >= 64 && round % 2 == 0 {
                    // A valid header, so the record walk sees the noise.
                    b[..64].copy_from_slice(&header[..64]);
                    b[12..16].copy_from_slice(&id.to_le_bytes());
                    let crc = crc32fast::hash(&b[0..20]);
                    b[20..24].copy_from_slice(&crc.to_le_bytes());
                }
                fs::write(seg_path(t.path(), id), &b).unwrap();
            }
            if let Ok(d) = Dir::open(t.path()) {
                walk_all(&d).unwrap();
            }
            let meta = t.path().join(meta::FILE_NAME);
            let noise: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
            fs::write(&meta, &noise).unwrap();
            assert!(Dir::open(t.path()).is_err());
        }
        // Damage to a real store, checked against Store::open.
        let base = tempfile::tempdir().unwrap();
        build(base.path(), 2500);
        let n_segs = Dir::open(base.path()).unwrap().segment_files().len() as u32;
        let (mut torn, mut corrupt, mut clean) = (0, 0, 0);
        for round in 0..200 {
            let t = tempfile::tempdir().unwrap();
            for f in fs::read_dir(base.path()).unwrap() {
                let f = f.unwrap();
                fs::copy(f.path(), t.path().join(f.file_name())).unwrap();
            }
            let id = 1 + rng.below(n_segs as usize) as u32;
            let p = seg_path(t.path(), id);
            let mut b = fs::read(&p).unwrap();
            let end = b.iter().rposition(|&x| x != 0).unwrap_or(64) + 1;
            match round % 4 {
                0 => {
                    let at = rng.below(end);
                    b[at] ^= 1 << rng.below(8);
                }
                1 => b.truncate(rng.below(end + 1)),
                2 => {
                    let at = 64 + rng.below(end.saturating_sub(64).max(1));
                    for x in &mut b[at..(at + 1 + rng.below(64)).min(end)] {
                        *x = rng.next() as u8;
                    }
                }
                _ => {
                    // A crash-like tail: watermark back to 64, tail cut.
                    let wm = 64u64.to_le_bytes();
                    b[24..32].copy_from_slice(&wm);
                    let crc = crc32fast::hash(&wm);
                    b[32..36].copy_from_slice(&crc.to_le_bytes());
                    b.truncate(64 + rng.below(end - 64 + 1));
                }
            }
            fs::write(&p, &b).unwrap();
            let report = walk_all(&Dir::open(t.path()).unwrap()).unwrap();
            let opened = Store::open(t.path(), cfg());
            match (&report.problems.first(), opened) {
                (None, Ok(s)) => {
                    let want = report.torn_tail.as_ref().map_or(0, |t| t.records);
                    assert_eq!(s.stats().truncated_records, want, "round {round}");
                    if want > 0 {
                        torn += 1;
                    } else {
                        clean += 1;
                    }
                }
                (Some(p), Err(Error::Corruption { file, offset, .. })) => {
                    corrupt += 1;
                    assert_eq!((&p.file, p.offset), (&file, offset), "round {round}");
                    assert_eq!(p.kind, ProblemKind::Corruption);
                }
                (Some(p), Err(Error::UnsupportedVersion { file, .. })) => {
                    assert_eq!(
                        (&p.file, p.kind),
                        (&file, ProblemKind::UnsupportedVersion),
                        "round {round}"
                    );
                }
                (p, o) => panic!(
                    "round {round}: inspect says {p:?}, open says {:?}",
                    o.map(|_| ())
                ),
            }
        }
        assert!(
            torn > 10 && corrupt > 50 && clean > 0,
            "{torn} {corrupt} {clean}"
        );
    }
}
