//! Direct reply-to's names: which channel of which connection consumes each `amq.rabbitmq.reply-to.<token>`
//! pseudo-queue. One registry per vhost; a reply published to one of these names on the default exchange is
//! handed straight to that connection (`ConnSignal::push_reply`), no queue in between. The channel side is
//! `channel/direct_reply_to.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::message::Message;
use crate::signal::{ConnSignal, Reply};

/// The pseudo-queue a requester consumes from and names in `reply_to`.
pub const PSEUDO_QUEUE: &str = "amq.rabbitmq.reply-to";
/// The prefix of the names the broker gives requesters (`PSEUDO_QUEUE` and a dot).
pub const NAME_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// True for `amq.rabbitmq.reply-to.<anything>`: a name that routes as a direct reply, never a queue.
pub fn is_reply_name(name: &str) -> bool {
    name.starts_with(NAME_PREFIX)
}

struct Target {
    signal: Arc<ConnSignal>,
    channel: u16,
}

#[derive(Default)]
pub struct ReplyTargets {
    by_name: Mutex<HashMap<Arc<str>, Target>>,
}

impl ReplyTargets {
    /// A new name for channel `channel` of the connection behind `signal`.
    pub fn register(&self, signal: Arc<ConnSignal>, channel: u16) -> Arc<str> {
        let name: Arc<str> = crate::names::reply_to_name().into();
        self.by_name
            .lock()
            .insert(name.clone(), Target { signal, channel });
        name
    }

    pub fn unregister(&self, name: &str) {
        self.by_name.lock().remove(name);
    }

    /// Whether someone consumes from `name` now (queue.declare on a reply name).
    pub fn exists(&self, name: &str) -> bool {
        self.by_name.lock().contains_key(name)
    }

    /// Hands `msg` to the requester behind `name`. False when nobody consumes from it (the requester went
    /// away, or the name was never given out): the reply is unroutable. A requester too far behind loses
    /// replies (at most once, as RabbitMQ's direct reply-to); that still counts as delivered.
    pub fn deliver(&self, name: &str, msg: &Arc<Message>) -> bool {
        let target = {
            let map = self.by_name.lock();
            match map.get_key_value(name) {
                Some((name, t)) => (name.clone(), t.signal.clone(), t.channel),
                None => return false,
            }
        };
        let (name, signal, channel) = target;
        signal.push_reply(Reply {
            channel,
            name,
            msg: msg.clone(),
        });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use protocol::{RawProperties, ShortStr};

    fn msg(body: Bytes) -> Arc<Message> {
        Arc::new(Message::new(
            ShortStr::from_static(""),
            ShortStr::from_static("k"),
            RawProperties::empty(),
            body,
        ))
    }

    #[test]
    fn names_route_to_their_channel_until_unregistered() {
        let t = ReplyTargets::default();
        let sig = Arc::new(ConnSignal::new());
        let a = t.register(sig.clone(), 3);
        let b = t.register(sig.clone(), 4);
        assert!(is_reply_name(&a) && a != b && !is_reply_name(PSEUDO_QUEUE));
        assert!(t.exists(&a) && t.deliver(&b, &msg(Bytes::from_static(b"x"))));
        let mut got = Vec::new();
        sig.take_replies(&mut got);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].channel, &*got[0].name), (4, &*b));
        t.unregister(&b);
        assert!(!t.exists(&b) && !t.deliver(&b, &msg(Bytes::new())));
        assert!(!t.deliver("amq.rabbitmq.reply-to.unknown", &msg(Bytes::new())));
    }

    #[test]
    fn a_requester_far_behind_loses_replies() {
        let t = ReplyTargets::default();
        let sig = Arc::new(ConnSignal::new());
        let a = t.register(sig.clone(), 1);
        let big = msg(Bytes::from(vec![
            0u8;
            (crate::signal::MAX_PENDING_REPLY_BYTES / 2)
                as usize
        ]));
        for _ in 0..3 {
            assert!(t.deliver(&a, &big), "delivered as far as routing goes");
        }
        let mut got = Vec::new();
        sig.take_replies(&mut got);
        assert_eq!(got.len(), 2, "the third went over the bound");
        assert!(t.deliver(&a, &big));
        sig.take_replies(&mut got);
        assert_eq!(got.len(), 1, "taking them makes room again");
    }
}
