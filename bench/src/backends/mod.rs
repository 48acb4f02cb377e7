//! The engines compared, each behind the same small interface.

use std::path::Path;
use std::sync::Arc;

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

/// One engine doing the dedup job, single-threaded, no per-message fsync.
pub trait Backend {
    /// Records `key` unless present and unexpired; true if it was new.
    fn check_and_insert(&mut self, key: &[u8], now_ms: u64, ttl_ms: u64) -> Res<bool>;
    fn contains(&mut self, key: &[u8], now_ms: u64) -> Res<bool>;
    /// Makes everything durable (end of run, before measuring disk).
    fn flush(&mut self) -> Res<()>;
}

/// The same job with every message durable before it is acknowledged,
/// callable from many threads.
pub trait Durable: Send + Sync {
    fn check_and_insert(&self, key: &[u8], now_ms: u64, ttl_ms: u64) -> Res<bool>;
}

pub type OpenDurable = fn(&Path) -> Res<Arc<dyn Durable>>;

pub struct Spec {
    pub name: &'static str,
    pub persistent: bool,
    pub open: fn(&Path) -> Res<Box<dyn Backend>>,
    pub open_durable: Option<OpenDurable>,
}

pub fn all() -> Vec<Spec> {
    #[allow(unused_mut)] // extended by features
    let mut v = vec![dedup::spec(), hashmap::spec()];
    #[cfg(feature = "peers")]
    v.extend([redb_kv::spec(), lmdb::spec(), fjall_kv::spec()]);
    #[cfg(feature = "rocksdb")]
    v.push(rocks::spec());
    #[cfg(feature = "redis")]
    v.push(redis_kv::spec());
    v
}

/// Expiry stored by peers that have no TTL of their own: 8 bytes LE.
pub fn live(value: &[u8], now_ms: u64) -> bool {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .is_some_and(|exp| exp > now_ms)
}
