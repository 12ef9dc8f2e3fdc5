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
}

impl RawClient {
    pub fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        let mut codec = FrameCodec::new();
        codec.set_max_frame_size(0);
        RawClient {
            stream,
            buf: BytesMut::new(),
            codec,
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
            Method::ConnectionStartOk(protocol::ConnectionStartOk {
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
        use tokio_util_codec_shim::decode;
        loop {
            match decode(&mut self.codec, &mut self.buf) {
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
                    return (
                        c.reply_code,
                        c.reply_text.to_string(),
                        c.class_id,
                        c.method_id,
                    );
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
                    return (
                        m.reply_code,
                        m.reply_text.to_string(),
                        m.class_id,
                        m.method_id,
                    );
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

/// Decoder glue without depending on tokio-util from here.
mod tokio_util_codec_shim {
    use bytes::BytesMut;
    use protocol::{Frame, FrameCodec, ProtocolError};

    pub fn decode(
        codec: &mut FrameCodec,
        buf: &mut BytesMut,
    ) -> Result<Option<Frame>, ProtocolError> {
        tokio_util::codec::Decoder::decode(codec, buf)
    }
}
