//! `mailroom`: the broker binary.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use broker::config::{Cli, Command, Config};
use broker::{watchdog, Server};

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.print_config_reference {
        print!("{}", broker::config_reference::render());
        return Ok(());
    }
    let command = cli.command.take();
    let config = Config::load(cli)?;
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("invalid log level '{}': {e}", config.log_level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();

    if let Some(Command::Recover { action }) = command {
        return broker::recover::run(&config, action);
    }

    // Signals are handled on a thread of their own, before the store opens: an early SIGTERM is still a
    // clean stop, and a runtime whose workers are all stuck cannot keep the broker from exiting.
    let shutdown = CancellationToken::new();
    watchdog::install_signal_thread(shutdown.clone(), config.shutdown_timeout)?;

    match watchdog::raise_fd_limit() {
        Ok(n) => tracing::info!(limit = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        watchdog::spawn_stall_detector();
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e:#}");
                return Err(e);
            }
        };
        server.run(shutdown).await;
        Ok(())
    })
}
