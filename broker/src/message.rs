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
    /// The priority property (0 when absent).
    pub priority: u8,
    /// The expiration property, in ms, when it is a valid non-negative integer.
    pub expiration_ms: Option<u64>,
}

impl Message {
    pub fn new(exchange: ShortStr, routing_key: ShortStr, properties: RawProperties, body: Bytes) -> Self {
        let persistent = properties.delivery_mode() == Some(2);
        let priority = properties.priority().unwrap_or(0);
        let expiration_ms = properties.expiration().and_then(|e| e.parse::<u64>().ok());
        Message {
            exchange,
            routing_key,
            properties,
            body,
            persistent,
            priority,
            expiration_ms,
        }
    }

    /// Bytes this message accounts for in a queue (body only, as RabbitMQ's `message_bytes`).
    pub fn size(&self) -> u64 {
        self.body.len() as u64
    }
}

/// RabbitMQ's check of the expiration property: a string of digits (else 406 "invalid expiration").
pub fn validate_expiration(props: &RawProperties) -> Result<(), String> {
    match props.expiration() {
        None => Ok(()),
        Some(e) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) && e.parse::<u64>().is_ok() => {
            Ok(())
        }
        Some(e) => Err(format!("invalid expiration '{e}': no_integer")),
    }
}
