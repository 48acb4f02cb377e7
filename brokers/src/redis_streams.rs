//! A Redis Streams consumer-group source: `XAUTOCLAIM` first (entries a
//! dead consumer left pending, once idle for `min_idle`), then
//! `XREADGROUP >` for new entries; `XACK` after the batch; the run is over
//! when nothing is new and the group's pending list is empty.

use std::time::Duration;

use redis::Value;

use crate::{Delivery, Source};

type Res<T> = Result<T, crate::BoxError>;

/// One worker's view of a consumer group.
pub struct RedisSource {
    conn: redis::Connection,
    stream: String,
    group: String,
    consumer: String,
    min_idle: Duration,
}

impl RedisSource {
    /// Connects as consumer `consumer` of `group` on `stream`.
    pub fn connect(
        url: &str,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle: Duration,
    ) -> Res<RedisSource> {
        let conn = redis::Client::open(url)?.get_connection()?;
        Ok(RedisSource {
            conn,
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            min_idle,
        })
    }

    /// Parses a list of stream entries (`[entry id, [field, value, ...]]`)
    /// into deliveries; entries deleted meanwhile (nil fields) are skipped.
    pub(crate) fn entries(v: &Value) -> Res<Vec<Delivery<String>>> {
        let Value::Array(list) = v else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(list.len());
        for e in list {
            // [entry id, [field, value, ...]]; a deleted entry's fields are nil.
            let Value::Array(parts) = e else { continue };
            let (Some(Value::BulkString(eid)), Some(Value::Array(fields))) =
                (parts.first(), parts.get(1))
            else {
                continue;
            };
            let mut id = None;
            let mut payload = None;
            for kv in fields.chunks(2) {
                if let [Value::BulkString(k), Value::BulkString(v)] = kv {
                    match &k[..] {
                        b"id" => id = Some(String::from_utf8(v.clone())?),
                        b"p" => payload = Some(v.clone()),
                        _ => {}
                    }
                }
            }
            let (Some(id), Some(payload)) = (id, payload) else {
                return Err("stream entry without id or payload".into());
            };
            out.push(Delivery {
                id,
                payload,
                ack: String::from_utf8(eid.clone())?,
            });
        }
        Ok(out)
    }
}

impl Source for RedisSource {
    type Ack = String;

    fn next_batch(&mut self, max: usize) -> Res<crate::Batch<String>> {
        // Entries a dead consumer (a killed process) left pending.
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.min_idle.as_millis() as u64)
            .arg("0-0")
            .arg("COUNT")
            .arg(max)
            .query(&mut self.conn)?;
        if let Value::Array(parts) = &v {
            if let Some(list) = parts.get(1) {
                let got = Self::entries(list)?;
                if !got.is_empty() {
                    return Ok(Some(got));
                }
            }
        }
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(max)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query(&mut self.conn)?;
        // [[stream, [entries]]] (RESP2) or nil on timeout.
        let got = match &v {
            Value::Array(streams) => match streams.first() {
                Some(Value::Array(s)) => match s.get(1) {
                    Some(list) => Self::entries(list)?,
                    None => Vec::new(),
                },
                _ => Vec::new(),
            },
            Value::Map(m) => match m.first() {
                Some((_, list)) => Self::entries(list)?,
                None => Vec::new(),
            },
            _ => Vec::new(),
        };
        if !got.is_empty() {
            return Ok(Some(got));
        }
        // Nothing new: over once nobody has anything pending.
        let pending: Value = redis::cmd("XPENDING")
            .arg(&self.stream)
            .arg(&self.group)
            .query(&mut self.conn)?;
        let count = match &pending {
            Value::Array(p) => match p.first() {
                Some(Value::Int(n)) => *n,
                _ => return Err(format!("XPENDING answered {pending:?}").into()),
            },
            _ => return Err(format!("XPENDING answered {pending:?}").into()),
        };
        Ok(if count == 0 { None } else { Some(Vec::new()) })
    }

    fn ack(&mut self, acks: &[&String]) -> Res<()> {
        if acks.is_empty() {
            return Ok(());
        }
        let mut c = redis::cmd("XACK");
        c.arg(&self.stream).arg(&self.group);
        for a in acks {
            c.arg(a.as_str());
        }
        let _: i64 = c.query(&mut self.conn)?;
        Ok(())
    }
}

/// Adds `ids` to `stream` (fields `id` and `p`) and creates `group` reading
/// it from the start.
pub fn produce(url: &str, stream: &str, group: &str, ids: &[String]) -> Res<()> {
    let mut conn = redis::Client::open(url)?.get_connection()?;
    append(&mut conn, ids, |_| stream.to_string())?;
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .query::<()>(&mut conn)?;
    Ok(())
}

/// Appends `ids` in order, each to the stream `stream_of(id)` (fields `id`
/// and `p`, the payload [`crate::payload_of`]), pipelined.
pub(crate) fn append(
    conn: &mut redis::Connection,
    ids: &[String],
    stream_of: impl Fn(&str) -> String,
) -> Res<()> {
    for chunk in ids.chunks(1000) {
        let mut pipe = redis::pipe();
        for id in chunk {
            pipe.cmd("XADD")
                .arg(stream_of(id))
                .arg("*")
                .arg("id")
                .arg(id)
                .arg("p")
                .arg(crate::payload_of(id))
                .ignore();
        }
        pipe.query::<()>(conn)?;
    }
    Ok(())
}
