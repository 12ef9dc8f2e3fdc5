//! `mailroom recover`: the operator's tools for what start-up recovery set aside in DIR/lost+found
//! (docs/failure-handling.md, "Message data without a definition"). Run with the broker stopped: the store
//! is opened (and locked) like the broker opens it.

use anyhow::Context;
use storage::{Store, StoreOptions};

use crate::config::{Config, RecoverAction};

pub fn run(config: &Config, action: RecoverAction) -> anyhow::Result<()> {
    let store = Store::open(
        &config.data_dir,
        StoreOptions {
            cache_capacity_bytes: config.store_cache_bytes,
            force_recovery: config.force_recovery,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("cannot open the data directory {}", config.data_dir.display()))?;
    match action {
        RecoverAction::List => {
            let lost = store.lost_found()?;
            if lost.is_empty() {
                println!("{}: nothing in lost+found", config.data_dir.display());
            }
            for l in lost {
                let def = match &l.definition {
                    Some(d) => format!("queue '{}' in vhost '{}'", d.name, d.vhost),
                    None => "no definition".to_string(),
                };
                println!(
                    "{}\tqueue id {}\t{} messages\t{}",
                    l.path.display(),
                    l.queue_id,
                    l.messages,
                    def
                );
            }
        }
        RecoverAction::Attach { path, vhost, queue } => {
            let path = if path.is_absolute() || path.exists() {
                path
            } else {
                config.data_dir.join(storage::LOST_FOUND).join(path)
            };
            let a = store
                .attach_lost(&path, &vhost, &queue)
                .with_context(|| format!("cannot attach {}", path.display()))?;
            println!(
                "attached {} messages to queue '{}' in vhost '{}'{} (queue id {}); {} removed",
                a.messages,
                queue,
                vhost,
                if a.created { " (created, durable)" } else { "" },
                a.queue_id,
                path.display()
            );
        }
    }
    Ok(())
}
