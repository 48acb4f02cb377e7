//! The engines compared, each behind the same small interface.
//!
//! Every engine is driven the same way: the measuring loops in `measure.rs`
//! are generic over these traits and monomorphized per engine (static
//! dispatch: no `Box<dyn>`, no per-message allocation for anyone). Keys are
//! borrowed `&[u8]` slices of one buffer built before the clock starts.
//! Every adapter method is `#[inline]`, for every engine: what remains a
//! call is the engine's own (dedupstore's `Store` methods are calls;
//! hashbrown, being generic, inlines into the loop as in a user's code).

use std::fmt;
use std::path::Path;

use clap::ValueEnum;

use crate::workload::KeyKind;

pub mod dedup;
#[cfg(feature = "peers")]
pub mod fjall_kv;
pub mod hashmap;
#[cfg(feature = "peers")]
pub mod lmdb;
#[cfg(feature = "peers")]
pub mod redb_kv;
#[cfg(feature = "redis")]
pub mod redis_kv;
#[cfg(feature = "rocksdb")]
pub mod rocks;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// One engine doing the dedup job on one thread, no per-message fsync.
pub trait Backend {
    /// Records `key` unless present and unexpired; true if it was new.
    fn check_and_insert(&mut self, key: &[u8], now_ms: u64, ttl_ms: u64) -> Res<bool>;
    fn contains(&mut self, key: &[u8], now_ms: u64) -> Res<bool>;
    /// One answer per key, in order, as if `check_and_insert` were called on
    /// each in turn (a key repeated inside the batch is a duplicate after its
    /// first occurrence). Each engine uses its natural batch form.
    fn check_and_insert_batch(
        &mut self,
        keys: &[&[u8]],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Res<Vec<bool>>;
    /// One answer per key, in order.
    fn contains_batch(&mut self, keys: &[&[u8]], now_ms: u64) -> Res<Vec<bool>>;
    /// Makes everything durable (end of run, before measuring disk).
    fn flush(&mut self) -> Res<()>;
}

/// Check-and-insert callable from many threads at once: the threaded
/// (no fsync) phase and the durable (fsync per message) phase.
pub trait Shared: Send + Sync {
    fn check_and_insert(&self, key: &[u8], now_ms: u64, ttl_ms: u64) -> Res<bool>;
}

/// How to open one engine in each mode. `threaded` is the engine opened
/// for many threads without fsync (None: not run), `durable` the engine
/// with an fsync per acknowledged message (None: not run).
pub struct Plan<B, T, D> {
    pub persistent: bool,
    pub open: fn(&Path) -> Res<B>,
    pub threaded: Option<fn(&Path) -> Res<T>>,
    pub durable: Option<fn(&Path) -> Res<D>>,
}

/// The engines, as named on the command line (`--backends`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// dedupstore (this crate).
    Dedupstore,
    /// The fair RAM-only ceiling: a hashbrown map with fixed-size keys.
    Map,
    /// redb (feature `peers`, default).
    Redb,
    /// LMDB through heed (feature `peers`, default).
    Lmdb,
    /// fjall (feature `peers`, default).
    Fjall,
    /// RocksDB (feature `rocksdb`).
    Rocksdb,
    /// Redis over loopback (feature `redis`, needs a running server).
    Redis,
}

impl Engine {
    /// The name on the command line and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Dedupstore => "dedupstore",
            Engine::Map => "map",
            Engine::Redb => "redb",
            Engine::Lmdb => "lmdb",
            Engine::Fjall => "fjall",
            Engine::Rocksdb => "rocksdb",
            Engine::Redis => "redis",
        }
    }

    /// The name in the results table.
    pub fn label(self, key: KeyKind) -> String {
        match self {
            Engine::Map => format!("map `[u8; {}]` (RAM only)", key.key_len()),
            Engine::Lmdb => "LMDB (heed)".into(),
            Engine::Rocksdb => "RocksDB".into(),
            Engine::Redis => "Redis SET NX PX".into(),
            e => e.name().into(),
        }
    }

    /// Whether this build includes the engine (some sit behind features).
    pub fn built(self) -> bool {
        match self {
            Engine::Dedupstore | Engine::Map => true,
            Engine::Redb | Engine::Lmdb | Engine::Fjall => cfg!(feature = "peers"),
            Engine::Rocksdb => cfg!(feature = "rocksdb"),
            Engine::Redis => cfg!(feature = "redis"),
        }
    }

    /// The cargo feature that builds this engine in.
    pub fn feature(self) -> &'static str {
        match self {
            Engine::Dedupstore | Engine::Map => "",
            Engine::Redb | Engine::Lmdb | Engine::Fjall => "peers",
            Engine::Rocksdb => "rocksdb",
            Engine::Redis => "redis",
        }
    }

    /// Every engine in this build, in table order.
    pub fn built_in() -> Vec<Engine> {
        Engine::value_variants()
            .iter()
            .copied()
            .filter(|e| e.built())
            .collect()
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Expiry stored by peers that have no TTL of their own: 8 bytes LE.
#[allow(dead_code)] // unused when built without peers
pub fn live(value: &[u8], now_ms: u64) -> bool {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .is_some_and(|exp| exp > now_ms)
}
