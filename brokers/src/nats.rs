//! A minimal synchronous NATS client: the five protocol verbs a JetStream
//! pull consumer needs (CONNECT, SUB, PUB, MSG/HMSG, PING/PONG), and the
//! JetStream API requests made over them (stream and consumer creation,
//! `MSG.NEXT` pulls, acks, consumer info).
//!
//! Why not a client crate: the maintained one (`async-nats`) brings a tokio
//! runtime and a TLS stack, minutes of build on the project's 2-core
//! machines for a test that uses a plaintext loopback connection; the sync
//! `nats` crate is deprecated. The protocol is line-based text and small.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// A message delivered on a subscription.
#[derive(Debug)]
pub struct Message {
    /// The subscription id it came on.
    pub sid: u64,
    /// Where to reply (for JetStream: the ack subject).
    pub reply: Option<String>,
    /// The status line of a header message (`"408 Request Timeout"`), if any.
    pub status: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// One connection to a NATS server.
pub struct Conn {
    rd: BufReader<TcpStream>,
    wr: io::BufWriter<TcpStream>,
    next_sid: u64,
    inbox: String,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

impl Conn {
    /// Connects and waits for the server to confirm (PING/PONG).
    pub fn connect(addr: &str, name: &str) -> io::Result<Conn> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut c = Conn {
            rd: BufReader::new(s.try_clone()?),
            wr: io::BufWriter::new(s),
            next_sid: 1,
            inbox: format!("_INBOX.{name}.{}", std::process::id()),
        };
        let mut info = String::new();
        c.rd.read_line(&mut info)?;
        if !info.starts_with("INFO ") {
            return Err(bad(format!("expected INFO, got {info:?}")));
        }
        write!(
            c.wr,
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"name\":\"{name}\"}}\r\nPING\r\n"
        )?;
        c.wr.flush()?;
        loop {
            match c.read()? {
                Read_::Pong => return Ok(c),
                Read_::Msg(_) => {}
            }
        }
    }

    /// Subscribes to `subject`; returns the subscription id.
    pub fn sub(&mut self, subject: &str) -> io::Result<u64> {
        let sid = self.next_sid;
        self.next_sid += 1;
        write!(self.wr, "SUB {subject} {sid}\r\n")?;
        Ok(sid)
    }

    /// Queues a publish (sent on the next `flush`, or when the buffer fills).
    pub fn publish(
        &mut self,
        subject: &str,
        reply: Option<&str>,
        payload: &[u8],
    ) -> io::Result<()> {
        match reply {
            Some(r) => write!(self.wr, "PUB {subject} {r} {}\r\n", payload.len())?,
            None => write!(self.wr, "PUB {subject} {}\r\n", payload.len())?,
        }
        self.wr.write_all(payload)?;
        self.wr.write_all(b"\r\n")
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        self.wr.flush()
    }

    /// The next message on any subscription (answers server PINGs).
    pub fn next_msg(&mut self) -> io::Result<Message> {
        loop {
            if let Read_::Msg(m) = self.read()? {
                return Ok(m);
            }
        }
    }

    /// A request with a fresh reply subject; returns the reply's JSON.
    pub fn request(&mut self, subject: &str, payload: &[u8]) -> io::Result<Value> {
        let reply = format!("{}.req.{}", self.inbox, self.next_sid);
        let sid = self.sub(&reply)?;
        self.publish(subject, Some(&reply), payload)?;
        write!(self.wr, "UNSUB {sid} 1\r\n")?;
        self.flush()?;
        loop {
            let m = self.next_msg()?;
            if m.sid != sid {
                continue;
            }
            if let Some(st) = m.status {
                return Err(bad(format!("{subject}: status {st}")));
            }
            let v: Value = serde_json::from_slice(&m.payload)
                .map_err(|e| bad(format!("{subject}: bad JSON reply: {e}")))?;
            if let Some(err) = v.get("error") {
                return Err(bad(format!("{subject}: {err}")));
            }
            return Ok(v);
        }
    }

    /// This connection's inbox prefix (unique per process and name).
    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    fn read(&mut self) -> io::Result<Read_> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.rd.read_line(&mut line)? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            let mut f = l.split(' ');
            match f.next() {
                Some("PING") => {
                    self.wr.write_all(b"PONG\r\n")?;
                    self.wr.flush()?;
                }
                Some("PONG") => return Ok(Read_::Pong),
                Some("+OK") | Some("INFO") => {}
                Some("-ERR") => return Err(bad(format!("server: {l}"))),
                Some(verb @ ("MSG" | "HMSG")) => {
                    let parts: Vec<&str> = f.collect();
                    let nums = if verb == "MSG" { 1 } else { 2 };
                    if parts.len() < 2 + nums {
                        return Err(bad(format!("short {verb} line {l:?}")));
                    }
                    let num = |s: &str| s.parse::<usize>().map_err(|_| bad(format!("{l:?}")));
                    let total = num(parts[parts.len() - 1])?;
                    let hdr = if nums == 2 {
                        num(parts[parts.len() - 2])?
                    } else {
                        0
                    };
                    let reply = (parts.len() == 3 + nums).then(|| parts[2].to_string());
                    let sid = parts[1]
                        .parse()
                        .map_err(|_| bad(format!("bad sid in {l:?}")))?;
                    let mut buf = vec![0; total + 2];
                    self.rd.read_exact(&mut buf)?;
                    buf.truncate(total);
                    let payload = buf.split_off(hdr.min(total));
                    // "NATS/1.0 408 Request Timeout\r\n..." or "NATS/1.0\r\n..."
                    let status = (hdr > 0)
                        .then(|| {
                            let first = String::from_utf8_lossy(&buf);
                            let first = first.lines().next().unwrap_or("").to_string();
                            first
                                .strip_prefix("NATS/1.0")
                                .map(|s| s.trim().to_string())
                                .filter(|s| !s.is_empty())
                        })
                        .flatten();
                    return Ok(Read_::Msg(Message {
                        sid,
                        reply,
                        status,
                        payload,
                    }));
                }
                _ => return Err(bad(format!("unexpected line {l:?}"))),
            }
        }
    }
}

enum Read_ {
    Pong,
    Msg(Message),
}

/// Creates a file-backed stream capturing `subject`.
pub fn create_stream(c: &mut Conn, stream: &str, subject: &str) -> io::Result<()> {
    let body = serde_json::json!({
        "name": stream, "subjects": [subject], "storage": "file", "retention": "limits",
    });
    c.request(
        &format!("$JS.API.STREAM.CREATE.{stream}"),
        body.to_string().as_bytes(),
    )?;
    Ok(())
}

/// Creates a durable pull consumer with explicit acks and `ack_wait`.
pub fn create_consumer(
    c: &mut Conn,
    stream: &str,
    name: &str,
    ack_wait: Duration,
) -> io::Result<()> {
    let body = serde_json::json!({
        "stream_name": stream,
        "config": {
            "durable_name": name, "ack_policy": "explicit", "deliver_policy": "all",
            "ack_wait": ack_wait.as_nanos() as u64, "max_deliver": -1, "max_ack_pending": 100_000,
        },
    });
    c.request(
        &format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}"),
        body.to_string().as_bytes(),
    )?;
    Ok(())
}

/// Publishes every payload to `subject` and waits for every JetStream ack.
pub fn publish_all(c: &mut Conn, subject: &str, payloads: &[Vec<u8>]) -> io::Result<()> {
    let reply = format!("{}.pub", c.inbox());
    let sid = c.sub(&format!("{reply}.*"))?;
    for chunk in payloads.chunks(1000) {
        for (i, p) in chunk.iter().enumerate() {
            c.publish(subject, Some(&format!("{reply}.{i}")), p)?;
        }
        c.flush()?;
        let mut acked = 0;
        while acked < chunk.len() {
            let m = c.next_msg()?;
            if m.sid != sid {
                continue;
            }
            let v: Value =
                serde_json::from_slice(&m.payload).map_err(|e| bad(format!("publish ack: {e}")))?;
            if v.get("error").is_some() || m.status.is_some() {
                return Err(bad(format!("publish failed: {v} {:?}", m.status)));
            }
            acked += 1;
        }
    }
    Ok(())
}

/// A worker's pull subscription on a durable consumer.
pub struct Puller {
    conn: Conn,
    stream: String,
    consumer: String,
    reply: String,
    sid: u64,
}

impl Puller {
    /// Connects a puller for `stream` / `consumer`.
    pub fn new(addr: &str, name: &str, stream: &str, consumer: &str) -> io::Result<Puller> {
        let mut conn = Conn::connect(addr, name)?;
        let reply = format!("{}.pull", conn.inbox());
        let sid = conn.sub(&reply)?;
        conn.flush()?;
        Ok(Puller {
            conn,
            stream: stream.into(),
            consumer: consumer.into(),
            reply,
            sid,
        })
    }

    /// Pulls up to `max` messages, waiting at most `wait` for them.
    /// Returns `(payload, ack subject)` pairs.
    pub fn fetch(&mut self, max: usize, wait: Duration) -> io::Result<Vec<(Vec<u8>, String)>> {
        let req = serde_json::json!({ "batch": max, "expires": wait.as_nanos() as u64 });
        let subj = format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            self.stream, self.consumer
        );
        self.conn
            .publish(&subj, Some(&self.reply), req.to_string().as_bytes())?;
        self.conn.flush()?;
        let mut out = Vec::new();
        while out.len() < max {
            let m = self.conn.next_msg()?;
            if m.sid != self.sid {
                continue;
            }
            match (m.status, m.reply) {
                // 404 no messages, 408 request expired, 409 e.g. leadership:
                // this pull is over.
                (Some(_), _) => break,
                (None, Some(ack)) => out.push((m.payload, ack)),
                (None, None) => return Err(bad("pulled message without ack subject")),
            }
        }
        Ok(out)
    }

    /// Acks the messages (explicit ack: an empty message to the ack subject).
    pub fn ack(&mut self, subjects: &[&str]) -> io::Result<()> {
        for s in subjects {
            self.conn.publish(s, None, b"")?;
        }
        self.conn.flush()
    }

    /// Messages not yet delivered plus delivered but not acked.
    pub fn outstanding(&mut self) -> io::Result<u64> {
        let v = self.conn.request(
            &format!("$JS.API.CONSUMER.INFO.{}.{}", self.stream, self.consumer),
            b"",
        )?;
        let n = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok(n("num_pending") + n("num_ack_pending"))
    }
}

impl crate::Source for Puller {
    type Ack = String;

    fn next_batch(&mut self, max: usize) -> Result<crate::Batch<String>, crate::BoxError> {
        let got = self.fetch(max, Duration::from_millis(200))?;
        if got.is_empty() {
            // Nothing now: over once nothing is undelivered or unacked (a
            // killed consumer's unacked messages come back after AckWait).
            return Ok(if self.outstanding()? == 0 {
                None
            } else {
                Some(Vec::new())
            });
        }
        got.into_iter()
            .map(|(payload, ack)| {
                let id = payload
                    .split(|&b| b == b' ')
                    .next()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .ok_or("empty payload")?;
                Ok(crate::Delivery { id, payload, ack })
            })
            .collect::<Result<Vec<_>, crate::BoxError>>()
            .map(Some)
    }

    fn ack(&mut self, acks: &[&String]) -> Result<(), crate::BoxError> {
        let subjects: Vec<&str> = acks.iter().map(|s| s.as_str()).collect();
        Ok(Puller::ack(self, &subjects)?)
    }
}
