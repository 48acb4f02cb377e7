//! Store configuration.

use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::segment::HEADER_LEN;

/// When an acknowledged insert or remove reaches stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A call returns only after its record is on stable storage. Concurrent
    /// callers share fsyncs (group commit). A `Duplicate` answer is likewise
    /// only given once the insert it reports is durable.
    Immediate,
    /// A background thread syncs every interval. A process crash loses nothing
    /// acknowledged; a power loss loses at most the last interval.
    Interval(Duration),
    /// The OS decides when data reaches disk. A process crash loses nothing
    /// acknowledged; a power loss can lose anything since the last `sync()`.
    None,
}

/// What to do when recovery finds a bad checksum before the end of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Truncate a torn tail (expected after a crash); report anything else as
    /// `Error::Corruption`. The default.
    #[default]
    Strict,
    /// Skip damaged bytes and keep every record whose checksum is still valid.
    /// Counted in `Stats::salvaged_bytes`. Damaged inserts are forgotten and
    /// damaged removals are undone, so use it only to rescue a broken store.
    Salvage,
}

/// When the store writes an index checkpoint (`index.ckpt`, see
/// docs/FORMAT.md), which lets open load the index instead of replaying the
/// whole log. A checkpoint that does not match the log is ignored (open
/// replays the log in full) and rewritten; it never changes an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Checkpoints {
    /// Never read or write checkpoints: open always replays the whole log.
    Off,
    /// Write one at clean close, after a GC run that compacted a segment,
    /// and on [`crate::Store::checkpoint`]; never in the background.
    OnCloseAndGc,
    /// As `OnCloseAndGc`, and also in a background thread after a segment
    /// is sealed, once the log written since the last checkpoint is at
    /// least one segment and at least half the checkpoint's size: for
    /// 16-byte IDs, about 2.6 bytes of checkpoint per byte of log, and an
    /// open after a crash replays at most about 28% of the records. The
    /// default.
    #[default]
    Background,
}

/// Configuration for [`crate::Store::open`]. `Config::default()` suits most users.
#[derive(Clone)]
pub struct Config {
    /// When acknowledged writes reach stable storage. Default: `Immediate`.
    pub durability: Durability,
    /// TTL used by the `*_default_ttl` helpers. Default: 24 hours.
    pub default_ttl: Duration,
    /// Size of each preallocated log segment in bytes. Default 16 MiB (the most disk that preallocation holds ahead of use);
    /// 64 KiB to 1 GiB.
    pub segment_size: u64,
    /// What open does with damage other than a torn tail. Default: `Strict`.
    pub recovery: RecoveryMode,
    /// Source of wall-clock time for TTLs.
    pub clock: Arc<dyn Clock>,
    /// How often the background GC runs; `None` turns it off (then call
    /// `Store::gc_now`). Default: every 30 s.
    pub gc_interval: Option<Duration>,
    /// GC compacts a sealed segment when less than this fraction of its
    /// records is live. Default 0.5; 0 never compacts (expired segments are
    /// still deleted whole).
    pub compact_below: f64,
    /// When index checkpoints are written. Default: `Background`.
    pub checkpoints: Checkpoints,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            durability: Durability::Immediate,
            default_ttl: Duration::from_secs(24 * 3600),
            segment_size: 16 << 20,
            recovery: RecoveryMode::Strict,
            clock: Arc::new(SystemClock),
            gc_interval: Some(Duration::from_secs(30)),
            compact_below: 0.5,
            checkpoints: Checkpoints::Background,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("durability", &self.durability)
            .field("default_ttl", &self.default_ttl)
            .field("segment_size", &self.segment_size)
            .field("recovery", &self.recovery)
            .field("gc_interval", &self.gc_interval)
            .field("compact_below", &self.compact_below)
            .field("checkpoints", &self.checkpoints)
            .finish_non_exhaustive()
    }
}

pub const MIN_SEGMENT_SIZE: u64 = 64 << 10;
pub const MAX_SEGMENT_SIZE: u64 = 1 << 30;

impl Config {
    /// Sets [`Config::durability`].
    pub fn durability(mut self, d: Durability) -> Self {
        self.durability = d;
        self
    }
    /// Sets [`Config::segment_size`].
    pub fn segment_size(mut self, bytes: u64) -> Self {
        self.segment_size = bytes;
        self
    }
    /// Sets [`Config::clock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }
    /// Sets [`Config::recovery`].
    pub fn recovery(mut self, mode: RecoveryMode) -> Self {
        self.recovery = mode;
        self
    }
    /// Sets [`Config::gc_interval`].
    pub fn gc_interval(mut self, every: Option<Duration>) -> Self {
        self.gc_interval = every;
        self
    }
    /// Sets [`Config::compact_below`].
    pub fn compact_below(mut self, fraction: f64) -> Self {
        self.compact_below = fraction;
        self
    }
    /// Sets [`Config::checkpoints`].
    pub fn checkpoints(mut self, when: Checkpoints) -> Self {
        self.checkpoints = when;
        self
    }
    /// Sets [`Config::default_ttl`].
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = ttl;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&self.segment_size) {
            return Err(Error::InvalidConfig(format!(
                "segment_size {} is outside {MIN_SEGMENT_SIZE}..={MAX_SEGMENT_SIZE}",
                self.segment_size
            )));
        }
        debug_assert!(self.segment_size > HEADER_LEN as u64 + crate::record::MAX_RECORD_LEN as u64);
        if let Durability::Interval(d) = self.durability {
            if d.is_zero() {
                return Err(Error::InvalidConfig(
                    "Durability::Interval needs a non-zero interval".into(),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.compact_below) {
            return Err(Error::InvalidConfig(format!(
                "compact_below {} is outside 0..=1",
                self.compact_below
            )));
        }
        if self.gc_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::InvalidConfig(
                "gc_interval must be non-zero (or None)".into(),
            ));
        }
        crate::limits::check_ttl(self.default_ttl)
    }
}
