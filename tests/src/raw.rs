//! A raw-socket AMQP client for tests that send malformed or out-of-order bytes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use protocol::{Frame, FrameCodec, Method};

pub use protocol;

pub struct RawClient {
    pub stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
    /// frame_max this client negotiated (used to split published bodies); 4096 before tune-ok.
    pub frame_max: u32,
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut codec = FrameCodec::new();
        codec.set_max_frame_size(0);
        RawClient {
            stream,
            buf: BytesMut::new(),
            codec,
            frame_max: protocol::FRAME_MIN_SIZE,
        }
    }

    /// Connects and completes the handshake as guest on vhost `/` with the given frame_max.
    pub fn open(addr: SocketAddr, frame_max: u32) -> RawClient {
        let mut c = RawClient::connect(addr);
        c.send_raw(&protocol::PROTOCOL_HEADER);
        let start = c.expect_method();
        assert!(matches!(start, Method::ConnectionStart(_)), "{start:?}");
        c.send_method(
            0,
            Method::from(protocol::ConnectionStartOk {
                client_properties: protocol::FieldTable::new(),
                mechanism: "PLAIN".into(),
                response: protocol::LongStr::from(b"\0guest\0guest".to_vec()),
                locale: "en_US".into(),
            }),
        );
        let tune = c.expect_method();
        let Method::ConnectionTune(t) = tune else {
            panic!("expected tune, got {tune:?}")
        };
        c.send_method(
            0,
            Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
                channel_max: t.channel_max,
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
        let ok = c.expect_method();
        assert!(matches!(ok, Method::ConnectionOpenOk(_)), "{ok:?}");
        c.frame_max = frame_max;
        c
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    pub fn send_method(&mut self, channel: u16, m: Method) {
        let mut b = BytesMut::new();
        protocol::write_method(&mut b, channel, &m);
        self.send_raw(&b);
    }

    pub fn open_channel(&mut self, ch: u16) {
        self.send_method(ch, Method::ChannelOpen(protocol::ChannelOpen));
        let ok = self.expect_method();
        assert!(matches!(ok, Method::ChannelOpenOk(_)), "{ok:?}");
    }

    /// The next frame, or None on EOF / timeout.
    pub fn read_frame(&mut self) -> Option<Frame> {
        use tokio_util::codec::Decoder;
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(f)) => return Some(f),
                Ok(None) => {}
                Err(e) => panic!("server sent an undecodable frame: {e}"),
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next method frame (skipping heartbeats); panics on EOF.
    pub fn expect_method(&mut self) -> Method {
        loop {
            match self.read_frame() {
                Some(Frame::Method(_, m)) => return m,
                Some(Frame::Heartbeat(_)) => continue,
                Some(other) => panic!("expected a method frame, got {other:?}"),
                None => panic!("connection closed while waiting for a method"),
            }
        }
    }

    /// Reads until connection.close; returns (reply code, text, class id, method id) and answers close-ok.
    pub fn expect_connection_close(&mut self) -> (u16, String, u16, u16) {
        loop {
            match self.read_frame() {
                Some(Frame::Method(0, Method::ConnectionClose(c))) => {
                    self.send_method(0, Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
                    return (c.reply_code, c.reply_text.to_string(), c.class_id, c.method_id);
                }
                Some(_) => continue,
                None => panic!("connection closed without connection.close"),
            }
        }
    }

    /// Reads until channel.close on `ch`; returns (reply code, text, class id, method id) and answers close-ok.
    pub fn expect_channel_close(&mut self, ch: u16) -> (u16, String, u16, u16) {
        loop {
            match self.read_frame() {
                Some(Frame::Method(c, Method::ChannelClose(m))) if c == ch => {
                    self.send_method(ch, Method::ChannelCloseOk(protocol::ChannelCloseOk));
                    return (m.reply_code, m.reply_text.to_string(), m.class_id, m.method_id);
                }
                Some(Frame::Method(0, Method::ConnectionClose(c))) => {
                    panic!(
                        "expected channel.close, got connection.close {} {}",
                        c.reply_code, c.reply_text
                    )
                }
                Some(_) => continue,
                None => panic!("connection closed without channel.close"),
            }
        }
    }

    /// True once the server closed the socket (reads EOF within the timeout).
    pub fn is_closed_by_server(&mut self) -> bool {
        let mut chunk = [0u8; 4096];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// Reads exactly `n` raw bytes (for the protocol-header reply).
    pub fn read_exact_raw(&mut self, n: usize) -> Vec<u8> {
        let mut out = vec![0u8; n];
        let have = self.buf.len().min(n);
        out[..have].copy_from_slice(&self.buf[..have]);
        self.buf.advance(have);
        self.stream.read_exact(&mut out[have..]).expect("read");
        out
    }
}

/// A delivered message as the raw client read it: the method (deliver / get-ok / return), its header and body.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub method: Method,
    pub header: protocol::ContentHeader,
    pub body: Vec<u8>,
}

impl RawMessage {
    /// The delivery tag of a basic.deliver or basic.get-ok.
    pub fn delivery_tag(&self) -> u64 {
        match &self.method {
            Method::BasicDeliver(d) => d.delivery_tag,
            Method::BasicGetOk(g) => g.delivery_tag,
            m => panic!("no delivery tag on {m:?}"),
        }
    }

    /// The redelivered flag of a basic.deliver or basic.get-ok.
    pub fn redelivered(&self) -> bool {
        match &self.method {
            Method::BasicDeliver(d) => d.redelivered,
            Method::BasicGetOk(g) => g.redelivered,
            m => panic!("no redelivered flag on {m:?}"),
        }
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl RawClient {
    /// Connects, sends the protocol header and reads connection.start.
    pub fn start(addr: SocketAddr) -> (RawClient, protocol::ConnectionStart) {
        let mut c = RawClient::connect(addr);
        c.send_raw(&protocol::PROTOCOL_HEADER);
        match c.expect_method() {
            Method::ConnectionStart(s) => (c, s),
            m => panic!("expected connection.start, got {m:?}"),
        }
    }

    /// Sends connection.start-ok with the given mechanism and response.
    pub fn send_start_ok(&mut self, mechanism: &str, response: Vec<u8>) {
        self.send_method(
            0,
            Method::from(protocol::ConnectionStartOk {
                client_properties: protocol::FieldTable::new(),
                mechanism: mechanism.into(),
                response: protocol::LongStr::from(response),
                locale: "en_US".into(),
            }),
        );
    }

    /// Connects, logs in as guest/guest with PLAIN and returns the server's connection.tune.
    pub fn until_tune(addr: SocketAddr) -> (RawClient, protocol::ConnectionTune) {
        let (mut c, _) = RawClient::start(addr);
        c.send_start_ok("PLAIN", b"\0guest\0guest".to_vec());
        match c.expect_method() {
            Method::ConnectionTune(t) => (c, t),
            m => panic!("expected connection.tune, got {m:?}"),
        }
    }

    /// Opens a connection with frame_max 131072 and channel 1 open.
    pub fn open_ch1(addr: SocketAddr) -> RawClient {
        let mut c = RawClient::open(addr, 131_072);
        c.open_channel(1);
        c
    }

    /// Sends a method and returns the next method frame the server sends (any channel).
    pub fn call(&mut self, ch: u16, m: Method) -> Method {
        self.send_method(ch, m);
        self.expect_method()
    }

    /// The next frame; panics on EOF/timeout.
    pub fn expect_frame(&mut self) -> Frame {
        loop {
            match self.read_frame() {
                Some(Frame::Heartbeat(0)) => continue,
                Some(f) => return f,
                None => panic!("connection closed while waiting for a frame"),
            }
        }
    }

    /// queue.declare with the given flags; returns declare-ok (panics on anything else).
    pub fn declare_queue_with(
        &mut self,
        ch: u16,
        name: &str,
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
    ) -> protocol::QueueDeclareOk {
        let m = self.call(
            ch,
            Method::QueueDeclare(protocol::QueueDeclare {
                queue: name.into(),
                passive: false,
                durable,
                exclusive,
                auto_delete,
                no_wait: false,
                arguments: protocol::FieldTable::new(),
            }),
        );
        match m {
            Method::QueueDeclareOk(ok) => ok,
            m => panic!("expected queue.declare-ok, got {m:?}"),
        }
    }

    /// A plain (non-durable, non-exclusive) queue.declare.
    pub fn declare_queue(&mut self, ch: u16, name: &str) -> protocol::QueueDeclareOk {
        self.declare_queue_with(ch, name, false, false, false)
    }

    /// Sends basic.publish with content (header + body frames split at this client's frame_max).
    pub fn publish_full(
        &mut self,
        ch: u16,
        publish: protocol::BasicPublish,
        props: &protocol::RawProperties,
        body: &[u8],
    ) {
        let mut b = BytesMut::new();
        protocol::write_method(&mut b, ch, &Method::BasicPublish(publish));
        protocol::write_content(&mut b, ch, protocol::CLASS_BASIC, props, body, self.frame_max);
        self.send_raw(&b);
    }

    /// basic.publish to `exchange` with `routing_key`, no properties.
    pub fn publish(&mut self, ch: u16, exchange: &str, routing_key: &str, body: &[u8]) {
        self.publish_full(
            ch,
            protocol::BasicPublish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            },
            &protocol::RawProperties::empty(),
            body,
        );
    }

    /// Reads a content header and its body frames on `ch` (after a content method was read).
    pub fn expect_content(&mut self, ch: u16) -> (protocol::ContentHeader, Vec<u8>) {
        let header = match self.expect_frame() {
            Frame::Header(c, h) if c == ch => h,
            f => panic!("expected a content header on channel {ch}, got {f:?}"),
        };
        let mut body = Vec::with_capacity(header.body_size as usize);
        while (body.len() as u64) < header.body_size {
            match self.expect_frame() {
                Frame::Body(c, b) if c == ch => body.extend_from_slice(&b),
                f => panic!("expected a body frame on channel {ch}, got {f:?}"),
            }
        }
        (header, body)
    }

    /// Reads the next method on `ch`; if it carries content (deliver, get-ok, return), reads that too.
    pub fn expect_message(&mut self, ch: u16) -> RawMessage {
        let m = match self.expect_frame() {
            Frame::Method(c, m) if c == ch => m,
            f => panic!("expected a method on channel {ch}, got {f:?}"),
        };
        match m {
            Method::BasicDeliver(_) | Method::BasicGetOk(_) | Method::BasicReturn(_) => {
                let (header, body) = self.expect_content(ch);
                RawMessage {
                    method: m,
                    header,
                    body,
                }
            }
            m => panic!("expected a message on channel {ch}, got {m:?}"),
        }
    }

    /// basic.get: Some(message) on get-ok, None on get-empty.
    pub fn get(&mut self, ch: u16, queue: &str, no_ack: bool) -> Option<RawMessage> {
        self.send_method(
            ch,
            Method::BasicGet(protocol::BasicGet {
                queue: queue.into(),
                no_ack,
            }),
        );
        let m = match self.expect_frame() {
            Frame::Method(c, m) if c == ch => m,
            f => panic!("expected basic.get-ok/get-empty on channel {ch}, got {f:?}"),
        };
        match m {
            Method::BasicGetEmpty(_) => None,
            Method::BasicGetOk(_) => {
                let (header, body) = self.expect_content(ch);
                Some(RawMessage {
                    method: m,
                    header,
                    body,
                })
            }
            m => panic!("expected basic.get-ok/get-empty, got {m:?}"),
        }
    }

    /// basic.consume; returns the consumer tag from consume-ok.
    pub fn consume(&mut self, ch: u16, queue: &str, tag: &str, no_ack: bool, exclusive: bool) -> String {
        let m = self.call(
            ch,
            Method::BasicConsume(protocol::BasicConsume {
                queue: queue.into(),
                consumer_tag: tag.into(),
                no_local: false,
                no_ack,
                exclusive,
                no_wait: false,
                arguments: protocol::FieldTable::new(),
            }),
        );
        match m {
            Method::BasicConsumeOk(ok) => ok.consumer_tag.to_string(),
            m => panic!("expected basic.consume-ok, got {m:?}"),
        }
    }

    /// basic.ack (no reply expected).
    pub fn ack(&mut self, ch: u16, tag: u64, multiple: bool) {
        self.send_method(
            ch,
            Method::BasicAck(protocol::BasicAck {
                delivery_tag: tag,
                multiple,
            }),
        );
    }

    /// Closes channel `ch` cleanly and waits for close-ok (skipping anything else that arrives on it).
    pub fn close_channel(&mut self, ch: u16) {
        self.send_method(
            ch,
            Method::ChannelClose(protocol::ChannelClose {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            }),
        );
        loop {
            match self.expect_frame() {
                Frame::Method(c, Method::ChannelCloseOk(_)) if c == ch => return,
                Frame::Method(0, Method::ConnectionClose(c)) => panic!(
                    "expected channel.close-ok, got connection.close {} {}",
                    c.reply_code, c.reply_text
                ),
                _ => continue,
            }
        }
    }

    /// Closes the connection cleanly and waits for close-ok.
    pub fn close_connection(&mut self) {
        self.send_method(
            0,
            Method::ConnectionClose(protocol::ConnectionClose {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            }),
        );
        loop {
            match self.expect_frame() {
                Frame::Method(0, Method::ConnectionCloseOk(_)) => return,
                _ => continue,
            }
        }
    }

    /// Sets the socket read timeout (the default is 10 s).
    pub fn set_read_timeout(&mut self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).unwrap();
    }

    /// True if no frame (other than heartbeats) arrives within `d`.
    pub fn is_quiet_for(&mut self, d: Duration) -> bool {
        self.set_read_timeout(d);
        let r = loop {
            match self.read_frame() {
                Some(Frame::Heartbeat(_)) => continue,
                Some(f) => {
                    // Put nothing back: callers use this only where nothing is expected.
                    eprintln!("unexpected frame: {f:?}");
                    break false;
                }
                None => break true,
            }
        };
        self.set_read_timeout(Duration::from_secs(10));
        r
    }

    /// A publish/get round trip on `ch` through a fresh server-named queue: proves the connection works.
    pub fn round_trip(&mut self, ch: u16) {
        let q = self.declare_queue_with(ch, "", false, true, false);
        let body = format!("ping on {}", q.queue);
        self.publish(ch, "", &q.queue, body.as_bytes());
        let got = self.get(ch, &q.queue, true).expect("round trip message");
        assert_eq!(got.body, body.as_bytes());
    }
}
