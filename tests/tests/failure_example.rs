//! The worked example of docs/failure-handling.md (tests/python/failure_example.py, pika) runs against the
//! real broker and prints what the doc says it prints.

use mailroom_tests::{run_python, Server};

#[test]
fn the_documented_retry_and_dlq_example_works() {
    let server = Server::start();
    let out = run_python(&server, "failure_example.py", &[]);
    eprintln!("{out}");
    assert!(out.contains("handled: ['order-1', 'order-2']"), "{out}");
    for n in 0..4 {
        assert!(out.contains(&format!("poison delivery with x-delivery-count={n} ")), "{out}");
    }
    assert!(out.contains("x-death reason: delivery_limit queue: orders count: 1"), "{out}");
    assert!(out.trim_end().ends_with("OK"), "{out}");
}

#[test]
fn pika_sees_x_death_delivery_count_nacks_and_argument_errors() {
    let server = Server::start();
    let out = run_python(&server, "failure_pika.py", &[]);
    eprintln!("{out}");
    assert!(out.trim_end().ends_with("OK"), "{out}");
}
