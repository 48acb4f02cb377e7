//! NATS JetStream durable pull consumer (explicit acks, AckWait
//! redelivery), tested against a real nats-server on loopback: see
//! common/mod.rs.

mod common;

use std::time::Duration;

use dedupstore_brokers::nats;

#[test]
fn nats_jetstream_consumer_survives_sigkills_without_losing_a_message() {
    let Some(server) = common::start(
        "nats-server",
        |port, dir| {
            [
                "-a",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-js",
                "-sd",
                dir.to_str().expect("UTF-8 temp path"),
            ]
            .map(String::from)
            .to_vec()
        },
        |addr| {
            nats::Admin::connect(addr, "probe")
                .and_then(|c| c.jetstream_ready())
                .is_ok()
        },
    ) else {
        return;
    };
    let addr = server.addr.clone();
    common::kill_and_measure(
        "nats",
        &server.addr,
        &["insert", "insert-batch", "claim"],
        |stream, ids| {
            let c = nats::Admin::connect(&addr, "producer").expect("connect");
            let subject = format!("{stream}.msgs");
            c.create_stream(stream, &subject).expect("create stream");
            let payloads: Vec<Vec<u8>> = ids
                .iter()
                .map(|id| dedupstore_brokers::payload_of(id))
                .collect();
            c.publish_all(&subject, &payloads).expect("publish");
            // A killed consumer's unacked messages come back after AckWait.
            c.create_consumer(stream, "c", Duration::from_secs(2))
                .expect("create consumer");
        },
    );
}
