//! Ready messages by priority level: one level unless the queue has `x-max-priority`, each level in seq
//! order. The highest non-empty level is served first; a requeued message goes back to its seq position in
//! its level. Keeps the count and the body bytes the length limits look at.

use std::collections::VecDeque;

use super::entry::{DeadLetters, DeathReason, Entry};

pub(super) struct Ready {
    levels: Vec<VecDeque<Entry>>,
    len: usize,
    bytes: u64,
}

impl Ready {
    pub fn new(max_priority: Option<u8>) -> Ready {
        let n = max_priority.map_or(1, |p| p as usize + 1);
        Ready {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Body bytes of the ready messages (RabbitMQ's `message_bytes_ready`).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// A message above the queue's highest priority goes to the highest level (as RabbitMQ).
    fn level(&self, e: &Entry) -> usize {
        if self.levels.len() == 1 {
            return 0;
        }
        (e.msg.priority as usize).min(self.levels.len() - 1)
    }

    /// Appends a message at the tail of its level (a new publish: its seq is the highest yet).
    pub fn push_back(&mut self, e: Entry) {
        let l = self.level(&e);
        self.len += 1;
        self.bytes += e.msg.size();
        self.levels[l].push_back(e);
    }

    /// Puts a message back at its seq position in its level (requeue, retry released, redrive undone).
    pub fn insert_by_seq(&mut self, e: Entry) {
        let l = self.level(&e);
        self.len += 1;
        self.bytes += e.msg.size();
        let level = &mut self.levels[l];
        let pos = level.partition_point(|x| x.seq < e.seq);
        level.insert(pos, e);
    }

    /// The next message to deliver: the head of the highest non-empty level.
    pub fn pop_front(&mut self) -> Option<Entry> {
        let level = self.levels.iter_mut().rev().find(|l| !l.is_empty())?;
        let e = level.pop_front()?;
        self.len -= 1;
        self.bytes -= e.msg.size();
        Some(e)
    }

    /// Removes expired messages from the head of every level (RabbitMQ expires at the head only).
    pub fn drop_expired_heads(&mut self, now: u64, dead: &mut DeadLetters) {
        for level in &mut self.levels {
            while level.front().is_some_and(|e| e.is_expired(now)) {
                let Some(e) = level.pop_front() else { break };
                self.len -= 1;
                self.bytes -= e.msg.size();
                dead.push(e, DeathReason::Expired);
            }
        }
    }

    /// The levels, lowest priority first (a browse reads them from the last).
    pub fn levels(&self) -> &[VecDeque<Entry>] {
        &self.levels
    }

    /// Takes every ready message out.
    pub fn drain(&mut self) -> Vec<Entry> {
        self.len = 0;
        self.bytes = 0;
        self.levels.iter_mut().flat_map(|l| l.drain(..)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::entry;
    use super::*;

    fn seqs(r: &mut Ready) -> Vec<u64> {
        std::iter::from_fn(|| r.pop_front()).map(|e| e.seq).collect()
    }

    #[test]
    fn one_level_is_seq_order_and_requeue_goes_back_in_place() {
        let mut r = Ready::new(None);
        for s in [0, 1, 3] {
            r.push_back(entry(s, 0, "ab"));
        }
        r.insert_by_seq(entry(2, 0, "ab"));
        assert_eq!((r.len(), r.bytes()), (4, 8));
        assert_eq!(seqs(&mut r), [0, 1, 2, 3]);
        assert_eq!((r.len(), r.bytes()), (0, 0));
    }

    #[test]
    fn higher_priority_first_and_above_max_counts_as_max() {
        let mut r = Ready::new(Some(2));
        r.push_back(entry(0, 0, "x"));
        r.push_back(entry(1, 1, "x"));
        r.push_back(entry(2, 9, "x"));
        r.push_back(entry(3, 2, "x"));
        r.push_back(entry(4, 1, "x"));
        assert_eq!(seqs(&mut r), [2, 3, 1, 4, 0]);
    }

    #[test]
    fn expired_heads_go_per_level_and_stop_at_a_live_head() {
        let mut r = Ready::new(Some(1));
        let mut e = entry(0, 0, "x");
        e.expires_at = Some(10);
        r.push_back(e);
        let mut e = entry(1, 0, "x");
        e.expires_at = Some(100);
        r.push_back(e);
        let mut e = entry(2, 0, "x");
        e.expires_at = Some(5);
        r.push_back(e);
        let mut e = entry(3, 1, "x");
        e.expires_at = Some(10);
        r.push_back(e);
        let mut dead = DeadLetters::new();
        r.drop_expired_heads(10, &mut dead);
        let gone: Vec<u64> = dead.drain().map(|d| d.entry.seq).collect();
        assert_eq!(gone, [0, 3], "seq 2 is expired but behind a live head");
        assert_eq!(r.len(), 2);
        assert_eq!(seqs(&mut r), [1, 2]);
    }
}
