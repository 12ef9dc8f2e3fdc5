//! Message moves as tasks (issue 14: redrive with progress, a rate limit and cancel, SQS's
//! StartMessageMoveTask semantics), surviving a restart half-way with no message lost or doubled.
//!
//! A task runs on a thread of its own (operator work, not the hot path) in batches. Each batch:
//!
//! 1. takes up to a batch of ready messages from the source (`Queue::take`: out of the queue in memory,
//!    still in the store);
//! 2. records its *intent* durably in the task's record: the source seqs it is moving and, for each target
//!    queue, the seq the target's next message will get (`Pending`);
//! 3. publishes a copy of each message to its target (the queue it last died in, from its `x-death`, or
//!    the task's destination), marked with the header `x-mailroom-redrive: "<task id>:<source seq>"`, and
//!    waits until the copies are durable;
//! 4. removes the originals from the source's store and records the progress (moved, no intent) durably.
//!
//! A crash between 3 and 4 leaves the originals in the source and, maybe, copies in the targets. At start
//! (`resume_all`, before any listener accepts), the intent says where to look: the targets' stored messages
//! from the recorded seqs on are read and the copies of this batch recognised by their header; those
//! originals are then removed without being published again; the rest are moved as usual. A crash before
//! 3 finished leaves no durable copy of a message the resumed task will move again; after 4 nothing is in
//! doubt. So every message ends up in its target exactly once (a copy that a consumer took and acked
//! before the crash is the one exception: that message is moved again, AMQP's at-least-once).
//!
//! Messages with no destination (no `x-death` and no `to`, or a queue that is gone) and those not in
//! `message_ids` are held aside by the task and put back at their places when it ends (`kept`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{FieldValue, LongStr};
use storage::{StateKind, StoreError};

use crate::broker::Broker;
use crate::deadletter::deaths;
use crate::message::Message;
use crate::queue::{DeadLetters, Entry, Queue};
use crate::tasks::{Pending, TaskRecord, TaskSlot, TaskState};

/// The header a moved copy carries: `"<task id>:<source seq>"`.
pub const MARK_HEADER: &str = "x-mailroom-redrive";
/// Messages per batch without a rate limit.
const BATCH_MAX: usize = 100;
/// Stored messages read per step when looking for a crashed batch's copies.
const SCAN_BATCH: usize = 256;

/// What the API asked for.
#[derive(Debug, Clone, Default)]
pub struct MoveRequest {
    pub to: Option<String>,
    pub count: Option<u64>,
    pub message_ids: Option<Vec<String>>,
    pub rate: Option<u64>,
}

/// Creates a task moving messages out of `source` (which the caller found) and starts it.
pub fn start(
    broker: &Arc<Broker>,
    vhost: &str,
    source: &Queue,
    req: MoveRequest,
) -> Result<Arc<TaskSlot>, StoreError> {
    let ready = source.counts().0 as u64;
    let total = match (&req.message_ids, req.count) {
        (Some(ids), c) => (ids.len() as u64).min(c.unwrap_or(u64::MAX)),
        (None, Some(c)) => c.min(ready),
        (None, None) => ready,
    };
    let record = TaskRecord {
        id: broker.tasks.next_id(),
        kind: "message_move".into(),
        vhost: vhost.to_owned(),
        source: source.name().to_string(),
        destination: req.to,
        state: TaskState::Running,
        moved: 0,
        kept: 0,
        total,
        rate_limit: req.rate,
        count: req.count,
        message_ids: req.message_ids,
        started: crate::clock::now_ms(),
        finished: None,
        error: None,
        pending: None,
    };
    persist(broker, &record)?;
    let slot = broker.tasks.insert(record);
    spawn(broker.clone(), slot.clone(), HashSet::new());
    Ok(slot)
}

/// At start: loads every stored task and resumes the ones that were running, after settling the batch a
/// crash left in doubt. Runs before the listeners accept, so nobody takes those messages first.
pub fn resume_all(broker: &Arc<Broker>) -> Result<usize, StoreError> {
    let mut resumed = 0;
    for (_, value) in broker.store.entity_state(StateKind::Task, "", "")? {
        let record: TaskRecord = match serde_json::from_slice(&value) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "unreadable task record skipped");
                continue;
            }
        };
        let running = record.state == TaskState::Running;
        let copied = if running {
            copied_seqs(broker, &record)?
        } else {
            HashSet::new()
        };
        let slot = broker.tasks.insert(record);
        if running {
            {
                // Messages kept aside before the restart are back in the source: they are counted again.
                let mut r = slot.record.lock();
                r.kept = 0;
            }
            tracing::info!(
                task = slot.snapshot().id,
                in_doubt_found = copied.len(),
                "resuming a message move"
            );
            spawn(broker.clone(), slot, copied);
            resumed += 1;
        }
    }
    Ok(resumed)
}

/// The source seqs of a crashed batch whose copies are durable in their targets.
fn copied_seqs(broker: &Broker, record: &TaskRecord) -> Result<HashSet<u64>, StoreError> {
    let mut found = HashSet::new();
    let Some(p) = &record.pending else {
        return Ok(found);
    };
    let Some(vh) = broker.vhost(&record.vhost) else {
        return Ok(found);
    };
    let prefix = format!("{}:", record.id);
    for (name, mark) in &p.marks {
        let Some(q) = vh.queue(name) else { continue };
        let mut from = *mark;
        loop {
            let batch = q.stored_from(from, SCAN_BATCH)?;
            for e in &batch {
                let seq =
                    mark_of(&e.msg).and_then(|m| m.strip_prefix(&prefix).and_then(|s| s.parse::<u64>().ok()));
                if let Some(seq) = seq.filter(|s| p.seqs.contains(s)) {
                    found.insert(seq);
                }
            }
            match batch.last() {
                Some(last) if batch.len() == SCAN_BATCH => from = last.seq + 1,
                _ => break,
            }
        }
    }
    Ok(found)
}

fn mark_of(msg: &Message) -> Option<String> {
    let h = msg.properties.headers().ok().flatten()?;
    h.get(MARK_HEADER).and_then(FieldValue::as_str).map(str::to_owned)
}

/// The copy a move publishes: the message with its mark.
fn marked(msg: &Message, task: u64, seq: u64) -> Message {
    let mut headers = msg.properties.headers().ok().flatten().unwrap_or_default();
    headers.insert(
        MARK_HEADER,
        FieldValue::LongStr(LongStr::from(format!("{task}:{seq}").as_str())),
    );
    let props = msg
        .properties
        .with_headers(headers)
        .unwrap_or_else(|_| msg.properties.clone());
    Message::new(
        msg.exchange.clone(),
        msg.routing_key.clone(),
        props,
        msg.body.clone(),
    )
}

fn persist(broker: &Broker, r: &TaskRecord) -> Result<u64, StoreError> {
    let bytes = serde_json::to_vec(r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    broker
        .store
        .put_entity_state(StateKind::Task, "", "", &r.id.to_be_bytes(), bytes)
}

fn wait(broker: &Broker, ticket: u64) -> Result<(), StoreError> {
    if ticket == 0 {
        return Ok(());
    }
    broker.store.request_flush();
    broker.store.wait_durable_blocking(ticket)
}

fn persist_durably(broker: &Broker, r: &TaskRecord) -> Result<(), StoreError> {
    let t = persist(broker, r)?;
    wait(broker, t)
}

fn spawn(broker: Arc<Broker>, slot: Arc<TaskSlot>, copied: HashSet<u64>) {
    let id = slot.snapshot().id;
    let spawned = std::thread::Builder::new()
        .name(format!("task-{id}"))
        .spawn(move || run(&broker, &slot, copied));
    if let Err(e) = spawned {
        tracing::error!(task = id, error = %e, "cannot start a task thread");
    }
}

fn run(broker: &Broker, slot: &TaskSlot, mut copied: HashSet<u64>) {
    let outcome = run_batches(broker, slot, &mut copied);
    let snap = {
        let mut r = slot.record.lock();
        match outcome {
            Ok(state) => r.state = state,
            Err(e) => {
                tracing::error!(task = r.id, error = %e, "message move failed");
                r.state = TaskState::Failed;
                r.error = Some(e);
            }
        }
        r.finished = Some(crate::clock::now_ms());
        r.pending = None;
        r.clone()
    };
    if let Err(e) = persist_durably(broker, &snap) {
        tracing::error!(task = snap.id, error = %e, "cannot store the task's end");
    }
}

/// Test-only fault injection, compiled into debug builds only: `MAILROOM_TEST_ABORT_AFTER_MOVE_COPIES=N`
/// aborts the process once the copies of a task's N-th batch are durable and before the originals are
/// removed (the crash the restart must settle: tests/tests/http_tasks.rs).
#[cfg(debug_assertions)]
fn crash_hook(batches: u64) {
    let at = std::env::var("MAILROOM_TEST_ABORT_AFTER_MOVE_COPIES")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    if at == Some(batches) {
        tracing::error!(
            batches,
            "test hook: aborting between a move's copies and its removals"
        );
        std::process::abort();
    }
}

#[cfg(not(debug_assertions))]
fn crash_hook(_: u64) {}

fn message_id(e: &Entry) -> Option<&str> {
    e.msg.properties.message_id()
}

fn run_batches(broker: &Broker, slot: &TaskSlot, copied: &mut HashSet<u64>) -> Result<TaskState, String> {
    let start = slot.snapshot();
    let vh = broker.vhost(&start.vhost).ok_or("the vhost was deleted")?;
    let src = vh.queue(&start.source).ok_or("the source queue was deleted")?;
    let ids: Option<HashSet<String>> = start.message_ids.as_ref().map(|v| v.iter().cloned().collect());
    let mut held: Vec<Entry> = Vec::new();
    let mut kept = 0u64;
    let mut processed_here = 0u64;
    let begun = Instant::now();
    let mut batches = 0u64;
    let result = loop {
        if slot.cancelled() {
            break Ok(TaskState::Cancelled);
        }
        let moved = slot.record.lock().moved;
        let done = if ids.is_some() { moved } else { moved + kept };
        if done >= start.total {
            break Ok(TaskState::Done);
        }
        let batch = match start.rate_limit {
            Some(r) => (r as usize / 10).clamp(1, BATCH_MAX),
            None => BATCH_MAX,
        };
        let batch = if ids.is_some() {
            batch
        } else {
            batch.min((start.total - done) as usize)
        };
        let taken = src.take(batch, crate::clock::now_ms());
        if taken.is_empty() {
            break Ok(TaskState::Done);
        }
        let mut moves: Vec<(Entry, Arc<Queue>)> = Vec::new();
        let mut landed: Vec<Entry> = Vec::new();
        for e in taken {
            if copied.remove(&e.seq) {
                // Moved before a crash: its copy is durable in its target.
                landed.push(e);
                continue;
            }
            if let Some(ids) = &ids {
                if !message_id(&e).is_some_and(|m| ids.contains(m)) {
                    held.push(e);
                    continue;
                }
            }
            let target = start
                .destination
                .clone()
                .or_else(|| deaths(&e.msg.properties).into_iter().next().map(|(q, _)| q));
            match target.and_then(|t| vh.queue(&t)) {
                Some(q) if !Arc::ptr_eq(&q, &src) => moves.push((e, q)),
                _ => {
                    kept += 1;
                    held.push(e);
                }
            }
        }
        if !moves.is_empty() {
            let mut marks: Vec<(String, u64)> = Vec::new();
            for (_, q) in &moves {
                if !marks.iter().any(|(n, _)| n.as_str() == &**q.name()) {
                    marks.push((q.name().to_string(), q.next_seq()));
                }
            }
            let snap = {
                let mut r = slot.record.lock();
                r.pending = Some(Pending {
                    seqs: moves.iter().map(|(e, _)| e.seq).collect(),
                    marks,
                });
                r.clone()
            };
            if let Err(e) = persist_durably(broker, &snap) {
                held.extend(moves.into_iter().map(|(e, _)| e));
                held.extend(landed);
                break Err(format!("cannot record the batch: {e}"));
            }
        }
        let now = crate::clock::now_ms();
        let mut ticket = 0;
        let mut published: Vec<Entry> = Vec::new();
        for (e, q) in moves {
            let copy = Arc::new(marked(&e.msg, start.id, e.seq));
            let mut dead = DeadLetters::new();
            match q.publish(copy, now, &mut dead) {
                Ok(t) => {
                    ticket = ticket.max(t);
                    published.push(e);
                }
                Err(_) => {
                    kept += 1;
                    held.push(e);
                }
            }
            vh.dead_letter(&q, &mut dead, now);
        }
        if let Err(e) = wait(broker, ticket) {
            held.extend(published);
            held.extend(landed);
            break Err(format!("the moved copies did not become durable: {e}"));
        }
        batches += 1;
        crash_hook(batches);
        landed.extend(published);
        src.forget(&landed);
        processed_here += landed.len() as u64;
        let snap = {
            let mut r = slot.record.lock();
            r.moved += landed.len() as u64;
            r.kept = kept;
            r.pending = None;
            r.clone()
        };
        if let Err(e) = persist_durably(broker, &snap) {
            break Err(format!("cannot record the progress: {e}"));
        }
        if let Some(rate) = start.rate_limit.filter(|r| *r > 0) {
            let due = begun + Duration::from_secs_f64((processed_here + kept) as f64 / rate as f64);
            while Instant::now() < due && !slot.cancelled() {
                std::thread::sleep(
                    due.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(50)),
                );
            }
        }
    };
    src.untake(held);
    result
}
