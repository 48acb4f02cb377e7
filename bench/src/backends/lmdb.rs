//! LMDB via heed: one write transaction per message, `NO_OVERWRITE` put.

use std::path::Path;
use std::sync::Arc;

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, PutFlags};

use super::{live, Backend, Durable, Res, Spec};

pub fn spec() -> Spec {
    Spec {
        name: "LMDB (heed)",
        persistent: true,
        open: |dir| Ok(Box::new(open(dir, false)?)),
        open_durable: Some(|dir| Ok(Arc::new(open(dir, true)?))),
    }
}

struct Lmdb {
    env: Env,
    db: Database<Bytes, Bytes>,
}

fn open(dir: &Path, durable: bool) -> Res<Lmdb> {
    let mut opts = EnvOpenOptions::new();
    opts.map_size(64 << 30).max_dbs(1);
    if !durable {
        // SAFETY: NO_SYNC only weakens durability, which this run does not need.
        unsafe { opts.flags(EnvFlags::NO_SYNC) };
    }
    // SAFETY: the directory is private to this run and opened once.
    let env = unsafe { opts.open(dir)? };
    let mut w = env.write_txn()?;
    let db = env.create_database(&mut w, Some("ids"))?;
    w.commit()?;
    Ok(Lmdb { env, db })
}

impl Lmdb {
    fn cai(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        let mut w = self.env.write_txn()?;
        let exp = (now + ttl_ms).to_le_bytes();
        match self
            .db
            .put_with_flags(&mut w, PutFlags::NO_OVERWRITE, key, &exp)
        {
            Ok(()) => {
                w.commit()?;
                Ok(true)
            }
            Err(heed::Error::Mdb(MdbError::KeyExist)) => {
                if self.db.get(&w, key)?.is_some_and(|v| live(v, now)) {
                    w.abort();
                    Ok(false)
                } else {
                    self.db.put(&mut w, key, &exp)?;
                    w.commit()?;
                    Ok(true)
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Backend for Lmdb {
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        self.cai(key, now, ttl_ms)
    }
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        let r = self.env.read_txn()?;
        Ok(self.db.get(&r, key)?.is_some_and(|v| live(v, now)))
    }
    fn flush(&mut self) -> Res<()> {
        Ok(self.env.force_sync()?)
    }
}

impl Durable for Lmdb {
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        self.cai(key, now, ttl_ms)
    }
}
