//! One producer: a writer task that encodes publishes into one buffer (no allocation per
//! message), and a reader task that handles confirms, returns, `connection.blocked` /
//! `connection.unblocked`, heartbeats and closes.
//!
//! While the broker blocks the connection (`connection.blocked`) the writer publishes
//! nothing and sends heartbeats when due; the time from blocked to unblocked is summed per
//! producer. Time spent waiting for the socket to take more bytes (TCP back-pressure: the
//! broker stopped reading) is counted by the writer ([`WriteStall`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{
    write_content, write_content_with, write_method, BasicProperties, BasicPublish, ConfirmSelect, Frame,
    Method, RawProperties, CLASS_BASIC,
};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::amqp::{Conn, FrameReader, FrameWriter, Heartbeat, WriteStall, CH};
use crate::cli::{Pacing, Settings};
use crate::phase::{ProducerPhase, PublishClock};
use crate::tracker::{mono_ns, now_ns, stamp};

/// Flush the output buffer once it holds this much.
/// The placeholder `--dedup-header` overwrites ("<producer 5 digits>-<sequence 20 digits>").
const DEDUP_PLACEHOLDER: &str = "00000-00000000000000000000";

/// What `format!("{producer:05}-{sequence:020}")` writes, without allocating: the value that replaces
/// `DEDUP_PLACEHOLDER` in a message's properties.
fn stamp_id(producer: u16, sequence: u64) -> [u8; DEDUP_PLACEHOLDER.len()] {
    let mut v = [b'0'; DEDUP_PLACEHOLDER.len()];
    v[5] = b'-';
    let mut put = |mut n: u64, end: usize, width: usize| {
        for i in (end - width..end).rev() {
            v[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(u64::from(producer), 5, 5);
    put(sequence, DEDUP_PLACEHOLDER.len(), 20);
    v
}
const FLUSH_AT: usize = 64 * 1024;
/// Messages encoded between checks of the clock / stop flag in unlimited mode.
const BURST: u64 = 64;
/// How long a producer that is blocked (or whose socket takes nothing) at the end waits for
/// the broker after the run asked everyone to stop.
const BLOCKED_GRACE: Duration = Duration::from_secs(2);

/// Blocked time of one connection (`connection.blocked` → `connection.unblocked`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockTimer {
    since: Option<u64>,
    total_ns: u64,
    count: u64,
    /// The reason the broker gave the last time it blocked us.
    pub reason: Option<String>,
    /// Still blocked when the producer ended.
    pub at_end: bool,
}

impl BlockTimer {
    /// `connection.blocked` at `now` (ns); true if this starts a block.
    pub fn block(&mut self, now: u64, reason: &str) -> bool {
        if self.since.is_some() {
            return false;
        }
        self.since = Some(now);
        self.count += 1;
        self.reason = Some(reason.to_string());
        true
    }

    /// `connection.unblocked` at `now`; true if a block ended.
    pub fn unblock(&mut self, now: u64) -> bool {
        match self.since.take() {
            Some(t) => {
                self.total_ns += now.saturating_sub(t);
                true
            }
            None => false,
        }
    }

    /// The producer ended at `now`: a block in progress is counted up to now.
    pub fn finish(&mut self, now: u64) {
        if self.unblock(now) {
            self.at_end = true;
        }
    }

    /// Blocked time up to `now`, ns.
    pub fn total_ns(&self, now: u64) -> u64 {
        self.total_ns + self.since.map_or(0, |t| now.saturating_sub(t))
    }

    /// Number of blocks.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether blocked right now.
    pub fn is_blocked(&self) -> bool {
        self.since.is_some()
    }
}

/// Counters a producer shares with the reporter.
#[derive(Default)]
pub struct ProducerStats {
    /// Sequence numbers published (what consumers are expected to see). A producer that
    /// gives up on a broker that stopped reading takes back what it never wrote.
    pub published: AtomicU64,
    /// basic.publish frames sent (delivery tags; differs from `published` only under injection).
    pub sent: AtomicU64,
    /// Delivery tags acked by the broker.
    pub acked: AtomicU64,
    /// Delivery tags nacked by the broker.
    pub nacked: AtomicU64,
    /// basic.return received.
    pub returned: AtomicU64,
    /// Set when the connection failed or closed.
    pub closed: AtomicBool,
    /// Woken on confirms and on close.
    pub confirmed: Notify,
    /// First error, if any.
    pub error: Mutex<Option<String>>,
    /// ns since the run start at which this producer stopped publishing (incl. confirm wait).
    pub finished_ns: AtomicU64,
    /// Blocked by the broker right now (`connection.blocked` without `connection.unblocked`).
    pub blocked: AtomicBool,
    /// Blocked time and count.
    pub block: Mutex<BlockTimer>,
    /// Woken on `connection.unblocked` and on close.
    pub unblocked: Notify,
    /// Time the writer waited for its socket.
    pub stall: Arc<WriteStall>,
    /// Heartbeat frames sent.
    pub heartbeats_sent: AtomicU64,
    /// Encoded publishes never written to the socket (the producer gave up at the end).
    pub unsent: AtomicU64,
    /// The producer gave up waiting for the broker at the end (blocked or not reading).
    pub stuck_at_end: AtomicBool,
    /// Something the report should say about this producer (not an error).
    pub note: Mutex<Option<String>>,
}

impl ProducerStats {
    fn outstanding(&self) -> u64 {
        self.sent
            .load(Relaxed)
            .saturating_sub(self.acked.load(Relaxed) + self.nacked.load(Relaxed))
    }

    fn fail(&self, e: String) {
        let mut g = self.error.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
        self.closed.store(true, Relaxed);
        self.confirmed.notify_one();
        self.unblocked.notify_one();
    }

    fn set_blocked(&self, reason: &str) {
        self.block.lock().unwrap().block(mono_ns(), reason);
        self.blocked.store(true, Relaxed);
    }

    fn set_unblocked(&self) {
        self.block.lock().unwrap().unblock(mono_ns());
        self.blocked.store(false, Relaxed);
        self.unblocked.notify_one();
    }
}

/// Delivery-tag bookkeeping for confirms (acks may come out of order and with multiple).
#[derive(Default)]
pub struct ConfirmTracker {
    base: u64,
    /// 0 pending, 1 acked, 2 nacked, for tags base+1, base+2, ...
    states: VecDeque<u8>,
}

impl ConfirmTracker {
    /// Resolves `tag` (and every lower pending tag if `multiple`); returns how many
    /// tags changed from pending to acked/nacked.
    pub fn resolve(&mut self, tag: u64, multiple: bool, nack: bool) -> u64 {
        if tag <= self.base {
            return 0;
        }
        let idx = (tag - self.base - 1) as usize;
        if idx >= self.states.len() {
            self.states.resize(idx + 1, 0);
        }
        let v = if nack { 2 } else { 1 };
        let mut n = 0;
        if multiple {
            for s in self.states.iter_mut().take(idx + 1) {
                if *s == 0 {
                    *s = v;
                    n += 1;
                }
            }
        } else if self.states[idx] == 0 {
            self.states[idx] = v;
            n = 1;
        }
        while self.states.front().is_some_and(|s| *s != 0) {
            self.states.pop_front();
            self.base += 1;
        }
        n
    }
}

async fn reader_loop(
    mut rd: FrameReader<OwnedReadHalf>,
    stats: Arc<ProducerStats>,
    hb: Heartbeat,
) -> FrameReader<OwnedReadHalf> {
    let mut confirms = ConfirmTracker::default();
    let res: anyhow::Result<()> = async {
        loop {
            while let Some(frame) = rd.try_frame()? {
                match frame {
                    Frame::Method(_, Method::BasicAck(a)) => {
                        let n = confirms.resolve(a.delivery_tag, a.multiple, false);
                        stats.acked.fetch_add(n, Relaxed);
                        stats.confirmed.notify_one();
                    }
                    Frame::Method(_, Method::BasicNack(a)) => {
                        let n = confirms.resolve(a.delivery_tag, a.multiple, true);
                        stats.nacked.fetch_add(n, Relaxed);
                        stats.confirmed.notify_one();
                    }
                    Frame::Method(_, Method::BasicReturn(_)) => {
                        stats.returned.fetch_add(1, Relaxed);
                    }
                    Frame::Method(0, Method::ConnectionBlocked(b)) => stats.set_blocked(b.reason.as_str()),
                    Frame::Method(0, Method::ConnectionUnblocked(_)) => stats.set_unblocked(),
                    Frame::Method(0, Method::ConnectionCloseOk(_)) => return Ok(()),
                    Frame::Method(_, Method::ConnectionClose(c)) => {
                        anyhow::bail!(
                            "connection closed by the broker: {} {}",
                            c.reply_code,
                            c.reply_text
                        )
                    }
                    Frame::Method(_, Method::ChannelClose(c)) => {
                        anyhow::bail!("channel closed by the broker: {} {}", c.reply_code, c.reply_text)
                    }
                    _ => {}
                }
            }
            match hb.dead_after() {
                None => rd.fill().await?,
                Some(limit) => match tokio::time::timeout(limit, rd.fill()).await {
                    Ok(r) => r?,
                    Err(_) => anyhow::bail!(
                        "nothing from the broker for {} s (heartbeat {} s): connection considered dead",
                        limit.as_secs(),
                        hb.secs()
                    ),
                },
            }
        }
    }
    .await;
    match res {
        Ok(()) => {
            stats.closed.store(true, Relaxed);
            stats.confirmed.notify_one();
            stats.unblocked.notify_one();
        }
        Err(e) => stats.fail(format!("producer: {e:#}")),
    }
    rd
}

/// What a producer needs besides its connection.
pub struct ProducerCtx {
    /// Producer index (also its id in message stamps).
    pub id: usize,
    /// Run settings.
    pub settings: Arc<Settings>,
    /// Shared counters.
    pub stats: Arc<ProducerStats>,
    /// Cancelled to stop publishing early (Ctrl-C, broker RSS cap).
    pub stop: CancellationToken,
    /// Run start.
    pub start: Instant,
    /// The publishing phase (this producer reports its stop and finish to it).
    pub clock: Arc<PublishClock>,
    /// Becomes true when the run is over (after the drain): stop waiting for the broker.
    pub shutdown: watch::Receiver<bool>,
}

/// The output buffer plus where each encoded message ends in it, so that a producer that
/// gives up on a broker that stopped reading knows which publishes never went out.
struct Outbox {
    wr: FrameWriter<OwnedWriteHalf>,
    /// (end offset in `wr.buf`, published count, sent count) after each message.
    ends: Vec<(usize, u64, u64)>,
    /// (published, sent) when the buffer was last written out completely.
    flushed: (u64, u64),
}

impl Outbox {
    async fn flush(&mut self, published: u64, sent: u64) -> anyhow::Result<()> {
        self.wr.flush().await?;
        self.ends.clear();
        self.flushed = (published, sent);
        Ok(())
    }

    /// Sends a heartbeat if nothing was written for half the interval.
    async fn heartbeat_if_due(
        &mut self,
        hb: Heartbeat,
        stats: &ProducerStats,
        published: u64,
        sent: u64,
    ) -> anyhow::Result<()> {
        if hb.send_due(self.wr.idle_for(Instant::now())) {
            self.wr.heartbeat();
            stats.heartbeats_sent.fetch_add(1, Relaxed);
            self.flush(published, sent).await?;
        }
        Ok(())
    }
}

/// (published, sent) counting only messages whose bytes are all on the socket, given the
/// message ends in the buffer, how much of it was written, and the counts when the buffer
/// was last empty.
pub fn committed(ends: &[(usize, u64, u64)], written: usize, flushed: (u64, u64)) -> (u64, u64) {
    ends.iter()
        .rev()
        .find(|(end, _, _)| *end <= written)
        .map_or(flushed, |&(_, p, s)| (p, s))
}

/// Runs one producer on an open connection until count / duration / stop, then writes out
/// what is buffered, waits (bounded) for outstanding confirms and closes the connection. A
/// broker that keeps the connection blocked (or does not read it) at the end is given up
/// on once the run is over; that is noted, not an error.
pub async fn run(mut conn: Conn, ctx: ProducerCtx) -> anyhow::Result<()> {
    let s = &*ctx.settings;
    let stats = &*ctx.stats;
    let mut phase = ProducerPhase::new(&ctx.clock);
    if s.confirm > 0 {
        conn.rpc(Method::ConfirmSelect(ConfirmSelect { no_wait: false }))
            .await?;
    }
    let frame_max = conn.frame_max;
    let hb = Heartbeat::new(conn.heartbeat);
    let Conn { rd, mut wr, .. } = conn;
    wr.stall = ctx.stats.stall.clone();
    let mut reader = tokio::spawn(reader_loop(rd, ctx.stats.clone(), hb));
    let mut out = Outbox {
        wr,
        ends: Vec::with_capacity(4096),
        flushed: (0, 0),
    };

    let publish = Method::BasicPublish(BasicPublish {
        exchange: protocol::ShortStr::try_from_str(&s.exchange)?,
        routing_key: protocol::ShortStr::try_from_str(&s.routing_key(ctx.id))?,
        mandatory: s.mandatory,
        immediate: false,
    });
    let props = RawProperties::from_properties(&BasicProperties {
        delivery_mode: Some(if s.persistent { 2 } else { 1 }),
        ..BasicProperties::default()
    });
    // --dedup-header: the properties are encoded once with a fixed-width placeholder value, which each
    // message overwrites with its own "<producer>-<sequence>" (one small copy per message).
    // --message-ids: message_id and correlation_id the same way (Mailroom's tracing looks messages up by
    // them). Every occurrence of the placeholder is overwritten.
    let mut dedup_template = (s.dedup_header || s.message_ids).then(|| {
        let headers = s.dedup_header.then(|| {
            let mut headers = protocol::FieldTable::new();
            headers.insert(
                "x-deduplication-header",
                protocol::FieldValue::LongStr(DEDUP_PLACEHOLDER.into()),
            );
            headers
        });
        let id = s
            .message_ids
            .then(|| protocol::ShortStr::from_static(DEDUP_PLACEHOLDER));
        let raw = RawProperties::from_properties(&BasicProperties {
            delivery_mode: Some(if s.persistent { 2 } else { 1 }),
            headers,
            message_id: id.clone(),
            correlation_id: id,
            ..BasicProperties::default()
        });
        let bytes = raw.as_bytes().to_vec();
        let at: Vec<usize> = (0..bytes.len().saturating_sub(DEDUP_PLACEHOLDER.len() - 1))
            .filter(|&i| bytes[i..].starts_with(DEDUP_PLACEHOLDER.as_bytes()))
            .collect();
        (bytes, at)
    });
    let mut body = vec![0u8; s.size];
    let id = ctx.id as u16;
    let count = s.count.unwrap_or(u64::MAX);
    let window = u64::from(s.confirm);
    let deadline = s.duration.map(|d| ctx.start + d);
    let mut seq: u64 = 0;
    let mut sent: u64 = 0;
    let pacer = match (s.rate, s.pacing) {
        (1.., Pacing::Even) => Some(crate::pace::Pacer::new()?),
        _ => None,
    };
    let loss_every = s.inject_loss_every;
    let dup_every = s.inject_duplicate_every;

    let publishing = async {
        'outer: while seq < count {
            if stats.closed.load(Relaxed) {
                break;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            if stats.blocked.load(Relaxed) {
                // Blocked: what is encoded goes out (the broker reads it when it can), then
                // nothing but heartbeats until connection.unblocked.
                out.flush(seq, sent).await?;
                while stats.blocked.load(Relaxed) && !stats.closed.load(Relaxed) {
                    out.heartbeat_if_due(hb, stats, seq, sent).await?;
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), stats.unblocked.notified()).await;
                }
                continue;
            }
            // How many may go now.
            let mut n = (count - seq).min(if s.rate > 0 { BURST * 16 } else { BURST });
            if s.rate > 0 {
                let elapsed = now.duration_since(ctx.start).as_secs_f64();
                let due = (elapsed * s.rate as f64) as u64 + 1;
                if due <= seq {
                    out.flush(seq, sent).await?;
                    out.heartbeat_if_due(hb, stats, seq, sent).await?;
                    let next = ctx.start + Duration::from_secs_f64(seq as f64 / s.rate as f64);
                    let next = next.min(Instant::now() + Duration::from_millis(100));
                    match &pacer {
                        Some(p) => p.sleep_until(next).await?,
                        None => tokio::time::sleep_until(next.into()).await,
                    }
                    continue;
                }
                n = n.min(due - seq);
            }
            if window > 0 {
                let outstanding = stats.outstanding();
                if outstanding >= window {
                    out.flush(seq, sent).await?;
                    out.heartbeat_if_due(hb, stats, seq, sent).await?;
                    tokio::select! {
                        _ = stats.confirmed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
                n = n.min(window - outstanding);
            }
            let mut ts = now_ns();
            for _ in 0..n {
                let this = seq;
                seq += 1;
                stats.published.store(seq, Relaxed);
                if loss_every > 0 && this % loss_every == loss_every - 1 {
                    continue; // injected loss: counted as published, never sent
                }
                let copies = if dup_every > 0 && this % dup_every == dup_every - 1 {
                    2
                } else {
                    1
                };
                stamp(&mut body, id, this, ts);
                if let Some((tpl, ats)) = &mut dedup_template {
                    // "<producer:05>-<sequence:020>" written over the placeholder in place: no
                    // allocation per message (a clone, a `format!` and a `Bytes` each, before).
                    let v = stamp_id(id, this);
                    for &at in ats.iter() {
                        tpl[at..at + v.len()].copy_from_slice(&v);
                    }
                }
                for _ in 0..copies {
                    write_method(&mut out.wr.buf, CH, &publish);
                    match &dedup_template {
                        Some((tpl, _)) => {
                            write_content_with(&mut out.wr.buf, CH, CLASS_BASIC, &body, frame_max, |d| {
                                d.extend_from_slice(tpl)
                            })
                        }
                        None => write_content(&mut out.wr.buf, CH, CLASS_BASIC, &props, &body, frame_max),
                    }
                    sent += 1;
                }
                out.ends.push((out.wr.buf.len(), seq, sent));
                stats.sent.store(sent, Relaxed);
                if out.wr.buf.len() >= FLUSH_AT {
                    out.flush(seq, sent).await?;
                    if ctx.stop.is_cancelled() {
                        break 'outer;
                    }
                    ts = now_ns();
                }
            }
        }
        anyhow::Ok(())
    };
    let until_deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d.into()).await,
            None => std::future::pending().await,
        }
    };
    // The loop checks the clock itself; the select ends it also while it waits for the
    // socket or for connection.unblocked (buffered bytes are kept and written below).
    let mut result = tokio::select! {
        r = publishing => r,
        _ = until_deadline => Ok(()),
        _ = ctx.stop.cancelled() => Ok(()),
    };
    phase.stopped();

    // Finish: write what is buffered, wait for confirms, close; give up once the run is over.
    let published_now = stats.published.load(Relaxed);
    let mut shutdown = ctx.shutdown.clone();
    let ok_so_far = result.is_ok();
    let closing = async {
        if ok_so_far {
            out.flush(published_now, sent).await?;
            if window > 0 {
                let until = Instant::now() + s.drain_timeout;
                while stats.outstanding() > 0 && !stats.closed.load(Relaxed) {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    let _ = tokio::time::timeout(
                        left.min(Duration::from_millis(100)),
                        stats.confirmed.notified(),
                    )
                    .await;
                }
            }
        }
        ctx.stats
            .finished_ns
            .store(ctx.start.elapsed().as_nanos() as u64, Relaxed);
        phase.finished();
        if !stats.closed.load(Relaxed) {
            out.wr.method(
                0,
                &Method::ConnectionClose(protocol::ConnectionClose {
                    reply_code: 200,
                    reply_text: "bye".into(),
                    class_id: 0,
                    method_id: 0,
                }),
            );
            out.wr.flush().await?;
        }
        // close-ok comes after the broker processed every publish before it: wait for it
        // (a broker applying flow control may be seconds behind) before dropping the socket.
        let _ = (&mut reader).await;
        anyhow::Ok(())
    };
    let give_up = async {
        let _ = shutdown.wait_for(|done| *done).await;
        let stuck = stats.blocked.load(Relaxed) || stats.stall.waiting_since().is_some();
        let grace = if stuck {
            BLOCKED_GRACE
        } else {
            s.drain_timeout.max(BLOCKED_GRACE)
        };
        tokio::time::sleep(grace).await;
        grace
    };
    let gave_up = tokio::select! {
        r = closing => {
            if let Err(e) = r {
                if ok_so_far && !stats.closed.load(Relaxed) {
                    result = Err(e);
                }
            }
            None
        }
        grace = give_up => Some(grace),
    };
    let now = mono_ns();
    let (blocked_at_end, reason) = {
        let mut b = stats.block.lock().unwrap();
        let blocked = b.is_blocked();
        b.finish(now);
        (blocked, b.reason.clone().unwrap_or_default())
    };
    if let Some(grace) = gave_up {
        reader.abort();
        if ctx.stats.finished_ns.load(Relaxed) == 0 {
            ctx.stats
                .finished_ns
                .store(ctx.start.elapsed().as_nanos() as u64, Relaxed);
        }
        // Publishes still in the buffer never reached the socket: not published.
        let unwritten = out.wr.written() < out.wr.buf.len();
        let mut unsent = 0;
        if unwritten {
            let (p, snt) = committed(&out.ends, out.wr.written(), out.flushed);
            unsent = stats.published.load(Relaxed).saturating_sub(p);
            stats.published.store(p, Relaxed);
            stats.sent.store(snt, Relaxed);
            stats.unsent.store(unsent, Relaxed);
        }
        let stalled = stats.stall.waiting_since().is_some() || unwritten;
        if blocked_at_end || stalled {
            stats.stuck_at_end.store(true, Relaxed);
            let why = if blocked_at_end {
                format!("still blocked by the broker (connection.blocked: {reason:?})")
            } else {
                "the broker was not reading its socket".to_string()
            };
            let mut note = format!(
                "producer {}: {why} when the run ended; gave up waiting for connection.close-ok after {:.1} s",
                ctx.id,
                grace.as_secs_f64()
            );
            if unsent > 0 {
                note += &format!(
                    "; {unsent} encoded publishes were never written and are not counted as published"
                );
            }
            *stats.note.lock().unwrap() = Some(note);
            stats.closed.store(true, Relaxed);
        } else if !stats.closed.load(Relaxed) {
            stats.fail(format!(
                "producer {}: no connection.close-ok within {:.1} s after the run ended; publishes still in flight may be lost",
                ctx.id,
                grace.as_secs_f64()
            ));
        }
    }
    if let Err(e) = &result {
        stats.fail(format!("producer {}: {e:#}", ctx.id));
    }
    result
}

#[cfg(test)]
mod tests {
    /// The in-place id is what `format!` wrote before, for the extremes of both fields.
    #[test]
    fn stamp_id_writes_what_format_did() {
        for (p, n) in [
            (0u16, 0u64),
            (7, 12_345),
            (99_99, 10_u64.pow(19)),
            (u16::MAX, u64::MAX),
        ] {
            assert_eq!(
                &super::stamp_id(p, n)[..],
                format!("{p:05}-{n:020}").as_bytes(),
                "{p} {n}"
            );
        }
    }

    use super::*;

    #[test]
    fn confirm_tracker_handles_multiple_and_out_of_order() {
        let mut c = ConfirmTracker::default();
        assert_eq!(c.resolve(3, false, false), 1);
        assert_eq!(c.resolve(2, false, true), 1);
        assert_eq!(c.resolve(4, true, false), 2); // 1 and 4
        assert_eq!(c.resolve(4, true, false), 0);
        assert_eq!(c.base, 4);
        assert!(c.states.is_empty());
        assert_eq!(c.resolve(10, true, false), 6);
        assert_eq!(c.resolve(1, false, false), 0);
    }

    #[test]
    fn block_timer_sums_blocks_and_counts_one_in_progress() {
        let mut b = BlockTimer::default();
        assert!(!b.unblock(5));
        assert!(b.block(10, "low on memory"));
        assert!(!b.block(12, "again")); // already blocked: same block
        assert!(b.is_blocked());
        assert_eq!(b.total_ns(15), 5);
        assert!(b.unblock(30));
        assert!(b.block(100, "low on disk"));
        assert_eq!((b.total_ns(110), b.count()), (30, 2));
        b.finish(150);
        assert!(b.at_end && !b.is_blocked());
        assert_eq!(b.total_ns(1000), 70);
        assert_eq!(b.reason.as_deref(), Some("low on disk"));
        let mut c = BlockTimer::default();
        c.finish(10);
        assert!(!c.at_end);
    }

    #[test]
    fn committed_counts_only_messages_fully_written() {
        let ends = [(100, 1, 1), (200, 2, 2), (300, 4, 3)];
        assert_eq!(committed(&ends, 0, (0, 0)), (0, 0));
        assert_eq!(committed(&ends, 99, (0, 0)), (0, 0));
        assert_eq!(committed(&ends, 100, (0, 0)), (1, 1));
        assert_eq!(committed(&ends, 250, (0, 0)), (2, 2));
        assert_eq!(committed(&ends, 300, (0, 0)), (4, 3));
        assert_eq!(committed(&[], 10, (7, 7)), (7, 7));
        assert_eq!(committed(&ends, 50, (9, 9)), (9, 9));
    }
}
