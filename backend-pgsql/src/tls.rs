//! TLS to PostgreSQL (`backend.pgsql.<pool>.ssl = true`), with rustls.
//!
//! - `ssl.verify = true` (the default): the server's certificate must chain to
//!   `ssl.cacertfile` and name the server's address.
//! - `ssl.verify = false`: encrypted, but any certificate is accepted (as
//!   `sslmode=require` in libpq).
//! - `ssl.certfile` + `ssl.keyfile`: a client certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::SslConfig;

/// The rustls client configuration for one pool.
pub fn client_config(ssl: &SslConfig, pool: &str) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("pool `{pool}`: TLS: {e}"))?;
    let builder = if ssl.verify {
        let ca = ssl.cacertfile.as_ref().ok_or_else(|| {
            format!("pool `{pool}`: ssl.verify = true needs ssl.cacertfile (or set ssl.verify = false)")
        })?;
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("pool `{pool}`: ssl.cacertfile {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("pool `{pool}`: ssl.cacertfile {}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("pool `{pool}`: ssl.cacertfile {}: {e}", ca.display()))?;
        }
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    };
    match (&ssl.certfile, &ssl.keyfile) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect())
                .map_err(|e| format!("pool `{pool}`: ssl.certfile {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("pool `{pool}`: ssl.keyfile {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("pool `{pool}`: client certificate: {e}"))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// `ssl.verify = false`: the connection is encrypted, the peer is not authenticated.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
