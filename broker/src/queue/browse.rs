//! Browsing a queue without consuming (`GET /api/queues/{vhost}/{name}/browse`, issue 14): a page of
//! messages from any position, copied out under the queue's lock and left where they are (ready, in order,
//! not counted as delivered; consumers see no difference).
//!
//! Order is delivery order: the in-memory ready messages level by level (highest priority first, each in
//! seq order), then the paged part (on disk or spilled, by seq). A message's place in that order is its
//! key (band, seq): band 0 is the highest priority level, the paged part is the last band. A cursor is the
//! key to start at, so a page that follows a cursor is not shifted by consumers taking messages meanwhile.
//! Messages waiting out a delayed retry are not shown (they are not ready yet).
//!
//! Memory: the page itself, plus one read batch of the paged part (`Paged::browse`); a numeric position
//! inside the paged part is reached by reading and dropping batches, never by loading the queue.

use super::{Entry, Queue};

/// Where a browse starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrowseFrom {
    /// The n-th ready message (0 = the head).
    Position(u64),
    /// The first message at or after this key (a cursor a previous page returned).
    Key { band: u32, seq: u64 },
}

/// A page of a browse.
pub struct Browsed {
    /// Each message with its key (band, seq).
    pub entries: Vec<(u32, Entry)>,
    /// Ready messages in the queue.
    pub total: u32,
}

impl Queue {
    /// Up to `max` ready messages from `from` on, copied out and left in place. A stream is browsed with
    /// [`Queue::browse_stream`].
    pub fn browse(&self, from: BrowseFrom, max: usize) -> Result<Browsed, storage::StoreError> {
        let mut guard = self.inner.lock();
        let q = &mut *guard;
        let total = q.ready_count();
        let levels = q.ready.levels();
        let paged_band = levels.len() as u32;
        let (mut skip, (cband, cseq)) = match from {
            BrowseFrom::Position(n) => (n, (0, 0)),
            BrowseFrom::Key { band, seq } => (0, (band, seq)),
        };
        let mut out = Vec::new();
        for (band, level) in levels.iter().rev().enumerate() {
            let band = band as u32;
            if band < cband || out.len() >= max {
                continue;
            }
            let start = if band == cband {
                level.partition_point(|e| e.seq < cseq)
            } else {
                0
            };
            let avail = (level.len() - start) as u64;
            if skip >= avail {
                skip -= avail;
                continue;
            }
            let first = start + skip as usize;
            skip = 0;
            let room = max - out.len();
            out.extend(level.range(first..).take(room).map(|e| (band, e.clone())));
        }
        if out.len() < max && cband <= paged_band {
            if let Some(p) = q.paged.as_mut() {
                let from_seq = if cband == paged_band { cseq } else { 0 };
                let more = p.browse(
                    self.store.as_ref(),
                    from_seq,
                    skip,
                    max - out.len(),
                    &self.spec.name,
                )?;
                out.extend(more.into_iter().map(|e| (paged_band, e)));
            }
        }
        Ok(Browsed { entries: out, total })
    }

    /// The seq the next message published to this queue will get (a message move records it before it
    /// publishes, so that after a crash it knows where its copies would be: `stored_from`).
    pub fn next_seq(&self) -> u64 {
        self.inner.lock().next_seq
    }

    /// Up to `max` persistent messages of a durable queue from `from_seq` on, as the store holds them (read
    /// outside the queue's lock; empty for other queues).
    pub fn stored_from(&self, from_seq: u64, max: usize) -> Result<Vec<Entry>, storage::StoreError> {
        match &self.store {
            Some(store) => Ok(store
                .read(from_seq, max)?
                .into_iter()
                .map(super::paging::entry_from_store)
                .collect()),
            None => Ok(Vec::new()),
        }
    }

    /// A stream's messages from `offset` on (its entries' seqs are offsets); `None` if this is not a stream.
    pub fn browse_stream(&self, offset: u64, max: usize) -> Option<Result<Vec<Entry>, storage::StoreError>> {
        self.stream.as_ref().map(|s| s.browse(offset, max))
    }

    /// A stream's first held offset and the offset the next message will get.
    pub fn stream_bounds(&self) -> Option<(u64, u64)> {
        self.stream.as_ref().map(|s| s.bounds())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::test_support::entry;
    use super::super::{DeadLetters, QueueSpec};
    use super::*;

    fn queue(max_priority: Option<u8>) -> Queue {
        let mut arguments = protocol::FieldTable::default();
        if let Some(p) = max_priority {
            arguments.insert("x-max-priority", protocol::FieldValue::U8(p));
        }
        Queue::new(
            QueueSpec {
                name: Arc::from("q"),
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments,
            },
            0,
        )
    }

    fn seqs(b: &Browsed) -> Vec<u64> {
        b.entries.iter().map(|(_, e)| e.seq).collect()
    }

    #[test]
    fn pages_by_position_and_by_key_in_delivery_order_and_leave_the_queue_alone() {
        let q = queue(Some(2));
        let mut dead = DeadLetters::new();
        // priorities 0, 2, 1, 0, 2 -> delivery order: seqs 1, 4 (p2), 2 (p1), 0, 3 (p0)
        for (i, p) in [0u8, 2, 1, 0, 2].into_iter().enumerate() {
            let e = entry(i as u64, p, "x");
            q.publish(e.msg, 0, &mut dead).unwrap();
        }
        let all = q.browse(BrowseFrom::Position(0), 100).unwrap();
        assert_eq!(seqs(&all), [1, 4, 2, 0, 3]);
        assert_eq!(all.total, 5);
        let page = q.browse(BrowseFrom::Position(1), 2).unwrap();
        assert_eq!(seqs(&page), [4, 2]);
        let (band, last) = page.entries.last().map(|(b, e)| (*b, e.seq)).unwrap();
        let next = q.browse(BrowseFrom::Key { band, seq: last + 1 }, 10).unwrap();
        assert_eq!(seqs(&next), [0, 3]);
        assert!(q.browse(BrowseFrom::Position(5), 10).unwrap().entries.is_empty());
        assert_eq!(q.counts().0, 5);
        let got: Vec<u64> = std::iter::from_fn(|| q.get(false, 0, &mut dead).map(|(e, _)| e.seq)).collect();
        assert_eq!(got, [1, 4, 2, 0, 3]);
    }
}
