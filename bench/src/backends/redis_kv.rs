//! Redis `SET key 1 NX PX ttl` over loopback (feature `redis`). Needs a
//! running server: `redis-server --port 6379 --save '' --appendonly no`;
//! `REDIS_URL` overrides `redis://127.0.0.1:6379/15` (database 15 is flushed).
//! Batched: one pipeline per batch (one round trip), `SET NX PX` per key;
//! lookups a pipeline of `EXISTS`.

use super::{Backend, Plan, Res, Shared};

pub fn plan() -> Plan<Redis, NotShared, NotShared> {
    Plan {
        persistent: false,
        open: |_| {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into());
            let mut con = redis::Client::open(url)?.get_connection()?;
            redis::cmd("FLUSHDB").query::<()>(&mut con)?;
            Ok(Redis(con))
        },
        threaded: None,
        durable: None,
    }
}

pub struct Redis(redis::Connection);

/// Redis runs in neither threaded phase (one connection, not `Sync`).
pub struct NotShared;

impl Shared for NotShared {
    #[inline]
    fn check_and_insert(&self, _: &[u8], _: u64, _: u64) -> Res<bool> {
        Err("redis: no threaded mode".into())
    }
}

impl Backend for Redis {
    #[inline]
    fn check_and_insert(&mut self, key: &[u8], _now: u64, ttl_ms: u64) -> Res<bool> {
        let r: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query(&mut self.0)?;
        Ok(r.is_some())
    }
    #[inline]
    fn contains(&mut self, key: &[u8], _now: u64) -> Res<bool> {
        let n: i64 = redis::cmd("EXISTS").arg(key).query(&mut self.0)?;
        Ok(n == 1)
    }
    #[inline]
    fn check_and_insert_batch(&mut self, keys: &[&[u8]], _now: u64, ttl_ms: u64) -> Res<Vec<bool>> {
        let mut p = redis::pipe();
        for &key in keys {
            p.cmd("SET").arg(key).arg(1).arg("NX").arg("PX").arg(ttl_ms);
        }
        let r: Vec<Option<String>> = p.query(&mut self.0)?;
        Ok(r.into_iter().map(|r| r.is_some()).collect())
    }
    #[inline]
    fn contains_batch(&mut self, keys: &[&[u8]], _now: u64) -> Res<Vec<bool>> {
        let mut p = redis::pipe();
        for &key in keys {
            p.cmd("EXISTS").arg(key);
        }
        let r: Vec<i64> = p.query(&mut self.0)?;
        Ok(r.into_iter().map(|n| n == 1).collect())
    }
    #[inline]
    fn flush(&mut self) -> Res<()> {
        Ok(())
    }
}
