//! The recorder thread: takes trace events off the bounded channel, writes them to the store's trace
//! keyspace in batches (one sled batch per wake-up, made durable by the store's flusher with everything
//! else), and prunes by count and age about once a second. It is the only writer of the keyspace, so it
//! numbers the events itself.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::{Store, TraceRecord};

use serde::Serialize;

use super::{Event, Kind, TraceSettings};
use crate::clock::now_ms;

/// Most events written in one sled batch.
const BATCH: usize = 4096;
const PRUNE_EVERY: Duration = Duration::from_secs(1);

pub(super) fn spawn(
    store: Store,
    rx: Receiver<Event>,
    settings: TraceSettings,
    written: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("trace-recorder".into())
        .spawn(move || run(store, rx, settings, written, in_flight))
        .map(|_| ())
}

fn run(
    store: Store,
    rx: Receiver<Event>,
    settings: TraceSettings,
    written: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
) {
    let mut next_seq = match store.trace_bounds() {
        Ok(b) => b.map_or(0, |(_, last)| last + 1),
        Err(e) => {
            tracing::error!(error = %e, "trace recorder: cannot read the trace keyspace; tracing records nothing");
            return;
        }
    };
    let mut batch: Vec<TraceRecord> = Vec::with_capacity(BATCH);
    let mut last_prune = Instant::now();
    loop {
        let mut taken = 0;
        match rx.recv_timeout(PRUNE_EVERY) {
            Ok(ev) => {
                push(&mut batch, ev);
                taken += 1;
                while taken < BATCH {
                    match rx.try_recv() {
                        Ok(ev) => push(&mut batch, ev),
                        Err(_) => break,
                    }
                    taken += 1;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        in_flight.fetch_sub(taken, Relaxed);
        if !batch.is_empty() {
            let busy = Instant::now();
            let full = taken == BATCH;
            match store.append_trace(next_seq, &batch) {
                Ok(_) => {
                    next_seq += batch.len() as u64;
                    written.fetch_add(batch.len() as u64, Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, n = batch.len(), "trace recorder: store write failed; events dropped")
                }
            }
            batch.clear();
            // Under overload (a full batch), keep to the configured share of a core: the broker's own
            // threads come first; what the buffer cannot hold meanwhile is dropped and counted.
            let share = settings.recorder_busy_percent.clamp(1, 100);
            if full && share < 100 {
                let spent = busy.elapsed();
                std::thread::sleep(spent * (100 - share) / share);
            }
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            let min_time = now_ms().saturating_sub(settings.max_age_secs.saturating_mul(1000));
            if let Err(e) = store.prune_trace(settings.max_events, min_time) {
                tracing::warn!(error = %e, "trace recorder: pruning failed");
            }
        }
    }
}

/// The API's JSON shape of an event (absent fields omitted).
#[derive(Serialize)]
struct View<'a> {
    time: u64,
    event: Kind,
    vhost: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exchange: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routing_key: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queue: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    queues: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_tag: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redelivered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<&'a str>,
}

/// The JSON the API returns for `ev`.
pub(super) fn to_json(ev: &Event) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&View {
        time: ev.time,
        event: ev.event,
        vhost: &ev.vhost,
        exchange: ev.exchange.as_ref().map(|s| s.as_str()),
        routing_key: ev.routing_key.as_ref().map(|s| s.as_str()),
        queue: ev.queue.as_deref(),
        queues: ev.queues.as_ref().map(|q| q.iter().map(|n| &**n).collect()),
        message_id: ev.ids.message_id.as_deref(),
        correlation_id: ev.ids.correlation_id.as_deref(),
        connection: ev.connection.as_deref(),
        user: ev.user.as_deref(),
        channel: ev.channel,
        consumer_tag: ev.consumer_tag.as_ref().map(|s| s.as_str()),
        redelivered: ev.redelivered,
        delivery_count: ev.delivery_count,
        reason: ev.reason,
        target: ev.target.as_deref(),
    })
}

fn push(batch: &mut Vec<TraceRecord>, ev: Event) {
    match to_json(&ev) {
        Ok(body) => batch.push(TraceRecord {
            time_ms: ev.time,
            correlation_id: ev.ids.correlation_id.as_deref().map(str::to_string),
            message_id: ev.ids.message_id.as_deref().map(str::to_string),
            body,
        }),
        Err(e) => tracing::warn!(error = %e, "trace recorder: cannot encode an event"),
    }
}
