//! The frame decoder as the broker drives it: bytes arrive in reads of any size (a socket buffer), and
//! `FrameCodec::decode` is called after each read until it wants more.
//!
//! Input: `[frame_max choice][tolerance choice][4-byte read-size seed][stream bytes...]`.
//!
//! Checks: feeding the stream in random read sizes gives exactly the frames and the error that feeding
//! it whole gives (no state leaks between partial reads); every decoded frame encodes back to a frame
//! that decodes equal, byte for byte the same as received for header, body and heartbeat frames and no
//! longer for method frames (reserved bits and deprecated string fields are written as zero/empty); no frame is
//! larger than the limit allows; every error has a hard-error reply code and a reply text.

use bytes::BytesMut;
use protocol::{Frame, FrameCodec, ProtocolError, FRAME_MIN_SIZE};
use tokio_util::codec::Decoder;

use crate::{Input, XorShift};

#[derive(Debug, PartialEq)]
struct Decoded {
    /// Each frame with the byte range it came from.
    frames: Vec<(Frame, usize)>,
    error: Option<ProtocolError>,
    left: usize,
}

fn codec(frame_max: u32, tolerance: u32) -> FrameCodec {
    let mut c = FrameCodec::new();
    c.set_max_frame_size(frame_max);
    c.set_size_tolerance(tolerance);
    c
}

/// Decodes `stream` arriving in reads whose sizes come from `reads` (None: one read of everything).
fn decode(stream: &[u8], frame_max: u32, tolerance: u32, mut reads: Option<XorShift>) -> Decoded {
    let mut c = codec(frame_max, tolerance);
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let mut out = Decoded {
        frames: Vec::new(),
        error: None,
        left: 0,
    };
    while fed < stream.len() {
        let n = match reads.as_mut() {
            None => stream.len(),
            Some(r) => {
                let x = r.next_u64();
                // Mostly small reads (splitting headers and payloads), sometimes a big one.
                if x % 8 == 0 {
                    1 + (x >> 8) as usize % 16384
                } else {
                    1 + (x >> 8) as usize % 24
                }
            }
        };
        let end = (fed + n).min(stream.len());
        buf.extend_from_slice(&stream[fed..end]);
        fed = end;
        loop {
            let before = buf.len();
            match c.decode(&mut buf) {
                Ok(Some(f)) => out.frames.push((f, before - buf.len())),
                Ok(None) => {
                    assert_eq!(buf.len(), before, "decoder consumed bytes without a frame");
                    break;
                }
                Err(e) => {
                    out.error = Some(e);
                    out.left = buf.len();
                    return out;
                }
            }
        }
    }
    out.left = buf.len();
    out
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let frame_max = match inp.u8() % 4 {
        0 => 0,
        1 => FRAME_MIN_SIZE,
        2 => 131_072,
        _ => FRAME_MIN_SIZE + u32::from(inp.u16()),
    };
    let tolerance = if inp.bool() { 0 } else { 8 };
    let seed = u64::from(inp.u32());
    let stream = inp.rest();

    let whole = decode(stream, frame_max, tolerance, None);
    let split = decode(stream, frame_max, tolerance, Some(XorShift::new(seed)));
    assert_eq!(
        whole.frames, split.frames,
        "frames differ between one read and many"
    );
    assert_eq!(
        whole.error, split.error,
        "error differs between one read and many"
    );
    if whole.error.is_none() {
        assert_eq!(whole.left, split.left);
    }

    let mut pos = 0;
    for (frame, len) in &whole.frames {
        let original = &stream[pos..pos + len];
        pos += len;
        let payload = len - protocol::FRAME_OVERHEAD as usize;
        if frame_max != 0 {
            assert!(payload as u64 <= u64::from(frame_max - protocol::FRAME_OVERHEAD + tolerance));
        }
        assert_eq!(frame.channel(), u16::from_be_bytes([original[1], original[2]]));
        assert_eq!(frame.frame_type(), original[0]);
        let mut enc = BytesMut::new();
        frame.encode(&mut enc);
        match frame {
            Frame::Method(..) => assert!(enc.len() <= original.len(), "method re-encoded longer"),
            _ => assert_eq!(&enc[..], original, "frame re-encoded differently"),
        }
        let mut c = codec(0, 0);
        let again = c
            .decode(&mut enc)
            .expect("re-encoded frame decodes")
            .expect("whole frame");
        assert_eq!(&again, frame, "frame round trip");
        assert!(enc.is_empty());
    }
    if let Some(e) = &whole.error {
        assert!(protocol::reply::is_hard_error(e.reply_code()), "{e:?}");
        assert!(!e.reply_text().is_empty());
        let _ = e.to_string();
    }
}
