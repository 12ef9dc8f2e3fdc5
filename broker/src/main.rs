//! `mailroom`: the broker binary.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use broker::config::{Cli, Command, Config};
use broker::{watchdog, Server};

/// mimalloc instead of glibc's malloc: the per-message `Arc<Message>` and the short-lived buffers cost fewer
/// instructions to allocate and free (docs/decisions.md, "Allocator"; docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc.h (`mi_option_e`; the sys crate names only some options).
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// mimalloc commits its arenas eagerly by default on Linux: an idle broker had 56 MB of RSS instead of 12.
/// Committed on demand, the RSS is what the heap holds (docs/decisions.md, "Allocator"). The option must
/// be set before mimalloc makes its first arena, which happens before `main`: this runs from
/// `.init_array` at priority 100, before mimalloc's own initializer (`constructor(101)` in its prim.c).
#[cfg(target_os = "linux")]
extern "C" fn mimalloc_options() {
    // SAFETY: sets a process-wide mimalloc option before any allocation; no other thread exists yet.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array.00100"]
static MIMALLOC_OPTIONS: extern "C" fn() = mimalloc_options;

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
