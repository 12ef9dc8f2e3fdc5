//! Consumer selection: the queue's consumers, the ones waiting for a message, consumer priorities
//! (`x-priority`: a waiting consumer of higher priority goes first), single active consumer
//! (`x-single-active-consumer`: one consumer takes everything, the next in line takes over when it goes) and
//! exclusive consumers.
//!
//! Delivery is pull-based: a consumer with credit pulls; one that found the queue empty is remembered as
//! waiting and woken through its connection's signal when a message arrives, so a busy queue costs no
//! wake-ups.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::ShortStr;

use crate::signal::{ConnSignal, ConsumerId};

/// A consumer as the queue sees it.
struct ConsumerReg {
    id: ConsumerId,
    tag: ShortStr,
    exclusive: bool,
    priority: i32,
    signal: Arc<ConnSignal>,
    /// Has credit and found the queue empty: wake it when a message arrives.
    waiting: bool,
}

/// Why a consumer may not join.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct InExclusiveUse;

pub(super) struct Consumers {
    list: Vec<ConsumerReg>,
    waiters: VecDeque<ConsumerId>,
    single_active: bool,
    /// Single active consumer: the one consumer allowed to take messages.
    active: Option<ConsumerId>,
    had_consumer: bool,
}

impl Consumers {
    pub fn new(single_active: bool) -> Consumers {
        Consumers {
            list: Vec::new(),
            waiters: VecDeque::new(),
            single_active,
            active: None,
            had_consumer: false,
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether the queue ever had a consumer (auto-delete waits for the first one).
    pub fn had_consumer(&self) -> bool {
        self.had_consumer
    }

    /// Registers a consumer. Exclusive consumers need an idle queue; nobody joins an exclusive consumer.
    pub fn add(
        &mut self,
        id: ConsumerId,
        tag: ShortStr,
        exclusive: bool,
        priority: i32,
        signal: Arc<ConnSignal>,
    ) -> Result<(), InExclusiveUse> {
        if self.list.iter().any(|c| c.exclusive) || (exclusive && !self.list.is_empty()) {
            return Err(InExclusiveUse);
        }
        self.had_consumer = true;
        if self.single_active && self.active.is_none() {
            self.active = Some(id);
        }
        self.list.push(ConsumerReg {
            id,
            tag,
            exclusive,
            priority,
            signal,
            waiting: false,
        });
        Ok(())
    }

    /// Removes a consumer; under single active consumer the next one in line takes over (and is woken).
    pub fn remove(&mut self, id: ConsumerId) {
        self.list.retain(|c| c.id != id);
        self.waiters.retain(|w| *w != id);
        if self.active == Some(id) {
            self.active = self.list.first().map(|c| c.id);
            if let Some(next) = self.active {
                self.wake(next);
            }
        }
    }

    /// Whether `id` may take messages now: not while another consumer is the single active one.
    pub fn may_take(&self, id: ConsumerId) -> bool {
        self.active.is_none_or(|a| a == id)
    }

    pub fn priority(&self, id: ConsumerId) -> Option<i32> {
        self.list.iter().find(|c| c.id == id).map(|c| c.priority)
    }

    /// A waiting consumer of higher priority than `id`'s, which should get the next messages instead.
    pub fn better_waiting(&self, id: ConsumerId, priority: i32) -> Option<ConsumerId> {
        self.list
            .iter()
            .filter(|c| c.waiting && c.priority > priority && c.id != id)
            .max_by_key(|c| c.priority)
            .map(|c| c.id)
    }

    pub fn any_waiting(&self) -> bool {
        self.list.iter().any(|c| c.waiting)
    }

    /// `id` found the queue empty (or yielded): wake it when a message arrives.
    pub fn register_waiter(&mut self, id: ConsumerId) {
        if let Some(c) = self.list.iter_mut().find(|c| c.id == id) {
            if !c.waiting {
                c.waiting = true;
                self.waiters.push_back(id);
            }
        }
    }

    /// `id` took all it asked for: it is not waiting any more (a later wake-up would go to a consumer
    /// whose window may be full, and be lost while others wait).
    pub fn unregister_waiter(&mut self, id: ConsumerId) {
        if let Some(c) = self.list.iter_mut().find(|c| c.id == id) {
            if c.waiting {
                c.waiting = false;
                self.waiters.retain(|w| *w != id);
            }
        }
    }

    pub fn wake(&mut self, id: ConsumerId) {
        if let Some(c) = self.list.iter_mut().find(|c| c.id == id) {
            c.waiting = false;
            c.signal.consumer_ready(id);
        }
        self.waiters.retain(|w| *w != id);
    }

    /// Wakes up to `n` consumers that were waiting for messages: the active one under single active
    /// consumer, else highest consumer priority first, then longest waiting.
    pub fn wake_waiters(&mut self, mut n: usize) {
        if let Some(active) = self.active {
            if n > 0 && self.list.iter().any(|c| c.id == active && c.waiting) {
                self.wake(active);
            }
            return;
        }
        while n > 0 && !self.waiters.is_empty() {
            let best = self
                .waiters
                .iter()
                .enumerate()
                .filter_map(|(i, id)| self.list.iter().find(|c| c.id == *id).map(|c| (i, c.priority)))
                .max_by_key(|(i, p)| (*p, std::cmp::Reverse(*i)));
            match best {
                Some((i, _)) => {
                    let Some(id) = self.waiters.remove(i) else { break };
                    if let Some(c) = self.list.iter_mut().find(|c| c.id == id) {
                        c.waiting = false;
                        c.signal.consumer_ready(id);
                    }
                    n -= 1;
                }
                None => {
                    self.waiters.clear();
                }
            }
        }
    }

    /// The queue is gone: every consumer's connection is told (basic.cancel), and nobody waits any more.
    pub fn cancel_all(&mut self) {
        for c in self.list.drain(..) {
            c.signal.consumer_cancelled(c.id, c.tag.clone());
        }
        self.waiters.clear();
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::ConnEvent;

    fn add(c: &mut Consumers, id: ConsumerId, priority: i32, sig: &Arc<ConnSignal>) {
        c.add(id, ShortStr::from_static("t"), false, priority, sig.clone())
            .unwrap();
    }

    fn woken(sig: &ConnSignal) -> Vec<ConsumerId> {
        let mut v = Vec::new();
        sig.take_ready(&mut v);
        v
    }

    #[test]
    fn highest_priority_then_longest_waiting_is_woken_first() {
        let sig = Arc::new(ConnSignal::new());
        let mut c = Consumers::new(false);
        for (id, p) in [(1, 0), (2, 5), (3, 5), (4, 1)] {
            add(&mut c, id, p, &sig);
        }
        for id in [1, 3, 2, 4] {
            c.register_waiter(id);
        }
        c.register_waiter(3); // already waiting: no second place in line
        assert!(c.any_waiting());
        c.wake_waiters(3);
        assert_eq!(woken(&sig), [3, 2, 4]);
        c.wake_waiters(5);
        assert_eq!(woken(&sig), [1]);
        assert!(!c.any_waiting());
    }

    #[test]
    fn a_better_waiting_consumer_is_named() {
        let sig = Arc::new(ConnSignal::new());
        let mut c = Consumers::new(false);
        add(&mut c, 1, 0, &sig);
        add(&mut c, 2, 3, &sig);
        assert_eq!(c.better_waiting(1, 0), None, "2 is not waiting");
        c.register_waiter(2);
        assert_eq!(c.better_waiting(1, 0), Some(2));
        assert_eq!(c.better_waiting(2, 3), None);
    }

    #[test]
    fn single_active_consumer_hands_over_in_order() {
        let sig = Arc::new(ConnSignal::new());
        let mut c = Consumers::new(true);
        for id in [1, 2, 3] {
            add(&mut c, id, 0, &sig);
        }
        assert!(c.may_take(1) && !c.may_take(2));
        c.register_waiter(2);
        c.wake_waiters(1);
        assert!(woken(&sig).is_empty(), "only the active consumer is woken");
        c.remove(1);
        assert!(c.may_take(2) && !c.may_take(3));
        assert_eq!(woken(&sig), [2], "the new active consumer is woken");
    }

    #[test]
    fn exclusive_consumers_need_an_idle_queue_and_keep_it() {
        let sig = Arc::new(ConnSignal::new());
        let mut c = Consumers::new(false);
        add(&mut c, 1, 0, &sig);
        let t = ShortStr::from_static("x");
        assert_eq!(c.add(2, t.clone(), true, 0, sig.clone()), Err(InExclusiveUse));
        c.remove(1);
        assert!(c.had_consumer() && c.is_empty());
        c.add(2, t.clone(), true, 0, sig.clone()).unwrap();
        assert_eq!(c.add(3, t, false, 0, sig.clone()), Err(InExclusiveUse));
        c.cancel_all();
        assert!(c.is_empty());
        let events = sig.take_events();
        assert!(
            matches!(&events[..], [ConnEvent::ConsumerCancelled(2, t)] if t.as_str() == "x"),
            "{events:?}"
        );
    }
}
