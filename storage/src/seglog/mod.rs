//! The message log: each queue's messages in append-only segment files, acks in a side file per
//! segment, a segment deleted as soon as all of its messages are acked (LavinMQ's model), and a
//! copy of the queue's definition (`queue.def`) beside them. Layout, record format and recovery:
//! docs/storage-format.md.
//!
//! Memory: per segment, the runs of consecutive seqs it holds and one ack bit per record; nothing
//! per message. Writes go to an in-process buffer per file; the store's flusher writes the buffers
//! out and `sync_data`s the files (`collect_for_sync`), and reports back which syncs succeeded
//! (`apply_sync_results`): a buffer keeps its bytes until a sync covered them, so a file whose sync
//! failed is rewritten from memory (`LogFile::repair`) instead of trusted.

mod file;
mod format;
mod index;
mod recovery;
pub(crate) use recovery::move_aside;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::codec::MessageParts;
use crate::fault::{Faults, FileKind};
use crate::{codec, io_err, QueueRecord, Result, StoreError, StoredMessage};
use file::remove_file_if_exists;
pub(crate) use file::{sync_dir, write_zeros, LogFile, SyncItem, PENDING_MAX};
pub(crate) use format::parse_hex_name;
use format::*;
#[cfg(test)]
pub(crate) use format::{decode_def as decode_def_pub, encode_def as encode_def_pub, encode_record};
use index::{Bits, Seqs};
#[cfg(test)]
pub(crate) use recovery::Recovery;
pub(crate) use recovery::{has_message_data, read_lost};

/// Reads fetch this much of a segment at a time (more if one record is larger).
const READ_CHUNK: usize = 256 << 10;

/// The segment being written, once it holds twice the size at which a fully acked one is removed (1/8 of
/// the segment size: a queue whose consumers keep up never gets there), is kept zero-filled ahead of its records
/// (`LogFile::prefill`: as far as it holds records, up to 4 MiB, never past the segment size), so that the
/// sync confirming a publish commits no new file size. Its footer, when it is sealed, goes at the end of the zeros
/// (`LogFile::tail`): the file keeps its length, and open finds the footer at the file's end.
const SEG_PREFILL: (u64, u64) = (64 << 10, 4 << 20);

/// The ack file of such a segment is kept zero-filled ahead of its batches (4 KiB up to 64 KiB), for the same
/// reason.
const ACK_PREFILL: (u64, u64) = (4 << 10, 64 << 10);

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

    /// Gives the file its footer, written at the file's end by the next round (over the last zeros kept
    /// ahead of the records, if there is room: the file keeps its length).
    fn seal(&mut self) {
        if self.sealed_len.is_none() {
            let data_len = self.seg.len();
            let mut footer = Vec::with_capacity(footer_len(self.seqs.runs.len()) as usize);
            encode_footer(&self.seqs, data_len, &mut footer);
            self.seg.tail = footer;
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

    /// Records of ranks `from..to` turned out unreadable (damaged on disk): they are acked, so that
    /// nothing counts or waits for them, and the ack is written so that the next open agrees.
    /// Returns how many live records that were.
    fn give_up(&mut self, from: u32, to: u32) -> u32 {
        let mut lost = Vec::new();
        for r in from..to.min(self.seqs.n) {
            if !self.acked.get(r) {
                self.acked.set(r);
                self.live -= 1;
                lost.push(self.seqs.seq_at(r));
            }
        }
        if !lost.is_empty() {
            encode_ack_batch(&lost, &mut self.ack.pending);
        }
        lost.len() as u32
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
    dirty_segs: SegSet,
    /// `collect_for_sync`'s copy of `dirty_segs`, kept for its capacity.
    syncing_segs: SegSet,
    /// The definition copy (`queue.def`) while it is being written; `None` once it is durable.
    def: Option<LogFile>,
    /// The directory has its definition copy (durable or being written).
    has_def: bool,
    /// Listed in `MsgLog::dirty`.
    in_dirty: bool,
    /// Deleted (`delete_queue`): a handle obtained before must not be used.
    removed: bool,
    /// `delete`'s (segment, seq) pairs and one segment's seqs: kept between calls, so that an ack
    /// allocates nothing once the queue has seen one.
    ack_marks: Vec<(u64, u64)>,
    ack_group: Vec<u64>,
    /// A retired write segment's files, renamed `spare.seg`/`spare.ack`, for the next segment to
    /// write over (`Spare`).
    spare: Option<Spare>,
}

/// The files of a fully acked write segment, kept for the next segment of the same queue instead of
/// being removed: renamed to `spare.seg` and `spare.ack` (which recovery removes), then to the new
/// segment's names, and written over from offset 0. The blocks already belong to the files, so a
/// round's `fdatasync` of the new records has no file size or block allocation to commit (on ext4 no
/// journal commit, as with the zeros of `LogFile::prefill`, but without writing them), which is what
/// a queue whose consumers keep up does all day: every 1 MiB it retires a write segment and starts
/// one. PostgreSQL recycles its WAL segments the same way. Recovery tells the old records from the
/// new ones by their seqs: a queue's seqs only grow while it runs, and the new segment's name (its
/// first seq) is above every seq the files held (`scan_records`, `parse_acks`).
struct Spare {
    seg: LogFile,
    ack: LogFile,
}

impl Spare {
    /// Bytes of both files on disk (counted in `MsgLog::spares`).
    fn bytes(&self) -> u64 {
        self.seg.disk_len() + self.ack.disk_len()
    }
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
            dirty_segs: SegSet::default(),
            syncing_segs: SegSet::default(),
            def: None,
            has_def: false,
            in_dirty: false,
            removed: false,
            ack_marks: Vec::new(),
            ack_group: Vec::new(),
            spare: None,
        }
    }

    /// The segment that would hold `seq`: the last one starting at or before it.
    fn seg_for(&self, seq: u64) -> Option<u64> {
        self.segs.range(..=seq).next_back().map(|(f, _)| *f)
    }

    fn drop_segment(
        &mut self,
        first: u64,
        dirs: &Mutex<HashSet<PathBuf>>,
        spares: &SpareBudget,
    ) -> Result<Option<Segment>> {
        let Some(mut seg) = self.segs.remove(&first) else {
            return Ok(None);
        };
        if !self.keep_spare(&mut seg, spares) {
            if let Err(e) = seg.remove_files() {
                self.segs.insert(first, seg);
                return Err(e);
            }
        }
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

    /// Keeps a dropped segment's files as the queue's spare if it is an unsealed write segment whose
    /// files are whole, small enough, and within the store's budget for spares: renamed, segment file
    /// first (an `.ack` without its `.seg` is removed at open). `seg`'s files are replaced by
    /// placeholders then. False: the caller removes the files.
    fn keep_spare(&mut self, seg: &mut Segment, spares: &SpareBudget) -> bool {
        if self.spare.is_some() || seg.sealed_len.is_some() || seg.seg.broken || seg.ack.broken {
            return false;
        }
        let bytes = seg.seg.disk_len() + seg.ack.disk_len();
        if bytes > spares.max_each || !spares.take(bytes) {
            return false;
        }
        let (Ok(_), Ok(_)) = (seg.seg.handle(), seg.ack.handle()) else {
            spares.give_back(bytes);
            return false;
        };
        let (sp_seg, sp_ack) = (self.dir.join(SPARE_SEG), self.dir.join(SPARE_ACK));
        if fs::rename(&seg.seg.path, &sp_seg).is_err() {
            spares.give_back(bytes);
            return false;
        }
        if fs::rename(&seg.ack.path, &sp_ack).is_err() {
            // the segment file is the spare's already: it goes, and the caller removes the ack file
            let _ = remove_file_if_exists(&sp_seg);
            spares.give_back(bytes);
            return false;
        }
        let take = |f: &mut LogFile, path: PathBuf| {
            let placeholder = LogFile::existing(PathBuf::new(), f.kind, 0);
            let mut old = std::mem::replace(f, placeholder);
            old.path = path.into();
            // only the handle and the lengths are used again: an idle queue's spare holds no buffer
            old.pending = Vec::new();
            old.head = 0;
            old
        };
        self.spare = Some(Spare {
            seg: take(&mut seg.seg, sp_seg),
            ack: take(&mut seg.ack, sp_ack),
        });
        true
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

    /// Starts writing the definition copy `def` (the encoded `queue.def`) into the queue's
    /// directory; the flusher syncs it with the segments.
    fn write_def(&mut self, def: &[u8], faults: &Faults) -> Result<()> {
        let mut f = LogFile::create(self.dir.join(DEF_FILE), FileKind::Definition, faults)?;
        f.push(def);
        self.def = Some(f);
        self.has_def = true;
        Ok(())
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
    faults: Arc<Faults>,
    queues: RwLock<HashMap<u32, Arc<Mutex<QueueLog>>>>,
    /// The encoded definition copy of every durable queue the store has a record of: written into
    /// the queue's directory when it is created.
    defs: Mutex<HashMap<u32, Arc<Vec<u8>>>>,
    /// Queues with buffered or unsynced data, for the flusher.
    dirty: Mutex<Vec<u32>>,
    /// The flusher's list of the queues it is collecting, swapped with `dirty` each round (so that
    /// neither list is allocated anew per round).
    collecting: Mutex<Vec<u32>>,
    /// Directories where files were created or removed since the last sync.
    dirty_dirs: Mutex<HashSet<PathBuf>>,
    /// Directories of deleted queues (renamed to `<id>.deleted`), removed once a flush round has
    /// made the rename and the record's removal durable.
    trash: Mutex<Vec<PathBuf>>,
    /// Bytes kept in queues' spares (`Spare`), and the limits.
    spares: SpareBudget,
}

/// How much disk the queues' spares (`Spare`) may hold: a drained queue keeps its last write segment's
/// files until its next append, so this bounds what idle queues keep.
pub(crate) struct SpareBudget {
    /// A segment whose files are larger than this is removed, not kept.
    max_each: u64,
    /// All spares together.
    total: u64,
    used: std::sync::atomic::AtomicU64,
}

/// `SpareBudget::total`.
const SPARE_TOTAL: u64 = 64 << 20;

impl SpareBudget {
    pub(crate) fn new(segment_bytes: u64) -> SpareBudget {
        SpareBudget {
            // a retired write segment is 1/8 of a segment and a little more, with its ack file
            max_each: segment_bytes / 4 + (64 << 10),
            total: SPARE_TOTAL,
            used: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn take(&self, n: u64) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.used
            .fetch_update(SeqCst, SeqCst, |u| (u + n <= self.total).then_some(u + n))
            .is_ok()
    }

    fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The most (segment, seq) pairs whose buffers a queue keeps between acks.
const ACK_SCRATCH_KEEP: usize = 1024;

/// A queue's dirty segments: a handful at most, so a vector (kept between rounds) rather than a
/// tree that allocates a node whenever it goes from empty to one.
#[derive(Debug, Default)]
struct SegSet(Vec<u64>);

impl SegSet {
    fn insert(&mut self, first: u64) {
        if !self.0.contains(&first) {
            self.0.push(first);
        }
    }

    fn remove(&mut self, first: &u64) {
        self.0.retain(|f| f != first);
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// The files and directories one flush round syncs, and the directories it may remove after.
#[derive(Default)]
pub(crate) struct SyncBatch {
    pub(crate) files: Vec<SyncItem>,
    pub(crate) dirs: Vec<PathBuf>,
    pub(crate) trash: Vec<PathBuf>,
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

    /// Records queue `rec`'s definition: its copy goes into the queue's directory when that is
    /// created (at its first message), or now if the directory exists.
    pub(crate) fn set_def(&self, rec: &QueueRecord) -> Result<()> {
        let def = Arc::new(encode_def(rec)?);
        self.defs.lock().insert(rec.id, def.clone());
        if let Some(q) = self.get(rec.id) {
            let mut q = q.lock();
            if q.dir_exists && !q.removed {
                q.write_def(&def, &self.faults)?;
                self.dirty_dirs.lock().insert(q.dir.clone());
                self.touch(&mut q);
            }
        }
        Ok(())
    }

    /// Appends records; items of one queue must come in increasing seq order, above every seq
    /// appended before (since open). Returns the bytes buffered.
    pub(crate) fn append(&self, items: &[(u32, u64, MessageParts<'_>)]) -> Result<usize> {
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
                for (_, seq, msg) in &items[i..j] {
                    bytes += self.append_one(&mut q, *seq, msg)?;
                }
                break;
            }
            i = j;
        }
        Ok(bytes)
    }

    fn append_one(&self, q: &mut QueueLog, seq: u64, msg: &MessageParts<'_>) -> Result<usize> {
        if let Some(last) = q.last_appended {
            if seq <= last {
                return Err(StoreError::OutOfOrder {
                    queue_id: q.id,
                    seq,
                    last,
                });
            }
        }
        // Encoded into the write segment's buffer; if that takes the segment past its size, the
        // record moves to a new segment (a record larger than that gets a segment of its own).
        // A seq this far past the segment's last one also starts a new segment: recovery's scan takes two
        // records of one segment that far apart for garbage (`MAX_SEQ_GAP`).
        let mut placed = None;
        let seg = q.write_seg.map(|w| q.segs.get_mut(&w).expect("write segment"));
        if let Some(seg) = seg.filter(|seg| seg.seqs.last().is_none_or(|l| seq - l < MAX_SEQ_GAP)) {
            let n = encode_record_into(&mut seg.seg.pending, seq, msg)?;
            if seg.seqs.n > 0 && seg.seg.len() + footer_len(seg.seqs.runs.len() + 1) > self.segment_bytes {
                let keep = seg.seg.pending.len() - n;
                seg.seg.pending.truncate(keep);
            } else {
                placed = Some(n);
            }
        }
        let n = match placed {
            Some(n) => n,
            None => {
                self.start_segment(q, seq)?;
                let w = q.write_seg.expect("write segment");
                let seg = q.segs.get_mut(&w).expect("write segment");
                encode_record_into(&mut seg.seg.pending, seq, msg)?
            }
        };
        let w = q.write_seg.expect("write segment");
        let seg = q.segs.get_mut(&w).expect("write segment");
        seg.seqs.push(seq);
        seg.live += 1;
        if seg.seg.unwritten() > PENDING_MAX {
            // best effort: on failure the buffer stays and the flusher retries (and reports)
            if let Err(e) = seg.seg.write_out(&self.faults) {
                tracing::warn!(error = %e, "writing out a segment buffer failed");
            }
        }
        q.dirty_segs.insert(w);
        q.last_appended = Some(seq);
        self.touch(q);
        Ok(n)
    }

    /// A fully acked write segment of at least this size is removed (`delete`).
    fn retire_size(&self) -> u64 {
        self.segment_bytes / 8
    }

    /// Seals the write segment (removing it if nothing in it is live) and creates a new one named
    /// `first`. A queue's directory is created with its first segment, and gets its definition
    /// copy then.
    fn start_segment(&self, q: &mut QueueLog, first: u64) -> Result<()> {
        if let Some(w) = q.write_seg {
            if q.segs.get(&w).is_some_and(|s| s.live == 0) {
                q.drop_segment(w, &self.dirty_dirs, &self.spares)?;
            } else {
                q.seal_write_seg();
            }
        }
        if !q.dir_exists {
            fs::create_dir_all(&q.dir).map_err(io_err(&q.dir))?;
            q.dir_exists = true;
            self.dirty_dirs.lock().insert(self.root.clone());
        }
        if !q.has_def {
            let def = self.defs.lock().get(&q.id).cloned();
            if let Some(def) = def {
                q.write_def(&def, &self.faults)?;
                self.dirty_dirs.lock().insert(q.dir.clone());
            }
        }
        let (seg, ack) = match q.spare.take() {
            Some(spare) => self.reuse_spare(&q.dir, spare, first)?,
            None => {
                // the ack file first: a stale one of the same name must not apply to the new records
                let ack = LogFile::create(ack_path(&q.dir, first), FileKind::Ack, &self.faults)?;
                let seg = LogFile::create(seg_path(&q.dir, first), FileKind::Segment, &self.faults)?;
                (seg, ack)
            }
        };
        q.segs.insert(first, Segment::new(seg, ack));
        q.write_seg = Some(first);
        q.dirty_segs.insert(first);
        self.dirty_dirs.lock().insert(q.dir.clone());
        self.touch(q);
        Ok(())
    }

    /// The files of segment `first`, from the queue's spare: renamed to their new names (segment file
    /// first: until the ack file follows, the segment holds only records older than `first`, which
    /// recovery does not take), to be written over from the start. The directory is synced with the
    /// round that makes the first records durable (`start_segment`). If a rename fails the files are
    /// created afresh instead.
    fn reuse_spare(&self, dir: &Path, spare: Spare, first: u64) -> Result<(LogFile, LogFile)> {
        self.spares.give_back(spare.bytes());
        let (spath, apath) = (seg_path(dir, first), ack_path(dir, first));
        let reused = |old: LogFile, path: PathBuf| {
            let mut f = LogFile::existing(path, old.kind, 0);
            f.filled = old.disk_len();
            f.file = old.file;
            // the new name must be durable with the first records
            f.unsynced = true;
            f
        };
        if fs::rename(&spare.seg.path, &spath).is_err() {
            let _ = remove_file_if_exists(&spare.seg.path);
            let _ = remove_file_if_exists(&spare.ack.path);
            let ack = LogFile::create(apath, FileKind::Ack, &self.faults)?;
            let seg = LogFile::create(spath, FileKind::Segment, &self.faults)?;
            return Ok((seg, ack));
        }
        let seg = reused(spare.seg, spath);
        let ack = match fs::rename(&spare.ack.path, &apath) {
            Ok(()) => reused(spare.ack, apath),
            Err(_) => {
                let _ = remove_file_if_exists(&spare.ack.path);
                LogFile::create(apath, FileKind::Ack, &self.faults)?
            }
        };
        Ok((seg, ack))
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
        // (segment, acked seq) pairs, then one segment's seqs at a time; both buffers are the queue's.
        let mut marks = std::mem::take(&mut q.ack_marks);
        let mut group = std::mem::take(&mut q.ack_group);
        marks.clear();
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
            marks.push((first, s));
        }
        // Acks nearly always come in seq order, so their segments do too; otherwise they are grouped by
        // segment (and by seq within one: an ack batch is a set, its order does not matter).
        if !marks.is_sorted_by_key(|m| m.0) {
            marks.sort_unstable();
        }
        // A fully acked write segment goes too once it is not tiny: disk use returns to (almost)
        // nothing when a queue is drained, without a new file per message when a consumer keeps up.
        let retire_write = self.retire_size();
        let mut first_err = None;
        let mut i = 0;
        while i < marks.len() {
            let first = marks[i].0;
            let run = marks[i..].iter().take_while(|m| m.0 == first).count();
            group.clear();
            group.extend(marks[i..i + run].iter().map(|m| m.1));
            i += run;
            let is_write = q.write_seg == Some(first);
            let seg = q.segs.get_mut(&first).expect("segment");
            let done = seg.live == 0 && (!is_write || seg.seg.len() >= retire_write);
            if done {
                let last = seg.seqs.last().expect("non-empty");
                match q.drop_segment(first, &self.dirty_dirs, &self.spares) {
                    Ok(Some(s)) if s.has_states => out.state_ranges.push((first, last)),
                    Ok(_) => {}
                    // the acks are set in memory; the file goes at the next open (or the next ack)
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            } else {
                encode_ack_batch(&group, &mut seg.ack.pending);
                if seg.ack.unwritten() > PENDING_MAX {
                    if let Err(e) = seg.ack.write_out(&self.faults) {
                        tracing::warn!(error = %e, "writing out an ack buffer failed");
                    }
                }
                q.dirty_segs.insert(first);
                self.touch(&mut q);
            }
        }
        // Kept for the next ack, unless one large call grew them (the broker acks in chunks of 128).
        if marks.capacity() <= ACK_SCRATCH_KEEP {
            q.ack_marks = marks;
            q.ack_group = group;
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(out),
        }
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

    /// Up to `limit` live messages with seq >= `from`, in order. A record that does not check out
    /// (damaged on disk) is reported, skipped and acked; it is never returned.
    pub(crate) fn read(&self, qid: u32, from: u64, limit: usize) -> Result<Vec<(u64, StoredMessage)>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let Some(q) = self.get(qid) else {
            return Ok(out);
        };
        let mut guard = q.lock();
        let q = &mut *guard;
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
                seg.seg.write_out(&self.faults)?;
                let end = seg.data_end();
                let file = seg.seg.handle()?;
                'chunks: while cur.offset < end {
                    let want = (end - cur.offset).min(READ_CHUNK as u64) as usize;
                    buf.resize(want, 0);
                    file.read_exact_at(&mut buf, cur.offset)
                        .map_err(io_err(&seg.seg.path))?;
                    let mut pos = 0;
                    while pos < buf.len() {
                        let parsed = match parse_record(&buf[pos..]) {
                            Ok(Some((total, seq))) if seg.seqs.rank(seq) == Some(cur.rank) => {
                                Some((total, seq))
                            }
                            Ok(_) => None,
                            Err(needed) if pos == 0 && cur.offset + needed as u64 <= end => {
                                // one record larger than the chunk
                                buf.resize(needed, 0);
                                file.read_exact_at(&mut buf, cur.offset)
                                    .map_err(io_err(&seg.seg.path))?;
                                continue;
                            }
                            Err(_) if pos > 0 => break,
                            Err(_) => None,
                        };
                        let Some((total, seq)) = parsed else {
                            cur.offset += pos as u64;
                            self.skip_damaged(q.id, seg, &file, &mut cur, end)?;
                            q.dirty_segs.insert(cur.seg);
                            continue 'chunks;
                        };
                        if seq >= from && !seg.acked.get(cur.rank) {
                            let payload = Bytes::copy_from_slice(&buf[pos + RECORD_HEADER..pos + total]);
                            match codec::decode_message(payload) {
                                Ok(m) => out.push((seq, m)),
                                Err(e) => {
                                    tracing::error!(queue_id = q.id, seq, path = %seg.seg.path.display(), error = %e,
                                        "a stored message does not decode; skipped and removed");
                                    seg.give_up(cur.rank, cur.rank + 1);
                                    q.dirty_segs.insert(cur.seg);
                                }
                            }
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
            use std::ops::Bound::{Excluded, Unbounded};
            match q.segs.range((Excluded(cur.seg), Unbounded)).next() {
                Some((&next, _)) => {
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
        if !q.dirty_segs.is_empty() {
            self.touch(q);
        }
        Ok(out)
    }

    /// The record at `cur` is damaged: finds the next record of this segment after it, gives up
    /// (acks) the records in between and moves the cursor there (or to the end).
    fn skip_damaged(
        &self,
        qid: u32,
        seg: &mut Segment,
        file: &std::fs::File,
        cur: &mut Cursor,
        end: u64,
    ) -> Result<()> {
        let mut rest = vec![0u8; (end - cur.offset) as usize];
        file.read_exact_at(&mut rest, cur.offset)
            .map_err(io_err(&seg.seg.path))?;
        let (prev, rank0) = (cur.prev, cur.rank);
        let seqs = &seg.seqs;
        let next = find_record(&rest, 0, |s| {
            prev.is_none_or(|p| s > p) && seqs.rank(s).is_some_and(|r| r >= rank0)
        });
        let (next_off, next_rank) = match next {
            Some(p) => {
                let seq = crate::be::u64_at(&rest, p + 8);
                (cur.offset + p as u64, seg.seqs.rank(seq).expect("accepted"))
            }
            None => (end, seg.seqs.n),
        };
        let lost = seg.give_up(cur.rank, next_rank);
        tracing::error!(
            queue_id = qid,
            path = %seg.seg.path.display(),
            offset = cur.offset,
            bytes = next_off - cur.offset,
            messages = lost,
            "damaged records in a segment: skipped, never delivered (the messages in them are lost)"
        );
        cur.offset = next_off;
        cur.rank = next_rank;
        Ok(())
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
            q.drop_segment(f, &self.dirty_dirs, &self.spares)?;
        }
        q.cursor = None;
        Ok(n)
    }

    /// Removes a queue: its directory is renamed to `<id>.deleted` now (so that its definition
    /// copy can no longer bring it back) and removed after the next successful flush round.
    /// Returns the number of live messages removed. On error nothing changed.
    pub(crate) fn remove_queue(&self, qid: u32) -> Result<u64> {
        let Some(q) = self.get(qid) else {
            self.defs.lock().remove(&qid);
            return Ok(0);
        };
        let mut q = q.lock();
        if q.removed {
            return Ok(0);
        }
        if q.dir_exists {
            let trash = self.root.join(format!("{}.deleted", queue_dir_name(qid)));
            match fs::rename(&q.dir, &trash) {
                Ok(()) => self.trash.lock().push(trash),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&q.dir)(e)),
            }
            self.dirty_dirs.lock().insert(self.root.clone());
        }
        // Under the queue's lock: an appender waiting for it sees `removed` and starts afresh.
        self.queues.write().remove(&qid);
        self.defs.lock().remove(&qid);
        q.removed = true;
        if let Some(spare) = q.spare.take() {
            // its files went with the directory
            self.spares.give_back(spare.bytes());
        }
        let n = q.live();
        q.segs.clear();
        q.dirty_segs.clear();
        q.def = None;
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

    /// Repairs files whose sync failed, writes out every buffer and adds the files (and
    /// directories) that need a sync to `batch`. Everything appended or acked before this call is
    /// covered. On an error the rest is still collected (so it progresses); the first error is
    /// returned and what it concerned stays dirty for the next round.
    pub(crate) fn collect_for_sync(&self, batch: &mut SyncBatch) -> Result<()> {
        let mut ids = std::mem::take(&mut *self.collecting.lock());
        std::mem::swap(&mut ids, &mut *self.dirty.lock());
        let mut first_err = None;
        for &id in &ids {
            let Some(q) = self.get(id) else { continue };
            let mut guard = q.lock();
            let q = &mut *guard;
            if q.removed {
                continue;
            }
            q.in_dirty = false;
            let mut keep = false;
            if let Some(def) = &mut q.def {
                let r = def.write_out_or_repair(&self.faults);
                match r {
                    Ok(()) => def.take_sync(q.id, None, &mut batch.files),
                    Err(e) => {
                        first_err.get_or_insert(e);
                        keep = true;
                    }
                }
            }
            // The dirty set moves into `syncing_segs` (whose buffer, empty, becomes the new dirty set),
            // in seg order as the files are synced; a failed segment goes back into the dirty set.
            std::mem::swap(&mut q.dirty_segs, &mut q.syncing_segs);
            q.syncing_segs.0.sort_unstable();
            for i in 0..q.syncing_segs.0.len() {
                let first = q.syncing_segs.0[i];
                let Some(seg) = q.segs.get_mut(&first) else {
                    continue;
                };
                let mut ok = true;
                let sealed = seg.sealed_len.is_some();
                // Only a segment twice `retire_size` is prefilled (it is filling faster than its messages
                // are acked): one that consumers keep acking goes at that size (`delete`), and zeros
                // written for it would be thrown away with it. Judged on its length once this round
                // wrote it out, so that it does not depend on how the appends fell into rounds.
                let grown = seg.seg.len() >= 2 * self.retire_size();
                for (f, ahead) in [(&mut seg.seg, SEG_PREFILL), (&mut seg.ack, ACK_PREFILL)] {
                    let r = f.write_out_or_repair(&self.faults);
                    let r = r.and_then(|()| match (f.kind, sealed) {
                        _ if !grown => Ok(()),
                        // a sealed segment keeps the zeros between its records and its footer
                        (FileKind::Segment, true) => Ok(()),
                        (FileKind::Segment, false) => {
                            f.prefill(ahead.0, ahead.1, self.segment_bytes, &self.faults)
                        }
                        _ => f.prefill(ahead.0, ahead.1, u64::MAX, &self.faults),
                    });
                    match r {
                        Ok(()) => f.take_sync(q.id, Some(first), &mut batch.files),
                        Err(e) => {
                            first_err.get_or_insert(e);
                            ok = false;
                        }
                    }
                }
                if !ok {
                    q.dirty_segs.insert(first);
                    keep = true;
                }
            }
            q.syncing_segs.clear();
            if keep || q.def.as_ref().is_some_and(|d| d.broken) {
                self.touch(q);
            }
        }
        ids.clear();
        *self.collecting.lock() = ids;
        batch.dirs.extend(self.dirty_dirs.lock().drain());
        batch.trash.append(&mut self.trash.lock());
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The outcome of a round's file syncs: a file a successful sync covered frees those bytes
    /// from its buffer; a file whose sync failed is marked broken, to be rewritten from memory by
    /// the next round (`collect_for_sync`).
    pub(crate) fn apply_sync_results(&self, results: impl Iterator<Item = (SyncItem, bool)>) {
        for (item, ok) in results {
            let Some(q) = self.get(item.qid) else { continue };
            let mut guard = q.lock();
            let q = &mut *guard;
            if q.removed {
                continue;
            }
            let f = match item.seg {
                None => q.def.as_mut(),
                Some(first) => q.segs.get_mut(&first).and_then(|s| {
                    [&mut s.seg, &mut s.ack]
                        .into_iter()
                        .find(|f| f.id == item.file_id)
                }),
            };
            let Some(f) = f.filter(|f| f.id == item.file_id) else {
                continue;
            };
            if ok {
                f.synced_to(item.upto);
            } else {
                f.broken = true;
            }
            match item.seg {
                None if q.def.as_ref().is_some_and(LogFile::is_clean) => q.def = None,
                None => self.touch(q),
                Some(first) => {
                    if !ok {
                        q.dirty_segs.insert(first);
                        self.touch(q);
                    }
                }
            }
        }
    }

    /// A round failed: the directories it would have removed wait for the next one.
    pub(crate) fn keep_trash(&self, mut trash: Vec<PathBuf>) {
        self.trash.lock().append(&mut trash);
    }

    /// A round made the deletions durable: the renamed directories go.
    pub(crate) fn empty_trash(&self, trash: Vec<PathBuf>) {
        for t in trash {
            match fs::remove_dir_all(&t) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %t.display(), error = %e, "removing a deleted queue's directory failed; retried later");
                    self.trash.lock().push(t);
                }
            }
        }
    }
}
