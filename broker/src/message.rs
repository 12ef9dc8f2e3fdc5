//! A published message as the broker carries it: envelope, raw properties and body, shared by every queue it
//! was routed to.

use bytes::Bytes;
use protocol::{RawProperties, ShortStr};

/// One published message. Shared (`Arc`) between the queues a publish reached; never copied.
#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Content properties exactly as the publisher sent them; decoded only when someone needs a field.
    pub properties: RawProperties,
    pub body: Bytes,
    /// delivery-mode 2.
    pub persistent: bool,
}

impl Message {
    pub fn new(exchange: ShortStr, routing_key: ShortStr, properties: RawProperties, body: Bytes) -> Self {
        let persistent = properties.delivery_mode() == Some(2);
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent,
        }
    }

    /// Bytes this message accounts for in a queue (body only, as RabbitMQ's `message_bytes`).
    pub fn size(&self) -> u64 {
        self.body.len() as u64
    }
}
