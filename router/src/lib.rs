//! Mailroom's message router: given an exchange, a routing key and the
//! message headers, which queues receive the message.
//!
//! Pure and synchronous. One [`Router`] per vhost; the broker wraps it in a
//! lock. RabbitMQ is the reference for every behaviour and error text.

mod args;
pub mod consistent_hash;
mod headers;
mod index;
mod router;

pub use args::{ArgValue, Args, FloatType, IntType};
pub use consistent_hash::{HashOn, HashProperty, MsgProps};
pub use headers::XMatch;
pub use router::{DeletedExchange, RouteScratch, Router, TRACE_EXCHANGE};

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// Names are shared, immutable strings.
pub type Name = Arc<str>;

/// Exchange types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeKind {
    Direct,
    Fanout,
    Topic,
    Headers,
    /// `x-consistent-hash` (`consistent_hash.rs`).
    ConsistentHash,
    /// `x-message-deduplication`: routes as fanout; the broker drops duplicates before routing.
    Deduplication,
    /// `x-delayed-message`: routes as its `x-delayed-type` once a message is due; the broker holds
    /// messages with a positive `x-delay` header until then.
    Delayed,
}

impl ExchangeKind {
    /// Parses an AMQP exchange type name; unknown types are RabbitMQ's
    /// `COMMAND_INVALID - unknown exchange type 'foo'`.
    pub fn parse(s: &str) -> Result<ExchangeKind, RouterError> {
        match s {
            "direct" => Ok(ExchangeKind::Direct),
            "fanout" => Ok(ExchangeKind::Fanout),
            "topic" => Ok(ExchangeKind::Topic),
            "headers" => Ok(ExchangeKind::Headers),
            "x-consistent-hash" => Ok(ExchangeKind::ConsistentHash),
            "x-message-deduplication" => Ok(ExchangeKind::Deduplication),
            "x-delayed-message" => Ok(ExchangeKind::Delayed),
            _ => Err(RouterError::new(
                ErrorKind::CommandInvalid,
                format!("unknown exchange type '{s}'"),
            )),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
            ExchangeKind::ConsistentHash => "x-consistent-hash",
            ExchangeKind::Deduplication => "x-message-deduplication",
            ExchangeKind::Delayed => "x-delayed-message",
        }
    }
}

impl FromStr for ExchangeKind {
    type Err = RouterError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExchangeKind::parse(s)
    }
}

impl fmt::Display for ExchangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An exchange as declared.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub name: Name,
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: Args,
}

impl ExchangeDef {
    /// A durable, non-auto-delete, non-internal exchange without arguments.
    pub fn new(name: &str, kind: ExchangeKind) -> ExchangeDef {
        ExchangeDef {
            name: name.into(),
            kind,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: Args::default(),
        }
    }

    /// The `alternate-exchange` argument, if it is a string.
    pub fn alternate_exchange(&self) -> Option<&str> {
        self.arguments
            .get("alternate-exchange")
            .and_then(ArgValue::as_str)
    }
}

/// Where a binding delivers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    Queue(Name),
    Exchange(Name),
}

impl Destination {
    pub fn name(&self) -> &Name {
        match self {
            Destination::Queue(n) | Destination::Exchange(n) => n,
        }
    }
    fn kind_str(&self) -> &'static str {
        match self {
            Destination::Queue(_) => "queue",
            Destination::Exchange(_) => "exchange",
        }
    }
}

/// A binding. Identity is (source, destination, routing key, key-sorted
/// arguments), as in RabbitMQ.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Binding {
    pub source: Name,
    pub destination: Destination,
    pub routing_key: Name,
    pub arguments: Args,
}

impl Binding {
    pub fn queue(source: &str, queue: &str, routing_key: &str) -> Binding {
        Binding {
            source: source.into(),
            destination: Destination::Queue(queue.into()),
            routing_key: routing_key.into(),
            arguments: Args::default(),
        }
    }
    pub fn exchange(source: &str, destination: &str, routing_key: &str) -> Binding {
        Binding {
            source: source.into(),
            destination: Destination::Exchange(destination.into()),
            routing_key: routing_key.into(),
            arguments: Args::default(),
        }
    }
    pub fn with_args(mut self, arguments: Args) -> Binding {
        self.arguments = arguments;
        self
    }
}

/// AMQP reply codes the router can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// 403
    AccessRefused,
    /// 404
    NotFound,
    /// 406
    PreconditionFailed,
    /// 503
    CommandInvalid,
    /// 530
    NotAllowed,
}

impl ErrorKind {
    pub fn reply_code(&self) -> u16 {
        match self {
            ErrorKind::AccessRefused => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::PreconditionFailed => 406,
            ErrorKind::CommandInvalid => 503,
            ErrorKind::NotAllowed => 530,
        }
    }
    /// The AMQP constant name, e.g. `NOT_FOUND`.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorKind::AccessRefused => "ACCESS_REFUSED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::PreconditionFailed => "PRECONDITION_FAILED",
            ErrorKind::CommandInvalid => "COMMAND_INVALID",
            ErrorKind::NotAllowed => "NOT_ALLOWED",
        }
    }
}

/// A protocol error. `text` is RabbitMQ's text without the `NOT_FOUND - `
/// prefix (Display prints `text` only); [`RouterError::reply_text`] gives
/// the full reply text as RabbitMQ sends it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct RouterError {
    pub kind: ErrorKind,
    pub text: String,
}

impl RouterError {
    pub fn new(kind: ErrorKind, text: impl Into<String>) -> RouterError {
        RouterError {
            kind,
            text: text.into(),
        }
    }
    pub fn reply_code(&self) -> u16 {
        self.kind.reply_code()
    }
    /// `"NOT_FOUND - no exchange 'x' in vhost '/'"`.
    pub fn reply_text(&self) -> String {
        format!("{} - {}", self.kind.name(), self.text)
    }
}

/// Outcome of exchange.declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    Created,
    Existed,
}

/// Outcome of a successful route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Routed {
    /// At least one queue took the message (alternate exchanges included):
    /// when false and the publish was mandatory, return 312 NO_ROUTE.
    pub matched: bool,
    /// Some exchange on the walk routed nowhere and had an existing
    /// alternate exchange (which was then followed, unless already visited).
    pub used_alternate: bool,
}
