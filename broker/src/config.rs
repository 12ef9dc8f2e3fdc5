//! Settings: command-line flags win over environment variables, which win over the TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:5672";
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
    /// Address to accept AMQP connections on.
    #[arg(long, env = "MAILROOM_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// Directory holding the store.
    #[arg(long, env = "MAILROOM_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter such as `broker=debug`).
    #[arg(long, env = "MAILROOM_LOG", value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Seconds a graceful shutdown (SIGTERM/SIGINT) may take before the broker exits anyway (code 70).
    #[arg(long, env = "MAILROOM_SHUTDOWN_TIMEOUT", value_name = "SECS")]
    pub shutdown_timeout: Option<u64>,
    /// TOML file with `listen`, `data_dir`, `log_level` and the tuning settings.
    #[arg(long, env = "MAILROOM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The TOML file's contents. Every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub frame_max: Option<u32>,
    pub channel_max: Option<u16>,
    pub heartbeat: Option<u16>,
    pub store_cache_mib: Option<u64>,
    pub shutdown_timeout: Option<u64>,
}

/// The settings the broker runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("default listen address"),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            log_level: DEFAULT_LOG.to_string(),
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            handshake_timeout: std::time::Duration::from_secs(10),
            store_cache_bytes: 64 << 20,
            shutdown_timeout: std::time::Duration::from_secs(30),
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
        let listen = cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen
            .parse()
            .with_context(|| format!("invalid listen address '{listen}' (expected HOST:PORT)"))?;
        let frame_max = file.frame_max.unwrap_or(d.frame_max);
        if frame_max != 0 && frame_max < protocol::FRAME_MIN_SIZE {
            anyhow::bail!(
                "frame_max {frame_max} is below the minimum {}",
                protocol::FRAME_MIN_SIZE
            );
        }
        Ok(Config {
            listen,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let cli = Cli {
            listen: Some("127.0.0.1:7000".into()),
            ..Default::default()
        };
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:6000\"\ndata_dir = \"/tmp/x\"\nlog_level = \"debug\"\nheartbeat = 5\n",
        )
        .unwrap();
        let c = Config::merge(cli, file).unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.log_level, "debug");
        assert_eq!(c.heartbeat, 5);
        let c = Config::merge(Cli::default(), FileConfig::default()).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let cli = Cli {
            listen: Some("nowhere".into()),
            ..Default::default()
        };
        let e = Config::merge(cli, FileConfig::default()).unwrap_err();
        assert!(e.to_string().contains("invalid listen address"));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
    }
}
