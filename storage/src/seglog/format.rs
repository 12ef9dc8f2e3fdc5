//! On-disk formats of the message log: file names, message records, segment footers, ack batches.
//! docs/storage-format.md describes them; every integer is big-endian and read through `crate::be`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index::{Run, Seqs};
use crate::{be, codec, Result, StoreError, StoredMessage};

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
pub(crate) fn scan_records(buf: &[u8], first: u64, next_first: Option<u64>) -> (Vec<(u64, u64)>, usize) {
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

/// The acked seqs of an ack file's valid batches, and the length of its valid prefix.
pub(crate) fn parse_acks(buf: &[u8]) -> (Vec<u64>, usize) {
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
