//! The part of a long queue that is not in memory: a long queue lives on disk, not in RAM. Beyond `MEM_MAX`
//! ready messages, persistent messages of a durable queue stay in the store only and are read back in
//! batches as the head advances; transient messages (of any queue) go to the queue's spill
//! (`transient.rs`) and are merged back by seq.

use std::collections::VecDeque;
use std::sync::Arc;

use super::entry::Entry;
use super::transient::Transient;
use crate::store::{QueueStore, StoredEntry};

/// Ready messages a durable queue keeps in memory; beyond this, persistent messages stay on disk only and
/// are read back in batches as the head advances (long queues live on disk, not in RAM).
pub const MEM_MAX: usize = 4096;
/// Ready messages a queue keeps in memory while memory is near the watermark (`flow::memory_pressure`):
/// new messages past these go to disk (persistent ones stay in the store only, transient ones to the
/// spill), so the backlog stops costing memory per message well before publishers are blocked.
pub const PRESSURE_KEEP: usize = 256;
/// Messages read from disk per refill.
pub(super) const REFILL: usize = 1024;

/// The part of a long durable queue that is not in memory.
pub(super) struct Paged {
    /// First seq not yet read back from disk.
    next_disk_seq: u64,
    /// Persistent messages on disk and not in memory.
    on_disk: u64,
    /// Transient messages published while paged (spilled to disk past a bound, merged back by seq).
    transient: Transient,
}

impl Paged {
    /// Paging starts with the persistent message `seq`, the first one kept on disk only.
    pub fn starting_with(seq: u64) -> Paged {
        Paged {
            next_disk_seq: seq,
            on_disk: 1,
            transient: Transient::default(),
        }
    }

    /// Paging starts with the transient message `seq` (any queue; nothing of it in the store yet).
    pub fn starting_transient(seq: u64) -> Paged {
        Paged {
            next_disk_seq: seq,
            on_disk: 0,
            transient: Transient::default(),
        }
    }

    /// After a restart: `count` stored messages from `first_seq` on, all on disk.
    pub fn recovered(first_seq: u64, count: u64) -> Paged {
        Paged {
            next_disk_seq: first_seq,
            on_disk: count,
            transient: Transient::default(),
        }
    }

    /// Messages waiting here (on disk or transient).
    pub fn count(&self) -> u64 {
        self.on_disk + self.transient.len()
    }

    /// First seq not yet read back (purge deletes from here on).
    pub fn next_disk_seq(&self) -> u64 {
        self.next_disk_seq
    }

    /// A message published while paged: a persistent one is already in the store and stays there only.
    pub fn admit(&mut self, entry: Entry, persistent: bool, queue: &str) {
        if persistent {
            self.on_disk += 1;
        } else {
            self.transient.push_back(entry, queue);
        }
    }

    /// Everything read back: the queue is in memory again.
    pub fn is_done(&self) -> bool {
        self.on_disk == 0 && self.transient.is_empty()
    }

    /// Reads the next batch back from the store and merges it with the transient messages, in seq order.
    /// `None` when the store read failed (logged; the messages stay where they are).
    pub fn read_back(&mut self, store: Option<&QueueStore>, queue: &str) -> Option<Vec<Entry>> {
        let loaded = if let (true, Some(store)) = (self.on_disk > 0, store) {
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
        let loaded_len = loaded.len();
        let m = merge(loaded, &mut self.transient, disk_done, queue);
        // Disk messages the batch had no room for are read again next time.
        if let Some(last) = m.last_disk_seq {
            self.next_disk_seq = last + 1;
        }
        self.on_disk = if disk_done {
            (loaded_len - m.disk_taken) as u64
        } else {
            self.on_disk.saturating_sub(m.disk_taken as u64)
        };
        Some(m.entries)
    }
}

impl Paged {
    /// Up to `max` messages with seq >= `from_seq`, after skipping `skip` of them, in seq order, left in
    /// place (a browse): disk and transient messages read `BROWSE_BATCH` at a time and merged by seq, so
    /// memory is a batch of each whatever the queue's length or the skip.
    pub fn browse(
        &mut self,
        store: Option<&QueueStore>,
        from_seq: u64,
        mut skip: u64,
        max: usize,
        queue: &str,
    ) -> Result<Vec<Entry>, storage::StoreError> {
        const BROWSE_BATCH: usize = 256;
        let mut disk_next = from_seq.max(self.next_disk_seq);
        let mut t_next = from_seq;
        let mut disk: VecDeque<Entry> = VecDeque::new();
        let mut trans: VecDeque<Entry> = VecDeque::new();
        let mut disk_done = self.on_disk == 0 || store.is_none();
        let mut trans_done = self.transient.is_empty();
        let mut out = Vec::new();
        while out.len() < max {
            if disk.is_empty() && !disk_done {
                if let Some(store) = store {
                    let v = store.read(disk_next, BROWSE_BATCH)?;
                    disk_done = v.len() < BROWSE_BATCH;
                    if let Some(last) = v.last() {
                        disk_next = last.seq + 1;
                    }
                    disk.extend(v.into_iter().map(entry_from_store));
                }
            }
            if trans.is_empty() && !trans_done {
                let v = self.transient.browse(t_next, BROWSE_BATCH, queue);
                trans_done = v.len() < BROWSE_BATCH;
                if let Some(last) = v.last() {
                    t_next = last.seq + 1;
                }
                trans.extend(v);
            }
            let next = match (disk.front(), trans.front()) {
                (Some(d), Some(t)) if d.seq < t.seq => disk.pop_front(),
                (Some(_), Some(_)) | (None, Some(_)) => trans.pop_front(),
                (Some(_), None) => disk.pop_front(),
                (None, None) => break,
            };
            let Some(e) = next else { break };
            if skip > 0 {
                skip -= 1;
            } else {
                out.push(e);
            }
        }
        Ok(out)
    }
}

/// What one merge took.
struct Merged {
    entries: Vec<Entry>,
    /// Disk messages among them (the rest of the batch read from disk was not taken).
    disk_taken: usize,
    last_disk_seq: Option<u64>,
}

/// Merges a batch read from disk with the transient messages, by seq, `REFILL` at most. Transient messages
/// beyond the batch's last seq stay for a later batch, unless the disk is done.
fn merge(loaded: Vec<StoredEntry>, transient: &mut Transient, disk_done: bool, queue: &str) -> Merged {
    let upto = if disk_done {
        u64::MAX
    } else {
        loaded.last().map_or(u64::MAX, |e| e.seq)
    };
    let mut disk = loaded.into_iter().map(entry_from_store).peekable();
    let mut merged = Vec::new();
    let (mut disk_taken, mut last_disk_seq) = (0, None);
    while merged.len() < REFILL {
        let take_disk = match (disk.peek(), transient.front(queue)) {
            (Some(d), Some(t)) => t.seq > upto || d.seq < t.seq,
            (Some(_), None) => true,
            (None, Some(t)) if t.seq <= upto => false,
            _ => break,
        };
        let next = if take_disk {
            let e = disk.next();
            if let Some(e) = &e {
                disk_taken += 1;
                last_disk_seq = Some(e.seq);
            }
            e
        } else {
            transient.pop_front(queue)
        };
        match next {
            Some(e) => merged.push(e),
            None => break,
        }
    }
    Merged {
        entries: merged,
        disk_taken,
        last_disk_seq,
    }
}

/// A message read back from the store, as a queue entry.
pub(super) fn entry_from_store(s: StoredEntry) -> Entry {
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

    fn transient(seqs: &[u64]) -> Transient {
        let mut t = Transient::default();
        for &s in seqs {
            t.push_back(entry(s, 0, "t"), "q");
        }
        t
    }

    fn drain(t: &mut Transient) -> Vec<u64> {
        std::iter::from_fn(|| t.pop_front("q")).map(|e| e.seq).collect()
    }

    #[test]
    fn a_full_batch_keeps_later_transients_for_the_next_one() {
        let mut t = transient(&[1, 4, 9]);
        let merged = merge(vec![stored(0), stored(2), stored(5)], &mut t, false, "q").entries;
        let seqs: Vec<u64> = merged.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 4, 5]);
        assert_eq!(drain(&mut t), [9]);
        let from_disk = &merged[0];
        assert!(from_disk.redelivered);
        assert_eq!((from_disk.delivery_count, from_disk.expires_at), (2, Some(9)));
    }

    #[test]
    fn when_the_disk_is_done_every_transient_comes_back() {
        let mut t = transient(&[3, 7]);
        let merged = merge(vec![stored(1)], &mut t, true, "q").entries;
        let seqs: Vec<u64> = merged.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 3, 7]);
        assert!(t.is_empty());
    }

    #[test]
    fn when_the_disk_is_done_transients_come_back_a_batch_at_a_time() {
        let seqs: Vec<u64> = (0..(REFILL as u64 * 2 + 10)).collect();
        let mut t = transient(&seqs);
        let first = merge(Vec::new(), &mut t, true, "q").entries;
        assert_eq!(first.len(), REFILL);
        assert_eq!(first.last().map(|e| e.seq), Some(REFILL as u64 - 1));
        assert_eq!(t.len(), REFILL as u64 + 10);
    }

    #[test]
    fn disk_messages_a_full_batch_has_no_room_for_are_not_skipped() {
        // A full disk batch (seqs 0, 2, 4, ...) interleaved with transients (1, 3, 5, ...): only half of
        // the disk batch fits; the next merge must start at the first disk message not taken.
        let disk: Vec<StoredEntry> = (0..REFILL as u64).map(|i| stored(2 * i)).collect();
        let odd: Vec<u64> = (0..REFILL as u64).map(|i| 2 * i + 1).collect();
        let mut t = transient(&odd);
        let m = merge(disk, &mut t, false, "q");
        assert_eq!(m.entries.len(), REFILL);
        assert_eq!(m.disk_taken, REFILL / 2);
        assert_eq!(m.last_disk_seq, Some(REFILL as u64 - 2));
        let seqs: Vec<u64> = m.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (0..REFILL as u64).collect::<Vec<_>>());
    }

    #[test]
    fn admit_counts_persistent_and_keeps_transient() {
        let mut p = Paged::starting_with(10);
        p.admit(entry(11, 0, "p"), true, "q");
        p.admit(entry(12, 0, "t"), false, "q");
        assert_eq!(p.count(), 3);
        assert_eq!(p.next_disk_seq(), 10);
        assert!(!p.is_done());
        assert!(Paged::recovered(0, 0).is_done());
    }
}
