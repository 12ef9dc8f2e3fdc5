//! The transient messages of a paged queue (issue 11, "transient messages page to disk"): in seq order,
//! the oldest in a spill file (`storage::spill`), the newest in memory. Beyond [`SPILL_AT`] messages in
//! memory, they are written out, so a long queue of transient messages costs memory per spill file, not per
//! message. Reading takes them back [`super::paging::REFILL`] at a time. Spill files are never fsynced and
//! never recovered: transient messages do not survive a restart, and the broker empties `<data-dir>/spill`
//! at start.
//!
//! Invariant: every seq in `head` < every seq in `spill` < every seq in `mem`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use storage::spill::Spill;
use storage::StoredMessage;

use super::entry::Entry;
use crate::store::message_from_record;

/// Transient messages a paged queue keeps in memory before writing them to its spill.
pub const SPILL_AT: usize = 1024;

/// Where spills go (`<data-dir>/spill`); unset (unit tests, or a broker without a data directory): paged
/// transient messages stay in memory.
static SPILL_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Sets the directory for every queue's spill (once, at start, after emptying it).
pub fn set_spill_root(root: PathBuf) {
    let _ = SPILL_ROOT.set(root);
}

/// Whether paged transient messages go to disk (a spill root is set).
pub fn spills() -> bool {
    SPILL_ROOT.get().is_some()
}

#[derive(Default)]
pub(super) struct Transient {
    /// Read back from the spill, oldest first.
    head: VecDeque<Entry>,
    spill: Option<Spill>,
    /// Newest, not yet spilled.
    mem: VecDeque<Entry>,
    /// A spill write failed: keep everything in memory from now on (logged once).
    spill_failed: bool,
}

impl Transient {
    pub fn len(&self) -> u64 {
        (self.head.len() + self.mem.len()) as u64 + self.spill.as_ref().map_or(0, Spill::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages held in memory (for tests and the memory figures).
    #[cfg(test)]
    pub fn in_memory(&self) -> usize {
        self.head.len() + self.mem.len()
    }

    /// Appends a message (its seq is the highest yet).
    pub fn push_back(&mut self, e: Entry, queue: &str) {
        self.mem.push_back(e);
        if self.mem.len() >= SPILL_AT && !self.spill_failed {
            self.spill_out(queue);
        }
    }

    /// Writes the in-memory tail to the spill, oldest first.
    fn spill_out(&mut self, queue: &str) {
        let Some(root) = SPILL_ROOT.get() else {
            return;
        };
        let spill = self.spill.get_or_insert_with(|| Spill::new(root));
        while let Some(e) = self.mem.pop_front() {
            let record = StoredMessage {
                exchange: e.msg.exchange.as_str().to_owned(),
                routing_key: e.msg.routing_key.as_str().to_owned(),
                properties: e.msg.stored_properties().to_bytes(),
                body: e.msg.body.clone(),
                delivery_count: e.delivery_count,
                published_at_ms: 0,
                expires_at_ms: e.expires_at,
                not_before_ms: e.not_before,
            };
            if let Err(err) = spill.push(e.seq, e.redelivered, &record) {
                tracing::error!(queue, error = %err,
                    "cannot page transient messages to disk; they stay in memory (the memory alarm bounds them)");
                self.mem.push_front(e);
                self.spill_failed = true;
                return;
            }
        }
    }

    /// The oldest message, reading the next batch back from the spill when the head ran dry.
    pub fn front(&mut self, queue: &str) -> Option<&Entry> {
        if self.head.is_empty() {
            self.read_back(queue);
        }
        self.head.front().or_else(|| self.mem.front())
    }

    pub fn pop_front(&mut self, queue: &str) -> Option<Entry> {
        if self.head.is_empty() {
            self.read_back(queue);
        }
        self.head.pop_front().or_else(|| self.mem.pop_front())
    }

    /// Up to `max` messages with seq >= `from_seq`, oldest first, left in place (a browse): the ones
    /// read back, then the spill's (read from its files, not taken), then the newest.
    pub fn browse(&mut self, from_seq: u64, max: usize, queue: &str) -> Vec<Entry> {
        let mut out: Vec<Entry> = self
            .head
            .iter()
            .filter(|e| e.seq >= from_seq)
            .take(max)
            .cloned()
            .collect();
        if out.len() < max {
            if let Some(spill) = self.spill.as_mut() {
                match spill.browse(from_seq, max - out.len()) {
                    Ok(v) => out.extend(v.into_iter().map(|s| Entry {
                        seq: s.seq,
                        redelivered: s.redelivered,
                        delivery_count: s.msg.delivery_count,
                        expires_at: s.msg.expires_at_ms,
                        not_before: s.msg.not_before_ms,
                        msg: Arc::new(message_from_record(s.msg)),
                    })),
                    Err(err) => {
                        tracing::error!(queue, error = %err, "cannot browse paged transient messages");
                        return out;
                    }
                }
            }
        }
        let left = max - out.len().min(max);
        out.extend(self.mem.iter().filter(|e| e.seq >= from_seq).take(left).cloned());
        out
    }

    fn read_back(&mut self, queue: &str) {
        let Some(spill) = self.spill.as_mut() else {
            return;
        };
        while self.head.len() < super::paging::REFILL {
            match spill.pop() {
                Ok(Some(s)) => self.head.push_back(Entry {
                    seq: s.seq,
                    redelivered: s.redelivered,
                    delivery_count: s.msg.delivery_count,
                    expires_at: s.msg.expires_at_ms,
                    not_before: s.msg.not_before_ms,
                    msg: Arc::new(message_from_record(s.msg)),
                }),
                Ok(None) => break,
                Err(err) => {
                    // Only a local I/O failure on our own file gets here; what cannot be read is lost
                    // (transient messages, as on a restart), and the queue goes on.
                    tracing::error!(queue, error = %err, lost = spill.len(),
                        "cannot read paged transient messages back; they are dropped");
                    self.spill = None;
                    break;
                }
            }
        }
        if self.spill.as_ref().is_some_and(Spill::is_empty) {
            self.spill = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::entry;
    use super::*;

    #[test]
    fn in_order_through_the_spill_with_little_in_memory() {
        let root = tempfile::tempdir().unwrap();
        // The root is process-wide: whichever test sets it first, the spill works the same.
        set_spill_root(root.path().join("spill"));
        let mut t = Transient::default();
        for seq in 0..10_000u64 {
            t.push_back(entry(seq, 0, "transient body"), "q");
        }
        assert_eq!(t.len(), 10_000);
        assert!(t.in_memory() < SPILL_AT, "{} in memory", t.in_memory());
        let mut expect = 0;
        while let Some(e) = t.pop_front("q") {
            assert_eq!(e.seq, expect);
            assert_eq!(&e.msg.body[..], b"transient body");
            assert!(t.in_memory() <= super::super::paging::REFILL + SPILL_AT);
            expect += 1;
            if expect == 5_000 {
                // New publishes while reading back stay behind the spilled ones.
                for seq in 10_000..12_000u64 {
                    t.push_back(entry(seq, 0, "transient body"), "q");
                }
            }
        }
        assert_eq!(expect, 12_000);
        assert!(t.is_empty());
    }
}
