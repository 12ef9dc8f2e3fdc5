//! pika against the real broker: routing per exchange type, e2e bindings, alternate exchanges with
//! on_return / UnroutableError, internal exchanges (tests/python/routing_exchanges.py) and exchange/binding
//! errors with RabbitMQ's codes and texts (tests/python/routing_errors.py).

use mailroom_tests::{run_python, Server};

#[test]
fn pika_routes_through_every_exchange_type() {
    let server = Server::start();
    let out = run_python(&server, "routing_exchanges.py", &[]);
    assert!(out.contains("ROUTING OK"), "{out}");
}

#[test]
fn pika_sees_rabbitmq_exchange_and_binding_errors() {
    let server = Server::start();
    let out = run_python(&server, "routing_errors.py", &[]);
    assert!(out.contains("ROUTING ERRORS OK"), "{out}");
}
