//! fjall: get, then insert if absent (no transaction: not atomic across
//! threads; the benchmark's threads never share keys). Batched: a get per
//! key (fjall 2 has no multi-get), the new keys written in one write batch
//! (`Keyspace::batch`); a write batch does not see its own writes, so keys
//! repeated inside a batch are caught by a per-batch set.

use std::path::Path;

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};
use hashbrown::HashSet;

use super::{live, Backend, Plan, Res, Shared};

pub fn plan() -> Plan<Fjall, Fjall, Fjall> {
    Plan {
        persistent: true,
        open: |dir| open(dir, false),
        threaded: None,
        durable: Some(|dir| open(dir, true)),
    }
}

pub struct Fjall {
    ks: Keyspace,
    ids: PartitionHandle,
    durable: bool,
}

fn open(dir: &Path, durable: bool) -> Res<Fjall> {
    let ks = fjall::Config::new(dir).open()?;
    let ids = ks.open_partition("ids", PartitionCreateOptions::default())?;
    Ok(Fjall { ks, ids, durable })
}

impl Backend for Fjall {
    #[inline]
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        Shared::check_and_insert(self, key, now, ttl_ms)
    }
    #[inline]
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        Ok(self.ids.get(key)?.is_some_and(|v| live(&v, now)))
    }
    #[inline]
    fn check_and_insert_batch(&mut self, keys: &[&[u8]], now: u64, ttl_ms: u64) -> Res<Vec<bool>> {
        let exp = (now + ttl_ms).to_le_bytes();
        let mut batch = self.ks.batch();
        let mut in_batch: HashSet<&[u8]> = HashSet::with_capacity(keys.len());
        let new = keys
            .iter()
            .map(|&key| {
                if in_batch.contains(key) || self.ids.get(key)?.is_some_and(|v| live(&v, now)) {
                    return Ok(false);
                }
                in_batch.insert(key);
                batch.insert(&self.ids, key, exp);
                Ok(true)
            })
            .collect::<Res<Vec<bool>>>()?;
        batch.commit()?;
        Ok(new)
    }
    #[inline]
    fn contains_batch(&mut self, keys: &[&[u8]], now: u64) -> Res<Vec<bool>> {
        keys.iter()
            .map(|&key| Ok(self.ids.get(key)?.is_some_and(|v| live(&v, now))))
            .collect()
    }
    #[inline]
    fn flush(&mut self) -> Res<()> {
        Ok(self.ks.persist(PersistMode::SyncAll)?)
    }
}

impl Shared for Fjall {
    #[inline]
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        if self.ids.get(key)?.is_some_and(|v| live(&v, now)) {
            return Ok(false);
        }
        self.ids.insert(key, (now + ttl_ms).to_le_bytes())?;
        if self.durable {
            self.ks.persist(PersistMode::SyncAll)?;
        }
        Ok(true)
    }
}
