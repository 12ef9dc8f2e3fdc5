//! The message log: each queue's messages in append-only segment files, acks in a side file per
//! segment, a segment deleted as soon as all of its messages are acked (LavinMQ's model).
//! Layout, record format and recovery: docs/storage-format.md.
//!
//! Memory: per segment, the runs of consecutive seqs it holds and one ack bit per record; nothing
//! per message. Writes go to an in-process buffer per file; the store's flusher writes the buffers
//! out and `sync_data`s the files (`collect_for_sync`).

mod file;
mod format;
mod index;
mod recovery;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::{codec, io_err, Result, StoreError, StoredMessage};
pub(crate) use file::sync_dir;
use file::{remove_file_if_exists, LogFile, PENDING_MAX};
#[cfg(test)]
pub(crate) use format::encode_record;
use format::*;
use index::{Bits, Seqs};

/// Reads fetch this much of a segment at a time (more if one record is larger).
const READ_CHUNK: usize = 256 << 10;

struct Segment {
    seqs: Seqs,
    acked: Bits,
    live: u32,
    /// Sealed (a footer follows the records, nothing is appended any more): where the records end.
    sealed_len: Option<u64>,
    /// Some record may have a `0x11` state key in sled.
    has_states: bool,
    seg: LogFile,
    ack: LogFile,
}

impl Segment {
    fn new(seg: LogFile, ack: LogFile) -> Segment {
        Segment {
            seqs: Seqs::default(),
            acked: Bits::default(),
            live: 0,
            sealed_len: None,
            has_states: false,
            seg,
            ack,
        }
    }

    /// Appends the footer to the write buffer.
    fn seal(&mut self) {
        if self.sealed_len.is_none() {
            let data_len = self.seg.len();
            encode_footer(&self.seqs, data_len, &mut self.seg.pending);
            self.sealed_len = Some(data_len);
            self.seg.release = true;
        }
    }

    /// End of the records in the file (once the buffer is written out).
    fn data_end(&self) -> u64 {
        self.sealed_len.unwrap_or(self.seg.written)
    }

    fn first_live(&self) -> Option<u64> {
        self.acked.first_clear(self.seqs.n).map(|r| self.seqs.seq_at(r))
    }

    fn last_live(&self) -> Option<u64> {
        self.acked.last_clear(self.seqs.n).map(|r| self.seqs.seq_at(r))
    }

    fn is_live(&self, seq: u64) -> bool {
        self.seqs.rank(seq).is_some_and(|r| !self.acked.get(r))
    }

    fn live_seqs(&self, out: &mut Vec<u64>) {
        for r in &self.seqs.runs {
            for k in 0..r.len {
                if !self.acked.get(r.rank0 + k) {
                    out.push(r.start + k as u64);
                }
            }
        }
    }

    /// The segment file goes first: an `.ack` without its `.seg` is removed at open, a `.seg`
    /// without its `.ack` would bring its messages back.
    fn remove_files(&self) -> Result<()> {
        remove_file_if_exists(&self.seg.path)?;
        remove_file_if_exists(&self.ack.path)
    }
}

/// Where the last read stopped: records before `offset` in segment `seg` have seqs <= `prev`.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    seg: u64,
    offset: u64,
    rank: u32,
    prev: Option<u64>,
}

struct QueueLog {
    id: u32,
    dir: PathBuf,
    dir_exists: bool,
    /// By first seq (= file name).
    segs: BTreeMap<u64, Segment>,
    /// The segment appends go to. None after open: the first append starts a new segment.
    write_seg: Option<u64>,
    /// Appends must be above this (the highest seq held in a segment file, acked or not).
    last_appended: Option<u64>,
    cursor: Option<Cursor>,
    /// Segments with buffered or unsynced data (segment or ack file).
    dirty_segs: BTreeSet<u64>,
    /// Listed in `MsgLog::dirty`.
    in_dirty: bool,
    /// Deleted (`delete_queue`): a handle obtained before must not be used.
    removed: bool,
}

impl QueueLog {
    fn new(id: u32, root: &Path) -> QueueLog {
        let dir = root.join(queue_dir_name(id));
        QueueLog {
            id,
            dir,
            dir_exists: false,
            segs: BTreeMap::new(),
            write_seg: None,
            last_appended: None,
            cursor: None,
            dirty_segs: BTreeSet::new(),
            in_dirty: false,
            removed: false,
        }
    }

    /// The segment that would hold `seq`: the last one starting at or before it.
    fn seg_for(&self, seq: u64) -> Option<u64> {
        self.segs.range(..=seq).next_back().map(|(f, _)| *f)
    }

    fn drop_segment(&mut self, first: u64, dirs: &Mutex<HashSet<PathBuf>>) -> Result<Option<Segment>> {
        let Some(seg) = self.segs.remove(&first) else {
            return Ok(None);
        };
        seg.remove_files()?;
        self.dirty_segs.remove(&first);
        if self.write_seg == Some(first) {
            self.write_seg = None;
        }
        if self.cursor.is_some_and(|c| c.seg == first) {
            self.cursor = None;
        }
        dirs.lock().insert(self.dir.clone());
        Ok(Some(seg))
    }

    fn live(&self) -> u64 {
        self.segs.values().map(|s| s.live as u64).sum()
    }

    /// Seals the write segment, if any: appends go to a new segment from now on.
    fn seal_write_seg(&mut self) -> bool {
        let Some(w) = self.write_seg.take() else {
            return false;
        };
        let Some(seg) = self.segs.get_mut(&w) else {
            return false;
        };
        seg.seal();
        self.dirty_segs.insert(w);
        true
    }
}

/// What `MsgLog::delete` leaves to sled: state keys to remove.
#[derive(Default)]
pub(crate) struct Deleted {
    /// Seqs of deleted messages that may have a state key.
    pub state_seqs: Vec<u64>,
    /// Seq ranges of removed segments that may have state keys.
    pub state_ranges: Vec<(u64, u64)>,
}

pub(crate) struct MsgLog {
    root: PathBuf,
    segment_bytes: u64,
    queues: RwLock<HashMap<u32, Arc<Mutex<QueueLog>>>>,
    /// Queues with buffered or unsynced data, for the flusher.
    dirty: Mutex<Vec<u32>>,
    /// Directories where files were created or removed since the last sync.
    dirty_dirs: Mutex<HashSet<PathBuf>>,
}

/// What `MsgLog::open` found.
pub(crate) struct Recovery {
    /// Queue ids without a queue record whose messages were removed.
    pub orphan_queues: Vec<u32>,
    /// Segment or ack files whose torn tail was cut off.
    pub truncated_files: usize,
    /// Segments read whole because they had no valid footer (the write segments of a crash).
    pub scanned_segments: usize,
}

impl MsgLog {
    fn get(&self, id: u32) -> Option<Arc<Mutex<QueueLog>>> {
        self.queues.read().get(&id).cloned()
    }

    fn get_or_create(&self, id: u32) -> Arc<Mutex<QueueLog>> {
        if let Some(q) = self.get(id) {
            return q;
        }
        self.queues
            .write()
            .entry(id)
            .or_insert_with(|| Arc::new(Mutex::new(QueueLog::new(id, &self.root))))
            .clone()
    }

    fn touch(&self, q: &mut QueueLog) {
        if !q.in_dirty {
            q.in_dirty = true;
            self.dirty.lock().push(q.id);
        }
    }

    /// Appends records; items of one queue must come in increasing seq order, above every seq
    /// appended before (since open). Returns the bytes buffered.
    pub(crate) fn append(&self, items: &[(u32, u64, &StoredMessage)]) -> Result<usize> {
        let mut bytes = 0;
        let mut i = 0;
        while i < items.len() {
            let qid = items[i].0;
            let mut j = i + 1;
            while j < items.len() && items[j].0 == qid {
                j += 1;
            }
            loop {
                let q = self.get_or_create(qid);
                let mut q = q.lock();
                if q.removed {
                    // deleted meanwhile (it left the map before it was marked): take a fresh one
                    continue;
                }
                for &(_, seq, msg) in &items[i..j] {
                    bytes += self.append_one(&mut q, seq, msg)?;
                }
                break;
            }
            i = j;
        }
        Ok(bytes)
    }

    fn append_one(&self, q: &mut QueueLog, seq: u64, msg: &StoredMessage) -> Result<usize> {
        if let Some(last) = q.last_appended {
            if seq <= last {
                return Err(StoreError::OutOfOrder {
                    queue_id: q.id,
                    seq,
                    last,
                });
            }
        }
        let rec = encode_record(seq, msg)?;
        let full = match q.write_seg.and_then(|w| q.segs.get(&w)) {
            None => true,
            Some(s) => {
                s.seqs.n > 0
                    && s.seg.len() + rec.len() as u64 + footer_len(s.seqs.runs.len() + 1) > self.segment_bytes
            }
        };
        if full {
            self.start_segment(q, seq)?;
        }
        let w = q.write_seg.expect("write segment");
        let seg = q.segs.get_mut(&w).expect("write segment");
        seg.seqs.push(seq);
        seg.live += 1;
        let n = rec.len();
        if seg.seg.pending.is_empty() {
            seg.seg.pending = rec;
        } else {
            seg.seg.pending.extend_from_slice(&rec);
        }
        if seg.seg.pending.len() > PENDING_MAX {
            // best effort: on failure the buffer stays and the flusher retries (and reports)
            if let Err(e) = seg.seg.write_out() {
                tracing::warn!(error = %e, "writing out a segment buffer failed");
            }
        }
        q.dirty_segs.insert(w);
        q.last_appended = Some(seq);
        self.touch(q);
        Ok(n)
    }

    /// Seals the write segment (removing it if nothing in it is live) and creates a new one named
    /// `first`.
    fn start_segment(&self, q: &mut QueueLog, first: u64) -> Result<()> {
        if let Some(w) = q.write_seg {
            if q.segs.get(&w).is_some_and(|s| s.live == 0) {
                q.drop_segment(w, &self.dirty_dirs)?;
            } else {
                q.seal_write_seg();
            }
        }
        if !q.dir_exists {
            fs::create_dir_all(&q.dir).map_err(io_err(&q.dir))?;
            q.dir_exists = true;
            self.dirty_dirs.lock().insert(self.root.clone());
        }
        // the ack file first: a stale one of the same name must not apply to the new records
        let ack = LogFile::create(ack_path(&q.dir, first))?;
        let seg = LogFile::create(seg_path(&q.dir, first))?;
        q.segs.insert(first, Segment::new(seg, ack));
        q.write_seg = Some(first);
        q.dirty_segs.insert(first);
        self.dirty_dirs.lock().insert(q.dir.clone());
        self.touch(q);
        Ok(())
    }

    /// Acks messages: appends their seqs to the ack files of their segments and removes segments
    /// left without a live message. Absent or already acked seqs are ignored.
    pub(crate) fn delete(&self, qid: u32, seqs: &[u64]) -> Result<Deleted> {
        let mut out = Deleted::default();
        let Some(q) = self.get(qid) else {
            return Ok(out);
        };
        let mut q = q.lock();
        if q.removed || seqs.is_empty() {
            return Ok(out);
        }
        // (segment, acked seqs), segments in the order first met
        let mut batches: Vec<(u64, Vec<u64>)> = Vec::new();
        for &s in seqs {
            let Some(first) = q.seg_for(s) else { continue };
            let seg = q.segs.get_mut(&first).expect("segment");
            let Some(rank) = seg.seqs.rank(s) else { continue };
            if seg.acked.get(rank) {
                continue;
            }
            seg.acked.set(rank);
            seg.live -= 1;
            if seg.has_states {
                out.state_seqs.push(s);
            }
            match batches.iter_mut().find(|b| b.0 == first) {
                Some(b) => b.1.push(s),
                None => batches.push((first, vec![s])),
            }
        }
        // A fully acked write segment goes too once it is not tiny: disk use returns to (almost)
        // nothing when a queue is drained, without a new file per message when a consumer keeps up.
        let retire_write = self.segment_bytes / 8;
        for (first, acked) in batches {
            let is_write = q.write_seg == Some(first);
            let seg = q.segs.get_mut(&first).expect("segment");
            let done = seg.live == 0 && (!is_write || seg.seg.len() >= retire_write);
            if done {
                let last = seg.seqs.last().expect("non-empty");
                if let Some(s) = q.drop_segment(first, &self.dirty_dirs)? {
                    if s.has_states {
                        out.state_ranges.push((first, last));
                    }
                }
            } else {
                encode_ack_batch(&acked, &mut seg.ack.pending);
                if seg.ack.pending.len() > PENDING_MAX {
                    if let Err(e) = seg.ack.write_out() {
                        tracing::warn!(error = %e, "writing out an ack buffer failed");
                    }
                }
                q.dirty_segs.insert(first);
                self.touch(&mut q);
            }
        }
        Ok(out)
    }

    /// Notes that `seq` got a state key; whether it is a live message.
    pub(crate) fn note_state(&self, qid: u32, seq: u64) -> bool {
        let Some(q) = self.get(qid) else { return false };
        let mut q = q.lock();
        if q.removed {
            return false;
        }
        let Some(first) = q.seg_for(seq) else { return false };
        let seg = q.segs.get_mut(&first).expect("segment");
        seg.has_states = true;
        seg.is_live(seq)
    }

    /// Up to `limit` live messages with seq >= `from`, in order.
    pub(crate) fn read(&self, qid: u32, from: u64, limit: usize) -> Result<Vec<(u64, StoredMessage)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let Some(q) = self.get(qid) else {
            return Ok(out);
        };
        let mut q = q.lock();
        if q.removed {
            return Ok(out);
        }
        let target = q.seg_for(from).or_else(|| q.segs.keys().next().copied());
        let Some(target) = target else {
            return Ok(out);
        };
        let mut cur = match q.cursor {
            Some(c) if c.seg == target && c.prev.is_none_or(|p| p < from) => c,
            _ => Cursor {
                seg: target,
                offset: 0,
                rank: 0,
                prev: None,
            },
        };
        let mut buf: Vec<u8> = Vec::new();
        'segs: loop {
            let seg = q.segs.get_mut(&cur.seg).expect("segment");
            let skip = seg.live == 0 || seg.seqs.last().is_none_or(|l| l < from);
            if !skip {
                seg.seg.write_out()?;
                let end = seg.data_end();
                let file = seg.seg.handle()?;
                while cur.offset < end {
                    let want = (end - cur.offset).min(READ_CHUNK as u64) as usize;
                    buf.resize(want, 0);
                    file.read_exact_at(&mut buf, cur.offset)
                        .map_err(io_err(&seg.seg.path))?;
                    let mut pos = 0;
                    while pos < buf.len() {
                        let (total, seq) = match parse_record(&buf[pos..]) {
                            Ok(Some(r)) => r,
                            Ok(None) => {
                                return Err(StoreError::Corrupt(format!(
                                    "bad record at offset {} of {}",
                                    cur.offset + pos as u64,
                                    seg.seg.path.display()
                                )))
                            }
                            Err(needed) if pos == 0 => {
                                // one record larger than the chunk
                                if cur.offset + needed as u64 > end {
                                    return Err(StoreError::Corrupt(format!(
                                        "record at offset {} of {} runs past the end",
                                        cur.offset,
                                        seg.seg.path.display()
                                    )));
                                }
                                buf.resize(needed, 0);
                                file.read_exact_at(&mut buf, cur.offset)
                                    .map_err(io_err(&seg.seg.path))?;
                                continue;
                            }
                            Err(_) => break,
                        };
                        if seq >= from && !seg.acked.get(cur.rank) {
                            let payload = Bytes::copy_from_slice(&buf[pos + RECORD_HEADER..pos + total]);
                            out.push((seq, codec::decode_message(payload)?));
                        }
                        cur.rank += 1;
                        cur.prev = Some(seq);
                        pos += total;
                        if out.len() == limit {
                            cur.offset += pos as u64;
                            break 'segs;
                        }
                    }
                    cur.offset += pos as u64;
                }
            }
            match q.segs.range(cur.seg + 1..).next() {
                Some((&next, _)) if cur.seg < u64::MAX => {
                    cur = Cursor {
                        seg: next,
                        offset: 0,
                        rank: 0,
                        prev: None,
                    }
                }
                _ => break,
            }
        }
        q.cursor = Some(cur);
        Ok(out)
    }

    pub(crate) fn seqs(&self, qid: u32) -> Vec<u64> {
        let mut out = Vec::new();
        if let Some(q) = self.get(qid) {
            for s in q.lock().segs.values() {
                s.live_seqs(&mut out);
            }
        }
        out
    }

    pub(crate) fn count(&self, qid: u32) -> u64 {
        self.get(qid).map_or(0, |q| q.lock().live())
    }

    pub(crate) fn bounds(&self, qid: u32) -> Option<(u64, u64)> {
        let q = self.get(qid)?;
        let q = q.lock();
        let first = q.segs.values().find_map(Segment::first_live)?;
        let last = q.segs.values().rev().find_map(Segment::last_live)?;
        Some((first, last))
    }

    pub(crate) fn queue_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self
            .queues
            .read()
            .iter()
            .filter(|(_, q)| q.lock().segs.values().any(|s| s.live > 0))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Removes every segment of a queue. Returns the number of live messages removed.
    pub(crate) fn purge(&self, qid: u32) -> Result<u64> {
        let Some(q) = self.get(qid) else { return Ok(0) };
        let mut q = q.lock();
        if q.removed {
            return Ok(0);
        }
        let n = q.live();
        let firsts: Vec<u64> = q.segs.keys().copied().collect();
        for f in firsts {
            q.drop_segment(f, &self.dirty_dirs)?;
        }
        q.cursor = None;
        Ok(n)
    }

    /// Removes a queue's directory. Returns the number of live messages removed.
    pub(crate) fn remove_queue(&self, qid: u32) -> Result<u64> {
        let Some(q) = self.queues.write().remove(&qid) else {
            return Ok(0);
        };
        let mut q = q.lock();
        q.removed = true;
        let n = q.live();
        if q.dir_exists {
            match fs::remove_dir_all(&q.dir) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err(&q.dir)(e)),
                _ => {}
            }
            self.dirty_dirs.lock().insert(self.root.clone());
        }
        q.segs.clear();
        q.dirty_segs.clear();
        Ok(n)
    }

    /// Seals every queue's write segment (at a clean shutdown): the next open reads only footers.
    pub(crate) fn seal_all(&self) {
        let queues: Vec<_> = self.queues.read().values().cloned().collect();
        for q in queues {
            let mut q = q.lock();
            if !q.removed && q.seal_write_seg() {
                self.touch(&mut q);
            }
        }
    }

    /// Writes out every buffer and hands over the files (and directories) that need a sync.
    /// Everything appended or acked before this call is covered.
    pub(crate) fn collect_for_sync(
        &self,
        files: &mut Vec<(PathBuf, Arc<File>)>,
        dirs: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let ids = std::mem::take(&mut *self.dirty.lock());
        for (k, &id) in ids.iter().enumerate() {
            let Some(q) = self.get(id) else { continue };
            let mut q = q.lock();
            if q.removed {
                continue;
            }
            q.in_dirty = false;
            let segs = std::mem::take(&mut q.dirty_segs);
            for (n, &first) in segs.iter().enumerate() {
                let Some(seg) = q.segs.get_mut(&first) else {
                    continue;
                };
                let r = seg.seg.write_out().and_then(|_| seg.ack.write_out());
                if let Err(e) = r {
                    // put back what was not done; the flusher retries
                    q.dirty_segs.extend(segs.iter().skip(n));
                    q.in_dirty = true;
                    let mut d = self.dirty.lock();
                    d.extend(ids[k..].iter().copied());
                    return Err(e);
                }
                seg.seg.take_sync(files);
                seg.ack.take_sync(files);
            }
        }
        dirs.extend(self.dirty_dirs.lock().drain());
        Ok(())
    }
}
