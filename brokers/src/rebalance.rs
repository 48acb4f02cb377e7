//! Partitions that move between consumers: a topic of `n` Redis streams
//! (`<topic>:p0` .. `<topic>:p<n-1>`, one consumer group), the stream
//! commands a partition consumer needs (take over the pending entries of
//! the previous owner, read new entries, ack), and the transfer of one
//! partition's dedup state through an object store ([`transfer`]).
//!
//! The consumer process is `partition-consumer` (src/bin/partition_consumer.rs);
//! the orchestrator that moves partitions between two of them is
//! tests/rebalance.rs.

use redis::Value;

use crate::redis_streams::RedisSource;
use crate::{BoxError, Delivery};

type Res<T> = Result<T, BoxError>;

/// The stream of partition `p` of `topic`.
pub fn stream_of(topic: &str, p: u32) -> String {
    format!("{topic}:p{p}")
}

/// The partition of message `id` among `partitions`: a hash of the ID, so
/// that a producer's duplicate of a message lands in the same partition
/// (as with a keyed Kafka producer).
pub fn partition_of(id: &str, partitions: u32) -> u32 {
    let h = dedupstore::fingerprint(id.as_bytes());
    // The remainder is below `partitions`, a u32.
    u32::try_from(h % u64::from(partitions)).unwrap_or(0)
}

/// Creates the `partitions` streams of `topic` with `group` reading each
/// from the start, then appends `ids` in order, each to its partition
/// (fields `id` and `p`, as [`crate::redis_streams::produce`] writes them).
pub fn produce(url: &str, topic: &str, group: &str, partitions: u32, ids: &[String]) -> Res<()> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    for p in 0..partitions {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream_of(topic, p))
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query::<()>(&mut conn)?;
    }
    crate::redis_streams::append(&mut conn, ids, |id| {
        stream_of(topic, partition_of(id, partitions))
    })?;
    Ok(())
}

/// Takes over every entry of `stream` pending in `group` (delivered to any
/// consumer, this one included, and not acked), whatever its idle time:
/// called when a partition is assigned, after its previous owner has
/// stopped (revoked) or died, so nobody else is working on them.
/// `XAUTOCLAIM` with min-idle 0, cursor followed to the end.
pub fn take_over(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
    consumer: &str,
) -> Res<Vec<Delivery<String>>> {
    let mut out = Vec::new();
    let mut cursor = "0-0".to_string();
    loop {
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(500)
            .query(conn)?;
        // [next cursor, [entries], [deleted ids]]
        let Value::Array(parts) = &v else {
            return Err(format!("XAUTOCLAIM answered {v:?}").into());
        };
        let (Some(Value::BulkString(next)), Some(list)) = (parts.first(), parts.get(1)) else {
            return Err(format!("XAUTOCLAIM answered {v:?}").into());
        };
        out.extend(RedisSource::entries(list)?);
        cursor = String::from_utf8(next.clone())?;
        if cursor == "0-0" {
            return Ok(out);
        }
    }
}

/// Up to `max` entries of `stream` never delivered to `group` before
/// (`XREADGROUP ... >`, not blocking).
pub fn read_new(
    conn: &mut redis::Connection,
    stream: &str,
    group: &str,
    consumer: &str,
    max: usize,
) -> Res<Vec<Delivery<String>>> {
    let v: Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(max)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(conn)?;
    // [[stream, [entries]]], or nil when nothing is new.
    match &v {
        Value::Array(streams) => match streams.first() {
            Some(Value::Array(s)) => match s.get(1) {
                Some(list) => RedisSource::entries(list),
                None => Ok(Vec::new()),
            },
            _ => Ok(Vec::new()),
        },
        Value::Nil => Ok(Vec::new()),
        other => Err(format!("XREADGROUP answered {other:?}").into()),
    }
}

/// Acks these entries of `stream` in `group`.
pub fn ack(conn: &mut redis::Connection, stream: &str, group: &str, ids: &[String]) -> Res<()> {
    if ids.is_empty() {
        return Ok(());
    }
    let mut c = redis::cmd("XACK");
    c.arg(stream).arg(group);
    for id in ids {
        c.arg(id);
    }
    let _: i64 = c.query(conn)?;
    Ok(())
}

/// Whether `group` is done with `stream`: every entry delivered (`lag` 0)
/// and acked (`pending` 0), from `XINFO GROUPS` (Redis 7).
pub fn drained(conn: &mut redis::Connection, stream: &str, group: &str) -> Res<bool> {
    let v: Value = redis::cmd("XINFO").arg("GROUPS").arg(stream).query(conn)?;
    let Value::Array(groups) = &v else {
        return Err(format!("XINFO GROUPS answered {v:?}").into());
    };
    for g in groups {
        let fields: Vec<(&[u8], &Value)> = match g {
            Value::Array(kv) => kv
                .chunks(2)
                .filter_map(|c| match c {
                    [Value::BulkString(k), v] => Some((&k[..], v)),
                    _ => None,
                })
                .collect(),
            Value::Map(m) => m
                .iter()
                .filter_map(|(k, v)| match k {
                    Value::BulkString(k) => Some((&k[..], v)),
                    _ => None,
                })
                .collect(),
            _ => continue,
        };
        let get = |name: &[u8]| fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        if get(b"name") != Some(&Value::BulkString(group.as_bytes().to_vec())) {
            continue;
        }
        // An unknown lag (nil) is not "done".
        return Ok(get(b"pending") == Some(&Value::Int(0)) && get(b"lag") == Some(&Value::Int(0)));
    }
    Err(format!("no group {group} on {stream}").into())
}
