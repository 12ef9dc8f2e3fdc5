//! Message tracing (issue 15): per-vhost switch, the events of a traced message's life, and the handle that
//! passes them to the recorder thread (`recorder.rs`) without ever waiting. RabbitMQ's firehose
//! (`amq.rabbitmq.trace`) is `firehose.rs`; the channel's hooks are `channel/trace.rs`. docs/event-streams.md
//! (Tracing) describes what is recorded.
//!
//! Cost when tracing is off for a vhost: one relaxed load of `VhostTrace::on` per publish, per delivered
//! message and per settle. When on: a check that the buffer has room (a relaxed load), then an event of
//! reference-counted parts and the ids' bytes (no string is built, no allocation for ids that fit inline)
//! and a `try_send` on a bounded channel; a full buffer drops the event and counts it (`dropped`), so
//! publishers never wait. The recorder thread (`recorder.rs`) encodes the events compactly (`batch.rs`)
//! and writes them a batch per sled value.

pub mod batch;
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
            recorder_busy_percent: 10,
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

impl Kind {
    const ALL: [Kind; 9] = [
        Kind::Published,
        Kind::Routed,
        Kind::Delivered,
        Kind::Acked,
        Kind::Nacked,
        Kind::Rejected,
        Kind::Expired,
        Kind::DeadLettered,
        Kind::Redriven,
    ];

    /// The number the stored batches use.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(c: u8) -> Option<Kind> {
        Kind::ALL.get(c as usize).copied()
    }
}

/// Ids up to this many bytes together (two UUIDs fit) are kept inline in the event: no allocation.
const IDS_INLINE: usize = 80;

#[derive(Debug, Clone)]
enum IdBytes {
    Inline([u8; IDS_INLINE]),
    Heap(Box<[u8]>),
}

/// A message's message id and correlation id, copied as bytes into the event (inline when short, as ids
/// almost always are); turned into text by the recorder thread.
#[derive(Debug, Clone)]
pub struct Ids {
    /// Lengths of the message id and the correlation id (`None`: absent).
    message_len: Option<u8>,
    correlation_len: Option<u8>,
    bytes: IdBytes,
}

impl Ids {
    /// None when the message has neither id: it could never be looked up, so it is not recorded.
    pub fn of(props: &RawProperties) -> Option<Ids> {
        let (mo, co) = (props.message_id(), props.correlation_id());
        if mo.is_none() && co.is_none() {
            return None;
        }
        let (m, c) = (mo.unwrap_or_default(), co.unwrap_or_default());
        let total = m.len() + c.len();
        let bytes = if total <= IDS_INLINE {
            let mut b = [0u8; IDS_INLINE];
            b[..m.len()].copy_from_slice(m.as_bytes());
            b[m.len()..total].copy_from_slice(c.as_bytes());
            IdBytes::Inline(b)
        } else {
            let mut b = Vec::with_capacity(total);
            b.extend_from_slice(m.as_bytes());
            b.extend_from_slice(c.as_bytes());
            IdBytes::Heap(b.into_boxed_slice())
        };
        Some(Ids {
            message_len: mo.map(|s| s.len() as u8),
            correlation_len: co.map(|s| s.len() as u8),
            bytes,
        })
    }

    fn all(&self) -> &[u8] {
        match &self.bytes {
            IdBytes::Inline(b) => b,
            IdBytes::Heap(b) => b,
        }
    }

    pub fn message_id(&self) -> Option<&str> {
        let n = self.message_len? as usize;
        std::str::from_utf8(self.all().get(..n)?).ok()
    }

    pub fn correlation_id(&self) -> Option<&str> {
        let n = self.correlation_len? as usize;
        let m = self.message_len.unwrap_or(0) as usize;
        std::str::from_utf8(self.all().get(m..m + n)?).ok()
    }
}

/// The queues a message was routed to: one (the common case) without an allocation.
#[derive(Debug, Clone)]
pub enum Queues {
    One(router::Name),
    Many(Box<[router::Name]>),
}

impl Queues {
    pub fn of(dests: &[router::Name]) -> Queues {
        Self::of_names(dests.iter())
    }

    /// From the names of the queues as they come (the publish path has the queues, not a slice of names).
    pub fn of_names<'a>(mut names: impl ExactSizeIterator<Item = &'a router::Name>) -> Queues {
        match names.len() {
            1 => Queues::One(names.next().expect("one name").clone()),
            _ => Queues::Many(names.cloned().collect()),
        }
    }

    pub fn as_slice(&self) -> &[router::Name] {
        match self {
            Queues::One(q) => std::slice::from_ref(q),
            Queues::Many(qs) => qs,
        }
    }
}

/// Who an event is about: the vhost, and the connection and user of a session's events (none for a
/// vhost's own, such as expiry). One per session, shared by all its events: one reference count per event
/// instead of three, and the recorder resolves it once per batch (by address).
#[derive(Debug)]
pub struct Source {
    pub vhost: Arc<str>,
    pub connection: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
}

impl Source {
    /// A vhost's own events.
    pub fn vhost(name: &Arc<str>) -> Arc<Source> {
        Arc::new(Source {
            vhost: name.clone(),
            connection: None,
            user: None,
        })
    }
}

/// One event as the hooks make it: reference-counted parts and the ids' bytes, no string formatting and
/// (for ids that fit inline and a message routed to at most one queue) no allocation on the broker's
/// threads; the recorder encodes it (`batch.rs`). A `Published` event with `queues` set is two events,
/// `published` then `routed` (one send for the pair).
#[derive(Debug, Clone)]
pub struct Event {
    /// ms since the epoch.
    pub time: u64,
    pub event: Kind,
    pub source: Arc<Source>,
    pub ids: Ids,
    pub exchange: Option<ShortStr>,
    pub routing_key: Option<ShortStr>,
    pub queue: Option<Arc<str>>,
    pub queues: Option<Queues>,
    pub channel: Option<u16>,
    pub consumer_tag: Option<ShortStr>,
    pub redelivered: Option<bool>,
    pub delivery_count: Option<u32>,
    pub reason: Option<&'static str>,
    pub target: Option<Arc<str>>,
}

impl Event {
    pub fn new(kind: Kind, source: &Arc<Source>, ids: Ids, time: u64) -> Event {
        Event {
            time,
            event: kind,
            source: source.clone(),
            ids,
            exchange: None,
            routing_key: None,
            queue: None,
            queues: None,
            channel: None,
            consumer_tag: None,
            redelivered: None,
            delivery_count: None,
            reason: None,
            target: None,
        }
    }

    /// How many recorded events this is (2 for a published-and-routed pair).
    pub fn count(&self) -> usize {
        if self.event == Kind::Published && self.queues.is_some() {
            2
        } else {
            1
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
        let count = ev.count();
        // Counted before the send, so the recorder's decrement never comes first.
        self.in_flight.fetch_add(count, Relaxed);
        match tx.try_send(ev) {
            Ok(()) => {
                self.accepted.fetch_add(count as u64, Relaxed);
            }
            Err(TrySendError::Full(ev)) | Err(TrySendError::Disconnected(ev)) => {
                self.in_flight.fetch_sub(count, Relaxed);
                let n = self.dropped.fetch_add(count as u64, Relaxed) + count as u64;
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
                        message_id = ev.ids.message_id(),
                        correlation_id = ev.ids.correlation_id(),
                        vhost = %ev.source.vhost,
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
    /// The source of the vhost's own events.
    source: OnceLock<Arc<Source>>,
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

    pub fn attach(&self, recorder: Arc<Recorder>, vhost: &Arc<str>) {
        let _ = self.recorder.set(recorder);
        let _ = self.source.set(Source::vhost(vhost));
    }

    /// The source of the vhost's own events (None before `attach`).
    pub fn source(&self) -> Option<&Arc<Source>> {
        self.source.get()
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
