//! How queues and the store reach a connection task: a wake-up plus small lists of what happened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use protocol::ShortStr;
use tokio::sync::Notify;

/// A consumer, process-wide: the key under which a queue wakes a consumer's connection.
pub type ConsumerId = u64;

static NEXT_CONSUMER_ID: AtomicU64 = AtomicU64::new(1);

/// A process-wide unique consumer id.
pub fn next_consumer_id() -> ConsumerId {
    NEXT_CONSUMER_ID.fetch_add(1, Ordering::Relaxed)
}

/// Something a connection must act on that did not come from its socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// The consumer's queue was deleted: tell the client with basic.cancel.
    ConsumerCancelled(ConsumerId, ShortStr),
}

#[derive(Default)]
pub struct ConnSignal {
    notify: Notify,
    ready: Mutex<Vec<ConsumerId>>,
    events: Mutex<Vec<ConnEvent>>,
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
