//! End-to-end test harness: starts the real `mailroom` binary on a free port with its own data dir, and gives
//! tests its address, a way to stop it (SIGTERM) or kill it (SIGKILL), and to restart it on the same data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Once;
use std::time::Duration;

pub mod faultfs;
pub mod fuzz_server;
pub mod http;
pub mod lazyfs;
pub mod raw;

/// Path of the workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<workspace>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d),
        None => workspace_root().join("target"),
    }
}

/// The `mailroom` binary, built once per test process if needed (same profile as the tests).
/// `MAILROOM_BIN=/path/to/mailroom` uses that binary instead and skips the build.
pub fn mailroom_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("MAILROOM_BIN") {
        return PathBuf::from(bin);
    }
    static BUILD: Once = Once::new();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    BUILD.call_once(|| {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root())
            .args(["build", "-q", "-p", "mailroom-broker", "--bin", "mailroom"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the mailroom binary");
        assert!(status.success(), "building mailroom failed");
    });
    target_dir().join(profile).join("mailroom")
}

/// The `mailroomctl` binary, built once per test process (same profile as the tests).
pub fn mailroomctl_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    BUILD.call_once(|| {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root())
            .args(["build", "-q", "-p", "mailroom-ctl", "--bin", "mailroomctl"]);
        if profile == "release" {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for mailroomctl");
        assert!(status.success(), "building mailroomctl failed");
    });
    target_dir().join(profile).join("mailroomctl")
}

/// A running broker process.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The management API's address (the harness listens on 127.0.0.1:0 for it too).
    pub http_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    log: mpsc::Receiver<String>,
    /// What the broker printed before it accepted connections (recovery warnings and the like).
    pub startup_log: Vec<String>,
}

impl Server {
    /// Starts a broker on a free port with a fresh temporary data dir.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().join("data");
        let mut s = Server::start_in(&dir, &[]);
        s._tmp = Some(tmp);
        s
    }

    /// Starts a broker on `data_dir` with extra arguments.
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Server {
        Self::try_start_in(data_dir, extra).expect("broker starts")
    }

    pub fn try_start_in(data_dir: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        Self::try_start_with_env(data_dir, extra, &[])
    }

    /// Like [`Server::try_start_in`], with extra environment variables (the debug build's test hooks).
    pub fn try_start_with_env(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        // The Prometheus endpoint on a free port unless the test picks one (its default port would be
        // contended by brokers started in parallel).
        let prometheus: &[&str] = if extra.contains(&"--prometheus-listen") {
            &[]
        } else {
            &["--prometheus-listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(mailroom_bin())
            .args(["--listen", "127.0.0.1:0", "--log-level", "info", "--data-dir"])
            .arg(data_dir)
            .args(["--http-listen", "127.0.0.1:0"])
            .args(prometheus)
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("MAILROOM_LISTEN")
            .env_remove("MAILROOM_DATA_DIR")
            .env_remove("MAILROOM_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if std::env::var_os("MAILROOM_TEST_LOG").is_some() {
                        eprintln!("[mailroom] {line}");
                    }
                    if tx.send(line).is_err() {
                        // Keep draining so the broker never blocks on a full pipe.
                        continue;
                    }
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(i) = line.find("accepting AMQP connections addr=") {
                        let addr = line[i + "accepting AMQP connections addr=".len()..]
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .parse()?;
                        seen.push(line);
                        // The broker logs its HTTP listeners before its AMQP ones.
                        let http_addr = seen.iter().find_map(|l| {
                            let i = l.find("accepting HTTP connections addr=")?;
                            l[i + "accepting HTTP connections addr=".len()..]
                                .split_whitespace()
                                .next()?
                                .parse()
                                .ok()
                        });
                        return Ok(Server {
                            child: Some(child),
                            addr,
                            http_addr,
                            data_dir: data_dir.to_path_buf(),
                            _tmp: None,
                            log: rx,
                            startup_log: seen,
                        });
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait()?;
                    anyhow::bail!("broker did not start ({status}); output:\n{}", seen.join("\n"));
                }
            }
        }
    }

    /// The management API's base URL, `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http_addr.expect("the broker listens for HTTP"))
    }

    /// The address a listener logged at startup (`<what> addr=...`), e.g. "serving Prometheus metrics" or
    /// "accepting AMQPS connections".
    pub fn logged_addr(&self, what: &str) -> Option<SocketAddr> {
        let needle = format!("{what} addr=");
        self.startup_log.iter().find_map(|l| {
            let i = l.find(&needle)? + needle.len();
            l[i..].split_whitespace().next()?.parse().ok()
        })
    }

    /// The Prometheus endpoint's address.
    pub fn prometheus_addr(&self) -> SocketAddr {
        self.logged_addr("serving Prometheus metrics")
            .expect("Prometheus listener in the startup log")
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Log lines printed so far (drains them).
    pub fn log_lines(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }

    /// Waits up to `within` for a log line containing `needle` and returns it (drains lines read so far).
    pub fn wait_for_log(&self, needle: &str, within: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return Some(line),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        child.wait().expect("wait for broker")
    }

    /// Sends `signal` and waits up to `within` for the exit: `None` if the broker is still running then
    /// (it is killed, so a frozen broker never outlives its test).
    pub fn signal_and_wait(&mut self, signal: i32, within: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, signal);
        }
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, then waits for the exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts on the same data dir (after stop or kill), on a new port.
    pub fn restart(&mut self) {
        self.kill();
        let mut next = Server::start_in(&self.data_dir.clone(), &[]);
        self.child = next.child.take();
        self.addr = next.addr;
        self.http_addr = next.http_addr;
        self.log = std::mem::replace(&mut next.log, mpsc::channel().1);
        self.startup_log = std::mem::take(&mut next.startup_log);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The Python interpreter of the project's virtualenv (made by `make test`), with pika installed.
pub fn python() -> PathBuf {
    let py = workspace_root().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing: run `make test`, which installs pika into .venv",
        py.display()
    );
    py
}

/// Runs `tests/python/<script>` against the server; panics with its output unless it exits 0.
pub fn run_python(server: &Server, script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(workspace_root().join("tests/python").join(script))
        .args(args)
        .env("AMQP_URL", server.url())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A plain HTTP/1.1 GET (no client library needed): (status, head, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = raw.get(split + 4..).unwrap_or(&[]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok((status, head, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = String::from_utf8_lossy(&body[..eol]);
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        let rest = &body[eol + 2..];
        if n == 0 || rest.len() < n {
            break;
        }
        out.extend_from_slice(&rest[..n]);
        body = rest.get(n + 2..).unwrap_or(&[]);
    }
    out
}

/// Prometheus text samples: `name{labels}` (exactly as printed) to value.
pub fn parse_metrics(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}
