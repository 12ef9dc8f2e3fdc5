//! One producer: a writer task that encodes publishes into one buffer (no allocation per
//! message), and a reader task that handles confirms, returns and closes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::{
    write_content, write_method, BasicProperties, BasicPublish, ConfirmSelect, Frame, Method, RawProperties,
    CLASS_BASIC,
};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::Notify;

use crate::amqp::{Conn, FrameReader, CH};
use crate::cli::Settings;
use crate::tracker::{now_ns, stamp};

/// Flush the output buffer once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// Messages encoded between checks of the clock / stop flag in unlimited mode.
const BURST: u64 = 64;

/// Counters a producer shares with the reporter.
#[derive(Default)]
pub struct ProducerStats {
    /// Sequence numbers published (what consumers are expected to see).
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
) -> FrameReader<OwnedReadHalf> {
    let mut confirms = ConfirmTracker::default();
    let res: anyhow::Result<()> = async {
        loop {
            match rd.next_frame().await? {
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
    }
    .await;
    match res {
        Ok(()) => {
            stats.closed.store(true, Relaxed);
            stats.confirmed.notify_one();
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
    /// Set to stop publishing (duration reached, Ctrl-C).
    pub stop: Arc<AtomicBool>,
    /// Run start.
    pub start: Instant,
}

/// Runs one producer on an open connection until count / stop, then waits (bounded) for
/// outstanding confirms and closes the connection.
pub async fn run(mut conn: Conn, ctx: ProducerCtx) -> anyhow::Result<()> {
    let s = &*ctx.settings;
    let stats = &*ctx.stats;
    if s.confirm > 0 {
        conn.rpc(Method::ConfirmSelect(ConfirmSelect { no_wait: false }))
            .await?;
    }
    let frame_max = conn.frame_max;
    let Conn { rd, mut wr, .. } = conn;
    let reader = tokio::spawn(reader_loop(rd, ctx.stats.clone()));

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
    let mut body = vec![0u8; s.size];
    let id = ctx.id as u16;
    let count = s.count.unwrap_or(u64::MAX);
    let window = u64::from(s.confirm);
    let deadline = s.duration.map(|d| ctx.start + d);
    let mut seq: u64 = 0;
    let mut sent: u64 = 0;
    let loss_every = s.inject_loss_every;
    let dup_every = s.inject_duplicate_every;

    let result: anyhow::Result<()> = async {
        'outer: while seq < count {
            if ctx.stop.load(Relaxed) || stats.closed.load(Relaxed) {
                break;
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                break;
            }
            // How many may go now.
            let mut n = (count - seq).min(if s.rate > 0 { BURST * 16 } else { BURST });
            if s.rate > 0 {
                let elapsed = now.duration_since(ctx.start).as_secs_f64();
                let due = (elapsed * s.rate as f64) as u64 + 1;
                if due <= seq {
                    wr.flush().await?;
                    let next = ctx.start + Duration::from_secs_f64(seq as f64 / s.rate as f64);
                    tokio::time::sleep_until(next.into()).await;
                    continue;
                }
                n = n.min(due - seq);
            }
            if window > 0 {
                let out = stats.outstanding();
                if out >= window {
                    wr.flush().await?;
                    tokio::select! {
                        _ = stats.confirmed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                    continue;
                }
                n = n.min(window - out);
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
                for _ in 0..copies {
                    write_method(&mut wr.buf, CH, &publish);
                    write_content(&mut wr.buf, CH, CLASS_BASIC, &props, &body, frame_max);
                    sent += 1;
                }
                stats.sent.store(sent, Relaxed);
                if wr.buf.len() >= FLUSH_AT {
                    wr.flush().await?;
                    if ctx.stop.load(Relaxed) {
                        break 'outer;
                    }
                    ts = now_ns();
                }
            }
        }
        wr.flush().await?;
        // Wait for the outstanding confirms, bounded by the drain timeout.
        if window > 0 {
            let until = Instant::now() + s.drain_timeout;
            while stats.outstanding() > 0 && !stats.closed.load(Relaxed) {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let _ =
                    tokio::time::timeout(left.min(Duration::from_millis(100)), stats.confirmed.notified())
                        .await;
            }
        }
        Ok(())
    }
    .await;
    ctx.stats
        .finished_ns
        .store(ctx.start.elapsed().as_nanos() as u64, Relaxed);
    if let Err(e) = &result {
        stats.fail(format!("producer {}: {e:#}", ctx.id));
    }
    // Close: the reader sees close-ok and returns its half.
    if !stats.closed.load(Relaxed) {
        wr.method(
            0,
            &Method::ConnectionClose(protocol::ConnectionClose {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            }),
        );
        let _ = wr.flush().await;
    }
    let abort = reader.abort_handle();
    // close-ok comes after the broker processed every publish before it: wait for it (a
    // broker applying flow control may be seconds behind) before dropping the socket.
    let wait = s.drain_timeout.max(Duration::from_secs(2));
    if tokio::time::timeout(wait, reader).await.is_err() {
        abort.abort();
        stats.fail(format!(
            "producer {}: no connection.close-ok within {:.1} s; publishes still in flight may be lost",
            ctx.id,
            wait.as_secs_f64()
        ));
    }
    result
}

#[cfg(test)]
mod tests {
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
}
