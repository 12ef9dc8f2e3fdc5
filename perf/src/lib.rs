//! mailroom-perf: an AMQP 0-9-1 load generator (in the spirit of RabbitMQ's PerfTest and
//! LavinMQ's lavinmqperf) that speaks the protocol itself through the `protocol` crate.
//!
//! N producers and M consumers (one connection each) run in one process; every body
//! starts with a stamp (producer id, sequence, wall-clock send time) so consumers measure
//! end-to-end latency and detect lost, duplicated and out-of-order messages.

pub mod amqp;
pub mod cli;
pub mod consumer;
pub mod hist;
pub mod pace;
pub mod phase;
pub mod procmon;
pub mod producer;
pub mod report;
pub mod run;
pub mod tracker;
pub mod uri;

pub use cli::{Args, Settings};
pub use report::Report;

/// Runs a benchmark on a fresh multi-threaded runtime sized by `settings.threads`.
pub fn run_blocking(settings: Settings) -> anyhow::Result<Report> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.threads.max(1))
        .enable_all()
        .build()?;
    let r = rt.block_on(run::run(settings));
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    r
}

/// The binary's body: parse, run, print; returns the process exit code.
pub fn main_with_args(args: Args) -> i32 {
    let settings = match args.resolve() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mailroom-perf: {e:#}");
            return 1;
        }
    };
    let json = settings.json;
    match run_blocking(settings) {
        Ok(report) => {
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_text());
            }
            report.exit_code()
        }
        Err(e) => {
            eprintln!("mailroom-perf: {e:#}");
            1
        }
    }
}
