//! `mailroom`: the broker binary.

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use broker::config::{Cli, Config};
use broker::Server;

fn main() -> anyhow::Result<()> {
    let config = Config::load(Cli::parse())?;
    let filter = EnvFilter::try_new(&config.log_level)
        .map_err(|e| anyhow::anyhow!("invalid log level '{}': {e}", config.log_level))?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        // Handlers first, so a SIGTERM that arrives while the store opens still means a clean stop.
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let server = match Server::bind(config).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("{e:#}");
                return Err(e);
            }
        };
        let shutdown = CancellationToken::new();
        let signal_token = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received: shutting down");
            signal_token.cancel();
        });
        server.run(shutdown).await;
        Ok(())
    })
}
