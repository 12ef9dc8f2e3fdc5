//! Per-channel content assembly (method -> content header -> body frames), against a reference model.
//!
//! Input: a byte program. The first byte picks the assembler's body-size limit (the default 512 MiB or a
//! small one); then each operation is `[op][channel]...`: a content-bearing method (basic.publish, or
//! basic.return which a client must not send but the assembler accepts and the channel rejects), a method
//! without content, a content header (class id, weight and body size from the input: right, wrong, zero,
//! small, huge), a body frame (length and bytes from the input), or a reset (channel closed).
//!
//! The model is a direct reading of RabbitMQ's `rabbit_command_assembler`: which frame each state expects,
//! and that a completed command carries exactly the header given and the concatenation of the body frames.
//! Every result of the real assembler (command, "more needed", or error with its reply code) must equal the
//! model's. An error closes the connection in the broker, so after one every channel starts afresh.

use std::collections::HashMap;

use bytes::Bytes;
use protocol::{
    Assembled, BasicAck, BasicPublish, BasicReturn, ContentAssembler, ContentHeader, Method, RawProperties,
    DEFAULT_MAX_BODY_SIZE,
};

use crate::Input;

#[derive(Debug, Clone)]
enum Model {
    Idle,
    Header(Method),
    Body {
        method: Method,
        header: ContentHeader,
        remaining: u64,
        body: Vec<u8>,
    },
}

/// What a push should give: a finished command, nothing yet, or an error with this reply code.
#[derive(Debug, PartialEq)]
enum Want {
    Done(Box<Assembled>),
    More,
    Error(u16),
}

const UNEXPECTED_FRAME: u16 = protocol::reply::UNEXPECTED_FRAME;
const FRAME_ERROR: u16 = protocol::reply::FRAME_ERROR;

impl Model {
    fn method(&mut self, m: Method) -> Want {
        match self {
            Model::Idle if m.has_content() => {
                *self = Model::Header(m);
                Want::More
            }
            Model::Idle => Want::Done(Box::new(Assembled::Method(m))),
            _ => Want::Error(UNEXPECTED_FRAME),
        }
    }

    fn header(&mut self, h: ContentHeader, max: u64) -> Want {
        let Model::Header(m) = self else {
            return Want::Error(UNEXPECTED_FRAME);
        };
        if h.weight != 0 || h.class_id != m.class_id() {
            return Want::Error(UNEXPECTED_FRAME);
        }
        if h.body_size > max {
            return Want::Error(FRAME_ERROR);
        }
        let method = m.clone();
        if h.body_size == 0 {
            *self = Model::Idle;
            return Want::Done(Box::new(Assembled::Content {
                method,
                header: h,
                body: Bytes::new(),
            }));
        }
        *self = Model::Body {
            method,
            remaining: h.body_size,
            header: h,
            body: Vec::new(),
        };
        Want::More
    }

    fn body(&mut self, b: &[u8]) -> Want {
        let Model::Body {
            method,
            header,
            remaining,
            body,
        } = self
        else {
            return Want::Error(UNEXPECTED_FRAME);
        };
        if b.len() as u64 > *remaining {
            return Want::Error(FRAME_ERROR);
        }
        *remaining -= b.len() as u64;
        body.extend_from_slice(b);
        if *remaining > 0 {
            return Want::More;
        }
        let done = Assembled::Content {
            method: method.clone(),
            header: header.clone(),
            body: Bytes::from(std::mem::take(body)),
        };
        *self = Model::Idle;
        Want::Done(Box::new(done))
    }
}

fn got(r: Result<Option<Assembled>, protocol::ProtocolError>) -> Want {
    match r {
        Ok(Some(a)) => Want::Done(Box::new(a)),
        Ok(None) => Want::More,
        Err(e) => {
            assert!(!e.reply_text().is_empty());
            Want::Error(e.reply_code())
        }
    }
}

pub fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let max = if inp.bool() {
        DEFAULT_MAX_BODY_SIZE
    } else {
        u64::from(inp.u16())
    };
    let mut real: HashMap<u16, ContentAssembler> = HashMap::new();
    let mut model: HashMap<u16, Model> = HashMap::new();
    let mut ops = 0;
    while !inp.is_empty() && ops < 4096 {
        ops += 1;
        let op = inp.u8();
        let ch = u16::from(inp.u8() % 4);
        let a = real.entry(ch).or_insert_with(|| {
            let mut a = ContentAssembler::new();
            a.set_max_body_size(max);
            a
        });
        let m = model.entry(ch).or_insert(Model::Idle);
        let (want, have) = match op % 8 {
            0 | 1 => {
                let p = Method::BasicPublish(BasicPublish {
                    exchange: "".into(),
                    routing_key: "q".into(),
                    mandatory: op & 0x80 != 0,
                    immediate: false,
                });
                (m.method(p.clone()), got(a.push_method(p)))
            }
            2 => {
                let r = Method::BasicReturn(BasicReturn {
                    reply_code: 312,
                    reply_text: "NO_ROUTE".into(),
                    exchange: "".into(),
                    routing_key: "q".into(),
                });
                (m.method(r.clone()), got(a.push_method(r)))
            }
            3 => {
                let ack = Method::BasicAck(BasicAck {
                    delivery_tag: u64::from(inp.u8()),
                    multiple: false,
                });
                (m.method(ack.clone()), got(a.push_method(ack)))
            }
            4 | 5 => {
                let sel = inp.u8();
                let class_id = if sel & 0x07 == 0 { inp.u16() } else { 60 };
                let weight = if sel & 0x38 == 0 { u16::from(inp.u8()) } else { 0 };
                let body_size = match sel >> 6 {
                    0 => 0,
                    1 => u64::from(inp.u8() % 32),
                    2 => u64::from(inp.u16()),
                    _ => inp.u64(),
                };
                let props = RawProperties::from_bytes(Bytes::copy_from_slice(inp.small_bytes()));
                let h = ContentHeader {
                    class_id,
                    weight,
                    body_size,
                    properties: props,
                };
                (m.header(h.clone(), max), got(a.push_header(h)))
            }
            6 => {
                let b = inp.small_bytes();
                (m.body(b), got(a.push_body(Bytes::copy_from_slice(b))))
            }
            _ => {
                a.reset();
                *m = Model::Idle;
                continue;
            }
        };
        assert_eq!(have, want, "channel {ch}, op {op}");
        if matches!(want, Want::Error(_)) {
            real.clear();
            model.clear();
        } else {
            assert_eq!(a.is_idle(), matches!(m, Model::Idle));
        }
    }
}
