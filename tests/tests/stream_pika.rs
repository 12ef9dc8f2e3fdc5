//! Issue 15: the pika example of docs/event-streams.md runs against the broker (a topic exchange bound to a
//! stream; replay from first; a filtered reader; server-side offset tracking by consumer tag; basic.get
//! refused).

use mailroom_tests::{run_python, Server};

#[test]
fn the_event_streams_example_runs_with_pika() {
    let server = Server::start();
    let out = run_python(&server, "stream_events.py", &[]);
    assert!(out.contains("OK"), "{out}");
}
