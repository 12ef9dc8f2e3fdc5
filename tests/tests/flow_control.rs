//! Issue 11, flow control, end to end: memory alarm (connection.blocked / unblocked, consumers and
//! heartbeats go on), per-queue back-pressure, the maximum message size and the connection limit.
//! No timing is asserted: the alarm is raised and cleared through a debug-build hook that makes the
//! broker's memory monitor read its RSS from a file.

use mailroom_tests::raw::{protocol, RawClient};
use mailroom_tests::{run_python, Server};
use protocol::Method;

#[test]
fn memory_alarm_blocks_publishers_and_unblocks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = tmp.path().join("rss");
    std::fs::write(&hook, "0").unwrap();
    let hook_s = hook.to_str().unwrap();
    let server = Server::try_start_with_env(
        &tmp.path().join("data"),
        &["--memory-high-watermark", "512MiB"],
        &[("MAILROOM_TEST_RSS_FILE", hook_s)],
    )
    .unwrap();
    let out = run_python(&server, "flow_control.py", &["alarm", hook_s]);
    assert!(out.contains("BLOCKED low on memory"), "{out}");
    assert!(out.contains("ALARM OK"), "{out}");
    // The alarm is logged when raised and when cleared.
    assert!(server
        .wait_for_log(
            "memory resource limit alarm set",
            std::time::Duration::from_secs(5)
        )
        .is_some());
    assert!(server
        .wait_for_log(
            "memory resource limit alarm cleared",
            std::time::Duration::from_secs(5)
        )
        .is_some());
}

/// The disk alarm, end to end (RabbitMQ's rabbit_disk_monitor: free space under `disk_free_limit` blocks
/// publishers with "low on disk"). The debug hook MAILROOM_TEST_DISK_FREE_FILE makes the monitor read the
/// free space from a file; the same pika script as the memory alarm checks blocked/unblocked, that a
/// non-publishing connection drains meanwhile, heartbeats, and that every message is delivered once.
#[test]
fn disk_alarm_blocks_publishers_and_unblocks_them() {
    let tmp = tempfile::tempdir().unwrap();
    let hook = tmp.path().join("disk-free");
    std::fs::write(&hook, "100GiB").unwrap();
    let hook_s = hook.to_str().unwrap();
    let server = Server::try_start_with_env(
        &tmp.path().join("data"),
        &["--disk-free-limit", "50MB"],
        &[("MAILROOM_TEST_DISK_FREE_FILE", hook_s)],
    )
    .unwrap();
    let out = run_python(&server, "flow_control.py", &["alarm", hook_s, "disk"]);
    assert!(out.contains("BLOCKED low on disk"), "{out}");
    assert!(out.contains("ALARM OK"), "{out}");
    assert!(server
        .wait_for_log("disk resource limit alarm set", std::time::Duration::from_secs(5))
        .is_some());
    assert!(server
        .wait_for_log(
            "disk resource limit alarm cleared",
            std::time::Duration::from_secs(5)
        )
        .is_some());
}

#[test]
fn a_queue_over_its_bound_throttles_its_publishers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("mailroom.toml");
    std::fs::write(&cfg, "queue_flow_max_messages = 10\n").unwrap();
    let server =
        Server::try_start_in(&tmp.path().join("data"), &["--config", cfg.to_str().unwrap()]).unwrap();
    let out = run_python(&server, "flow_control.py", &["throttle"]);
    assert!(out.contains("THROTTLED ready"), "{out}");
    assert!(out.contains("OTHER QUEUE NOT THROTTLED"), "{out}");
    assert!(out.contains("THROTTLED CLOSE OK"), "{out}");
    assert!(out.contains("THROTTLE OK"), "{out}");
    assert!(server
        .wait_for_log("connection throttled", std::time::Duration::from_secs(5))
        .is_some());
}

/// RabbitMQ's rabbit_channel:check_msg_size: 406 PRECONDITION_FAILED "message size N is larger than
/// configured max size M".
#[test]
fn a_publish_over_the_max_message_size_gets_406() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::try_start_in(&tmp.path().join("data"), &["--max-message-size", "1KiB"]).unwrap();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "big");
    c.publish(1, "", "big", &[7u8; 1024]);
    c.publish(1, "", "big", &[7u8; 1025]);
    let (code, text, class, method) = c.expect_channel_close(1);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - message size 1025 is larger than configured max size 1024"
    );
    assert_eq!((class, method), (60, 40));
    // The message at the limit went in; the connection goes on.
    c.open_channel(2);
    assert!(c.get(2, "big", true).is_some());
}

/// A content header that announces a body over the limit is refused at once (issue 18: a client cannot
/// make the broker buffer up to the limit first): 406 with RabbitMQ's text (rabbit_channel.erl
/// check_msg_size, which RabbitMQ applies after the whole body), the body frames still on the way are
/// discarded by the closing channel, and the connection goes on.
#[test]
fn a_content_header_over_the_max_message_size_is_refused_before_its_body() {
    use protocol::bytes::BytesMut;
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::try_start_in(&tmp.path().join("data"), &["--max-message-size", "1KiB"]).unwrap();
    let mut c = RawClient::open_ch1(server.addr);
    c.declare_queue(1, "big");
    let announced: u64 = 400 << 20;
    let mut b = BytesMut::new();
    protocol::write_method(
        &mut b,
        1,
        &Method::BasicPublish(protocol::BasicPublish {
            exchange: "".into(),
            routing_key: "big".into(),
            mandatory: false,
            immediate: false,
        }),
    );
    let header_at = b.len();
    protocol::write_content(
        &mut b,
        1,
        protocol::CLASS_BASIC,
        &protocol::RawProperties::empty(),
        &[],
        0,
    );
    // type(1) channel(2) size(4) class(2) weight(2), then the 8-byte body size.
    b[header_at + 11..header_at + 19].copy_from_slice(&announced.to_be_bytes());
    c.send_raw(&b);
    // Only the header was sent: the refusal cannot wait for the body.
    let close = loop {
        match c.read_frame() {
            Some(protocol::Frame::Method(1, Method::ChannelClose(m))) => break m,
            Some(_) => continue,
            None => panic!("connection closed without channel.close"),
        }
    };
    assert_eq!(close.reply_code, 406);
    assert_eq!(
        close.reply_text.to_string(),
        format!("PRECONDITION_FAILED - message size {announced} is larger than configured max size 1024")
    );
    assert_eq!((close.class_id, close.method_id), (60, 40));
    // Body frames the client had in flight before it read the close are dropped with the channel.
    let mut body = BytesMut::new();
    for _ in 0..64 {
        body.extend_from_slice(&[3, 0, 1, 0, 0, 16, 0]);
        body.extend_from_slice(&[9u8; 4096]);
        body.extend_from_slice(&[0xce]);
    }
    c.send_raw(&body);
    c.send_method(1, Method::ChannelCloseOk(protocol::ChannelCloseOk));
    c.open_channel(2);
    c.publish(2, "", "big", b"small");
    let m = c.get(2, "big", true).expect("the connection still works");
    assert_eq!(m.body_str(), "small");
}

/// RabbitMQ's rabbit_reader:is_over_node_connection_limit: connection.open is refused with 530
/// NOT_ALLOWED "connection refused: node connection limit (N) is reached"; a closed connection frees
/// its place.
#[test]
fn connections_past_max_connections_are_refused_at_open() {
    let tmp = tempfile::tempdir().unwrap();
    let server = Server::try_start_in(&tmp.path().join("data"), &["--max-connections", "1"]).unwrap();
    let first = RawClient::open(server.addr, 131_072);
    let (mut second, _) = RawClient::until_tune(server.addr);
    second.send_method(
        0,
        Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: 0,
            frame_max: 131_072,
            heartbeat: 0,
        }),
    );
    second.send_method(
        0,
        Method::ConnectionOpen(protocol::ConnectionOpen {
            virtual_host: "/".into(),
        }),
    );
    let (code, text, _, _) = second.expect_connection_close();
    assert_eq!(code, 530);
    assert_eq!(
        text,
        "NOT_ALLOWED - connection refused: node connection limit (1) is reached"
    );
    drop(first);
    // Once the first is gone, a new one may open (the broker notices the close asynchronously).
    let mut opened = false;
    for _ in 0..100 {
        let (mut c, _) = RawClient::until_tune(server.addr);
        c.send_method(
            0,
            Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
                channel_max: 0,
                frame_max: 131_072,
                heartbeat: 0,
            }),
        );
        c.send_method(
            0,
            Method::ConnectionOpen(protocol::ConnectionOpen {
                virtual_host: "/".into(),
            }),
        );
        if matches!(c.expect_method(), Method::ConnectionOpenOk(_)) {
            opened = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(opened);
}
