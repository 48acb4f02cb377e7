use std::sync::Arc;
use std::time::Duration;

use dedupstore::{Config, Durability, Store};

use super::{Backend, Durable, Res, Spec};

pub fn spec() -> Spec {
    Spec {
        name: "dedupstore",
        persistent: true,
        open: |dir| {
            Ok(Box::new(Dedup(Store::open(
                dir,
                Config::default().durability(Durability::None),
            )?)))
        },
        open_durable: Some(|dir| {
            Ok(Arc::new(Dedup(Store::open(
                dir,
                Config::default().durability(Durability::Immediate),
            )?)))
        }),
    }
}

struct Dedup(Store);

impl Backend for Dedup {
    fn check_and_insert(&mut self, key: &[u8], _now: u64, ttl_ms: u64) -> Res<bool> {
        Ok(self
            .0
            .check_and_insert(key, Duration::from_millis(ttl_ms))?
            .is_inserted())
    }
    fn contains(&mut self, key: &[u8], _now: u64) -> Res<bool> {
        Ok(self.0.contains(key)?)
    }
    fn flush(&mut self) -> Res<()> {
        Ok(self.0.sync()?)
    }
}

impl Durable for Dedup {
    fn check_and_insert(&self, key: &[u8], _now: u64, ttl_ms: u64) -> Res<bool> {
        Ok(self
            .0
            .check_and_insert(key, Duration::from_millis(ttl_ms))?
            .is_inserted())
    }
}
