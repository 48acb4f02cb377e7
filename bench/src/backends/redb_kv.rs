//! redb: one write transaction per message (get, then insert if absent).

use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Backend, Durable, Res, Spec};

const IDS: TableDefinition<&[u8], u64> = TableDefinition::new("ids");

pub fn spec() -> Spec {
    Spec {
        name: "redb",
        persistent: true,
        open: |dir| Ok(Box::new(open(dir, Durability::None)?)),
        open_durable: Some(|dir| Ok(Arc::new(open(dir, Durability::Immediate)?))),
    }
}

struct Redb {
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
    fn cai(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
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

impl Backend for Redb {
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        self.cai(key, now, ttl_ms)
    }
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(IDS)?;
        Ok(t.get(key)?.is_some_and(|v| v.value() > now))
    }
    fn flush(&mut self) -> Res<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        tx.commit()?;
        Ok(())
    }
}

impl Durable for Redb {
    fn check_and_insert(&self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        self.cai(key, now, ttl_ms)
    }
}
