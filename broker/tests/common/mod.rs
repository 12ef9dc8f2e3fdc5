//! A queue as the broker's callers use it: every operation that may kill messages hands its dead letters to
//! the vhost (`VHost::dead_letter`), as channels and the timer do. Derefs to the queue for everything else.

#![allow(dead_code)]

use std::ops::Deref;
use std::sync::Arc;

use broker::message::Message;
use broker::queue::{ConsumerId, DeadLetters, Entry, Queue, Rejected};
use broker::vhost::VHost;

pub struct DlQueue {
    q: Arc<Queue>,
    vhost: Arc<VHost>,
}

impl DlQueue {
    pub fn new(vhost: &Arc<VHost>, q: Arc<Queue>) -> DlQueue {
        DlQueue {
            q,
            vhost: vhost.clone(),
        }
    }

    pub fn publish(&self, msg: Arc<Message>, now: u64) -> Result<u64, Rejected> {
        let mut dead = DeadLetters::new();
        let r = self.q.publish(msg, now, &mut dead);
        self.vhost.dead_letter(&self.q, &mut dead, now);
        r
    }

    pub fn pull(&self, id: ConsumerId, max: usize, ack: bool, now: u64, out: &mut Vec<Entry>) -> usize {
        let mut dead = DeadLetters::new();
        let n = self.q.pull(id, max, ack, now, out, &mut dead);
        self.vhost.dead_letter(&self.q, &mut dead, now);
        n
    }

    pub fn get(&self, ack: bool, now: u64) -> Option<(Entry, u32)> {
        let mut dead = DeadLetters::new();
        let r = self.q.get(ack, now, &mut dead);
        self.vhost.dead_letter(&self.q, &mut dead, now);
        r
    }

    pub fn requeue(&self, entries: impl IntoIterator<Item = Entry>, now: u64) {
        let mut dead = DeadLetters::new();
        self.q.requeue(entries, now, &mut dead);
        self.vhost.dead_letter(&self.q, &mut dead, now);
    }

    pub fn reject(&self, entries: Vec<Entry>, now: u64) {
        let mut dead = DeadLetters::new();
        self.q.reject(entries, &mut dead);
        self.vhost.dead_letter(&self.q, &mut dead, now);
    }
}

impl Deref for DlQueue {
    type Target = Arc<Queue>;

    fn deref(&self) -> &Arc<Queue> {
        &self.q
    }
}
