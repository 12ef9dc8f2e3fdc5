//! Opening the message log: reading every queue directory's segments and acks, cutting torn tails,
//! and building the in-memory index. docs/storage-format.md, "Recovery".

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use super::file::{remove_file_if_exists, sync_dir, truncate_file, LogFile};
use super::format::*;
use super::{MsgLog, QueueLog, Recovery, Segment, READ_CHUNK};
use crate::{io_err, Result, StoreError};

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
}
