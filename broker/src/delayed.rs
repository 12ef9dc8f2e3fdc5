//! Delayed delivery: the `x-delayed-message` exchange (the interface of rabbitmq-delayed-message-exchange,
//! which LavinMQ also offers). A message published to such an exchange with a positive integer `x-delay`
//! header (ms) is written to the vhost's delayed log in the store (`storage::DelayedLog`: due-time buckets,
//! memory per bucket, not per message) and confirmed once that write is durable; when due it is routed as
//! the exchange's `x-delayed-type` would route it. Without the header, or with `x-delay` ≤ 0 or not an
//! integer, it is routed at once. As with the plugin, a held message is never returned (mandatory does not
//! apply to it); one that turns out unroutable when due is dropped, counted and logged.
//!
//! The release runs on its own thread (`spawn_release`), whenever the logs have work (a message due, a
//! bucket to load, acks to settle) or a new hold is due sooner than it planned to look: it loads the
//! buckets that are about to fall due and routes what is due, in due-time order, in batches.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protocol::{FieldValue, RawProperties, ShortStr};
use storage::{DelayedLog, DueMessage, StoredMessage};

use crate::clock::now_ms;
use crate::error::AmqpError;
use crate::message::Message;
use crate::queue::DeadLetters;
use crate::vhost::VHost;

/// How soon the release thread looks again at work it could not do (ms).
pub const RELEASE_EVERY_MS: u64 = 5;
/// The longest the release thread sleeps (ms): a `hold` due sooner wakes it, so this is only a safety net.
const IDLE_LOOK_MS: u64 = 1000;
/// Messages released per batch (one store ticket per batch).
const BATCH: usize = 4096;
/// Unroutable drops are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(5);

/// A message's `x-delay` (ms) if it has a positive integer one (one walk over the raw headers when it has
/// none; decoded only if the header is there).
pub fn delay_of(props: &RawProperties) -> Option<u64> {
    if !props.has_headers() || !props.headers_contain_any(&["x-delay"]) {
        return None;
    }
    let h = props.headers().ok().flatten()?;
    match h.get("x-delay") {
        Some(FieldValue::Timestamp(_)) | None => None,
        Some(v) => v.as_i64().filter(|d| *d > 0).map(|d| d as u64),
    }
}

/// A vhost's delayed messages and their counters.
pub struct Delayed {
    log: Option<DelayedLog>,
    /// Messages that were unroutable when due (dropped).
    pub unroutable: AtomicU64,
    /// Messages held since start.
    pub held: AtomicU64,
    last_warn: Mutex<Option<Instant>>,
}

impl Delayed {
    pub fn open(store: &storage::Store, vhost: &str) -> Delayed {
        let log = match DelayedLog::open(store, vhost) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(vhost, error = %e, "cannot open the delayed-message log: delayed publishes fail");
                None
            }
        };
        Delayed {
            log,
            unroutable: AtomicU64::new(0),
            held: AtomicU64::new(0),
            last_warn: Mutex::new(None),
        }
    }

    /// The log's counters (None if it could not be opened).
    pub fn stats(&self) -> Option<storage::DelayedStats> {
        self.log.as_ref().map(DelayedLog::stats)
    }
}

impl VHost {
    /// Whether a publish to `exchange` with this delay is held: the exchange exists, is an
    /// `x-delayed-message` exchange and is not internal (an internal one is refused by routing).
    pub fn holds(&self, exchange: &str) -> bool {
        self.router
            .read()
            .exchange(exchange)
            .is_some_and(|x| x.kind == router::ExchangeKind::Delayed && !x.internal)
    }

    /// Holds a message for `delay` ms; returns the store ticket its confirm waits for.
    pub fn hold_delayed(&self, msg: &Message, delay: u64) -> Result<u64, AmqpError> {
        let Some(log) = &self.delayed.log else {
            return Err(AmqpError::internal("the delayed-message log is unavailable"));
        };
        let now = now_ms();
        let record = StoredMessage {
            exchange: msg.exchange.as_str().to_owned(),
            routing_key: msg.routing_key.as_str().to_owned(),
            properties: msg.stored_properties().to_bytes(),
            body: msg.body.clone(),
            published_at_ms: now,
            ..Default::default()
        };
        let t = log.hold(record, now.saturating_add(delay), now).map_err(|e| {
            tracing::error!(error = %e, "store write of a delayed message failed");
            AmqpError::internal(format!("could not store the delayed message: {e}"))
        })?;
        self.delayed.held.fetch_add(1, Relaxed);
        Ok(t)
    }

    /// Loads what is about to fall due and routes what is due, in due order. Returns how many were
    /// released.
    pub fn release_delayed(&self, now: u64, buf: &mut Vec<DueMessage>) -> usize {
        let Some(log) = &self.delayed.log else { return 0 };
        if let Err(e) = log.poll(now) {
            tracing::error!(error = %e, "delayed-message log: loading due messages failed");
        }
        let mut released = 0;
        let mut dests = Vec::new();
        loop {
            buf.clear();
            log.take_due(now, BATCH, buf);
            if buf.is_empty() {
                return released;
            }
            let mut ticket = 0u64;
            let mut unroutable = 0u64;
            for m in buf.iter() {
                match self.route_due(&m.msg, now, &mut dests) {
                    Some(t) => ticket = ticket.max(t),
                    None => unroutable += 1,
                }
            }
            released += buf.len();
            if unroutable > 0 {
                self.delayed.unroutable.fetch_add(unroutable, Relaxed);
                let mut last = self.delayed.last_warn.lock();
                if last.is_none_or(|l| l.elapsed() >= WARN_EVERY) {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        vhost = %self.name,
                        count = unroutable,
                        total = self.delayed.unroutable.load(Relaxed),
                        "delayed messages unroutable when due: dropped"
                    );
                }
            }
            if let Err(e) = log.released(buf, ticket) {
                tracing::error!(error = %e, "delayed-message log: acking released messages failed");
            }
        }
    }

    /// Routes one due message; its enqueue ticket, or None if it reached no queue.
    fn route_due(&self, m: &StoredMessage, now: u64, dests: &mut Vec<router::Name>) -> Option<u64> {
        let exchange = ShortStr::try_from_str(&m.exchange).ok()?;
        let rk = ShortStr::try_from_str(&m.routing_key).ok()?;
        let msg = Message::published(
            exchange,
            rk,
            RawProperties::from_bytes(m.properties.clone()),
            m.body.clone(),
        )
        .ok()?;
        if let Err(e) = self.route_message(&m.exchange, &m.routing_key, &msg, dests) {
            tracing::debug!(exchange = m.exchange, error = %e, "delayed message not routable");
            return None;
        }
        let msg = Arc::new(msg);
        let mut ticket = 0;
        let mut enqueued = 0;
        let mut targets = Vec::new();
        self.with_queues(dests, |q| targets.push(q.clone()));
        for q in targets {
            if let Some(crate::dedup::Seen::Duplicate(_)) =
                self.dedup.check(true, q.name(), &msg.properties, now)
            {
                enqueued += 1;
                continue;
            }
            let mut dead = DeadLetters::new();
            if let Ok(t) = q.publish(msg.clone(), now, &mut dead) {
                ticket = ticket.max(t);
                enqueued += 1;
            }
            self.dead_letter(&q, &mut dead, now);
        }
        (enqueued > 0).then_some(ticket)
    }
}

/// Starts the release thread; it stops when the broker (or its store) is dropped. It sleeps until the
/// logs have work (`DelayedLog::next_wake`: a message due, a bucket to load, acks to settle) or a `hold`
/// is due sooner, so an idle broker does not wake it every few ms.
pub fn spawn_release<B: Send + Sync + 'static>(
    broker: Weak<B>,
    vhosts: fn(&B) -> Vec<Arc<VHost>>,
    waker: storage::DelayedWaker,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("mailroom-delayed".into())
        .spawn(move || {
            let mut buf = Vec::new();
            loop {
                let Some(b) = broker.upgrade() else { break };
                let now = now_ms();
                let mut next: Option<u64> = None;
                for v in vhosts(&b) {
                    v.release_delayed(now, &mut buf);
                    if let Some(t) = v.delayed.log.as_ref().and_then(|l| l.next_wake(now)) {
                        next = Some(next.map_or(t, |n| n.min(t)));
                    }
                }
                drop(b);
                waker.sleep_until(wake_at(now, next), now_ms);
            }
        })
        .map(drop)
}

/// When the release looks again after looking at `now`, the logs' next work being at `next`: then, but
/// `RELEASE_EVERY_MS` after `now` if that is not later (work left undone: a failed load), and not later
/// than `IDLE_LOOK_MS`.
fn wake_at(now: u64, next: Option<u64>) -> u64 {
    match next {
        Some(t) if t <= now => now + RELEASE_EVERY_MS,
        Some(t) => t.min(now + IDLE_LOOK_MS),
        None => now + IDLE_LOOK_MS,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_looks_when_work_is_next_and_at_least_every_second() {
        let now = 1_000_000;
        // a message due in 3 ms: then, not a 5 ms tick later
        assert_eq!(wake_at(now, Some(now + 3)), now + 3);
        // nothing held: a hold wakes it; it still looks once a second
        assert_eq!(wake_at(now, None), now + IDLE_LOOK_MS);
        // due in an hour: its bucket load time or a hold comes first; once a second at most
        assert_eq!(wake_at(now, Some(now + 3_600_000)), now + IDLE_LOOK_MS);
        // work that could not be done now (a failed load) is retried soon, not in a loop
        assert_eq!(wake_at(now, Some(now)), now + RELEASE_EVERY_MS);
        assert_eq!(wake_at(now, Some(now - 50)), now + RELEASE_EVERY_MS);
    }
}
