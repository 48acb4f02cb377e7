//! Redis Streams consumer group, tested against a real redis-server on
//! loopback: see common/mod.rs.

mod common;

use dedupstore_brokers::redis_streams;

#[test]
fn redis_streams_consumer_survives_sigkills_without_losing_a_message() {
    let Some(server) = common::start(
        "redis-server",
        |port, dir| {
            [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                dir.to_str().expect("UTF-8 temp path"),
            ]
            .map(String::from)
            .to_vec()
        },
        |addr| {
            redis::Client::open(format!("redis://{addr}/"))
                .and_then(|c| c.get_connection())
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
                .is_ok()
        },
    ) else {
        return;
    };
    let url = format!("redis://{}/", server.addr);
    common::kill_and_measure(
        "redis",
        &server.addr,
        &["insert", "insert-batch", "claim"],
        |stream, ids| {
            redis_streams::produce(&url, stream, "g", ids).expect("produce");
        },
    );
}
