//! A connection's output: every frame a connection produces (replies, deliveries, confirms, heartbeats) is
//! appended to one buffer, and the connection writes the whole buffer to its socket once per wake-up. Content
//! is split to the negotiated frame_max here, so no handler needs to know it.

use bytes::BytesMut;
use protocol::{Method, RawProperties};

/// Buffer size above which the connection writes before producing more deliveries.
pub const WRITE_HIGH_WATER: usize = 1 << 20;
/// About what one batch of a classic queue's deliveries adds (`Channel::deliver` sizes its pulls to it by the
/// consumer's last deliveries), and what waiting makes the connection write before it pulls for more. Small
/// writes let the client start on the first deliveries while the broker builds the next: S2 (1 KiB,
/// prefetch 100) went from 490–510 k to 610–630 k msg/s against writes of up to 1 MiB, S1 and S5
/// unchanged, S4 3–5 % lower (docs/performance.md, "Deliveries in 16 KiB writes"). Stream replay keeps
/// writing up to `WRITE_HIGH_WATER` (it measured ~10 % slower in 16 KiB writes).
pub const WRITE_QUANTUM: usize = 16 << 10;
/// A consumer whose whole prefetch window is at most this many bytes gets it in one pull and one write
/// (`Channel::deliver`): with a small window nothing is gained by starting the client early, and each
/// write is a system call and a wake-up on both sides (S5 +13 %, S4 +9 %, S2 untouched: its window of
/// 100 x 1 KiB still goes in `WRITE_QUANTUM` pieces; docs/performance.md "Hot path: session 19").
pub const WHOLE_WINDOW_MAX: usize = 64 << 10;
/// A buffer that a burst grew past this is given back after the write.
const SHRINK_ABOVE: usize = 4 << 20;
/// The buffer's starting (and, after a burst, reset) capacity.
const INITIAL_CAPACITY: usize = 64 * 1024;

pub struct Output {
    buf: BytesMut,
    /// Negotiated frame_max (0 = no limit).
    frame_max: u32,
}

impl Default for Output {
    fn default() -> Self {
        Output::new()
    }
}

impl Output {
    pub fn new() -> Output {
        Output {
            buf: BytesMut::with_capacity(INITIAL_CAPACITY),
            frame_max: protocol::FRAME_MIN_SIZE,
        }
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }

    pub fn method(&mut self, channel: u16, m: &Method) {
        protocol::write_method(&mut self.buf, channel, m);
    }

    /// A basic-class content header and its body frames (after basic.deliver, basic.get-ok, basic.return).
    pub fn content(&mut self, channel: u16, properties: &RawProperties, body: &[u8]) {
        protocol::write_content(
            &mut self.buf,
            channel,
            protocol::CLASS_BASIC,
            properties,
            body,
            self.frame_max,
        );
    }

    /// The buffer and the frame_max, for writers that build frames from borrowed parts (stream
    /// deliveries, `stream_store::write_delivery`).
    pub fn buf_mut(&mut self) -> (&mut BytesMut, u32) {
        (&mut self.buf, self.frame_max)
    }

    pub fn heartbeat(&mut self) {
        protocol::write_heartbeat(&mut self.buf);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Enough is waiting: write before producing more deliveries.
    pub fn is_full(&self) -> bool {
        self.buf.len() >= WRITE_HIGH_WATER
    }

    /// A classic queue's batch is waiting (`WRITE_QUANTUM`): write it before pulling for more.
    pub fn has_quantum(&self) -> bool {
        self.buf.len() >= WRITE_QUANTUM
    }

    /// What is waiting to be written.
    pub fn pending(&self) -> &[u8] {
        &self.buf
    }

    /// Where the buffer ends now (see [`Output::take_from`]).
    pub fn mark(&self) -> usize {
        self.buf.len()
    }

    /// Takes back what was written since `mark` (frames a held channel must send later, in order).
    pub fn take_from(&mut self, mark: usize) -> bytes::BytesMut {
        self.buf.split_off(mark.min(self.buf.len()))
    }

    /// Appends frames taken earlier with [`Output::take_from`].
    pub fn put(&mut self, frames: &[u8]) {
        self.buf.extend_from_slice(frames);
    }

    /// After a write: empty the buffer, and give back the memory of an unusually large burst.
    pub fn written(&mut self) {
        self.buf.clear();
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf = BytesMut::with_capacity(INITIAL_CAPACITY);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_split_to_frame_max_and_the_buffer_resets_after_a_burst() {
        let mut out = Output::new();
        out.set_frame_max(4096);
        out.content(1, &RawProperties::empty(), &vec![7u8; 10_000]);
        // header frame + 3 body frames of at most 4096 - 8 bytes.
        let mut codec = protocol::FrameCodec::new();
        let mut bytes = BytesMut::from(out.pending());
        let mut frames = 0;
        while let Some(_f) = tokio_util::codec::Decoder::decode(&mut codec, &mut bytes).unwrap() {
            frames += 1;
        }
        assert_eq!(frames, 4);
        out.method(0, &Method::ConnectionCloseOk(protocol::ConnectionCloseOk));
        assert!(!out.is_full());
        assert!(!out.has_quantum());
        out.content(1, &RawProperties::empty(), &vec![0u8; WRITE_QUANTUM]);
        assert!(out.has_quantum() && !out.is_full());
        out.content(1, &RawProperties::empty(), &vec![0u8; 2 * SHRINK_ABOVE]);
        assert!(out.is_full());
        out.written();
        assert!(out.is_empty());
        assert!(out.buf.capacity() <= SHRINK_ABOVE);
    }
}
