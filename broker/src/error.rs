//! AMQP errors raised while handling a client's methods.
//!
//! Every error knows its reply code; whether it closes the channel or the whole connection follows from the code
//! (the spec's soft/hard error classes, as RabbitMQ applies them).

use protocol::reply;

/// An error that ends with a channel.close or connection.close sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code} {text}")]
pub struct AmqpError {
    pub code: u16,
    /// The full reply text in RabbitMQ's style: `NOT_FOUND - no queue 'q' in vhost '/'`.
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

impl AmqpError {
    /// Builds an error from a code and RabbitMQ's message (without the `CODE_NAME - ` prefix).
    pub fn new(code: u16, message: impl AsRef<str>) -> Self {
        let text = format!("{} - {}", reply::name(code), message.as_ref());
        AmqpError {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }
    }

    /// Records the method that failed, unless one is already recorded.
    pub fn on_method(mut self, class_id: u16, method_id: u16) -> Self {
        if self.class_id == 0 && self.method_id == 0 {
            self.class_id = class_id;
            self.method_id = method_id;
        }
        self
    }

    /// True when this error closes the whole connection rather than one channel.
    pub fn closes_connection(&self) -> bool {
        reply::is_hard_error(self.code)
    }

    pub fn not_found(message: impl AsRef<str>) -> Self {
        Self::new(reply::NOT_FOUND, message)
    }
    pub fn access_refused(message: impl AsRef<str>) -> Self {
        Self::new(reply::ACCESS_REFUSED, message)
    }
    pub fn precondition_failed(message: impl AsRef<str>) -> Self {
        Self::new(reply::PRECONDITION_FAILED, message)
    }
    pub fn resource_locked(message: impl AsRef<str>) -> Self {
        Self::new(reply::RESOURCE_LOCKED, message)
    }
    pub fn not_allowed(message: impl AsRef<str>) -> Self {
        Self::new(reply::NOT_ALLOWED, message)
    }
    pub fn not_implemented(message: impl AsRef<str>) -> Self {
        Self::new(reply::NOT_IMPLEMENTED, message)
    }
    pub fn command_invalid(message: impl AsRef<str>) -> Self {
        Self::new(reply::COMMAND_INVALID, message)
    }
    pub fn channel_error(message: impl AsRef<str>) -> Self {
        Self::new(reply::CHANNEL_ERROR, message)
    }
    pub fn unexpected_frame(message: impl AsRef<str>) -> Self {
        Self::new(reply::UNEXPECTED_FRAME, message)
    }
    pub fn frame_error(message: impl AsRef<str>) -> Self {
        Self::new(reply::FRAME_ERROR, message)
    }
    pub fn internal(message: impl AsRef<str>) -> Self {
        Self::new(reply::INTERNAL_ERROR, message)
    }
}

impl From<protocol::ProtocolError> for AmqpError {
    fn from(e: protocol::ProtocolError) -> Self {
        AmqpError::new(e.reply_code(), e.reply_text()).on_method(e.class_id(), e.method_id())
    }
}

impl From<router::RouterError> for AmqpError {
    fn from(e: router::RouterError) -> Self {
        AmqpError::new(e.reply_code(), &e.text)
    }
}

pub type AmqpResult<T> = Result<T, AmqpError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_rabbitmq_prefix_and_scope() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'").on_method(50, 10);
        assert_eq!(e.text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert!(!e.closes_connection());
        assert_eq!((e.class_id, e.method_id), (50, 10));
        assert!(AmqpError::frame_error("x").closes_connection());
        assert!(AmqpError::not_allowed("x").closes_connection());
    }
}
