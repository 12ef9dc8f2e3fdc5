//! Writes the seed corpora: `gen-corpus [DIR]` (default `fuzz/corpus`) creates `DIR/<target>/seed-NNN` for
//! every target. Seeds only ever get added; what libFuzzer found stays.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus"));
    for (name, run) in mailroom_fuzz::TARGETS {
        let seeds = mailroom_fuzz::seeds::for_target(name);
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        for (i, s) in seeds.iter().enumerate() {
            run(s);
            std::fs::write(d.join(format!("seed-{i:03}")), s)?;
        }
        println!("{name}: {} seeds in {}", seeds.len(), d.display());
    }
    Ok(())
}
