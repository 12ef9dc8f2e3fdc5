//! Per-exchange routing indexes: destination sets, the topic trie.

use ahash::AHashMap;

/// Internal destination handle: slab ids of queues and exchanges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DestId {
    Queue(u32),
    Exchange(u32),
}

const INDEX_THRESHOLD: usize = 8;

/// A multiset of destinations (a destination may be reached by several
/// bindings that differ only in their arguments), iterable in O(len) and
/// editable in O(1).
#[derive(Debug, Default)]
pub struct DestSet {
    items: Vec<(DestId, u32)>,
    pos: Option<Box<AHashMap<DestId, u32>>>,
}

impl DestSet {
    fn find(&self, d: DestId) -> Option<usize> {
        match &self.pos {
            Some(m) => m.get(&d).map(|&p| p as usize),
            None => self.items.iter().position(|(x, _)| *x == d),
        }
    }

    pub fn add(&mut self, d: DestId) {
        if let Some(i) = self.find(d) {
            self.items[i].1 += 1;
            return;
        }
        self.items.push((d, 1));
        let n = self.items.len();
        match &mut self.pos {
            Some(m) => {
                m.insert(d, (n - 1) as u32);
            }
            None if n > INDEX_THRESHOLD => {
                let m: AHashMap<DestId, u32> = self
                    .items
                    .iter()
                    .enumerate()
                    .map(|(i, (d, _))| (*d, i as u32))
                    .collect();
                self.pos = Some(Box::new(m));
            }
            None => {}
        }
    }

    /// Drops one reference to `d`. Returns false if `d` was not present.
    pub fn remove(&mut self, d: DestId) -> bool {
        let Some(i) = self.find(d) else { return false };
        self.items[i].1 -= 1;
        if self.items[i].1 == 0 {
            self.items.swap_remove(i);
            if let Some(m) = &mut self.pos {
                m.remove(&d);
                if i < self.items.len() {
                    m.insert(self.items[i].0, i as u32);
                }
                if self.items.len() < INDEX_THRESHOLD / 2 {
                    self.pos = None;
                }
            }
        }
        true
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    #[inline]
    pub fn iter(&self) -> impl Iterator<Item = DestId> + '_ {
        self.items.iter().map(|(d, _)| *d)
    }
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Default)]
struct Node {
    lit: AHashMap<Box<str>, u32>,
    star: u32,
    hash: u32,
    dests: DestSet,
    parent: u32,
    /// How this node hangs off its parent (for pruning).
    edge: Edge,
}

#[derive(Debug, Default, Clone)]
enum Edge {
    #[default]
    Root,
    Lit(Box<str>),
    Star,
    Hash,
}

impl Node {
    fn new(parent: u32, edge: Edge) -> Node {
        Node {
            lit: AHashMap::new(),
            star: NONE,
            hash: NONE,
            dests: DestSet::default(),
            parent,
            edge,
        }
    }
    fn is_empty(&self) -> bool {
        self.lit.is_empty() && self.star == NONE && self.hash == NONE && self.dests.is_empty()
    }
}

/// Splits a topic key the way RabbitMQ does: `""` has no words, otherwise
/// split on every `.` (so `"a."` is `["a", ""]`).
pub fn split_words(key: &str) -> impl Iterator<Item = &str> {
    let mut it = key.split('.');
    if key.is_empty() {
        it.next();
    }
    it
}

/// Scratch space for trie walks, reused across calls (and across tries:
/// the marks are stamped with a counter that only ever grows, so marks left
/// by another trie or an earlier call never look current).
#[derive(Debug, Default)]
pub struct TrieScratch {
    words: Vec<(u32, u32)>,
    /// Nodes active at the current word position.
    cur: Vec<u32>,
    /// Nodes active at the next word position.
    next: Vec<u32>,
    /// Per node: the stamp of the position it was last added at.
    mark: Vec<u32>,
    stamp: u32,
    /// (node, position) states visited by the last walk.
    visited: usize,
}

impl TrieScratch {
    /// The number of (trie node, word position) states the last
    /// [`TopicTrie::route`] visited; at most nodes × (words + 1).
    pub fn visited_states(&self) -> usize {
        self.visited
    }
}

/// A trie of binding patterns; `*` and `#` are edges of their own.
/// Consecutive `#` words are collapsed (`#.#` ≡ `#`), which keeps walks
/// linear in such patterns without changing what they match.
#[derive(Debug)]
pub struct TopicTrie {
    nodes: Vec<Node>,
    free: Vec<u32>,
    len: usize,
}

impl Default for TopicTrie {
    fn default() -> Self {
        TopicTrie {
            nodes: vec![Node::new(NONE, Edge::Root)],
            free: Vec::new(),
            len: 0,
        }
    }
}

fn canonical_words(pattern: &str) -> impl Iterator<Item = &str> {
    let mut prev_hash = false;
    split_words(pattern).filter(move |w| {
        let h = *w == "#";
        let keep = !(h && prev_hash);
        prev_hash = h;
        keep
    })
}

impl TopicTrie {
    fn alloc(&mut self, parent: u32, edge: Edge) -> u32 {
        let n = Node::new(parent, edge);
        if let Some(i) = self.free.pop() {
            self.nodes[i as usize] = n;
            i
        } else {
            self.nodes.push(n);
            (self.nodes.len() - 1) as u32
        }
    }

    pub fn add(&mut self, pattern: &str, d: DestId) {
        let mut cur = 0u32;
        for w in canonical_words(pattern) {
            let node = &self.nodes[cur as usize];
            let next = match w {
                "*" => node.star,
                "#" => node.hash,
                _ => node.lit.get(w).copied().unwrap_or(NONE),
            };
            cur = if next != NONE {
                next
            } else {
                let edge = match w {
                    "*" => Edge::Star,
                    "#" => Edge::Hash,
                    _ => Edge::Lit(w.into()),
                };
                let n = self.alloc(cur, edge.clone());
                let node = &mut self.nodes[cur as usize];
                match edge {
                    Edge::Star => node.star = n,
                    Edge::Hash => node.hash = n,
                    Edge::Lit(w) => {
                        node.lit.insert(w, n);
                    }
                    Edge::Root => unreachable!(),
                }
                n
            };
        }
        self.nodes[cur as usize].dests.add(d);
        self.len += 1;
    }

    pub fn remove(&mut self, pattern: &str, d: DestId) -> bool {
        let mut cur = 0u32;
        for w in canonical_words(pattern) {
            let node = &self.nodes[cur as usize];
            cur = match w {
                "*" => node.star,
                "#" => node.hash,
                _ => node.lit.get(w).copied().unwrap_or(NONE),
            };
            if cur == NONE {
                return false;
            }
        }
        if !self.nodes[cur as usize].dests.remove(d) {
            return false;
        }
        self.len -= 1;
        // Prune empty nodes up to the root.
        while cur != 0 && self.nodes[cur as usize].is_empty() {
            let node = &mut self.nodes[cur as usize];
            let parent = node.parent;
            let edge = std::mem::take(&mut node.edge);
            node.lit = AHashMap::new();
            let p = &mut self.nodes[parent as usize];
            match edge {
                Edge::Star => p.star = NONE,
                Edge::Hash => p.hash = NONE,
                Edge::Lit(w) => {
                    p.lit.remove(&w);
                }
                Edge::Root => unreachable!(),
            }
            self.free.push(cur);
            cur = parent;
        }
        true
    }

    /// Calls `emit` for the destinations of every matching pattern (a
    /// destination may be reported more than once).
    ///
    /// A simulation of the trie as an NFA over word positions: the set of
    /// nodes active after `i` words, each node at most once per position
    /// (a `#` node keeps itself active as it swallows words). So a walk
    /// visits at most nodes × (words + 1) states, whatever the patterns:
    /// a depth-first walk that tries every way a `#` can split the key is
    /// exponential in the number of `#`s (`#.a.#.a.….z` against `a.a.….a`).
    pub fn route(&self, key: &str, s: &mut TrieScratch, emit: &mut impl FnMut(DestId)) {
        s.visited = 0;
        if self.len == 0 {
            return;
        }
        s.words.clear();
        if !key.is_empty() {
            let mut start = 0u32;
            for (i, b) in key.bytes().enumerate() {
                if b == b'.' {
                    s.words.push((start, i as u32));
                    start = i as u32 + 1;
                }
            }
            s.words.push((start, key.len() as u32));
        }
        let n = s.words.len();
        if s.mark.len() < self.nodes.len() {
            s.mark.resize(self.nodes.len(), 0);
        }
        // This walk uses stamps s.stamp + 1 ..= s.stamp + n + 1 and leaves
        // s.stamp at the last one used.
        if s.stamp as u64 + n as u64 + 2 >= u32::MAX as u64 {
            s.mark.iter_mut().for_each(|m| *m = 0);
            s.stamp = 0;
        }
        s.stamp += 1;
        s.cur.clear();
        s.next.clear();
        s.mark[0] = s.stamp;
        s.cur.push(0);
        let mut i = 0usize;
        loop {
            let stamp = s.stamp;
            let next_stamp = stamp + 1;
            let last = i == n;
            let word = if last {
                ""
            } else {
                let (a, b) = s.words[i];
                &key[a as usize..b as usize]
            };
            // `cur` grows while it is scanned: `#` children join the
            // position their parent is at (the `#` matching zero words).
            let mut k = 0;
            while k < s.cur.len() {
                let id = s.cur[k];
                k += 1;
                let node = &self.nodes[id as usize];
                if node.hash != NONE && s.mark[node.hash as usize] != stamp {
                    s.mark[node.hash as usize] = stamp;
                    s.cur.push(node.hash);
                }
                if last {
                    for d in node.dests.iter() {
                        emit(d);
                    }
                    continue;
                }
                let mut advance = |c: u32| {
                    if s.mark[c as usize] != next_stamp {
                        s.mark[c as usize] = next_stamp;
                        s.next.push(c);
                    }
                };
                if matches!(node.edge, Edge::Hash) {
                    // `#` swallows this word and stays.
                    advance(id);
                }
                if node.star != NONE {
                    advance(node.star);
                }
                if !node.lit.is_empty() {
                    if let Some(&c) = node.lit.get(word) {
                        advance(c);
                    }
                }
            }
            s.visited += s.cur.len();
            if last {
                break;
            }
            std::mem::swap(&mut s.cur, &mut s.next);
            s.next.clear();
            s.stamp = next_stamp;
            if s.cur.is_empty() {
                break;
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(t: &TopicTrie, key: &str, s: &mut TrieScratch) -> Vec<DestId> {
        let mut out = Vec::new();
        t.route(key, s, &mut |d| out.push(d));
        out.sort_by_key(|d| match d {
            DestId::Queue(q) | DestId::Exchange(q) => *q,
        });
        out.dedup();
        out
    }

    /// `#.a.` × 12 then `z` against 60 `a`s: a walk that tries every split
    /// of the key among the `#`s is exponential here (it never finished);
    /// the position-by-position walk visits each (node, position) once.
    #[test]
    fn many_hashes_against_a_long_key_stay_polynomial() {
        let mut t = TopicTrie::default();
        let pattern = format!("{}z", "#.a.".repeat(12));
        t.add(&pattern, DestId::Queue(1));
        let nodes = t.nodes.len();
        assert_eq!(nodes, 1 + 24 + 1);
        let mut s = TrieScratch::default();
        let key = vec!["a"; 60].join(".");
        assert!(matches(&t, &key, &mut s).is_empty());
        assert!(s.visited_states() <= nodes * 61, "{}", s.visited_states());
        assert!(s.visited_states() > 0);
        let key_z = format!("{key}.z");
        assert_eq!(matches(&t, &key_z, &mut s), [DestId::Queue(1)]);
        assert!(s.visited_states() <= nodes * 62, "{}", s.visited_states());
        // Exactly twelve `a`s are needed before the `z`.
        let short = format!("{}z", "a.".repeat(11));
        assert!(matches(&t, &short, &mut s).is_empty());
        let enough = format!("{}z", "x.a.".repeat(12));
        assert_eq!(matches(&t, &enough, &mut s), [DestId::Queue(1)]);
        // Other patterns in the same trie are unaffected.
        t.add("a.#", DestId::Queue(2));
        t.add("#", DestId::Queue(3));
        assert_eq!(
            matches(&t, &key_z, &mut s),
            [DestId::Queue(1), DestId::Queue(2), DestId::Queue(3)]
        );
        assert_eq!(matches(&t, "", &mut s), [DestId::Queue(3)]);
    }

    /// Marks survive across tries and calls without false positives, and
    /// the stamp counter wraps safely.
    #[test]
    fn scratch_is_reusable_across_tries_and_stamp_wrap() {
        let mut a = TopicTrie::default();
        a.add("x.*.z", DestId::Queue(1));
        a.add("#.z", DestId::Queue(2));
        let mut b = TopicTrie::default();
        b.add("*", DestId::Queue(3));
        let mut s = TrieScratch::default();
        for round in 0..3 {
            if round == 2 {
                s.stamp = u32::MAX - 3;
            }
            assert_eq!(matches(&a, "x.y.z", &mut s), [DestId::Queue(1), DestId::Queue(2)]);
            assert_eq!(matches(&b, "x", &mut s), [DestId::Queue(3)]);
            assert!(matches(&b, "x.y", &mut s).is_empty());
            assert_eq!(matches(&a, "z", &mut s), [DestId::Queue(2)]);
        }
    }
}
