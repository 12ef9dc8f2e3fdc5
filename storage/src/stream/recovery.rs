//! Opening the streams of a data directory: each segment's index is read and checked, the records
//! after its last valid entry are read and checked (a chunk, or the whole segment if its index was
//! lost), a torn tail is cut (`ftruncate` + `fsync`), missing index entries are written again.
//! A stream directory without a queue record is moved to `lost+found`, never deleted.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::format::*;
use super::{Seg, Stream, StreamLog, CHUNK_MAX, KEEP_SYNCED};
use crate::fault::{Faults, FileKind};
use crate::seglog::{parse_hex_name, sync_dir, write_zeros, LogFile};
use crate::{io_err, QueueRecord, Result};

/// Blocks read while checking a segment's records at open.
const SCAN_BLOCK: usize = 1 << 20;

/// What opening the streams found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamRecovery {
    pub(crate) streams: usize,
    pub(crate) torn_files: usize,
    pub(crate) torn_bytes: u64,
    pub(crate) moved_to_lost: usize,
}

impl StreamLog {
    pub(crate) fn open(
        root: &Path,
        known: &HashMap<u32, QueueRecord>,
        lost: &Path,
        faults: Arc<Faults>,
    ) -> Result<(StreamLog, StreamRecovery)> {
        let mut rec = StreamRecovery::default();
        let log = StreamLog {
            root: root.to_path_buf(),
            faults,
            streams: RwLock::new(HashMap::new()),
            dirty: Mutex::new(Vec::new()),
            dirty_dirs: Mutex::new(Default::default()),
        };
        if !root.exists() {
            fs::create_dir_all(root).map_err(io_err(root))?;
            if let Some(p) = root.parent() {
                sync_dir(p, &log.faults)?;
            }
            return Ok((log, rec));
        }
        let mut streams = HashMap::new();
        for entry in fs::read_dir(root).map_err(io_err(root))? {
            let entry = entry.map_err(io_err(root))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Some(id) = u32::from_str_radix(&name, 16).ok().filter(|_| name.len() == 8) else {
                continue;
            };
            let path = entry.path();
            if !known.contains_key(&id) {
                let to = crate::seglog::move_aside(&path, "stream", id, lost, &log.faults)?;
                tracing::error!(stream = id, moved_to = %to.display(),
                    "a stream directory without a queue record was moved to lost+found");
                rec.moved_to_lost += 1;
                continue;
            }
            let s = log.open_stream(id, path, &mut rec)?;
            streams.insert(id, Arc::new(Mutex::new(s)));
            rec.streams += 1;
        }
        if rec.torn_files > 0 {
            tracing::warn!(
                files = rec.torn_files,
                bytes = rec.torn_bytes,
                "stream segments: torn tails cut"
            );
        }
        *log.streams.write() = streams;
        let ids: Vec<u32> = log.streams.read().keys().copied().collect();
        for id in ids {
            if let Some(s) = log.get(id) {
                let mut s = s.lock();
                if !s.dirty_segs.is_empty() {
                    log.touch(&mut s);
                }
            }
        }
        Ok((log, rec))
    }

    fn open_stream(&self, id: u32, dir: PathBuf, rec: &mut StreamRecovery) -> Result<Stream> {
        let mut firsts = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(f) = parse_hex_name(&name, 16, "seg") {
                firsts.push(f);
            } else if let Some(f) = parse_hex_name(&name, 16, "idx") {
                if !seg_path(&dir, f).exists() {
                    let p = idx_path(&dir, f);
                    fs::remove_file(&p).map_err(io_err(&p))?;
                }
            }
        }
        firsts.sort_unstable();
        let mut s = Stream::new(id, &self.root);
        s.dir = dir.clone();
        s.dir_exists = true;
        let mut segs = BTreeMap::new();
        let n = firsts.len();
        for (i, &first) in firsts.iter().enumerate() {
            let is_last = i + 1 == n;
            let (seg, entries, rebuilt) = self.open_segment(&dir, first, rec)?;
            if seg.last.is_none() && !is_last {
                seg.remove_files()?;
                continue;
            }
            if let Some(last) = seg.last {
                s.next_offset = s.next_offset.max(last + 1);
                s.last_ts = s.last_ts.max(seg.last_ts);
                if let Some(e) = entries.last() {
                    s.last_chunk = Some((first, *e));
                }
            } else {
                s.next_offset = s.next_offset.max(first);
            }
            if rebuilt {
                s.dirty_segs.insert(first);
            }
            segs.insert(first, seg);
        }
        let write = segs.keys().next_back().copied();
        for (k, seg) in segs.iter_mut() {
            if Some(*k) != write {
                seg.data.release = true;
                seg.idx.release = true;
            }
        }
        s.segs = segs;
        Ok(s)
    }

    /// One segment: its checked index, its records after the last entry checked, its torn tail
    /// cut. Returns the segment, its index entries and whether entries were added (to be written).
    fn open_segment(
        &self,
        dir: &Path,
        first: u64,
        rec: &mut StreamRecovery,
    ) -> Result<(Seg, Vec<IdxEntry>, bool)> {
        let sp = seg_path(dir, first);
        let ip = idx_path(dir, first);
        let data = File::open(&sp).map_err(io_err(&sp))?;
        let data_len = data.metadata().map_err(io_err(&sp))?.len();
        let idx_bytes = fs::read(&ip).unwrap_or_default();
        let mut entries: Vec<IdxEntry> = parse_idx(&idx_bytes, data_len)
            .into_iter()
            .take_while(|e| e.offset >= first)
            .collect();
        // Check the records from the last entry on; an entry not at a valid record goes.
        let scan = loop {
            let from = entries.last().map_or(0, |e| e.pos);
            let mut scan = scan_records(&data, &sp, from, data_len, first)?;
            // Records end before the file does, and not in the prefill's zeros: read again after a wait
            // before cutting (a file system may return stale bytes for a while: `reader::REREADS`).
            for wait in [20, 100] {
                if all_zero(&data, &sp, scan.end, data_len)? {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(wait));
                scan = scan_records(&data, &sp, from, data_len, first)?;
            }
            match (entries.last(), scan.first) {
                (Some(e), Some((off, _))) if off == e.offset => break scan,
                (Some(_), _) => {
                    entries.pop();
                }
                (None, _) => break scan,
            }
        };
        if scan.end < data_len && !all_zero(&data, &sp, scan.end, data_len)? {
            // A torn write: its bytes are zeroed, never cut. The zeros then look like the prefill's
            // (`PREFILL`), which is kept, and the next append writes over them. Recovery truncates
            // nothing in place: under LazyFS, a `set_len` on a file it had not cached made the next
            // round's write fail with ENOENT (the message log had the same trouble: seglog/file.rs).
            rec.torn_files += 1;
            rec.torn_bytes += data_len - scan.end;
            let f = OpenOptions::new().write(true).open(&sp).map_err(io_err(&sp))?;
            write_zeros(&f, &sp, scan.end, data_len)?;
            f.sync_data().map_err(io_err(&sp))?;
        }
        // index entries for the records checked that no entry covers
        let mut added = Vec::new();
        let mut covered_to = entries.last().map(|e| e.pos);
        for &(off, ts, pos) in &scan.chunk_starts {
            if covered_to.is_none_or(|c| pos >= c + CHUNK_MAX) {
                added.push(IdxEntry { offset: off, ts, pos });
                covered_to = Some(pos);
            }
        }
        let idx_valid = (entries.len() * IDX_ENTRY) as u64;
        let rewrite = idx_valid < idx_bytes.len() as u64 || !ip.exists();
        let mut idx = LogFile::existing(ip, FileKind::Segment, idx_valid);
        if rewrite {
            // the valid entries copied into a fresh file renamed over the old one, as after a failed sync
            // (`LogFile::repair`): no truncation in place
            idx.repair(&self.faults)?;
        }
        for e in &added {
            encode_idx(*e, &mut idx.pending);
        }
        let rebuilt = !added.is_empty();
        if rebuilt {
            // written by the flusher's next round (a hint: the records are checked when used)
            idx.unsynced = true;
        }
        entries.extend(added);
        let first_ts = entries.first().map(|e| e.ts);
        let seg = Seg {
            last: scan.last.map(|(o, _)| o),
            first_ts,
            last_ts: scan.last.map_or(0, |(_, t)| t),
            data: LogFile {
                keep: KEEP_SYNCED,
                // the zeros after the records (prefill, or a torn write zeroed above) are kept
                filled: data_len,
                ..LogFile::existing(sp, FileKind::Segment, scan.end)
            },
            idx,
            idx_synced_at: scan.end,
            max: 0,
        };
        Ok((seg, entries, rebuilt))
    }
}

/// Whether bytes `from..to` of `f` are all zero.
fn all_zero(f: &File, path: &Path, from: u64, to: u64) -> Result<bool> {
    let mut buf = vec![0u8; SCAN_BLOCK.min((to - from) as usize)];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], at).map_err(io_err(path))?;
        if buf[..n].iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

#[derive(Default)]
struct Scan {
    /// Where the valid records end.
    end: u64,
    /// The first record checked: (offset, ts).
    first: Option<(u64, u64)>,
    last: Option<(u64, u64)>,
    /// (offset, ts, position) of the records checked, one per `CHUNK_MAX` bytes at most.
    chunk_starts: Vec<(u64, u64, u64)>,
}

/// Checks the records of `f` from `from` to `len` in blocks: crc, framing, offsets increasing and
/// at or above `first`. Stops at the first that fails (the tail from there is torn).
fn scan_records(f: &File, path: &Path, from: u64, len: u64, first: u64) -> Result<Scan> {
    let mut scan = Scan {
        end: from,
        ..Default::default()
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_at = from;
    let mut last_mark: Option<u64> = None;
    loop {
        // parse what the buffer holds
        let mut used = (scan.end - buf_at) as usize;
        while used < buf.len() {
            match parse_record(&buf[used..]) {
                Ok(Some(h)) => {
                    let ok = h.offset >= first && scan.last.is_none_or(|(o, _)| h.offset > o);
                    if !ok {
                        return Ok(scan);
                    }
                    let pos = buf_at + used as u64;
                    scan.first.get_or_insert((h.offset, h.ts));
                    scan.last = Some((h.offset, h.ts));
                    if last_mark.is_none_or(|m| pos >= m + CHUNK_MAX) {
                        scan.chunk_starts.push((h.offset, h.ts, pos));
                        last_mark = Some(pos);
                    }
                    used += h.total;
                    scan.end = buf_at + used as u64;
                }
                Ok(None) => return Ok(scan),
                Err(_) => break,
            }
        }
        let read_from = buf_at + buf.len() as u64;
        if read_from >= len {
            return Ok(scan);
        }
        buf.drain(..used);
        buf_at += used as u64;
        let n = ((len - read_from) as usize).min(SCAN_BLOCK.max(buf.len()));
        let old = buf.len();
        buf.resize(old + n, 0);
        f.read_exact_at(&mut buf[old..], read_from)
            .map_err(io_err(path))?;
    }
}
