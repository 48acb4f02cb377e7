//! The NATS JetStream side, through the `async-nats` client: stream and
//! durable pull consumer creation, publishing with JetStream acks, and a
//! worker's [`Puller`] (pull with `expires`, explicit acks, AckWait
//! redelivery by the server).
//!
//! The consumer's workers are synchronous threads; each [`Puller`] (and
//! [`Admin`]) owns a current-thread tokio runtime and `block_on`s every
//! client call. The client's connection task runs only inside those calls,
//! so every call that sends something ends with a flush.

use std::time::Duration;

use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use async_nats::jetstream::{self, consumer::pull, consumer::AckPolicy, consumer::DeliverPolicy};
use futures_util::StreamExt;
use tokio::runtime::Runtime;

use crate::BoxError;

/// A current-thread runtime with the I/O and timer drivers the client needs.
fn runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// Connects a client named `name` (no retry: a server not up yet is an error).
async fn connect(addr: &str, name: &str) -> Result<async_nats::Client, BoxError> {
    Ok(async_nats::ConnectOptions::new()
        .name(name)
        .connect(addr)
        .await?)
}

/// A connection for setting up streams and consumers and producing.
pub struct Admin {
    rt: Runtime,
    js: jetstream::Context,
}

impl Admin {
    /// Connects to the server at `addr` (`host:port`).
    pub fn connect(addr: &str, name: &str) -> Result<Admin, BoxError> {
        let rt = runtime()?;
        // The JetStream context spawns a task: make it inside the runtime.
        let js =
            rt.block_on(async { Ok::<_, BoxError>(jetstream::new(connect(addr, name).await?)) })?;
        Ok(Admin { rt, js })
    }

    /// Whether JetStream answers its account info request (`$JS.API.INFO`).
    /// The reply is read as plain JSON: the typed `query_account` expects
    /// fields that Debian's nats-server 2.9 does not send.
    pub fn jetstream_ready(&self) -> Result<(), BoxError> {
        let reply: Response<serde_json::Value> = self
            .rt
            .block_on(self.js.request("INFO", &serde_json::json!({})))?;
        match reply {
            Response::Ok(_) => Ok(()),
            Response::Err { error } => Err(format!("JetStream INFO: {error}").into()),
        }
    }

    /// Creates a file-backed stream capturing `subject`.
    pub fn create_stream(&self, stream: &str, subject: &str) -> Result<(), BoxError> {
        let config = jetstream::stream::Config {
            name: stream.into(),
            subjects: vec![subject.into()],
            storage: StorageType::File,
            retention: RetentionPolicy::Limits,
            ..Default::default()
        };
        self.rt.block_on(self.js.create_stream(config))?;
        Ok(())
    }

    /// Creates a durable pull consumer with explicit acks and `ack_wait`,
    /// unlimited redeliveries.
    pub fn create_consumer(
        &self,
        stream: &str,
        name: &str,
        ack_wait: Duration,
    ) -> Result<(), BoxError> {
        let config = pull::Config {
            durable_name: Some(name.into()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: 100_000,
            ..Default::default()
        };
        self.rt
            .block_on(self.js.create_consumer_on_stream(config, stream))?;
        Ok(())
    }

    /// Publishes every payload to `subject` and waits for every JetStream
    /// ack (1000 publishes in flight at most).
    pub fn publish_all(&self, subject: &str, payloads: &[Vec<u8>]) -> Result<(), BoxError> {
        self.rt.block_on(async {
            for chunk in payloads.chunks(1000) {
                let mut acks = Vec::with_capacity(chunk.len());
                for p in chunk {
                    acks.push(
                        self.js
                            .publish(subject.to_string(), p.clone().into())
                            .await?,
                    );
                }
                for a in acks {
                    a.await?;
                }
            }
            Ok(())
        })
    }
}

/// A worker's pull consumer: its own connection and runtime.
pub struct Puller {
    rt: Runtime,
    client: async_nats::Client,
    consumer: jetstream::consumer::Consumer<pull::Config>,
}

impl Puller {
    /// Connects a puller (client name `name`) to the durable `consumer` of
    /// `stream`.
    pub fn new(addr: &str, name: &str, stream: &str, consumer: &str) -> Result<Puller, BoxError> {
        let rt = runtime()?;
        let (client, consumer) = rt.block_on(async {
            let client = connect(addr, name).await?;
            let consumer = jetstream::new(client.clone())
                .get_consumer_from_stream(consumer, stream)
                .await?;
            Ok::<_, BoxError>((client, consumer))
        })?;
        Ok(Puller {
            rt,
            client,
            consumer,
        })
    }

    /// Pulls up to `max` messages, waiting at most `wait` for them.
    pub fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<jetstream::Message>, BoxError> {
        self.rt.block_on(async {
            let mut batch = self
                .consumer
                .batch()
                .max_messages(max)
                .expires(wait)
                .messages()
                .await?;
            let mut out = Vec::new();
            // The batch ends on the server's 404 / 408 (nothing more, pull
            // expired); any other status (409, e.g. a leadership change)
            // comes as an error item that also ends this pull: the next
            // pull asks again.
            while let Some(Ok(m)) = batch.next().await {
                out.push(m);
            }
            Ok(out)
        })
    }

    /// Acks the messages (explicit ack) and flushes the acks to the server.
    pub fn ack(&self, msgs: &[&jetstream::Message]) -> Result<(), BoxError> {
        self.rt.block_on(async {
            for m in msgs {
                // async-nats' ack error is a `Send + Sync` box.
                m.ack().await.map_err(|e| e as BoxError)?;
            }
            self.client.flush().await?;
            Ok(())
        })
    }

    /// Messages not yet delivered plus delivered but not acked.
    pub fn outstanding(&self) -> Result<u64, BoxError> {
        let info = self.rt.block_on(self.consumer.get_info())?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

impl crate::Source for Puller {
    type Ack = jetstream::Message;

    fn next_batch(&mut self, max: usize) -> Result<crate::Batch<Self::Ack>, BoxError> {
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
            .map(|m| {
                let id = m
                    .payload
                    .split(|&b| b == b' ')
                    .next()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .ok_or("empty payload")?;
                Ok(crate::Delivery {
                    id,
                    payload: m.payload.to_vec(),
                    ack: m,
                })
            })
            .collect::<Result<Vec<_>, BoxError>>()
            .map(Some)
    }

    fn ack(&mut self, acks: &[&Self::Ack]) -> Result<(), BoxError> {
        Puller::ack(self, acks)
    }
}
