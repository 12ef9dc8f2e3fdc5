//! The retry scheduler: returned messages waiting out their delay (`x-delayed-retry-*`, LavinMQ's delayed
//! retry) before they are deliverable again, by (due time, seq). The delays themselves are
//! `queue_args::Retry::delay_ms`.

use std::collections::BTreeMap;

use super::entry::Entry;
use super::ready::Ready;

#[derive(Default)]
pub(super) struct Delayed {
    by_due: BTreeMap<(u64, u64), Entry>,
}

impl Delayed {
    pub fn len(&self) -> usize {
        self.by_due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_due.is_empty()
    }

    /// Holds `e` until `due` (ms since the epoch).
    pub fn insert(&mut self, due: u64, e: Entry) {
        self.by_due.insert((due, e.seq), e);
    }

    /// Moves the messages whose time has come back to their seq positions in `ready`; returns how many.
    pub fn release_due(&mut self, now: u64, ready: &mut Ready) -> usize {
        let mut n = 0;
        while let Some(entry) = self.by_due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let mut e = entry.remove();
            e.not_before = None;
            ready.insert_by_seq(e);
            n += 1;
        }
        n
    }

    /// Takes every waiting message out (purge).
    pub fn take_all(&mut self) -> impl Iterator<Item = Entry> {
        std::mem::take(&mut self.by_due).into_values()
    }

    pub fn clear(&mut self) {
        self.by_due.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::entry;
    use super::*;

    #[test]
    fn due_messages_go_back_in_seq_order_the_rest_wait() {
        let mut d = Delayed::default();
        let mut ready = Ready::new(None);
        ready.push_back(entry(1, 0, "x"));
        for (due, seq) in [(30, 0), (10, 4), (10, 2), (50, 3)] {
            let mut e = entry(seq, 0, "x");
            e.not_before = Some(due);
            d.insert(due, e);
        }
        assert_eq!(d.release_due(9, &mut ready), 0);
        assert_eq!(d.release_due(30, &mut ready), 3);
        assert_eq!(d.len(), 1);
        let order: Vec<(u64, Option<u64>)> = std::iter::from_fn(|| ready.pop_front())
            .map(|e| (e.seq, e.not_before))
            .collect();
        assert_eq!(order, [(0, None), (1, None), (2, None), (4, None)]);
        assert_eq!(d.take_all().map(|e| e.seq).collect::<Vec<_>>(), [3]);
        assert!(d.is_empty());
    }
}
