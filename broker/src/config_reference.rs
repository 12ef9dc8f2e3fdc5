//! The configuration reference in docs/operations.md, generated from the settings themselves: the flags and
//! environment variables from clap's description of [`Cli`], the TOML keys from serde's description of
//! [`FileConfig`] (the list its unknown-field error names), and for the keys that only the file has, the
//! table below. `mailroom --print-config-reference` prints it; a test keeps the doc in sync.

use clap::CommandFactory;

use crate::config::{Cli, FileConfig};

/// Settings only the TOML file has: (key, description).
pub const FILE_ONLY: &[(&str, &str)] = &[
    (
        "frame_max",
        "Largest frame the server offers in connection.tune, bytes (default 131072; 0: no limit).",
    ),
    (
        "channel_max",
        "Highest channel number the server offers (default 2047).",
    ),
    (
        "heartbeat",
        "Heartbeat interval the server proposes, seconds (default 60; 0: none).",
    ),
    (
        "store_cache_mib",
        "sled's page cache for definitions, MiB (default 64).",
    ),
    (
        "memory_paging_ratio",
        "Fraction of the memory high watermark above which queues page new messages to disk instead of \
         keeping them in memory (default 0.5, RabbitMQ 3.x's vm_memory_high_watermark_paging_ratio).",
    ),
    (
        "queue_flow_max_messages",
        "Per-queue flow bound: ready messages in memory while the queue has consumers, before publishers \
         to it are throttled (see docs/flow-control.md).",
    ),
    (
        "queue_flow_max_bytes",
        "Per-queue flow bound in body bytes (a size such as \"64MiB\").",
    ),
    (
        "connection_publish_budget",
        "Publishes a connection handles per wake-up (default 256).",
    ),
    (
        "connection_publish_budget_bytes",
        "Body bytes a connection handles per wake-up (default 1MiB).",
    ),
    (
        "yield_after_write",
        "After a write that fills a consumer's prefetch window, offer the core to a thread waiting for it \
         (sched_yield), so that a client on the same cores reads and acks sooner (default true). See \
         docs/decisions.md.",
    ),
    (
        "trace",
        "Message tracing's bounds, a table: `buffer_events` (events buffered for the recorder; beyond, dropped \
         and counted; default 65536), `max_events` (kept in the store; default 1000000), `max_age_secs` \
         (default 86400), `recorder_busy_percent` (the recorder's share of a core under overload; default 10). \
         See docs/event-streams.md.",
    ),
    (
        "loopback_users",
        "Users that may only connect (AMQP and HTTP) from a loopback address, RabbitMQ's loopback_users          (default [\"guest\"]; [] allows guest from anywhere).",
    ),
];

/// The TOML keys `FileConfig` accepts, in declaration order.
pub fn file_keys() -> Vec<String> {
    let err = match toml::from_str::<FileConfig>("__no_such_key__ = 1") {
        Ok(_) => return Vec::new(),
        Err(e) => e.to_string(),
    };
    let Some((_, list)) = err.split_once("expected one of") else {
        return Vec::new();
    };
    list.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

/// The Markdown table.
pub fn render() -> String {
    let keys = file_keys();
    let mut out = String::from("| Flag | Environment | TOML key | What |\n| --- | --- | --- | --- |\n");
    let cmd = Cli::command();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .filter(|_| arg.get_action().takes_values())
            .map(|v| format!(" {}", v.as_str().replace('|', "\\|")))
            .unwrap_or_default();
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_default();
        let key = long.replace('-', "_");
        let key = if keys.contains(&key) {
            format!("`{key}`")
        } else {
            String::new()
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string().replace('\n', " ").replace('|', "\\|"))
            .unwrap_or_default();
        out.push_str(&format!("| `--{long}{value}` | {env} | {key} | {help} |\n"));
    }
    for (key, help) in FILE_ONLY {
        out.push_str(&format!("|  |  | `{key}` | {help} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_key_is_a_flag_or_described() {
        let keys = file_keys();
        assert!(keys.contains(&"listen".to_string()), "{keys:?}");
        let cmd = Cli::command();
        let flags: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long())
            .map(|l| l.replace('-', "_"))
            .collect();
        for k in &keys {
            assert!(
                flags.contains(k) || FILE_ONLY.iter().any(|(f, _)| f == k),
                "TOML key {k} has neither a flag nor a FILE_ONLY description"
            );
        }
        for (f, _) in FILE_ONLY {
            assert!(
                keys.iter().any(|k| k == f),
                "FILE_ONLY names {f}, which FileConfig lacks"
            );
            assert!(
                !flags.contains(&f.to_string()),
                "{f} has a flag: describe it there"
            );
        }
    }

    /// packaging/mailroom.service: the settings the issue asks for, and an ExecStart the binary accepts.
    #[test]
    fn systemd_unit_is_sound() {
        use clap::Parser;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/mailroom.service");
        let unit = std::fs::read_to_string(&path).expect("packaging/mailroom.service");
        let value = |key: &str| {
            unit.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{key}= missing"))
        };
        assert!(matches!(value("Type"), "simple" | "notify"));
        assert_eq!(value("Restart"), "on-failure");
        assert!(value("LimitNOFILE").parse::<u64>().unwrap() >= 65536);
        assert_eq!(value("KillSignal"), "SIGTERM");
        assert!(value("ExecReload").contains("-HUP"));
        let exec: Vec<&str> = value("ExecStart").split_whitespace().collect();
        assert!(exec[0].ends_with("/mailroom"));
        let cli = Cli::try_parse_from(exec).expect("ExecStart's flags are the binary's");
        assert!(cli.config.is_some() && cli.data_dir.is_some());
    }

    #[test]
    fn operations_doc_is_in_sync() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/operations.md");
        let doc = std::fs::read_to_string(&path).expect("docs/operations.md");
        let (start, end) = (
            "<!-- config-reference:start -->\n",
            "<!-- config-reference:end -->",
        );
        let from = doc.find(start).expect("start marker") + start.len();
        let to = doc.find(end).expect("end marker");
        assert_eq!(
            &doc[from..to],
            render(),
            "docs/operations.md's configuration table is stale: replace it with the output of \
             `mailroom --print-config-reference`"
        );
    }
}
