//! The one error type of the crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in dedupstore.
///
/// Every variant says what failed and, where it applies, in which file and at
/// which byte offset. New variants may be added in minor releases.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O call failed. `op` names the call, `path` the file it was on.
    #[error("I/O error during {op} on {path}: {source}")]
    Io {
        /// The call: "msync", "fsync dir", "rename", "fallocate", ...
        op: &'static str,
        /// The file or directory it was called on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },

    /// A checksum or structural check failed on bytes that were already
    /// durable. The store refuses to open rather than silently drop IDs;
    /// `Config::recovery = RecoveryMode::Salvage` keeps what is still valid.
    #[error("corruption in {file} at offset {offset}: {reason}")]
    Corruption {
        /// The damaged file.
        file: PathBuf,
        /// Byte offset in it of the first bad byte found.
        offset: u64,
        /// What check failed.
        reason: &'static str,
    },

    /// The file was written by a newer format version than this build reads.
    #[error("{file} has format version {found}; this build reads up to {supported}")]
    UnsupportedVersion {
        /// The file.
        file: PathBuf,
        /// The version it carries.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },

    /// Another `Store` (in this or another process) has the directory open.
    #[error("store directory {dir} is locked by another open store")]
    Locked {
        /// The store directory.
        dir: PathBuf,
    },

    /// A key was empty or longer than [`crate::MAX_KEY_LEN`].
    #[error("invalid key of {len} bytes: keys must be 1 to {max} bytes", max = crate::MAX_KEY_LEN)]
    InvalidKey {
        /// The length given.
        len: usize,
    },

    /// A TTL was zero or longer than [`crate::MAX_TTL`].
    #[error("invalid TTL {ttl:?}: it must be greater than zero and at most {max:?}", max = crate::MAX_TTL)]
    InvalidTtl {
        /// The TTL given.
        ttl: std::time::Duration,
    },

    /// A batch's records would not fit in one log segment. Split it, or raise
    /// `Config::segment_size`.
    #[error("batch of {bytes} record bytes exceeds the limit of {max} (half a segment)")]
    BatchTooLarge {
        /// Record bytes the batch needs.
        bytes: usize,
        /// The limit.
        max: usize,
    },

    /// `claim` found the key with a different payload fingerprint: the same
    /// ID was used for a different message.
    #[error("idempotency key reused with a different payload (fingerprint {given:#x}, stored {stored:#x})")]
    FingerprintMismatch {
        /// The fingerprint stored with the key.
        stored: u64,
        /// The fingerprint given now.
        given: u64,
    },

    /// `complete` or `release` with a token that no longer owns its key: the
    /// lease ran out and another caller claimed it, or it was completed,
    /// released or removed.
    #[error("claim token {id:#x} no longer owns its key")]
    StaleToken {
        /// The token's id ([`crate::ClaimToken::id`]).
        id: u64,
    },

    /// A response for `complete` longer than [`crate::MAX_RESPONSE_LEN`].
    #[error("response of {len} bytes exceeds the limit of {max}")]
    ResponseTooLarge {
        /// The response length given.
        len: usize,
        /// The limit.
        max: usize,
    },

    /// A `Config` value is out of range.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// A restore of shipped segments (`replica::ReplicaWriter`) cannot go
    /// on: the target directory is not empty, or the segments are not
    /// given in ascending id order.
    #[error("cannot restore into {dir}: {reason}")]
    RestoreTarget {
        /// The directory being restored into.
        dir: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A snapshot (a stream written by [`crate::Store::export`]) failed a
    /// check: it is truncated, damaged, or not a snapshot. `offset` is the
    /// byte of the stream where the check failed (for a truncated stream,
    /// where it ended). An import that gets this error imported nothing
    /// (unless the reason says the snapshot changed during the import; see
    /// [`crate::Store::import`]).
    #[error("snapshot rejected at byte {offset}: {reason}")]
    SnapshotCorrupt {
        /// Byte offset in the stream.
        offset: u64,
        /// What check failed.
        reason: &'static str,
    },

    /// A snapshot written by a newer snapshot version than this build reads.
    #[error("snapshot has version {found}; this build reads up to {supported}")]
    UnsupportedSnapshotVersion {
        /// The version it carries.
        found: u32,
        /// The newest snapshot version this build reads.
        supported: u32,
    },

    /// Reading or writing a snapshot stream failed (`op` is "read", "write",
    /// "seek" or "flush"; `offset` the stream byte it was at).
    #[error("snapshot {op} failed at byte {offset}: {source}")]
    SnapshotIo {
        /// The call.
        op: &'static str,
        /// Byte offset in the stream.
        offset: u64,
        /// The error of the reader or writer.
        #[source]
        source: io::Error,
    },

    /// An earlier fsync (or msync) failed. What it was meant to persist may or
    /// may not be on disk, so the store refuses every write (and every answer
    /// that would rely on unsynced data) until it is reopened.
    #[error("store is read-only after a failed sync; reopen it to recover")]
    SyncFailed,
}

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}

impl Error {
    /// True when the error is a full disk (ENOSPC). Freeing space and retrying
    /// the call is the remedy; nothing acknowledged was lost.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }
}
