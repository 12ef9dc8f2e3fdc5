//! Streams: an append-only log per stream queue, in segment files under `<data-dir>/streams/<id>/`.
//! Every record has an offset (increasing by one per message, never reused) and a publish
//! timestamp; a chunk index beside each segment (`.idx`, one entry per chunk: first offset, its
//! timestamp, its position) lets a reader start at an offset or a time without reading the
//! segment. Acks do not remove anything: retention (`retain`) drops whole oldest segments.
//!
//! Durability is the message log's: writes go to a `LogFile` buffer, the store's one flusher
//! writes out and `fdatasync`s the segment and index files of every dirty stream in its round and
//! settles the round's tickets (`collect_for_sync`, `apply_sync_results`). A chunk is what one
//! round wrote (capped at `CHUNK_MAX`), as a chunk in RabbitMQ's osiris is one write batch. A round's
//! first record carries the round mark when all before it was synced (format.rs, `ROUND_MARK`): it is
//! what lets recovery tell damage to synced records from a torn write.
//!
//! Memory per stream: one small struct per segment, nothing per message or per chunk (the index
//! lives in its file; the chunk being written is remembered for `last`). Readers (`reader.rs`)
//! read sequentially in 256 KiB blocks: synced bytes from the files, without holding the stream's
//! lock while they read; the unsynced tail from the segment's write buffer.

mod api;
mod format;
mod reader;
mod recovery;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::codec::MessageParts;
use crate::fault::{Faults, FileKind};
use crate::seglog::{LogFile, SyncBatch, SyncItem, PENDING_MAX};
use crate::{io_err, Result};
use format::*;
pub use reader::{ReadOutcome, StreamItem, StreamReader, StreamRecord, StreamStart};

/// The index is a hint (recovery rebuilds what it misses from the records): it is synced when this much
/// segment data was written since its last sync, and when its segment is sealed, not in every round. A
/// round then syncs one file per stream, not two; after a crash, recovery reads at most this much of a
/// segment to find its chunks again.
const IDX_SYNC_EVERY: u64 = 16 << 20;

/// Synced bytes of the segment being written kept in memory for readers (`LogFile::keep`): a reader that
/// keeps up with the writers reads nothing back from the file. That is cheaper, and it is also what makes
/// it immune to a file system that returns stale bytes for a block read while it is written and synced:
/// LazyFS returned zeros that way (`tests/tests/power_loss_stream.rs` saw records skipped as damaged).
const KEEP_SYNCED: usize = 512 << 10;

/// The segment being written is kept zero-filled ahead of its data (`LogFile::prefill`: as far as it holds
/// data, from 64 KiB up to 4 MiB, never past the segment size; written and synced by the round that extends
/// the file): a record then lands on blocks that already belong to the file, and the `fdatasync` that
/// confirms it has only data to write, no file size or block allocation (on ext4: no journal commit, which
/// under other writers' load takes milliseconds). PostgreSQL zero-fills its WAL segments for the same
/// reason. Recovery finds the end of the records by their checksums and keeps the zeros (not counted as a
/// torn tail).
const PREFILL: (u64, u64) = (64 << 10, 4 << 20);

/// A chunk is closed once it holds this much (a busy flusher round would otherwise make one huge
/// chunk, and `last` would replay all of it).
const CHUNK_MAX: u64 = 256 << 10;

/// What the store knows of a stream without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// First offset still held (None: nothing held).
    pub first: Option<u64>,
    /// The offset the next message will get.
    pub next: u64,
    pub segments: usize,
    /// Bytes of segment and index files (buffered bytes included).
    pub bytes: u64,
    /// Timestamp of the oldest message held.
    pub first_ts: Option<u64>,
}

struct Seg {
    /// Last offset in the segment (None: empty).
    last: Option<u64>,
    first_ts: Option<u64>,
    last_ts: u64,
    data: LogFile,
    idx: LogFile,
    /// The segment length the index's last sync covered (its chunks up to there are durable).
    idx_synced_at: u64,
    /// The stream's segment size limit, as its last append gave it (the prefill stops there).
    max: u64,
}

impl Seg {
    fn bytes(&self) -> u64 {
        self.data.len() + self.idx.len()
    }

    fn remove_files(&self) -> Result<()> {
        for f in [&self.data, &self.idx] {
            match fs::remove_file(&f.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&f.path)(e)),
            }
        }
        Ok(())
    }
}

struct Stream {
    id: u32,
    dir: PathBuf,
    dir_exists: bool,
    segs: BTreeMap<u64, Seg>,
    next_offset: u64,
    last_ts: u64,
    /// The chunk being written: (its first offset, its segment, its position), its bytes so far.
    chunk: Option<(IdxEntry, u64)>,
    chunk_bytes: u64,
    /// The last chunk started (for `last`): its segment and entry.
    last_chunk: Option<(u64, IdxEntry)>,
    dirty_segs: BTreeSet<u64>,
    in_dirty: bool,
    removed: bool,
}

impl Stream {
    fn new(id: u32, root: &Path) -> Stream {
        Stream {
            id,
            dir: root.join(stream_dir_name(id)),
            dir_exists: false,
            segs: BTreeMap::new(),
            next_offset: 0,
            last_ts: 0,
            chunk: None,
            chunk_bytes: 0,
            last_chunk: None,
            dirty_segs: BTreeSet::new(),
            in_dirty: false,
            removed: false,
        }
    }

    fn write_seg(&self) -> Option<u64> {
        self.segs.keys().next_back().copied()
    }
}

pub(crate) struct StreamLog {
    root: PathBuf,
    faults: Arc<Faults>,
    streams: RwLock<HashMap<u32, Arc<Mutex<Stream>>>>,
    dirty: Mutex<Vec<u32>>,
    dirty_dirs: Mutex<HashSet<PathBuf>>,
}

impl StreamLog {
    fn get(&self, id: u32) -> Option<Arc<Mutex<Stream>>> {
        self.streams.read().get(&id).cloned()
    }

    fn get_or_create(&self, id: u32) -> Arc<Mutex<Stream>> {
        if let Some(s) = self.get(id) {
            return s;
        }
        self.streams
            .write()
            .entry(id)
            .or_insert_with(|| Arc::new(Mutex::new(Stream::new(id, &self.root))))
            .clone()
    }

    fn touch(&self, s: &mut Stream) {
        if !s.in_dirty {
            s.in_dirty = true;
            self.dirty.lock().push(s.id);
        }
    }

    /// Appends one message; returns (its offset, bytes buffered). `max_segment` bounds a segment
    /// (a record larger than that gets a segment of its own).
    pub(crate) fn append(
        &self,
        id: u32,
        ts: u64,
        filter: Option<&[u8]>,
        msg: &MessageParts<'_>,
        max_segment: u64,
    ) -> Result<(u64, usize)> {
        loop {
            let s = self.get_or_create(id);
            let mut s = s.lock();
            if s.removed {
                continue;
            }
            return self.append_locked(&mut s, ts, filter, msg, max_segment);
        }
    }

    fn append_locked(
        &self,
        s: &mut Stream,
        ts: u64,
        filter: Option<&[u8]>,
        msg: &MessageParts<'_>,
        max_segment: u64,
    ) -> Result<(u64, usize)> {
        let offset = s.next_offset;
        let ts = ts.max(s.last_ts);
        let mut placed = None;
        if let Some(w) = s.write_seg() {
            let seg = s.segs.get_mut(&w).expect("write segment");
            let before = seg.data.len();
            let n = encode_record_into(&mut seg.data.pending, offset, ts, filter, msg)?;
            if seg.last.is_some() && before + n as u64 > max_segment {
                let keep = seg.data.pending.len() - n;
                seg.data.pending.truncate(keep);
            } else {
                placed = Some((w, before, n));
            }
        }
        let (w, pos, n) = match placed {
            Some(p) => p,
            None => {
                self.start_segment(s, offset)?;
                let seg = s.segs.get_mut(&offset).expect("new segment");
                let n = encode_record_into(&mut seg.data.pending, offset, ts, filter, msg)?;
                (offset, 0, n)
            }
        };
        let new_chunk = match s.chunk {
            Some((_, cseg)) => cseg != w || s.chunk_bytes >= CHUNK_MAX,
            None => true,
        };
        let seg = s.segs.get_mut(&w).expect("write segment");
        if new_chunk {
            let e = IdxEntry { offset, ts, pos };
            encode_idx(e, &mut seg.idx.pending);
            s.chunk = Some((e, w));
            s.chunk_bytes = 0;
            s.last_chunk = Some((w, e));
        }
        s.chunk_bytes += n as u64;
        seg.max = max_segment;
        seg.last = Some(offset);
        seg.first_ts.get_or_insert(ts);
        seg.last_ts = ts;
        if seg.data.unwritten() > PENDING_MAX {
            if let Err(e) = seg.data.write_out(&self.faults) {
                tracing::warn!(error = %e, "writing out a stream segment buffer failed");
            }
        }
        s.next_offset = offset + 1;
        s.last_ts = ts;
        s.dirty_segs.insert(w);
        self.touch(s);
        Ok((offset, n))
    }

    fn start_segment(&self, s: &mut Stream, first: u64) -> Result<()> {
        if let Some(w) = s.write_seg() {
            // sealed: once synced, its buffers and handles are let go
            if let Some(seg) = s.segs.get_mut(&w) {
                seg.data.release = true;
                seg.idx.release = true;
                s.dirty_segs.insert(w);
            }
        }
        if !s.dir_exists {
            fs::create_dir_all(&s.dir).map_err(io_err(&s.dir))?;
            s.dir_exists = true;
            self.dirty_dirs.lock().insert(self.root.clone());
        }
        let idx = LogFile::create(idx_path(&s.dir, first), FileKind::Segment, &self.faults)?;
        let mut data = LogFile::create(seg_path(&s.dir, first), FileKind::Segment, &self.faults)?;
        data.keep = KEEP_SYNCED;
        s.segs.insert(
            first,
            Seg {
                last: None,
                first_ts: None,
                last_ts: s.last_ts,
                data,
                idx,
                idx_synced_at: 0,
                max: 0,
            },
        );
        s.chunk = None;
        s.dirty_segs.insert(first);
        self.dirty_dirs.lock().insert(s.dir.clone());
        self.touch(s);
        Ok(())
    }

    pub(crate) fn stats(&self, id: u32) -> StreamStats {
        let Some(s) = self.get(id) else {
            return StreamStats::default();
        };
        let s = s.lock();
        let first = s.segs.iter().find(|(_, g)| g.last.is_some());
        StreamStats {
            first: first.map(|(f, _)| *f),
            first_ts: first.and_then(|(_, g)| g.first_ts),
            next: s.next_offset,
            segments: s.segs.len(),
            bytes: s.segs.values().map(Seg::bytes).sum(),
        }
    }

    /// Retention: drops whole oldest segments (never the one being written) while the stream is
    /// over `max_bytes`, or while the oldest segment's newest message is older than `min_ts`.
    /// Returns the number of segments dropped.
    pub(crate) fn retain(&self, id: u32, max_bytes: Option<u64>, min_ts: Option<u64>) -> Result<usize> {
        let Some(s) = self.get(id) else { return Ok(0) };
        let mut s = s.lock();
        if s.removed {
            return Ok(0);
        }
        let mut total: u64 = s.segs.values().map(Seg::bytes).sum();
        let mut dropped = 0;
        while s.segs.len() > 1 {
            let (&first, seg) = s.segs.iter().next().expect("segments");
            let over_size = max_bytes.is_some_and(|m| total > m);
            let too_old = min_ts.is_some_and(|t| seg.last.is_some() && seg.last_ts < t);
            if !(over_size || too_old) {
                break;
            }
            let seg = s.segs.remove(&first).expect("segment");
            if let Err(e) = seg.remove_files() {
                s.segs.insert(first, seg);
                return Err(e);
            }
            total -= seg.bytes();
            s.dirty_segs.remove(&first);
            dropped += 1;
        }
        if dropped > 0 {
            self.dirty_dirs.lock().insert(s.dir.clone());
            self.touch(&mut s);
        }
        Ok(dropped)
    }

    /// Removes a stream's files (its queue is deleted).
    pub(crate) fn remove(&self, id: u32) -> Result<()> {
        let Some(s) = self.streams.write().remove(&id) else {
            return Ok(());
        };
        let mut s = s.lock();
        s.removed = true;
        if s.dir_exists {
            match fs::remove_dir_all(&s.dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&s.dir)(e)),
            }
            self.dirty_dirs.lock().insert(self.root.clone());
        }
        Ok(())
    }

    /// Writes out every buffer and hands the files written since the last round to the flusher.
    /// The chunk being written ends here: what one round wrote is one chunk.
    pub(crate) fn collect_for_sync(&self, batch: &mut SyncBatch) -> Result<()> {
        let ids = std::mem::take(&mut *self.dirty.lock());
        let mut first_err = None;
        for id in ids {
            let Some(s) = self.get(id) else { continue };
            let mut guard = s.lock();
            let s = &mut *guard;
            if s.removed {
                continue;
            }
            s.in_dirty = false;
            s.chunk = None;
            let mut keep = false;
            for first in std::mem::take(&mut s.dirty_segs) {
                let Some(seg) = s.segs.get_mut(&first) else {
                    continue;
                };
                let mut ok = true;
                let sync_idx = seg.idx.release
                    || seg.idx.broken
                    || seg.data.len().saturating_sub(seg.idx_synced_at) >= IDX_SYNC_EVERY;
                let data_len = seg.data.len();
                if !seg.data.broken && seg.data.written == seg.data.synced && seg.data.unwritten() > 0 {
                    // every byte before this round's first record is durable: it carries the round mark,
                    // which lets recovery cross damage before it (format.rs, `ROUND_MARK`)
                    let at = seg.data.head;
                    mark_round(&mut seg.data.pending[at..]);
                }
                let data = seg.data.write_out_or_repair(&self.faults);
                // (a sealed segment keeps the zeros it has, never past the segment size)
                let data = data.and_then(|()| seg.data.prefill(PREFILL.0, PREFILL.1, seg.max, &self.faults));
                let idx = seg.idx.write_out_or_repair(&self.faults);
                for (f, sync, r) in [(&mut seg.data, true, data), (&mut seg.idx, sync_idx, idx)] {
                    match r {
                        Ok(()) if sync => f.take_sync(s.id, Some(first), &mut batch.files),
                        Ok(()) => {}
                        Err(e) => {
                            first_err.get_or_insert(e);
                            ok = false;
                        }
                    }
                }
                if sync_idx && ok {
                    seg.idx_synced_at = data_len;
                }
                seg.data.let_go_if_done();
                if !ok {
                    s.dirty_segs.insert(first);
                    keep = true;
                }
            }
            if keep {
                self.touch(s);
            }
        }
        batch.dirs.extend(self.dirty_dirs.lock().drain());
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn apply_sync_results(&self, results: impl Iterator<Item = (SyncItem, bool)>) {
        for (item, ok) in results {
            let Some(s) = self.get(item.qid) else { continue };
            let mut guard = s.lock();
            let s = &mut *guard;
            let Some(first) = item.seg else { continue };
            let Some(seg) = s.segs.get_mut(&first) else {
                continue;
            };
            let Some(f) = [&mut seg.data, &mut seg.idx]
                .into_iter()
                .find(|f| f.id == item.file_id)
            else {
                continue;
            };
            if ok {
                f.synced_to(item.upto);
            } else {
                f.broken = true;
                s.dirty_segs.insert(first);
                self.touch(s);
            }
        }
    }

    /// The chunk index of segment `first`, written out first if buffered.
    fn read_index(&self, s: &mut Stream, first: u64) -> Result<Vec<IdxEntry>> {
        let Some(seg) = s.segs.get_mut(&first) else {
            return Ok(Vec::new());
        };
        seg.idx.write_out(&self.faults)?;
        let len = seg.idx.written;
        let f = seg.idx.handle()?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact_at(&mut buf, 0).map_err(io_err(&seg.idx.path))?;
        Ok(parse_idx(&buf, seg.data.len().max(1)))
    }
}

#[cfg(test)]
mod tests;
