//! The Mailroom broker: connections, channels, queues and consumers over the protocol, router and storage
//! crates. See docs/ARCHITECTURE.md for the map.

pub mod args;
pub mod auth;
pub mod broker;
pub mod channel;
pub mod clock;
pub mod config;
pub mod config_reference;
pub mod connection;
pub mod conns;
pub mod deadletter;
pub mod dedup;
pub mod delayed;
pub mod error;
pub mod flow;
pub mod http;
pub mod message;
pub mod names;
pub mod output;
pub mod policy;
pub mod prometheus;
pub mod queue;
pub mod queue_args;
pub mod recover;
pub mod redrive_task;
pub mod reply_to;
pub mod ring_order;
pub mod server;
pub mod session;
pub mod signal;
pub mod stats;
pub mod store;
pub mod stream_store;
pub mod tasks;
pub mod tls;
pub mod topology;
pub mod trace;
pub mod users;
pub mod vhost;
pub mod vhost_policy;
pub mod watchdog;

pub use broker::Broker;
pub use config::Config;
pub use server::Server;
