//! The consumer process the broker kill tests spawn (and SIGKILL):
//!
//! `broker-consumer <redis|nats> <addr> <stream> <work-dir> <dedup|no-dedup|claim|insert|insert-batch> <workers> <batch>`
//!
//! Consumes until every message is acked, then prints one line
//! `DONE received=.. effects=.. duplicates=.. batches=.. syncs=.. micros=..`.
//! The ledger is `<work-dir>/ledger`, the store `<work-dir>/store`.

use std::path::Path;
use std::time::Duration;

use dedupstore_brokers::nats::Puller;
use dedupstore_brokers::redis_streams::RedisSource;

/// How long a pending Redis entry must sit idle before another consumer
/// takes it (XAUTOCLAIM): the consumers that leave entries pending are
/// killed processes.
const MIN_IDLE: Duration = Duration::from_millis(500);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().collect();
    if a.len() != 8 {
        return Err("usage: broker-consumer <redis|nats> <addr> <stream> <work-dir> <dedup|no-dedup|claim|insert|insert-batch> <workers> <batch>".into());
    }
    let (broker, addr, stream, work) = (&a[1], &a[2], &a[3], Path::new(&a[4]));
    let mode: dedupstore_brokers::Mode = a[5].parse()?;
    let workers: usize = a[6].parse()?;
    let batch: usize = a[7].parse()?;
    let pid = std::process::id();
    let (t, took, syncs) = match broker.as_str() {
        "redis" => {
            let url = format!("redis://{addr}/");
            dedupstore_brokers::run(work, mode, workers, batch, |w| {
                RedisSource::connect(&url, stream, "g", &format!("c-{pid}-{w}"), MIN_IDLE)
            })?
        }
        "nats" => dedupstore_brokers::run(work, mode, workers, batch, |w| {
            Puller::new(addr, &format!("w{w}"), stream, "c")
        })?,
        other => return Err(format!("broker {other:?}: redis or nats").into()),
    };
    println!(
        "DONE received={} effects={} duplicates={} batches={} syncs={} micros={}",
        t.received,
        t.effects,
        t.duplicates,
        t.batches,
        syncs,
        took.as_micros()
    );
    Ok(())
}
