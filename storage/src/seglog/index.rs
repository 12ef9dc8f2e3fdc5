//! The in-memory index of a segment: the runs of seqs it holds and one ack bit per record.

#[derive(Debug, Clone, Copy)]
pub(crate) struct Run {
    pub(crate) start: u64,
    pub(crate) len: u32,
    /// Rank (record index in the segment) of `start`.
    pub(crate) rank0: u32,
}

impl Run {
    pub(crate) fn last(&self) -> u64 {
        self.start + (self.len as u64 - 1)
    }
}

/// The seqs a segment holds, as runs of consecutive seqs (one run when a queue's messages are all
/// persistent). A record's rank is its index in the segment.
#[derive(Debug, Default)]
pub(crate) struct Seqs {
    pub(crate) runs: Vec<Run>,
    pub(crate) n: u32,
}

impl Seqs {
    pub(crate) fn last(&self) -> Option<u64> {
        self.runs.last().map(Run::last)
    }

    pub(crate) fn push(&mut self, seq: u64) {
        match self.runs.last_mut() {
            Some(r) if r.last().checked_add(1) == Some(seq) => r.len += 1,
            _ => self.runs.push(Run {
                start: seq,
                len: 1,
                rank0: self.n,
            }),
        }
        self.n += 1;
    }

    pub(crate) fn rank(&self, seq: u64) -> Option<u32> {
        let i = self.runs.partition_point(|r| r.start <= seq);
        let r = self.runs.get(i.checked_sub(1)?)?;
        let off = seq - r.start;
        (off < r.len as u64).then(|| r.rank0 + off as u32)
    }

    pub(crate) fn seq_at(&self, rank: u32) -> u64 {
        let i = self.runs.partition_point(|r| r.rank0 <= rank) - 1;
        let r = self.runs[i];
        r.start + (rank - r.rank0) as u64
    }

    /// Keep the first `n` records.
    pub(crate) fn truncate(&mut self, n: u32) {
        while let Some(r) = self.runs.last_mut() {
            if r.rank0 >= n {
                self.runs.pop();
            } else {
                r.len = r.len.min(n - r.rank0);
                break;
            }
        }
        self.n = self.n.min(n);
    }
}

/// One bit per record (by rank): acked. Words past the end are zero.
#[derive(Debug, Default)]
pub(crate) struct Bits(Vec<u64>);

impl Bits {
    pub(crate) fn get(&self, i: u32) -> bool {
        self.0
            .get(i as usize / 64)
            .is_some_and(|w| (w >> (i % 64)) & 1 == 1)
    }

    pub(crate) fn set(&mut self, i: u32) {
        let w = i as usize / 64;
        if w >= self.0.len() {
            self.0.resize(w + 1, 0);
        }
        self.0[w] |= 1 << (i % 64);
    }

    pub(crate) fn truncate(&mut self, n: u32) {
        self.0.truncate((n as usize).div_ceil(64));
        if !n.is_multiple_of(64) {
            if let Some(w) = self.0.get_mut(n as usize / 64) {
                *w &= (1u64 << (n % 64)) - 1;
            }
        }
    }

    /// The first clear bit below `n`.
    pub(crate) fn first_clear(&self, n: u32) -> Option<u32> {
        for (wi, &w) in self.0.iter().enumerate() {
            if w != u64::MAX {
                let i = wi as u64 * 64 + (!w).trailing_zeros() as u64;
                return (i < n as u64).then_some(i as u32);
            }
        }
        let i = self.0.len() as u64 * 64;
        (i < n as u64).then_some(i as u32)
    }

    /// The last clear bit below `n`.
    pub(crate) fn last_clear(&self, n: u32) -> Option<u32> {
        let mut i = n.checked_sub(1)?;
        loop {
            let wi = i as usize / 64;
            let w = self.0.get(wi).copied().unwrap_or(0);
            let bit = i % 64;
            let mask = if bit == 63 {
                u64::MAX
            } else {
                (1u64 << (bit + 1)) - 1
            };
            let clear = !w & mask;
            if clear != 0 {
                return Some(wi as u32 * 64 + 63 - clear.leading_zeros());
            }
            if wi == 0 {
                return None;
            }
            i = wi as u32 * 64 - 1;
        }
    }
}
