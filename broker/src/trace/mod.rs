//! Message tracing (issue 15): per-vhost switch, the events of a traced message's life, and the handle that
//! passes them to the recorder thread (`recorder.rs`) without ever waiting. RabbitMQ's firehose
//! (`amq.rabbitmq.trace`) is `firehose.rs`; the channel's hooks are `channel/trace.rs`. docs/event-streams.md
//! (Tracing) describes what is recorded.
//!
//! Cost when tracing is off for a vhost: one relaxed load of `VhostTrace::on` per publish, per delivered
//! message and per settle. When on: an event is built (a few small strings) and `try_send` on a bounded
//! channel; a full channel drops the event and counts it (`dropped`), so publishers never wait.

pub mod control;
pub mod firehose;
pub mod recorder;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};

use protocol::{RawProperties, ShortStr};
use serde::{Deserialize, Serialize};

/// The `[trace]` table of the TOML file: the recorder's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceSettings {
    /// Events buffered between the broker and the recorder thread; beyond, events are dropped and counted.
    pub buffer_events: usize,
    /// Events kept in the store; the oldest go first.
    pub max_events: u64,
    /// Events older than this (seconds) are removed.
    pub max_age_secs: u64,
    /// The share of a core the recorder thread may use under overload, in percent: after writing a batch
    /// it sleeps long enough to stay under it (what it cannot take is dropped and counted).
    pub recorder_busy_percent: u32,
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            buffer_events: 65_536,
            max_events: 1_000_000,
            max_age_secs: 24 * 3600,
            recorder_busy_percent: 25,
        }
    }
}

/// What happened to a message. The names are the API's `event` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Published,
    Routed,
    Delivered,
    Acked,
    Nacked,
    Rejected,
    Expired,
    DeadLettered,
    Redriven,
}

/// A message's ids, copied once per hook (small; shared by the events of one hook).
#[derive(Debug)]
pub struct Ids {
    pub message_id: Option<Box<str>>,
    pub correlation_id: Option<Box<str>>,
}

impl Ids {
    /// None when the message has neither id: it could never be looked up, so it is not recorded.
    pub fn of(props: &RawProperties) -> Option<Arc<Ids>> {
        let message_id = props.message_id().map(Box::from);
        let correlation_id = props.correlation_id().map(Box::from);
        if message_id.is_none() && correlation_id.is_none() {
            return None;
        }
        Some(Arc::new(Ids {
            message_id,
            correlation_id,
        }))
    }
}

/// One event as the hooks make it: reference-counted parts, no string formatting on the broker's threads;
/// the recorder turns it into the API's JSON (`recorder.rs`).
#[derive(Debug, Clone)]
pub struct Event {
    /// ms since the epoch.
    pub time: u64,
    pub event: Kind,
    pub vhost: Arc<str>,
    pub ids: Arc<Ids>,
    pub exchange: Option<ShortStr>,
    pub routing_key: Option<ShortStr>,
    pub queue: Option<Arc<str>>,
    pub queues: Option<Vec<Arc<str>>>,
    pub connection: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub channel: Option<u16>,
    pub consumer_tag: Option<ShortStr>,
    pub redelivered: Option<bool>,
    pub delivery_count: Option<u32>,
    pub reason: Option<&'static str>,
    pub target: Option<Arc<str>>,
}

impl Event {
    pub fn new(kind: Kind, vhost: &Arc<str>, ids: &Arc<Ids>, time: u64) -> Event {
        Event {
            time,
            event: kind,
            vhost: vhost.clone(),
            ids: ids.clone(),
            exchange: None,
            routing_key: None,
            queue: None,
            queues: None,
            connection: None,
            user: None,
            channel: None,
            consumer_tag: None,
            redelivered: None,
            delivery_count: None,
            reason: None,
            target: None,
        }
    }
}

/// The broker-wide handle to the recorder: a bounded channel and the counters. The recorder thread is
/// started the first time a vhost switches tracing on (`start`), so a broker that never traces runs none.
pub struct Recorder {
    settings: TraceSettings,
    tx: OnceLock<SyncSender<Event>>,
    /// Events dropped because the buffer was full.
    pub dropped: AtomicU64,
    /// Events accepted into the buffer.
    pub accepted: AtomicU64,
    /// Events written to the store.
    pub written: Arc<AtomicU64>,
    last_warn_ms: AtomicU64,
    /// Events in the buffer (sent, not yet taken by the recorder): lets a hook see a full buffer before it
    /// builds anything.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

impl Recorder {
    pub fn new(settings: TraceSettings) -> Arc<Recorder> {
        Arc::new(Recorder {
            settings,
            tx: OnceLock::new(),
            dropped: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            written: Arc::new(AtomicU64::new(0)),
            last_warn_ms: AtomicU64::new(0),
            in_flight: Arc::default(),
        })
    }

    /// Starts the recorder thread, once.
    pub fn start(&self, store: &storage::Store) -> std::io::Result<()> {
        if self.tx.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(self.settings.buffer_events.max(1));
        if self.tx.set(tx).is_ok() {
            recorder::spawn(
                store.clone(),
                rx,
                self.settings,
                self.written.clone(),
                self.in_flight.clone(),
            )?;
        }
        Ok(())
    }

    /// Whether the buffer has room for `n` more events; if not, they are counted as dropped (a hook asks
    /// before it builds its events, so overload costs a load and an add, no allocation).
    pub fn room(&self, n: u64) -> bool {
        if self.in_flight.load(Relaxed) < self.settings.buffer_events {
            return true;
        }
        self.dropped.fetch_add(n, Relaxed);
        false
    }

    /// Never blocks: a full buffer drops the event and counts it.
    pub fn record(&self, ev: Event) {
        let Some(tx) = self.tx.get() else { return };
        // Counted before the send, so the recorder's decrement never comes first.
        self.in_flight.fetch_add(1, Relaxed);
        match tx.try_send(ev) {
            Ok(()) => {
                self.accepted.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(ev)) | Err(TrySendError::Disconnected(ev)) => {
                self.in_flight.fetch_sub(1, Relaxed);
                let n = self.dropped.fetch_add(1, Relaxed) + 1;
                // At most one line every 10 s, with the ids of the message whose event was dropped.
                let now = crate::clock::now_ms();
                let last = self.last_warn_ms.load(Relaxed);
                if now >= last + 10_000
                    && self
                        .last_warn_ms
                        .compare_exchange(last, now, Relaxed, Relaxed)
                        .is_ok()
                {
                    tracing::warn!(
                        message_id = ev.ids.message_id.as_deref(),
                        correlation_id = ev.ids.correlation_id.as_deref(),
                        vhost = %ev.vhost,
                        dropped = n,
                        "trace buffer full: trace events dropped"
                    );
                }
            }
        }
    }
}

/// A vhost's tracing switch and its way to the recorder.
#[derive(Default)]
pub struct VhostTrace {
    on: AtomicBool,
    recorder: OnceLock<Arc<Recorder>>,
}

impl VhostTrace {
    /// Whether tracing is on: the one check the hot path pays.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.load(Relaxed)
    }

    pub fn set(&self, on: bool) {
        self.on.store(on, Relaxed);
    }

    pub fn attach(&self, recorder: Arc<Recorder>) {
        let _ = self.recorder.set(recorder);
    }

    pub fn record(&self, ev: Event) {
        if let Some(r) = self.recorder.get() {
            r.record(ev);
        }
    }

    /// Room for `n` events (else they are counted as dropped): asked before building them.
    #[inline]
    pub fn room(&self, n: u64) -> bool {
        self.recorder.get().is_some_and(|r| r.room(n))
    }
}

/// The message id and correlation id of a message, for log lines (`tracing` fields).
pub fn ids(props: &RawProperties) -> (Option<&str>, Option<&str>) {
    (props.message_id(), props.correlation_id())
}

/// `mailroom@<host>` (the management API's node name), read once: the firehose's `node` header.
pub fn node_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("mailroom@{host}")
    })
}
