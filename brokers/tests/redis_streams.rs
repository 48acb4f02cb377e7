//! Redis Streams consumer group, tested against a real redis-server on
//! loopback: see common/mod.rs.

mod common;

use dedupstore_brokers::redis_streams;

#[test]
fn redis_streams_consumer_survives_sigkills_without_losing_a_message() {
    let Some(server) = common::start_redis() else {
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
