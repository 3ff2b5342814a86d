//! Test certificates made with the `openssl` command (tests/tls_listener.rs,
//! tests/websocket.rs): a CA, a server certificate for 127.0.0.1 and
//! localhost, a client certificate `CN=device-42`, and a second CA with its
//! own client certificate that the broker must not trust.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::temp_dir;

/// A directory of test certificates, removed on drop.
pub struct Certs {
    /// The directory holding the PEM files.
    pub dir: PathBuf,
}

/// Runs `openssl` in `dir` with `args` (split at whitespace; no argument has spaces).
fn openssl(dir: &Path, args: &str) {
    let args: Vec<&str> = args.split_whitespace().collect();
    let out = std::process::Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .output()
        .expect("the openssl command is needed to make test certificates");
    assert!(
        out.status.success(),
        "openssl {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A fresh EC P-256 key, without a passphrase.
const NEW_KEY: &str = "-nodes -newkey ec -pkeyopt ec_paramgen_curve:prime256v1";

impl Certs {
    /// Makes the CAs and certificates (needs the `openssl` command).
    pub fn generate() -> Certs {
        let dir = temp_dir("tls-certs");
        for (name, cn) in [("ca", "PostboxTestCA"), ("other-ca", "UntrustedTestCA")] {
            openssl(
                &dir,
                &format!(
                    "req -x509 -new {NEW_KEY} -days 2 -subj /CN={cn} \
                     -addext basicConstraints=critical,CA:TRUE \
                     -addext keyUsage=critical,keyCertSign,cRLSign -keyout {name}.key -out {name}.pem"
                ),
            );
        }
        let server_ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
        let client_ext = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
                          extendedKeyUsage=clientAuth\n";
        std::fs::write(dir.join("server.ext"), server_ext).unwrap();
        std::fs::write(dir.join("client.ext"), client_ext).unwrap();
        for (serial, (name, cn, ca, ext)) in [
            ("server", "localhost", "ca", "server.ext"),
            ("client", "device-42", "ca", "client.ext"),
            ("intruder", "intruder", "other-ca", "client.ext"),
        ]
        .into_iter()
        .enumerate()
        {
            openssl(
                &dir,
                &format!("req -new {NEW_KEY} -subj /CN={cn} -keyout {name}.key -out {name}.csr"),
            );
            openssl(
                &dir,
                &format!(
                    "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -set_serial {} -days 2 \
                     -extfile {ext} -out {name}.pem",
                    1000 + serial
                ),
            );
        }
        Certs { dir }
    }

    /// The path of one of the PEM files, as a string for config lines.
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    /// A client configuration trusting `ca` (`ca.pem` or `other-ca.pem`),
    /// presenting the client certificate `client` (`client` or `intruder`) if given.
    pub fn client_config(&self, ca: &str, client: Option<&str>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.dir.join(ca)).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let chain = CertificateDer::pem_file_iter(self.dir.join(format!("{name}.pem")))
                    .unwrap()
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap();
                let key = PrivateKeyDer::from_pem_file(self.dir.join(format!("{name}.key"))).unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
        };
        Arc::new(config)
    }

    /// Config lines for `listener.ssl.<name>` on 127.0.0.1:0 with this server
    /// certificate, plus `extra` settings (`.verify = ...`) for it.
    pub fn listener(&self, name: &str, extra: &[(&str, &str)]) -> String {
        self.listener_of_kind("ssl", name, extra)
    }

    /// As [`Certs::listener`], for a listener of another TLS kind (`wss`).
    pub fn listener_of_kind(&self, kind: &str, name: &str, extra: &[(&str, &str)]) -> String {
        let mut conf = format!(
            "listener.{kind}.{name} = 127.0.0.1:0\nlistener.{kind}.{name}.certfile = {}\n\
             listener.{kind}.{name}.keyfile = {}\n",
            self.path("server.pem"),
            self.path("server.key")
        );
        for (k, v) in extra {
            let v = if *v == "CA" {
                self.path("ca.pem")
            } else {
                v.to_string()
            };
            conf.push_str(&format!("listener.{kind}.{name}.{k} = {v}\n"));
        }
        conf
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
