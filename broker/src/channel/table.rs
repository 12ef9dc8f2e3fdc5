//! A connection's open channels, indexed by channel number. Every frame looks its channel up, so the lookup
//! is an index into a vector (channel numbers are small: at most the negotiated channel-max, 2047 by
//! default) instead of a hash; the open numbers are also kept in a list, so that the passes over every
//! channel a connection makes on each wake-up cost one step per open channel, not per slot.

use super::Channel;

#[derive(Default)]
pub struct ChannelTable {
    /// `slots[n]`: channel `n`, boxed so that an unused slot is one word.
    slots: Vec<Option<Box<Channel>>>,
    /// The open channel numbers, in the order they were opened.
    open: Vec<u16>,
}

impl ChannelTable {
    pub fn new() -> ChannelTable {
        ChannelTable::default()
    }

    #[inline]
    pub fn get_mut(&mut self, ch: u16) -> Option<&mut Channel> {
        self.slots.get_mut(ch as usize).and_then(|s| s.as_deref_mut())
    }

    pub fn contains(&self, ch: u16) -> bool {
        self.slots.get(ch as usize).is_some_and(Option::is_some)
    }

    /// Opens `ch` with `channel`; a channel already open under that number is replaced.
    pub fn insert(&mut self, ch: u16, channel: Channel) {
        let i = ch as usize;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, || None);
        }
        if self.slots[i].replace(Box::new(channel)).is_none() {
            self.open.push(ch);
        }
    }

    /// `ch`, opened with `open` if it is not open.
    pub fn get_or_insert_with(&mut self, ch: u16, open: impl FnOnce() -> Channel) -> &mut Channel {
        if !self.contains(ch) {
            self.insert(ch, open());
        }
        match self.get_mut(ch) {
            Some(c) => c,
            None => unreachable!("channel {ch} inserted above"),
        }
    }

    pub fn remove(&mut self, ch: u16) -> Option<Channel> {
        let c = self.slots.get_mut(ch as usize)?.take()?;
        self.open.retain(|&n| n != ch);
        Some(*c)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn values(&self) -> impl Iterator<Item = &Channel> {
        self.open
            .iter()
            .filter_map(|&n| self.slots[n as usize].as_deref())
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Channel> {
        // Each open channel has its own slot: walk the slots (in channel-number order) and keep the open ones.
        self.slots.iter_mut().filter_map(|s| s.as_deref_mut())
    }

    /// Keeps the channels for which `keep` returns true (asked in the order they were opened).
    pub fn retain(&mut self, mut keep: impl FnMut(u16, &mut Channel) -> bool) {
        let mut i = 0;
        while i < self.open.len() {
            let n = self.open[i];
            let keep_it = match self.slots[n as usize].as_deref_mut() {
                Some(c) => keep(n, c),
                None => false,
            };
            if keep_it {
                i += 1;
            } else {
                self.slots[n as usize] = None;
                self.open.remove(i);
            }
        }
    }

    /// Takes every channel out, in the order they were opened.
    pub fn drain(&mut self) -> impl Iterator<Item = (u16, Channel)> + '_ {
        let open = std::mem::take(&mut self.open);
        let slots = &mut self.slots;
        open.into_iter()
            .filter_map(move |n| slots[n as usize].take().map(|c| (n, *c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Output;

    fn open(n: u16) -> Channel {
        let mut out = Output::default();
        Channel::open(n, &mut out)
    }

    #[test]
    fn lookups_inserts_removals_and_passes_agree_with_a_map() {
        let mut t = ChannelTable::new();
        let mut model = std::collections::BTreeSet::new();
        // A fixed pseudo-random walk over numbers 0..40 and 2040..2047.
        let mut x: u32 = 12345;
        for _ in 0..2000 {
            x = x.wrapping_mul(1103515245).wrapping_add(12345);
            let n = if x.is_multiple_of(5) {
                2040 + (x >> 8) % 8
            } else {
                (x >> 8) % 40
            } as u16;
            match (x >> 16) % 4 {
                0 | 1 => {
                    t.get_or_insert_with(n, || open(n));
                    model.insert(n);
                }
                2 => assert_eq!(t.remove(n).is_some(), model.remove(&n)),
                _ => t.retain(|c, _| {
                    let keep = c % 3 != 0;
                    if !keep {
                        model.remove(&c);
                    }
                    keep
                }),
            }
            assert_eq!(t.len(), model.len());
            assert_eq!(t.contains(n), model.contains(&n));
            assert_eq!(t.get_mut(n).is_some(), model.contains(&n));
            assert_eq!(t.values().count(), model.len());
            assert_eq!(t.values_mut().count(), model.len());
        }
        let drained: std::collections::BTreeSet<u16> = t.drain().map(|(n, _)| n).collect();
        assert_eq!(drained, model);
        assert!(t.is_empty());
        assert_eq!(t.values_mut().count(), 0);
    }
}
