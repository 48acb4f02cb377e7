//! redb: one write transaction per message (get, then insert if absent);
//! batched: one write transaction per batch, one read transaction per
//! batch of lookups.

use std::path::Path;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Backend, Plan, Res, Shared};

const IDS: TableDefinition<&[u8], u64> = TableDefinition::new("ids");

pub fn plan() -> Plan<Redb, Redb, Redb> {
    Plan {
        persistent: true,
        open: |dir| open(dir, Durability::None),
        threaded: None,
        durable: Some(|dir| open(dir, Durability::Immediate)),
    }
}

pub struct Redb {
    db: Database,
    durability: Durability,
}

fn open(dir: &Path, durability: Durability) -> Res<Redb> {
    let db = Database::create(dir.join("ids.redb"))?;
    let tx = db.begin_write()?;
    tx.open_table(IDS)?;
    tx.commit()?;
    Ok(Redb { db, durability })
}

impl Redb {
    /// Check-and-insert of every key in one write transaction.
    fn cai(&self, keys: &[&[u8]], now: u64, ttl_ms: u64) -> Res<Vec<bool>> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(self.durability)?;
        let new = {
            let mut t = tx.open_table(IDS)?;
            keys.iter()
                .map(|&key| {
                    let live = t.get(key)?.is_some_and(|v| v.value() > now);
                    if !live {
                        t.insert(key, now + ttl_ms)?;
                    }
                    Ok(!live)
                })
                .collect::<Res<Vec<bool>>>()?
        };
        tx.commit()?;
        Ok(new)
    }
}

impl Backend for Redb {
    #[inline]
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        Shared::check_and_insert(self, key, now, ttl_ms)
    }
    #[inline]
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(IDS)?;
        Ok(t.get(key)?.is_some_and(|v| v.value() > now))
    }
    #[inline]
    fn check_and_insert_batch(&mut self, keys: &[&[u8]], now: u64, ttl_ms: u64) -> Res<Vec<bool>> {
        self.cai(keys, now, ttl_ms)
    }
    #[inline]
    fn contains_batch(&mut self, keys: &[&[u8]], now: u64) -> Res<Vec<bool>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(IDS)?;
        keys.iter()
            .map(|&key| Ok(t.get(key)?.is_some_and(|v| v.value() > now)))
            .collect()
    }
    #[inline]
    fn flush(&mut self) -> Res<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }
}

impl Shared for Redb {
    #[inline]
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(self.durability)?;
        let new = {
            let mut t = tx.open_table(IDS)?;
            let live = t.get(key)?.is_some_and(|v| v.value() > now);
            if !live {
                t.insert(key, now + ttl_ms)?;
            }
            !live
        };
        tx.commit()?;
        Ok(new)
    }
}
