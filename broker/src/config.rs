//! Settings: command-line flags win over environment variables, which win over the TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

/// The default listeners: both loopback addresses, because Node.js (17+) and others resolve `localhost` to
/// `::1` first. `[::1]` is skipped with a warning on a host without IPv6.
pub const DEFAULT_LISTEN: [&str; 2] = ["127.0.0.1:5672", "[::1]:5672"];
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
    /// Start even if the definitions store is empty or unreadable while message data exists: restore the
    /// queues from the definition copies beside their messages and move whatever cannot be accounted for
    /// to DIR/lost+found (see docs/failure-handling.md). Without it such a data directory is refused.
    #[arg(long, env = "MAILROOM_FORCE_RECOVERY", global = true)]
    pub force_recovery: bool,
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
}

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
        let frame_max = file.frame_max.unwrap_or(d.frame_max);
        if frame_max != 0 && frame_max < protocol::FRAME_MIN_SIZE {
            anyhow::bail!(
                "frame_max {frame_max} is below the minimum {}",
                protocol::FRAME_MIN_SIZE
            );
        }
        Ok(Config {
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
        })
    }
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
}
