//! Big-endian integer reads: every on-disk integer and every integer in a sled key is big-endian
//! (docs/storage-format.md). Callers check lengths first; a slice shorter than the integer is a
//! bug in the caller, not bad data.

/// The big-endian u32 at the start of `b`.
#[inline]
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

/// The big-endian u64 at offset `at` of `b`.
#[inline]
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// `b` as a big-endian u32 if it is exactly 4 bytes long (a stored value whose length is data).
#[inline]
pub(crate) fn exact_u32(b: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(b).ok().map(u32::from_be_bytes)
}

/// `b` as a big-endian u64 if it is exactly 8 bytes long.
#[inline]
pub(crate) fn exact_u64(b: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(b).ok().map(u64::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_big_endian_at_offsets() {
        let b = [0xAA, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 3, 4];
        assert_eq!(u32_at(&b, 1), 0x0000_0102);
        assert_eq!(u64_at(&b, 5), 0x0000_0000_0000_0304);
        assert_eq!(exact_u32(&b[1..5]), Some(0x102));
        assert_eq!(exact_u32(&b[1..6]), None);
        assert_eq!(exact_u64(&b[5..13]), Some(0x304));
        assert_eq!(exact_u64(&b[5..12]), None);
    }
}
