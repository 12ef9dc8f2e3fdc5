//! A minimal AMQP 0-9-1 client connection on top of the protocol crate: handshake
//! (PLAIN, frame_max up to the server's offer, heartbeat 0), one channel, simple RPCs.
//! Reads go into one large buffer that the codec splits zero-copy; writes are appended
//! to one `BytesMut` and flushed explicitly.

use std::time::Duration;

use anyhow::{bail, Context};
use bytes::BytesMut;
use protocol::{
    write_method, ChannelOpen, ConnectionClose, ConnectionCloseOk, ConnectionOpen, ConnectionStartOk,
    ConnectionTuneOk, FieldTable, FieldValue, Frame, FrameCodec, LongStr, Method, PROTOCOL_HEADER,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::uri::AmqpUri;

/// The channel every connection of this tool uses.
pub const CH: u16 = 1;
/// frame_max we ask for when the server offers 0 (no limit).
const DEFAULT_FRAME_MAX: u32 = 131_072;
/// Read chunk size.
const READ_CHUNK: usize = 256 * 1024;

/// The read side: a buffer and the frame decoder.
pub struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    codec: FrameCodec,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(rd: R) -> Self {
        FrameReader {
            rd,
            buf: BytesMut::with_capacity(READ_CHUNK),
            codec: FrameCodec::new(),
        }
    }

    /// Decodes one frame from what is already buffered.
    #[inline]
    pub fn try_frame(&mut self) -> anyhow::Result<Option<Frame>> {
        Ok(self.codec.decode(&mut self.buf)?)
    }

    /// Reads more bytes (cancel-safe). Fails on EOF.
    pub async fn fill(&mut self) -> anyhow::Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let n = self.rd.read_buf(&mut self.buf).await?;
        if n == 0 {
            bail!("connection closed by the broker");
        }
        Ok(())
    }

    /// The next frame, reading as needed.
    pub async fn next_frame(&mut self) -> anyhow::Result<Frame> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }
}

/// The write side: an output buffer flushed on demand.
pub struct FrameWriter<W> {
    wr: W,
    /// Pending output.
    pub buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    fn new(wr: W) -> Self {
        FrameWriter {
            wr,
            buf: BytesMut::with_capacity(128 * 1024),
        }
    }

    /// Appends a method frame on channel [`CH`] (or 0 for connection methods).
    pub fn method(&mut self, channel: u16, m: &Method) {
        write_method(&mut self.buf, channel, m);
    }

    /// Writes out everything buffered.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.wr.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }
}

/// An open connection with channel [`CH`] open.
pub struct Conn {
    /// Read half.
    pub rd: FrameReader<OwnedReadHalf>,
    /// Write half.
    pub wr: FrameWriter<OwnedWriteHalf>,
    /// Negotiated frame_max (whole frame).
    pub frame_max: u32,
}

fn close_error(what: &str, code: u16, text: &str, class: u16, method: u16) -> anyhow::Error {
    anyhow::anyhow!("{what} closed by the broker: {code} {text} (class {class}, method {method})")
}

impl Conn {
    /// Connects, authenticates (PLAIN), tunes, opens the vhost and channel 1.
    pub async fn open(uri: &AmqpUri, name: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect((uri.host.as_str(), uri.port))
            .await
            .with_context(|| format!("connecting to {}:{}", uri.host, uri.port))?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut c = Conn {
            rd: FrameReader::new(r),
            wr: FrameWriter::new(w),
            frame_max: 0,
        };
        tokio::time::timeout(Duration::from_secs(15), c.handshake(uri, name))
            .await
            .context("AMQP handshake timed out")??;
        Ok(c)
    }

    async fn handshake(&mut self, uri: &AmqpUri, name: &str) -> anyhow::Result<()> {
        self.wr.buf.extend_from_slice(&PROTOCOL_HEADER);
        self.wr.flush().await?;
        let start = match self.rd.next_frame().await {
            Ok(Frame::Method(0, Method::ConnectionStart(s))) => s,
            Ok(f) => bail!("expected connection.start, got {f:?}"),
            Err(e) => bail!("no connection.start from the broker (protocol header rejected?): {e}"),
        };
        let mechs = String::from_utf8_lossy(start.mechanisms.as_bytes()).to_string();
        if !mechs.split_whitespace().any(|m| m == "PLAIN") {
            bail!("broker does not offer PLAIN authentication (offers {mechs:?})");
        }
        let mut caps = FieldTable::new();
        for c in [
            "publisher_confirms",
            "basic.nack",
            "consumer_cancel_notify",
            "exchange_exchange_bindings",
        ] {
            caps.insert(c, FieldValue::Bool(true));
        }
        let mut props = FieldTable::new();
        props.insert("product", FieldValue::LongStr("mailroom-perf".into()));
        props.insert("version", FieldValue::LongStr(env!("CARGO_PKG_VERSION").into()));
        props.insert("platform", FieldValue::LongStr("Rust".into()));
        props.insert("connection_name", FieldValue::LongStr(name.into()));
        props.insert("capabilities", FieldValue::Table(caps));
        let mut response = Vec::with_capacity(uri.user.len() + uri.password.len() + 2);
        response.push(0);
        response.extend_from_slice(uri.user.as_bytes());
        response.push(0);
        response.extend_from_slice(uri.password.as_bytes());
        self.wr.method(
            0,
            &Method::ConnectionStartOk(ConnectionStartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: LongStr::from(response),
                locale: "en_US".into(),
            }),
        );
        self.wr.flush().await?;
        let tune = match self.rd.next_frame().await? {
            Frame::Method(0, Method::ConnectionTune(t)) => t,
            Frame::Method(0, Method::ConnectionClose(c)) => {
                return Err(close_error(
                    "connection",
                    c.reply_code,
                    &c.reply_text,
                    c.class_id,
                    c.method_id,
                ))
            }
            Frame::Method(0, Method::ConnectionSecure(_)) => {
                bail!("broker asked for a SASL challenge; only PLAIN is supported")
            }
            f => bail!("expected connection.tune, got {f:?}"),
        };
        let frame_max = if tune.frame_max == 0 {
            DEFAULT_FRAME_MAX
        } else {
            tune.frame_max
        };
        self.frame_max = frame_max;
        self.wr.method(
            0,
            &Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max,
                heartbeat: 0,
            }),
        );
        self.rd.codec.set_max_frame_size(frame_max);
        self.wr.method(
            0,
            &Method::ConnectionOpen(ConnectionOpen {
                virtual_host: protocol::ShortStr::try_from_str(&uri.vhost)?,
            }),
        );
        self.wr.flush().await?;
        match self.rd.next_frame().await? {
            Frame::Method(0, Method::ConnectionOpenOk(_)) => {}
            Frame::Method(0, Method::ConnectionClose(c)) => {
                return Err(close_error(
                    "connection",
                    c.reply_code,
                    &c.reply_text,
                    c.class_id,
                    c.method_id,
                ))
            }
            f => bail!("expected connection.open-ok, got {f:?}"),
        }
        self.rpc(Method::ChannelOpen(ChannelOpen)).await?;
        Ok(())
    }

    /// Sends a synchronous method on channel 1 and returns the broker's reply method.
    /// A channel or connection close is turned into an error (and answered).
    pub async fn rpc(&mut self, m: Method) -> anyhow::Result<Method> {
        self.wr.method(CH, &m);
        self.wr.flush().await?;
        loop {
            match self.rd.next_frame().await? {
                Frame::Method(0, Method::ConnectionClose(c)) => {
                    self.wr.method(0, &Method::ConnectionCloseOk(ConnectionCloseOk));
                    let _ = self.wr.flush().await;
                    return Err(close_error(
                        "connection",
                        c.reply_code,
                        &c.reply_text,
                        c.class_id,
                        c.method_id,
                    ));
                }
                Frame::Method(_, Method::ChannelClose(c)) => {
                    self.wr
                        .method(CH, &Method::ChannelCloseOk(protocol::ChannelCloseOk));
                    let _ = self.wr.flush().await;
                    return Err(close_error(
                        "channel",
                        c.reply_code,
                        &c.reply_text,
                        c.class_id,
                        c.method_id,
                    ));
                }
                Frame::Method(_, Method::ConnectionBlocked(_))
                | Frame::Method(_, Method::ConnectionUnblocked(_)) => {}
                Frame::Method(_, reply) => return Ok(reply),
                _ => {}
            }
        }
    }

    /// Closes the connection politely (waits up to 2 s for close-ok).
    pub async fn close(mut self) {
        let _ = close_halves(&mut self.rd, &mut self.wr).await;
    }
}

/// Sends connection.close and waits (bounded) for close-ok, ignoring other frames.
pub async fn close_halves<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut FrameReader<R>,
    wr: &mut FrameWriter<W>,
) -> anyhow::Result<()> {
    wr.method(
        0,
        &Method::ConnectionClose(ConnectionClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }),
    );
    wr.flush().await?;
    tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match rd.next_frame().await? {
                Frame::Method(0, Method::ConnectionCloseOk(_))
                | Frame::Method(0, Method::ConnectionClose(_)) => return anyhow::Ok(()),
                _ => {}
            }
        }
    })
    .await??;
    Ok(())
}
