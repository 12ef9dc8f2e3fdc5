//! Issue 12: `localhost` on IPv6. Node.js 17+ (and others) resolve `localhost` to `::1` first, so the broker
//! listens on both loopback addresses by default, and `--listen` may be given more than once (or as a
//! comma-separated list). RabbitMQ's default is likewise every interface on both families
//! (rabbitmq.conf `listeners.tcp.default = 5672`; docs: networking.html, "Listening on dual stack").

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};

use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

/// A port free on both 127.0.0.1 and ::1 at the time of the call.
fn port_free_on_both() -> u16 {
    for _ in 0..50 {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        if TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both loopback addresses");
}

#[test]
fn localhost_reaches_the_broker_on_every_address_it_resolves_to() {
    let port = port_free_on_both();
    let tmp = tempfile::tempdir().unwrap();
    let list = format!("127.0.0.1:{port},[::1]:{port}");
    let server = Server::start_in(&tmp.path().join("data"), &["--listen", &list]);
    let resolved: Vec<SocketAddr> = ("localhost", port).to_socket_addrs().unwrap().collect();
    assert!(!resolved.is_empty());
    for addr in ["127.0.0.1", "::1"].map(|ip| SocketAddr::new(ip.parse().unwrap(), port)) {
        let mut c = RawClient::open_ch1(addr);
        c.round_trip(1);
        c.close_connection();
    }
    for addr in resolved {
        let mut c = RawClient::open_ch1(addr);
        c.round_trip(1);
        c.close_connection();
    }
    drop(server);
}

#[test]
fn listen_flag_repeats_and_each_listener_serves() {
    let tmp = tempfile::tempdir().unwrap();
    // The harness already passes `--listen 127.0.0.1:0`; a second flag adds the IPv6 loopback.
    let server = Server::start_in(&tmp.path().join("data"), &["--listen", "[::1]:0"]);
    let line = server
        .wait_for_log(
            "accepting AMQP connections addr=[::1]",
            std::time::Duration::from_secs(10),
        )
        .expect("a second listener on ::1");
    let addr: SocketAddr = line
        .split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    let mut v6 = RawClient::open_ch1(addr);
    let mut v4 = RawClient::open_ch1(server.addr);
    v6.declare_queue(1, "both");
    v4.publish(1, "", "both", b"over v4");
    // Publishes carry no reply: a declare on the same channel after it proves it was enqueued before the
    // other connection asks for it (under load the get could otherwise overtake it).
    assert_eq!(v4.declare_queue(1, "both").message_count, 1);
    assert_eq!(v6.get(1, "both", true).expect("message").body, b"over v4");
}
