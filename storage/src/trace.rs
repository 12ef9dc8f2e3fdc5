//! Message tracing's keyspace (issue 15): the events the broker records about traced messages, indexed by
//! correlation id and by message id, and which vhosts have tracing on. The events are opaque bytes here (the
//! broker's JSON); this module only keys, indexes and prunes them.
//!
//! Keys (docs/storage-format.md):
//! * `[0x30][seq u64 BE]` -> postcard `TraceRecord`: the events in recording order. Sequence numbers are
//!   given by the one writer (the broker's recorder), contiguous, and removed only from the front, so the
//!   number of events is `last - first + 1`.
//! * `[0x31][str(correlation id)][seq u64 BE]` and `[0x32][str(message id)][seq u64 BE]` -> empty: the
//!   indexes. A lookup is one prefix scan and one `get` per event.
//! * `[0x33][str(vhost)]` -> `[1]`: tracing is on for that vhost.
//!
//! Written like any other sled write: durable with the next flush round, no fsync of its own.

use serde::{Deserialize, Serialize};

use crate::keys::Key;
use crate::{Result, Store};

const EVENT: u8 = 0x30;
const BY_CORRELATION: u8 = 0x31;
const BY_MESSAGE: u8 = 0x32;
const VHOST_FLAG: u8 = 0x33;

/// Events removed per sled batch when pruning.
const PRUNE_CHUNK: usize = 1024;

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// ms since the epoch.
    pub time_ms: u64,
    pub correlation_id: Option<String>,
    pub message_id: Option<String>,
    /// The event itself, opaque to the store.
    pub body: Vec<u8>,
}

/// Which index a lookup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceIndex {
    CorrelationId,
    MessageId,
}

fn event_key(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = EVENT;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn index_prefix(tag: u8, id: &str) -> Vec<u8> {
    Key::new(tag).str(id).into_vec()
}

fn index_key(tag: u8, id: &str, seq: u64) -> Vec<u8> {
    let mut k = index_prefix(tag, id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn decode(v: &[u8]) -> Option<TraceRecord> {
    postcard::from_bytes(v).ok()
}

impl Store {
    /// The first and last sequence numbers of the recorded events (None: none).
    pub fn trace_bounds(&self) -> Result<Option<(u64, u64)>> {
        self.sh().sled.read(|db| {
            let first = db.scan_prefix([EVENT]).next().transpose()?;
            let last = db.scan_prefix([EVENT]).next_back().transpose()?;
            Ok(match (first, last) {
                (Some((f, _)), Some((l, _))) => seq_of(&f).zip(seq_of(&l)),
                _ => None,
            })
        })
    }

    /// Appends events numbered `first_seq`, `first_seq + 1`, ... with their index entries, in one sled batch.
    pub fn append_trace(&self, first_seq: u64, events: &[TraceRecord]) -> Result<u64> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for (i, e) in events.iter().enumerate() {
            let seq = first_seq + i as u64;
            let v = postcard::to_allocvec(e).map_err(|e| crate::StoreError::Engine(e.to_string()))?;
            n += 9 + v.len();
            batch.insert(&event_key(seq)[..], v);
            if let Some(c) = &e.correlation_id {
                batch.insert(index_key(BY_CORRELATION, c, seq), &[][..]);
            }
            if let Some(m) = &e.message_id {
                batch.insert(index_key(BY_MESSAGE, m, seq), &[][..]);
            }
        }
        self.sh().sled.write(|db| db.apply_batch(batch))?;
        Ok(self.sh().bump(n))
    }

    /// The events with this correlation id (or message id), in recording order, at most `limit`.
    pub fn trace_events(&self, index: TraceIndex, id: &str, limit: usize) -> Result<Vec<TraceRecord>> {
        let tag = match index {
            TraceIndex::CorrelationId => BY_CORRELATION,
            TraceIndex::MessageId => BY_MESSAGE,
        };
        let p = index_prefix(tag, id);
        self.sh().sled.read(|db| {
            let mut out = Vec::new();
            for k in db.scan_prefix(&p).keys() {
                let k = k?;
                if k.len() != p.len() + 8 {
                    continue;
                }
                let Some(seq) = seq_of(&k) else { continue };
                // An index entry whose event was pruned meanwhile is skipped.
                if let Some(v) = db.get(event_key(seq))? {
                    if let Some(r) = decode(&v) {
                        out.push(r);
                    }
                }
                if out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
    }

    /// Removes events from the front while there are more than `max_events` or they are older than
    /// `min_time_ms`, with their index entries. Returns how many were removed.
    pub fn prune_trace(&self, max_events: u64, min_time_ms: u64) -> Result<u64> {
        let Some((first, last)) = self.trace_bounds()? else {
            return Ok(0);
        };
        let mut count = last - first + 1;
        let mut removed = 0u64;
        loop {
            let (n, done) = self.sh().sled.write(|db| {
                let mut batch = sled::Batch::default();
                let mut n = 0u64;
                let mut done = true;
                for kv in db.scan_prefix([EVENT]).take(PRUNE_CHUNK) {
                    let (k, v) = kv?;
                    let rec = decode(&v);
                    let old = rec.as_ref().is_none_or(|r| r.time_ms < min_time_ms);
                    if count - n <= max_events && !old {
                        break;
                    }
                    if let (Some(seq), Some(r)) = (seq_of(&k), rec) {
                        if let Some(c) = &r.correlation_id {
                            batch.remove(index_key(BY_CORRELATION, c, seq));
                        }
                        if let Some(m) = &r.message_id {
                            batch.remove(index_key(BY_MESSAGE, m, seq));
                        }
                    }
                    batch.remove(k);
                    n += 1;
                    if n == PRUNE_CHUNK as u64 {
                        done = false;
                    }
                }
                if n > 0 {
                    db.apply_batch(batch)?;
                }
                Ok((n, done))
            })?;
            count -= n;
            removed += n;
            if n > 0 {
                self.sh().bump(n as usize * 9);
            }
            if done || n == 0 {
                return Ok(removed);
            }
        }
    }

    /// Switches tracing on or off for a vhost (durable with the next flush round: wait for the ticket).
    pub fn set_vhost_tracing(&self, vhost: &str, on: bool) -> Result<u64> {
        let k = Key::new(VHOST_FLAG).str(vhost).into_vec();
        let n = k.len();
        if on {
            self.sh().sled.write(|db| db.insert(k, &[1u8][..]))?;
        } else {
            self.sh().sled.write(|db| db.remove(k))?;
        }
        Ok(self.sh().bump(n))
    }

    /// The vhosts with tracing on.
    pub fn traced_vhosts(&self) -> Result<Vec<String>> {
        self.sh().sled.read(|db| {
            let mut out = Vec::new();
            for k in db.scan_prefix([VHOST_FLAG]).keys() {
                let k = k?;
                // `[tag][len u32 BE][utf-8]`
                if let Some(name) = k.get(5..).and_then(|b| std::str::from_utf8(b).ok()) {
                    out.push(name.to_string());
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreOptions;

    fn rec(t: u64, c: Option<&str>, m: Option<&str>) -> TraceRecord {
        TraceRecord {
            time_ms: t,
            correlation_id: c.map(str::to_string),
            message_id: m.map(str::to_string),
            body: format!("e{t}").into_bytes(),
        }
    }

    #[test]
    fn events_are_found_by_either_id_in_order_pruned_and_kept_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            assert_eq!(s.trace_bounds().unwrap(), None);
            s.append_trace(
                1,
                &[
                    rec(10, Some("c1"), Some("m1")),
                    rec(11, Some("c1"), Some("m2")),
                    rec(12, Some("c2"), None),
                    rec(13, Some("c1"), None),
                    // An id that is a prefix of another does not mix in.
                    rec(14, Some("c"), Some("m")),
                ],
            )
            .unwrap();
            assert_eq!(s.trace_bounds().unwrap(), Some((1, 5)));
            let c1 = s.trace_events(TraceIndex::CorrelationId, "c1", 100).unwrap();
            assert_eq!(c1.iter().map(|r| r.time_ms).collect::<Vec<_>>(), [10, 11, 13]);
            let m = s.trace_events(TraceIndex::MessageId, "m", 100).unwrap();
            assert_eq!(m.iter().map(|r| r.time_ms).collect::<Vec<_>>(), [14]);
            assert_eq!(
                s.trace_events(TraceIndex::CorrelationId, "c1", 2).unwrap().len(),
                2
            );
            // Age: the event at 10 goes; count: then one more to keep 3.
            assert_eq!(s.prune_trace(100, 11).unwrap(), 1);
            assert_eq!(s.prune_trace(3, 0).unwrap(), 1);
            assert_eq!(s.trace_bounds().unwrap(), Some((3, 5)));
            let c1 = s.trace_events(TraceIndex::CorrelationId, "c1", 100).unwrap();
            assert_eq!(c1.iter().map(|r| r.time_ms).collect::<Vec<_>>(), [13]);
            assert!(s
                .trace_events(TraceIndex::MessageId, "m1", 100)
                .unwrap()
                .is_empty());
            s.set_vhost_tracing("/", true).unwrap();
            s.set_vhost_tracing("a", true).unwrap();
            let t = s.set_vhost_tracing("a", false).unwrap();
            s.wait_durable_blocking(t).unwrap();
        }
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.traced_vhosts().unwrap(), ["/"]);
        assert_eq!(s.trace_bounds().unwrap(), Some((3, 5)));
        assert_eq!(
            s.trace_events(TraceIndex::CorrelationId, "c2", 100).unwrap()[0].body,
            b"e12"
        );
    }

    #[test]
    fn pruning_many_goes_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let evs: Vec<_> = (0..3000).map(|i| rec(i, Some("c"), None)).collect();
        s.append_trace(0, &evs).unwrap();
        assert_eq!(s.prune_trace(10, 0).unwrap(), 2990);
        assert_eq!(s.trace_bounds().unwrap(), Some((2990, 2999)));
        assert_eq!(
            s.trace_events(TraceIndex::CorrelationId, "c", 10_000)
                .unwrap()
                .len(),
            10
        );
    }
}
