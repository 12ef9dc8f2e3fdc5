//! Black-box fuzzer for the running broker (issue 18): real TCP against the real `mailroom` binary.
//!
//! Each case opens a connection, completes a valid handshake (or, now and then, a mutated one), then sends a
//! generated sequence of frames: valid methods of every class in plausible and conflicting orders (the same
//! consume twice, a content header with no method, tune-ok while open, acks of unknown tags, publishes whose
//! bodies overrun or fall short...), then mutated (bit flips, corrupted length fields, truncation, huge sizes,
//! unknown frame types and class/method ids, bad field tables, frames duplicated or swapped), written several
//! frames per write and split across writes. A reader thread drains what the broker answers so it never
//! blocks on us.
//!
//! After every case a separate control connection, open for the whole run, declares a queue, publishes a
//! message and gets it back; it must answer within [`Config::control_limit`]. The broker's RSS is sampled
//! from /proc. A crash (the process exits), a freeze (the control connection or a new connection gets no
//! answer) or a wrong control answer ends the run with a [`Failure`] holding the seed, the case number and the
//! hex bytes of the connection(s) that caused it.
//!
//! Everything derives from one seed: case `i` uses its own generator seeded from (seed, i). Cases share the
//! broker's state (queues, exchanges, bindings left by earlier cases), so `MAILROOM_FUZZ_SEED=S
//! MAILROOM_FUZZ_CASE=i` replays the run from case 0 up to case `i` and stops there.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use protocol::*;
use tokio_util::codec::Decoder;

/// xorshift64*: small, deterministic, good enough to drive a fuzzer.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability 1/n.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }

    /// Up to `max - 1` random bytes.
    pub fn some_bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max) as usize;
        self.bytes(n)
    }
}

/// Run settings, from the environment (see [`Config::from_env`]).
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub duration: Duration,
    /// Stop after this case (replay up to it) instead of after `duration`.
    pub last_case: Option<u64>,
    /// The control connection must answer within this.
    pub control_limit: Duration,
    /// Fail on a control round trip slower than `control_limit` that still completes (else it is counted and
    /// reported, and only no answer at all within `freeze_limit` fails).
    pub strict: bool,
    /// No answer within this is a freeze.
    pub freeze_limit: Duration,
    /// RSS above this fails the run.
    pub max_rss_kib: u64,
}

impl Config {
    /// `MAILROOM_FUZZ_SEED` (decimal or 0x-hex; default fixed), `MAILROOM_FUZZ_SECONDS` (default `default_secs`),
    /// `MAILROOM_FUZZ_CASE` (replay up to that case), `MAILROOM_FUZZ_STRICT=1` (slow control answers fail too).
    pub fn from_env(default_secs: u64) -> Config {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let parse = |s: String| {
            let s = s.trim().to_string();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).expect("hex seed"),
                None => s.parse().expect("numeric value"),
            }
        };
        Config {
            seed: var("MAILROOM_FUZZ_SEED").map(parse).unwrap_or(0x18_5EED),
            duration: Duration::from_secs(var("MAILROOM_FUZZ_SECONDS").map(parse).unwrap_or(default_secs)),
            last_case: var("MAILROOM_FUZZ_CASE").map(parse),
            control_limit: Duration::from_secs(1),
            strict: var("MAILROOM_FUZZ_STRICT").is_some_and(|v| v == "1"),
            freeze_limit: Duration::from_secs(10),
            max_rss_kib: 1 << 20,
        }
    }
}

/// What a run did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub connections: u64,
    pub frames_sent: u64,
    pub bytes_sent: u64,
    pub writes: u64,
    /// Cases the broker ended with connection.close (it noticed something wrong and said so).
    pub closed_by_server: u64,
    pub control_round_trips: u64,
    /// Control round trips slower than the limit that still completed.
    pub slow_controls: u64,
    pub slowest_control: Duration,
    pub rss_start_kib: u64,
    pub rss_max_kib: u64,
    pub rss_end_kib: u64,
    pub elapsed: Duration,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "seed {:#x}: {} connections, {} frames / {} bytes in {} writes, {} closed by the server with \
             connection.close, {} control round trips (slowest {:?}, {} over the limit), RSS {} -> max {} -> {} KiB, \
             {:.0?}",
            self.seed,
            self.connections,
            self.frames_sent,
            self.bytes_sent,
            self.writes,
            self.closed_by_server,
            self.control_round_trips,
            self.slowest_control,
            self.slow_controls,
            self.rss_start_kib,
            self.rss_max_kib,
            self.rss_end_kib,
            self.elapsed
        )
    }
}

/// The bytes of one fuzzed connection, write by write.
#[derive(Debug, Clone, Default)]
pub struct CaseBytes {
    pub case: u64,
    pub writes: Vec<Vec<u8>>,
}

impl CaseBytes {
    pub fn hex(&self) -> String {
        let mut s = String::new();
        for (i, w) in self.writes.iter().enumerate() {
            let _ = write!(s, "  write {i} ({} bytes):", w.len());
            for (j, b) in w.iter().enumerate() {
                if j % 32 == 0 {
                    s.push_str("\n    ");
                }
                let _ = write!(s, "{b:02x}");
            }
            s.push('\n');
        }
        s
    }
}

/// Why a run failed, with what is needed to reproduce it.
#[derive(Debug)]
pub struct Failure {
    pub what: String,
    pub seed: u64,
    pub case: u64,
    /// The connection just before the failure was seen, and the one before it.
    pub culprits: Vec<CaseBytes>,
    pub report: Report,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "broker fuzz FAILED: {}", self.what)?;
        writeln!(
            f,
            "seed {:#x}, case {} (replay: MAILROOM_FUZZ_SEED={:#x} MAILROOM_FUZZ_CASE={} make fuzz-server)",
            self.seed, self.case, self.seed, self.case
        )?;
        writeln!(f, "{}", self.report)?;
        for c in &self.culprits {
            writeln!(
                f,
                "case {} wrote (write 0 is the handshake, protocol header included):\n{}",
                c.case,
                c.hex()
            )?;
        }
        Ok(())
    }
}

// ----------------------------------------------------------------------------------------------- generation

const QUEUES: &[&str] = &["fz-a", "fz-b", "fz-excl", "", "amq.fz", "fuzz-control", "fz-dlq"];
const EXCHANGES: &[&str] = &[
    "",
    "amq.direct",
    "amq.fanout",
    "amq.topic",
    "amq.headers",
    "fz-x",
    "fz-h",
    "nope",
];
const KINDS: &[&str] = &["direct", "fanout", "topic", "headers", "x-bogus", ""];
const TAGS: &[&str] = &["tag-1", "tag-2", ""];
const KEYS: &[&str] = &[
    "x-message-ttl",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-overflow",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-priority",
    "x-single-active-consumer",
    "x-queue-type",
    "x-delivery-limit",
    "x-delayed-retry-min",
    "x-match",
    "x-priority",
    "alternate-exchange",
    "x-death",
    "a",
    "b",
];

fn short(s: &str) -> ShortStr {
    ShortStr::try_from_str(s).unwrap_or_default()
}

fn long(s: &str) -> LongStr {
    LongStr::from(s)
}

/// A field value of any type; nested up to `depth` levels.
fn value(r: &mut Rng, depth: u32) -> FieldValue {
    let max = if depth == 0 { 15 } else { 17 };
    match r.below(max) {
        0 => FieldValue::Bool(r.one_in(2)),
        1 => FieldValue::I8(r.next_u64() as i8),
        2 => FieldValue::U8(r.next_u64() as u8),
        3 => FieldValue::I16(r.next_u64() as i16),
        4 => FieldValue::U16(r.next_u64() as u16),
        5 => {
            let any = r.next_u64() as i32;
            FieldValue::I32(r.pick(&[0, 1, -1, 100, 1000, 60_000, i32::MAX, i32::MIN, any]))
        }
        6 => FieldValue::U32(r.next_u64() as u32),
        7 => {
            let any = r.next_u64() as i64;
            FieldValue::I64(r.pick(&[0, 1, -1, 10, 315_360_000_001, i64::MAX, i64::MIN, any]))
        }
        8 => FieldValue::F32(r.pick(&[0.0, 1.5, f32::NAN, f32::INFINITY])),
        9 => FieldValue::F64(r.pick(&[0.0, -0.0, 2.5, f64::NAN, 1e308])),
        10 => FieldValue::Decimal {
            scale: r.next_u64() as u8,
            value: r.next_u64() as u32,
        },
        11 | 12 => FieldValue::LongStr(long(r.pick(&[
            "",
            "drop-head",
            "reject-publish",
            "reject-publish-dlx",
            "classic",
            "quorum",
            "any",
            "all",
            "bogus",
            "fz-x",
            "7D",
        ]))),
        13 => FieldValue::Bytes(r.some_bytes(8).into()),
        14 => FieldValue::Timestamp(r.next_u64()),
        15 => FieldValue::Array((0..r.below(4)).map(|_| value(r, depth - 1)).collect()),
        _ => FieldValue::Table(table(r, depth - 1)),
    }
}

fn table(r: &mut Rng, depth: u32) -> FieldTable {
    let mut t = FieldTable::new();
    for _ in 0..r.below(4) {
        t.insert(r.pick(KEYS), value(r, depth));
    }
    t
}

/// Tables nested past the decoder's limit of 64.
fn deep_table(n: usize) -> FieldTable {
    let mut t = FieldTable::new();
    t.insert("leaf", FieldValue::Void);
    for _ in 0..n {
        let mut o = FieldTable::new();
        o.insert("t", FieldValue::Table(t));
        t = o;
    }
    t
}

fn args(r: &mut Rng) -> FieldTable {
    if r.one_in(40) {
        return deep_table(60 + r.below(10) as usize);
    }
    if r.one_in(2) {
        FieldTable::new()
    } else {
        table(r, 2)
    }
}

fn properties(r: &mut Rng) -> RawProperties {
    if r.one_in(3) {
        return RawProperties::empty();
    }
    if r.one_in(10) {
        // Raw garbage as properties.
        let n = 2 + r.below(12) as usize;
        return RawProperties::from_bytes(r.bytes(n).into());
    }
    let mut p = BasicProperties::default();
    if r.one_in(2) {
        p.delivery_mode = Some(r.pick(&[1, 2, 0, 7]));
    }
    if r.one_in(3) {
        p.expiration = Some(short(r.pick(&[
            "0",
            "10",
            "60000",
            "",
            "-1",
            "abc",
            "99999999999999999999",
        ])));
    }
    if r.one_in(3) {
        p.priority = Some(r.next_u64() as u8);
    }
    if r.one_in(3) {
        let mut h = table(r, 2);
        if r.one_in(3) {
            // A forged x-death.
            let mut e = FieldTable::new();
            e.insert("queue", FieldValue::LongStr(long("fz-a")));
            e.insert(
                "reason",
                FieldValue::LongStr(long(r.pick(&["expired", "rejected", "maxlen"]))),
            );
            e.insert("count", value(r, 0));
            h.insert("x-death", FieldValue::Array(vec![FieldValue::Table(e)]));
        }
        p.headers = Some(h);
    }
    if r.one_in(6) {
        p.user_id = Some(short(r.pick(&["guest", "mallory"])));
    }
    if r.one_in(6) {
        p.reply_to = Some(short("amq.rabbitmq.reply-to"));
    }
    RawProperties::from_properties(&p)
}

/// One generated frame (kept apart so mutations can work frame by frame).
struct Gen<'a> {
    r: &'a mut Rng,
    frames: Vec<Vec<u8>>,
    frame_max: u32,
}

fn push_method(frames: &mut Vec<Vec<u8>>, ch: u16, m: Method) {
    let mut b = BytesMut::new();
    write_method(&mut b, ch, &m);
    frames.push(b.to_vec());
}

fn push_header(frames: &mut Vec<Vec<u8>>, ch: u16, class_id: u16, body_size: u64, props: &RawProperties) {
    let mut b = BytesMut::new();
    Frame::Header(ch, ContentHeader::new(class_id, body_size, props.clone())).encode(&mut b);
    frames.push(b.to_vec());
}

fn push_body(frames: &mut Vec<Vec<u8>>, ch: u16, data: &[u8]) {
    let mut b = BytesMut::new();
    Frame::Body(ch, bytes::Bytes::copy_from_slice(data)).encode(&mut b);
    frames.push(b.to_vec());
}

impl Gen<'_> {
    fn method(&mut self, ch: u16, m: Method) {
        push_method(&mut self.frames, ch, m);
    }

    fn content(&mut self, ch: u16) {
        let r = &mut *self.r;
        let len = match r.below(10) {
            0 => 0,
            1 => 5000 + r.below(300_000) as usize,
            _ => r.below(64) as usize,
        };
        let props = properties(r);
        let declared = match r.below(12) {
            0 => len as u64 + 1 + r.below(10),
            1 => (len as u64).saturating_sub(1),
            2 => r.pick(&[u64::MAX, 512 << 20, (512 << 20) + 1, 128 << 20]),
            _ => len as u64,
        };
        let class_id = if r.one_in(20) {
            r.next_u64() as u16
        } else {
            CLASS_BASIC
        };
        push_header(&mut self.frames, ch, class_id, declared, &props);
        let chunk = if self.frame_max == 0 {
            usize::MAX
        } else {
            (self.frame_max - 8) as usize
        };
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        for piece in data.chunks(chunk.max(1)) {
            push_body(&mut self.frames, ch, piece);
        }
    }

    /// One step of a plausible (often conflicting) client session on channel `ch`.
    fn step(&mut self, ch: u16) {
        // Mostly steps a client could mean (0..30), with the plainly wrong ones (30..40) one time in six.
        let k = match self.r.below(60) {
            k @ 0..=39 => k,
            k => k % 30,
        };
        if (15..=21).contains(&k) {
            let r = &mut *self.r;
            let m = Method::BasicPublish(BasicPublish {
                exchange: short(r.pick(EXCHANGES)),
                routing_key: short(r.pick(QUEUES)),
                mandatory: r.one_in(3),
                immediate: r.one_in(15),
            });
            let with_content = !r.one_in(15);
            self.method(ch, m);
            if with_content {
                self.content(ch);
            }
            return;
        }
        let frame_max = self.frame_max;
        let r = &mut *self.r;
        let frames = &mut self.frames;
        let q = short(r.pick(QUEUES));
        let x = short(r.pick(EXCHANGES));
        let tag = short(r.pick(TAGS));
        let flag = |r: &mut Rng| r.one_in(3);
        match k {
            0..=3 => {
                let m = Method::QueueDeclare(QueueDeclare {
                    queue: q,
                    passive: r.one_in(6),
                    durable: flag(r),
                    exclusive: flag(r),
                    auto_delete: flag(r),
                    no_wait: r.one_in(5),
                    arguments: args(r),
                });
                push_method(frames, ch, m);
            }
            4 | 5 => {
                let m = Method::ExchangeDeclare(ExchangeDeclare {
                    exchange: x,
                    kind: short(r.pick(KINDS)),
                    passive: r.one_in(6),
                    durable: flag(r),
                    auto_delete: flag(r),
                    internal: r.one_in(8),
                    no_wait: r.one_in(5),
                    arguments: args(r),
                });
                push_method(frames, ch, m);
            }
            6 | 7 => {
                let m = Method::from(QueueBind {
                    queue: q,
                    exchange: x,
                    routing_key: short(r.pick(&["", "fz-a", "#", "a.*.c", "fz-b"])),
                    no_wait: r.one_in(5),
                    arguments: args(r),
                });
                push_method(frames, ch, m);
            }
            8 => {
                let m = Method::from(QueueUnbind {
                    queue: q,
                    exchange: x,
                    routing_key: short("fz-a"),
                    arguments: args(r),
                });
                push_method(frames, ch, m);
            }
            9 => {
                let m = Method::from(ExchangeBind {
                    destination: x,
                    source: short(r.pick(EXCHANGES)),
                    routing_key: short("k"),
                    no_wait: r.one_in(5),
                    arguments: args(r),
                });
                push_method(frames, ch, m);
            }
            10..=13 => {
                let m = Method::BasicConsume(BasicConsume {
                    queue: q,
                    consumer_tag: tag,
                    no_local: r.one_in(8),
                    no_ack: flag(r),
                    exclusive: r.one_in(5),
                    no_wait: r.one_in(5),
                    arguments: args(r),
                });
                push_method(frames, ch, m);
            }
            14 => {
                let m = Method::BasicCancel(BasicCancel {
                    consumer_tag: tag,
                    no_wait: r.one_in(4),
                });
                push_method(frames, ch, m);
            }
            22 => {
                let m = Method::BasicGet(BasicGet {
                    queue: q,
                    no_ack: flag(r),
                });
                push_method(frames, ch, m);
            }
            23 | 24 => {
                let tag = r.pick(&[0, 1, 2, 3, 100, u64::MAX]);
                let m = match r.below(3) {
                    0 => Method::BasicAck(BasicAck {
                        delivery_tag: tag,
                        multiple: flag(r),
                    }),
                    1 => Method::BasicNack(BasicNack {
                        delivery_tag: tag,
                        multiple: flag(r),
                        requeue: flag(r),
                    }),
                    _ => Method::BasicReject(BasicReject {
                        delivery_tag: tag,
                        requeue: flag(r),
                    }),
                };
                push_method(frames, ch, m);
            }
            25 => {
                let m = Method::BasicQos(BasicQos {
                    prefetch_size: if r.one_in(5) { 1 } else { 0 },
                    prefetch_count: r.pick(&[0, 1, 10, u16::MAX]),
                    global: flag(r),
                });
                push_method(frames, ch, m);
            }
            26 => {
                let m = match r.below(4) {
                    0 => Method::BasicRecover(BasicRecover { requeue: flag(r) }),
                    1 => Method::BasicRecoverAsync(BasicRecoverAsync { requeue: flag(r) }),
                    2 => Method::ChannelFlow(ChannelFlow { active: flag(r) }),
                    _ => Method::AccessRequest(AccessRequest::default()),
                };
                push_method(frames, ch, m);
            }
            27 => {
                let m = match r.below(4) {
                    0 => Method::TxSelect(TxSelect),
                    1 => Method::TxCommit(TxCommit),
                    2 => Method::TxRollback(TxRollback),
                    _ => Method::ConfirmSelect(ConfirmSelect { no_wait: r.one_in(3) }),
                };
                push_method(frames, ch, m);
            }
            28 => {
                let m = match r.below(3) {
                    0 => Method::QueuePurge(QueuePurge {
                        queue: q,
                        no_wait: false,
                    }),
                    1 => Method::QueueDelete(QueueDelete {
                        queue: q,
                        if_unused: flag(r),
                        if_empty: flag(r),
                        no_wait: false,
                    }),
                    _ => Method::ExchangeDelete(ExchangeDelete {
                        exchange: x,
                        if_unused: flag(r),
                        no_wait: false,
                    }),
                };
                push_method(frames, ch, m);
            }
            29 => {
                // Channel lifecycle, on this or another channel (past channel_max too).
                let other = r.pick(&[ch, 2, 3, 2047, 2048, u16::MAX]);
                let m = match r.below(4) {
                    0 => Method::ChannelOpen(ChannelOpen),
                    1 => Method::ChannelClose(ChannelClose {
                        reply_code: 200,
                        reply_text: short("bye"),
                        class_id: 0,
                        method_id: 0,
                    }),
                    2 => Method::ChannelCloseOk(ChannelCloseOk),
                    _ => Method::ChannelOpenOk(ChannelOpenOk),
                };
                push_method(frames, other, m);
            }
            30 => {
                // Connection methods while open (tune-ok and start-ok are errors; close is fine).
                let m = match r.below(7) {
                    0 => Method::ConnectionTuneOk(ConnectionTuneOk {
                        channel_max: 2047,
                        frame_max: 131_072,
                        heartbeat: 0,
                    }),
                    1 => Method::from(ConnectionStartOk::default()),
                    2 => Method::ConnectionOpen(ConnectionOpen {
                        virtual_host: short("/"),
                    }),
                    3 => Method::ConnectionUpdateSecret(ConnectionUpdateSecret {
                        new_secret: long("s"),
                        reason: short("r"),
                    }),
                    4 => Method::ConnectionBlocked(ConnectionBlocked { reason: short("x") }),
                    5 => Method::ConnectionCloseOk(ConnectionCloseOk),
                    _ => Method::ConnectionClose(ConnectionClose {
                        reply_code: 200,
                        reply_text: short("bye"),
                        class_id: 0,
                        method_id: 0,
                    }),
                };
                let on = if r.one_in(4) { ch } else { 0 };
                push_method(frames, on, m);
            }
            31 => {
                // Content with no method before it, or a body with no header.
                let props = properties(r);
                if r.one_in(2) {
                    push_header(frames, ch, CLASS_BASIC, 1, &props);
                }
                push_body(frames, ch, b"x");
            }
            32 => {
                // Heartbeats, on channel 0 and elsewhere; one with a payload.
                let mut b = BytesMut::new();
                let on = if r.one_in(3) { ch } else { 0 };
                b.put_u8(FRAME_HEARTBEAT);
                b.put_u16(on);
                if r.one_in(4) {
                    b.put_u32(1);
                    b.put_u8(0);
                } else {
                    b.put_u32(0);
                }
                b.put_u8(FRAME_END);
                frames.push(b.to_vec());
            }
            33 => {
                // Unknown class/method ids with some arguments.
                let (c, m) = match r.below(3) {
                    0 => (r.pick(&[10u16, 20, 40, 50, 60, 85, 90]), r.next_u64() as u16),
                    1 => (r.next_u64() as u16, r.next_u64() as u16),
                    _ => (60, 99),
                };
                let mut b = BytesMut::new();
                b.put_u8(FRAME_METHOD);
                b.put_u16(ch);
                let extra = r.some_bytes(12);
                b.put_u32(4 + extra.len() as u32);
                b.put_u16(c);
                b.put_u16(m);
                b.put_slice(&extra);
                b.put_u8(FRAME_END);
                frames.push(b.to_vec());
            }
            34 => {
                // A frame announcing a huge or just-too-big payload, or of an unknown type.
                let mut b = BytesMut::new();
                b.put_u8(r.pick(&[FRAME_METHOD, FRAME_HEADER, FRAME_BODY, 0, 4, 9, 0xff]));
                b.put_u16(ch);
                let size = match r.below(4) {
                    0 => u32::MAX,
                    1 => frame_max.wrapping_sub(7),
                    2 => frame_max.saturating_add(1),
                    _ => 1 << 30,
                };
                b.put_u32(size);
                b.put_slice(&r.some_bytes(32));
                frames.push(b.to_vec());
            }
            35 => {
                // A method whose table is malformed: good frame, bad arguments.
                let mut b = BytesMut::new();
                let mut payload = Method::QueueDeclare(QueueDeclare {
                    queue: short("fz-a"),
                    arguments: table(r, 1),
                    ..Default::default()
                })
                .to_bytes()
                .to_vec();
                let n = payload.len();
                let i = 4 + r.below((n - 4) as u64) as usize;
                payload[i] = r.pick(&[b'Z', 0xff, 0x7f, b'A', b'F', 0]);
                b.put_u8(FRAME_METHOD);
                b.put_u16(ch);
                b.put_u32(payload.len() as u32);
                b.put_slice(&payload);
                b.put_u8(FRAME_END);
                frames.push(b.to_vec());
            }
            _ => {
                // Raw garbage.
                let n = 1 + r.below(24) as usize;
                let g = r.bytes(n);
                frames.push(g);
            }
        }
    }
}

/// Mutates the frames in place: bit flips, corrupted lengths, truncation, duplication, swaps.
fn mutate(r: &mut Rng, frames: &mut Vec<Vec<u8>>) {
    if frames.is_empty() {
        return;
    }
    for _ in 0..r.below(4) {
        let i = r.below(frames.len() as u64) as usize;
        match r.below(8) {
            0 | 1 => {
                // Bit flips.
                let f = &mut frames[i];
                if !f.is_empty() {
                    for _ in 0..1 + r.below(3) {
                        let j = r.below(f.len() as u64) as usize;
                        f[j] ^= 1 << r.below(8);
                    }
                }
            }
            2 => {
                // Corrupt the payload length field.
                let f = &mut frames[i];
                if f.len() >= 7 {
                    let old = u32::from_be_bytes([f[3], f[4], f[5], f[6]]);
                    let new = match r.below(4) {
                        0 => old.wrapping_add(1),
                        1 => old.wrapping_sub(1),
                        2 => old ^ (1 << r.below(32)),
                        _ => r.next_u64() as u32,
                    };
                    f[3..7].copy_from_slice(&new.to_be_bytes());
                }
            }
            3 => {
                // Truncate.
                let f = &mut frames[i];
                let n = r.below(f.len() as u64 + 1) as usize;
                f.truncate(n);
            }
            4 => {
                // Duplicate (the same consume twice, the same publish twice...).
                let f = frames[i].clone();
                frames.insert(i, f);
            }
            5 => {
                // Swap with a neighbour: methods out of order, body before header.
                let j = (i + 1).min(frames.len() - 1);
                frames.swap(i, j);
            }
            6 => {
                // Change the channel.
                let f = &mut frames[i];
                if f.len() >= 3 {
                    let ch: u16 = r.pick(&[0, 1, 2, 5, 2047, 65535]);
                    f[1..3].copy_from_slice(&ch.to_be_bytes());
                }
            }
            _ => {
                // Drop a frame.
                frames.remove(i);
                if frames.is_empty() {
                    return;
                }
            }
        }
    }
}

/// How the handshake went and what one case sends afterwards.
struct Plan {
    /// The handshake bytes (protocol header included) and whether they are the valid ones.
    handshake: Vec<u8>,
    valid_handshake: bool,
    frame_max: u32,
    /// The frames after the handshake.
    frames: Vec<Vec<u8>>,
    /// Byte offsets where writes end (each write holds several frames or part of one).
    writes: Vec<Vec<u8>>,
    /// Pause between writes now and then (so they arrive as separate reads).
    pause_every: u64,
    /// Close politely at the end (connection.close), else just drop the socket.
    polite_close: bool,
}

fn handshake(r: &mut Rng) -> (Vec<u8>, bool, u32) {
    let mut b = BytesMut::new();
    b.put_slice(&PROTOCOL_HEADER);
    let frame_max = r.pick(&[131_072, 131_072, 131_072, 4096, 65_536]);
    let mut start_ok = ConnectionStartOk {
        client_properties: FieldTable::new(),
        mechanism: short("PLAIN"),
        response: LongStr::from(b"\0guest\0guest".to_vec()),
        locale: short("en_US"),
    };
    let mut tune_ok = ConnectionTuneOk {
        channel_max: 2047,
        frame_max,
        heartbeat: 0,
    };
    let mut open = ConnectionOpen {
        virtual_host: short("/"),
    };
    let mut valid = true;
    if r.one_in(8) {
        valid = false;
        match r.below(8) {
            0 => start_ok.mechanism = short(r.pick(&["AMQPLAIN", "EXTERNAL", ""])),
            1 => start_ok.response = LongStr::from(r.some_bytes(16)),
            2 => tune_ok.frame_max = r.pick(&[0, 1, 4095, 131_073, u32::MAX]),
            3 => tune_ok.channel_max = r.pick(&[0, 2048, u16::MAX]),
            4 => tune_ok.heartbeat = r.pick(&[1, u16::MAX]),
            5 => open.virtual_host = short(r.pick(&["", "nope", "//"])),
            6 => start_ok.client_properties = table(r, 3),
            _ => {
                let mut t = FieldTable::new();
                t.insert("LOGIN", FieldValue::LongStr(long("guest")));
                t.insert("PASSWORD", FieldValue::LongStr(long("guest")));
                let mut body = BytesMut::new();
                t.encode(&mut body);
                start_ok.mechanism = short("AMQPLAIN");
                start_ok.response = LongStr::from(body[4..].to_vec());
                valid = true;
            }
        }
    }
    write_method(&mut b, 0, &Method::from(start_ok));
    write_method(&mut b, 0, &Method::ConnectionTuneOk(tune_ok));
    write_method(&mut b, 0, &Method::ConnectionOpen(open));
    let mut bytes = b.to_vec();
    if !valid && r.one_in(3) {
        let n = bytes.len();
        let i = 8 + r.below((n - 8) as u64) as usize;
        bytes[i] ^= 1 << r.below(8);
    }
    (bytes, valid, frame_max)
}

fn plan(r: &mut Rng) -> Plan {
    let (handshake, valid_handshake, frame_max) = handshake(r);
    let mut g = Gen {
        r,
        frames: Vec::new(),
        frame_max,
    };
    // Channels 1 and (often) 2 open first, as clients do.
    g.method(1, Method::ChannelOpen(ChannelOpen));
    if g.r.one_in(2) {
        g.method(2, Method::ChannelOpen(ChannelOpen));
    }
    let long_case = g.r.one_in(4);
    let n = 1 + g.r.below(if long_case { 60 } else { 12 });
    for _ in 0..n {
        let ch = if g.r.one_in(4) { 2 } else { 1 };
        g.step(ch);
    }
    let mut frames = g.frames;
    if r.one_in(2) {
        mutate(r, &mut frames);
    }
    // Split into writes: everything in one, frame by frame, or at random byte offsets.
    let all: Vec<u8> = frames.concat();
    let mut writes = Vec::new();
    match r.below(4) {
        0 => writes.push(all),
        1 => writes.extend(frames.iter().filter(|f| !f.is_empty()).cloned()),
        _ => {
            let mut at = 0;
            while at < all.len() {
                let small = r.one_in(3);
                let n = 1 + r.below(if small { 8 } else { 600 }) as usize;
                let end = (at + n).min(all.len());
                writes.push(all[at..end].to_vec());
                at = end;
            }
        }
    }
    Plan {
        handshake,
        valid_handshake,
        frame_max,
        frames,
        writes,
        pause_every: r.pick(&[0, 0, 1, 3]),
        polite_close: r.one_in(3),
    }
}

// ----------------------------------------------------------------------------------------------- I/O

/// A minimal blocking client for the control connection and handshakes; every failure is an `Err`.
pub struct Wire {
    stream: TcpStream,
    buf: BytesMut,
    codec: FrameCodec,
}

impl Wire {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Wire, String> {
        let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect: {e}"))?;
        stream.set_nodelay(true).ok();
        stream.set_read_timeout(Some(timeout)).ok();
        stream.set_write_timeout(Some(timeout)).ok();
        let mut codec = FrameCodec::new();
        codec.set_max_frame_size(0);
        Ok(Wire {
            stream,
            buf: BytesMut::new(),
            codec,
        })
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream.write_all(bytes).map_err(|e| format!("write: {e}"))
    }

    fn send_method(&mut self, ch: u16, m: &Method) -> Result<(), String> {
        let mut b = BytesMut::new();
        write_method(&mut b, ch, m);
        self.send(&b)
    }

    /// The next frame before `deadline`.
    fn frame(&mut self, deadline: Instant) -> Result<Frame, String> {
        loop {
            match self.codec.decode(&mut self.buf) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(format!("undecodable frame from the server: {e}")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err("no answer in time".into());
            }
            self.stream.set_read_timeout(Some(left)).ok();
            let mut chunk = [0u8; 16384];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err("connection closed by the server".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err("no answer in time".into())
                }
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// The next method on any channel (heartbeats skipped; content frames returned as errors).
    fn method(&mut self, deadline: Instant) -> Result<(u16, Method), String> {
        loop {
            match self.frame(deadline)? {
                Frame::Heartbeat(_) => continue,
                Frame::Method(ch, m) => return Ok((ch, m)),
                f => return Err(format!("expected a method, got {f:?}")),
            }
        }
    }

    /// Sends the handshake (one write) and waits for connection.open-ok.
    fn open(addr: SocketAddr, within: Duration) -> Result<Wire, String> {
        let mut w = Wire::connect(addr, within)?;
        let deadline = Instant::now() + within;
        let mut b = BytesMut::new();
        b.put_slice(&PROTOCOL_HEADER);
        write_method(
            &mut b,
            0,
            &Method::from(ConnectionStartOk {
                client_properties: FieldTable::new(),
                mechanism: short("PLAIN"),
                response: LongStr::from(b"\0guest\0guest".to_vec()),
                locale: short("en_US"),
            }),
        );
        write_method(
            &mut b,
            0,
            &Method::ConnectionTuneOk(ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            }),
        );
        write_method(
            &mut b,
            0,
            &Method::ConnectionOpen(ConnectionOpen {
                virtual_host: short("/"),
            }),
        );
        write_method(&mut b, 1, &Method::ChannelOpen(ChannelOpen));
        w.send(&b)?;
        loop {
            match w.method(deadline)? {
                (1, Method::ChannelOpenOk(_)) => return Ok(w),
                (0, Method::ConnectionClose(c)) => {
                    return Err(format!("handshake refused: {} {}", c.reply_code, c.reply_text))
                }
                _ => continue,
            }
        }
    }
}

/// The control connection: declare, publish, get, all answered within the limit.
struct Control {
    wire: Wire,
    n: u64,
}

impl Control {
    fn open(addr: SocketAddr, within: Duration) -> Result<Control, String> {
        Ok(Control {
            wire: Wire::open(addr, within)?,
            n: 0,
        })
    }

    /// One round trip; returns how long it took.
    fn round_trip(&mut self, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let deadline = start + within;
        self.n += 1;
        let body = format!("control {}", self.n);
        let mut b = BytesMut::new();
        write_method(
            &mut b,
            1,
            &Method::QueueDeclare(QueueDeclare {
                queue: short("fuzz-control-q"),
                auto_delete: false,
                ..Default::default()
            }),
        );
        write_method_with_content(
            &mut b,
            1,
            &Method::BasicPublish(BasicPublish {
                exchange: short(""),
                routing_key: short("fuzz-control-q"),
                mandatory: false,
                immediate: false,
            }),
            &RawProperties::empty(),
            body.as_bytes(),
            131_072,
        );
        write_method(
            &mut b,
            1,
            &Method::BasicGet(BasicGet {
                queue: short("fuzz-control-q"),
                no_ack: true,
            }),
        );
        self.wire.send(&b)?;
        match self.wire.method(deadline)? {
            (1, Method::QueueDeclareOk(_)) => {}
            other => return Err(format!("control: expected queue.declare-ok, got {other:?}")),
        }
        // A fuzzed connection may have published to this queue too: skip messages that are not ours.
        loop {
            match self.wire.method(deadline)? {
                (1, Method::BasicGetOk(_)) => {
                    let header = match self.wire.frame(deadline)? {
                        Frame::Header(1, h) => h,
                        f => return Err(format!("control: expected a content header, got {f:?}")),
                    };
                    let mut got = Vec::new();
                    while (got.len() as u64) < header.body_size {
                        match self.wire.frame(deadline)? {
                            Frame::Body(1, b) => got.extend_from_slice(&b),
                            f => return Err(format!("control: expected a body frame, got {f:?}")),
                        }
                    }
                    if got == body.as_bytes() {
                        return Ok(start.elapsed());
                    }
                    // Someone else's message: get again.
                    self.wire.send_method(
                        1,
                        &Method::BasicGet(BasicGet {
                            queue: short("fuzz-control-q"),
                            no_ack: true,
                        }),
                    )?;
                }
                (1, Method::BasicGetEmpty(_)) => {
                    return Err("control: the message just published is gone".into())
                }
                other => return Err(format!("control: expected basic.get-ok, got {other:?}")),
            }
        }
    }
}

/// The broker's resident set size in KiB, from /proc.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            // The state follows the parenthesised command name.
            let state = s.rsplit(')').next().and_then(|t| t.split_whitespace().next());
            !matches!(state, Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

/// Runs one case: returns its bytes and whether the server closed it with connection.close.
fn run_case(
    addr: SocketAddr,
    seed: u64,
    case: u64,
    report: &mut Report,
) -> Result<(CaseBytes, bool), (String, CaseBytes)> {
    let mut r = Rng::new(seed ^ case.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let p = plan(&mut r);
    let mut bytes = CaseBytes {
        case,
        writes: vec![p.handshake.clone()],
    };
    let stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return Err((format!("connect failed: {e}"), bytes)),
    };
    stream.set_nodelay(true).ok();
    stream.set_write_timeout(Some(Duration::from_secs(10))).ok();
    // Drain what the broker sends on another thread so it never blocks writing to us.
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let mut s = stream.try_clone().expect("clone socket");
        s.set_read_timeout(Some(Duration::from_millis(100))).ok();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut chunk = vec![0u8; 65536];
            let mut eof = false;
            loop {
                match s.read(&mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => all.extend_from_slice(&chunk[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if done.load(Ordering::Relaxed) {
                            break;
                        }
                    }
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            (all, eof)
        })
    };
    let mut s = stream;
    let mut ok = s.write_all(&p.handshake).is_ok();
    report.writes += 1;
    report.bytes_sent += p.handshake.len() as u64;
    if ok && p.valid_handshake && r.one_in(2) {
        // Give the handshake time to complete before the fuzz (else it is pipelined with it).
        std::thread::sleep(Duration::from_millis(2));
    }
    for (i, w) in p.writes.iter().enumerate() {
        if !ok {
            break;
        }
        if p.pause_every > 0 && (i as u64).is_multiple_of(p.pause_every) {
            std::thread::sleep(Duration::from_micros(300));
        }
        ok = s.write_all(w).is_ok();
        report.writes += 1;
        report.bytes_sent += w.len() as u64;
        bytes.writes.push(w.clone());
    }
    report.frames_sent += p.frames.len() as u64;
    if ok && p.polite_close {
        let mut b = BytesMut::new();
        write_method(
            &mut b,
            0,
            &Method::ConnectionClose(ConnectionClose {
                reply_code: 200,
                reply_text: short("bye"),
                class_id: 0,
                method_id: 0,
            }),
        );
        if s.write_all(&b).is_ok() {
            bytes.writes.push(b.to_vec());
        }
    }
    // Let the broker work through what it got (it answers or closes), then hang up.
    std::thread::sleep(Duration::from_millis(if p.frame_max == 4096 { 5 } else { 10 }));
    done.store(true, Ordering::Relaxed);
    let _ = s.shutdown(Shutdown::Both);
    let (answer, _eof) = reader.join().unwrap_or_default();
    // Did the broker close the connection with connection.close? (Its answer must always decode.)
    let mut codec = FrameCodec::new();
    codec.set_max_frame_size(0);
    let mut buf = BytesMut::from(&answer[..]);
    let mut closed = false;
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(Frame::Method(0, Method::ConnectionClose(_)))) => closed = true,
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => return Err((format!("the broker sent an undecodable frame: {e}"), bytes)),
        }
    }
    Ok((bytes, closed))
}

/// Runs the fuzzer against a broker at `addr` (process `pid`) for `cfg.duration`.
pub fn run(addr: SocketAddr, pid: u32, cfg: &Config) -> Result<Report, Box<Failure>> {
    let started = Instant::now();
    let mut report = Report {
        seed: cfg.seed,
        rss_start_kib: rss_kib(pid).unwrap_or(0),
        ..Default::default()
    };
    let fail = |what: String, case: u64, culprits: Vec<CaseBytes>, report: &Report| {
        Box::new(Failure {
            what,
            seed: cfg.seed,
            case,
            culprits,
            report: report.clone(),
        })
    };
    let mut control = Control::open(addr, cfg.freeze_limit)
        .map_err(|e| fail(format!("control connection: {e}"), 0, Vec::new(), &report))?;
    let mut previous: Option<CaseBytes> = None;
    for case in 0.. {
        let done = match cfg.last_case {
            Some(last) => case > last,
            None => started.elapsed() >= cfg.duration,
        };
        if done {
            break;
        }
        let culprits = |this: Option<&CaseBytes>, prev: &Option<CaseBytes>| {
            this.into_iter().cloned().chain(prev.clone()).collect::<Vec<_>>()
        };
        let this = match run_case(addr, cfg.seed, case, &mut report) {
            Ok((b, closed)) => {
                report.closed_by_server += u64::from(closed);
                b
            }
            Err((what, b)) => return Err(fail(what, case, culprits(Some(&b), &previous), &report)),
        };
        report.connections += 1;
        if !alive(pid) {
            return Err(fail(
                "the broker process exited (crash)".into(),
                case,
                culprits(Some(&this), &previous),
                &report,
            ));
        }
        match control.round_trip(cfg.freeze_limit) {
            Ok(took) => {
                report.control_round_trips += 1;
                report.slowest_control = report.slowest_control.max(took);
                if took > cfg.control_limit {
                    report.slow_controls += 1;
                    if cfg.strict {
                        return Err(fail(
                            format!("control round trip took {took:?} (limit {:?})", cfg.control_limit),
                            case,
                            culprits(Some(&this), &previous),
                            &report,
                        ));
                    }
                }
            }
            Err(e) => {
                let what = if alive(pid) {
                    format!("control connection failed (freeze?): {e}")
                } else {
                    format!("the broker process exited (crash); control: {e}")
                };
                return Err(fail(what, case, culprits(Some(&this), &previous), &report));
            }
        }
        if case % 16 == 0 {
            // A brand-new connection must be served too (a frozen broker never sends connection.start).
            if let Err(e) = Wire::open(addr, cfg.freeze_limit) {
                return Err(fail(
                    format!("a new connection was not served: {e}"),
                    case,
                    culprits(Some(&this), &previous),
                    &report,
                ));
            }
            if let Some(rss) = rss_kib(pid) {
                report.rss_max_kib = report.rss_max_kib.max(rss);
                if rss > cfg.max_rss_kib {
                    return Err(fail(
                        format!("broker RSS {rss} KiB over {} KiB", cfg.max_rss_kib),
                        case,
                        culprits(Some(&this), &previous),
                        &report,
                    ));
                }
            }
        }
        previous = Some(this);
    }
    report.rss_end_kib = rss_kib(pid).unwrap_or(0);
    report.rss_max_kib = report.rss_max_kib.max(report.rss_end_kib);
    report.elapsed = started.elapsed();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_are_deterministic_per_seed_and_case() {
        let a = plan(&mut Rng::new(7));
        let b = plan(&mut Rng::new(7));
        assert_eq!(a.writes, b.writes);
        assert_eq!(a.handshake, b.handshake);
        let c = plan(&mut Rng::new(8));
        assert_ne!(a.writes, c.writes);
    }

    #[test]
    fn hex_dump_lists_every_write() {
        let c = CaseBytes {
            case: 3,
            writes: vec![vec![0x01, 0xce], vec![0xff]],
        };
        let h = c.hex();
        assert!(h.contains("write 0 (2 bytes)") && h.contains("01ce") && h.contains("write 1 (1 bytes)"));
    }
}
