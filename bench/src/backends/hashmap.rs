//! The ceiling: an in-memory hashbrown map, no persistence.

use hashbrown::HashMap;

use super::{Backend, Res, Spec};

pub fn spec() -> Spec {
    Spec {
        name: "hashbrown (RAM only)",
        persistent: false,
        open: |_| Ok(Box::new(Map::default())),
        open_durable: None,
    }
}

#[derive(Default)]
struct Map(HashMap<Vec<u8>, u64>);

impl Backend for Map {
    fn check_and_insert(&mut self, key: &[u8], now: u64, ttl_ms: u64) -> Res<bool> {
        let exp = self.0.entry_ref(key).or_insert(0);
        if *exp > now {
            return Ok(false);
        }
        *exp = now + ttl_ms;
        Ok(true)
    }
    fn contains(&mut self, key: &[u8], now: u64) -> Res<bool> {
        Ok(self.0.get(key).is_some_and(|&e| e > now))
    }
    fn flush(&mut self) -> Res<()> {
        Ok(())
    }
}
