//! `mailroomctl`: Mailroom's command line. It talks to the management HTTP API only (never to the store):
//! exchanges, queues, bindings, publish and get, dead letters, users, vhosts, permissions, policies and
//! definitions. Output is an aligned table by default, JSON with `--format json`. Exit codes: 0 ok, 1 an
//! error (the broker refused, or could not be reached), 2 bad usage.
//!
//! Connection settings: flags, then the environment (`MAILROOM_HTTP_URL`, `MAILROOM_USER`,
//! `MAILROOM_PASSWORD`, `MAILROOM_VHOST`), then a TOML file (`--config`, `MAILROOMCTL_CONFIG`, or
//! `~/.config/mailroomctl.toml`: `url`, `user`, `password`, `vhost`), then `http://127.0.0.1:15672`,
//! guest/guest, `/`.

mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Map, Value};

#[derive(Parser, Debug)]
#[command(
    name = "mailroomctl",
    version,
    about = "Mailroom's command line (over the management HTTP API)"
)]
struct Cli {
    /// Base URL of the management API.
    #[arg(long, env = "MAILROOM_HTTP_URL", global = true)]
    url: Option<String>,
    #[arg(long, env = "MAILROOM_USER", global = true)]
    user: Option<String>,
    #[arg(long, env = "MAILROOM_PASSWORD", global = true, hide_env_values = true)]
    password: Option<String>,
    /// Virtual host the command works in.
    #[arg(long, env = "MAILROOM_VHOST", global = true)]
    vhost: Option<String>,
    /// TOML file with `url`, `user`, `password`, `vhost`.
    #[arg(long, env = "MAILROOMCTL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Table, global = true)]
    format: Format,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The broker's overview (counts, versions, listeners).
    Overview,
    #[command(subcommand)]
    Exchanges(Exchanges),
    #[command(subcommand)]
    Queues(Queues),
    #[command(subcommand)]
    Bindings(Bindings),
    /// Binds a queue (or with --destination-type exchange, an exchange) to an exchange.
    Bind(BindArgs),
    /// Removes a binding.
    Unbind(BindArgs),
    /// Publishes one message.
    Publish {
        #[arg(long, default_value = "")]
        exchange: String,
        #[arg(long, default_value = "")]
        routing_key: String,
        #[arg(long)]
        payload: String,
        /// A basic property, `name=value` (repeatable; `delivery_mode=2` for persistent).
        #[arg(long = "property", value_name = "NAME=VALUE")]
        properties: Vec<String>,
        /// A header, `name=value` (repeatable).
        #[arg(long = "header", value_name = "NAME=VALUE")]
        headers: Vec<String>,
    },
    /// Gets messages from a queue (by default they stay there: ack_requeue_true).
    Get {
        queue: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value = "ack_requeue_true")]
        ackmode: String,
    },
    #[command(subcommand)]
    Dlq(Dlq),
    #[command(subcommand)]
    Users(Users),
    #[command(subcommand)]
    Vhosts(Vhosts),
    #[command(subcommand)]
    Permissions(Permissions),
    #[command(subcommand)]
    Policies(Policies),
    #[command(subcommand)]
    Definitions(Definitions),
    /// Lists the open connections.
    Connections,
    /// Message-move tasks (`dlq redrive --async`).
    #[command(subcommand)]
    Tasks(Tasks),
}

/// The columns of a task table.
const TASK_COLUMNS: &[&str] = &[
    "id",
    "vhost",
    "source",
    "destination",
    "state",
    "moved",
    "total",
    "rate_limit",
];

#[derive(Subcommand, Debug)]
enum Tasks {
    /// Every task with its progress.
    List,
    /// One task.
    Show { id: u64 },
    /// Cancels a running task (what it moved stays moved).
    Cancel { id: u64 },
}

#[derive(Subcommand, Debug)]
enum Exchanges {
    List,
    Declare {
        name: String,
        #[arg(long = "type", default_value = "direct")]
        kind: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long)]
        internal: bool,
        /// An argument, `name=value` (numbers and true/false are typed).
        #[arg(long = "argument", value_name = "NAME=VALUE")]
        arguments: Vec<String>,
    },
    Delete {
        name: String,
        #[arg(long)]
        if_unused: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Queues {
    List,
    Declare {
        name: String,
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        durable: bool,
        #[arg(long)]
        auto_delete: bool,
        #[arg(long = "argument", value_name = "NAME=VALUE")]
        arguments: Vec<String>,
    },
    Delete {
        name: String,
        #[arg(long)]
        if_empty: bool,
        #[arg(long)]
        if_unused: bool,
    },
    Purge {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum Bindings {
    List,
}

#[derive(clap::Args, Debug)]
struct BindArgs {
    #[arg(long)]
    source: String,
    #[arg(long)]
    destination: String,
    #[arg(long, default_value = "queue", value_parser = ["queue", "exchange"])]
    destination_type: String,
    #[arg(long, default_value = "")]
    routing_key: String,
    #[arg(long = "argument", value_name = "NAME=VALUE")]
    arguments: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Dlq {
    /// Shows a dead-letter queue's messages with where and why they died (x-death), leaving them there.
    List {
        queue: String,
        #[arg(long, default_value_t = 20)]
        count: u64,
    },
    /// Moves dead letters back to the queue each died in (or `--to QUEUE`), all or the first `--count`.
    Redrive {
        queue: String,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        count: Option<u64>,
        /// Only the messages with these message-ids (repeatable).
        #[arg(long = "message-id", value_name = "ID")]
        message_ids: Vec<String>,
        /// At most this many messages per second.
        #[arg(long)]
        rate: Option<u64>,
        /// Start the move as a task and print it without waiting (`mailroomctl tasks show ID`).
        #[arg(long = "async")]
        no_wait: bool,
    },
}

#[derive(Subcommand, Debug)]
enum Users {
    List,
    Add {
        name: String,
        /// The new user's password (`--password` is the one mailroomctl logs in with).
        #[arg(long = "new-password")]
        new_password: String,
        /// Comma-separated: administrator, monitoring, policymaker, management.
        #[arg(long, default_value = "")]
        tags: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum Vhosts {
    List,
    Add { name: String },
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
enum Permissions {
    List,
    /// Sets a user's configure/write/read regexes in the vhost (`--vhost`).
    Set {
        #[arg(value_name = "USER")]
        who: String,
        #[arg(long, default_value = ".*")]
        configure: String,
        #[arg(long, default_value = ".*")]
        write: String,
        #[arg(long, default_value = ".*")]
        read: String,
    },
    Clear {
        #[arg(value_name = "USER")]
        who: String,
    },
}

#[derive(Subcommand, Debug)]
enum Policies {
    List,
    Set {
        name: String,
        #[arg(long)]
        pattern: String,
        /// The definition as JSON, e.g. '{"max-length": 1000}'.
        #[arg(long)]
        definition: String,
        #[arg(long, default_value_t = 0)]
        priority: i64,
        #[arg(long, default_value = "all")]
        apply_to: String,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum Definitions {
    /// Writes the broker's definitions (RabbitMQ's format) to FILE (`-`: standard output).
    Export { file: PathBuf },
    /// Imports a definitions file (RabbitMQ's format).
    Import { file: PathBuf },
}

#[derive(serde::Deserialize, Default)]
struct FileConfig {
    url: Option<String>,
    user: Option<String>,
    password: Option<String>,
    vhost: Option<String>,
}

struct Ctl {
    base: String,
    user: String,
    password: String,
    vhost: String,
    format: Format,
    http: reqwest::Client,
}

fn seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `name=value` pairs to a JSON object; integers and booleans are typed.
fn pairs(items: &[String]) -> anyhow::Result<Map<String, Value>> {
    let mut m = Map::new();
    for item in items {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("'{item}' is not NAME=VALUE"))?;
        let value = if let Ok(i) = v.parse::<i64>() {
            json!(i)
        } else if v == "true" || v == "false" {
            json!(v == "true")
        } else {
            json!(v)
        };
        m.insert(k.to_string(), value);
    }
    Ok(m)
}

impl Ctl {
    fn vpath(&self) -> String {
        seg(&self.vhost)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), path);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .basic_auth(&self.user, Some(&self.password));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the management API at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let reason = v
                .get("reason")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| v.to_string());
            bail!("{method} {path}: {} {reason}", status.as_u16());
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, None).await
    }

    /// Prints a list as a table of `columns`, or as JSON.
    fn list(&self, v: &Value, columns: &[&str]) {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            Format::Table => print!(
                "{}",
                table::render(v.as_array().map(Vec::as_slice).unwrap_or(&[]), columns)
            ),
        }
    }

    fn object(&self, v: &Value) {
        match self.format {
            Format::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            Format::Table => print!("{}", table::render_object(v)),
        }
    }

    fn done(&self, what: &str) {
        match self.format {
            Format::Json => println!("{}", json!({"ok": true, "done": what})),
            Format::Table => println!("{what}"),
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file: FileConfig = {
        let path = cli
            .config
            .clone()
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/mailroomctl.toml")));
        match path {
            Some(p) if p.exists() => toml::from_str(
                &std::fs::read_to_string(&p).with_context(|| format!("cannot read {}", p.display()))?,
            )
            .with_context(|| format!("invalid config file {}", p.display()))?,
            Some(p) if cli.config.is_some() => bail!("config file {} does not exist", p.display()),
            _ => FileConfig::default(),
        }
    };
    let ctl = Ctl {
        base: cli
            .url
            .or(file.url)
            .unwrap_or_else(|| "http://127.0.0.1:15672".into()),
        user: cli.user.or(file.user).unwrap_or_else(|| "guest".into()),
        password: cli.password.or(file.password).unwrap_or_else(|| "guest".into()),
        vhost: cli.vhost.or(file.vhost).unwrap_or_else(|| "/".into()),
        format: cli.format,
        http: reqwest::Client::new(),
    };
    use reqwest::Method as M;
    let v = ctl.vpath();
    match cli.command {
        Cmd::Overview => {
            let o = ctl.get("/api/overview").await?;
            match ctl.format {
                Format::Json => ctl.object(&o),
                Format::Table => {
                    let t = &o["object_totals"];
                    let q = &o["queue_totals"];
                    let row = json!([{
                        "product": format!("{} {}", o["product_name"].as_str().unwrap_or(""), o["product_version"].as_str().unwrap_or("")),
                        "node": o["node"], "connections": t["connections"], "channels": t["channels"],
                        "queues": t["queues"], "exchanges": t["exchanges"], "consumers": t["consumers"],
                        "messages": q["messages"], "ready": q["messages_ready"], "unacked": q["messages_unacknowledged"],
                    }]);
                    ctl.list(
                        &row,
                        &[
                            "product",
                            "node",
                            "connections",
                            "channels",
                            "queues",
                            "exchanges",
                            "consumers",
                            "messages",
                            "ready",
                            "unacked",
                        ],
                    );
                }
            }
        }
        Cmd::Exchanges(Exchanges::List) => {
            let l = ctl.get(&format!("/api/exchanges/{v}")).await?;
            ctl.list(
                &l,
                &["name", "type", "durable", "auto_delete", "internal", "arguments"],
            );
        }
        Cmd::Exchanges(Exchanges::Declare {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
        }) => {
            let body = json!({"type": kind, "durable": durable, "auto_delete": auto_delete, "internal": internal,
                              "arguments": pairs(&arguments)?});
            ctl.call(M::PUT, &format!("/api/exchanges/{v}/{}", seg(&name)), Some(body))
                .await?;
            ctl.done(&format!("exchange '{name}' declared"));
        }
        Cmd::Exchanges(Exchanges::Delete { name, if_unused }) => {
            let q = if if_unused { "?if-unused=true" } else { "" };
            ctl.call(M::DELETE, &format!("/api/exchanges/{v}/{}{q}", seg(&name)), None)
                .await?;
            ctl.done(&format!("exchange '{name}' deleted"));
        }
        Cmd::Queues(Queues::List) => {
            let l = ctl.get(&format!("/api/queues/{v}")).await?;
            ctl.list(
                &l,
                &[
                    "name",
                    "durable",
                    "messages",
                    "messages_ready",
                    "messages_unacknowledged",
                    "consumers",
                    "policy",
                ],
            );
        }
        Cmd::Queues(Queues::Declare {
            name,
            durable,
            auto_delete,
            arguments,
        }) => {
            let body =
                json!({"durable": durable, "auto_delete": auto_delete, "arguments": pairs(&arguments)?});
            ctl.call(M::PUT, &format!("/api/queues/{v}/{}", seg(&name)), Some(body))
                .await?;
            ctl.done(&format!("queue '{name}' declared"));
        }
        Cmd::Queues(Queues::Delete {
            name,
            if_empty,
            if_unused,
        }) => {
            let q = format!("?if-empty={if_empty}&if-unused={if_unused}");
            ctl.call(M::DELETE, &format!("/api/queues/{v}/{}{q}", seg(&name)), None)
                .await?;
            ctl.done(&format!("queue '{name}' deleted"));
        }
        Cmd::Queues(Queues::Purge { name }) => {
            ctl.call(
                M::DELETE,
                &format!("/api/queues/{v}/{}/contents", seg(&name)),
                None,
            )
            .await?;
            ctl.done(&format!("queue '{name}' purged"));
        }
        Cmd::Bindings(Bindings::List) => {
            let l = ctl.get(&format!("/api/bindings/{v}")).await?;
            ctl.list(
                &l,
                &[
                    "source",
                    "destination",
                    "destination_type",
                    "routing_key",
                    "arguments",
                ],
            );
        }
        Cmd::Bind(b) => {
            let t = if b.destination_type == "queue" { "q" } else { "e" };
            let body = json!({"routing_key": b.routing_key, "arguments": pairs(&b.arguments)?});
            let path = format!(
                "/api/bindings/{v}/e/{}/{t}/{}",
                seg(&b.source),
                seg(&b.destination)
            );
            ctl.call(M::POST, &path, Some(body)).await?;
            ctl.done(&format!(
                "bound '{}' to '{}' with '{}'",
                b.destination, b.source, b.routing_key
            ));
        }
        Cmd::Unbind(b) => {
            let t = if b.destination_type == "queue" { "q" } else { "e" };
            let path = format!(
                "/api/bindings/{v}/e/{}/{t}/{}",
                seg(&b.source),
                seg(&b.destination)
            );
            let args = Value::Object(pairs(&b.arguments)?);
            let list = ctl.get(&path).await?;
            let found = list
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["routing_key"] == b.routing_key.as_str() && x["arguments"] == args)
                .and_then(|x| x["properties_key"].as_str().map(str::to_string))
                .ok_or_else(|| anyhow!("no such binding"))?;
            ctl.call(M::DELETE, &format!("{path}/{}", seg(&found)), None)
                .await?;
            ctl.done(&format!("unbound '{}' from '{}'", b.destination, b.source));
        }
        Cmd::Publish {
            exchange,
            routing_key,
            payload,
            properties,
            headers,
        } => {
            let mut props = pairs(&properties)?;
            if !headers.is_empty() {
                props.insert("headers".into(), Value::Object(pairs(&headers)?));
            }
            let x = if exchange.is_empty() {
                "amq.default".to_string()
            } else {
                exchange
            };
            let body = json!({"routing_key": routing_key, "payload": payload, "payload_encoding": "string", "properties": props});
            let r = ctl
                .call(
                    M::POST,
                    &format!("/api/exchanges/{v}/{}/publish", seg(&x)),
                    Some(body),
                )
                .await?;
            match ctl.format {
                Format::Json => ctl.object(&r),
                Format::Table => println!("routed: {}", r["routed"]),
            }
        }
        Cmd::Get {
            queue,
            count,
            ackmode,
        } => {
            let body = json!({"count": count, "ackmode": ackmode, "encoding": "auto"});
            let r = ctl
                .call(
                    M::POST,
                    &format!("/api/queues/{v}/{}/get", seg(&queue)),
                    Some(body),
                )
                .await?;
            ctl.list(
                &r,
                &[
                    "routing_key",
                    "exchange",
                    "redelivered",
                    "payload_bytes",
                    "payload",
                ],
            );
        }
        Cmd::Dlq(Dlq::List { queue, count }) => {
            let body =
                json!({"count": count, "ackmode": "ack_requeue_true", "encoding": "auto", "truncate": 200});
            let r = ctl
                .call(
                    M::POST,
                    &format!("/api/queues/{v}/{}/get", seg(&queue)),
                    Some(body),
                )
                .await?;
            let rows: Vec<Value> = r
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let death = &m["properties"]["headers"]["x-death"][0];
                    json!({"routing_key": m["routing_key"], "died_in": death["queue"], "reason": death["reason"],
                           "count": death["count"], "payload": m["payload"]})
                })
                .collect();
            match ctl.format {
                Format::Json => ctl.object(&r),
                Format::Table => ctl.list(
                    &Value::Array(rows),
                    &["died_in", "reason", "count", "routing_key", "payload"],
                ),
            }
        }
        Cmd::Dlq(Dlq::Redrive {
            queue,
            to,
            count,
            message_ids,
            rate,
            no_wait,
        }) => {
            let ids = (!message_ids.is_empty()).then_some(message_ids);
            let body = json!({"to": to, "count": count, "message_ids": ids, "rate": rate, "wait": !no_wait});
            let r = ctl
                .call(
                    M::POST,
                    &format!("/api/queues/{v}/{}/redrive", seg(&queue)),
                    Some(body),
                )
                .await?;
            match ctl.format {
                Format::Json => ctl.object(&r),
                Format::Table if no_wait => println!("task {} started", r["id"]),
                Format::Table => println!("moved: {}, kept: {}", r["moved"], r["kept"]),
            }
        }
        Cmd::Tasks(Tasks::List) => {
            let l = ctl.get("/api/tasks").await?;
            ctl.list(&l, TASK_COLUMNS);
        }
        Cmd::Tasks(Tasks::Show { id }) => {
            let r = ctl.get(&format!("/api/tasks/{id}")).await?;
            match ctl.format {
                Format::Json => ctl.object(&r),
                Format::Table => ctl.list(&Value::Array(vec![r]), TASK_COLUMNS),
            }
        }
        Cmd::Tasks(Tasks::Cancel { id }) => {
            let r = ctl.call(M::DELETE, &format!("/api/tasks/{id}"), None).await?;
            match ctl.format {
                Format::Json => ctl.object(&r),
                Format::Table => println!(
                    "task {id} {}: moved {} of {}",
                    r["state"].as_str().unwrap_or("?"),
                    r["moved"],
                    r["total"]
                ),
            }
        }
        Cmd::Users(Users::List) => {
            let l = ctl.get("/api/users").await?;
            ctl.list(&l, &["name", "tags", "hashing_algorithm"]);
        }
        Cmd::Users(Users::Add {
            name,
            new_password: password,
            tags,
        }) => {
            ctl.call(
                M::PUT,
                &format!("/api/users/{}", seg(&name)),
                Some(json!({"password": password, "tags": tags})),
            )
            .await?;
            ctl.done(&format!("user '{name}' added"));
        }
        Cmd::Users(Users::Delete { name }) => {
            ctl.call(M::DELETE, &format!("/api/users/{}", seg(&name)), None)
                .await?;
            ctl.done(&format!("user '{name}' deleted"));
        }
        Cmd::Vhosts(Vhosts::List) => {
            let l = ctl.get("/api/vhosts").await?;
            ctl.list(
                &l,
                &["name", "messages", "messages_ready", "messages_unacknowledged"],
            );
        }
        Cmd::Vhosts(Vhosts::Add { name }) => {
            ctl.call(M::PUT, &format!("/api/vhosts/{}", seg(&name)), Some(json!({})))
                .await?;
            ctl.done(&format!("vhost '{name}' added"));
        }
        Cmd::Vhosts(Vhosts::Delete { name }) => {
            ctl.call(M::DELETE, &format!("/api/vhosts/{}", seg(&name)), None)
                .await?;
            ctl.done(&format!("vhost '{name}' deleted"));
        }
        Cmd::Permissions(Permissions::List) => {
            let l = ctl.get(&format!("/api/vhosts/{v}/permissions")).await?;
            ctl.list(&l, &["user", "vhost", "configure", "write", "read"]);
        }
        Cmd::Permissions(Permissions::Set {
            who: user,
            configure,
            write,
            read,
        }) => {
            let body = json!({"configure": configure, "write": write, "read": read});
            ctl.call(
                M::PUT,
                &format!("/api/permissions/{v}/{}", seg(&user)),
                Some(body),
            )
            .await?;
            ctl.done(&format!("permissions of '{user}' in '{}' set", ctl.vhost));
        }
        Cmd::Permissions(Permissions::Clear { who: user }) => {
            ctl.call(M::DELETE, &format!("/api/permissions/{v}/{}", seg(&user)), None)
                .await?;
            ctl.done(&format!("permissions of '{user}' in '{}' cleared", ctl.vhost));
        }
        Cmd::Policies(Policies::List) => {
            let l = ctl.get(&format!("/api/policies/{v}")).await?;
            ctl.list(&l, &["name", "pattern", "apply-to", "priority", "definition"]);
        }
        Cmd::Policies(Policies::Set {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        }) => {
            let def: Value = serde_json::from_str(&definition).context("--definition is not JSON")?;
            let body =
                json!({"pattern": pattern, "definition": def, "priority": priority, "apply-to": apply_to});
            ctl.call(M::PUT, &format!("/api/policies/{v}/{}", seg(&name)), Some(body))
                .await?;
            ctl.done(&format!("policy '{name}' set"));
        }
        Cmd::Policies(Policies::Delete { name }) => {
            ctl.call(M::DELETE, &format!("/api/policies/{v}/{}", seg(&name)), None)
                .await?;
            ctl.done(&format!("policy '{name}' deleted"));
        }
        Cmd::Definitions(Definitions::Export { file }) => {
            let d = ctl.get("/api/definitions").await?;
            let text = serde_json::to_string_pretty(&d)? + "\n";
            if file.as_os_str() == "-" {
                print!("{text}");
            } else {
                std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
                ctl.done(&format!("definitions exported to {}", file.display()));
            }
        }
        Cmd::Definitions(Definitions::Import { file }) => {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let d: Value =
                serde_json::from_str(&text).with_context(|| format!("{} is not JSON", file.display()))?;
            ctl.call(M::POST, "/api/definitions", Some(d)).await?;
            ctl.done(&format!("definitions imported from {}", file.display()));
        }
        Cmd::Connections => {
            let l = ctl.get("/api/connections").await?;
            ctl.list(
                &l,
                &["name", "user", "vhost", "channels", "client_properties.product"],
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // clap exits with 2 on bad usage.
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mailroomctl: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailroomctl: {e:#}");
            ExitCode::from(1)
        }
    }
}
