//! fjall: get, then insert if absent (no transaction: not atomic across
//! threads; the benchmark's threads never share keys).

use std::path::Path;
use std::sync::Arc;

use fjall::{Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use super::{live, Backend, Durable, Res, Spec};

pub fn spec() -> Spec {
    Spec {
        name: "fjall",
        persistent: true,
        open: |dir| Ok(Box::new(open(dir, false)?)),
        open_durable: Some(|dir| Ok(Arc::new(open(dir, true)?))),
    }
}

struct Fjall {
    ks: Keyspace,
    ids: PartitionHandle,
    durable: bool,
}

fn open(dir: &Path, durable: bool) -> Res<Fjall> {
    let ks = fjall::Config::new(dir).open()?;
    let ids = ks.open_partition("ids", PartitionCreateOptions::default())?;
    Ok(Fjall { ks, ids, durable })
}

impl Fjall {
    fn cai(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
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

impl Backend for Fjall {
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        self.cai(key, now, ttl_ms)
    }
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        Ok(self.ids.get(key)?.is_some_and(|v| live(&v, now)))
    }
    fn flush(&mut self) -> Res<()> {
        Ok(self.ks.persist(PersistMode::SyncAll)?)
    }
}

impl Durable for Fjall {
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        self.cai(key, now, ttl_ms)
    }
}
