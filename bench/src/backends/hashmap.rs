//! The ceiling: an in-memory hashbrown map with fixed-size keys, no
//! persistence. What a user who keeps IDs in RAM would write: keys inline in
//! the table as `[u8; N]` (no heap allocation, no pointer chase per key),
//! value = expiry in ms, hashbrown's default hasher (foldhash).
//!
//! One thread: `HashMap<[u8; N], u64>`; a batch is a plain loop over it.
//! Many threads: [`ShardedMap`], 256 shards of `Mutex<HashTable>`, as
//! dedupstore's index is 256 locked shards.

use std::path::Path;
use std::sync::Mutex;

use hashbrown::hash_table::Entry;
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use super::{Backend, Plan, Res, Shared};
use std::hash::BuildHasher;

pub fn plan<const N: usize>() -> Plan<Map<N>, ShardedMap<N>, ShardedMap<N>> {
    Plan {
        persistent: false,
        open: |_| Ok(Map::default()),
        threaded: Some(|_: &Path| Ok(ShardedMap::default())),
        durable: None,
    }
}

/// The key as the map stores it. Every key of a run has the map's length
/// (the driver picks N by key kind), so a mismatch is a driver bug: it
/// panics, and the run reports this engine as failed. (Returning it as an
/// error instead made the compiler keep the error path in the hot loop and
/// cost the map 4x in lookups.)
fn fixed<const N: usize>(key: &[u8]) -> [u8; N] {
    key.try_into()
        .unwrap_or_else(|_| panic!("map: a {}-byte key in a [u8; {N}] map", key.len()))
}

pub struct Map<const N: usize>(HashMap<[u8; N], u64>);

impl<const N: usize> Default for Map<N> {
    fn default() -> Self {
        Map(HashMap::default())
    }
}

impl<const N: usize> Map<N> {
    /// What a user writes: infallible, inline.
    #[inline]
    fn cai(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> bool {
        let exp = self.0.entry(fixed(key)).or_insert(0);
        if *exp > now {
            return false;
        }
        *exp = now + ttl_ms;
        true
    }
    #[inline]
    fn has(&self, key: &[u8], now: u64) -> bool {
        self.0.get(&fixed::<N>(key)).is_some_and(|&e| e > now)
    }
}

impl<const N: usize> Backend for Map<N> {
    #[inline]
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        Ok(self.cai(key, now, ttl_ms))
    }
    #[inline]
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        Ok(self.has(key, now))
    }
    /// A plain loop over the batch.
    #[inline]
    fn check_and_insert_batch(&mut self, keys: &[&[u8]], now: u64, ttl_ms: u64) -> Res<Vec<bool>> {
        Ok(keys.iter().map(|k| self.cai(k, now, ttl_ms)).collect())
    }
    #[inline]
    fn contains_batch(&mut self, keys: &[&[u8]], now: u64) -> Res<Vec<bool>> {
        Ok(keys.iter().map(|k| self.has(k, now)).collect())
    }
    #[inline]
    fn flush(&mut self) -> Res<()> {
        Ok(())
    }
}

const SHARDS: usize = 256;

/// Keys and their expiry (ms).
type Shard<const N: usize> = Mutex<HashTable<([u8; N], u64)>>;

/// One shard on its own cache lines (no false sharing between shards).
#[repr(align(128))]
struct Padded<T>(T);

/// The multi-threaded ceiling: 256 `Mutex<HashTable<([u8; N], u64)>>`.
/// One foldhash per key picks the shard (bits 32..40) and the slot.
pub struct ShardedMap<const N: usize> {
    hasher: DefaultHashBuilder,
    shards: Box<[Padded<Shard<N>>]>,
}

impl<const N: usize> Default for ShardedMap<N> {
    fn default() -> Self {
        ShardedMap {
            hasher: DefaultHashBuilder::default(),
            shards: (0..SHARDS)
                .map(|_| Padded(Mutex::new(HashTable::new())))
                .collect(),
        }
    }
}

impl<const N: usize> Shared for ShardedMap<N> {
    #[inline]
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        let k = fixed::<N>(key);
        let h = self.hasher.hash_one(k);
        // Not the top bits: hashbrown keeps those as the slot's tag.
        let shard = &self.shards[(h >> 32) as usize % SHARDS].0;
        let mut t = shard.lock().map_err(|_| "map: a shard lock was poisoned")?;
        Ok(
            match t.entry(h, |e| e.0 == k, |e| self.hasher.hash_one(e.0)) {
                Entry::Occupied(mut o) => {
                    if o.get().1 > now {
                        false
                    } else {
                        o.get_mut().1 = now + ttl_ms;
                        true
                    }
                }
                Entry::Vacant(v) => {
                    v.insert((k, now + ttl_ms));
                    true
                }
            },
        )
    }
}
