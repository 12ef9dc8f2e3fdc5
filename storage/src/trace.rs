//! Message tracing's keyspace (issue 15): the events the broker records about traced messages, kept in
//! batches (one sled value per batch of events, the broker's compact encoding, opaque here), found by
//! correlation id and by message id, pruned whole batches at a time from the oldest; and which vhosts have
//! tracing on.
//!
//! Keys (docs/storage-format.md):
//! * `[0x34][seq u64 BE]` -> the batch: the broker's encoding of its events, opaque here. Sequence numbers
//!   are given by the one writer (the broker's recorder), increasing, and removed only from the front.
//! * `[0x36][seq u64 BE]` -> postcard `BatchMeta`: how many events, the time of the newest, and for a
//!   batch with few distinct ids (at most `EXACT_IDS`) the ids themselves, so that pruning can remove its
//!   index entries.
//! * `[0x37][str(correlation id)][seq u64 BE]` and `[0x38][str(message id)][seq u64 BE]` -> empty: the
//!   exact index of the batches with few ids (a lookup is one prefix scan).
//! * `[0x35][seq u64 BE]` -> the filter of a batch with many ids: the sorted 32-bit hashes of its ids
//!   (`id_hash`). A lookup reads every filter (one per batch of many ids, so at most
//!   `max_events / (EXACT_IDS + 1)` of them and usually far fewer: the recorder makes batches of hundreds
//!   of events under load) and binary-searches each; a hash hit is a candidate the broker checks exactly.
//!   This keeps a batch of hundreds of events one sled write plus three, instead of one write per id.
//! * `[0x33][str(vhost)]` -> `[1]`: tracing is on for that vhost.
//! * `0x30`..`0x32`: the first format (one key per event, an index entry per id and event); read no more,
//!   removed by `drop_legacy_trace`.
//!
//! Written like any other sled write: durable with the next flush round, no fsync of its own.

use serde::{Deserialize, Serialize};

use crate::keys::Key;
use crate::{Result, Store, StoreError};

const LEGACY_EVENT: u8 = 0x30;
const LEGACY_BY_CORRELATION: u8 = 0x31;
const LEGACY_BY_MESSAGE: u8 = 0x32;
const VHOST_FLAG: u8 = 0x33;
const BATCH: u8 = 0x34;
const FILTER: u8 = 0x35;
const META: u8 = 0x36;
const BY_CORRELATION: u8 = 0x37;
const BY_MESSAGE: u8 = 0x38;

/// A batch with at most this many distinct ids (correlation and message ids together) is indexed exactly;
/// one with more gets a hash filter.
pub const EXACT_IDS: usize = 8;

/// Batches removed per sled batch when pruning.
const PRUNE_CHUNK: usize = 256;

/// Which index a lookup uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceIndex {
    CorrelationId,
    MessageId,
}

impl TraceIndex {
    fn tag(self) -> u8 {
        match self {
            TraceIndex::CorrelationId => BY_CORRELATION,
            TraceIndex::MessageId => BY_MESSAGE,
        }
    }
}

/// One batch of events as the recorder hands it to the store.
#[derive(Debug, Clone, Copy)]
pub struct TraceBatch<'a> {
    /// Number of events in `blob`.
    pub events: u32,
    /// ms since the epoch of the newest event (age pruning drops a batch once it is older).
    pub last_time_ms: u64,
    /// The distinct correlation ids and message ids of its events.
    pub correlation_ids: &'a [&'a str],
    pub message_ids: &'a [&'a str],
    /// The events, in the broker's encoding.
    pub blob: &'a [u8],
}

#[derive(Serialize, Deserialize)]
struct BatchMeta<S> {
    events: u32,
    last_time_ms: u64,
    /// The ids of an exactly indexed batch (empty for a filtered one).
    correlation_ids: Vec<S>,
    message_ids: Vec<S>,
}

fn seq_key(tag: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = tag;
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

/// The filter hash of an id in an index: FNV-1a (64 bits, stable across versions and runs) of the index's
/// tag and the id, folded to 32 bits.
pub fn id_hash(index: TraceIndex, id: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in std::iter::once(&index.tag()).chain(id.as_bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

fn filter_of(b: &TraceBatch) -> Vec<u8> {
    let mut hs: Vec<u32> = b
        .correlation_ids
        .iter()
        .map(|c| id_hash(TraceIndex::CorrelationId, c))
        .chain(b.message_ids.iter().map(|m| id_hash(TraceIndex::MessageId, m)))
        .collect();
    hs.sort_unstable();
    hs.dedup();
    hs.iter().flat_map(|h| h.to_be_bytes()).collect()
}

fn filter_has(filter: &[u8], h: u32) -> bool {
    let n = filter.len() / 4;
    let at = |i: usize| {
        u32::from_be_bytes([
            filter[4 * i],
            filter[4 * i + 1],
            filter[4 * i + 2],
            filter[4 * i + 3],
        ])
    };
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = (lo + hi) / 2;
        match at(mid).cmp(&h) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

fn encode_err(e: postcard::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl Store {
    /// The sequence number of the newest batch and the number of events kept (None: no batch).
    pub fn trace_state(&self) -> Result<Option<(u64, u64)>> {
        self.sh().sled.read(|db| {
            let Some((last, _)) = db.scan_prefix([META]).next_back().transpose()? else {
                return Ok(None);
            };
            let mut events = 0u64;
            for kv in db.scan_prefix([META]) {
                let (_, v) = kv?;
                if let Ok(m) = postcard::from_bytes::<BatchMeta<&str>>(&v) {
                    events += m.events as u64;
                }
            }
            Ok(seq_of(&last).map(|s| (s, events)))
        })
    }

    /// Appends batches numbered `first_seq`, `first_seq + 1`, ... with their index entries or filters, in
    /// one sled batch.
    pub fn append_trace(&self, first_seq: u64, batches: &[TraceBatch]) -> Result<u64> {
        let mut sb = sled::Batch::default();
        let mut n = 0;
        for (i, b) in batches.iter().enumerate() {
            let seq = first_seq + i as u64;
            let exact = b.correlation_ids.len() + b.message_ids.len() <= EXACT_IDS;
            let empty: &[&str] = &[];
            let meta = BatchMeta {
                events: b.events,
                last_time_ms: b.last_time_ms,
                correlation_ids: (if exact { b.correlation_ids } else { empty }).to_vec(),
                message_ids: (if exact { b.message_ids } else { empty }).to_vec(),
            };
            let meta = postcard::to_allocvec(&meta).map_err(encode_err)?;
            n += 27 + meta.len() + b.blob.len();
            sb.insert(&seq_key(META, seq)[..], meta);
            sb.insert(&seq_key(BATCH, seq)[..], b.blob);
            if exact {
                for c in b.correlation_ids {
                    sb.insert(index_key(BY_CORRELATION, c, seq), &[][..]);
                }
                for m in b.message_ids {
                    sb.insert(index_key(BY_MESSAGE, m, seq), &[][..]);
                }
            } else {
                let f = filter_of(b);
                n += f.len();
                sb.insert(&seq_key(FILTER, seq)[..], f);
            }
        }
        self.sh().sled.write(|db| db.apply_batch(sb))?;
        Ok(self.sh().bump(n))
    }

    /// Calls `f` with each batch that may hold events with this correlation id (or message id), oldest
    /// first, until it returns false: every batch that does, and rarely one that does not (a hash collision
    /// in a filter), so the caller checks each event's id.
    pub fn trace_batches(&self, index: TraceIndex, id: &str, mut f: impl FnMut(&[u8]) -> bool) -> Result<()> {
        let p = index_prefix(index.tag(), id);
        let h = id_hash(index, id);
        self.sh().sled.read(|db| {
            let mut seqs = Vec::new();
            for k in db.scan_prefix(&p).keys() {
                let k = k?;
                if k.len() == p.len() + 8 {
                    seqs.extend(seq_of(&k));
                }
            }
            for kv in db.scan_prefix([FILTER]) {
                let (k, v) = kv?;
                if filter_has(&v, h) {
                    seqs.extend(seq_of(&k));
                }
            }
            seqs.sort_unstable();
            seqs.dedup();
            for seq in seqs {
                // A batch pruned meanwhile is skipped.
                if let Some(v) = db.get(seq_key(BATCH, seq))? {
                    if !f(&v) {
                        break;
                    }
                }
            }
            Ok(())
        })
    }

    /// Removes batches from the oldest while the events kept (`events`, as the caller counts them) are more
    /// than `max_events` or the batch's newest event is older than `min_time_ms`, with their index entries
    /// and filters. Returns how many events were removed.
    pub fn prune_trace(&self, events: u64, max_events: u64, min_time_ms: u64) -> Result<u64> {
        let mut count = events;
        let mut removed = 0u64;
        loop {
            let (n, done) = self.sh().sled.write(|db| {
                let mut sb = sled::Batch::default();
                let mut n = 0u64;
                let mut batches = 0;
                let mut done = true;
                for kv in db.scan_prefix([META]) {
                    if batches == PRUNE_CHUNK {
                        done = false;
                        break;
                    }
                    let (k, v) = kv?;
                    let meta = postcard::from_bytes::<BatchMeta<&str>>(&v).ok();
                    let old = meta.as_ref().is_none_or(|m| m.last_time_ms < min_time_ms);
                    if count.saturating_sub(n) <= max_events && !old {
                        break;
                    }
                    let Some(seq) = seq_of(&k) else { continue };
                    if let Some(m) = meta {
                        for c in m.correlation_ids {
                            sb.remove(index_key(BY_CORRELATION, c, seq));
                        }
                        for id in m.message_ids {
                            sb.remove(index_key(BY_MESSAGE, id, seq));
                        }
                        n += m.events as u64;
                    }
                    sb.remove(&seq_key(FILTER, seq)[..]);
                    sb.remove(&seq_key(BATCH, seq)[..]);
                    sb.remove(k);
                    batches += 1;
                }
                if batches > 0 {
                    db.apply_batch(sb)?;
                }
                Ok((n, done || batches == 0))
            })?;
            count = count.saturating_sub(n);
            removed += n;
            if n > 0 {
                self.sh().bump(27);
            }
            if done {
                return Ok(removed);
            }
        }
    }

    /// Removes the events of the first trace format (one key per event), if any. Returns how many keys.
    pub fn drop_legacy_trace(&self) -> Result<u64> {
        let mut removed = 0u64;
        for tag in [LEGACY_EVENT, LEGACY_BY_CORRELATION, LEGACY_BY_MESSAGE] {
            loop {
                let n = self.sh().sled.write(|db| {
                    let mut sb = sled::Batch::default();
                    let mut n = 0u64;
                    for k in db.scan_prefix([tag]).keys().take(4096) {
                        sb.remove(k?);
                        n += 1;
                    }
                    if n > 0 {
                        db.apply_batch(sb)?;
                    }
                    Ok(n)
                })?;
                if n == 0 {
                    break;
                }
                removed += n;
                self.sh().bump(9);
            }
        }
        Ok(removed)
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

    /// A batch whose blob is its own number, with these ids.
    fn append(s: &Store, seq: u64, events: u32, t: u64, c: &[&str], m: &[&str]) {
        let blob = seq.to_be_bytes();
        s.append_trace(
            seq,
            &[TraceBatch {
                events,
                last_time_ms: t,
                correlation_ids: c,
                message_ids: m,
                blob: &blob,
            }],
        )
        .unwrap();
    }

    fn found(s: &Store, index: TraceIndex, id: &str) -> Vec<u64> {
        let mut out = Vec::new();
        s.trace_batches(index, id, |b| {
            out.push(u64::from_be_bytes(b[..8].try_into().unwrap()));
            true
        })
        .unwrap();
        out
    }

    #[test]
    fn batches_are_found_by_either_id_in_order_pruned_and_kept_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let many: Vec<String> = (0..50).map(|i| format!("id-{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        {
            let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
            assert_eq!(s.trace_state().unwrap(), None);
            append(&s, 1, 3, 10, &["c1"], &["m1", "m2"]);
            append(&s, 2, 2, 11, &["c2"], &[]);
            // Many ids: a filtered batch, found by every one of them, and by none of the others.
            append(&s, 3, 100, 12, &many, &many);
            append(&s, 4, 1, 13, &["c1"], &[]);
            // An id that is a prefix of another does not mix in.
            append(&s, 5, 1, 14, &["c"], &["m"]);
            assert_eq!(s.trace_state().unwrap(), Some((5, 107)));
            assert_eq!(found(&s, TraceIndex::CorrelationId, "c1"), [1, 4]);
            assert_eq!(found(&s, TraceIndex::MessageId, "m"), [5]);
            assert_eq!(found(&s, TraceIndex::MessageId, "m2"), [1]);
            assert!(found(&s, TraceIndex::MessageId, "c1").is_empty());
            for id in &many {
                assert_eq!(found(&s, TraceIndex::CorrelationId, id), [3]);
                assert_eq!(found(&s, TraceIndex::MessageId, id), [3]);
            }
            assert!(found(&s, TraceIndex::CorrelationId, "id-50").is_empty());
            let mut n = 0;
            s.trace_batches(TraceIndex::CorrelationId, "c1", |_| {
                n += 1;
                false
            })
            .unwrap();
            assert_eq!(n, 1);
            // Age: batch 1 (newest event at 10) goes; count: then batches go until at most 102 are left.
            assert_eq!(s.prune_trace(107, 1000, 11).unwrap(), 3);
            assert_eq!(s.prune_trace(104, 102, 0).unwrap(), 2);
            assert_eq!(s.trace_state().unwrap(), Some((5, 102)));
            assert_eq!(found(&s, TraceIndex::CorrelationId, "c1"), [4]);
            assert!(found(&s, TraceIndex::MessageId, "m1").is_empty());
            assert_eq!(found(&s, TraceIndex::MessageId, "id-7"), [3]);
            s.set_vhost_tracing("/", true).unwrap();
            s.set_vhost_tracing("a", true).unwrap();
            let t = s.set_vhost_tracing("a", false).unwrap();
            s.wait_durable_blocking(t).unwrap();
        }
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(s.traced_vhosts().unwrap(), ["/"]);
        assert_eq!(s.trace_state().unwrap(), Some((5, 102)));
        assert_eq!(found(&s, TraceIndex::CorrelationId, "c"), [5]);
        // Pruning everything leaves no index entry or filter behind.
        assert_eq!(s.prune_trace(102, 0, u64::MAX).unwrap(), 102);
        assert_eq!(s.trace_state().unwrap(), None);
        let left = s
            .sh()
            .sled
            .read(|db| {
                Ok(db.scan_prefix([FILTER]).count()
                    + db.scan_prefix([BY_CORRELATION]).count()
                    + db.scan_prefix([BY_MESSAGE]).count())
            })
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn pruning_many_goes_in_chunks_and_the_legacy_format_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), StoreOptions::default()).unwrap();
        for seq in 0..1000 {
            append(&s, seq, 2, seq, &["c"], &[]);
        }
        assert_eq!(s.prune_trace(2000, 20, 0).unwrap(), 1980);
        assert_eq!(s.trace_state().unwrap(), Some((999, 20)));
        assert_eq!(
            found(&s, TraceIndex::CorrelationId, "c"),
            (990..1000).collect::<Vec<_>>()
        );
        s.sh()
            .sled
            .write(|db| {
                db.insert(seq_key(LEGACY_EVENT, 1), &b"x"[..])?;
                db.insert(index_key(LEGACY_BY_CORRELATION, "c", 1), &[][..])?;
                db.insert(index_key(LEGACY_BY_MESSAGE, "m", 1), &[][..])
            })
            .unwrap();
        assert_eq!(s.drop_legacy_trace().unwrap(), 3);
        assert_eq!(s.drop_legacy_trace().unwrap(), 0);
        assert_eq!(s.trace_state().unwrap(), Some((999, 20)));
    }

    #[test]
    fn filters_find_every_id_they_hold() {
        let ids: Vec<String> = (0..5000).map(|i| format!("{i:05}-{i:020}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let f = filter_of(&TraceBatch {
            events: 0,
            last_time_ms: 0,
            correlation_ids: &refs,
            message_ids: &[],
            blob: &[],
        });
        for id in &refs {
            assert!(filter_has(&f, id_hash(TraceIndex::CorrelationId, id)));
        }
        // 5000 of 2^32 hashes: another id is almost never a hit.
        let misses = (5000..15000)
            .filter(|i| !filter_has(&f, id_hash(TraceIndex::CorrelationId, &format!("{i:05}-{i:020}"))))
            .count();
        assert!(misses >= 9990, "{misses}");
    }
}
