//! Frames, the tokio-util codec and the writer helpers.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::ProtocolError;
use crate::methods::Method;
use crate::properties::RawProperties;
use crate::types::ShortStr;
use crate::wire;
use crate::{FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD, FRAME_MIN_SIZE};

/// Frame header (type, channel, size) plus the frame-end octet.
pub const FRAME_OVERHEAD: u32 = 8;
/// Size of the frame header: type (1), channel (2), payload size (4).
pub const FRAME_HEADER_SIZE: usize = 7;
/// Largest buffer reservation made on behalf of a single announced frame when
/// frame_max is 0 (unlimited); the buffer grows past it as bytes actually arrive.
const MAX_RESERVE: usize = 1 << 20;

/// A content header frame's payload.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentHeader {
    /// Class of the content (60 for basic).
    pub class_id: u16,
    /// Always 0 in 0-9-1.
    pub weight: u16,
    /// Total size of the body that follows in body frames.
    pub body_size: u64,
    /// Property flags and list, undecoded.
    pub properties: RawProperties,
}

impl ContentHeader {
    /// A basic-class header with weight 0.
    pub fn new(class_id: u16, body_size: u64, properties: RawProperties) -> ContentHeader {
        ContentHeader {
            class_id,
            weight: 0,
            body_size,
            properties,
        }
    }

    /// Decodes a header frame payload. The properties are kept raw (zero-copy); at
    /// least the flags word must be there.
    #[inline]
    pub fn decode(mut payload: Bytes) -> Result<ContentHeader, ProtocolError> {
        if payload.len() < 14 {
            return Err(ProtocolError::Malformed("content header frame too short"));
        }
        let class_id = wire::get_u16(&mut payload)?;
        let weight = wire::get_u16(&mut payload)?;
        let body_size = wire::get_u64(&mut payload)?;
        Ok(ContentHeader {
            class_id,
            weight,
            body_size,
            properties: RawProperties::from_bytes(payload),
        })
    }

    /// Writes class id, weight, body size and the raw properties.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u16(self.class_id);
        dst.put_u16(self.weight);
        dst.put_u64(self.body_size);
        put_properties(dst, &self.properties);
    }
}

fn put_properties(dst: &mut BytesMut, props: &RawProperties) {
    if props.is_empty() {
        dst.put_u16(0);
    } else {
        dst.put_slice(props.as_bytes());
    }
}

/// One AMQP frame; the `u16` is the channel.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Method frame.
    Method(u16, Method),
    /// Content header frame.
    Header(u16, ContentHeader),
    /// Content body frame (a zero-copy slice of the read buffer).
    Body(u16, Bytes),
    /// Heartbeat; keeps its channel so the broker can reject a non-zero one (505).
    Heartbeat(u16),
}

impl Frame {
    /// The channel the frame is on.
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _) | Frame::Header(c, _) | Frame::Body(c, _) | Frame::Heartbeat(c) => *c,
        }
    }

    /// The frame type octet.
    pub fn frame_type(&self) -> u8 {
        match self {
            Frame::Method(..) => FRAME_METHOD,
            Frame::Header(..) => FRAME_HEADER,
            Frame::Body(..) => FRAME_BODY,
            Frame::Heartbeat(_) => FRAME_HEARTBEAT,
        }
    }

    /// Decodes a frame payload of type `frame_type`.
    #[inline]
    pub fn from_payload(frame_type: u8, channel: u16, payload: Bytes) -> Result<Frame, ProtocolError> {
        match frame_type {
            FRAME_METHOD => Ok(Frame::Method(channel, Method::decode(payload)?)),
            FRAME_HEADER => Ok(Frame::Header(channel, ContentHeader::decode(payload)?)),
            FRAME_BODY => Ok(Frame::Body(channel, payload)),
            FRAME_HEARTBEAT => {
                if payload.is_empty() {
                    Ok(Frame::Heartbeat(channel))
                } else {
                    Err(ProtocolError::BadHeartbeat(payload.len() as u32))
                }
            }
            t => Err(ProtocolError::UnknownFrameType(t)),
        }
    }

    /// Appends the whole frame (header, payload, end octet) to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Frame::Method(ch, m) => write_method(dst, *ch, m),
            Frame::Header(ch, h) => {
                let at = begin_frame(dst, FRAME_HEADER, *ch);
                h.encode(dst);
                end_frame(dst, at);
            }
            Frame::Body(ch, b) => write_body_frame(dst, *ch, b),
            Frame::Heartbeat(ch) => {
                dst.put_slice(&[FRAME_HEARTBEAT]);
                dst.put_u16(*ch);
                dst.put_u32(0);
                dst.put_u8(FRAME_END);
            }
        }
    }
}

/// Writes a frame header with a placeholder size; returns where the size goes.
fn begin_frame(dst: &mut BytesMut, frame_type: u8, channel: u16) -> usize {
    let [c0, c1] = channel.to_be_bytes();
    let at = dst.len() + 3;
    dst.put_slice(&[frame_type, c0, c1, 0, 0, 0, 0]);
    at
}

/// Patches the size written by [`begin_frame`] and appends the end octet.
fn end_frame(dst: &mut BytesMut, size_at: usize) {
    let size = (dst.len() - size_at - 4) as u32;
    dst[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    dst.put_u8(FRAME_END);
}

fn write_body_frame(dst: &mut BytesMut, channel: u16, body: &[u8]) {
    dst.reserve(body.len() + FRAME_OVERHEAD as usize);
    let [c0, c1] = channel.to_be_bytes();
    let [s0, s1, s2, s3] = (body.len() as u32).to_be_bytes();
    dst.put_slice(&[FRAME_BODY, c0, c1, s0, s1, s2, s3]);
    dst.put_slice(body);
    dst.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn write_method(dst: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin_frame(dst, FRAME_METHOD, channel);
    method.encode(dst);
    end_frame(dst, at);
}

/// Appends a heartbeat frame (channel 0): `08 00 00 00 00 00 00 CE`.
pub fn write_heartbeat(dst: &mut BytesMut) {
    dst.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Appends a content header frame and the body frames for `body`, each body frame
/// carrying at most `frame_max − 8` bytes (`frame_max` 0 = unlimited, one frame).
/// An empty body writes no body frame.
pub fn write_content(
    dst: &mut BytesMut,
    channel: u16,
    class_id: u16,
    properties: &RawProperties,
    body: &[u8],
    frame_max: u32,
) {
    write_content_with(dst, channel, class_id, body, frame_max, |dst| {
        put_properties(dst, properties)
    });
}

/// [`write_content`] with the properties (flags word and list) written by `put_props` straight into
/// `dst`: a sender that adds to stored properties (stream deliveries splice in a header) needs no
/// `RawProperties` value of its own.
pub fn write_content_with(
    dst: &mut BytesMut,
    channel: u16,
    class_id: u16,
    body: &[u8],
    frame_max: u32,
    put_props: impl FnOnce(&mut BytesMut),
) {
    let at = begin_frame(dst, FRAME_HEADER, channel);
    let [k0, k1] = class_id.to_be_bytes();
    let [b0, b1, b2, b3, b4, b5, b6, b7] = (body.len() as u64).to_be_bytes();
    dst.put_slice(&[k0, k1, 0, 0, b0, b1, b2, b3, b4, b5, b6, b7]);
    put_props(dst);
    end_frame(dst, at);
    if body.is_empty() {
        return;
    }
    let chunk = if frame_max == 0 {
        u32::MAX as usize
    } else {
        frame_max.saturating_sub(FRAME_OVERHEAD).max(1) as usize
    };
    for piece in body.chunks(chunk) {
        write_body_frame(dst, channel, piece);
    }
}

/// Appends a basic.deliver method frame from borrowed parts: the same bytes as [`write_method`] of a
/// [`crate::BasicDeliver`], without building one (exchange and routing key need no `ShortStr`).
/// Each string is cut at 255 bytes (a short string's limit).
pub fn write_basic_deliver(
    dst: &mut BytesMut,
    channel: u16,
    consumer_tag: &[u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &[u8],
    routing_key: &[u8],
) {
    fn short(dst: &mut BytesMut, s: &[u8]) {
        let s = &s[..s.len().min(255)];
        dst.put_u8(s.len() as u8);
        dst.put_slice(s);
    }
    let at = begin_frame(dst, FRAME_METHOD, channel);
    let [k0, k1] = crate::BasicDeliver::CLASS_ID.to_be_bytes();
    let [m0, m1] = crate::BasicDeliver::METHOD_ID.to_be_bytes();
    dst.put_slice(&[k0, k1, m0, m1]);
    short(dst, consumer_tag);
    let [t0, t1, t2, t3, t4, t5, t6, t7] = delivery_tag.to_be_bytes();
    dst.put_slice(&[t0, t1, t2, t3, t4, t5, t6, t7, u8::from(redelivered)]);
    short(dst, exchange);
    short(dst, routing_key);
    end_frame(dst, at);
}

/// Appends a method frame followed by its content (header and body frames), as one
/// delivery must go out: see [`write_content`]. The class id is the method's.
pub fn write_method_with_content(
    dst: &mut BytesMut,
    channel: u16,
    method: &Method,
    properties: &RawProperties,
    body: &[u8],
    frame_max: u32,
) {
    write_method(dst, channel, method);
    write_content(dst, channel, method.class_id(), properties, body, frame_max);
}

/// The tokio-util codec for AMQP 0-9-1 frames (after the protocol header).
///
/// The frame size limit starts at [`FRAME_MIN_SIZE`] until the broker tunes it with
/// [`FrameCodec::set_max_frame_size`]. As RabbitMQ does, a frame whose payload
/// exceeds `frame_max − 8` by at most 8 bytes is tolerated (clients commonly get the
/// arithmetic wrong); set the tolerance to 0 with [`FrameCodec::set_size_tolerance`]
/// for the strict rule.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame_size: u32,
    tolerance: u32,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new()
    }
}

impl FrameCodec {
    /// A codec limited to [`FRAME_MIN_SIZE`] bytes per frame.
    pub fn new() -> FrameCodec {
        FrameCodec {
            max_frame_size: FRAME_MIN_SIZE,
            tolerance: FRAME_OVERHEAD,
        }
    }

    /// Sets frame_max (whole frame, 8 bytes of overhead included); 0 = unlimited.
    pub fn set_max_frame_size(&mut self, frame_max: u32) {
        self.max_frame_size = frame_max;
    }

    /// The current frame_max (0 = unlimited).
    pub fn max_frame_size(&self) -> u32 {
        self.max_frame_size
    }

    /// How many bytes over `frame_max − 8` a payload may be (default 8, as RabbitMQ).
    pub fn set_size_tolerance(&mut self, bytes: u32) {
        self.tolerance = bytes;
    }

    /// Largest payload accepted by the limit alone (`frame_max − 8`), `None` if unlimited.
    pub fn max_payload_size(&self) -> Option<u32> {
        (self.max_frame_size != 0).then(|| self.max_frame_size.saturating_sub(FRAME_OVERHEAD))
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if src.len() < FRAME_HEADER_SIZE {
            return Ok(None);
        }
        let frame_type = src[0];
        let channel = u16::from_be_bytes([src[1], src[2]]);
        let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]);
        if !matches!(
            frame_type,
            FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
        ) {
            return Err(ProtocolError::UnknownFrameType(frame_type));
        }
        if let Some(max) = self.max_payload_size() {
            if u64::from(size) > u64::from(max) + u64::from(self.tolerance) {
                return Err(ProtocolError::FrameTooLarge { size, max });
            }
        }
        let total = FRAME_HEADER_SIZE + size as usize + 1;
        if src.len() < total {
            // Only now, with the size accepted, make room for the rest of the frame.
            src.reserve((total - src.len()).min(MAX_RESERVE));
            return Ok(None);
        }
        let end = src[total - 1];
        if end != FRAME_END {
            return Err(ProtocolError::BadFrameEnd(end));
        }
        // basic.ack (a consumer's one frame per message) and heartbeats carry nothing a caller
        // keeps: read in place and skipped, no slice of the read buffer made (a split and its drop
        // are two atomic operations on the buffer's shared count).
        if let Some(frame) = small_frame(frame_type, channel, &src[FRAME_HEADER_SIZE..total - 1]) {
            src.advance(total);
            return Ok(Some(frame));
        }
        // One split of the read buffer per frame; header and end octet are then cut off the frozen
        // slice, which only moves its pointer and length (a `BytesMut` advance checks its kind each time).
        let mut payload = src.split_to(total).freeze();
        payload.advance(FRAME_HEADER_SIZE);
        payload.truncate(size as usize);
        Frame::from_payload(frame_type, channel, payload).map(Some)
    }
}

/// The frames [`FrameCodec`] reads in place: basic.ack (exactly its 13 bytes), basic.publish whose
/// exchange and routing key are short enough to be held inline ([`ShortStr::INLINE`]) and an empty
/// heartbeat. Anything else (including a malformed one of these) goes through
/// [`Frame::from_payload`], which decodes or rejects it.
#[inline]
fn small_frame(frame_type: u8, channel: u16, payload: &[u8]) -> Option<Frame> {
    let [c0, c1] = crate::BasicAck::CLASS_ID.to_be_bytes();
    let [m0, m1] = crate::BasicAck::METHOD_ID.to_be_bytes();
    let [p0, p1] = crate::BasicPublish::METHOD_ID.to_be_bytes();
    match (frame_type, payload.len()) {
        (FRAME_METHOD, 9..=55) if payload[..4] == [c0, c1, p0, p1] => {
            publish_in_place(payload).map(|m| Frame::Method(channel, Method::BasicPublish(m)))
        }
        (FRAME_METHOD, 13) if payload[..4] == [c0, c1, m0, m1] => Some(Frame::Method(
            channel,
            Method::BasicAck(crate::BasicAck {
                delivery_tag: u64::from_be_bytes(payload[4..12].try_into().ok()?),
                multiple: payload[12] & 0x01 != 0,
            }),
        )),
        (FRAME_HEARTBEAT, 0) => Some(Frame::Heartbeat(channel)),
        _ => None,
    }
}

/// A basic.publish method payload (class and method ids included) of exactly its arguments, with an
/// exchange name and a routing key of at most [`ShortStr::INLINE`] bytes of UTF-8: decoded from the
/// read buffer without slicing it (a split of the buffer, its drop and a slice per name are atomic
/// operations on its shared count, and a message dropped on another thread would touch it again).
#[inline]
fn publish_in_place(p: &[u8]) -> Option<crate::BasicPublish> {
    let mut cur = wire::SliceCursor::new(p);
    cur.take(6)?; // class, method, reserved-1 (u16)
    let ex_len = cur.u8()? as usize;
    let exchange = cur.take(ex_len)?;
    let rk_len = cur.u8()? as usize;
    let routing_key = cur.take(rk_len)?;
    let bits = cur.u8()?;
    if cur.pos != p.len() {
        return None;
    }
    Some(crate::BasicPublish {
        exchange: ShortStr::inline_from_utf8(exchange)?.ok()?,
        routing_key: ShortStr::inline_from_utf8(routing_key)?.ok()?,
        mandatory: bits & 0x01 != 0,
        immediate: bits & 0x02 != 0,
    })
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode(dst);
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        frame.encode(dst);
        Ok(())
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Every inbound frame is moved several times between the codec, the connection, the channel and
    /// the assembler. Up to 128 bytes those moves are inlined; above, each one is a `memcpy` call
    /// (15 % of an S1 message's instructions when `Frame` was 144 bytes). The largest, rare methods are
    /// boxed for this (protocol/gen/gen_methods.py, `BOXED`).
    #[test]
    fn a_frame_fits_in_128_bytes() {
        assert!(
            std::mem::size_of::<Frame>() <= 128,
            "{}",
            std::mem::size_of::<Frame>()
        );
        assert!(std::mem::size_of::<crate::Method>() <= 120);
    }
}

#[cfg(test)]
mod small_frame_tests {
    use super::*;
    use crate::BasicAck;

    fn decode_all(wire: &[u8]) -> Vec<Result<Frame, String>> {
        let mut codec = FrameCodec::new();
        let mut src = BytesMut::from(wire);
        let mut out = Vec::new();
        loop {
            match codec.decode(&mut src) {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
        }
        out
    }

    /// A basic.ack frame (not multiple).
    fn ack_frame(channel: u16, delivery_tag: u64) -> BytesMut {
        let mut wire = BytesMut::new();
        write_method(
            &mut wire,
            channel,
            &Method::BasicAck(BasicAck {
                delivery_tag,
                multiple: false,
            }),
        );
        wire
    }

    /// What the general path (`Frame::from_payload`) makes of the frames at the start of `wire`.
    fn general(wire: &[u8]) -> Vec<Result<Frame, String>> {
        let mut out = Vec::new();
        let mut at = 0;
        while at + FRAME_HEADER_SIZE <= wire.len() {
            let size = u32::from_be_bytes(wire[at + 3..at + 7].try_into().unwrap()) as usize;
            let payload = Bytes::copy_from_slice(&wire[at + 7..at + 7 + size]);
            let ch = u16::from_be_bytes([wire[at + 1], wire[at + 2]]);
            match Frame::from_payload(wire[at], ch, payload) {
                Ok(f) => out.push(Ok(f)),
                Err(e) => {
                    out.push(Err(e.to_string()));
                    break;
                }
            }
            at += FRAME_HEADER_SIZE + size + 1;
        }
        out
    }

    /// basic.ack and heartbeats are read in place; the result is the general decoder's, for every
    /// tag and flag octet (reserved bits set too), on any channel, and next to other frames.
    #[test]
    fn acks_and_heartbeats_read_in_place_decode_as_the_general_path() {
        let mut wire = BytesMut::new();
        for (i, tag) in [0u64, 1, 255, 1 << 40, u64::MAX].into_iter().enumerate() {
            write_method(
                &mut wire,
                i as u16,
                &Method::BasicAck(BasicAck {
                    delivery_tag: tag,
                    multiple: i % 2 == 0,
                }),
            );
            write_heartbeat(&mut wire);
            write_body_frame(&mut wire, 1, b"body");
        }
        // a flag octet with reserved bits set: multiple is bit 0 only
        let mut odd = ack_frame(3, 9);
        let flags_at = odd.len() - 2;
        odd[flags_at] = 0xfe;
        wire.extend_from_slice(&odd);
        let got = decode_all(&wire);
        assert_eq!(got, general(&wire));
        assert_eq!(got.len(), 16);
        assert!(matches!(
            got[15],
            Ok(Frame::Method(
                3,
                Method::BasicAck(BasicAck {
                    delivery_tag: 9,
                    multiple: false
                })
            ))
        ));
    }

    /// A method frame of raw payload `p` on channel 1.
    fn raw_method(p: &[u8]) -> Vec<u8> {
        let mut w = vec![FRAME_METHOD, 0, 1];
        w.extend_from_slice(&(p.len() as u32).to_be_bytes());
        w.extend_from_slice(p);
        w.push(FRAME_END);
        w
    }

    /// basic.publish is read in place when both names fit inline, and left to the general path otherwise;
    /// either way the result is the general decoder's: names of 0 to 255 bytes around the inline limit,
    /// non-ASCII and invalid UTF-8 in either name, every flag octet, a trailing byte, a missing one, a
    /// name length past the end. The in-place names hold no slice of the read buffer.
    #[test]
    fn basic_publish_read_in_place_decodes_as_the_general_path() {
        let lens = [
            0,
            1,
            7,
            ShortStr::INLINE - 1,
            ShortStr::INLINE,
            ShortStr::INLINE + 1,
            255,
        ];
        let names: Vec<Vec<u8>> = lens
            .iter()
            .map(|&n| vec![b'x'; n])
            .chain([
                "caf\u{e9}".as_bytes().to_vec(),
                b"ab\xff".to_vec(),
                b"\xc3".to_vec(),
            ])
            .collect();
        let mut cases = 0;
        for ex in &names {
            for rk in &names {
                for bits in [0u8, 1, 2, 3, 0xfc] {
                    let mut p = vec![0, 60, 0, 40, 0, 0, ex.len() as u8];
                    p.extend_from_slice(ex);
                    p.push(rk.len() as u8);
                    p.extend_from_slice(rk);
                    p.push(bits);
                    let mut variants = vec![p.clone(), p[..p.len() - 1].to_vec()];
                    let mut longer = p.clone();
                    longer.push(0);
                    variants.push(longer);
                    for v in variants {
                        let wire = raw_method(&v);
                        let got = decode_all(&wire);
                        assert_eq!(got, general(&wire), "{v:?}");
                        if let Ok(Frame::Method(_, Method::BasicPublish(m))) = &got[0] {
                            let inside = |s: &ShortStr| {
                                let at = s.as_bytes().as_ptr() as usize;
                                !s.is_empty()
                                    && at >= wire.as_ptr() as usize
                                    && at < wire.as_ptr() as usize + wire.len()
                            };
                            assert!(!inside(&m.exchange) && !inside(&m.routing_key));
                        }
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 10 * 10 * 5 * 3);
        // a name length that runs past the payload
        let wire = raw_method(&[0, 60, 0, 40, 0, 0, 30, b'a', 0, 0]);
        assert_eq!(decode_all(&wire), general(&wire));
        assert!(decode_all(&wire)[0].is_err());
    }

    /// Lookalikes are left to the general path: another method of 13 bytes (basic.reject: a tag and
    /// a flag octet too), a heartbeat with a payload, a bad end octet.
    #[test]
    fn lookalikes_go_through_the_general_path() {
        let mut wire = BytesMut::new();
        write_method(
            &mut wire,
            1,
            &Method::BasicReject(crate::BasicReject {
                delivery_tag: 5,
                requeue: true,
            }),
        );
        assert_eq!(decode_all(&wire), general(&wire));
        assert!(matches!(
            decode_all(&wire)[0],
            Ok(Frame::Method(1, Method::BasicReject(_)))
        ));

        // a heartbeat frame that carries a payload is an error, as before
        let hb = [FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 1, 0, FRAME_END];
        assert!(decode_all(&hb)[0].is_err());
        assert_eq!(decode_all(&hb), general(&hb));

        // a basic.ack with a bad frame-end octet is an error, as before
        let mut ack = ack_frame(1, 1);
        let end = ack.len() - 1;
        ack[end] = 0;
        assert!(decode_all(&ack)[0].is_err());
    }
}
