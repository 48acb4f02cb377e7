//! Redis `SET key 1 NX PX ttl` over loopback (feature `redis`). Needs a
//! running server: `redis-server --port 6379 --save '' --appendonly no`;
//! `REDIS_URL` overrides `redis://127.0.0.1:6379/15` (database 15 is flushed).

use std::cell::RefCell;

use super::{Backend, Res, Spec};

pub fn spec() -> Spec {
    Spec {
        name: "Redis SET NX PX",
        persistent: false,
        open: |_| {
            let url =
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".into());
            let mut con = redis::Client::open(url)?.get_connection()?;
            redis::cmd("FLUSHDB").query::<()>(&mut con)?;
            Ok(Box::new(Redis(RefCell::new(con))))
        },
        open_durable: None,
    }
}

struct Redis(RefCell<redis::Connection>);

impl Backend for Redis {
    fn check_and_insert(&mut self, key: &[u8], _now: u64, ttl_ms: u64) -> Res<bool> {
        let r: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query(&mut *self.0.borrow_mut())?;
        Ok(r.is_some())
    }
    fn contains(&mut self, key: &[u8], _now: u64) -> Res<bool> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(key)
            .query(&mut *self.0.borrow_mut())?;
        Ok(n == 1)
    }
    fn flush(&mut self) -> Res<()> {
        Ok(())
    }
}
