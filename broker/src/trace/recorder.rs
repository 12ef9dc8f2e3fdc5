//! The recorder thread: takes trace events off the bounded channel, writes them to the store's trace
//! keyspace in batches (one sled batch per wake-up, made durable by the store's flusher with everything
//! else), and prunes by count and age about once a second. It is the only writer of the keyspace, so it
//! numbers the events itself.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::{Store, TraceRecord};

use super::{Event, TraceSettings};
use crate::clock::now_ms;

/// Most events written in one sled batch.
const BATCH: usize = 4096;
const PRUNE_EVERY: Duration = Duration::from_secs(1);

pub(super) fn spawn(
    store: Store,
    rx: Receiver<Event>,
    settings: TraceSettings,
    written: Arc<AtomicU64>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("trace-recorder".into())
        .spawn(move || run(store, rx, settings, written))
        .map(|_| ())
}

fn run(store: Store, rx: Receiver<Event>, settings: TraceSettings, written: Arc<AtomicU64>) {
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
        match rx.recv_timeout(PRUNE_EVERY) {
            Ok(ev) => {
                push(&mut batch, ev);
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(ev) => push(&mut batch, ev),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !batch.is_empty() {
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

fn push(batch: &mut Vec<TraceRecord>, ev: Event) {
    match serde_json::to_vec(&ev) {
        Ok(body) => batch.push(TraceRecord {
            time_ms: ev.time,
            correlation_id: ev.correlation_id,
            message_id: ev.message_id,
            body,
        }),
        Err(e) => tracing::warn!(error = %e, "trace recorder: cannot encode an event"),
    }
}
