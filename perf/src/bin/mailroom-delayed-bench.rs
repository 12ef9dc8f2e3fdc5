//! mailroom-delayed-bench: measures delayed delivery through an `x-delayed-message` exchange
//! (issue 15's targets: many delayed messages held on disk; each delivered within 100 ms of its due time
//! when the broker is not overloaded; ≥ 100 k msg/s released when many fall due together).
//!
//! Phase 1 (hold and burst): publishes `--count` messages with publisher confirms, all due at the same
//! moment (`--hold` seconds after the start), reports the publish rate and, with `--broker-pid` and
//! `--data-dir`, the broker's RSS and data size while they are held; then polls the queue's message count
//! (passive declare every 10 ms) and reports how fast they were released into it.
//!
//! Phase 2 (latency): a consumer is attached, `--latency-count` messages are published at `--latency-rate`
//! msg/s with delays spread over 0..`--latency-spread` seconds; each body carries its due time, so the
//! consumer measures delivery time − due time (same host clock). Reports p50/p99/max and the share
//! delivered within 100 ms.
//!
//! Example (docs/performance.md): `target/release/mailroom-delayed-bench --uri amqp://guest:guest@127.0.0.1:5681/%2f
//! --count 1000000 --broker-pid $(pgrep -n mailroom) --data-dir /tmp/d`

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use mailroom_perf::amqp::{Conn, CH};
use mailroom_perf::uri::AmqpUri;
use protocol::{
    write_content, write_method, BasicConsume, BasicProperties, BasicPublish, ConfirmSelect, ExchangeDeclare,
    FieldTable, FieldValue, Frame, Method, QueueBind, QueueDeclare, QueuePurge, RawProperties, ShortStr,
    CLASS_BASIC,
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    uri: String,
    /// Messages held in phase 1.
    #[arg(long, default_value_t = 1_000_000)]
    count: u64,
    /// Body size (at least 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds from the start of phase 1 until every message of phase 1 is due.
    #[arg(long, default_value_t = 120)]
    hold: u64,
    /// Unconfirmed publishes allowed in flight.
    #[arg(long, default_value_t = 2000)]
    window: u64,
    /// Messages of phase 2 (0 skips it).
    #[arg(long, default_value_t = 20_000)]
    latency_count: u64,
    /// Publish rate of phase 2 (msg/s).
    #[arg(long, default_value_t = 2_000)]
    latency_rate: u64,
    /// Delays of phase 2 are spread over 0..this many seconds.
    #[arg(long, default_value_t = 10)]
    latency_spread: u64,
    /// The broker's pid (RSS while messages are held).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// The broker's data directory (its size while messages are held).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

const EXCHANGE: &str = "mailroom-delayed-bench";
const QUEUE: &str = "mailroom-delayed-bench-q";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn dir_bytes(p: &std::path::Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => n += dir_bytes(&e.path()),
                Ok(m) => n += m.len(),
                Err(_) => {}
            }
        }
    }
    n
}

fn props_with_delay(delay_ms: i64) -> RawProperties {
    let mut h = FieldTable::new();
    h.insert("x-delay", FieldValue::I64(delay_ms));
    RawProperties::from_properties(&BasicProperties {
        delivery_mode: Some(2),
        headers: Some(h),
        ..BasicProperties::default()
    })
}

async fn setup(uri: &AmqpUri) -> anyhow::Result<Conn> {
    let mut c = Conn::open(uri, "delayed-bench-setup", None).await?;
    let mut args = FieldTable::new();
    args.insert("x-delayed-type", FieldValue::LongStr("direct".into()));
    c.rpc(Method::ExchangeDeclare(ExchangeDeclare {
        exchange: ShortStr::try_from_str(EXCHANGE)?,
        kind: "x-delayed-message".into(),
        durable: true,
        arguments: args,
        ..Default::default()
    }))
    .await
    .context("declaring the x-delayed-message exchange")?;
    c.rpc(Method::QueueDeclare(QueueDeclare {
        queue: ShortStr::try_from_str(QUEUE)?,
        durable: true,
        ..Default::default()
    }))
    .await?;
    c.rpc(Method::from(QueueBind {
        queue: ShortStr::try_from_str(QUEUE)?,
        exchange: ShortStr::try_from_str(EXCHANGE)?,
        routing_key: "k".into(),
        ..Default::default()
    }))
    .await?;
    c.rpc(Method::QueuePurge(QueuePurge {
        queue: ShortStr::try_from_str(QUEUE)?,
        no_wait: false,
    }))
    .await?;
    Ok(c)
}

async fn queue_count(c: &mut Conn) -> anyhow::Result<u64> {
    match c
        .rpc(Method::QueueDeclare(QueueDeclare {
            queue: ShortStr::try_from_str(QUEUE)?,
            passive: true,
            ..Default::default()
        }))
        .await?
    {
        Method::QueueDeclareOk(ok) => Ok(ok.message_count as u64),
        other => bail!("unexpected reply {other:?}"),
    }
}

/// Publishes `n` messages with confirms; `due_of(i)` gives each one's absolute due time (ms).
async fn publish_confirmed(
    uri: &AmqpUri,
    n: u64,
    size: usize,
    window: u64,
    rate: Option<u64>,
    due_of: impl Fn(u64) -> u64,
) -> anyhow::Result<Duration> {
    let mut c = Conn::open(uri, "delayed-bench-publisher", None).await?;
    c.rpc(Method::ConfirmSelect(ConfirmSelect { no_wait: false }))
        .await?;
    let frame_max = c.frame_max;
    let publish = Method::BasicPublish(BasicPublish {
        exchange: ShortStr::try_from_str(EXCHANGE)?,
        routing_key: "k".into(),
        mandatory: false,
        immediate: false,
    });
    let mut body = vec![0u8; size.max(16)];
    let start = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < n {
        while sent < n && sent - acked < window {
            if let Some(r) = rate {
                let due = start + Duration::from_secs_f64(sent as f64 / r as f64);
                if Instant::now() < due {
                    break;
                }
            }
            let due = due_of(sent);
            body[..8].copy_from_slice(&due.to_be_bytes());
            body[8..16].copy_from_slice(&sent.to_be_bytes());
            let delay = due as i64 - now_ms() as i64;
            write_method(&mut c.wr.buf, CH, &publish);
            write_content(
                &mut c.wr.buf,
                CH,
                CLASS_BASIC,
                &props_with_delay(delay),
                &body,
                frame_max,
            );
            sent += 1;
            if c.wr.buf.len() > 256 * 1024 {
                c.wr.flush().await?;
            }
        }
        c.wr.flush().await?;
        if acked == sent {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        if let Ok(frame) = tokio::time::timeout(Duration::from_millis(50), c.rd.next_frame()).await {
            match frame? {
                Frame::Method(_, Method::BasicAck(a)) => {
                    acked = if a.multiple {
                        a.delivery_tag
                    } else {
                        acked.max(a.delivery_tag)
                    };
                }
                Frame::Method(_, Method::BasicNack(_)) => bail!("a delayed publish was nacked"),
                Frame::Method(_, Method::ChannelClose(cl)) => {
                    bail!("channel closed: {} {}", cl.reply_code, cl.reply_text)
                }
                _ => {}
            }
        }
    }
    let took = start.elapsed();
    c.close().await;
    Ok(took)
}

fn pct(v: &mut [i64], p: f64) -> i64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    v[((v.len() - 1) as f64 * p) as usize]
}

async fn run(a: Args) -> anyhow::Result<()> {
    let uri = AmqpUri::parse(&a.uri)?;
    let mut admin = setup(&uri).await?;
    if a.count > 0 {
        let t0 = now_ms();
        let due = t0 + a.hold * 1000;
        let rss0 = a.broker_pid.and_then(rss_kb);
        let took = publish_confirmed(&uri, a.count, a.size, a.window, None, |_| due).await?;
        println!(
            "phase 1: {} messages held with confirms in {:.1} s ({:.0} msg/s), all due at +{} s",
            a.count,
            took.as_secs_f64(),
            a.count as f64 / took.as_secs_f64(),
            a.hold
        );
        if now_ms() >= due {
            println!("  warning: publishing took longer than --hold: some were released while publishing");
        }
        if let (Some(pid), Some(r0)) = (a.broker_pid, rss0) {
            if let Some(r1) = rss_kb(pid) {
                println!(
                    "  broker RSS: {} MiB before, {} MiB while held",
                    r0 / 1024,
                    r1 / 1024
                );
            }
        }
        if let Some(d) = &a.data_dir {
            println!("  data dir: {} MiB while held", dir_bytes(d) / (1 << 20));
        }
        let in_queue = queue_count(&mut admin).await?;
        println!("  in the queue before due: {in_queue}");
        // Wait for the due time, then watch the queue fill.
        while now_ms() + 200 < due {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut first = None;
        let mut last_count;
        let deadline = Instant::now() + Duration::from_secs(300);
        let all_at = loop {
            let c = queue_count(&mut admin).await?;
            let t = now_ms();
            if c > in_queue && first.is_none() {
                first = Some(t);
            }
            last_count = c;
            if c >= a.count || Instant::now() > deadline {
                break t;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let first = first.unwrap_or(all_at);
        let span = (all_at.saturating_sub(first)).max(1);
        println!(
            "  released {} into the queue: first {} ms after due, all {} ms after due; {:.0} msg/s from first to last",
            last_count,
            first as i64 - due as i64,
            all_at as i64 - due as i64,
            (last_count - in_queue) as f64 * 1000.0 / span as f64
        );
        if let Some(pid) = a.broker_pid {
            if let Some(r) = rss_kb(pid) {
                println!("  broker RSS after release: {} MiB", r / 1024);
            }
        }
        admin
            .rpc(Method::QueuePurge(QueuePurge {
                queue: ShortStr::try_from_str(QUEUE)?,
                no_wait: false,
            }))
            .await?;
    }
    if a.latency_count > 0 {
        // A consumer (no-ack) on its own connection, reading deliveries and their due stamps.
        let mut cons = Conn::open(&uri, "delayed-bench-consumer", None).await?;
        cons.rpc(Method::BasicConsume(BasicConsume {
            queue: ShortStr::try_from_str(QUEUE)?,
            no_ack: true,
            ..Default::default()
        }))
        .await?;
        let n = a.latency_count;
        let reader = tokio::spawn(async move {
            let mut lat: Vec<i64> = Vec::with_capacity(n as usize);
            let mut body: Vec<u8> = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(600);
            while (lat.len() as u64) < n && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(30), cons.rd.next_frame()).await {
                    Ok(Ok(Frame::Header(_, _))) => body.clear(),
                    Ok(Ok(Frame::Body(_, b))) => {
                        body.extend_from_slice(&b);
                        if body.len() >= 16 {
                            let due = u64::from_be_bytes(body[..8].try_into().unwrap_or([0; 8]));
                            lat.push(now_ms() as i64 - due as i64);
                            body.clear();
                        }
                    }
                    Ok(Ok(_)) => {}
                    _ => break,
                }
            }
            lat
        });
        let spread = a.latency_spread * 1000;
        let start = now_ms();
        let took = publish_confirmed(&uri, n, a.size, a.window, Some(a.latency_rate), |i| {
            // Delays spread over the window, in a scrambled order.
            let d = (i.wrapping_mul(2_654_435_761) % spread.max(1)) + 1;
            start + (i * 1000 / a.latency_rate.max(1)) + d
        })
        .await?;
        let mut lat = reader.await?;
        let within = lat.iter().filter(|&&l| l <= 100).count();
        println!(
            "phase 2: {} messages at {} msg/s (published in {:.1} s), delays 1 ms..{} s: received {}, \
             delivery − due: p50 {} ms, p99 {} ms, max {} ms, min {} ms; within 100 ms: {:.2} %",
            n,
            a.latency_rate,
            took.as_secs_f64(),
            a.latency_spread,
            lat.len(),
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99),
            lat.iter().max().copied().unwrap_or(0),
            lat.iter().min().copied().unwrap_or(0),
            within as f64 * 100.0 / lat.len().max(1) as f64
        );
    }
    Ok(())
}

fn main() {
    let a = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailroom-delayed-bench: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(a)) {
        eprintln!("mailroom-delayed-bench: {e:#}");
        std::process::exit(1);
    }
}
