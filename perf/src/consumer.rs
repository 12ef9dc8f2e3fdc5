//! One consumer: reads large chunks, reads deliveries in place (`FrameReader::try_incoming`),
//! records latency and sequences, and batches its acks into one write per chunk. Deliveries
//! handled while the producers are publishing are counted (and their latencies recorded) apart.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{BasicAck, BasicConsume, BasicQos, Frame, Method};
use tokio::sync::watch;

use crate::amqp::{close_halves, Conn, Heartbeat, Incoming, CH};
use crate::cli::Settings;
use crate::hist::Histogram;
use crate::phase::PublishClock;
use crate::tracker::{mono_ns, now_ns, Seen, SeqTracker};

/// Counters a consumer shares with the reporter.
#[derive(Default)]
pub struct ConsumerStats {
    /// Deliveries received (duplicates included).
    pub consumed: AtomicU64,
    /// Deliveries of a (producer, sequence) this consumer had not seen before.
    pub unique: AtomicU64,
    /// Deliveries received while the producers were publishing.
    pub consumed_publishing: AtomicU64,
    /// Of those, first deliveries (as `unique`).
    pub unique_publishing: AtomicU64,
    /// Latencies (ns) of first deliveries received while the producers were publishing.
    pub hist_publishing: Mutex<Histogram>,
    /// ns since the run start of the first delivery (0 = none yet).
    pub first_ns: AtomicU64,
    /// ns since the run start of the latest delivery.
    pub last_ns: AtomicU64,
    /// Latencies (ns) since the reporter last took them.
    pub hist: Mutex<Histogram>,
    /// First error, if any.
    pub error: Mutex<Option<String>>,
}

/// What a consumer saw, for the final report.
#[derive(Debug, Default)]
pub struct ConsumerOutcome {
    /// The queue it read.
    pub queue: usize,
    /// Per producer id.
    pub trackers: Vec<SeqTracker>,
    /// Seen again without the redelivered flag.
    pub duplicated: u64,
    /// Seen again with the redelivered flag.
    pub duplicated_redelivered: u64,
    /// First seen after a higher sequence of the same producer.
    pub out_of_order: u64,
    /// Deliveries with the redelivered flag.
    pub redelivered: u64,
    /// Messages stamped before this run started (left over in a queue).
    pub stale: u64,
    /// Bodies that carry no stamp of ours.
    pub foreign: u64,
}

/// Everything a consumer needs besides its connection.
pub struct ConsumerCtx {
    /// Consumer index.
    pub id: usize,
    /// Run settings.
    pub settings: Arc<Settings>,
    /// Shared counters.
    pub stats: Arc<ConsumerStats>,
    /// Becomes true when the run wants consumers to stop.
    pub stop: watch::Receiver<bool>,
    /// Run start.
    pub start: Instant,
    /// Wall-clock ns at the run start (older stamps are stale).
    pub start_wall_ns: u64,
    /// The publishing phase.
    pub clock: Arc<PublishClock>,
}

/// Sets the prefetch and starts consuming the consumer's queue.
pub async fn subscribe(conn: &mut Conn, s: &Settings, id: usize) -> anyhow::Result<()> {
    if !s.autoack {
        conn.rpc(Method::BasicQos(BasicQos {
            prefetch_size: 0,
            prefetch_count: s.prefetch,
            global: false,
        }))
        .await?;
    }
    let queue = s.queue_name(s.consumer_queue(id));
    match conn
        .rpc(Method::BasicConsume(BasicConsume {
            queue: protocol::ShortStr::try_from_str(&queue)?,
            consumer_tag: protocol::ShortStr::try_from_str(&format!("mailroom-perf-{id}"))?,
            no_local: false,
            no_ack: s.autoack,
            exclusive: false,
            no_wait: false,
            arguments: s.consume_arguments(),
        }))
        .await?
    {
        Method::BasicConsumeOk(_) => Ok(()),
        m => anyhow::bail!("expected basic.consume-ok, got {m:?}"),
    }
}

struct Current {
    tag: u64,
    redelivered: bool,
    remaining: Option<u64>,
    stamp: Option<(u16, u64, u64)>,
}

/// Consumes until told to stop; returns what it saw.
pub async fn run(conn: Conn, mut ctx: ConsumerCtx) -> anyhow::Result<ConsumerOutcome> {
    let s = ctx.settings.clone();
    let stats = ctx.stats.clone();
    let mut out = ConsumerOutcome {
        queue: s.consumer_queue(ctx.id),
        trackers: vec![SeqTracker::default(); s.producers],
        ..Default::default()
    };
    let hb = Heartbeat::new(conn.heartbeat);
    let Conn { mut rd, mut wr, .. } = conn;
    let manual = !s.autoack;
    // Wakes an idle consumer to send heartbeats (and to notice a silent broker).
    let mut tick = tokio::time::interval(hb.send_every().max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_recv = Instant::now();
    // With multi-ack, never hold back more than the prefetch allows (that would stall).
    let ack_every = match (s.multi_ack, s.prefetch) {
        (0, _) => 0,
        (k, 0) => k,
        (k, p) => k.min(u32::from(p)),
    };
    let mut pending_acks: u32 = 0;
    let mut last_tag = 0;
    let mut cur: Option<Current> = None;
    let start_wall = ctx.start_wall_ns;

    let result: anyhow::Result<()> = async {
        loop {
            let now = now_ns();
            let publishing = ctx.clock.publishing_at(mono_ns());
            let mut consumed = 0u64;
            let mut unique = 0u64;
            {
                let mut hist = stats.hist.lock().unwrap();
                let mut hist_pub = publishing.then(|| stats.hist_publishing.lock().unwrap());
                while let Some(frame) = rd.try_incoming()? {
                    match frame {
                        Incoming::Deliver { tag, redelivered } => {
                            cur = Some(Current {
                                tag,
                                redelivered,
                                remaining: None,
                                stamp: None,
                            });
                            continue;
                        }
                        Incoming::Header { body_size } => {
                            if let Some(c) = cur.as_mut() {
                                c.remaining = Some(body_size);
                            }
                        }
                        Incoming::Body { len, stamp } => {
                            if let Some(c) = cur.as_mut() {
                                if c.stamp.is_none() {
                                    c.stamp = stamp;
                                }
                                if let Some(r) = c.remaining.as_mut() {
                                    *r = r.saturating_sub(len as u64);
                                }
                            }
                        }
                        Incoming::Other(Frame::Method(_, Method::ConnectionClose(c))) => anyhow::bail!(
                            "connection closed by the broker: {} {}",
                            c.reply_code,
                            c.reply_text
                        ),
                        Incoming::Other(Frame::Method(_, Method::ChannelClose(c))) => {
                            anyhow::bail!("channel closed by the broker: {} {}", c.reply_code, c.reply_text)
                        }
                        Incoming::Other(Frame::Method(_, Method::BasicCancel(_))) => {
                            anyhow::bail!("the broker cancelled the consumer")
                        }
                        Incoming::Other(_) => continue,
                    }
                    // A delivery is complete once its header said how much and it all came.
                    if !matches!(
                        &cur,
                        Some(Current {
                            remaining: Some(0),
                            ..
                        })
                    ) {
                        continue;
                    }
                    let c = cur.take().expect("current delivery");
                    consumed += 1;
                    if c.redelivered {
                        out.redelivered += 1;
                    }
                    match c.stamp {
                        Some((_, _, ts)) if ts < start_wall => out.stale += 1,
                        Some((p, seq, ts)) if (p as usize) < out.trackers.len() => {
                            match out.trackers[p as usize].observe(seq, c.redelivered) {
                                Seen::Duplicate if c.redelivered => out.duplicated_redelivered += 1,
                                Seen::Duplicate => out.duplicated += 1,
                                seen => {
                                    if seen == Seen::OutOfOrder && !c.redelivered {
                                        out.out_of_order += 1;
                                    }
                                    unique += 1;
                                    hist.record(now.saturating_sub(ts));
                                    if let Some(h) = hist_pub.as_mut() {
                                        h.record(now.saturating_sub(ts));
                                    }
                                }
                            }
                        }
                        _ => out.foreign += 1,
                    }
                    if manual {
                        last_tag = c.tag;
                        pending_acks += 1;
                        if ack_every == 0 {
                            wr.method(
                                CH,
                                &Method::BasicAck(BasicAck {
                                    delivery_tag: c.tag,
                                    multiple: false,
                                }),
                            );
                            pending_acks = 0;
                        } else if pending_acks >= ack_every {
                            wr.method(
                                CH,
                                &Method::BasicAck(BasicAck {
                                    delivery_tag: c.tag,
                                    multiple: true,
                                }),
                            );
                            pending_acks = 0;
                        }
                    }
                }
            }
            if consumed > 0 {
                let t = ctx.start.elapsed().as_nanos() as u64;
                if stats.first_ns.load(Relaxed) == 0 {
                    stats.first_ns.store(t.max(1), Relaxed);
                }
                stats.last_ns.store(t, Relaxed);
                stats.consumed.fetch_add(consumed, Relaxed);
                stats.unique.fetch_add(unique, Relaxed);
                if publishing {
                    stats.consumed_publishing.fetch_add(consumed, Relaxed);
                    stats.unique_publishing.fetch_add(unique, Relaxed);
                }
            }
            if hb.enabled() {
                let at = Instant::now();
                if hb.send_due(wr.idle_for(at)) {
                    wr.heartbeat();
                }
                if let Some(limit) = hb.dead_after() {
                    if at.saturating_duration_since(last_recv) > limit {
                        anyhow::bail!(
                            "nothing from the broker for {} s (heartbeat {} s): connection considered dead",
                            limit.as_secs(),
                            hb.secs()
                        );
                    }
                }
            }
            wr.flush().await?;
            if *ctx.stop.borrow() {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = ctx.stop.changed() => return Ok(()),
                r = rd.fill() => {
                    r?;
                    if hb.enabled() {
                        last_recv = Instant::now();
                    }
                }
                _ = tick.tick(), if hb.enabled() => {}
            }
        }
    }
    .await;
    if let Err(e) = result {
        let msg = format!("consumer {}: {e:#}", ctx.id);
        *stats.error.lock().unwrap() = Some(msg.clone());
        return Err(anyhow::anyhow!(msg));
    }
    if manual && pending_acks > 0 {
        wr.method(
            CH,
            &Method::BasicAck(BasicAck {
                delivery_tag: last_tag,
                multiple: true,
            }),
        );
    }
    let _ = close_halves(&mut rd, &mut wr).await;
    Ok(out)
}
