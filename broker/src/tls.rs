//! TLS settings: a rustls `ServerConfig` built from PEM files (`--tls-cert`, `--tls-key`, optional
//! `--tls-ca`), reloadable at run time (SIGHUP) without touching the connections already open: each accepted
//! socket takes the config current at that moment, so a reload only affects later handshakes.
//!
//! AMQPS uses it today (`server.rs`); the management HTTP server can serve HTTPS from the same
//! [`TlsConfig::current`].
//!
//! With `--tls-ca`, a client must present a certificate signed by one of the CA file's certificates (as
//! RabbitMQ with `verify = verify_peer` and `fail_if_no_peer_cert = true`); the connection then offers the
//! `EXTERNAL` SASL mechanism, whose user is the certificate's subject CN ([`peer_common_name`]), as
//! rabbitmq_auth_mechanism_ssl with `ssl_cert_login_from = common_name`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Where the certificate, key and (optional) client CA come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM file with the server certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file with the CA certificates client certificates must chain to; `None`: no client certificate
    /// is asked for.
    pub ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} file {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("CA file {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The reloadable TLS configuration.
pub struct TlsConfig {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsConfig {
    /// Reads the files and builds the first `ServerConfig`.
    pub fn load(files: TlsFiles) -> Result<Arc<TlsConfig>, TlsError> {
        let config = build(&files)?;
        Ok(Arc::new(TlsConfig {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// The `ServerConfig` new handshakes use.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// An acceptor for one new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current())
    }

    /// Whether clients must present a certificate (a CA file is configured).
    pub fn verifies_clients(&self) -> bool {
        self.files.ca.is_some()
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Reads the files again; on success later handshakes use the new certificate, on failure the old
    /// configuration stays and the error is returned. Open connections are not touched either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    // ring rather than aws-lc-rs: it builds with cc alone, in seconds; the deprecation is about the missing
    // post-quantum key exchange, which no AMQP client negotiates today.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs("certificate", &files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Read {
        what: "key",
        path: files.key.clone(),
        source,
    })?;
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &files.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs("CA", ca)? {
                roots.add(cert).map_err(|e| TlsError::BadCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::BadCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    Ok(builder.with_single_cert(certs, key)?)
}

/// The subject's common name (CN) of a DER certificate: the user of the `EXTERNAL` mechanism, as
/// rabbitmq_auth_mechanism_ssl with `ssl_cert_login_from = common_name` (the first CN; `None` when the
/// certificate cannot be parsed or has no UTF-8 CN).
pub fn peer_common_name(cert: &[u8]) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// What a TLS handshake told about the client, for the AMQP handshake.
#[derive(Debug, Clone, Default)]
pub struct PeerTls {
    /// The client certificate's CN, when it presented one (then `EXTERNAL` is offered).
    pub cert_cn: Option<String>,
    /// The client presented a certificate (even one without a usable CN).
    pub has_cert: bool,
}

impl PeerTls {
    pub fn from_connection(conn: &rustls::ServerConnection) -> PeerTls {
        match conn.peer_certificates().and_then(|c| c.first()) {
            Some(leaf) => PeerTls {
                cert_cn: peer_common_name(leaf.as_ref()),
                has_cert: true,
            },
            None => PeerTls::default(),
        }
    }
}
