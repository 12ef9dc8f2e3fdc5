//! Per-message cost of stream queues and of duplicate detection (issue 15), in process: a broker on
//! loopback TCP driven by a minimal client that allocates nothing per message, with a counting global
//! allocator. Instruction counts come from running one case at two message counts under callgrind (see
//! docs/performance.md, "Event streams: instructions per message").
//!
//! Cases (`STREAM_BENCH_CASES`, default "ar"):
//! - `a`: append: one producer publishes N × 1 KiB messages to a new stream with confirms (at most
//!   1,000 unconfirmed), until all are confirmed;
//! - `r`: `a`, then one consumer replays the N from `x-stream-offset: first` (prefetch 1,000, one
//!   multiple ack per 500);
//! - `p`: S2's shape: 1 KiB transient messages to a classic queue, one consumer with manual acks
//!   (prefetch 100);
//! - `h`: `p` with a unique `x-deduplication-header` on every message;
//! - `d`: `h` to a queue declared with `x-message-deduplication: true`.
//!
//! N is `STREAM_BENCH_N` (default 200,000).

use std::time::Instant;

use bytes::BytesMut;
use protocol::{FieldTable, FieldValue, Frame, FrameCodec, Method, RawProperties};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;
use tokio_util::sync::CancellationToken;

#[path = "common/counting.rs"]
mod counting;
use counting::allocs;

struct Client {
    s: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Client {
    async fn send(&mut self, ch: u16, m: Method) {
        let mut b = BytesMut::new();
        protocol::write_method(&mut b, ch, &m);
        self.s.write_all(&b).await.unwrap();
    }

    /// The next frame; before waiting for the socket, writes out `pending`.
    async fn frame_flushing(&mut self, pending: &mut BytesMut) -> Frame {
        loop {
            if let Some(f) = self.codec.decode(&mut self.buf).unwrap() {
                return f;
            }
            if !pending.is_empty() {
                self.s.write_all(pending).await.unwrap();
                pending.clear();
            }
            self.buf.reserve(1 << 20);
            let n = self.s.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "broker closed the connection");
        }
    }

    async fn method(&mut self) -> Method {
        loop {
            if let Frame::Method(_, m) = self.frame_flushing(&mut BytesMut::new()).await {
                if let Method::ChannelClose(c) = &m {
                    panic!("channel closed: {} {}", c.reply_code, c.reply_text);
                }
                return m;
            }
        }
    }
}

async fn open(addr: std::net::SocketAddr) -> Client {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&protocol::PROTOCOL_HEADER).await.unwrap();
    let mut codec = FrameCodec::new();
    codec.set_max_frame_size(0);
    let mut c = Client {
        s,
        buf: BytesMut::with_capacity(1 << 20),
        codec,
    };
    c.method().await;
    c.send(
        0,
        Method::from(protocol::ConnectionStartOk {
            client_properties: FieldTable::new(),
            mechanism: "PLAIN".into(),
            response: protocol::LongStr::from(b"\0guest\0guest".to_vec()),
            locale: "en_US".into(),
        }),
    )
    .await;
    let Method::ConnectionTune(t) = c.method().await else {
        panic!("tune")
    };
    c.send(
        0,
        Method::ConnectionTuneOk(protocol::ConnectionTuneOk {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat: 0,
        }),
    )
    .await;
    c.send(
        0,
        Method::ConnectionOpen(protocol::ConnectionOpen {
            virtual_host: "/".into(),
        }),
    )
    .await;
    c.method().await;
    c.send(1, Method::ChannelOpen(protocol::ChannelOpen)).await;
    c.method().await;
    c
}

async fn declare(c: &mut Client, q: &str, durable: bool, arguments: FieldTable) {
    c.send(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: q.into(),
            passive: false,
            durable,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments,
        }),
    )
    .await;
    c.method().await;
}

async fn consume(c: &mut Client, q: &str, prefetch: u16, arguments: FieldTable) {
    c.send(
        1,
        Method::BasicQos(protocol::BasicQos {
            prefetch_size: 0,
            prefetch_count: prefetch,
            global: false,
        }),
    )
    .await;
    c.method().await;
    c.send(
        1,
        Method::BasicConsume(protocol::BasicConsume {
            queue: q.into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            no_wait: false,
            arguments,
        }),
    )
    .await;
    c.method().await;
}

/// The dedup header's value placeholder: 20 digits overwritten per message.
const PLACEHOLDER: &[u8] = b"00000000000000000000";

/// One pre-encoded batch of 100 publishes of `size`-byte bodies to queue `q`, and where each message's
/// dedup value sits in it (empty without `dedup_header`).
fn batch(q: &str, size: usize, persistent: bool, dedup_header: bool) -> (BytesMut, Vec<usize>) {
    let mut headers = FieldTable::new();
    if dedup_header {
        headers.insert(
            "x-deduplication-header",
            FieldValue::LongStr(protocol::LongStr::from(PLACEHOLDER)),
        );
    }
    let props = RawProperties::from_properties(&protocol::BasicProperties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        headers: dedup_header.then_some(headers),
        ..Default::default()
    });
    let body = vec![7u8; size];
    let mut b = BytesMut::new();
    let mut at = Vec::new();
    for _ in 0..100 {
        let m = Method::BasicPublish(protocol::BasicPublish {
            exchange: "".into(),
            routing_key: q.into(),
            mandatory: false,
            immediate: false,
        });
        protocol::write_method(&mut b, 1, &m);
        let start = b.len();
        protocol::write_content(&mut b, 1, 60, &props, &body, 131072);
        if dedup_header {
            let p = b[start..]
                .windows(PLACEHOLDER.len())
                .position(|w| w == PLACEHOLDER)
                .expect("placeholder");
            at.push(start + p);
        }
    }
    (b, at)
}

/// Writes `seq` as 20 decimal digits at each position of `at`, one per message of the batch.
fn stamp(b: &mut BytesMut, at: &[usize], seq: &mut u64) {
    for &p in at {
        let mut n = *seq;
        for i in (0..PLACEHOLDER.len()).rev() {
            b[p + i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        *seq += 1;
    }
}

fn report(what: &str, n: u64, allocs: u64, started: Instant) {
    println!(
        "{what:<34}: {n:>8} messages, {allocs:>10} allocations = {:>5.2} per message ({:.0} msg/s in-process)",
        allocs as f64 / n as f64,
        n as f64 / started.elapsed().as_secs_f64()
    );
}

/// Appends `n` 1 KiB messages to stream `q` with confirms (window 1,000).
async fn append(addr: std::net::SocketAddr, q: &str, n: u64) {
    let mut p = open(addr).await;
    let mut args = FieldTable::new();
    args.insert("x-queue-type", FieldValue::LongStr("stream".into()));
    declare(&mut p, q, true, args).await;
    p.send(
        1,
        Method::ConfirmSelect(protocol::ConfirmSelect { no_wait: false }),
    )
    .await;
    p.method().await;
    let (b, _) = batch(q, 1024, true, false);
    let b = b.freeze();
    let before = allocs();
    let started = Instant::now();
    let (mut sent, mut confirmed) = (0u64, 0u64);
    let mut none = BytesMut::new();
    while confirmed < n {
        while sent < n && sent - confirmed <= 900 {
            p.s.write_all(&b).await.unwrap();
            sent += 100;
        }
        match p.frame_flushing(&mut none).await {
            Frame::Method(_, Method::BasicAck(a)) => confirmed = confirmed.max(a.delivery_tag),
            Frame::Method(_, Method::BasicNack(_)) => panic!("nacked"),
            _ => {}
        }
    }
    report(
        "stream append, confirms (window 1000)",
        n,
        allocs() - before,
        started,
    );
}

/// Reads `n` messages of stream `q` from `first` (prefetch 1,000, a multiple ack per 500).
async fn replay(addr: std::net::SocketAddr, q: &str, n: u64) {
    let mut c = open(addr).await;
    let mut args = FieldTable::new();
    args.insert("x-stream-offset", FieldValue::LongStr("first".into()));
    let before = allocs();
    let started = Instant::now();
    consume(&mut c, q, 1000, args).await;
    let mut acks = BytesMut::with_capacity(4096);
    let mut got = 0u64;
    while got < n {
        if let Frame::Method(_, Method::BasicDeliver(d)) = c.frame_flushing(&mut acks).await {
            got += 1;
            if got.is_multiple_of(500) {
                protocol::write_method(
                    &mut acks,
                    1,
                    &Method::BasicAck(protocol::BasicAck {
                        delivery_tag: d.delivery_tag,
                        multiple: true,
                    }),
                );
            }
        }
    }
    report("stream replay from first", n, allocs() - before, started);
}

/// S2's shape (1 KiB transient, manual ack, prefetch 100), optionally with a unique dedup header per
/// message and a deduplicating queue.
async fn s2(addr: std::net::SocketAddr, n: u64, dedup_header: bool, dedup_queue: bool) {
    let q = format!("s2-{dedup_header}-{dedup_queue}");
    let mut p = open(addr).await;
    let mut args = FieldTable::new();
    if dedup_queue {
        args.insert("x-message-deduplication", FieldValue::Bool(true));
    }
    declare(&mut p, &q, false, args).await;
    let mut c = open(addr).await;
    consume(&mut c, &q, 100, FieldTable::new()).await;
    let (mut b, at) = batch(&q, 1024, false, dedup_header);
    let before = allocs();
    let started = Instant::now();
    let publisher = tokio::spawn(async move {
        let mut seq = 0u64;
        for _ in 0..n / 100 {
            stamp(&mut b, &at, &mut seq);
            p.s.write_all(&b).await.unwrap();
        }
        p
    });
    let mut acks = BytesMut::with_capacity(64 * 1024);
    let mut got = 0u64;
    while got < n {
        if let Frame::Method(_, Method::BasicDeliver(d)) = c.frame_flushing(&mut acks).await {
            got += 1;
            protocol::write_method(
                &mut acks,
                1,
                &Method::BasicAck(protocol::BasicAck {
                    delivery_tag: d.delivery_tag,
                    multiple: false,
                }),
            );
        }
    }
    if !acks.is_empty() {
        c.s.write_all(&acks).await.unwrap();
    }
    let what = match (dedup_header, dedup_queue) {
        (false, _) => "S2 shape",
        (true, false) => "S2 shape + dedup header",
        (true, true) => "S2 shape + dedup header + dedup queue",
    };
    report(what, n, allocs() - before, started);
    let _p = publisher.await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config = broker::Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        };
        let server = broker::Server::bind(config).await.unwrap();
        let addr = server.local_addr();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));
        let n: u64 = std::env::var("STREAM_BENCH_N")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        let n = n / 100 * 100;
        let cases = std::env::var("STREAM_BENCH_CASES").unwrap_or_else(|_| "ar".into());
        println!("heap allocations per message, broker and client in one process (client allocates nothing per message)");
        if cases.contains('a') && !cases.contains('r') {
            append(addr, "stream-a", n).await;
        }
        if cases.contains('r') {
            append(addr, "stream-r", n).await;
            replay(addr, "stream-r", n).await;
        }
        if cases.contains('p') {
            s2(addr, n, false, false).await;
        }
        if cases.contains('h') {
            s2(addr, n, true, false).await;
        }
        if cases.contains('d') {
            s2(addr, n, true, true).await;
        }
        shutdown.cancel();
        let _ = handle.await;
    });
}
