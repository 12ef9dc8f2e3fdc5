//! On-disk formats of the message log: file names, message records, segment footers, ack batches.
//! docs/storage-format.md describes them; every integer is big-endian and read through `crate::be`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index::{Run, Seqs};
use crate::{be, codec, QueueRecord, Result, StoreError};

/// `[len u32 BE][crc32 u32 BE][seq u64 BE]`, then the payload; `len` counts seq + payload and the
/// crc covers them.
pub(crate) const RECORD_HEADER: usize = 16;
/// An ack batch: `[count u32 BE][crc32 u32 BE of the seqs][count × seq u64 BE]`.
pub(crate) const ACK_HEADER: usize = 8;
/// A sealed segment ends with a footer describing its records, so that `open` need not read it:
/// `[n_runs × (start u64 BE, len u32 BE)][n_runs u32 BE][records u32 BE][data_len u64 BE]
///  [crc32 u32 BE of all of the footer before it][FOOTER_MAGIC]`.
pub(crate) const FOOTER_MAGIC: &[u8; 8] = b"MRSEGEND";
pub(crate) const FOOTER_TAIL: usize = 28;
pub(crate) const FOOTER_RUN: usize = 12;

/// A queue's spare segment files (`seglog::Spare`): removed at open.
pub(crate) const SPARE_SEG: &str = "spare.seg";
pub(crate) const SPARE_ACK: &str = "spare.ack";

pub(crate) fn queue_dir_name(id: u32) -> String {
    format!("{id:08x}")
}

pub(crate) fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:016x}.seg"))
}

pub(crate) fn ack_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:016x}.ack"))
}

/// `name` = `<digits hex digits>.<ext>`.
pub(crate) fn parse_hex_name(name: &str, digits: usize, ext: &str) -> Option<u64> {
    let stem = name.strip_suffix(ext)?.strip_suffix('.')?;
    if stem.len() != digits || !stem.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(stem, 16).ok()
}

/// The encoded record of `seq` + `msg`, on its own (tests; the log encodes into its buffers).
#[cfg(test)]
pub(crate) fn encode_record(seq: u64, msg: &crate::StoredMessage) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    encode_record_into(&mut v, seq, &codec::MessageParts::of(msg))?;
    Ok(v)
}

/// Appends the record of `seq` + `msg` to `out`; returns its length. On error `out` is unchanged.
pub(crate) fn encode_record_into(
    out: &mut Vec<u8>,
    seq: u64,
    msg: &codec::MessageParts<'_>,
) -> Result<usize> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    out.extend_from_slice(&seq.to_be_bytes());
    let len = codec::encode_parts_into(out, msg).and_then(|_| {
        u32::try_from(out.len() - start - 8)
            .map_err(|_| StoreError::Corrupt("message record longer than 4 GiB".into()))
    });
    let len = match len {
        Ok(len) => len,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let crc = crc32fast::hash(&out[start + 8..]);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(out.len() - start)
}

/// A record at the start of `buf`: `Some((total length, seq))` if its header and crc check out,
/// `None` if it is torn or garbage. `Err(needed)` if `buf` holds only part of it.
pub(crate) fn parse_record(buf: &[u8]) -> Result<Option<(usize, u64)>, usize> {
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

pub(crate) fn encode_footer(seqs: &Seqs, data_len: u64, out: &mut Vec<u8>) {
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
pub(crate) fn read_footer(f: &File, file_len: u64) -> io::Result<Option<(Seqs, u64)>> {
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
    // The footer ends the file; zeros kept ahead of the records (`SEG_PREFILL`) may lie between the
    // records and the footer.
    if data_len
        .checked_add(body_len + FOOTER_TAIL as u64)
        .is_none_or(|end| end > file_len)
    {
        return Ok(None);
    }
    let mut body = vec![0u8; body_len as usize];
    f.read_exact_at(&mut body, file_len - FOOTER_TAIL as u64 - body_len)?;
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

/// What a scan of a segment's bytes found.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// The valid records, as (seq, end offset), in file order.
    pub(crate) recs: Vec<(u64, u64)>,
    /// End of the last valid record: what follows is a torn tail (or nothing).
    pub(crate) valid_end: usize,
    /// Damaged byte ranges between valid records (reported and skipped, never delivered).
    pub(crate) damaged: Vec<(usize, usize)>,
}

/// The valid records of a segment's bytes. Records must have seqs in `first..next_first`, strictly
/// increasing. A record that does not check out is skipped up to the next one that does (a
/// damaged record in the middle); if none follows, it starts the torn tail.
pub(crate) fn scan_records(buf: &[u8], first: u64, next_first: Option<u64>) -> Scan {
    let mut scan = Scan::default();
    let mut pos = 0usize;
    let mut prev: Option<u64> = None;
    let accept = |seq: u64, prev: Option<u64>| {
        seq >= first
            && prev.is_none_or(|p| seq > p)
            && next_first.is_none_or(|n| seq < n)
            && seq - prev.unwrap_or(first) < MAX_SEQ_GAP
    };
    while pos < buf.len() {
        match parse_record(&buf[pos..]) {
            Ok(Some((total, seq))) if accept(seq, prev) => {
                pos += total;
                scan.recs.push((seq, pos as u64));
                prev = Some(seq);
            }
            _ => match find_record(buf, pos + 1, |s| accept(s, prev)) {
                Some(next) => {
                    scan.damaged.push((pos, next));
                    pos = next;
                }
                None => break,
            },
        }
    }
    scan.valid_end = scan.recs.last().map_or(0, |r| r.1 as usize);
    scan
}

/// Two records of one segment are never this far apart in seq (`MsgLog::append_one` starts a new segment
/// for such a seq); a resync candidate that far away is garbage.
pub(crate) const MAX_SEQ_GAP: u64 = 1 << 40;

/// The offset of the first valid record at or after `from` whose seq `accept`s.
pub(crate) fn find_record(buf: &[u8], from: usize, accept: impl Fn(u64) -> bool) -> Option<usize> {
    let last = buf.len().checked_sub(RECORD_HEADER)?;
    (from..=last).find(|&p| {
        let len = be::u32_at(buf, p) as usize;
        len >= 12
            && p + 8 + len <= buf.len()
            && accept(be::u64_at(buf, p + 8))
            && crc32fast::hash(&buf[p + 8..p + 8 + len]) == be::u32_at(buf, p + 4)
    })
}

pub(crate) fn footer_len(runs: usize) -> u64 {
    (runs * FOOTER_RUN + FOOTER_TAIL) as u64
}

pub(crate) fn encode_ack_batch(seqs: &[u64], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&(seqs.len() as u32).to_be_bytes());
    out.extend_from_slice(&[0u8; 4]);
    for s in seqs {
        out.extend_from_slice(&s.to_be_bytes());
    }
    let crc = crc32fast::hash(&out[start + ACK_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
}

/// What a scan of an ack file found.
#[derive(Debug, Default)]
pub(crate) struct AckScan {
    /// The acked seqs of every valid batch.
    pub(crate) seqs: Vec<u64>,
    /// End of the last valid batch: what follows is a torn tail.
    pub(crate) valid_end: usize,
    /// Damaged byte ranges between valid batches (skipped).
    pub(crate) damaged: Vec<(usize, usize)>,
}

/// The valid ack batches of an ack file. A damaged batch in the middle is skipped up to the next
/// valid batch whose seqs all satisfy `plausible` (in the segment's range: a stricter test for a
/// batch found by searching than for one that follows a valid batch, which may name seqs cut off
/// the segment since); if none follows, it starts the torn tail.
pub(crate) fn parse_acks(buf: &[u8], plausible: impl Fn(u64) -> bool) -> AckScan {
    let mut scan = AckScan::default();
    let mut pos = 0;
    let any = |_: u64| true;
    while pos < buf.len() {
        match ack_batch_at(buf, pos, &any) {
            Some(end) => {
                scan.seqs.extend(
                    buf[pos + ACK_HEADER..end]
                        .chunks_exact(8)
                        .map(|c| be::u64_at(c, 0)),
                );
                pos = end;
                scan.valid_end = end;
            }
            None => match (pos + 1..buf.len()).find(|&p| ack_batch_at(buf, p, &plausible).is_some()) {
                Some(next) => {
                    scan.damaged.push((pos, next));
                    pos = next;
                }
                None => break,
            },
        }
    }
    scan
}

/// The end of a valid ack batch starting at `pos` whose seqs all satisfy `plausible`.
fn ack_batch_at(buf: &[u8], pos: usize, plausible: &impl Fn(u64) -> bool) -> Option<usize> {
    if buf.len() - pos < ACK_HEADER + 8 {
        return None;
    }
    let n = be::u32_at(buf, pos) as usize;
    let end = n.checked_mul(8)?.checked_add(pos + ACK_HEADER)?;
    if n == 0 || end > buf.len() || !plausible(be::u64_at(buf, pos + ACK_HEADER)) {
        return None;
    }
    let body = &buf[pos + ACK_HEADER..end];
    if crc32fast::hash(body) != be::u32_at(buf, pos + 4) {
        return None;
    }
    body.chunks_exact(8)
        .all(|c| plausible(be::u64_at(c, 0)))
        .then_some(end)
}

/// The queue's definition copy beside its segments: `queue.def`.
pub(crate) const DEF_FILE: &str = "queue.def";
/// `[DEF_MAGIC][len u32 BE][crc32 u32 BE of the payload][payload: postcard QueueRecord]`.
const DEF_MAGIC: &[u8; 8] = b"MRQDEF1\n";

pub(crate) fn encode_def(rec: &QueueRecord) -> Result<Vec<u8>> {
    let payload = codec::encode(rec)?;
    let mut v = Vec::with_capacity(16 + payload.len());
    v.extend_from_slice(DEF_MAGIC);
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    v.extend_from_slice(&payload);
    Ok(v)
}

/// The definition in a `queue.def`'s bytes, if they are whole and check out.
pub(crate) fn decode_def(b: &[u8]) -> Option<QueueRecord> {
    if b.len() < 16 || &b[..8] != DEF_MAGIC {
        return None;
    }
    let len = be::u32_at(b, 8) as usize;
    let payload = b.get(16..16usize.checked_add(len)?)?;
    if b.len() != 16 + len || crc32fast::hash(payload) != be::u32_at(b, 12) {
        return None;
    }
    codec::decode("queue definition copy", payload).ok()
}
