use clap::Parser;

fn main() {
    let args = mailroom_perf::Args::parse();
    std::process::exit(mailroom_perf::main_with_args(args));
}
