//! Checked big-endian reads from a `Bytes` cursor. Every read fails with
//! [`ProtocolError::Malformed`] instead of panicking when the input is short.

use bytes::{Buf, Bytes};

use crate::error::ProtocolError;

pub(crate) const TRUNCATED: ProtocolError = ProtocolError::Malformed("truncated");

#[inline]
pub(crate) fn need(src: &Bytes, n: usize) -> Result<(), ProtocolError> {
    if src.len() < n {
        Err(TRUNCATED)
    } else {
        Ok(())
    }
}

#[inline]
pub(crate) fn get_u8(src: &mut Bytes) -> Result<u8, ProtocolError> {
    need(src, 1)?;
    Ok(src.get_u8())
}

#[inline]
pub(crate) fn get_u16(src: &mut Bytes) -> Result<u16, ProtocolError> {
    need(src, 2)?;
    Ok(src.get_u16())
}

#[inline]
pub(crate) fn get_u32(src: &mut Bytes) -> Result<u32, ProtocolError> {
    need(src, 4)?;
    Ok(src.get_u32())
}

#[inline]
pub(crate) fn get_u64(src: &mut Bytes) -> Result<u64, ProtocolError> {
    need(src, 8)?;
    Ok(src.get_u64())
}

/// Splits off `n` bytes (zero-copy).
#[inline]
pub(crate) fn take(src: &mut Bytes, n: usize) -> Result<Bytes, ProtocolError> {
    need(src, n)?;
    Ok(src.split_to(n))
}

pub(crate) fn skip_shortstr(src: &mut Bytes) -> Result<(), ProtocolError> {
    let n = get_u8(src)? as usize;
    need(src, n)?;
    src.advance(n);
    Ok(())
}

pub(crate) fn skip_longstr(src: &mut Bytes) -> Result<(), ProtocolError> {
    let n = get_u32(src)? as usize;
    need(src, n)?;
    src.advance(n);
    Ok(())
}

/// A cursor over a byte slice for walks that must not allocate (property accessors).
pub(crate) struct SliceCursor<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> SliceCursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        SliceCursor { buf, pos: 0 }
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}
