//! The recorder thread: takes trace events off the bounded channel, encodes them compactly (`batch.rs`)
//! and writes them to the store's trace keyspace a batch of events per sled value (all the batches of one
//! wake-up in one sled write, made durable by the store's flusher with everything else), and prunes whole
//! batches by count and age about once a second. It is the only writer of the keyspace, so it numbers the
//! batches itself and keeps the count of events stored.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::{Store, TraceBatch};

use super::batch::{Encoded, Encoder};
use super::{Event, TraceSettings};
use crate::clock::now_ms;

/// Most events taken from the channel per wake-up.
const TAKE: usize = 4096;
/// A batch (one sled value) ends at about this many bytes or this many events: sled keeps values in its
/// nodes of up to 16 entries and writes a node of more than 128 KB (a quarter of the store's 512 KB
/// segments) to a file of its own, so values stay well under 8 KB.
const BATCH_BYTES: usize = 6 * 1024;
const BATCH_EVENTS: u32 = 512;
/// After the first event of a wake-up, how long the recorder waits for more to fill its batches (a
/// lookup sees an event at most about this much later; few, fuller batches keep lookups cheap). Not after
/// a full take: under load it writes back to back.
const LINGER: Duration = Duration::from_millis(20);
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

/// Takes the events of one wake-up into `evs`: blocks up to `PRUNE_EVERY` for the first; then, with
/// `linger`, sleeps `LINGER` (not waiting on the channel, so the hooks' sends wake nobody meanwhile) and takes
/// what came, at most `TAKE`. False when the channel is closed.
fn take(rx: &Receiver<Event>, evs: &mut Vec<Event>, in_flight: &AtomicUsize, linger: bool) -> bool {
    let push = |ev: Event, evs: &mut Vec<Event>| {
        in_flight.fetch_sub(ev.count(), Relaxed);
        evs.push(ev);
    };
    match rx.recv_timeout(PRUNE_EVERY) {
        Ok(ev) => push(ev, evs),
        Err(RecvTimeoutError::Timeout) => return true,
        Err(RecvTimeoutError::Disconnected) => return false,
    }
    if linger {
        std::thread::sleep(LINGER);
    }
    while evs.len() < TAKE {
        match rx.try_recv() {
            Ok(ev) => push(ev, evs),
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
    true
}

/// Encodes `evs` into batches and appends them as `next_seq`, ...; returns the number of batches and of
/// events written.
fn write(store: &Store, evs: &[Event], next_seq: u64) -> Result<(u64, u64), String> {
    let mut enc = Encoder::default();
    let mut done: Vec<Encoded> = Vec::new();
    for ev in evs {
        enc.push(ev);
        if enc.len() >= BATCH_EVENTS || enc.approx_bytes() >= BATCH_BYTES {
            done.push(enc.finish().map_err(|e| e.to_string())?);
        }
    }
    if !enc.is_empty() {
        done.push(enc.finish().map_err(|e| e.to_string())?);
    }
    let batches: Vec<TraceBatch> = done
        .iter()
        .map(|e| TraceBatch {
            events: e.events,
            last_time_ms: e.last_time_ms,
            correlation_ids: &e.correlation_ids,
            message_ids: &e.message_ids,
            blob: &e.blob,
        })
        .collect();
    store
        .append_trace(next_seq, &batches)
        .map_err(|e| e.to_string())?;
    Ok((
        batches.len() as u64,
        batches.iter().map(|b| b.events as u64).sum(),
    ))
}

fn run(
    store: Store,
    rx: Receiver<Event>,
    settings: TraceSettings,
    written: Arc<AtomicU64>,
    in_flight: Arc<AtomicUsize>,
) {
    match store.drop_legacy_trace() {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            keys = n,
            "trace recorder: removed the trace events of the first format"
        ),
        Err(e) => tracing::warn!(error = %e, "trace recorder: cannot remove the first format's events"),
    }
    let (mut next_seq, mut kept) = match store.trace_state() {
        Ok(s) => s.map_or((0, 0), |(last, n)| (last + 1, n)),
        Err(e) => {
            tracing::error!(error = %e, "trace recorder: cannot read the trace keyspace; tracing records nothing");
            return;
        }
    };
    let mut evs: Vec<Event> = Vec::with_capacity(TAKE);
    let mut last_prune = Instant::now();
    let mut full = false;
    loop {
        let open = take(&rx, &mut evs, &in_flight, !full);
        full = evs.len() == TAKE;
        if !evs.is_empty() {
            let busy = Instant::now();
            match write(&store, &evs, next_seq) {
                Ok((batches, events)) => {
                    next_seq += batches;
                    kept += events;
                    written.fetch_add(events, Relaxed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, n = evs.len(), "trace recorder: store write failed; events dropped")
                }
            }
            evs.clear();
            // Under overload (a full take), keep to the configured share of a core: the broker's own
            // threads come first; what the buffer cannot hold meanwhile is dropped and counted.
            let share = settings.recorder_busy_percent.clamp(1, 100);
            if full && share < 100 {
                let spent = busy.elapsed();
                std::thread::sleep(spent * (100 - share) / share);
            }
        }
        if !open {
            return;
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = Instant::now();
            let min_time = now_ms().saturating_sub(settings.max_age_secs.saturating_mul(1000));
            match store.prune_trace(kept, settings.max_events, min_time) {
                Ok(n) => kept -= n.min(kept),
                Err(e) => tracing::warn!(error = %e, "trace recorder: pruning failed"),
            }
        }
    }
}
