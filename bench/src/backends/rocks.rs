//! RocksDB (feature `rocksdb`): get, then put if absent.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{WriteOptions, DB};

use super::{live, Backend, Durable, Res, Spec};

pub fn spec() -> Spec {
    Spec {
        name: "RocksDB",
        persistent: true,
        open: |dir| Ok(Box::new(open(dir, false)?)),
        open_durable: Some(|dir| Ok(Arc::new(open(dir, true)?))),
    }
}

struct Rocks {
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
    fn cai(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        if self.db.get_pinned(key)?.is_some_and(|v| live(&v, now)) {
            return Ok(false);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.durable);
        self.db.put_opt(key, (now + ttl_ms).to_le_bytes(), &wo)?;
        Ok(true)
    }
}

impl Backend for Rocks {
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        self.cai(key, now, ttl_ms)
    }
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        Ok(self.db.get_pinned(key)?.is_some_and(|v| live(&v, now)))
    }
    fn flush(&mut self) -> Res<()> {
        Ok(self.db.flush()?)
    }
}

impl Durable for Rocks {
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        self.cai(key, now, ttl_ms)
    }
}
