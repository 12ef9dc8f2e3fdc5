//! AMQPS: lapin and pika over TLS, with and without client certificates, SASL EXTERNAL (the certificate's
//! CN, as rabbitmq_auth_mechanism_ssl with `ssl_cert_login_from = common_name`), a plain-text client on the
//! TLS port, and a certificate swapped by SIGHUP while a connection stays open. Certificates are made at
//! test time with rcgen.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mailroom_tests::{python, workspace_root, Server};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA and what it signed, as PEM files in a directory.
struct Pki {
    dir: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), ca_cert.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca_cert,
            ca_key,
        }
    }

    fn ca_file(&self) -> PathBuf {
        let name = self
            .ca_cert
            .params()
            .distinguished_name
            .get(&DnType::CommonName)
            .map(|v| match v {
                rcgen::DnValue::Utf8String(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap();
        self.dir.join(format!("{name}.pem"))
    }

    fn ca_pem(&self) -> String {
        self.ca_cert.pem()
    }

    /// A leaf certificate: (cert.pem, key.pem) under `file` in the directory.
    fn issue(&self, file: &str, cn: &str, server: bool) -> (PathBuf, PathBuf) {
        let sans = if server {
            vec!["localhost".to_string(), "127.0.0.1".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let (c, k) = (
            self.dir.join(format!("{file}.crt.pem")),
            self.dir.join(format!("{file}.key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// The AMQPS address the broker logged.
fn tls_addr(server: &Server) -> SocketAddr {
    let line = server
        .startup_log
        .iter()
        .find(|l| l.contains("accepting AMQPS connections addr="))
        .expect("AMQPS listener in the startup log");
    let i = line.find("addr=").unwrap() + "addr=".len();
    line[i..].split_whitespace().next().unwrap().parse().unwrap()
}

fn start_tls(dir: &Path, cert: &Path, key: &Path, ca: Option<&Path>) -> Server {
    let mut args = vec![
        "--tls-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--tls-cert".to_string(),
        cert.display().to_string(),
        "--tls-key".to_string(),
        key.display().to_string(),
    ];
    if let Some(ca) = ca {
        args.push("--tls-ca".into());
        args.push(ca.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Server::start_in(&dir.join("data"), &args)
}

async fn lapin_tls(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<(&Path, &Path)>,
    external: bool,
) -> lapin::Result<Connection> {
    let uri = if external {
        format!("amqps://127.0.0.1:{}/%2f?auth_mechanism=external", addr.port())
    } else {
        format!("amqps://guest:guest@127.0.0.1:{}/%2f", addr.port())
    };
    let identity = identity.map(|(c, k)| OwnedIdentity::PKCS8 {
        pem: std::fs::read(c).unwrap(),
        key: std::fs::read(k).unwrap(),
    });
    let tls = OwnedTLSConfig {
        identity,
        cert_chain: Some(ca_pem.to_string()),
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect_with_config(
            &uri,
            ConnectionProperties::default(),
            tls,
            lapin::runtime::default_runtime()?,
        ),
    )
    .await
    .expect("lapin connect does not hang")
}

/// Publishes `n` messages to a fresh exclusive queue and consumes them back, in order.
async fn roundtrip(conn: &Connection, n: usize) {
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..n {
        ch.basic_publish(
            "".into(),
            q.name().clone(),
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await
        .unwrap();
    }
    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "c".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("delivery in time")
            .unwrap()
            .unwrap();
        assert_eq!(d.data, format!("m{i}").as_bytes());
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.close(200, "bye".into()).await.unwrap();
}

fn run_pika(args: &[&str]) -> (bool, String) {
    let out = Command::new(python())
        .arg(workspace_root().join("tests/python/tls_pika.py"))
        .args(args)
        .output()
        .expect("run python");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_and_pika_over_tls_without_client_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "ca1");
    let (cert, key) = pki.issue("server", "localhost", true);
    let server = start_tls(tmp.path(), &cert, &key, None);
    let addr = tls_addr(&server);

    let conn = lapin_tls(addr, &pki.ca_pem(), None, false).await.unwrap();
    roundtrip(&conn, 200).await;
    conn.close(200, "bye".into()).await.unwrap();

    let port = addr.port().to_string();
    let ca = pki.ca_file().display().to_string();
    let (ok, out) = run_pika(&["plain", &port, &ca]);
    assert!(ok && out.contains("ROUNDTRIP 100"), "{out}");
    // No client certificate was asked for, so EXTERNAL is not offered.
    let (ok, out) = run_pika(&["mechanisms", &port, &ca]);
    assert!(ok && out.contains("MECHANISMS PLAIN AMQPLAIN\n"), "{out}");
    // A client that does not trust the server's CA fails its handshake; the broker goes on.
    let other = Pki::new(&tmp.path().join("other"), "ca-other");
    assert!(lapin_tls(addr, &other.ca_pem(), None, false).await.is_err());
    let conn = lapin_tls(addr, &pki.ca_pem(), None, false).await.unwrap();
    roundtrip(&conn, 10).await;
    // The plain listener is unaffected.
    let plain = Connection::connect(&server.url(), ConnectionProperties::default())
        .await
        .unwrap();
    roundtrip(&plain, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_sasl_external() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "ca1");
    let (cert, key) = pki.issue("server", "localhost", true);
    let (guest_cert, guest_key) = pki.issue("client-guest", "guest", false);
    let (nobody_cert, nobody_key) = pki.issue("client-nobody", "nobody", false);
    let server = start_tls(tmp.path(), &cert, &key, Some(&pki.ca_file()));
    let addr = tls_addr(&server);

    // lapin with a certificate whose CN is guest: EXTERNAL logs in as guest.
    let conn = lapin_tls(addr, &pki.ca_pem(), Some((&guest_cert, &guest_key)), true)
        .await
        .unwrap();
    roundtrip(&conn, 100).await;
    conn.close(200, "bye".into()).await.unwrap();
    // With a certificate, PLAIN still works.
    let conn = lapin_tls(addr, &pki.ca_pem(), Some((&guest_cert, &guest_key)), false)
        .await
        .unwrap();
    roundtrip(&conn, 10).await;
    conn.close(200, "bye".into()).await.unwrap();
    // Without a certificate the TLS handshake is refused (--tls-ca requires one).
    assert!(lapin_tls(addr, &pki.ca_pem(), None, false).await.is_err());
    // A certificate from another CA is refused too.
    let other = Pki::new(&tmp.path().join("other"), "ca-other");
    let (rogue_cert, rogue_key) = other.issue("rogue", "guest", false);
    assert!(
        lapin_tls(addr, &pki.ca_pem(), Some((&rogue_cert, &rogue_key)), true)
            .await
            .is_err()
    );
    // EXTERNAL as a user that does not exist: ACCESS_REFUSED (RabbitMQ's text).
    let err = lapin_tls(addr, &pki.ca_pem(), Some((&nobody_cert, &nobody_key)), true)
        .await
        .unwrap_err();
    let text = format!("{err:?}");
    assert!(
        text.contains("ACCESS_REFUSED") || text.contains("403") || text.contains("refused"),
        "{text}"
    );

    let port = addr.port().to_string();
    let ca = pki.ca_file().display().to_string();
    let (gc, gk) = (guest_cert.display().to_string(), guest_key.display().to_string());
    let (ok, out) = run_pika(&["mechanisms", &port, &ca, &gc, &gk]);
    assert!(
        ok && out.contains("MECHANISMS PLAIN AMQPLAIN EXTERNAL\n"),
        "{out}"
    );
    let (ok, out) = run_pika(&["external", &port, &ca, &gc, &gk]);
    assert!(ok && out.contains("ROUNDTRIP 100"), "{out}");
    let (ok, out) = run_pika(&["plain", &port, &ca, &gc, &gk]);
    assert!(ok && out.contains("ROUNDTRIP 100"), "{out}");
    let (nc, nk) = (
        nobody_cert.display().to_string(),
        nobody_key.display().to_string(),
    );
    let (ok, out) = run_pika(&["refused", &port, &ca, &nc, &nk]);
    assert!(ok && out.contains("REFUSED"), "{out}");
    // pika without a certificate: the handshake fails.
    let (ok, out) = run_pika(&["plain", &port, &ca]);
    assert!(!ok, "{out}");
}

#[test]
fn plain_text_client_on_the_tls_port_gets_a_clean_close() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path(), "ca1");
    let (cert, key) = pki.issue("server", "localhost", true);
    let server = start_tls(tmp.path(), &cert, &key, None);
    let addr = tls_addr(&server);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    // The broker answers with at most a TLS alert and closes: EOF, no AMQP bytes, no hang, no reset.
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(r.is_ok(), "clean EOF expected, got {r:?}");
    assert!(!got.starts_with(b"AMQP"), "{got:?}");
    if let Some(&first) = got.first() {
        assert_eq!(first, 0x15, "a TLS alert record, got {got:?}");
    }
    assert!(server
        .wait_for_log("TLS handshake failed", Duration::from_secs(5))
        .is_some());
    // And everyone else is still served, on both listeners.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = lapin_tls(addr, &pki.ca_pem(), None, false).await.unwrap();
        roundtrip(&conn, 10).await;
        let plain = Connection::connect(&server.url(), ConnectionProperties::default())
            .await
            .unwrap();
        roundtrip(&plain, 10).await;
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_open_connections_keep_working() {
    let tmp = tempfile::tempdir().unwrap();
    let pki1 = Pki::new(tmp.path(), "ca1");
    let pki2 = Pki::new(&tmp.path().join("two"), "ca2");
    let (cert, key) = pki1.issue("server", "localhost", true);
    let server = start_tls(tmp.path(), &cert, &key, None);
    let addr = tls_addr(&server);

    let old = lapin_tls(addr, &pki1.ca_pem(), None, false).await.unwrap();
    roundtrip(&old, 10).await;

    // Replace the files with a certificate from the second CA, then SIGHUP.
    let (cert2, key2) = pki2.issue("server2", "localhost", true);
    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGHUP);
    }
    assert!(
        server
            .wait_for_log("TLS certificates reloaded", Duration::from_secs(10))
            .is_some(),
        "reload logged"
    );
    // New handshakes get the new certificate: clients trusting only the old CA fail, the new CA works.
    assert!(lapin_tls(addr, &pki1.ca_pem(), None, false).await.is_err());
    let new = lapin_tls(addr, &pki2.ca_pem(), None, false).await.unwrap();
    roundtrip(&new, 10).await;
    // The connection made before the reload was not dropped.
    roundtrip(&old, 50).await;
    old.close(200, "bye".into()).await.unwrap();

    // A broken file on reload keeps the current certificate.
    std::fs::write(&cert, "not a certificate").unwrap();
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGHUP);
    }
    assert!(server
        .wait_for_log("TLS reload failed", Duration::from_secs(10))
        .is_some());
    let again = lapin_tls(addr, &pki2.ca_pem(), None, false).await.unwrap();
    roundtrip(&again, 10).await;
}
