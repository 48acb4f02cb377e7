//! LMDB via heed: one write transaction per message, `NO_OVERWRITE` put;
//! batched: one write transaction per batch, one read transaction per
//! batch of lookups.

use std::path::Path;

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions, MdbError, PutFlags, RwTxn};

use super::{live, Backend, Plan, Res, Shared};

pub fn plan() -> Plan<Lmdb, Lmdb, Lmdb> {
    Plan {
        persistent: true,
        open: |dir| open(dir, false),
        threaded: None,
        durable: Some(|dir| open(dir, true)),
    }
}

pub struct Lmdb {
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
    /// Check-and-insert of one key inside the write transaction `w`.
    fn cai_in(&self, w: &mut RwTxn, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        let exp = (now + ttl_ms).to_le_bytes();
        match self.db.put_with_flags(w, PutFlags::NO_OVERWRITE, key, &exp) {
            Ok(()) => Ok(true),
            Err(heed::Error::Mdb(MdbError::KeyExist)) => {
                if self.db.get(w, key)?.is_some_and(|v| live(v, now)) {
                    Ok(false)
                } else {
                    self.db.put(w, key, &exp)?;
                    Ok(true)
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Backend for Lmdb {
    #[inline]
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        Shared::check_and_insert(self, key, now, ttl_ms)
    }
    #[inline]
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        let r = self.env.read_txn()?;
        Ok(self.db.get(&r, key)?.is_some_and(|v| live(v, now)))
    }
    #[inline]
    fn check_and_insert_batch(&mut self, keys: &[&[u8]], now: u64, ttl_ms: u64) -> Res<Vec<bool>> {
        let mut w = self.env.write_txn()?;
        let new = keys
            .iter()
            .map(|&key| self.cai_in(&mut w, key, now, ttl_ms))
            .collect::<Res<Vec<bool>>>()?;
        w.commit()?;
        Ok(new)
    }
    #[inline]
    fn contains_batch(&mut self, keys: &[&[u8]], now: u64) -> Res<Vec<bool>> {
        let r = self.env.read_txn()?;
        keys.iter()
            .map(|&key| Ok(self.db.get(&r, key)?.is_some_and(|v| live(v, now))))
            .collect()
    }
    #[inline]
    fn flush(&mut self) -> Res<()> {
        Ok(self.env.force_sync()?)
    }
}

impl Shared for Lmdb {
    #[inline]
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        let mut w = self.env.write_txn()?;
        if self.cai_in(&mut w, key, now, ttl_ms)? {
            w.commit()?;
            Ok(true)
        } else {
            w.abort();
            Ok(false)
        }
    }
}
