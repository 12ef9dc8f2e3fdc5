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

use protocol::RawProperties;
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
}

impl Default for TraceSettings {
    fn default() -> Self {
        TraceSettings {
            buffer_events: 65_536,
            max_events: 1_000_000,
            max_age_secs: 24 * 3600,
        }
    }
}

/// What happened to a message. The names are the API's `event` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

/// One event, serialised as the trace API returns it (absent fields omitted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// ms since the epoch.
    pub time: u64,
    pub event: Kind,
    pub vhost: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exchange: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub routing_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub queue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub queues: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub message_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub correlation_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub connection: Option<Arc<str>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub channel: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub consumer_tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub redelivered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delivery_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub target: Option<String>,
}

impl Event {
    /// An event about a message with these properties, or None when it has neither a message id nor a
    /// correlation id (it could never be looked up, so it is not recorded).
    pub fn about(kind: Kind, vhost: &Arc<str>, props: &RawProperties, time: u64) -> Option<Event> {
        let message_id = props.message_id().map(str::to_string);
        let correlation_id = props.correlation_id().map(str::to_string);
        if message_id.is_none() && correlation_id.is_none() {
            return None;
        }
        Some(Event {
            time,
            event: kind,
            vhost: vhost.clone(),
            exchange: None,
            routing_key: None,
            queue: None,
            queues: None,
            message_id,
            correlation_id,
            connection: None,
            user: None,
            channel: None,
            consumer_tag: None,
            redelivered: None,
            delivery_count: None,
            reason: None,
            target: None,
        })
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
}

impl Recorder {
    pub fn new(settings: TraceSettings) -> Arc<Recorder> {
        Arc::new(Recorder {
            settings,
            tx: OnceLock::new(),
            dropped: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            written: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Starts the recorder thread, once.
    pub fn start(&self, store: &storage::Store) -> std::io::Result<()> {
        if self.tx.get().is_some() {
            return Ok(());
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(self.settings.buffer_events.max(1));
        if self.tx.set(tx).is_ok() {
            recorder::spawn(store.clone(), rx, self.settings, self.written.clone())?;
        }
        Ok(())
    }

    /// Never blocks: a full buffer drops the event and counts it.
    pub fn record(&self, ev: Event) {
        let Some(tx) = self.tx.get() else { return };
        match tx.try_send(ev) {
            Ok(()) => {
                self.accepted.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(ev)) | Err(TrySendError::Disconnected(ev)) => {
                let n = self.dropped.fetch_add(1, Relaxed);
                // The first drop and then one in 10,000 is logged, with the message's ids.
                if n.is_multiple_of(10_000) {
                    tracing::warn!(
                        message_id = ev.message_id.as_deref(),
                        correlation_id = ev.correlation_id.as_deref(),
                        vhost = %ev.vhost,
                        dropped = n + 1,
                        "trace buffer full: trace event dropped"
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

    pub fn record(&self, ev: Option<Event>) {
        if let (Some(ev), Some(r)) = (ev, self.recorder.get()) {
            r.record(ev);
        }
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
