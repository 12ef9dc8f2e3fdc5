//! The message store part of a durable queue: a long queue lives on disk, not in RAM. Beyond `MEM_MAX`
//! ready messages, persistent messages stay in the store only and are read back in batches as the head
//! advances; transient messages published meanwhile wait in memory and are merged back by seq.

use std::collections::VecDeque;
use std::sync::Arc;

use super::entry::Entry;
use crate::store::{QueueStore, StoredEntry};

/// Ready messages a durable queue keeps in memory; beyond this, persistent messages stay on disk only and
/// are read back in batches as the head advances (long queues live on disk, not in RAM).
pub const MEM_MAX: usize = 4096;
/// Messages read from disk per refill.
pub(super) const REFILL: usize = 1024;

/// The part of a long durable queue that is not in memory.
pub(super) struct Paged {
    /// First seq not yet read back from disk.
    next_disk_seq: u64,
    /// Persistent messages on disk and not in memory.
    on_disk: u64,
    /// Transient messages published while paged (kept in memory, merged back by seq).
    transient: VecDeque<Entry>,
}

impl Paged {
    /// Paging starts with the persistent message `seq`, the first one kept on disk only.
    pub fn starting_with(seq: u64) -> Paged {
        Paged {
            next_disk_seq: seq,
            on_disk: 1,
            transient: VecDeque::new(),
        }
    }

    /// After a restart: `count` stored messages from `first_seq` on, all on disk.
    pub fn recovered(first_seq: u64, count: u64) -> Paged {
        Paged {
            next_disk_seq: first_seq,
            on_disk: count,
            transient: VecDeque::new(),
        }
    }

    /// Messages waiting here (on disk or transient).
    pub fn count(&self) -> u64 {
        self.on_disk + self.transient.len() as u64
    }

    /// First seq not yet read back (purge deletes from here on).
    pub fn next_disk_seq(&self) -> u64 {
        self.next_disk_seq
    }

    /// A message published while paged: a persistent one is already in the store and stays there only.
    pub fn admit(&mut self, entry: Entry, persistent: bool) {
        if persistent {
            self.on_disk += 1;
        } else {
            self.transient.push_back(entry);
        }
    }

    /// Everything read back: the queue is in memory again.
    pub fn is_done(&self) -> bool {
        self.on_disk == 0 && self.transient.is_empty()
    }

    /// Reads the next batch back from the store and merges it with the transient messages, in seq order.
    /// `None` when the store read failed (logged; the messages stay where they are).
    pub fn read_back(&mut self, store: &QueueStore, queue: &str) -> Option<Vec<Entry>> {
        let loaded = if self.on_disk > 0 {
            match store.read(self.next_disk_seq, REFILL) {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(queue, error = %e, "store read failed");
                    return None;
                }
            }
        } else {
            Vec::new()
        };
        let disk_done = loaded.len() < REFILL;
        if let Some(last) = loaded.last() {
            self.next_disk_seq = last.seq + 1;
        }
        self.on_disk = if disk_done {
            0
        } else {
            self.on_disk.saturating_sub(loaded.len() as u64)
        };
        Some(merge(loaded, &mut self.transient, disk_done))
    }
}

/// Merges a batch read from disk with the transient messages, by seq. Transient messages beyond the batch's
/// last seq stay for a later batch, unless the disk is done.
fn merge(loaded: Vec<StoredEntry>, transient: &mut VecDeque<Entry>, disk_done: bool) -> Vec<Entry> {
    let upto = if disk_done {
        u64::MAX
    } else {
        loaded.last().map_or(u64::MAX, |e| e.seq)
    };
    let mut disk = loaded.into_iter().map(entry_from_store).peekable();
    let mut merged = Vec::new();
    loop {
        let take_disk = match (disk.peek(), transient.front()) {
            (Some(d), Some(t)) => t.seq > upto || d.seq < t.seq,
            (Some(_), None) => true,
            (None, Some(t)) if t.seq <= upto => false,
            _ => break,
        };
        let next = if take_disk {
            disk.next()
        } else {
            transient.pop_front()
        };
        match next {
            Some(e) => merged.push(e),
            None => break,
        }
    }
    merged
}

/// A message read back from the store, as a queue entry.
fn entry_from_store(s: StoredEntry) -> Entry {
    Entry {
        seq: s.seq,
        msg: Arc::new(s.msg),
        redelivered: s.redelivered,
        delivery_count: s.delivery_count,
        expires_at: s.expires_at,
        not_before: s.not_before,
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::entry;
    use super::*;

    fn stored(seq: u64) -> StoredEntry {
        let e = entry(seq, 0, "d");
        StoredEntry {
            seq,
            msg: crate::message::Message::new(
                e.msg.exchange.clone(),
                e.msg.routing_key.clone(),
                e.msg.properties.clone(),
                e.msg.body.clone(),
            ),
            delivery_count: 2,
            redelivered: true,
            expires_at: Some(9),
            not_before: None,
        }
    }

    fn transient(seqs: &[u64]) -> VecDeque<Entry> {
        seqs.iter().map(|&s| entry(s, 0, "t")).collect()
    }

    #[test]
    fn a_full_batch_keeps_later_transients_for_the_next_one() {
        let mut t = transient(&[1, 4, 9]);
        let merged = merge(vec![stored(0), stored(2), stored(5)], &mut t, false);
        let seqs: Vec<u64> = merged.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 4, 5]);
        assert_eq!(t.iter().map(|e| e.seq).collect::<Vec<_>>(), [9]);
        let from_disk = &merged[0];
        assert!(from_disk.redelivered);
        assert_eq!((from_disk.delivery_count, from_disk.expires_at), (2, Some(9)));
    }

    #[test]
    fn when_the_disk_is_done_every_transient_comes_back() {
        let mut t = transient(&[3, 7]);
        let merged = merge(vec![stored(1)], &mut t, true);
        let seqs: Vec<u64> = merged.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 3, 7]);
        assert!(t.is_empty());
    }

    #[test]
    fn admit_counts_persistent_and_keeps_transient() {
        let mut p = Paged::starting_with(10);
        p.admit(entry(11, 0, "p"), true);
        p.admit(entry(12, 0, "t"), false);
        assert_eq!(p.count(), 3);
        assert_eq!(p.next_disk_seq(), 10);
        assert!(!p.is_done());
        assert!(Paged::recovered(0, 0).is_done());
    }
}
