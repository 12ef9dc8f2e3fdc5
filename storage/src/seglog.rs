//! The message log: each queue's messages in append-only segment files, acks in a side file per
//! segment, a segment deleted as soon as all of its messages are acked (LavinMQ's model).
//! Layout, record format and recovery: docs/storage-format.md.
//!
//! Memory: per segment, the runs of consecutive seqs it holds and one ack bit per record; nothing
//! per message. Writes go to an in-process buffer per file; the store's flusher writes the buffers
//! out and `sync_data`s the files (`collect_for_sync`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

use crate::{be, codec, io_err, Result, StoreError, StoredMessage};

/// `[len u32 BE][crc32 u32 BE][seq u64 BE]`, then the payload; `len` counts seq + payload and the
/// crc covers them.
const RECORD_HEADER: usize = 16;
/// An ack batch: `[count u32 BE][crc32 u32 BE of the seqs][count × seq u64 BE]`.
const ACK_HEADER: usize = 8;
/// A file's write buffer is written out at once (no sync) when it grows beyond this.
const PENDING_MAX: usize = 1 << 20;
/// Reads fetch this much of a segment at a time (more if one record is larger).
const READ_CHUNK: usize = 256 << 10;
/// A sealed segment ends with a footer describing its records, so that `open` need not read it:
/// `[n_runs × (start u64 BE, len u32 BE)][n_runs u32 BE][records u32 BE][data_len u64 BE]
///  [crc32 u32 BE of all of the footer before it][FOOTER_MAGIC]`.
const FOOTER_MAGIC: &[u8; 8] = b"MRSEGEND";
const FOOTER_TAIL: usize = 28;
const FOOTER_RUN: usize = 12;

fn queue_dir_name(id: u32) -> String {
    format!("{id:08x}")
}

fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:016x}.seg"))
}

fn ack_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:016x}.ack"))
}

/// `name` = `<digits hex digits>.<ext>`.
fn parse_hex_name(name: &str, digits: usize, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != digits || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

fn remove_file_if_exists(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

pub(crate) fn encode_record(seq: u64, msg: &StoredMessage) -> Result<Vec<u8>> {
    let mut v = Vec::with_capacity(RECORD_HEADER + 64 + msg.properties.len() + msg.body.len());
    v.extend_from_slice(&[0u8; 8]);
    v.extend_from_slice(&seq.to_be_bytes());
    codec::encode_message_into(&mut v, msg)?;
    let len = u32::try_from(v.len() - 8)
        .map_err(|_| StoreError::Corrupt("message record longer than 4 GiB".into()))?;
    let crc = crc32fast::hash(&v[8..]);
    v[0..4].copy_from_slice(&len.to_be_bytes());
    v[4..8].copy_from_slice(&crc.to_be_bytes());
    Ok(v)
}

/// A record at the start of `buf`: `Some((total length, seq))` if its header and crc check out,
/// `None` if it is torn or garbage. `Err(needed)` if `buf` holds only part of it.
fn parse_record(buf: &[u8]) -> Result<Option<(usize, u64)>, usize> {
    if buf.len() < RECORD_HEADER {
        return Err(RECORD_HEADER);
    }
    let len = be::u32_at(buf, 0) as usize;
    if len < 8 + 4 {
        return Ok(None); // seq + at least the message header length
    }
    let total = 8 + len;
    if buf.len() < total {
        return Err(total);
    }
    let crc = be::u32_at(buf, 4);
    if crc32fast::hash(&buf[8..total]) != crc {
        return Ok(None);
    }
    let seq = be::u64_at(buf, 8);
    Ok(Some((total, seq)))
}

fn encode_footer(seqs: &Seqs, data_len: u64, out: &mut Vec<u8>) {
    let start = out.len();
    for r in &seqs.runs {
        out.extend_from_slice(&r.start.to_be_bytes());
        out.extend_from_slice(&r.len.to_be_bytes());
    }
    out.extend_from_slice(&(seqs.runs.len() as u32).to_be_bytes());
    out.extend_from_slice(&seqs.n.to_be_bytes());
    out.extend_from_slice(&data_len.to_be_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(FOOTER_MAGIC);
}

/// A segment's footer, if it has a valid one: its seqs and the length of its records.
fn read_footer(f: &File, file_len: u64) -> io::Result<Option<(Seqs, u64)>> {
    if file_len < FOOTER_TAIL as u64 {
        return Ok(None);
    }
    let mut tail = [0u8; FOOTER_TAIL];
    f.read_exact_at(&mut tail, file_len - FOOTER_TAIL as u64)?;
    if &tail[20..28] != FOOTER_MAGIC {
        return Ok(None);
    }
    let n_runs = be::u32_at(&tail, 0) as u64;
    let n = be::u32_at(&tail, 4);
    let data_len = be::u64_at(&tail, 8);
    let body_len = n_runs * FOOTER_RUN as u64;
    if data_len.checked_add(body_len + FOOTER_TAIL as u64) != Some(file_len) {
        return Ok(None);
    }
    let mut body = vec![0u8; body_len as usize];
    f.read_exact_at(&mut body, data_len)?;
    let mut h = crc32fast::Hasher::new();
    h.update(&body);
    h.update(&tail[0..16]);
    if h.finalize() != be::u32_at(&tail, 16) {
        return Ok(None);
    }
    let mut seqs = Seqs::default();
    for c in body.chunks_exact(FOOTER_RUN) {
        let start = be::u64_at(c, 0);
        let len = be::u32_at(c, 8);
        let ordered = seqs.last().is_none_or(|l| start > l);
        if len == 0 || !ordered || start.checked_add(len as u64 - 1).is_none() {
            return Ok(None);
        }
        seqs.runs.push(Run {
            start,
            len,
            rank0: seqs.n,
        });
        seqs.n = match seqs.n.checked_add(len) {
            Some(n) => n,
            None => return Ok(None),
        };
    }
    Ok((seqs.n == n).then_some((seqs, data_len)))
}

/// The valid records at the start of a segment's bytes, as (seq, end offset), and the length of
/// that valid prefix. Records must have seqs in `first..next_first`, strictly increasing.
fn scan_records(buf: &[u8], first: u64, next_first: Option<u64>) -> (Vec<(u64, u64)>, usize) {
    let mut recs = Vec::new();
    let mut pos = 0usize;
    let mut prev: Option<u64> = None;
    while pos < buf.len() {
        let Ok(Some((total, seq))) = parse_record(&buf[pos..]) else {
            break;
        };
        let in_order = seq >= first && prev.is_none_or(|p| seq > p) && next_first.is_none_or(|n| seq < n);
        if !in_order {
            break;
        }
        pos += total;
        recs.push((seq, pos as u64));
        prev = Some(seq);
    }
    (recs, pos)
}

fn footer_len(runs: usize) -> u64 {
    (runs * FOOTER_RUN + FOOTER_TAIL) as u64
}

fn encode_ack_batch(seqs: &[u64], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(seqs.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0u8; 4]);
    for s in seqs {
        out.extend_from_slice(&s.to_be_bytes());
    }
    let crc = crc32fast::hash(&out[start + ACK_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// The acked seqs of an ack file's valid batches, and the length of its valid prefix.
fn parse_acks(buf: &[u8]) -> (Vec<u64>, usize) {
    let mut seqs = Vec::new();
    let mut pos = 0;
    while buf.len() - pos >= ACK_HEADER {
        let n = be::u32_at(buf, pos) as usize;
        let crc = be::u32_at(buf, pos + 4);
        let end = match n.checked_mul(8).and_then(|b| b.checked_add(pos + ACK_HEADER)) {
            Some(end) if n > 0 && end <= buf.len() => end,
            _ => break,
        };
        if crc32fast::hash(&buf[pos + ACK_HEADER..end]) != crc {
            break;
        }
        seqs.extend(
            buf[pos + ACK_HEADER..end]
                .chunks_exact(8)
                .map(|c| be::u64_at(c, 0)),
        );
        pos = end;
    }
    (seqs, pos)
}

// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Run {
    start: u64,
    len: u32,
    /// Rank (record index in the segment) of `start`.
    rank0: u32,
}

impl Run {
    fn last(&self) -> u64 {
        self.start + (self.len as u64 - 1)
    }
}

/// The seqs a segment holds, as runs of consecutive seqs (one run when a queue's messages are all
/// persistent). A record's rank is its index in the segment.
#[derive(Debug, Default)]
struct Seqs {
    runs: Vec<Run>,
    n: u32,
}

impl Seqs {
    fn last(&self) -> Option<u64> {
        self.runs.last().map(Run::last)
    }

    fn push(&mut self, seq: u64) {
        match self.runs.last_mut() {
            Some(r) if r.last().checked_add(1) == Some(seq) => r.len += 1,
            _ => self.runs.push(Run {
                start: seq,
                len: 1,
                rank0: self.n,
            }),
        }
        self.n += 1;
    }

    fn rank(&self, seq: u64) -> Option<u32> {
        let i = self.runs.partition_point(|r| r.start <= seq);
        let r = self.runs.get(i.checked_sub(1)?)?;
        let off = seq - r.start;
        (off < r.len as u64).then(|| r.rank0 + off as u32)
    }

    fn seq_at(&self, rank: u32) -> u64 {
        let i = self.runs.partition_point(|r| r.rank0 <= rank) - 1;
        let r = self.runs[i];
        r.start + (rank - r.rank0) as u64
    }

    /// Keep the first `n` records.
    fn truncate(&mut self, n: u32) {
        while let Some(r) = self.runs.last_mut() {
            if r.rank0 >= n {
                self.runs.pop();
            } else {
                r.len = r.len.min(n - r.rank0);
                break;
            }
        }
        self.n = self.n.min(n);
    }
}

/// One bit per record (by rank): acked. Words past the end are zero.
#[derive(Debug, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    }

    fn set(&mut self, i: u32) {
        let w = i as usize / 64;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }

    fn truncate(&mut self, n: u32) {
        self.0.truncate((n as usize).div_ceil(64));
        if !n.is_multiple_of(64) {
            if let Some(w) = self.0.get_mut(n as usize / 64) {
                *w &= (1u64 << (n % 64)) - 1;
            }
        }
    }

    /// The first clear bit below `n`.
    fn first_clear(&self, n: u32) -> Option<u32> {
        for (wi, &w) in self.0.iter().enumerate() {
            if w != u64::MAX {
                let i = wi as u64 * 64 + (!w).trailing_zeros() as u64;
                return (i < n as u64).then_some(i as u32);
            }
        }
        let i = self.0.len() as u64 * 64;
        (i < n as u64).then_some(i as u32)
    }

    /// The last clear bit below `n`.
    fn last_clear(&self, n: u32) -> Option<u32> {
        let mut i = n.checked_sub(1)?;
        loop {
            let wi = i as usize / 64;
            let w = self.0.get(wi).copied().unwrap_or(0);
            let bit = i % 64;
            let mask = if bit == 63 {
                u64::MAX
            } else {
                (1u64 << (bit + 1)) - 1
            };
            let clear = !w & mask;
            if clear != 0 {
                return Some(wi as u32 * 64 + 63 - clear.leading_zeros());
            }
            if wi == 0 {
                return None;
            }
            i = wi as u32 * 64 - 1;
        }
    }
}

/// An append-only file with an in-process write buffer.
struct LogFile {
    path: PathBuf,
    /// Opened on first use (reads, writes, syncs).
    file: Option<Arc<File>>,
    /// Bytes in the file.
    written: u64,
    /// Bytes not yet written to the file.
    pending: Vec<u8>,
    /// Written since the last `take_sync`.
    unsynced: bool,
    /// Sealed: once the buffer (the footer) is written out, free it and close the handle, so a long
    /// queue costs no memory or file descriptor per finished segment.
    release: bool,
}

impl LogFile {
    fn existing(path: PathBuf, len: u64) -> LogFile {
        LogFile {
            path,
            file: None,
            written: len,
            pending: Vec::new(),
            unsynced: false,
            release: false,
        }
    }

    /// Creates (or truncates) the file.
    fn create(path: PathBuf) -> Result<LogFile> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok(LogFile {
            path,
            file: Some(Arc::new(f)),
            written: 0,
            pending: Vec::new(),
            // the truncation (of a stale file of the same name) must be durable too
            unsynced: true,
            release: false,
        })
    }

    fn handle(&mut self) -> Result<Arc<File>> {
        if let Some(f) = &self.file {
            return Ok(f.clone());
        }
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.path)
            .map_err(io_err(&self.path))?;
        let f = Arc::new(f);
        self.file = Some(f.clone());
        Ok(f)
    }

    fn len(&self) -> u64 {
        self.written + self.pending.len() as u64
    }

    /// Positional write of the buffer at the file's end: a retry after an error rewrites the same
    /// range.
    fn write_out(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let f = self.handle()?;
        f.write_all_at(&self.pending, self.written)
            .map_err(io_err(&self.path))?;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        if self.release {
            self.pending = Vec::new();
        } else if self.pending.capacity() > PENDING_MAX {
            self.pending.shrink_to(PENDING_MAX);
        }
        self.unsynced = true;
        Ok(())
    }

    fn take_sync(&mut self, out: &mut Vec<(PathBuf, Arc<File>)>) {
        if self.unsynced {
            if let Some(f) = &self.file {
                out.push((self.path.clone(), f.clone()));
            }
            self.unsynced = false;
        }
        if self.release && self.pending.is_empty() {
            // The sync list holds its own handle; reads reopen the file when needed.
            self.file = None;
        }
    }
}

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
    /// Loads the index of every queue directory under `root`. Directories of queue ids not in
    /// `known` are removed. See docs/storage-format.md, "Recovery".
    pub(crate) fn open(root: &Path, segment_bytes: u64, known: &HashSet<u32>) -> Result<(MsgLog, Recovery)> {
        fs::create_dir_all(root).map_err(io_err(root))?;
        let log = MsgLog {
            root: root.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            queues: RwLock::new(HashMap::new()),
            dirty: Mutex::new(Vec::new()),
            dirty_dirs: Mutex::new(HashSet::new()),
        };
        let mut rec = Recovery {
            orphan_queues: Vec::new(),
            truncated_files: 0,
            scanned_segments: 0,
        };
        let mut buf = Vec::new();
        let mut changed_root = false;
        let mut entries: Vec<(u32, PathBuf)> = Vec::new();
        for e in fs::read_dir(root).map_err(io_err(root))? {
            let e = e.map_err(io_err(root))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            let id = (name.len() == 8 && name.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u32::from_str_radix(&name, 16).ok())
                .flatten();
            match id {
                Some(id) if e.path().is_dir() => entries.push((id, e.path())),
                _ => {
                    tracing::warn!(path = %e.path().display(), "ignoring unexpected entry in the message directory")
                }
            }
        }
        entries.sort();
        for (id, path) in entries {
            if !known.contains(&id) {
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
                changed_root = true;
                rec.orphan_queues.push(id);
                continue;
            }
            let mut q = QueueLog::new(id, root);
            q.dir_exists = true;
            let changed = log.load_queue(&mut q, &mut buf, &mut rec)?;
            if q.segs.is_empty() {
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
                changed_root = true;
                q.dir_exists = false;
            } else if changed {
                sync_dir(&path)?;
            }
            log.queues.write().insert(id, Arc::new(Mutex::new(q)));
        }
        if changed_root {
            sync_dir(root)?;
        }
        Ok((log, rec))
    }

    /// Reads one queue's segments and acks. Returns whether files were changed.
    fn load_queue(&self, q: &mut QueueLog, buf: &mut Vec<u8>, rec: &mut Recovery) -> Result<bool> {
        let mut segs = BTreeSet::new();
        let mut acks = BTreeSet::new();
        for e in fs::read_dir(&q.dir).map_err(io_err(&q.dir))? {
            let e = e.map_err(io_err(&q.dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(f) = parse_hex_name(&name, 16, "seg") {
                segs.insert(f);
            } else if let Some(f) = parse_hex_name(&name, 16, "ack") {
                acks.insert(f);
            } else {
                tracing::warn!(path = %e.path().display(), "ignoring unexpected file in a queue directory");
            }
        }
        let mut changed = false;
        for f in acks.difference(&segs) {
            remove_file_if_exists(&ack_path(&q.dir, *f))?;
            changed = true;
        }
        let firsts: Vec<u64> = segs.into_iter().collect();
        for (i, &first) in firsts.iter().enumerate() {
            let next_first = firsts.get(i + 1).copied();
            // acks
            let apath = ack_path(&q.dir, first);
            let (acked_seqs, ack_len) = match fs::read(&apath) {
                Ok(b) => {
                    let (seqs, valid) = parse_acks(&b);
                    if valid < b.len() {
                        tracing::warn!(path = %apath.display(), valid, len = b.len(), "truncating a torn ack file");
                        truncate_file(&apath, valid as u64)?;
                        rec.truncated_files += 1;
                        changed = true;
                    }
                    (seqs, valid as u64)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), 0),
                Err(e) => return Err(io_err(&apath)(e)),
            };
            // records: from the footer, else by reading the segment
            let spath = seg_path(&q.dir, first);
            let f = File::open(&spath).map_err(io_err(&spath))?;
            let file_len = f.metadata().map_err(io_err(&spath))?.len();
            let footer = read_footer(&f, file_len)
                .map_err(io_err(&spath))?
                .filter(|(s, _)| {
                    s.runs.first().is_some_and(|r| r.start >= first)
                        && next_first.is_none_or(|n| s.last().is_some_and(|l| l < n))
                });
            let mut seg = Segment::new(
                LogFile::existing(spath.clone(), file_len),
                LogFile::existing(apath, ack_len),
            );
            match footer {
                Some((seqs, data_len)) => {
                    seg.seqs = seqs;
                    seg.sealed_len = Some(data_len);
                }
                None => {
                    rec.scanned_segments += 1;
                    buf.clear();
                    io::Read::read_to_end(&mut &f, buf).map_err(io_err(&spath))?;
                    let (recs, valid) = scan_records(buf, first, next_first);
                    if (valid as u64) < file_len {
                        tracing::warn!(path = %spath.display(), valid, len = file_len, "truncating a torn segment tail");
                        truncate_file(&spath, valid as u64)?;
                        rec.truncated_files += 1;
                        changed = true;
                    }
                    seg.seg.written = valid as u64;
                    for (s, _) in recs {
                        seg.seqs.push(s);
                    }
                }
            }
            for s in acked_seqs {
                if let Some(r) = seg.seqs.rank(s) {
                    seg.acked.set(r);
                }
            }
            seg.live = (0..seg.seqs.n).filter(|r| !seg.acked.get(*r)).count() as u32;
            q.segs.insert(first, seg);
        }
        // Fully acked segments go (none is being written to). The acked tail of the last segment
        // with live messages is cut off, so that the seqs after the last live message (which the
        // broker hands out again after a restart) are in no file.
        let empty: Vec<u64> = q
            .segs
            .iter()
            .filter(|(_, s)| s.live == 0)
            .map(|(f, _)| *f)
            .collect();
        for f in empty {
            if let Some(s) = q.segs.remove(&f) {
                s.remove_files()?;
                changed = true;
            }
        }
        if let Some((&first, seg)) = q.segs.iter_mut().next_back() {
            let last_rank = seg.acked.last_clear(seg.seqs.n).expect("live segment");
            if last_rank + 1 < seg.seqs.n {
                let end = seg.data_end();
                buf.resize(end as usize, 0);
                let f = seg.seg.handle()?;
                f.read_exact_at(buf, 0).map_err(io_err(&seg.seg.path))?;
                let (recs, _) = scan_records(buf, first, None);
                let cut = recs
                    .get(last_rank as usize)
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "{} is shorter than its footer says",
                            seg.seg.path.display()
                        ))
                    })?
                    .1;
                truncate_file(&seg.seg.path, cut)?;
                seg.seg.written = cut;
                seg.sealed_len = None;
                seg.seqs.truncate(last_rank + 1);
                seg.acked.truncate(last_rank + 1);
                changed = true;
            }
            q.last_appended = seg.seqs.last();
        }
        // Segments read whole get their footer now, so that the next open need not read them.
        let unsealed: Vec<u64> = q
            .segs
            .iter()
            .filter(|(_, s)| s.sealed_len.is_none())
            .map(|(f, _)| *f)
            .collect();
        for f in unsealed {
            q.segs.get_mut(&f).expect("segment").seal();
            q.dirty_segs.insert(f);
            self.touch(q);
        }
        if buf.capacity() > 2 * READ_CHUNK {
            *buf = Vec::new();
        }
        Ok(changed)
    }

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

fn truncate_file(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

pub(crate) fn sync_dir(path: &Path) -> Result<()> {
    match File::open(path).and_then(|f| f.sync_all()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}
