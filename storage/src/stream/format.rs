//! On-disk formats of a stream: records in segment files and the chunk index beside each segment.
//! docs/storage-format.md ("Streams") describes them; every integer is big-endian and read through
//! `crate::be`.
//!
//! ```text
//! record = [len u32][crc32 u32][offset u64][timestamp_ms u64][filter_len u8][filter][message value]
//!          len counts everything after the crc; the crc covers the same bytes; the top bit of len is the
//!          round mark (`ROUND_MARK`), never part of the length
//! index entry = [offset u64][timestamp_ms u64][position u64][crc32 u32 of the 24 bytes before]
//! ```

use std::path::{Path, PathBuf};

use crate::codec::MessageParts;
#[cfg(test)]
use crate::StoredMessage;
use crate::{be, codec, Result, StoreError};

/// `[len][crc]`.
pub(crate) const FRAME: usize = 8;
/// Fixed part after the frame: offset, timestamp, filter length.
pub(crate) const FIXED: usize = 17;
pub(crate) const IDX_ENTRY: usize = 28;
/// Longest filter value kept with a record (RabbitMQ's filter values are short strings).
pub(crate) const FILTER_MAX: usize = 255;

pub(crate) fn stream_dir_name(id: u32) -> String {
    format!("{id:08x}")
}

pub(crate) fn seg_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:016x}.seg"))
}

pub(crate) fn idx_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:016x}.idx"))
}

/// Appends one record; returns its length. On error `out` is unchanged.
pub(crate) fn encode_record_into(
    out: &mut Vec<u8>,
    offset: u64,
    ts: u64,
    filter: Option<&[u8]>,
    msg: &MessageParts<'_>,
) -> Result<usize> {
    let start = out.len();
    let filter = filter.unwrap_or_default();
    let filter = &filter[..filter.len().min(FILTER_MAX)];
    out.extend_from_slice(&[0u8; FRAME]);
    out.extend_from_slice(&offset.to_be_bytes());
    out.extend_from_slice(&ts.to_be_bytes());
    out.push(filter.len() as u8);
    out.extend_from_slice(filter);
    let len = codec::encode_parts_into(out, msg).and_then(|_| record_len(out.len() - start - FRAME));
    let len = match len {
        Ok(len) => len,
        Err(e) => {
            out.truncate(start);
            return Err(e);
        }
    };
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(out.len() - start)
}

/// A record's header as found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHead {
    /// Whole record length, frame included.
    pub(crate) total: usize,
    pub(crate) offset: u64,
    pub(crate) ts: u64,
    /// The filter value: `buf[FRAME + FIXED .. FRAME + FIXED + filter_len]`.
    pub(crate) filter_len: usize,
    /// It carries the round mark (`ROUND_MARK`).
    pub(crate) marked: bool,
}

/// The round mark, the top bit of a record's length field (a length is at most `RECORD_MAX`, 2^30, so the
/// bit is never part of one; the crc does not cover the field, so setting it needs no new crc). The flusher
/// sets it on the first record of a round's write when every byte before that record in the segment was
/// already synced (`StreamLog::collect_for_sync`). A marked record on disk therefore proves that what
/// precedes it was durable before it was written: recovery may cross damage before it (media damage, not a
/// torn write; `recovery::scan_records`).
pub(crate) const ROUND_MARK: u32 = 1 << 31;

/// Sets the round mark on the record at the start of `rec`.
pub(crate) fn mark_round(rec: &mut [u8]) {
    rec[0] |= (ROUND_MARK >> 24) as u8;
}

impl RecordHead {
    pub(crate) fn filter<'a>(&self, rec: &'a [u8]) -> Option<&'a [u8]> {
        (self.filter_len > 0).then(|| &rec[FRAME + FIXED..FRAME + FIXED + self.filter_len])
    }

    pub(crate) fn value<'a>(&self, rec: &'a [u8]) -> &'a [u8] {
        &rec[FRAME + FIXED + self.filter_len..self.total]
    }
}

/// Largest record accepted when parsing (a bigger length is garbage).
pub(crate) const RECORD_MAX: usize = 1 << 30;

/// A record's length field: never more than `parse_record` accepts (recovery would take a longer record
/// for garbage and lose it; the broker's `max_message_size` stays far below).
fn record_len(len: usize) -> Result<u32> {
    if len <= RECORD_MAX {
        Ok(len as u32)
    } else {
        Err(StoreError::Corrupt(format!(
            "a stream record of {len} bytes: at most {RECORD_MAX} can be stored"
        )))
    }
}

/// The whole length (frame included) that the record at the start of `buf` (at least `FRAME` bytes) claims,
/// the round mark left out; None if no record can be that long or short.
pub(crate) fn claimed_total(buf: &[u8]) -> Option<usize> {
    let len = (be::u32_at(buf, 0) & !ROUND_MARK) as usize;
    (FIXED..=RECORD_MAX).contains(&len).then_some(FRAME + len)
}

/// The record at the start of `buf`: `Ok(Some)` if whole and its crc checks out, `Ok(None)` if it
/// is garbage, `Err(needed)` if `buf` holds only its first part.
pub(crate) fn parse_record(buf: &[u8]) -> Result<Option<RecordHead>, usize> {
    if buf.len() < FRAME {
        return Err(FRAME + FIXED);
    }
    let Some(total) = claimed_total(buf) else {
        return Ok(None);
    };
    let len = total - FRAME;
    if buf.len() < total {
        return Err(total);
    }
    let crc = be::u32_at(buf, 4);
    if crc32fast::hash(&buf[FRAME..total]) != crc {
        return Ok(None);
    }
    let filter_len = buf[FRAME + 16] as usize;
    if FIXED + filter_len > len {
        return Ok(None);
    }
    Ok(Some(RecordHead {
        total,
        offset: be::u64_at(buf, FRAME),
        ts: be::u64_at(buf, FRAME + 8),
        filter_len,
        marked: be::u32_at(buf, 0) & ROUND_MARK != 0,
    }))
}

/// The next position at or after `from` where a whole record with an offset above `after` starts.
pub(crate) fn find_record(buf: &[u8], from: usize, after: Option<u64>) -> Option<usize> {
    (from..buf.len().saturating_sub(FRAME + FIXED - 1))
        .find(|&p| matches!(parse_record(&buf[p..]), Ok(Some(h)) if after.is_none_or(|a| h.offset > a)))
}

#[cfg(test)]
pub(crate) fn decode_value(value: &[u8]) -> Result<StoredMessage> {
    codec::decode_message(bytes::Bytes::copy_from_slice(value))
}

/// One chunk's entry in a segment's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct IdxEntry {
    pub(crate) offset: u64,
    pub(crate) ts: u64,
    pub(crate) pos: u64,
}

pub(crate) fn encode_idx(e: IdxEntry, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&e.offset.to_be_bytes());
    out.extend_from_slice(&e.ts.to_be_bytes());
    out.extend_from_slice(&e.pos.to_be_bytes());
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// The valid prefix of an index file: entries whose crc checks out, offsets and positions
/// increasing, positions below `data_len`.
pub(crate) fn parse_idx(buf: &[u8], data_len: u64) -> Vec<IdxEntry> {
    let mut out: Vec<IdxEntry> = Vec::with_capacity(buf.len() / IDX_ENTRY);
    for e in buf.chunks_exact(IDX_ENTRY) {
        if crc32fast::hash(&e[..24]) != be::u32_at(e, 24) {
            break;
        }
        let entry = IdxEntry {
            offset: be::u64_at(e, 0),
            ts: be::u64_at(e, 8),
            pos: be::u64_at(e, 16),
        };
        if entry.pos >= data_len
            || out
                .last()
                .is_some_and(|l| entry.offset <= l.offset || entry.pos <= l.pos)
        {
            break;
        }
        out.push(entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(body: &'static str) -> StoredMessage {
        StoredMessage {
            exchange: "x".into(),
            routing_key: "k".into(),
            properties: Bytes::new(),
            body: Bytes::from_static(body.as_bytes()),
            delivery_count: 0,
            published_at_ms: 5,
            expires_at_ms: None,
            not_before_ms: None,
        }
    }

    #[test]
    fn record_round_trip_and_damage() {
        let mut b = Vec::new();
        let n = encode_record_into(&mut b, 7, 99, Some(b"eu"), &MessageParts::of(&msg("hello"))).unwrap();
        assert_eq!(n, b.len());
        let h = parse_record(&b).unwrap().unwrap();
        assert_eq!((h.offset, h.ts, h.total), (7, 99, n));
        assert_eq!(h.filter(&b), Some(&b"eu"[..]));
        assert_eq!(decode_value(h.value(&b)).unwrap().body, "hello");
        assert_eq!(parse_record(&b[..n - 1]), Err(n));
        assert!(!h.marked);
        let mut marked = b.clone();
        mark_round(&mut marked);
        assert_eq!(
            parse_record(&marked),
            Ok(Some(RecordHead { marked: true, ..h })),
            "the mark is no part of the length and needs no new crc"
        );
        let mut bad = b.clone();
        bad[n - 1] ^= 1;
        assert_eq!(parse_record(&bad), Ok(None));
        let m = b.len();
        encode_record_into(&mut b, 8, 100, None, &MessageParts::of(&msg("x"))).unwrap();
        assert_eq!(find_record(&bad, 1, None), None);
        assert_eq!(find_record(&b, 1, Some(7)), Some(m));
    }

    #[test]
    fn no_record_is_written_longer_than_recovery_reads() {
        assert_eq!(record_len(FIXED).unwrap(), FIXED as u32);
        assert_eq!(record_len(RECORD_MAX).unwrap(), RECORD_MAX as u32);
        assert!(record_len(RECORD_MAX + 1).is_err());
        // what parse_record makes of the two lengths
        let mut head = vec![0u8; FRAME + FIXED];
        head[..4].copy_from_slice(&(RECORD_MAX as u32).to_be_bytes());
        assert_eq!(
            parse_record(&head),
            Err(FRAME + RECORD_MAX),
            "read on: a record to finish"
        );
        head[..4].copy_from_slice(&(RECORD_MAX as u32 + 1).to_be_bytes());
        assert_eq!(parse_record(&head), Ok(None), "garbage");
    }

    #[test]
    fn index_prefix_stops_at_damage() {
        let mut b = Vec::new();
        for i in 0..4u64 {
            encode_idx(
                IdxEntry {
                    offset: i * 10,
                    ts: i,
                    pos: i * 100,
                },
                &mut b,
            );
        }
        assert_eq!(parse_idx(&b, 1000).len(), 4);
        assert_eq!(parse_idx(&b, 250).len(), 3, "positions beyond the data");
        b[IDX_ENTRY * 2 + 3] ^= 1;
        assert_eq!(parse_idx(&b, 1000).len(), 2);
        assert_eq!(parse_idx(&b[..IDX_ENTRY + 5], 1000).len(), 1, "torn tail");
    }
}
