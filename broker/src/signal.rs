//! How queues and the store reach a connection task: a wake-up plus small lists of what happened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use protocol::ShortStr;
use tokio::sync::Notify;

use crate::message::Message;

/// Body bytes of direct replies a connection may have waiting before further replies to it are dropped.
pub const MAX_PENDING_REPLY_BYTES: u64 = 64 << 20;

/// A direct reply on its way to the requester's channel.
#[derive(Debug)]
pub struct Reply {
    pub channel: u16,
    /// The `amq.rabbitmq.reply-to.*` name it was sent to (the channel checks it is still its own).
    pub name: Arc<str>,
    pub msg: Arc<Message>,
}

/// A consumer, process-wide: the key under which a queue wakes a consumer's connection.
pub type ConsumerId = u64;

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique consumer id.
pub fn next_consumer_id() -> ConsumerId {
    NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed)
}

/// Something a connection must act on that did not come from its socket.
#[derive(Debug)]
pub enum ConnEvent {
    /// The consumer's queue was deleted: tell the client with basic.cancel.
    ConsumerCancelled(ConsumerId, ShortStr),
    /// An operator closes the connection (the management API): connection.close 320 with this text.
    ForceClose(String),
    /// The management API asks what the connection's channels and consumers are.
    Snapshot(tokio::sync::oneshot::Sender<crate::conns::ConnSnapshot>),
}

#[derive(Default)]
pub struct ConnSignal {
    notify: Notify,
    ready: Mutex<Vec<ConsumerId>>,
    events: Mutex<Vec<ConnEvent>>,
    /// Direct replies for this connection's channels, and their body bytes.
    replies: Mutex<(Vec<Reply>, u64)>,
    /// A queue this connection was throttled by went under its low-water mark.
    flow: AtomicBool,
}

impl ConnSignal {
    pub fn new() -> Self {
        Self::default()
    }

    /// A consumer's queue has a message for it.
    pub fn consumer_ready(&self, id: ConsumerId) {
        self.ready.lock().push(id);
        self.notify.notify_one();
    }

    pub fn consumer_cancelled(&self, id: ConsumerId, tag: ShortStr) {
        self.events.lock().push(ConnEvent::ConsumerCancelled(id, tag));
        self.notify.notify_one();
    }

    /// Something for the connection from outside (an operator's close, a snapshot request).
    pub fn push_event(&self, ev: ConnEvent) {
        self.events.lock().push(ev);
        self.notify.notify_one();
    }

    /// A direct reply for one of this connection's channels. Dropped (at most once, as RabbitMQ's direct
    /// reply-to) when the connection already has `MAX_PENDING_REPLY_BYTES` of replies waiting.
    pub fn push_reply(&self, reply: Reply) {
        let size = reply.msg.size();
        {
            let mut r = self.replies.lock();
            if r.1.saturating_add(size) > MAX_PENDING_REPLY_BYTES && !r.0.is_empty() {
                tracing::debug!(name = %reply.name, "direct reply dropped: the requester is too far behind");
                return;
            }
            r.1 += size;
            r.0.push(reply);
        }
        self.notify.notify_one();
    }

    /// Swaps the waiting replies with `into` (cleared first).
    pub fn take_replies(&self, into: &mut Vec<Reply>) {
        into.clear();
        let mut r = self.replies.lock();
        std::mem::swap(&mut r.0, into);
        r.1 = 0;
    }

    /// A queue that throttled this connection is under its low-water mark again.
    pub fn flow_released(&self) {
        self.flow.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether a throttling queue released this connection since the last call.
    pub fn take_flow(&self) -> bool {
        self.flow.swap(false, Ordering::AcqRel)
    }

    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Swaps the ready list with `into` (cleared first): the two buffers trade places, so waking a
    /// consumer allocates nothing once both have grown.
    pub fn take_ready(&self, into: &mut Vec<ConsumerId>) {
        into.clear();
        std::mem::swap(&mut *self.ready.lock(), into);
    }

    pub fn take_events(&self) -> Vec<ConnEvent> {
        std::mem::take(&mut *self.events.lock())
    }
}
