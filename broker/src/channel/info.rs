//! What the management API sees of a channel (`/api/channels`, `/api/consumers`): a snapshot the
//! connection task takes when asked, off the message path.

use super::Channel;
use crate::conns::{ChannelSnapshot, ConsumerSnapshot};
use crate::session::Session;

impl Channel {
    pub fn snapshot(&self, session: &Session) -> ChannelSnapshot {
        ChannelSnapshot {
            number: self.id,
            prefetch_count: self.consumer_prefetch,
            global_prefetch_count: self.channel_prefetch,
            messages_unacknowledged: self.unacked.len() as u64,
            confirm: self.confirms.is_enabled(),
            transactional: self.tx.is_some(),
            consumer_count: self
                .consumers
                .values()
                .filter(|id| session.consumers.contains_key(id))
                .count() as u32,
        }
    }
}

/// The session's consumers, for `/api/consumers`.
pub fn consumer_snapshots(session: &Session) -> Vec<ConsumerSnapshot> {
    session
        .consumers
        .values()
        .map(|c| ConsumerSnapshot {
            channel: c.channel,
            tag: c.tag.as_str().to_string(),
            queue: c.queue.name().clone(),
            ack_required: !c.no_ack,
            prefetch_count: c.limit,
            exclusive: false,
        })
        .collect()
}
