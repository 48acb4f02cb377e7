//! dedupstore through its public API: `check_and_insert`, `contains`, and
//! for batches `check_and_insert_batch` (one lock round and one sync per
//! batch) and a loop over `contains` (see [`contains_batch`]).

use std::path::Path;
use std::time::Duration;

use dedupstore::{Config, Durability, Outcome, Store};

use super::{Backend, Plan, Res, Shared};

pub fn plan() -> Plan<Dedup, Dedup, Dedup> {
    Plan {
        persistent: true,
        open: |dir| open(dir, Durability::None),
        threaded: Some(|dir| open(dir, Durability::None)),
        durable: Some(|dir| open(dir, Durability::Immediate)),
    }
}

fn open(dir: &Path, durability: Durability) -> Res<Dedup> {
    Ok(Dedup(Store::open(
        dir,
        Config::default().durability(durability),
    )?))
}

pub struct Dedup(Store);

impl Backend for Dedup {
    #[inline]
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        Shared::check_and_insert(self, key, now, ttl_ms)
    }
    #[inline]
    fn contains(&mut self, key: &[u8], _now: u64) -> Res<bool> {
        Ok(self.0.contains(key)?)
    }
    #[inline]
    fn check_and_insert_batch(&mut self, keys: &[&[u8]], _now: u64, ttl_ms: u64) -> Res<Vec<bool>> {
        let outcomes = self
            .0
            .check_and_insert_batch(keys, Duration::from_millis(ttl_ms))?;
        Ok(outcomes.iter().map(Outcome::is_inserted).collect())
    }
    #[inline]
    fn contains_batch(&mut self, keys: &[&[u8]], _now: u64) -> Res<Vec<bool>> {
        Ok(self.0.contains_batch(keys)?)
    }
    #[inline]
    fn flush(&mut self) -> Res<()> {
        Ok(self.0.sync()?)
    }
}

impl Shared for Dedup {
    #[inline]
    fn check_and_insert(&self, key: &[u8], _now: u64, ttl_ms: u64) -> Res<bool> {
        Ok(self
            .0
            .check_and_insert(key, Duration::from_millis(ttl_ms))?
            .is_inserted())
    }
}
