//! Opening the message log: reading every queue directory's segments and acks, cutting torn tails,
//! skipping damaged records, restoring or setting aside directories without a definition, and
//! building the in-memory index. docs/storage-format.md, "Recovery".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::file::{remove_file_if_exists, rewrite_file, sync_dir, truncate_file, LogFile};
use super::format::*;
use super::{MsgLog, QueueLog, Segment, READ_CHUNK};
use crate::fault::{Faults, FileKind};
use crate::{io_err, QueueRecord, Result};

/// What `MsgLog::open` found and did.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Queues without a record whose definition copy was valid: loaded, and to be recorded again.
    pub restored: Vec<QueueRecord>,
    /// Queue directories that could not be accounted for (no record, no usable definition copy),
    /// moved to the `lost+found` directory: (queue id, where they are now).
    pub moved_aside: Vec<(u32, PathBuf)>,
    /// Deletions that were not durable yet (the queue still has its record): directory put back.
    pub undeleted: Vec<u32>,
    /// Directories of deleted queues removed.
    pub finished_deletes: usize,
    /// Segment or ack files whose torn tail was cut off, and the bytes cut.
    pub truncated_files: usize,
    pub truncated_bytes: u64,
    /// Damaged regions in the middle of segment or ack files (skipped), and their bytes.
    pub damaged_regions: usize,
    pub damaged_bytes: u64,
    /// Segments read whole because they had no valid footer (the write segments of a crash).
    pub scanned_segments: usize,
    /// Definition copies (re)written because they were missing or did not match the record.
    pub defs_written: usize,
}

enum Entry {
    Live(u32),
    Deleted(u32),
}

fn parse_entry(name: &str) -> Option<Entry> {
    let (stem, deleted) = match name.strip_suffix(".deleted") {
        Some(stem) => (stem, true),
        None => (name, false),
    };
    if stem.len() != 8 || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u32::from_str_radix(stem, 16).ok()?;
    Some(if deleted {
        Entry::Deleted(id)
    } else {
        Entry::Live(id)
    })
}

/// How many queue directories under `root` hold messages or a definition copy (`root` missing: 0).
pub(crate) fn has_message_data(root: &Path) -> Result<usize> {
    let rd = match fs::read_dir(root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io_err(root)(e)),
    };
    let mut n = 0;
    for e in rd {
        let e = e.map_err(io_err(root))?;
        if !matches!(
            parse_entry(&e.file_name().to_string_lossy()),
            Some(Entry::Live(_))
        ) {
            continue;
        }
        let path = e.path();
        let Ok(files) = fs::read_dir(&path) else { continue };
        let holds = files.filter_map(|f| f.ok()).any(|f| {
            let name = f.file_name();
            let name = name.to_string_lossy();
            name == DEF_FILE || parse_hex_name(&name, 16, "seg").is_some()
        });
        n += holds as usize;
    }
    Ok(n)
}

/// Moves a directory that cannot be accounted for into `lost` (created if missing) as
/// `<kind>-<id>-<unix time>[-n]` (`kind`: "queue" or "stream"), durably. Returns its new path.
pub(crate) fn move_aside(dir: &Path, kind: &str, id: u32, lost: &Path, faults: &Faults) -> Result<PathBuf> {
    if !lost.exists() {
        fs::create_dir_all(lost).map_err(io_err(lost))?;
        if let Some(parent) = lost.parent() {
            sync_dir(parent, faults)?;
        }
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut dest = lost.join(format!("{kind}-{id:08x}-{secs}"));
    let mut n = 1;
    while dest.exists() {
        dest = lost.join(format!("{kind}-{id:08x}-{secs}-{n}"));
        n += 1;
    }
    fs::rename(dir, &dest).map_err(io_err(dir))?;
    sync_dir(lost, faults)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent, faults)?;
    }
    Ok(dest)
}

impl MsgLog {
    /// Loads the index of every queue directory under `root`. `known` are the queue records of
    /// the definitions store. A directory without a record is restored if its definition copy is
    /// valid and its name is free (`Recovery::restored`), else moved to `lost` — never deleted.
    /// A `<id>.deleted` directory (a deletion in progress) is removed, or put back if the queue
    /// still has its record (the deletion was not durable). See docs/storage-format.md, "Recovery".
    pub(crate) fn open(
        root: &Path,
        segment_bytes: u64,
        known: &HashMap<u32, QueueRecord>,
        lost: &Path,
        faults: Arc<Faults>,
    ) -> Result<(MsgLog, Recovery)> {
        if !root.exists() {
            fs::create_dir_all(root).map_err(io_err(root))?;
            if let Some(parent) = root.parent() {
                sync_dir(parent, &faults)?;
            }
        }
        let mut defs = HashMap::new();
        for (id, r) in known {
            defs.insert(*id, Arc::new(encode_def(r)?));
        }
        let log = MsgLog {
            root: root.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            faults,
            queues: RwLock::new(HashMap::new()),
            defs: Mutex::new(defs),
            dirty: Mutex::new(Vec::new()),
            collecting: Mutex::new(Vec::new()),
            dirty_dirs: Mutex::new(HashSet::new()),
            trash: Mutex::new(Vec::new()),
            spares: super::SpareBudget::new(segment_bytes.max(1)),
        };
        let mut rec = Recovery::default();
        let mut buf = Vec::new();
        let mut changed_root = false;
        let mut live: Vec<u32> = Vec::new();
        let mut deleted: Vec<u32> = Vec::new();
        for e in fs::read_dir(root).map_err(io_err(root))? {
            let e = e.map_err(io_err(root))?;
            let name = e.file_name();
            match parse_entry(&name.to_string_lossy()) {
                Some(Entry::Live(id)) if e.path().is_dir() => live.push(id),
                Some(Entry::Deleted(id)) if e.path().is_dir() => deleted.push(id),
                _ => {
                    tracing::warn!(path = %e.path().display(), "ignoring unexpected entry in the message directory")
                }
            }
        }
        for id in deleted {
            let path = root.join(format!("{}.deleted", queue_dir_name(id)));
            if known.contains_key(&id) && !live.contains(&id) {
                fs::rename(&path, root.join(queue_dir_name(id))).map_err(io_err(&path))?;
                live.push(id);
                rec.undeleted.push(id);
            } else {
                fs::remove_dir_all(&path).map_err(io_err(&path))?;
                rec.finished_deletes += 1;
            }
            changed_root = true;
        }
        live.sort_unstable();
        let mut names: HashSet<(String, String)> = known
            .values()
            .map(|r| (r.vhost.clone(), r.name.clone()))
            .collect();
        for id in live {
            let path = root.join(queue_dir_name(id));
            let def = fs::read(path.join(DEF_FILE)).ok().and_then(|b| decode_def(&b));
            let record = match known.get(&id) {
                Some(r) => r.clone(),
                None => match def.clone() {
                    Some(d) if d.id == id && d.durable && names.insert((d.vhost.clone(), d.name.clone())) => {
                        log.defs.lock().insert(id, Arc::new(encode_def(&d)?));
                        rec.restored.push(d.clone());
                        d
                    }
                    _ => {
                        let dest = move_aside(&path, "queue", id, lost, &log.faults)?;
                        rec.moved_aside.push((id, dest));
                        continue;
                    }
                },
            };
            let mut q = QueueLog::new(id, root);
            q.dir_exists = true;
            let changed = log.load_queue(&mut q, &mut buf, &mut rec)?;
            q.has_def = true;
            if def.as_ref() != Some(&record) {
                q.write_def(&encode_def(&record)?, &log.faults)?;
                rec.defs_written += 1;
                log.dirty_dirs.lock().insert(q.dir.clone());
                log.touch(&mut q);
            }
            if changed {
                sync_dir(&path, &log.faults)?;
            }
            log.queues.write().insert(id, Arc::new(Mutex::new(q)));
        }
        if changed_root {
            sync_dir(root, &log.faults)?;
        }
        Ok((log, rec))
    }

    /// Reads one queue's segments and acks. Returns whether files were changed.
    fn load_queue(&self, q: &mut QueueLog, buf: &mut Vec<u8>, rec: &mut Recovery) -> Result<bool> {
        let mut segs = BTreeSet::new();
        let mut acks = BTreeSet::new();
        let mut changed = false;
        for e in fs::read_dir(&q.dir).map_err(io_err(&q.dir))? {
            let e = e.map_err(io_err(&q.dir))?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if let Some(f) = parse_hex_name(&name, 16, "seg") {
                segs.insert(f);
            } else if let Some(f) = parse_hex_name(&name, 16, "ack") {
                acks.insert(f);
            } else if name.ends_with(".repair")
                || name.ends_with(".tmp")
                || name == SPARE_SEG
                || name == SPARE_ACK
            {
                // a rewrite a crash interrupted (the file it was to replace is still whole), or a spare
                // (a retired segment's files kept for the next segment, `seglog::Spare`)
                remove_file_if_exists(&e.path())?;
                changed = true;
            } else if name != DEF_FILE {
                tracing::warn!(path = %e.path().display(), "ignoring unexpected file in a queue directory");
            }
        }
        for f in acks.difference(&segs) {
            remove_file_if_exists(&ack_path(&q.dir, *f))?;
            changed = true;
        }
        let firsts: Vec<u64> = segs.into_iter().collect();
        for (i, &first) in firsts.iter().enumerate() {
            let next_first = firsts.get(i + 1).copied();
            // acks
            let apath = ack_path(&q.dir, first);
            let in_segment = |s: u64| s >= first && next_first.is_none_or(|n| s < n);
            // Rewritten once the segment's acks are known: an ack file with damaged or reused regions
            // between its batches, which a later open (with other segments after this one) might not
            // read past again.
            let mut rewrite_ack = false;
            let (acked_seqs, ack_file) = match fs::read(&apath) {
                Ok(b) => {
                    let scan = parse_acks(&b, in_segment);
                    rewrite_ack = !scan.damaged.is_empty();
                    for &(from, to) in &scan.damaged {
                        tracing::error!(path = %apath.display(), offset = from, bytes = to - from,
                            "damaged ack batches skipped (their messages may be delivered again)");
                        rec.damaged_regions += 1;
                        rec.damaged_bytes += (to - from) as u64;
                    }
                    // zeros after the batches are the file's prefill (`ACK_PREFILL`): kept, not torn
                    let zeros = b[scan.valid_end..].iter().all(|&x| x == 0);
                    if scan.valid_end < b.len() && !zeros {
                        // A reused file (`seglog::Spare`) holds its earlier life's batches after the new
                        // ones: they name seqs below the segment's, which nothing takes.
                        if scan.seqs.iter().any(|&s| s < first) {
                            rewrite_ack = true;
                            tracing::debug!(path = %apath.display(), valid = scan.valid_end, len = b.len(), "cutting a reused ack file's earlier batches");
                        } else {
                            tracing::warn!(path = %apath.display(), valid = scan.valid_end, len = b.len(), "cutting the torn tail of an ack file");
                            rec.truncated_files += 1;
                            rec.truncated_bytes += (b.len() - scan.valid_end) as u64;
                        }
                        // (a file rewritten below loses its tail there)
                        if !rewrite_ack {
                            truncate_file(&apath, scan.valid_end as u64)?;
                        }
                        changed = true;
                    }
                    let mut f = LogFile::existing(apath, FileKind::Ack, scan.valid_end as u64);
                    if zeros {
                        f.filled = b.len() as u64;
                    }
                    (scan.seqs, f)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // created now, so that the directory sync at the end of open covers it
                    changed = true;
                    (Vec::new(), LogFile::create(apath, FileKind::Ack, &self.faults)?)
                }
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
                LogFile::existing(spath.clone(), FileKind::Segment, file_len),
                ack_file,
            );
            // the new ack file (if any) is synced with the segment's first write
            seg.ack.unsynced = false;
            match footer {
                Some((seqs, data_len)) => {
                    seg.seqs = seqs;
                    seg.sealed_len = Some(data_len);
                }
                None => {
                    rec.scanned_segments += 1;
                    buf.clear();
                    io::Read::read_to_end(&mut &f, buf).map_err(io_err(&spath))?;
                    let scan = scan_records(buf, first, next_first);
                    for &(from, to) in &scan.damaged {
                        tracing::error!(path = %spath.display(), offset = from, bytes = to - from,
                            "damaged records in a segment skipped (the messages in them are lost)");
                        rec.damaged_regions += 1;
                        rec.damaged_bytes += (to - from) as u64;
                    }
                    let valid = scan.valid_end as u64;
                    // zeros after the records are the segment's prefill (`SEG_PREFILL`): kept (the seal
                    // below writes the footer over the last of them), not a torn tail
                    let zeros = buf[scan.valid_end..].iter().all(|&x| x == 0);
                    if valid < file_len && !zeros {
                        // A reused file (`seglog::Spare`) holds its earlier life's records after the new
                        // ones, all with seqs below the segment's name.
                        if find_record(buf, scan.valid_end, |s| s < first).is_some() {
                            tracing::debug!(path = %spath.display(), valid, len = file_len, "cutting a reused segment file's earlier records");
                        } else {
                            tracing::warn!(path = %spath.display(), valid, len = file_len, "cutting the torn tail of a segment");
                            rec.truncated_files += 1;
                            rec.truncated_bytes += file_len - valid;
                        }
                        truncate_file(&spath, valid)?;
                        changed = true;
                    }
                    seg.seg.written = valid;
                    seg.seg.synced = valid;
                    seg.seg.filled = if zeros { file_len } else { valid };
                    for (s, _) in scan.recs {
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
            if rewrite_ack {
                let acked: Vec<u64> = (0..seg.seqs.n)
                    .filter(|r| seg.acked.get(*r))
                    .map(|r| seg.seqs.seq_at(r))
                    .collect();
                let mut bytes = Vec::new();
                if !acked.is_empty() {
                    encode_ack_batch(&acked, &mut bytes);
                }
                rewrite_file(&seg.ack.path, FileKind::Ack, &bytes, &self.faults)?;
                seg.ack = LogFile::existing(seg.ack.path.to_path_buf(), FileKind::Ack, bytes.len() as u64);
                changed = true;
            }
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
        // (A loop: records lost at the end go with the cut, and the acked records before them are then
        // the tail; a segment left without a live message goes, and the one before it is the last.)
        while let Some((&first, seg)) = q.segs.iter_mut().next_back() {
            let last_rank = seg.acked.last_clear(seg.seqs.n).expect("live segment");
            if last_rank + 1 < seg.seqs.n {
                let end = seg.data_end();
                buf.resize(end as usize, 0);
                let f = seg.seg.handle()?;
                f.read_exact_at(buf, 0).map_err(io_err(&seg.seg.path))?;
                // after the last live record (or, if that one is damaged, after the last whole
                // record before it)
                let last_live = seg.seqs.seq_at(last_rank);
                let kept = scan_records(buf, first, None)
                    .recs
                    .iter()
                    .take_while(|(s, _)| *s <= last_live)
                    .last()
                    .copied();
                let cut = kept.map_or(0, |r| r.1);
                truncate_file(&seg.seg.path, cut)?;
                seg.seg.written = cut;
                seg.seg.synced = cut;
                seg.seg.filled = cut;
                seg.sealed_len = None;
                // Records a footer names up to the last live one that are not whole in the file (pages
                // a crash lost after the footer's reached the disk) go with the cut: nothing could read
                // them, and the seqs after the file's last record are handed out again.
                let keep = kept.and_then(|(s, _)| seg.seqs.rank(s)).map_or(0, |r| r + 1);
                let lost = (keep..=last_rank).filter(|r| !seg.acked.get(*r)).count();
                if lost > 0 {
                    tracing::error!(path = %seg.seg.path.display(), messages = lost,
                        "damaged records at the end of a segment cut off (the messages in them are lost)");
                    rec.damaged_regions += 1;
                }
                seg.seqs.truncate(keep);
                seg.acked.truncate(keep);
                seg.live = (0..seg.seqs.n).filter(|r| !seg.acked.get(*r)).count() as u32;
                changed = true;
                if seg.live == 0 {
                    if let Some(s) = q.segs.remove(&first) {
                        s.remove_files()?;
                    }
                }
                // again: the cut may have left acked records after the last live one
                continue;
            }
            q.last_appended = seg.seqs.last();
            break;
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
}

/// What a directory in `lost+found` holds.
pub(crate) struct LostContents {
    pub(crate) definition: Option<QueueRecord>,
    pub(crate) messages: Vec<(u64, crate::StoredMessage)>,
}

/// Reads a queue directory that recovery moved aside: its definition copy (if readable) and its
/// live messages in order.
pub(crate) fn read_lost(path: &Path, id: u32) -> Result<LostContents> {
    let definition = fs::read(path.join(DEF_FILE)).ok().and_then(|b| decode_def(&b));
    let log = MsgLog {
        root: path.parent().unwrap_or(path).to_path_buf(),
        segment_bytes: crate::DEFAULT_SEGMENT_BYTES,
        faults: Arc::new(Faults::default()),
        queues: RwLock::new(HashMap::new()),
        defs: Mutex::new(HashMap::new()),
        dirty: Mutex::new(Vec::new()),
        collecting: Mutex::new(Vec::new()),
        dirty_dirs: Mutex::new(HashSet::new()),
        trash: Mutex::new(Vec::new()),
        spares: super::SpareBudget::new(crate::DEFAULT_SEGMENT_BYTES),
    };
    let mut q = QueueLog::new(id, path);
    q.dir = path.to_path_buf();
    q.dir_exists = true;
    let mut rec = Recovery::default();
    log.load_queue(&mut q, &mut Vec::new(), &mut rec)?;
    log.queues.write().insert(id, Arc::new(Mutex::new(q)));
    let messages = log.read(id, 0, usize::MAX)?;
    Ok(LostContents { definition, messages })
}
