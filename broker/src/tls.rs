//! TLS listeners (`listener.ssl.<name>`), with rustls.
//!
//! At startup [`TlsListener::load`] reads the listener's PEM files and builds
//! the rustls server configuration; an unreadable or invalid file stops the
//! broker with an error naming the config file, the line and the key.
//!
//! Per connection, [`serve`] runs in the connection's own task (never in the
//! accept loop, so a slow or hostile client holds up only itself): the TLS
//! handshake must finish by the `mqtt.connect_timeout` deadline; a failed
//! handshake closes only that connection. Then the MQTT handshake continues
//! as for TCP, with the verified client certificate's common name in
//! [`Peer::cert_common_name`].
//!
//! Client certificates: `verify = verify_none` (default) asks for none.
//! `verify = verify_peer` asks for one and verifies it against `cacertfile`;
//! a client that presents none is refused at the handshake with
//! `fail_if_no_peer_cert = true`, and let through to MQTT authentication
//! without a common name otherwise.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use hooks_spec::ConfError;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{ConfPath, PeerCertField, TlsSettings};
use crate::connection::{self, Admission};
use crate::shared::Shared;
use crate::transport::{Peer, Stream};

/// A TLS listener's server side, ready to accept handshakes.
#[derive(Clone)]
pub struct TlsListener {
    acceptor: TlsAcceptor,
    cn_as_username: bool,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("cn_as_username", &self.cn_as_username)
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Reads the listener's certificate, key and CA files and builds its
    /// rustls configuration. `config_file` is the file the settings came
    /// from: errors name it, the line and the key of the file at fault.
    pub fn load(config_file: &Path, s: &TlsSettings) -> Result<TlsListener, ConfError> {
        let config = server_config(config_file, s)?;
        Ok(TlsListener {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            cn_as_username: s.peer_cert_as_username == Some(PeerCertField::Cn),
        })
    }

    /// Whether the client certificate's common name is the username.
    pub fn cn_as_username(&self) -> bool {
        self.cn_as_username
    }
}

fn server_config(config_file: &Path, s: &TlsSettings) -> Result<ServerConfig, ConfError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| s.certfile.error(config_file, format!("TLS: {e}")))?;
    let builder = match (&s.cacertfile, s.verify_peer) {
        (Some(ca), true) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(config_file, ca, "CA certificates")? {
                roots.add(cert).map_err(|e| {
                    ca.error(
                        config_file,
                        format!("{}: not a usable CA certificate: {e}", shown(ca)),
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if s.fail_if_no_peer_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| ca.error(config_file, format!("{}: {e}", shown(ca))))?;
            builder.with_client_cert_verifier(verifier)
        }
        // The config parser refuses verify_peer without cacertfile; no client certificates otherwise.
        _ => builder.with_no_client_auth(),
    };
    let chain = read_certs(config_file, &s.certfile, "certificates")?;
    let key = PrivateKeyDer::from_pem_file(&s.keyfile.path).map_err(|e| {
        s.keyfile.error(
            config_file,
            format!("{}: cannot read a PEM private key: {e}", shown(&s.keyfile)),
        )
    })?;
    builder.with_single_cert(chain, key).map_err(|e| {
        s.certfile.error(
            config_file,
            format!(
                "{} with the key in {}: {e}",
                shown(&s.certfile),
                s.keyfile.path.display()
            ),
        )
    })
}

fn shown(p: &ConfPath) -> String {
    p.path.display().to_string()
}

/// Every certificate in a PEM file; an error when it has none.
fn read_certs(
    config_file: &Path,
    p: &ConfPath,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&p.path)
        .and_then(|it| it.collect())
        .map_err(|e| p.error(config_file, format!("{}: cannot read PEM {what}: {e}", shown(p))))?;
    if certs.is_empty() {
        return Err(p.error(
            config_file,
            format!(
                "{}: no PEM certificate (`-----BEGIN CERTIFICATE-----`) in the file",
                shown(p)
            ),
        ));
    }
    Ok(certs)
}

/// One accepted TCP connection of a TLS listener: the TLS handshake (by
/// the admission deadline), then the MQTT handshake. Runs in the
/// connection's own task.
pub async fn serve(
    shared: Arc<Shared>,
    tls: TlsListener,
    tcp: TcpStream,
    addr: SocketAddr,
    admission: Admission,
) {
    let _task = shared.tasks.enter();
    let _ = tcp.set_nodelay(true);
    if let Some((stream, peer, admission)) = handshake(&shared, &tls, tcp, addr, admission).await {
        connection::handle_admitted(shared, stream, peer, admission).await;
    }
}

/// The server side of the TLS handshake, which must finish by the admission
/// deadline: the encrypted stream, the peer with its certificate's common
/// name, and the admission with the listener's `peer_cert_as_username`.
/// `None` (logged) when the handshake fails, times out or shutdown begins.
pub async fn handshake(
    shared: &Shared,
    tls: &TlsListener,
    tcp: TcpStream,
    addr: SocketAddr,
    admission: Admission,
) -> Option<(Stream, Peer, Admission)> {
    let mut shutdown = shared.shutdown_rx();
    let handshake = tokio::select! {
        r = tokio::time::timeout_at(admission.deadline, tls.acceptor.accept(tcp)) => r,
        // Shutdown does not wait for a client that has not finished connecting.
        _ = shutdown.changed() => return None,
    };
    let stream = match handshake {
        Ok(Ok(stream)) => stream,
        Err(_) => {
            tracing::debug!(peer = %addr, "TLS handshake not finished within mqtt.connect_timeout, closing");
            return None;
        }
        Ok(Err(e)) => {
            log_failed_handshake(addr, &e);
            return None;
        }
    };
    let cert_common_name = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| common_name(leaf));
    let admission = Admission {
        cert_cn_as_username: tls.cn_as_username,
        ..admission
    };
    let peer = Peer {
        addr,
        cert_common_name,
    };
    Some((Stream::Boxed(Box::new(stream)), peer, admission))
}

/// A TLS error (bad or missing certificate, no common protocol) is worth an
/// operator's attention; a client that went away mid-handshake is not.
fn log_failed_handshake(addr: SocketAddr, e: &io::Error) {
    let tls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    match tls_error {
        Some(tls) => tracing::info!(peer = %addr, "TLS handshake failed: {tls}"),
        None => tracing::debug!(peer = %addr, "TLS handshake failed: {e}"),
    }
}

/// The first common name (CN) of a DER certificate's subject; `None` when
/// the certificate cannot be parsed or has no UTF-8 common name.
pub fn common_name(cert: &[u8]) -> Option<Arc<str>> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(Arc::from)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings(dir: &Path) -> TlsSettings {
        let at = |file: &str, line: usize, key: &str| ConfPath {
            path: dir.join(file),
            line,
            key: key.to_string(),
        };
        TlsSettings {
            certfile: at("cert.pem", 7, "listener.ssl.s.certfile"),
            keyfile: at("key.pem", 8, "listener.ssl.s.keyfile"),
            cacertfile: None,
            verify_peer: false,
            fail_if_no_peer_cert: false,
            peer_cert_as_username: None,
        }
    }

    fn load_err(s: &TlsSettings) -> ConfError {
        match TlsListener::load(Path::new("/etc/postbox.conf"), s) {
            Ok(_) => panic!("loaded"),
            Err(e) => e,
        }
    }

    #[test]
    fn unreadable_or_empty_files_name_the_line_and_key() {
        let dir = std::env::temp_dir().join(format!("postbox-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = settings(&dir);
        let e = load_err(&s);
        assert_eq!(
            (e.file, e.line, e.key.as_str()),
            (PathBuf::from("/etc/postbox.conf"), 7, "listener.ssl.s.certfile")
        );
        assert!(
            e.message.contains("cert.pem: cannot read PEM certificates"),
            "{}",
            e.message
        );
        std::fs::write(dir.join("cert.pem"), "no pem here\n").unwrap();
        let e = load_err(&s);
        assert!(e.message.contains("no PEM certificate"), "{}", e.message);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn common_name_of_garbage_is_none() {
        assert_eq!(common_name(b"not a certificate"), None);
        assert_eq!(common_name(&[]), None);
    }
}
