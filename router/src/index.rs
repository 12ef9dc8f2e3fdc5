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

/// Scratch space for trie walks.
#[derive(Debug, Default)]
pub struct TrieScratch {
    words: Vec<(u32, u32)>,
    stack: Vec<(u32, u32)>,
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
    pub fn route(&self, key: &str, s: &mut TrieScratch, emit: &mut impl FnMut(DestId)) {
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
        let n = s.words.len() as u32;
        s.stack.clear();
        s.stack.push((0, 0));
        while let Some((id, i)) = s.stack.pop() {
            let node = &self.nodes[id as usize];
            if node.hash != NONE {
                // `#` swallows zero or more words.
                for j in i..=n {
                    s.stack.push((node.hash, j));
                }
            }
            if i == n {
                for d in node.dests.iter() {
                    emit(d);
                }
                continue;
            }
            if node.star != NONE {
                s.stack.push((node.star, i + 1));
            }
            if !node.lit.is_empty() {
                let (a, b) = s.words[i as usize];
                if let Some(&c) = node.lit.get(&key[a as usize..b as usize]) {
                    s.stack.push((c, i + 1));
                }
            }
        }
    }
}
