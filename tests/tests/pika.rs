//! The Python client pika against the real broker.

use mailroom_tests::{run_python, Server};

#[test]
fn pika_ten_thousand_messages_in_order_and_edge_size_bodies() {
    let server = Server::start();
    let out = run_python(&server, "pika_roundtrip.py", &[]);
    assert!(out.contains("ORDERED 10000"), "{out}");
    assert!(out.contains("SIZES"), "{out}");
}
