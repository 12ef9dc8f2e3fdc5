//! Heap allocations per message on the hot path (publish → route → enqueue → deliver → ack), counted by a
//! counting global allocator around an in-process broker driven over loopback TCP by a minimal client that
//! itself allocates nothing per message. Run: `cargo bench -p mailroom-broker --bench alloc_per_message`.

use std::time::Instant;

use bytes::BytesMut;
use protocol::{Frame, FrameCodec, Method, RawProperties};
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
    async fn frame(&mut self) -> Frame {
        self.frame_flushing(&mut BytesMut::new()).await
    }

    /// The next frame; before waiting for the socket, writes out `pending` (acks).
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
            if let Frame::Method(_, m) = self.frame().await {
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
            client_properties: protocol::FieldTable::new(),
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

/// How a case publishes, beyond size, persistence and acks.
#[derive(Clone, Copy, Default)]
struct Shape {
    /// Through a named direct exchange bound to the queue (as mailroom-perf's S2), not the default one.
    exchange: bool,
    /// Every message carries a unique `x-deduplication-header` (as `mailroom-perf --dedup-header`).
    header: bool,
    /// The queue is declared with `x-message-deduplication: true` (as `mailroom-perf --dedup-queue`).
    dedup_queue: bool,
    /// Every message has a message id and a correlation id (case 7, with tracing on: the cost of
    /// tracing each message).
    ids: bool,
}

/// The placeholder each message's `x-deduplication-header` value overwrites with its sequence number.
const DEDUP_PLACEHOLDER: &str = "mailroom-00000000000000000000";

/// Publishes `n` messages of `size` bytes to queue `q` from one connection while another consumes them
/// (no-ack, or acking each one); returns allocations per message.
async fn run(
    addr: std::net::SocketAddr,
    n: u64,
    size: usize,
    persistent: bool,
    ack: bool,
    shape: Shape,
) -> f64 {
    let q = format!(
        "alloc-{}-{}-{}-{}{}{}",
        size, persistent, ack, shape.exchange as u8, shape.header as u8, shape.dedup_queue as u8
    ) + if shape.ids { "-ids" } else { "" };
    let mut p = open(addr).await;
    let mut arguments = protocol::FieldTable::new();
    if shape.dedup_queue {
        arguments.insert("x-message-deduplication", protocol::FieldValue::Bool(true));
        // A window smaller than the first run's messages, so that the measured (marginal) messages are in
        // the steady state of a long run: every check misses, records, and evicts the oldest value.
        arguments.insert("x-cache-size", protocol::FieldValue::I32(10_000));
    }
    p.send(
        1,
        Method::QueueDeclare(protocol::QueueDeclare {
            queue: q.as_str().into(),
            passive: false,
            durable: persistent,
            exclusive: false,
            auto_delete: false,
            no_wait: false,
            arguments,
        }),
    )
    .await;
    p.method().await;
    let exchange = if shape.exchange { "alloc.direct" } else { "" };
    if shape.exchange {
        p.send(
            1,
            Method::ExchangeDeclare(protocol::ExchangeDeclare {
                exchange: exchange.into(),
                kind: "direct".into(),
                passive: false,
                durable: false,
                auto_delete: false,
                internal: false,
                no_wait: false,
                arguments: protocol::FieldTable::new(),
            }),
        )
        .await;
        p.method().await;
        p.send(
            1,
            Method::from(protocol::QueueBind {
                queue: q.as_str().into(),
                exchange: exchange.into(),
                routing_key: q.as_str().into(),
                no_wait: false,
                arguments: protocol::FieldTable::new(),
            }),
        )
        .await;
        p.method().await;
    }
    let mut c = open(addr).await;
    if ack {
        c.send(
            1,
            Method::BasicQos(protocol::BasicQos {
                prefetch_size: 0,
                prefetch_count: 200,
                global: false,
            }),
        )
        .await;
        c.method().await;
    }
    c.send(
        1,
        Method::BasicConsume(protocol::BasicConsume {
            queue: q.as_str().into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: !ack,
            exclusive: false,
            no_wait: false,
            arguments: protocol::FieldTable::new(),
        }),
    )
    .await;
    c.method().await;

    // One pre-encoded batch of 100 publishes, written again and again: the client allocates nothing per message.
    let headers = shape.header.then(|| {
        let mut h = protocol::FieldTable::new();
        h.insert(
            "x-deduplication-header",
            protocol::FieldValue::LongStr(DEDUP_PLACEHOLDER.into()),
        );
        h
    });
    let id = shape
        .ids
        .then(|| protocol::ShortStr::from_static("00000-00000000000000000001"));
    let props = RawProperties::from_properties(&protocol::BasicProperties {
        delivery_mode: Some(if persistent { 2 } else { 1 }),
        headers,
        message_id: id.clone(),
        correlation_id: id,
        ..Default::default()
    });
    let body = vec![7u8; size];
    let mut batch = BytesMut::new();
    for _ in 0..100 {
        let m = Method::BasicPublish(protocol::BasicPublish {
            exchange: exchange.into(),
            routing_key: q.as_str().into(),
            mandatory: false,
            immediate: false,
        });
        protocol::write_method(&mut batch, 1, &m);
        protocol::write_content(&mut batch, 1, 60, &props, &body, 131072);
    }
    // With unique headers, where each message's value sits in the batch: its 20 digits, numbered 0..100
    // here, then advanced by 100 before each write (a decimal add with carry: a few instructions per
    // message, so that the client adds little to the measured cost).
    let at: Vec<usize> = if shape.header {
        (0..batch.len() - DEDUP_PLACEHOLDER.len())
            .filter(|&i| batch[i..].starts_with(DEDUP_PLACEHOLDER.as_bytes()))
            .map(|i| i + DEDUP_PLACEHOLDER.len() - 20)
            .collect()
    } else {
        Vec::new()
    };
    for (seq, &i) in at.iter().enumerate() {
        let mut v = seq;
        for d in batch[i..i + 20].iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
    }
    let mut ack_buf = BytesMut::with_capacity(64 * 1024);

    let before = allocs();
    let flushes_before = store_flushes();
    let started = Instant::now();
    let publisher = tokio::spawn(async move {
        for _ in 0..n / 100 {
            for &i in &at {
                // + 100: from the hundreds digit up, carrying.
                for d in batch[i..i + 18].iter_mut().rev() {
                    if *d == b'9' {
                        *d = b'0';
                    } else {
                        *d += 1;
                        break;
                    }
                }
            }
            p.s.write_all(&batch).await.unwrap();
        }
        p
    });
    let mut got = 0u64;
    while got < n {
        match c.frame_flushing(&mut ack_buf).await {
            Frame::Method(_, Method::BasicDeliver(d)) => {
                got += 1;
                if ack {
                    protocol::write_method(
                        &mut ack_buf,
                        1,
                        &Method::BasicAck(protocol::BasicAck {
                            delivery_tag: d.delivery_tag,
                            multiple: false,
                        }),
                    );
                }
            }
            _ => continue,
        }
    }
    if !ack_buf.is_empty() {
        c.s.write_all(&ack_buf).await.unwrap();
    }
    let elapsed = started.elapsed();
    let allocs = allocs() - before;
    let rounds = store_flushes() - flushes_before;
    let _p = publisher.await.unwrap();
    let per = allocs as f64 / n as f64;
    println!(
        "{:>5} B {:<10} {:<7}{}{}{}{}: {:>8} messages, {:>10} allocations = {:>5.2} per message ({:.0} msg/s in-process)",
        size,
        if persistent { "persistent" } else { "transient" },
        if ack { "ack" } else { "no-ack" },
        if shape.exchange { " direct-x" } else { "" },
        if shape.header { " +header" } else { "" },
        if shape.dedup_queue { " +dedup-queue" } else { "" },
        if shape.ids { " traced" } else { "" },
        n,
        allocs,
        per,
        n as f64 / elapsed.as_secs_f64()
    );
    if persistent {
        // How many messages a group commit covered sets how far the rounds' own allocations spread:
        // a run's allocations are (allocations per message) × n + (allocations per round) × rounds.
        println!(
            "{:>40} {rounds} flush rounds = {:.1} messages per round",
            "",
            n as f64 / rounds.max(1) as f64
        );
    }
    per
}

/// The broker's store, for its flush-round count (set in `main`).
static STORE: std::sync::OnceLock<storage::Store> = std::sync::OnceLock::new();

fn store_flushes() -> u64 {
    STORE.get().map_or(0, |s| s.stats().flushes)
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
            // Case 7 records every event (a buffer for all, the recorder uncapped): what tracing every
            // message costs in all, hooks and recorder, without drops that depend on scheduling.
            trace: broker::trace::TraceSettings {
                buffer_events: 1 << 20,
                recorder_busy_percent: 100,
                ..Default::default()
            },
            ..Default::default()
        };
        let server = broker::Server::bind(config).await.unwrap();
        let addr = server.local_addr();
        let broker = server.broker.clone();
        let _ = STORE.set(broker.store.clone());
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(server.run(shutdown.clone()));
        let n = std::env::var("ALLOC_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000u64);
        println!("heap allocations per message, broker and client in one process (client allocates nothing per message)");
        // ALLOC_BENCH_CASES picks cases by number (default "123"): 1 = 16 B transient autoack, 2 = 1 KiB
        // transient with acks, 3 = 1 KiB persistent with acks; S2's shape (1 KiB transient with acks, through
        // a named direct exchange, as mailroom-perf) 4 = plain, 5 = every message with a unique
        // x-deduplication-header, 6 = that to a queue with x-message-deduplication: true; 7 = case 2 with a
        // message id and correlation id on every message and tracing on for the vhost (run alone). With one case and two values of
        // ALLOC_BENCH_N under `valgrind --tool=callgrind`, the difference of the instruction totals over the
        // difference of N is the instructions per message (docs/performance.md, "Hot path").
        let cases = std::env::var("ALLOC_BENCH_CASES").unwrap_or_else(|_| "123".into());
        let plain = Shape::default();
        if cases.contains('1') {
            run(addr, n, 16, false, false, plain).await;
        }
        if cases.contains('2') {
            run(addr, n, 1024, false, true, plain).await;
        }
        if cases.contains('3') {
            run(addr, n / 4, 1024, true, true, plain).await;
        }
        let s2 = Shape {
            exchange: true,
            ..plain
        };
        if cases.contains('4') {
            run(addr, n, 1024, false, true, s2).await;
        }
        if cases.contains('5') {
            run(addr, n, 1024, false, true, Shape { header: true, ..s2 }).await;
        }
        if cases.contains('6') {
            let dedup = Shape {
                header: true,
                dedup_queue: true,
                ..s2
            };
            run(addr, n, 1024, false, true, dedup).await;
        }
        if cases.contains('7') {
            broker.set_tracing("/", true).unwrap();
            run(addr, n, 1024, false, true, Shape { ids: true, ..plain }).await;
        }
        shutdown.cancel();
        let _ = handle.await;
    });
}
