//! Reading a stream: a `StreamReader` is one consumer's position (segment, file position, the
//! offset it starts at) and its read buffer. Reads are sequential, 256 KiB at a time: synced bytes
//! from the segment files, without the stream's lock (it is held only to find the segment and its
//! length); the unsynced tail, which is still in the segment's write buffer, copied from there under
//! the lock.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::format::*;
use super::{Stream, StreamLog};
use crate::codec::{decode_parts, MessageParts};
use crate::{io_err, Result, StoredMessage};

/// Reads fetch this much of a segment at a time (more if one record is larger).
const READ_CHUNK: usize = 256 << 10;

/// Where a reader starts (RabbitMQ's `x-stream-offset` specs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    /// The first message still held.
    First,
    /// The first message of the last chunk written.
    Last,
    /// The next message to be appended.
    Next,
    /// This offset (the first held if it is gone; the next one if it is beyond the end).
    Offset(u64),
    /// The first message published at or after this time (ms since the epoch).
    Timestamp(u64),
}

/// One message read from a stream.
#[derive(Debug)]
pub struct StreamItem {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub message: StoredMessage,
}

/// One message as a reader finds it, borrowed from the reader's buffer (`StreamLog::read_with`).
#[derive(Debug, Clone, Copy)]
pub struct StreamRecord<'a> {
    pub offset: u64,
    pub timestamp_ms: u64,
    pub message: MessageParts<'a>,
}

/// What one `read` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadOutcome {
    /// Messages handed out.
    pub taken: usize,
    /// It stopped at its scan limit with more to read (filtered-out records): call again.
    pub more: bool,
}

/// A consumer's position in a stream.
pub struct StreamReader {
    id: u32,
    seg: Option<u64>,
    file: Option<Arc<File>>,
    /// File position of `buf[0]`.
    buf_at: u64,
    /// The bytes read: `buf[..end]` (the rest is room kept for the next read, so a refill does not zero
    /// the block again).
    buf: Vec<u8>,
    end: usize,
    /// Bytes of `buf` consumed.
    used: usize,
    /// Records below this offset are skipped.
    start: u64,
    /// Records published before this time are skipped (0: none).
    min_ts: u64,
    /// The last offset read.
    last: Option<u64>,
    /// A record that looked damaged: its file position and how often it was read again (`REREADS`).
    reread: Option<(u64, usize)>,
}

/// Before a record that looks damaged is skipped, it is read again after these waits. A file system may
/// return stale bytes for a block read while it is written or synced: LazyFS returned zeros for bytes
/// written before the read, and the whole record 50 ms later. Only a reader far behind the writers reads
/// such bytes from the file (recent ones are in memory, `KEEP_SYNCED`); a record really damaged costs its
/// readers these waits once.
const REREADS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(20),
    std::time::Duration::from_millis(50),
    std::time::Duration::from_millis(150),
];

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader")
            .field("stream", &self.id)
            .field("segment", &self.seg)
            .field("position", &(self.buf_at + self.used as u64))
            .field("last", &self.last)
            .finish()
    }
}

impl StreamReader {
    fn new(id: u32) -> StreamReader {
        StreamReader {
            id,
            seg: None,
            file: None,
            buf_at: 0,
            buf: Vec::new(),
            end: 0,
            used: 0,
            start: 0,
            min_ts: 0,
            last: None,
            reread: None,
        }
    }

    fn place(&mut self, seg: Option<u64>, pos: u64) {
        self.seg = seg;
        self.file = None;
        self.end = 0;
        self.buf_at = pos;
        self.used = 0;
    }

    /// Moves the unconsumed bytes to the front of the buffer (the file position of their end stays).
    fn compact(&mut self) {
        self.buf.copy_within(self.used..self.end, 0);
        self.end -= self.used;
        self.buf_at += self.used as u64;
        self.used = 0;
    }

    /// Room for `n` more bytes after the unconsumed ones (compacted to the front): fill it, then add `n`
    /// to `end`.
    fn room(&mut self, n: usize) -> &mut [u8] {
        self.compact();
        let old = self.end;
        if self.buf.len() < old + n {
            self.buf.resize(old + n, 0);
        }
        &mut self.buf[old..old + n]
    }

    /// The offset the next message read will have at least.
    pub fn next_offset(&self) -> u64 {
        self.last.map_or(self.start, |l| (l + 1).max(self.start))
    }
}

impl StreamLog {
    /// A reader of stream `id` positioned at `start`.
    pub(crate) fn reader(&self, id: u32, start: StreamStart) -> Result<StreamReader> {
        let s = self.get_or_create(id);
        let mut s = s.lock();
        let mut r = StreamReader::new(id);
        let next = |r: &mut StreamReader, s: &Stream| {
            let w = s.write_seg();
            let pos = w.and_then(|w| s.segs.get(&w)).map_or(0, |g| g.data.len());
            r.place(w, pos);
            r.start = s.next_offset;
        };
        match start {
            StreamStart::Next => next(&mut r, &s),
            StreamStart::First => r.place(s.segs.keys().next().copied(), 0),
            StreamStart::Last => match s.last_chunk.filter(|(g, _)| s.segs.contains_key(g)) {
                Some((g, e)) => {
                    r.place(Some(g), e.pos);
                    r.start = e.offset;
                }
                None => r.place(s.segs.keys().next().copied(), 0),
            },
            StreamStart::Offset(n) if n >= s.next_offset => next(&mut r, &s),
            StreamStart::Offset(n) => match s.segs.range(..=n).next_back().map(|(k, _)| *k) {
                None => r.place(s.segs.keys().next().copied(), 0),
                Some(g) => {
                    let idx = self.read_index(&mut s, g)?;
                    let pos = idx
                        .iter()
                        .take_while(|e| e.offset <= n)
                        .last()
                        .map_or(0, |e| e.pos);
                    r.place(Some(g), pos);
                    r.start = n;
                }
            },
            StreamStart::Timestamp(t) => {
                let g = s
                    .segs
                    .iter()
                    .find(|(_, g)| g.last.is_some() && g.last_ts >= t)
                    .map(|(k, _)| *k);
                match g {
                    None => next(&mut r, &s),
                    Some(g) => {
                        let idx = self.read_index(&mut s, g)?;
                        let pos = idx.iter().take_while(|e| e.ts < t).last().map_or(0, |e| e.pos);
                        r.place(Some(g), pos);
                        r.min_ts = t;
                    }
                }
            }
        }
        Ok(r)
    }

    /// Reads up to `max` messages that `accept` (given each record's filter value) takes, from the
    /// reader's position on, as owned `StreamItem`s (one copy of each). Stops early, with `more`, after
    /// scanning `scan_max` bytes.
    pub(crate) fn read(
        &self,
        r: &mut StreamReader,
        max: usize,
        scan_max: usize,
        accept: &mut dyn FnMut(Option<&[u8]>) -> bool,
        out: &mut Vec<StreamItem>,
    ) -> Result<ReadOutcome> {
        self.read_with(r, max, scan_max, accept, &mut |rec| {
            let m = rec.message;
            let mut value = Vec::with_capacity(m.properties.len() + m.body.len());
            value.extend_from_slice(m.properties);
            value.extend_from_slice(m.body);
            let value = bytes::Bytes::from(value);
            out.push(StreamItem {
                offset: rec.offset,
                timestamp_ms: rec.timestamp_ms,
                message: StoredMessage {
                    exchange: m.exchange.to_owned(),
                    routing_key: m.routing_key.to_owned(),
                    properties: value.slice(..m.properties.len()),
                    body: value.slice(m.properties.len()..),
                    delivery_count: m.delivery_count,
                    published_at_ms: m.published_at_ms,
                    expires_at_ms: m.expires_at_ms,
                    not_before_ms: m.not_before_ms,
                },
            });
        })
    }

    /// Reads up to `max` messages that `accept` (given each record's filter value) takes, from the
    /// reader's position on, handing each to `emit` borrowed from the reader's buffer (nothing is
    /// allocated per message here). Stops early, with `more`, after scanning `scan_max` bytes.
    pub(crate) fn read_with(
        &self,
        r: &mut StreamReader,
        max: usize,
        scan_max: usize,
        accept: &mut dyn FnMut(Option<&[u8]>) -> bool,
        emit: &mut dyn FnMut(StreamRecord<'_>),
    ) -> Result<ReadOutcome> {
        let mut res = ReadOutcome::default();
        let mut scanned = 0usize;
        loop {
            while res.taken < max && scanned < scan_max && r.used < r.end {
                let rest = &r.buf[r.used..r.end];
                match parse_record(rest) {
                    Err(_) => break,
                    Ok(None) => {
                        let at = r.buf_at + r.used as u64;
                        let tries = match r.reread {
                            Some((p, n)) if p == at => n,
                            _ => 0,
                        };
                        if let Some(wait) = REREADS.get(tries) {
                            r.reread = Some((at, tries + 1));
                            // drop what was read from here on: the refill reads it again
                            r.end = r.used;
                            std::thread::sleep(*wait);
                            break;
                        }
                        if tries > 0 {
                            tracing::warn!(stream = r.id, segment = ?r.seg, position = at, tries,
                                "a stream record read the same damaged bytes every time");
                        }
                        let skip_to = find_record(&r.buf[..r.end], r.used + 1, r.last).unwrap_or(r.end);
                        tracing::error!(
                            stream = r.id,
                            segment = ?r.seg,
                            position = at,
                            bytes = skip_to - r.used,
                            "damaged stream record skipped (the messages in it are lost)"
                        );
                        scanned += skip_to - r.used;
                        r.used = skip_to;
                    }
                    Ok(Some(h)) => {
                        if let Some((p, n)) = r.reread.take() {
                            if p == r.buf_at + r.used as u64 {
                                tracing::warn!(stream = r.id, segment = ?r.seg, position = p, tries = n,
                                    "a stream record read back damaged was whole when read again");
                            }
                        }
                        let rec = &rest[..h.total];
                        r.used += h.total;
                        scanned += h.total;
                        if r.last.is_some_and(|l| h.offset <= l) {
                            continue;
                        }
                        r.last = Some(h.offset);
                        if h.offset < r.start || h.ts < r.min_ts {
                            continue;
                        }
                        r.min_ts = 0;
                        if !accept(h.filter(rec)) {
                            continue;
                        }
                        match decode_parts(h.value(rec)) {
                            Ok(message) => {
                                emit(StreamRecord {
                                    offset: h.offset,
                                    timestamp_ms: h.ts,
                                    message,
                                });
                                res.taken += 1;
                            }
                            Err(e) => tracing::error!(stream = r.id, offset = h.offset, error = %e,
                                "undecodable stream record skipped"),
                        }
                    }
                }
            }
            if res.taken >= max {
                return Ok(res);
            }
            if scanned >= scan_max {
                res.more = true;
                return Ok(res);
            }
            if !self.refill(r)? {
                return Ok(res);
            }
        }
    }

    /// Reads the next block of the reader's segment into its buffer, moving on to the next segment
    /// at the end of one. False: nothing more to read now.
    ///
    /// What a sync has not covered yet is still in the segment's write buffer: it is copied from there
    /// under the stream's lock (a reader that keeps up with the writers never touches the file, and never
    /// forces a small write). Only synced bytes are read from the file, outside the lock. Reading the
    /// unsynced tail back from the file is also what a file system may get wrong: under LazyFS, a read
    /// racing the writes and syncs of the same block returned zeros for bytes written before it
    /// (a record then looked damaged and was skipped; `tests/tests/power_loss_stream.rs` caught it).
    fn refill(&self, r: &mut StreamReader) -> Result<bool> {
        let Some(s) = self.get(r.id) else {
            return Ok(false);
        };
        let (file, path, from, n) = {
            let mut guard = s.lock();
            let s = &mut *guard;
            loop {
                let key = match r.seg.filter(|k| s.segs.contains_key(k)) {
                    Some(k) => k,
                    None => {
                        // not placed yet, or its segment was dropped by retention
                        let want = r.next_offset();
                        let k = s
                            .segs
                            .range(..=want)
                            .next_back()
                            .or_else(|| s.segs.iter().next())
                            .map(|(k, _)| *k);
                        let Some(k) = k else { return Ok(false) };
                        r.place(Some(k), 0);
                        k
                    }
                };
                let has_next = s.segs.range(key + 1..).next().map(|(k, _)| *k);
                let seg = s.segs.get_mut(&key).expect("segment");
                let from = r.buf_at + r.end as u64;
                let end = seg.data.len();
                if from >= end {
                    match has_next {
                        Some(k) => {
                            if r.used < r.end {
                                tracing::error!(
                                    stream = r.id,
                                    segment = key,
                                    bytes = r.end - r.used,
                                    "a stream segment ends in a partial record; skipped"
                                );
                            }
                            r.place(Some(k), 0);
                            continue;
                        }
                        None => return Ok(false),
                    }
                }
                let synced = seg.data.synced;
                let mem_from = seg.data.mem_from();
                if from >= mem_from {
                    let at = (from - mem_from) as usize;
                    let n = ((end - from) as usize).min(READ_CHUNK);
                    r.room(n).copy_from_slice(&seg.data.pending[at..at + n]);
                    r.end += n;
                    return Ok(true);
                }
                let file = match (&r.file, &seg.data.file) {
                    (Some(f), _) => f.clone(),
                    (None, Some(f)) => f.clone(),
                    (None, None) => Arc::new(File::open(&seg.data.path).map_err(io_err(&seg.data.path))?),
                };
                r.file = Some(file.clone());
                let n = (synced - from).min(READ_CHUNK as u64) as usize;
                break (file, seg.data.path.clone(), from, n);
            }
        };
        if let Err(e) = file.read_exact_at(r.room(n), from) {
            return Err(io_err(&path)(e));
        }
        r.end += n;
        Ok(true)
    }
}
