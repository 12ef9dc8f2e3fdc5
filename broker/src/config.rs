//! Settings: command-line flags win over environment variables, which win over the TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

use crate::flow::{parse_size, DiskLimit, QueueBound, Watermark};

/// The default listeners: both loopback addresses, because Node.js (17+) and others resolve `localhost` to
/// `::1` first. `[::1]` is skipped with a warning on a host without IPv6.
pub const DEFAULT_LISTEN: [&str; 2] = ["127.0.0.1:5672", "[::1]:5672"];
/// The management API's default listeners (RabbitMQ's port 15672), both loopbacks as for AMQP.
pub const DEFAULT_HTTP_LISTEN: [&str; 2] = ["127.0.0.1:15672", "[::1]:15672"];
/// AMQPS listeners when a certificate is given without `--tls-listen` (RabbitMQ's port 5671, loopback like
/// the plain default).
pub const DEFAULT_TLS_LISTEN: [&str; 2] = ["127.0.0.1:5671", "[::1]:5671"];
/// The Prometheus listener (RabbitMQ's and LavinMQ's port).
pub const DEFAULT_PROMETHEUS_LISTEN: [&str; 1] = ["127.0.0.1:15692"];
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_LOG: &str = "info";

/// Command line of the `mailroom` binary.
#[derive(Debug, Parser, Default)]
#[command(
    name = "mailroom",
    version,
    about = "Mailroom: a store-backed AMQP 0-9-1 message broker"
)]
pub struct Cli {
    /// Address to accept AMQP connections on; repeat the flag (or give a comma-separated list in the
    /// environment) for several. Default: 127.0.0.1:5672 and [::1]:5672.
    #[arg(long, env = "MAILROOM_LISTEN", value_name = "ADDR", value_delimiter = ',')]
    pub listen: Vec<String>,
    /// Directory holding the store.
    #[arg(long, env = "MAILROOM_DATA_DIR", value_name = "DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter such as `broker=debug`).
    #[arg(long, env = "MAILROOM_LOG", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Seconds a graceful shutdown (SIGTERM/SIGINT) may take before the broker exits anyway (code 70).
    #[arg(long, env = "MAILROOM_SHUTDOWN_TIMEOUT", value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// TOML file with `listen`, `data_dir`, `log_level` and the tuning settings.
    #[arg(long, env = "MAILROOM_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Memory high watermark: a fraction of the machine's (or cgroup's) memory such as 0.6 (the default), or
    /// a size such as 512MiB. Above it, publishing connections are blocked.
    #[arg(long, env = "MAILROOM_MEMORY_HIGH_WATERMARK", value_name = "FRACTION|SIZE")]
    pub memory_high_watermark: Option<String>,
    /// Free disk space under which publishing connections are blocked: a size (default 50MB) or a
    /// multiple of the memory such as 1.5x.
    #[arg(long, env = "MAILROOM_DISK_FREE_LIMIT", value_name = "SIZE")]
    pub disk_free_limit: Option<String>,
    /// Largest message body accepted (default 16MiB, at most 512MiB).
    #[arg(long, env = "MAILROOM_MAX_MESSAGE_SIZE", value_name = "SIZE")]
    pub max_message_size: Option<String>,
    /// Most client connections open at once (default: no limit).
    #[arg(long, env = "MAILROOM_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u32>,
    /// Consumer acknowledgement timeout in milliseconds (default 1800000, 30 minutes; 0 turns it off).
    #[arg(long, env = "MAILROOM_CONSUMER_TIMEOUT", value_name = "MS")]
    pub consumer_timeout: Option<u64>,
    /// Start even if the definitions store is empty or unreadable while message data exists: restore the
    /// queues from the definition copies beside their messages and move whatever cannot be accounted for
    /// to DIR/lost+found (see docs/failure-handling.md). Without it such a data directory is refused.
    #[arg(long, env = "MAILROOM_FORCE_RECOVERY", global = true)]
    pub force_recovery: bool,
    /// Address of the management HTTP API (RabbitMQ's management plugin API); repeat the flag (or give a
    /// comma-separated list in the environment) for several. Default: 127.0.0.1:15672 and [::1]:15672.
    #[arg(
        long,
        env = "MAILROOM_HTTP_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub http_listen: Vec<String>,
    /// A RabbitMQ-format definitions file (users, vhosts, permissions, exchanges, queues, bindings) to
    /// import at boot; importing it again changes nothing.
    #[arg(long, env = "MAILROOM_DEFINITIONS", value_name = "FILE")]
    pub definitions: Option<PathBuf>,
    /// Address to accept AMQPS (AMQP over TLS) connections on; repeatable. Default: none, or 127.0.0.1:5671
    /// and [::1]:5671 when --tls-cert is given.
    #[arg(long, env = "MAILROOM_TLS_LISTEN", value_name = "ADDR", value_delimiter = ',')]
    pub tls_listen: Vec<String>,
    /// Address to serve the management API over HTTPS on (the certificate of --tls-cert); repeatable.
    /// Default: none (RabbitMQ's management TLS port is 15671).
    #[arg(
        long,
        env = "MAILROOM_HTTPS_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub https_listen: Vec<String>,
    /// PEM file with the server's certificate chain (leaf first); turns AMQPS on. Reloaded on SIGHUP.
    #[arg(long, env = "MAILROOM_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM file with the server's private key. Reloaded on SIGHUP.
    #[arg(long, env = "MAILROOM_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// PEM file with the CA certificates client certificates must chain to: AMQPS clients must then present
    /// a certificate, and may log in with SASL EXTERNAL as the certificate's CN. Reloaded on SIGHUP.
    #[arg(long, env = "MAILROOM_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Address of the Prometheus endpoint (/metrics, /metrics/per-object); repeatable. Default:
    /// 127.0.0.1:15692 (skipped with a warning if taken).
    #[arg(
        long,
        env = "MAILROOM_PROMETHEUS_LISTEN",
        value_name = "ADDR",
        value_delimiter = ','
    )]
    pub prometheus_listen: Vec<String>,
    /// Print the configuration reference (every flag, environment variable and TOML key) as a Markdown
    /// table, and exit.
    #[arg(long)]
    pub print_config_reference: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Tools run instead of the broker.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Inspect or re-attach the message data recovery moved to DIR/lost+found (stop the broker first).
    Recover {
        #[command(subcommand)]
        action: RecoverAction,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum RecoverAction {
    /// Lists the queue directories in DIR/lost+found: their old queue id, definition and message count.
    List,
    /// Appends the messages of a lost+found directory to a queue (created durable if missing, with the
    /// lost queue's arguments when it had a definition copy), then removes the directory.
    Attach {
        /// The directory under DIR/lost+found (as `list` shows it).
        path: PathBuf,
        /// The vhost of the queue to attach to.
        #[arg(long, default_value = "/")]
        vhost: String,
        /// The queue to attach to.
        #[arg(long)]
        queue: String,
    },
}

/// A setting the TOML file may give as a number or a string (`0.6` or `"512MiB"`).
#[derive(Debug, Deserialize, Clone)]
#[serde(untagged)]
pub enum NumOrStr {
    Num(f64),
    Str(String),
}

impl NumOrStr {
    fn into_string(self) -> String {
        match self {
            NumOrStr::Num(n) => n.to_string(),
            NumOrStr::Str(s) => s,
        }
    }
}

/// The TOML file's contents. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Listen>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub frame_max: Option<u32>,
    pub channel_max: Option<u16>,
    pub heartbeat: Option<u16>,
    pub store_cache_mib: Option<u64>,
    pub shutdown_timeout: Option<u64>,
    pub memory_high_watermark: Option<NumOrStr>,
    /// Fraction of the memory watermark above which queues page new messages to disk.
    pub memory_paging_ratio: Option<f64>,
    pub disk_free_limit: Option<NumOrStr>,
    pub max_message_size: Option<NumOrStr>,
    pub max_connections: Option<u32>,
    pub consumer_timeout: Option<u64>,
    /// Per-queue flow bound: ready messages in memory while the queue has consumers.
    pub queue_flow_max_messages: Option<u64>,
    /// Per-queue flow bound in body bytes.
    pub queue_flow_max_bytes: Option<NumOrStr>,
    /// Per-connection publish budget: messages handled per wake-up.
    pub connection_publish_budget: Option<u32>,
    /// Per-connection publish budget: body bytes handled per wake-up.
    pub connection_publish_budget_bytes: Option<NumOrStr>,
    /// Offer the core to a waiting thread after a write that fills a consumer's prefetch window.
    pub yield_after_write: Option<bool>,
    /// Management API listeners: one address or a list.
    pub http_listen: Option<Listen>,
    /// RabbitMQ's `loopback_users`: users that may only connect from a loopback address (default guest).
    pub loopback_users: Option<Vec<String>>,
    /// Definitions file imported at boot.
    pub definitions: Option<PathBuf>,
    pub tls_listen: Option<Listen>,
    /// Management API over HTTPS: one address or a list.
    pub https_listen: Option<Listen>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub prometheus_listen: Option<Listen>,
    /// Message tracing's bounds (`[trace]`: buffer_events, max_events, max_age_secs).
    pub trace: Option<crate::trace::TraceSettings>,
}

/// `listen` in the TOML file: one address or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Listen {
    One(String),
    Many(Vec<String>),
}

impl Listen {
    fn into_vec(self) -> Vec<String> {
        match self {
            Listen::One(s) => vec![s],
            Listen::Many(v) => v,
        }
    }
}

/// The settings the broker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses to accept AMQP connections on (at least one).
    pub listen: Vec<SocketAddr>,
    /// True when `listen` is the built-in default: an address that cannot be bound (no IPv6) is skipped.
    pub listen_is_default: bool,
    pub data_dir: PathBuf,
    pub log_level: String,
    /// Largest frame the server offers in connection.tune (whole frame, bytes).
    pub frame_max: u32,
    /// Highest channel number the server offers.
    pub channel_max: u16,
    /// Heartbeat interval the server proposes, seconds.
    pub heartbeat: u16,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: std::time::Duration,
    /// sled's page cache, bytes.
    pub store_cache_bytes: u64,
    /// Time a graceful shutdown may take before a forced exit.
    pub shutdown_timeout: std::time::Duration,
    /// `--force-recovery`: open a data directory whose definitions store is empty or unreadable.
    pub force_recovery: bool,
    pub memory_high_watermark: Watermark,
    /// Fraction of the watermark above which queues page new messages to disk (RabbitMQ 3.x's
    /// `vm_memory_high_watermark_paging_ratio`, default 0.5).
    pub memory_paging_ratio: f64,
    pub disk_free_limit: DiskLimit,
    /// Largest message body accepted, bytes.
    pub max_message_size: u64,
    /// Most connections open at once.
    pub max_connections: Option<u32>,
    /// Consumer acknowledgement timeout (None: off).
    pub consumer_timeout: Option<std::time::Duration>,
    /// The bound every queue gets.
    pub queue_bound: QueueBound,
    /// Messages a connection handles per wake-up before it delivers and writes.
    pub publish_budget: u32,
    /// Body bytes a connection handles per wake-up before it delivers and writes.
    pub publish_budget_bytes: u64,
    /// After a write that fills a consumer's prefetch window, `sched_yield`, so that a thread waiting for
    /// this core (a client on the same machine the write just woke) runs before the broker's next task
    /// (docs/decisions.md).
    pub yield_after_write: bool,
    /// Management API listeners.
    pub http_listen: Vec<SocketAddr>,
    /// True when `http_listen` is the built-in default: an address that cannot be bound (no IPv6, or the
    /// port taken) is skipped with a warning.
    pub http_listen_is_default: bool,
    /// Users that may only connect from loopback addresses.
    pub loopback_users: Vec<String>,
    /// Definitions file imported at boot.
    pub definitions: Option<PathBuf>,
    /// AMQPS listeners (empty without TLS).
    pub tls_listen: Vec<SocketAddr>,
    pub tls_listen_is_default: bool,
    /// Management API listeners over HTTPS (empty: none; needs `tls`).
    pub https_listen: Vec<SocketAddr>,
    /// Certificate, key and client CA files (None: no TLS).
    pub tls: Option<crate::tls::TlsFiles>,
    /// Prometheus listeners (empty: none).
    pub prometheus_listen: Vec<SocketAddr>,
    /// True when `prometheus_listen` is the default: a taken port is a warning, not a failure.
    pub prometheus_listen_is_default: bool,
    /// Message tracing's bounds (`[trace]` in the file).
    pub trace: crate::trace::TraceSettings,
}

/// RabbitMQ 4.0+'s default `max_message_size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 16 << 20;
/// RabbitMQ's hard ceiling for `max_message_size` (?MAX_MSG_SIZE).
pub const MAX_MAX_MESSAGE_SIZE: u64 = 512 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN
                .iter()
                .map(|a| a.parse().expect("default listen address"))
                .collect(),
            listen_is_default: true,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_level: DEFAULT_LOG.to_string(),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            handshake_timeout: std::time::Duration::from_secs(10),
            store_cache_bytes: 64 << 20,
            shutdown_timeout: std::time::Duration::from_secs(30),
            force_recovery: false,
            memory_high_watermark: Watermark::DEFAULT,
            memory_paging_ratio: crate::flow::DEFAULT_PAGING_RATIO,
            disk_free_limit: DiskLimit::DEFAULT,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_connections: None,
            consumer_timeout: Some(std::time::Duration::from_secs(30 * 60)),
            queue_bound: QueueBound::DEFAULT,
            publish_budget: 256,
            publish_budget_bytes: 1 << 20,
            yield_after_write: true,
            http_listen: DEFAULT_HTTP_LISTEN
                .iter()
                .map(|a| a.parse().expect("default http listen address"))
                .collect(),
            http_listen_is_default: true,
            loopback_users: vec!["guest".into()],
            definitions: None,
            tls_listen: Vec::new(),
            tls_listen_is_default: false,
            https_listen: Vec::new(),
            tls: None,
            prometheus_listen: parse_addrs(&DEFAULT_PROMETHEUS_LISTEN.map(String::from))
                .expect("default prometheus address"),
            prometheus_listen_is_default: true,
            trace: Default::default(),
        }
    }
}

impl Config {
    /// Merges flags/env (already merged by clap) over the optional TOML file over the defaults.
    pub fn load(cli: Cli) -> anyhow::Result<Config> {
        let file = match &cli.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .with_context(|| format!("invalid config file {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        Self::merge(cli, file)
    }

    fn merge(cli: Cli, file: FileConfig) -> anyhow::Result<Config> {
        let d = Config::default();
        let given = if !cli.listen.is_empty() {
            cli.listen
        } else {
            file.listen.map(Listen::into_vec).unwrap_or_default()
        };
        let listen_is_default = given.is_empty();
        let listen = if listen_is_default {
            d.listen
        } else {
            given
                .iter()
                .map(|a| {
                    a.trim().parse::<SocketAddr>().with_context(|| {
                        format!("invalid listen address '{a}' (expected HOST:PORT, or [IPv6]:PORT)")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?
        };
        let http_given = if !cli.http_listen.is_empty() {
            cli.http_listen
        } else {
            file.http_listen.map(Listen::into_vec).unwrap_or_default()
        };
        let http_listen_is_default = http_given.is_empty();
        let http_listen = if http_listen_is_default {
            d.http_listen
        } else {
            parse_addrs(&http_given)?
        };
        let tls = match (cli.tls_cert.or(file.tls_cert), cli.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(crate::tls::TlsFiles {
                cert,
                key,
                ca: cli.tls_ca.or(file.tls_ca),
            }),
            (None, None) => None,
            _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key"),
        };
        let tls_given = if !cli.tls_listen.is_empty() {
            cli.tls_listen
        } else {
            file.tls_listen.map(Listen::into_vec).unwrap_or_default()
        };
        if tls.is_none() && !tls_given.is_empty() {
            anyhow::bail!("--tls-listen needs --tls-cert and --tls-key");
        }
        let tls_listen_is_default = tls.is_some() && tls_given.is_empty();
        let tls_listen = match (&tls, tls_listen_is_default) {
            (None, _) => Vec::new(),
            (Some(_), true) => parse_addrs(&DEFAULT_TLS_LISTEN.map(String::from))?,
            (Some(_), false) => parse_addrs(&tls_given)?,
        };
        let https_given = if !cli.https_listen.is_empty() {
            cli.https_listen
        } else {
            file.https_listen.map(Listen::into_vec).unwrap_or_default()
        };
        if tls.is_none() && !https_given.is_empty() {
            anyhow::bail!("--https-listen needs --tls-cert and --tls-key");
        }
        let https_listen = parse_addrs(&https_given)?;
        let prom_given = if !cli.prometheus_listen.is_empty() {
            cli.prometheus_listen
        } else {
            file.prometheus_listen.map(Listen::into_vec).unwrap_or_default()
        };
        let prometheus_listen_is_default = prom_given.is_empty();
        let prometheus_listen = if prometheus_listen_is_default {
            d.prometheus_listen.clone()
        } else {
            parse_addrs(&prom_given)?
        };
        let frame_max = file.frame_max.unwrap_or(d.frame_max);
        if frame_max != 0 && frame_max < protocol::FRAME_MIN_SIZE {
            anyhow::bail!(
                "frame_max {frame_max} is below the minimum {}",
                protocol::FRAME_MIN_SIZE
            );
        }
        let memory_high_watermark = match cli
            .memory_high_watermark
            .or(file.memory_high_watermark.map(NumOrStr::into_string))
        {
            Some(s) => Watermark::parse(&s).map_err(|e| anyhow::anyhow!("--memory-high-watermark: {e}"))?,
            None => d.memory_high_watermark,
        };
        let disk_free_limit = match cli
            .disk_free_limit
            .or(file.disk_free_limit.map(NumOrStr::into_string))
        {
            Some(s) => DiskLimit::parse(&s).map_err(|e| anyhow::anyhow!("--disk-free-limit: {e}"))?,
            None => d.disk_free_limit,
        };
        let max_message_size = match cli
            .max_message_size
            .or(file.max_message_size.map(NumOrStr::into_string))
        {
            Some(s) => parse_size(&s).map_err(|e| anyhow::anyhow!("--max-message-size: {e}"))?,
            None => d.max_message_size,
        };
        if max_message_size == 0 || max_message_size > MAX_MAX_MESSAGE_SIZE {
            anyhow::bail!("--max-message-size must be between 1 byte and 512MiB, got {max_message_size}");
        }
        let size = |v: Option<NumOrStr>, default: u64, what: &str| -> anyhow::Result<u64> {
            match v {
                Some(v) => parse_size(&v.into_string()).map_err(|e| anyhow::anyhow!("{what}: {e}")),
                None => Ok(default),
            }
        };
        let queue_bound = QueueBound {
            max_messages: file
                .queue_flow_max_messages
                .unwrap_or(d.queue_bound.max_messages)
                .max(1),
            max_bytes: size(
                file.queue_flow_max_bytes,
                d.queue_bound.max_bytes,
                "queue_flow_max_bytes",
            )?
            .max(1),
        };
        let publish_budget_bytes = size(
            file.connection_publish_budget_bytes,
            d.publish_budget_bytes,
            "connection_publish_budget_bytes",
        )?;
        let consumer_timeout = match cli.consumer_timeout.or(file.consumer_timeout) {
            Some(0) => None,
            Some(ms) => Some(std::time::Duration::from_millis(ms)),
            None => d.consumer_timeout,
        };
        Ok(Config {
            http_listen,
            http_listen_is_default,
            loopback_users: file.loopback_users.unwrap_or(d.loopback_users),
            definitions: cli.definitions.or(file.definitions),
            memory_high_watermark,
            memory_paging_ratio: match file.memory_paging_ratio {
                Some(r) if !(0.0..=1.0).contains(&r) => {
                    anyhow::bail!("memory_paging_ratio {r} is not between 0 and 1")
                }
                Some(r) => r,
                None => d.memory_paging_ratio,
            },
            disk_free_limit,
            max_message_size,
            max_connections: cli.max_connections.or(file.max_connections),
            consumer_timeout,
            queue_bound,
            publish_budget: file.connection_publish_budget.unwrap_or(d.publish_budget).max(1),
            publish_budget_bytes: publish_budget_bytes.max(1),
            yield_after_write: file.yield_after_write.unwrap_or(d.yield_after_write),
            listen,
            listen_is_default,
            data_dir: cli.data_dir.or(file.data_dir).unwrap_or(d.data_dir),
            log_level: cli.log_level.or(file.log_level).unwrap_or(d.log_level),
            frame_max,
            channel_max: file.channel_max.unwrap_or(d.channel_max),
            heartbeat: file.heartbeat.unwrap_or(d.heartbeat),
            handshake_timeout: d.handshake_timeout,
            store_cache_bytes: file
                .store_cache_mib
                .map(|m| m << 20)
                .unwrap_or(d.store_cache_bytes),
            shutdown_timeout: cli
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .map(std::time::Duration::from_secs)
                .unwrap_or(d.shutdown_timeout),
            force_recovery: cli.force_recovery,
            tls_listen,
            tls_listen_is_default,
            https_listen,
            tls,
            prometheus_listen,
            prometheus_listen_is_default,
            trace: file.trace.unwrap_or_default(),
        })
    }
}

/// Listen addresses (`HOST:PORT` or `[IPv6]:PORT`).
fn parse_addrs(given: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    given
        .iter()
        .map(|a| {
            a.trim()
                .parse::<SocketAddr>()
                .with_context(|| format!("invalid listen address '{a}' (expected HOST:PORT, or [IPv6]:PORT)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let cli = Cli {
            listen: vec!["127.0.0.1:7000".into()],
            ..Default::default()
        };
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:6000\"\ndata_dir = \"/tmp/x\"\nlog_level = \"debug\"\nheartbeat = 5\n",
        )
        .unwrap();
        let c = Config::merge(cli, file).unwrap();
        assert_eq!(c.listen.len(), 1);
        assert_eq!(c.listen[0].port(), 7000);
        assert!(!c.listen_is_default);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.heartbeat, 5);
        let c = Config::merge(Cli::default(), FileConfig::default()).unwrap();
        let defaults: Vec<String> = c.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(defaults, DEFAULT_LISTEN);
        assert!(c.listen_is_default);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let cli = Cli {
            listen: vec!["nowhere".into()],
            ..Default::default()
        };
        let e = Config::merge(cli, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("invalid listen address"));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        let cli = Cli::try_parse_from(["mailroom", "--max-message-size", "600MiB"]).unwrap();
        assert!(Config::merge(cli, FileConfig::default()).is_err());
        let cli = Cli::try_parse_from(["mailroom", "--memory-high-watermark", "3.5"]).unwrap();
        assert!(Config::merge(cli, FileConfig::default()).is_err());
    }

    #[test]
    fn flow_control_settings() {
        let c = Config::merge(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(c.memory_high_watermark, Watermark::Relative(0.6));
        assert_eq!(c.disk_free_limit, DiskLimit::Absolute(50_000_000));
        assert_eq!(c.max_message_size, 16 << 20);
        assert_eq!(c.consumer_timeout, Some(std::time::Duration::from_secs(1800)));
        let file: FileConfig = toml::from_str(
            "memory_high_watermark = 0.4\ndisk_free_limit = \"1GB\"\nmax_message_size = \"1MiB\"\n\
             max_connections = 10\nconsumer_timeout = 0\nqueue_flow_max_messages = 5\n\
             queue_flow_max_bytes = \"1MiB\"\n",
        )
        .unwrap();
        let c = Config::merge(Cli::default(), file).unwrap();
        assert_eq!(c.memory_high_watermark, Watermark::Relative(0.4));
        assert_eq!(c.disk_free_limit, DiskLimit::Absolute(1_000_000_000));
        assert_eq!(c.max_message_size, 1 << 20);
        assert_eq!(c.max_connections, Some(10));
        assert_eq!(c.consumer_timeout, None);
        assert_eq!(c.queue_bound.max_messages, 5);
        assert_eq!(c.queue_bound.max_bytes, 1 << 20);
        assert!(c.yield_after_write, "on unless the file turns it off");
        let file: FileConfig = toml::from_str("yield_after_write = false").unwrap();
        assert!(!Config::merge(Cli::default(), file).unwrap().yield_after_write);
        let cli = Cli::try_parse_from(["mailroom", "--memory-high-watermark", "256MiB"]).unwrap();
        let file: FileConfig = toml::from_str("memory_high_watermark = 0.4").unwrap();
        assert_eq!(
            Config::merge(cli, file).unwrap().memory_high_watermark,
            Watermark::Absolute(256 << 20)
        );
    }

    #[test]
    fn tls_and_prometheus_settings() {
        let c = Config::merge(Cli::default(), FileConfig::default()).unwrap();
        assert!(c.tls.is_none() && c.tls_listen.is_empty());
        assert_eq!(c.prometheus_listen, vec!["127.0.0.1:15692".parse().unwrap()]);
        assert!(c.prometheus_listen_is_default);
        // A certificate without --tls-listen: RabbitMQ's port 5671 on the loopback addresses.
        let cli = Cli::try_parse_from(["mailroom", "--tls-cert", "c.pem", "--tls-key", "k.pem"]).unwrap();
        let c = Config::merge(cli, FileConfig::default()).unwrap();
        let tls = c.tls.unwrap();
        assert_eq!(
            (tls.cert.to_str(), tls.key.to_str(), tls.ca),
            (Some("c.pem"), Some("k.pem"), None)
        );
        assert!(c.tls_listen_is_default);
        assert!(c.tls_listen.iter().all(|a| a.port() == 5671));
        let file: FileConfig = toml::from_str(
            "tls_listen = [\"127.0.0.1:1\", \"127.0.0.1:2\"]\ntls_cert = \"c\"\ntls_key = \"k\"\n\
             tls_ca = \"ca\"\nprometheus_listen = \"127.0.0.1:9\"\n",
        )
        .unwrap();
        let c = Config::merge(Cli::default(), file).unwrap();
        assert_eq!(c.tls_listen.len(), 2);
        assert_eq!(c.tls.unwrap().ca, Some(PathBuf::from("ca")));
        assert_eq!(c.prometheus_listen, vec!["127.0.0.1:9".parse().unwrap()]);
        assert!(!c.prometheus_listen_is_default);
        // Half a TLS setup is an error, not a silent plain-text broker.
        let cli = Cli::try_parse_from(["mailroom", "--tls-cert", "c.pem"]).unwrap();
        assert!(Config::merge(cli, FileConfig::default()).is_err());
        let cli = Cli::try_parse_from(["mailroom", "--tls-listen", "127.0.0.1:5671"]).unwrap();
        assert!(Config::merge(cli, FileConfig::default()).is_err());
    }

    #[test]
    fn listen_repeats_in_flags_env_and_file() {
        // Flags: --listen more than once (clap also splits MAILROOM_LISTEN on commas the same way).
        let cli =
            Cli::try_parse_from(["mailroom", "--listen", "127.0.0.1:1", "--listen", "[::1]:2"]).unwrap();
        let c = Config::merge(cli, FileConfig::default()).unwrap();
        assert_eq!(
            c.listen,
            vec!["127.0.0.1:1".parse().unwrap(), "[::1]:2".parse().unwrap()]
        );
        let cli = Cli::try_parse_from(["mailroom", "--listen", "127.0.0.1:1,[::1]:2"]).unwrap();
        assert_eq!(Config::merge(cli, FileConfig::default()).unwrap().listen.len(), 2);
        // The file: one string or a list.
        let file: FileConfig = toml::from_str("listen = [\"127.0.0.1:3\", \"[::1]:3\"]").unwrap();
        let c = Config::merge(Cli::default(), file).unwrap();
        assert_eq!(c.listen.len(), 2);
        let file: FileConfig = toml::from_str("listen = \"127.0.0.1:4\"").unwrap();
        assert_eq!(Config::merge(Cli::default(), file).unwrap().listen.len(), 1);
    }

    #[test]
    fn http_listen_repeats_and_defaults() {
        let c = Config::merge(Cli::default(), FileConfig::default()).unwrap();
        let defaults: Vec<String> = c.http_listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(defaults, DEFAULT_HTTP_LISTEN);
        assert!(c.http_listen_is_default);
        assert_eq!(c.loopback_users, vec!["guest".to_string()]);
        let cli = Cli::try_parse_from([
            "mailroom",
            "--http-listen",
            "127.0.0.1:1",
            "--http-listen",
            "[::1]:2",
        ])
        .unwrap();
        let c = Config::merge(cli, FileConfig::default()).unwrap();
        assert_eq!(c.http_listen.len(), 2);
        assert!(!c.http_listen_is_default);
        let file: FileConfig = toml::from_str(
            "http_listen = [\"127.0.0.1:3\"]\nloopback_users = []\ndefinitions = \"/tmp/d.json\"",
        )
        .unwrap();
        let c = Config::merge(Cli::default(), file).unwrap();
        assert_eq!(c.http_listen, vec!["127.0.0.1:3".parse().unwrap()]);
        assert!(c.loopback_users.is_empty());
        assert_eq!(c.definitions, Some(PathBuf::from("/tmp/d.json")));
        let cli = Cli::try_parse_from(["mailroom", "--http-listen", "nowhere"]).unwrap();
        assert!(Config::merge(cli, FileConfig::default()).is_err());
    }
}
