//! Protocol header, connection.start/tune/open, authentication, heartbeats, connection.close both ways.

use std::time::{Duration, Instant};

use mailroom_tests::raw::protocol::{self, FieldTable, FieldValue, Frame, Method};
use mailroom_tests::raw::RawClient;
use mailroom_tests::Server;

fn assert_header_refused(server: &Server, header: &[u8]) {
    let mut c = RawClient::connect(server.addr);
    c.send_raw(header);
    let got = c.read_exact_raw(8);
    assert_eq!(got, b"AMQP\x00\x00\x09\x01", "reply to {header:?}");
    assert!(c.is_closed_by_server(), "socket closed after refusing {header:?}");
}

#[test]
fn wrong_protocol_headers_get_ours_back_and_the_socket_closed() {
    let server = Server::start();
    assert_header_refused(&server, b"AMQP\x00\x00\x09\x00");
    assert_header_refused(&server, b"GET / HTTP/1.1\r\n");
    assert_header_refused(&server, b"AMQP\x00\x00\x08\x00");
    assert_header_refused(&server, b"XXXXXXXX");
    // The broker still serves proper clients.
    let mut c = RawClient::open_ch1(server.addr);
    c.round_trip(1);
}

#[test]
fn connection_start_advertises_capabilities_and_mechanisms() {
    let server = Server::start();
    let (_c, start) = RawClient::start(server.addr);
    assert_eq!((start.version_major, start.version_minor), (0, 9));
    let caps = start
        .server_properties
        .get("capabilities")
        .and_then(|v| v.as_table())
        .expect("capabilities table in server-properties");
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ] {
        assert_eq!(
            caps.get(cap).and_then(|v| v.as_bool()),
            Some(true),
            "capability {cap}"
        );
    }
    let mechs = start.mechanisms.to_string_lossy().to_string();
    let mechs: Vec<&str> = mechs.split(' ').collect();
    assert!(mechs.contains(&"PLAIN"), "{mechs:?}");
    assert!(mechs.contains(&"AMQPLAIN"), "{mechs:?}");
    assert!(start.locales.to_string_lossy().contains("en_US"));
}

fn finish_handshake(c: &mut RawClient) {
    let tune = c.expect_method();
    let Method::ConnectionTune(t) = tune else {
        panic!("expected tune, got {tune:?}")
    };
    assert_eq!(t.frame_max, 131_072, "server's frame_max offer");
    c.send_method(
        0,
        Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat: 0,
        }),
    );
    c.send_method(
        0,
        Method::ConnectionOpen(protocol::ConnectionOpen {
            virtual_host: "/".into(),
        }),
    );
    let ok = c.expect_method();
    assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
    c.frame_max = t.frame_max;
    c.open_channel(1);
    c.round_trip(1);
}

#[test]
fn plain_login_works() {
    let server = Server::start();
    let (mut c, _) = RawClient::start(server.addr);
    c.send_start_ok("PLAIN", b"\0guest\0guest".to_vec());
    finish_handshake(&mut c);
}

#[test]
fn amqplain_login_works() {
    let server = Server::start();
    let (mut c, _) = RawClient::start(server.addr);
    let mut t = FieldTable::new();
    t.insert("LOGIN", FieldValue::LongStr("guest".into()));
    t.insert("PASSWORD", FieldValue::LongStr("guest".into()));
    let mut b = protocol::bytes::BytesMut::new();
    t.encode(&mut b);
    // AMQPLAIN's response is the table without its 4-byte length prefix.
    c.send_start_ok("AMQPLAIN", b[4..].to_vec());
    finish_handshake(&mut c);
}

fn start_ok_with_caps(c: &mut RawClient, mechanism: &str, response: Vec<u8>) {
    let mut caps = FieldTable::new();
    caps.insert("authentication_failure_close", FieldValue::Bool(true));
    let mut props = FieldTable::new();
    props.insert("capabilities", FieldValue::Table(caps));
    c.send_method(
        0,
        Method::from(protocol::ConnectionStartOk {
            client_properties: props,
            mechanism: mechanism.into(),
            response: response.into(),
            locale: "en_US".into(),
        }),
    );
}

#[test]
fn wrong_password_is_refused_with_403() {
    let server = Server::start();
    let (mut c, _) = RawClient::start(server.addr);
    start_ok_with_caps(&mut c, "PLAIN", b"\0guest\0wrong".to_vec());
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    assert!(c.is_closed_by_server());
}

#[test]
fn unknown_user_via_amqplain_is_refused_with_403() {
    let server = Server::start();
    let (mut c, _) = RawClient::start(server.addr);
    let mut t = FieldTable::new();
    t.insert("LOGIN", FieldValue::LongStr("nobody".into()));
    t.insert("PASSWORD", FieldValue::LongStr("guest".into()));
    let mut b = protocol::bytes::BytesMut::new();
    t.encode(&mut b);
    start_ok_with_caps(&mut c, "AMQPLAIN", b[4..].to_vec());
    let (code, text, _, _) = c.expect_connection_close();
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism AMQPLAIN. For details see the broker logfile."
    );
}

/// RabbitMQ (rabbit_reader:auth_mechanism_to_module): an unknown mechanism is 503 COMMAND_INVALID.
#[test]
fn unknown_mechanism_is_command_invalid() {
    let server = Server::start();
    let (mut c, _) = RawClient::start(server.addr);
    start_ok_with_caps(&mut c, "FOO", b"x".to_vec());
    let (code, text, class_id, method_id) = c.expect_connection_close();
    assert_eq!(
        (code, text.as_str(), class_id, method_id),
        (
            503,
            "COMMAND_INVALID - unknown authentication mechanism 'FOO'",
            10,
            11
        )
    );
}

#[test]
fn pika_reports_wrong_credentials_as_an_authentication_error() {
    let server = Server::start();
    let out = mailroom_tests::run_python(&server, "auth_failure.py", &[]);
    assert!(out.contains("AUTH_REFUSED"), "{out}");
}

fn tune_ok_fails(channel_max: Option<u16>, frame_max: u32) -> (u16, String, u16, u16) {
    let server = Server::start();
    let (mut c, t) = RawClient::until_tune(server.addr);
    assert_eq!(t.frame_max, 131_072);
    c.send_method(
        0,
        Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: channel_max.unwrap_or(t.channel_max),
            frame_max,
            heartbeat: 0,
        }),
    );
    c.send_method(
        0,
        Method::ConnectionOpen(protocol::ConnectionOpen {
            virtual_host: "/".into(),
        }),
    );
    let r = c.expect_connection_close();
    assert!(c.is_closed_by_server());
    r
}

fn assert_tune_refusal(r: (u16, String, u16, u16), field: &str) {
    let (code, text, class_id, method_id) = r;
    assert_eq!(code, 530, "{text}");
    assert!(text.starts_with("NOT_ALLOWED - "), "{text}");
    assert!(text.contains(field), "{text}");
    // RabbitMQ names connection.tune (10/30); the failing method is tune-ok (10/31): accept either.
    assert_eq!(class_id, 10, "{text}");
    assert!(method_id == 30 || method_id == 31, "method id {method_id}");
}

#[test]
fn tune_ok_frame_max_below_minimum_is_530() {
    assert_tune_refusal(tune_ok_fails(None, 4095), "frame_max");
}

#[test]
fn tune_ok_frame_max_above_offer_is_530() {
    assert_tune_refusal(tune_ok_fails(None, 131_073), "frame_max");
}

#[test]
fn tune_ok_frame_max_zero_is_530_when_the_server_limits_it() {
    assert_tune_refusal(tune_ok_fails(None, 0), "frame_max");
}

#[test]
fn tune_ok_channel_max_above_offer_is_530() {
    let server = Server::start();
    let (_, t) = RawClient::until_tune(server.addr);
    drop(server);
    assert_tune_refusal(tune_ok_fails(Some(t.channel_max + 1), 131_072), "channel_max");
}

fn open_with_heartbeat(addr: std::net::SocketAddr, heartbeat: u16) -> RawClient {
    let (mut c, t) = RawClient::until_tune(addr);
    c.send_method(
        0,
        Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat,
        }),
    );
    c.send_method(
        0,
        Method::ConnectionOpen(protocol::ConnectionOpen {
            virtual_host: "/".into(),
        }),
    );
    let ok = c.expect_method();
    assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
    c.frame_max = t.frame_max;
    c
}

#[test]
fn silent_client_with_heartbeat_1_is_disconnected() {
    let server = Server::start();
    let mut c = open_with_heartbeat(server.addr, 1);
    let t0 = Instant::now();
    // Read (and ignore) the server's heartbeats until EOF; never answer.
    c.set_read_timeout(Duration::from_secs(10));
    let closed = loop {
        match c.read_frame() {
            Some(Frame::Heartbeat(0)) => {
                if t0.elapsed() > Duration::from_secs(10) {
                    break false;
                }
            }
            Some(f) => panic!("unexpected frame {f:?}"),
            None => break t0.elapsed() < Duration::from_secs(10),
        }
    };
    assert!(closed, "a silent client must be dropped within 10 s");
}

#[test]
fn client_with_heartbeat_1_receives_heartbeats_and_stays_up_while_sending_them() {
    let server = Server::start();
    let mut c = open_with_heartbeat(server.addr, 1);
    c.set_read_timeout(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut beats = 0;
    while t0.elapsed() < Duration::from_millis(3500) {
        c.send_raw(&[8, 0, 0, 0, 0, 0, 0, 0xCE]);
        if let Some(f) = c.read_frame() {
            assert_eq!(f, Frame::Heartbeat(0));
            beats += 1;
        }
    }
    assert!(beats >= 1, "no heartbeat frame from the server");
    // Still alive after more than two intervals, because we kept sending heartbeats.
    c.set_read_timeout(Duration::from_secs(10));
    c.open_channel(1);
    c.round_trip(1);
}

#[test]
fn unknown_vhost_is_530_not_allowed() {
    let server = Server::start();
    let (mut c, t) = RawClient::until_tune(server.addr);
    c.send_method(
        0,
        Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat: 0,
        }),
    );
    c.send_method(
        0,
        Method::ConnectionOpen(protocol::ConnectionOpen {
            virtual_host: "nope".into(),
        }),
    );
    let (code, text, class_id, method_id) = c.expect_connection_close();
    assert_eq!((code, class_id, method_id), (530, 10, 40), "{text}");
    // rabbit_access_control:check_vhost_access: a missing vhost and one without permissions read alike.
    assert_eq!(
        text,
        "NOT_ALLOWED - access to vhost 'nope' refused for user 'guest'"
    );
    assert!(c.is_closed_by_server());
}

#[test]
fn client_initiated_close_gets_close_ok_and_the_socket_closes() {
    let server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.close_connection();
    assert!(c.is_closed_by_server());
}

#[test]
fn sigterm_sends_connection_forced_then_exits_0() {
    let mut server = Server::start();
    let mut c = RawClient::open_ch1(server.addr);
    c.round_trip(1);
    let addr = server.addr;
    let reader = std::thread::spawn(move || {
        let r = c.expect_connection_close();
        let closed = c.is_closed_by_server();
        (r, closed)
    });
    std::thread::sleep(Duration::from_millis(100));
    let status = server.stop();
    let ((code, text, class_id, method_id), closed) = reader.join().unwrap();
    assert!(status.success(), "broker exit status {status}");
    assert_eq!((code, class_id, method_id), (320, 0, 0));
    assert_eq!(
        text,
        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
    );
    assert!(closed);
    let _ = addr;
}

/// A client that sends the protocol header and then nothing is disconnected after the 10 s handshake
/// timeout (RabbitMQ's default); the broker keeps serving others meanwhile.
#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let server = Server::start();
    let mut idle = RawClient::connect(server.addr);
    idle.send_raw(&protocol::PROTOCOL_HEADER);
    let start = idle.expect_method();
    assert!(matches!(start, Method::ConnectionStart(_)));
    // Another client completes a handshake while the first one idles.
    let _busy = RawClient::open(server.addr, 131072);
    idle.stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let t = std::time::Instant::now();
    assert!(idle.is_closed_by_server(), "the idle client must be disconnected");
    assert!(
        t.elapsed() >= std::time::Duration::from_secs(5),
        "not before the timeout"
    );
}
