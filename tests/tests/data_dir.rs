//! The data dir is locked; a missing dir is created; an unusable one is a clear error, not a panic.

use std::process::Command;

use mailroom_tests::{mailroom_bin, Server};

fn run_mailroom(data_dir: &std::path::Path) -> std::process::Output {
    Command::new(mailroom_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
            "--log-level",
            "warn",
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .expect("run mailroom")
}

#[test]
fn second_broker_on_the_same_dir_exits_with_a_clear_error() {
    let server = Server::start();
    let out = run_mailroom(&server.data_dir);
    assert!(!out.status.success(), "second broker must not start");
    let err = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(err.contains("is locked"), "unclear error: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_data_dir_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/c");
    let mut server = Server::start_in(&dir, &[]);
    assert!(dir.join("LOCK").exists());
    assert!(server.stop().success());
}

#[test]
fn unusable_data_dir_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let out = run_mailroom(&file.join("data"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    assert!(
        err.contains("cannot open the data directory"),
        "unclear error: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

/// Kills the child on drop, so a failing assertion does not leave brokers running.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn config_file_env_and_flags_layer() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("mailroom.toml");
    let file_dir = tmp.path().join("from-file");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"127.0.0.1:1\"\ndata_dir = \"{}\"\n",
            file_dir.display()
        ),
    )
    .unwrap();
    // Flags win over the file: the listen flag is used, the data dir comes from the file.
    let mut child = Reap(
        Command::new(mailroom_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&cfg)
            .env_remove("MAILROOM_DATA_DIR")
            .env("MAILROOM_LOG", "info")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !file_dir.join("LOCK").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        file_dir.join("LOCK").exists(),
        "data dir from the config file was not used"
    );
    // The env var wins over the file: a second broker pointed by env at another dir starts too.
    let env_dir = tmp.path().join("from-env");
    let mut second = Reap(
        Command::new(mailroom_bin())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
                "--config",
            ])
            .arg(&cfg)
            .env("MAILROOM_DATA_DIR", &env_dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    while !env_dir.join("LOCK").exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        env_dir.join("LOCK").exists(),
        "MAILROOM_DATA_DIR did not win over the file"
    );
    for c in [&mut child.0, &mut second.0] {
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let status = c.wait().unwrap();
        assert!(status.success(), "SIGTERM exits 0, got {status}");
    }
}
