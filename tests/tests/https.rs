//! The management API over HTTPS (`--https-listen` with `--tls-cert`/`--tls-key`): GET /api/overview and
//! the console over TLS with a client that trusts only the test CA (Python's ssl module, the .venv's
//! interpreter), plain HTTP to the HTTPS port fails cleanly while everyone else is served, and a SIGHUP
//! swaps the certificate for new connections. Certificates are made at test time with rcgen.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mailroom_tests::http::Api;
use mailroom_tests::{python, Server};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// A CA (its PEM file) and a server certificate it signed for localhost and 127.0.0.1.
fn pki(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let files = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-server.crt.pem")),
        dir.join(format!("{name}-server.key.pem")),
    );
    std::fs::write(&files.0, ca.pem()).unwrap();
    std::fs::write(&files.1, cert.pem()).unwrap();
    std::fs::write(&files.2, key.serialize_pem()).unwrap();
    files
}

const CLIENT: &str = r#"
import base64, http.client, ssl, sys
port, ca, path = sys.argv[1], sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
c = http.client.HTTPSConnection("127.0.0.1", int(port), context=ctx, timeout=60)
c.request("GET", path, headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
r = c.getresponse()
print(r.status)
print(r.read().decode())
"#;

/// GET `path` over HTTPS trusting only `ca`: Ok((status, body)) or Err(the client's error).
fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> Result<(u16, String), String> {
    let out = Command::new(python())
        .args(["-c", CLIENT, &addr.port().to_string()])
        .arg(ca)
        .arg(path)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        return Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)));
    }
    let (status, body) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    Ok((status.trim().parse().unwrap(), body.to_string()))
}

fn start(dir: &Path, cert: &Path, key: &Path) -> (Server, SocketAddr) {
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let server = Server::start_in(
        &dir.join("data"),
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--https-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = server
        .logged_addr("accepting HTTPS connections")
        .expect("the HTTPS listener in the startup log");
    (server, addr)
}

#[test]
fn management_api_over_https() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca1, cert, key) = pki(&tmp.path().join("one"), "ca1");
    let (server, addr) = start(tmp.path(), &cert, &key);

    let (status, body) = https_get(addr, &ca1, "/api/overview").unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["product_name"], "Mailroom");
    // The console too, and the same auth (guest is loopback-only: the peer address reaches the check).
    let (status, body) = https_get(addr, &ca1, "/").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("console.js"));
    let (status, _) = https_get(addr, &ca1, "/api/whoami").unwrap();
    assert_eq!(status, 200);

    // Plain HTTP to the HTTPS port: no HTTP answer, the socket is closed (at most a TLS alert comes back).
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(!got.starts_with(b"HTTP/"), "{}", String::from_utf8_lossy(&got));
    if let Some(&first) = got.first() {
        assert_eq!(first, 0x15, "a TLS alert record, got {got:?}");
    }
    assert!(server
        .wait_for_log("HTTPS: TLS handshake failed", Duration::from_secs(30))
        .is_some());
    // Everyone else is still served: HTTPS, and plain HTTP on its own port.
    assert_eq!(https_get(addr, &ca1, "/api/overview").unwrap().0, 200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api = Api::new(&server.http_url(), "guest", "guest");
        api.ok("/api/overview").await;
    });
}

#[test]
fn sighup_gives_new_https_connections_the_new_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca1, cert, key) = pki(&tmp.path().join("one"), "ca1");
    let (ca2, cert2, key2) = pki(&tmp.path().join("two"), "ca2");
    let (mut server, addr) = start(tmp.path(), &cert, &key);
    assert_eq!(https_get(addr, &ca1, "/api/overview").unwrap().0, 200);
    assert!(https_get(addr, &ca2, "/api/overview").is_err());

    std::fs::copy(&cert2, &cert).unwrap();
    std::fs::copy(&key2, &key).unwrap();
    unsafe {
        libc::kill(server.pid() as i32, libc::SIGHUP);
    }
    assert!(
        server
            .wait_for_log("TLS certificates reloaded", Duration::from_secs(60))
            .is_some(),
        "reload logged"
    );
    // New connections get the new certificate: the new CA works, the old one no longer does.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match https_get(addr, &ca2, "/api/overview") {
            Ok((200, _)) => break,
            r if Instant::now() > deadline => panic!("the new certificate is not served: {r:?}"),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let err = https_get(addr, &ca1, "/api/overview").unwrap_err();
    assert!(err.contains("CERTIFICATE_VERIFY_FAILED"), "{err}");
    server.stop();
}

#[test]
fn https_listen_needs_a_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let r = Server::try_start_in(&tmp.path().join("data"), &["--https-listen", "127.0.0.1:0"]);
    let err = r
        .err()
        .expect("the broker refuses --https-listen without --tls-cert")
        .to_string();
    assert!(
        err.contains("--https-listen needs --tls-cert and --tls-key"),
        "{err}"
    );
}
