//! RocksDB (feature `rocksdb`): get, then put if absent. Batched: `multi_get`
//! for the batch, the new keys written in one `WriteBatch`; a write batch
//! does not see its own writes, so keys repeated inside a batch are caught
//! by a per-batch set. Lookups batched with `multi_get`.

use std::path::Path;

use hashbrown::HashSet;
use rocksdb::{WriteBatch, WriteOptions, DB};

use super::{live, Backend, Plan, Res, Shared};

pub fn plan() -> Plan<Rocks, Rocks, Rocks> {
    Plan {
        persistent: true,
        open: |dir| open(dir, false),
        threaded: None,
        durable: Some(|dir| open(dir, true)),
    }
}

pub struct Rocks {
    db: DB,
    durable: bool,
}

fn open(dir: &Path, durable: bool) -> Res<Rocks> {
    Ok(Rocks {
        db: DB::open_default(dir)?,
        durable,
    })
}

impl Rocks {
    fn write_options(&self) -> WriteOptions {
        let mut wo = WriteOptions::default();
        wo.set_sync(self.durable);
        wo
    }
}

impl Backend for Rocks {
    #[inline]
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        Shared::check_and_insert(self, key, now, ttl_ms)
    }
    #[inline]
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        Ok(self.db.get_pinned(key)?.is_some_and(|v| live(&v, now)))
    }
    #[inline]
    fn check_and_insert_batch(&mut self, keys: &[&[u8]], now: u64, ttl_ms: u64) -> Res<Vec<bool>> {
        let exp = (now + ttl_ms).to_le_bytes();
        let found = self.db.multi_get(keys.iter().copied());
        let mut batch = WriteBatch::default();
        let mut in_batch: HashSet<&[u8]> = HashSet::with_capacity(keys.len());
        let new = keys
            .iter()
            .zip(found)
            .map(|(&key, v)| {
                if in_batch.contains(key) || v?.is_some_and(|v| live(&v, now)) {
                    return Ok(false);
                }
                in_batch.insert(key);
                batch.put(key, exp);
                Ok(true)
            })
            .collect::<Res<Vec<bool>>>()?;
        self.db.write_opt(batch, &self.write_options())?;
        Ok(new)
    }
    #[inline]
    fn contains_batch(&mut self, keys: &[&[u8]], now: u64) -> Res<Vec<bool>> {
        self.db
            .multi_get(keys.iter().copied())
            .into_iter()
            .map(|v| Ok(v?.is_some_and(|v| live(&v, now))))
            .collect()
    }
    #[inline]
    fn flush(&mut self) -> Res<()> {
        Ok(self.db.flush()?)
    }
}

impl Shared for Rocks {
    #[inline]
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        if self.db.get_pinned(key)?.is_some_and(|v| live(&v, now)) {
            return Ok(false);
        }
        self.db
            .put_opt(key, (now + ttl_ms).to_le_bytes(), &self.write_options())?;
        Ok(true)
    }
}
