//! The logic of Mailroom's fuzz targets, one module per input a client controls. Each module has a
//! `run(data)` that libFuzzer calls (see `fuzz_targets/`), documents how it reads its input, and checks
//! properties beyond "does not panic": round trips, agreement between two readings of the same bytes,
//! and reference models. `seeds` builds the seed corpora with the crates' own encoders.
//!
//! Everything here is plain Rust: the same functions run under `cargo test` (replaying the seeds) and
//! in the `gen-corpus` binary, without libFuzzer.

pub mod arguments;
pub mod content_assembly;
pub mod field_table;
pub mod frame_stream;
pub mod headers_match;
pub mod method;
pub mod properties;
pub mod sasl;
pub mod seeds;
pub mod x_death;

/// A target: its name (as in `fuzz_targets/`) and its entry point.
pub type Target = (&'static str, fn(&[u8]));

/// The targets, by name, as `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    ("frame_stream", frame_stream::run),
    ("method", method::run),
    ("field_table", field_table::run),
    ("properties", properties::run),
    ("content_assembly", content_assembly::run),
    ("sasl", sasl::run),
    ("arguments", arguments::run),
    ("headers_match", headers_match::run),
    ("x_death", x_death::run),
];

/// A cursor that turns fuzz bytes into choices; past the end every read is 0 (so short inputs still
/// mean something and libFuzzer's mutations stay local).
pub struct Input<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Input<'a> {
        Input { data, pos: 0 }
    }

    pub fn is_empty(&self) -> bool {
        self.pos >= self.data.len()
    }

    pub fn u8(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_be_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        (u64::from(self.u32()) << 32) | u64::from(self.u32())
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        let end = start.saturating_add(n).min(self.data.len());
        self.pos = self.pos.saturating_add(n);
        &self.data[start..end]
    }

    /// A length-prefixed (one octet) slice.
    pub fn small_bytes(&mut self) -> &'a [u8] {
        let n = self.u8() as usize;
        self.bytes(n)
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        let start = self.pos.min(self.data.len());
        self.pos = self.data.len();
        &self.data[start..]
    }

    pub fn choose<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.u8() as usize % items.len()]
    }
}

/// xorshift64*: the read sizes of the frame-stream target come from it.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// A field table's encoding without its length prefix, read as a table (as AMQPLAIN responses are):
/// the fuzzer then never has to get the outer length right.
pub fn table_from_body(body: &[u8]) -> Result<protocol::FieldTable, protocol::ProtocolError> {
    let mut buf = bytes::BytesMut::with_capacity(body.len() + 4);
    bytes::BufMut::put_u32(&mut buf, body.len() as u32);
    bytes::BufMut::put_slice(&mut buf, body);
    protocol::FieldTable::decode(&mut buf.freeze())
}

/// The encoding of `t` without its length prefix (the inverse of [`table_from_body`]).
pub fn table_body(t: &protocol::FieldTable) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    t.encode(&mut buf);
    buf[4..].to_vec()
}

#[cfg(test)]
mod tests {
    /// Every seed of every target runs clean without libFuzzer (a quick check that the targets and the
    /// generator agree; the real fuzzing is `make fuzz`).
    #[test]
    fn seeds_run_clean() {
        for (name, run) in super::TARGETS {
            let seeds = super::seeds::for_target(name);
            assert!(!seeds.is_empty(), "{name} has no seeds");
            for s in seeds {
                run(&s);
            }
        }
    }
}
