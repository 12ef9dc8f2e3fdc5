//! Whole-method encoding and decoding (class id, method id, arguments).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::methods::Method;
use crate::wire;

impl Method {
    /// Decodes a method frame payload (starting at the class id). Strings are slices
    /// of `payload`: decoding `basic.publish`, `basic.deliver` or `basic.ack` does not
    /// allocate. Trailing bytes after the arguments are an error, as in RabbitMQ.
    #[inline]
    pub fn decode(mut payload: Bytes) -> Result<Method, ProtocolError> {
        if payload.len() < 4 {
            return Err(ProtocolError::Malformed("method frame shorter than 4 bytes"));
        }
        let class_id = wire::get_u16(&mut payload)?;
        let method_id = wire::get_u16(&mut payload)?;
        let method = Method::decode_args(class_id, method_id, &mut payload)
            .map_err(|e| e.in_method(class_id, method_id))?;
        if !payload.is_empty() {
            return Err(ProtocolError::Malformed("trailing bytes after method arguments")
                .in_method(class_id, method_id));
        }
        Ok(method)
    }

    /// Writes class id, method id and arguments.
    pub fn encode(&self, dst: &mut BytesMut) {
        dst.put_u16(self.class_id());
        dst.put_u16(self.method_id());
        self.encode_args(dst);
    }

    /// The encoded payload as a new buffer (convenience for tests and tools).
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(64);
        self.encode(&mut buf);
        buf.freeze()
    }
}
