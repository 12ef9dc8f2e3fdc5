//! A minimal AMQP 0-9-1 client connection on top of the protocol crate: handshake
//! (PLAIN, frame_max up to the server's offer, heartbeat as asked or as the broker
//! proposes), one channel, simple RPCs. Reads go into one large buffer that the codec
//! splits zero-copy; writes are appended to one `BytesMut` and flushed explicitly, and the
//! time a flush spends waiting for the socket to take more (TCP back-pressure: the broker
//! is not reading) is counted.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::{Buf, BytesMut};
use protocol::{
    write_method, ChannelOpen, ConnectionClose, ConnectionCloseOk, ConnectionOpen, ConnectionStartOk,
    ConnectionTuneOk, FieldTable, FieldValue, Frame, FrameCodec, LongStr, Method, PROTOCOL_HEADER,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use crate::tracker::mono_ns;
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

    /// The next frame as a consumer needs it: the three frames of a delivery are read in place
    /// (a few loads, no `Frame` built, no reference count touched: see [`Incoming`]); any other
    /// frame, one that is not complete yet, or one that does not parse exactly is left to the
    /// full decoder, which returns it (or its error) as [`Incoming::Other`].
    #[inline]
    pub fn try_incoming(&mut self) -> anyhow::Result<Option<Incoming>> {
        match lean_frame(&self.buf) {
            Some((total, ev)) => {
                self.buf.advance(total);
                Ok(Some(ev))
            }
            None => Ok(self.try_frame()?.map(Incoming::Other)),
        }
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

/// A frame as the consumer loop sees it. The frames of a delivery carry only what the tool
/// uses; the full decoder (and its checks) handles everything else.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    /// basic.deliver: the delivery tag and the redelivered flag.
    Deliver { tag: u64, redelivered: bool },
    /// A content header: the body size.
    Header { body_size: u64 },
    /// A body frame: its length and the stamp its first 16 bytes carry, if they do.
    Body {
        len: usize,
        stamp: Option<(u16, u64, u64)>,
    },
    /// Any other frame, decoded in full.
    Other(Frame),
}

/// Reads the complete frame at the start of `buf` if it is one of a delivery's three and parses
/// exactly (basic.deliver's fields end where the frame does, a header is long enough, the frame
/// end octet is there); returns its length on the wire and what it says. `None` leaves the
/// frame to [`FrameCodec`].
#[inline]
fn lean_frame(buf: &[u8]) -> Option<(usize, Incoming)> {
    const HEAD: usize = protocol::FRAME_HEADER_SIZE;
    let head = buf.get(..HEAD)?;
    let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
    let total = HEAD + size + 1;
    if buf.len() < total || buf[total - 1] != protocol::FRAME_END {
        return None;
    }
    let p = &buf[HEAD..HEAD + size];
    let [c0, c1] = protocol::BasicDeliver::CLASS_ID.to_be_bytes();
    let [m0, m1] = protocol::BasicDeliver::METHOD_ID.to_be_bytes();
    let ev = match head[0] {
        protocol::FRAME_METHOD if p.get(..4) == Some(&[c0, c1, m0, m1]) => {
            // consumer-tag (shortstr), delivery-tag (u64), redelivered (bit), exchange and
            // routing-key (shortstrs).
            let ctag_end = 5 + usize::from(*p.get(4)?);
            let tag = u64::from_be_bytes(p.get(ctag_end..ctag_end + 8)?.try_into().ok()?);
            let redelivered = *p.get(ctag_end + 8)? & 1 == 1;
            let ex_end = ctag_end + 10 + usize::from(*p.get(ctag_end + 9)?);
            let rk_end = ex_end + 1 + usize::from(*p.get(ex_end)?);
            if rk_end != p.len() {
                return None;
            }
            Incoming::Deliver { tag, redelivered }
        }
        // class-id, weight, body-size, then the properties.
        protocol::FRAME_HEADER if p.len() >= 14 => Incoming::Header {
            body_size: u64::from_be_bytes(p[4..12].try_into().ok()?),
        },
        protocol::FRAME_BODY => Incoming::Body {
            len: size,
            stamp: crate::tracker::parse_stamp(p),
        },
        _ => return None,
    };
    Some((total, ev))
}

/// Time a writer spent unable to write: its socket's send buffer was full (the peer was
/// not reading fast enough), summed over every write that had to wait.
#[derive(Debug, Default)]
pub struct WriteStall {
    /// Completed waits, ns.
    total_ns: AtomicU64,
    /// Number of writes that had to wait.
    count: AtomicU64,
    /// Longest single wait, ns.
    max_ns: AtomicU64,
    /// `mono_ns()` at which the current wait began; 0 when not waiting.
    since_ns: AtomicU64,
}

impl WriteStall {
    /// Total waiting time up to `now` (a wait in progress counts up to `now`).
    pub fn total_ns(&self, now: u64) -> u64 {
        let since = self.since_ns.load(Relaxed);
        self.total_ns.load(Relaxed) + if since > 0 { now.saturating_sub(since) } else { 0 }
    }

    /// Writes that had to wait.
    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Longest single wait up to `now` (a wait in progress counts), ns.
    pub fn max_ns(&self, now: u64) -> u64 {
        let since = self.since_ns.load(Relaxed);
        let current = if since > 0 { now.saturating_sub(since) } else { 0 };
        self.max_ns.load(Relaxed).max(current)
    }

    /// Whether a write is waiting right now, and since when (`mono_ns`).
    pub fn waiting_since(&self) -> Option<u64> {
        Some(self.since_ns.load(Relaxed)).filter(|s| *s > 0)
    }

    fn begin(&self, now: u64) {
        if self.since_ns.load(Relaxed) == 0 {
            self.since_ns.store(now, Relaxed);
            self.count.fetch_add(1, Relaxed);
        }
    }

    fn end(&self, now: u64) {
        let since = self.since_ns.swap(0, Relaxed);
        if since > 0 {
            let d = now.saturating_sub(since);
            self.total_ns.fetch_add(d, Relaxed);
            self.max_ns.fetch_max(d, Relaxed);
        }
    }
}

/// The write side: an output buffer flushed on demand.
pub struct FrameWriter<W> {
    wr: W,
    /// Pending output.
    pub buf: BytesMut,
    /// Bytes of `buf` already written by a flush that was interrupted (cancelled).
    written: usize,
    /// When bytes last went out.
    last_write: Instant,
    /// Time spent waiting for the socket.
    pub stall: Arc<WriteStall>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    fn new(wr: W) -> Self {
        FrameWriter {
            wr,
            buf: BytesMut::with_capacity(128 * 1024),
            written: 0,
            last_write: Instant::now(),
            stall: Arc::new(WriteStall::default()),
        }
    }

    /// Appends a method frame on channel [`CH`] (or 0 for connection methods).
    pub fn method(&mut self, channel: u16, m: &Method) {
        write_method(&mut self.buf, channel, m);
    }

    /// Appends a heartbeat frame.
    pub fn heartbeat(&mut self) {
        protocol::write_heartbeat(&mut self.buf);
    }

    /// How long nothing was written.
    pub fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_write)
    }

    /// Bytes of `buf` already on the socket (a flush was interrupted part-way).
    pub fn written(&self) -> usize {
        self.written
    }

    /// Writes out everything buffered. Cancel-safe: a flush that is dropped part-way keeps
    /// its progress and the next one goes on from there. Time spent waiting because the
    /// socket would not take more is added to [`FrameWriter::stall`].
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        while self.written < self.buf.len() {
            let FrameWriter {
                wr,
                buf,
                written,
                stall,
                ..
            } = self;
            let data = &buf[*written..];
            let stall: &WriteStall = stall;
            let res = std::future::poll_fn(|cx| match Pin::new(&mut *wr).poll_write(cx, data) {
                Poll::Pending => {
                    stall.begin(mono_ns());
                    Poll::Pending
                }
                ready => ready,
            })
            .await;
            stall.end(mono_ns());
            let n = res?;
            if n == 0 {
                bail!("the broker's socket accepts no more data (write returned 0)");
            }
            self.written += n;
            self.last_write = Instant::now();
        }
        self.buf.clear();
        self.written = 0;
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
    /// Negotiated heartbeat interval in seconds (0 = none).
    pub heartbeat: u16,
}

fn close_error(what: &str, code: u16, text: &str, class: u16, method: u16) -> anyhow::Error {
    anyhow::anyhow!("{what} closed by the broker: {code} {text} (class {class}, method {method})")
}

impl Conn {
    /// Connects, authenticates (PLAIN), tunes, opens the vhost and channel 1. `heartbeat`:
    /// the interval to ask for in tune-ok (`Some(0)` = none), or `None` to take the
    /// broker's proposal.
    pub async fn open(uri: &AmqpUri, name: &str, heartbeat: Option<u16>) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect((uri.host.as_str(), uri.port))
            .await
            .with_context(|| format!("connecting to {}:{}", uri.host, uri.port))?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut c = Conn {
            rd: FrameReader::new(r),
            wr: FrameWriter::new(w),
            frame_max: 0,
            heartbeat: 0,
        };
        tokio::time::timeout(Duration::from_secs(15), c.handshake(uri, name, heartbeat))
            .await
            .context("AMQP handshake timed out")??;
        Ok(c)
    }

    async fn handshake(&mut self, uri: &AmqpUri, name: &str, heartbeat: Option<u16>) -> anyhow::Result<()> {
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
            // We handle connection.blocked / connection.unblocked (producers time them).
            "connection.blocked",
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
            &Method::from(ConnectionStartOk {
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
        self.heartbeat = heartbeat.unwrap_or(tune.heartbeat);
        self.wr.method(
            0,
            &Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: tune.channel_max,
                frame_max,
                heartbeat: self.heartbeat,
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

/// A negotiated heartbeat interval: when to send one, when to give up on the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    secs: u16,
}

impl Heartbeat {
    /// Interval in seconds (0 = no heartbeats).
    pub fn new(secs: u16) -> Heartbeat {
        Heartbeat { secs }
    }

    /// The interval in seconds.
    pub fn secs(self) -> u16 {
        self.secs
    }

    /// Whether heartbeats are on.
    pub fn enabled(self) -> bool {
        self.secs > 0
    }

    /// Send a heartbeat after this long without writing anything (half the interval, as
    /// RabbitMQ's clients do).
    pub fn send_every(self) -> Duration {
        Duration::from_millis(u64::from(self.secs) * 500)
    }

    /// Whether a heartbeat is due after `idle` without writing.
    pub fn send_due(self, idle: Duration) -> bool {
        self.secs > 0 && idle >= self.send_every()
    }

    /// The peer is considered dead after this long without any frame from it (two
    /// intervals, per the AMQP 0-9-1 spec).
    pub fn dead_after(self) -> Option<Duration> {
        (self.secs > 0).then(|| Duration::from_secs(2 * u64::from(self.secs)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use protocol::{BasicAck, BasicDeliver, RawProperties, ShortStr};

    /// What the full decoder says of the same frame, in the lean reader's terms.
    fn as_incoming(f: Frame) -> Incoming {
        match f {
            Frame::Method(_, Method::BasicDeliver(d)) => Incoming::Deliver {
                tag: d.delivery_tag,
                redelivered: d.redelivered,
            },
            Frame::Header(_, h) => Incoming::Header {
                body_size: h.body_size,
            },
            Frame::Body(_, b) => Incoming::Body {
                len: b.len(),
                stamp: crate::tracker::parse_stamp(&b),
            },
            other => Incoming::Other(other),
        }
    }

    /// A reader whose buffer already holds `bytes` (its socket is never read).
    fn reader_over(bytes: &[u8]) -> FrameReader<tokio::io::DuplexStream> {
        let (_, rd) = tokio::io::duplex(1);
        let mut r = FrameReader::new(rd);
        r.buf.extend_from_slice(bytes);
        r
    }

    /// Reads everything in `wire`, handing it over in pieces of `chunk` bytes, with the lean
    /// reader (`lean = true`) or the full decoder alone.
    fn read_all(wire: &[u8], chunk: usize, lean: bool) -> Vec<Incoming> {
        let mut r = reader_over(&[]);
        let mut out = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            r.buf.extend_from_slice(piece);
            loop {
                let next = if lean {
                    r.try_incoming().unwrap()
                } else {
                    r.try_frame().unwrap().map(as_incoming)
                };
                match next {
                    Some(i) => out.push(i),
                    None => break,
                }
            }
        }
        assert!(r.buf.is_empty(), "bytes left over");
        out
    }

    fn arb_short() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-z.-]{0,40}").unwrap()
    }

    proptest! {
        /// The lean reader returns, frame for frame, what the full decoder does for a stream of
        /// deliveries (any tags, flags, names, body sizes and frame_max, stamped or not), with
        /// heartbeats and other methods in between, however the bytes arrive.
        #[test]
        fn lean_reader_agrees_with_the_decoder(
            msgs in proptest::collection::vec(
                (any::<u64>(), any::<bool>(), arb_short(), arb_short(), arb_short(), 0usize..3000, any::<u8>()),
                1..20),
            frame_max in 4096u32..9000,
            chunk in 1usize..5000,
        ) {
            let mut wire = BytesMut::new();
            for (i, (tag, redelivered, ctag, ex, rk, size, extra)) in msgs.iter().enumerate() {
                write_method(&mut wire, CH, &Method::BasicDeliver(BasicDeliver {
                    consumer_tag: ShortStr::try_from_str(ctag).unwrap(),
                    delivery_tag: *tag,
                    redelivered: *redelivered,
                    exchange: ShortStr::try_from_str(ex).unwrap(),
                    routing_key: ShortStr::try_from_str(rk).unwrap(),
                }));
                let mut body = vec![*extra; *size];
                if body.len() >= 16 {
                    crate::tracker::stamp(&mut body, i as u16, *tag >> 20, *tag);
                }
                protocol::write_content(&mut wire, CH, protocol::CLASS_BASIC, &RawProperties::default(), &body, frame_max);
                match extra % 3 {
                    0 => protocol::write_heartbeat(&mut wire),
                    1 => write_method(&mut wire, CH, &Method::BasicAck(BasicAck { delivery_tag: *tag, multiple: true })),
                    _ => {}
                }
            }
            let lean = read_all(&wire, chunk, true);
            let full = read_all(&wire, chunk, false);
            prop_assert_eq!(lean, full);
        }
    }

    #[test]
    fn lean_reader_leaves_what_it_cannot_read_exactly_to_the_decoder() {
        // A basic.deliver whose routing key runs past the frame: the decoder's error, not a delivery.
        let mut wire = BytesMut::new();
        write_method(
            &mut wire,
            CH,
            &Method::BasicDeliver(BasicDeliver {
                consumer_tag: ShortStr::try_from_str("c").unwrap(),
                delivery_tag: 7,
                redelivered: false,
                exchange: ShortStr::try_from_str("").unwrap(),
                routing_key: ShortStr::try_from_str("key").unwrap(),
            }),
        );
        let rk_len_at = wire.len() - 1 - 4;
        wire[rk_len_at] = 9;
        assert!(reader_over(&wire).try_incoming().is_err());

        // A bad frame-end octet is the decoder's error too.
        let mut wire = BytesMut::new();
        protocol::write_heartbeat(&mut wire);
        let mut bad = wire.to_vec();
        *bad.last_mut().unwrap() = 0;
        assert!(reader_over(&bad).try_incoming().is_err());

        // A content header with its body size, and an incomplete frame: nothing yet.
        let mut wire = BytesMut::new();
        protocol::write_content(
            &mut wire,
            CH,
            protocol::CLASS_BASIC,
            &RawProperties::default(),
            b"abc",
            4096,
        );
        let mut r = reader_over(&wire[..5]);
        assert!(r.try_incoming().unwrap().is_none());
        r.buf.extend_from_slice(&wire[5..]);
        assert_eq!(r.try_incoming().unwrap(), Some(Incoming::Header { body_size: 3 }));
        assert_eq!(
            r.try_incoming().unwrap(),
            Some(Incoming::Body { len: 3, stamp: None })
        );
    }

    #[test]
    fn heartbeat_schedule() {
        let off = Heartbeat::new(0);
        assert!(!off.enabled() && !off.send_due(Duration::from_secs(1000)));
        assert_eq!(off.dead_after(), None);
        let hb = Heartbeat::new(4);
        assert!(!hb.send_due(Duration::from_millis(1999)));
        assert!(hb.send_due(Duration::from_secs(2)));
        assert_eq!(hb.dead_after(), Some(Duration::from_secs(8)));
    }

    #[tokio::test]
    async fn flush_counts_time_waiting_for_a_full_socket() {
        // A duplex pipe with a 1 KiB buffer: writing 64 KiB must wait for the reader.
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = FrameWriter::new(a);
        w.buf.extend_from_slice(&vec![7u8; 64 * 1024]);
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut got = Vec::new();
            let _ = b.read_to_end(&mut got).await;
            got.len()
        });
        w.flush().await.unwrap();
        assert!(w.buf.is_empty() && w.written() == 0);
        assert!(w.stall.count() >= 1);
        assert!(w.stall.total_ns(mono_ns()) > 0);
        assert!(w.stall.max_ns(mono_ns()) > 0);
        assert!(w.stall.max_ns(mono_ns()) <= w.stall.total_ns(mono_ns()));
        assert!(w.stall.waiting_since().is_none());
        drop(w);
        assert_eq!(reader.await.unwrap(), 64 * 1024);
    }

    #[tokio::test]
    async fn an_interrupted_flush_resumes_where_it_stopped() {
        let (a, mut b) = tokio::io::duplex(1000);
        let mut w = FrameWriter::new(a);
        w.buf
            .extend_from_slice(&(0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
        // Nobody reads: the flush stalls after 1000 bytes; cancel it.
        let r = tokio::time::timeout(Duration::from_millis(50), w.flush()).await;
        assert!(r.is_err());
        assert_eq!(w.written(), 1000);
        assert!(w.stall.waiting_since().is_some());
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            let _ = b.read_to_end(&mut got).await;
            got
        });
        w.flush().await.unwrap();
        drop(w);
        let got = reader.await.unwrap();
        assert_eq!(got, (0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
    }
}
