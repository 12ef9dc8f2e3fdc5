//! Transient messages paged out of memory: a first-in first-out sequence of message records in plain files
//! under `<data-dir>/spill/`, written and read back by the same process and never recovered (transient
//! messages do not survive a restart; the broker empties `spill/` at start).
//!
//! A queue's transient tail costs memory per open file, not per message: records are appended to the
//! current file through a buffer, files are closed at [`SEGMENT_BYTES`], and reading goes through closed
//! files in order, deleting each once read. Nothing here is fsynced: a crash loses transient messages,
//! which the contract allows (docs/durability.md).
//!
//! Record layout: `[len u32 BE][seq u64 BE][flags u8][message value as in the segment log]`, `len` counting
//! everything after itself. Flag bit 0: redelivered.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::codec::{decode_message, encode_message_into};
use crate::{StoreError, StoredMessage};

/// A spill file is closed (and can be read) once it holds this many bytes.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// Name of the directory under the data directory that holds every queue's spill files.
pub const SPILL_DIR: &str = "spill";

/// Spill directories handed out in this process (their names).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// One message read back from a spill.
#[derive(Debug)]
pub struct Spilled {
    pub seq: u64,
    pub redelivered: bool,
    pub msg: StoredMessage,
}

struct Writer {
    path: PathBuf,
    file: BufWriter<File>,
    count: u64,
    bytes: u64,
}

struct Reader {
    path: PathBuf,
    file: BufReader<File>,
    left: u64,
    /// File offset of the next record (where a browse starts in this file).
    pos: u64,
}

/// One queue's spilled transient messages, oldest first. Dropping it deletes its files.
pub struct Spill {
    dir: PathBuf,
    next_file: u64,
    /// Written and closed, not yet being read: (path, records).
    closed: VecDeque<(PathBuf, u64)>,
    writing: Option<Writer>,
    reading: Option<Reader>,
    len: u64,
    scratch: Vec<u8>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Empties `<data_dir>/spill` (what a previous run left: transient, never recovered).
pub fn clear_spill_root(data_dir: &Path) -> Result<(), StoreError> {
    let root = data_dir.join(SPILL_DIR);
    match std::fs::remove_dir_all(&root) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(&root)(e)),
    }
}

impl Spill {
    /// A new, empty spill in a fresh directory under `root` (created lazily at the first write).
    pub fn new(root: &Path) -> Spill {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        Spill {
            dir: root.join(format!("{}-{id:08}", std::process::id())),
            next_file: 0,
            closed: VecDeque::new(),
            writing: None,
            reading: None,
            len: 0,
            scratch: Vec::new(),
        }
    }

    /// Messages in the spill.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a message (its seq must be above every seq already in the spill).
    pub fn push(&mut self, seq: u64, redelivered: bool, msg: &StoredMessage) -> Result<(), StoreError> {
        if self.writing.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
            let path = self.dir.join(format!("{:08}.spill", self.next_file));
            self.next_file += 1;
            let file = File::create(&path).map_err(io(&path))?;
            self.writing = Some(Writer {
                path,
                file: BufWriter::with_capacity(256 << 10, file),
                count: 0,
                bytes: 0,
            });
        }
        let Some(w) = self.writing.as_mut() else {
            return Ok(());
        };
        self.scratch.clear();
        self.scratch.extend_from_slice(&[0; 4]);
        self.scratch.extend_from_slice(&seq.to_be_bytes());
        self.scratch.push(u8::from(redelivered));
        encode_message_into(&mut self.scratch, msg)?;
        let len = u32::try_from(self.scratch.len() - 4)
            .map_err(|_| StoreError::Corrupt("spilled message longer than 4 GiB".into()))?;
        self.scratch[..4].copy_from_slice(&len.to_be_bytes());
        w.file.write_all(&self.scratch).map_err(io(&w.path))?;
        w.count += 1;
        w.bytes += self.scratch.len() as u64;
        self.len += 1;
        if w.bytes >= SEGMENT_BYTES {
            self.close_writer()?;
        }
        Ok(())
    }

    /// Flushes and closes the file being written: it becomes readable.
    fn close_writer(&mut self) -> Result<(), StoreError> {
        if let Some(mut w) = self.writing.take() {
            w.file.flush().map_err(io(&w.path))?;
            self.closed.push_back((w.path, w.count));
        }
        Ok(())
    }

    /// Removes and returns the oldest message, `None` when the spill is empty.
    pub fn pop(&mut self) -> Result<Option<Spilled>, StoreError> {
        if self.len == 0 {
            return Ok(None);
        }
        if self.reading.as_ref().is_none_or(|r| r.left == 0) {
            if let Some(r) = self.reading.take() {
                let _ = std::fs::remove_file(&r.path);
            }
            if self.closed.is_empty() {
                self.close_writer()?;
            }
            let Some((path, count)) = self.closed.pop_front() else {
                return Ok(None);
            };
            let file = File::open(&path).map_err(io(&path))?;
            self.reading = Some(Reader {
                path,
                file: BufReader::with_capacity(256 << 10, file),
                left: count,
                pos: 0,
            });
        }
        let Some(r) = self.reading.as_mut() else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        r.file.read_exact(&mut len).map_err(io(&r.path))?;
        let len = u32::from_be_bytes(len) as usize;
        if len < 9 {
            return Err(StoreError::Corrupt(format!(
                "spill record of {len} bytes in {}",
                r.path.display()
            )));
        }
        // Read into spare capacity: no zeroing of a buffer about to be overwritten.
        let mut buf = Vec::with_capacity(len);
        (&mut r.file)
            .take(len as u64)
            .read_to_end(&mut buf)
            .map_err(io(&r.path))?;
        if buf.len() != len {
            return Err(StoreError::Corrupt(format!(
                "spill record cut short in {}",
                r.path.display()
            )));
        }
        r.left -= 1;
        r.pos += 4 + len as u64;
        self.len -= 1;
        let seq = u64::from_be_bytes(buf[..8].try_into().unwrap_or_default());
        let redelivered = buf[8] & 1 == 1;
        let msg = decode_message(Bytes::from(buf).slice(9..))?;
        Ok(Some(Spilled {
            seq,
            redelivered,
            msg,
        }))
    }
}

impl Spill {
    /// Reads up to `max` messages with seq >= `from_seq`, oldest first, leaving the spill as it is (a browse).
    /// Records before `from_seq` are skipped by their headers (seek, no read of the message); only the
    /// returned messages are held in memory.
    pub fn browse(&mut self, from_seq: u64, max: usize) -> Result<Vec<Spilled>, StoreError> {
        let mut out = Vec::new();
        if self.len == 0 || max == 0 {
            return Ok(out);
        }
        let mut files: Vec<(PathBuf, u64, u64)> = Vec::new();
        if let Some(r) = &self.reading {
            if r.left > 0 {
                files.push((r.path.clone(), r.pos, r.left));
            }
        }
        files.extend(self.closed.iter().map(|(p, n)| (p.clone(), 0, *n)));
        if let Some(w) = self.writing.as_mut() {
            w.file.flush().map_err(io(&w.path))?;
            files.push((w.path.clone(), 0, w.count));
        }
        for (path, pos, count) in files {
            browse_file(&path, pos, count, from_seq, max, &mut out)?;
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

/// `Spill::browse` in one file: `count` records from byte `pos`.
fn browse_file(
    path: &Path,
    pos: u64,
    count: u64,
    from_seq: u64,
    max: usize,
    out: &mut Vec<Spilled>,
) -> Result<(), StoreError> {
    use std::io::{Seek, SeekFrom};
    let file = File::open(path).map_err(io(path))?;
    let mut f = BufReader::with_capacity(64 << 10, file);
    f.seek(SeekFrom::Start(pos)).map_err(io(path))?;
    let mut head = [0u8; 12];
    for _ in 0..count {
        if out.len() >= max {
            break;
        }
        f.read_exact(&mut head).map_err(io(path))?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if len < 9 {
            return Err(StoreError::Corrupt(format!(
                "spill record of {len} bytes in {}",
                path.display()
            )));
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&head[4..12]);
        let seq = u64::from_be_bytes(seq);
        if seq < from_seq {
            f.seek_relative(len as i64 - 8).map_err(io(path))?;
            continue;
        }
        let mut buf = Vec::with_capacity(len - 8);
        (&mut f)
            .take(len as u64 - 8)
            .read_to_end(&mut buf)
            .map_err(io(path))?;
        if buf.len() != len - 8 {
            return Err(StoreError::Corrupt(format!(
                "spill record cut short in {}",
                path.display()
            )));
        }
        let redelivered = buf[0] & 1 == 1;
        let msg = decode_message(Bytes::from(buf).slice(1..))?;
        out.push(Spilled {
            seq,
            redelivered,
            msg,
        });
    }
    Ok(())
}

impl Drop for Spill {
    fn drop(&mut self) {
        self.writing = None;
        self.reading = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u64, body_len: usize) -> StoredMessage {
        StoredMessage {
            exchange: "x".into(),
            routing_key: format!("rk{i}"),
            properties: Bytes::from_static(&[0, 0]),
            body: Bytes::from(vec![(i % 251) as u8; body_len]),
            delivery_count: (i % 3) as u32,
            published_at_ms: 7,
            expires_at_ms: i.is_multiple_of(2).then_some(i),
            not_before_ms: None,
        }
    }

    #[test]
    fn first_in_first_out_across_files_and_interleaved_reads() {
        let root = tempfile::tempdir().unwrap();
        let mut s = Spill::new(root.path());
        let mut expect = 0u64;
        let mut next = 0u64;
        // 64 KiB bodies: a file closes every ~128 messages; reads interleave with writes.
        for round in 0..6 {
            for _ in 0..300 {
                s.push(next, next.is_multiple_of(5), &msg(next, 64 << 10))
                    .unwrap();
                next += 1;
            }
            for _ in 0..(150 + round * 10) {
                let m = s.pop().unwrap().unwrap();
                assert_eq!(m.seq, expect);
                assert_eq!(m.redelivered, expect.is_multiple_of(5));
                let want = msg(expect, 64 << 10);
                assert_eq!(m.msg.routing_key, want.routing_key);
                assert_eq!(m.msg.body, want.body);
                assert_eq!(m.msg.delivery_count, want.delivery_count);
                assert_eq!(m.msg.expires_at_ms, want.expires_at_ms);
                expect += 1;
            }
        }
        assert_eq!(s.len(), next - expect);
        while let Some(m) = s.pop().unwrap() {
            assert_eq!(m.seq, expect);
            expect += 1;
        }
        assert_eq!(expect, next);
        assert!(s.is_empty());
        // Read files are deleted as they are finished: at most the current one is left.
        let files = std::fs::read_dir(&s.dir).map(|d| d.count()).unwrap_or(0);
        assert!(files <= 1, "{files} spill files left");
        let dir = s.dir.clone();
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn clearing_the_root_removes_what_a_previous_run_left() {
        let data = tempfile::tempdir().unwrap();
        let root = data.path().join(SPILL_DIR);
        let mut s = Spill::new(&root);
        s.push(1, false, &msg(1, 10)).unwrap();
        std::mem::forget(s);
        assert!(root.exists());
        clear_spill_root(data.path()).unwrap();
        assert!(!root.exists());
        clear_spill_root(data.path()).unwrap();
    }

    #[test]
    fn browse_reads_from_any_seq_across_files_and_leaves_the_spill_as_it_is() {
        let root = tempfile::tempdir().unwrap();
        let mut s = Spill::new(root.path());
        // 64 KiB bodies: files close every ~128 messages; seqs go up by 2.
        for i in 0..400u64 {
            s.push(2 * i, false, &msg(2 * i, 64 << 10)).unwrap();
        }
        for _ in 0..50 {
            s.pop().unwrap().unwrap();
        }
        let len = s.len();
        let all = s.browse(0, usize::MAX).unwrap();
        assert_eq!(all.len() as u64, len);
        assert_eq!(all.first().map(|m| m.seq), Some(100));
        let page = s.browse(301, 5).unwrap();
        let seqs: Vec<u64> = page.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [302, 304, 306, 308, 310]);
        assert_eq!(page[0].msg.body, msg(302, 64 << 10).body);
        assert_eq!(s.len(), len);
        // Popping after a browse goes on where it was.
        assert_eq!(s.pop().unwrap().unwrap().seq, 100);
    }
}
