//! TLS for the control plane's API (rustls with the ring provider): the
//! server's certificate and key from PEM files, a self-signed pair for
//! trying it out (`bulkhead tls self-signed`), and the clients' trust (a CA
//! file, or the system's roots). Node daemons serve their own API with a
//! self-signed certificate made at start, which the server pins (it got
//! it at join, over the server's own API).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {why}")]
    File { path: String, why: String },
    #[error("TLS: {0}")]
    Config(String),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// Our clients drop a pooled connection idle this long: before the
/// servers' own idle limit (`listen::HEADER_TIMEOUT`), so a request never
/// goes out on a connection the server is closing.
const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(5);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS settings from a PEM certificate chain and its key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert, e))?;
    if chain.is_empty() {
        return Err(file_err(cert, "no PEM certificate in it"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_err(key, format!("no PEM private key in it ({e})")))?;
    config_of(chain, key_der).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} do not make a certificate and its key: {e}",
            cert.display(),
            key.display()
        ))
    })
}

/// The same from PEM text (a node's own pair, made at start).
pub fn server_config_pem(cert: &str, key: &str) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Config(format!("the certificate: {e}")))?;
    let key_der = PrivateKeyDer::from_pem_slice(key.as_bytes())
        .map_err(|e| TlsError::Config(format!("the key: {e}")))?;
    config_of(chain, key_der)
        .map_err(|e| TlsError::Config(format!("the certificate and its key: {e}")))
}

fn config_of(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A self-signed certificate for `names` (DNS names or IP addresses) and
/// its key, both PEM.
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem()))
}

/// An HTTP client that trusts `ca` (PEM) only, or the system's roots.
pub fn client(ca: Option<&Path>) -> Result<reqwest::Client, TlsError> {
    // The TLS stack's crypto (reqwest is built without a default): ring, once per process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let b = reqwest::Client::builder().pool_idle_timeout(CLIENT_IDLE);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).map_err(|e| file_err(ca, e))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| file_err(ca, e))?;
        if certs.is_empty() {
            return Err(file_err(ca, "no PEM certificate in it"));
        }
        return b
            .tls_certs_only(certs)
            .build()
            .map_err(|e| TlsError::Config(e.to_string()));
    }
    match b.build() {
        Ok(c) => Ok(c),
        // No system roots to be found (a minimal root fs): plain http still
        // works, https fails to verify, with --cacert the way out.
        Err(_) => reqwest::Client::builder()
            .pool_idle_timeout(CLIENT_IDLE)
            .tls_certs_only(Vec::new())
            .build()
            .map_err(|e| TlsError::Config(e.to_string())),
    }
}

/// A client that trusts `cert` (PEM) and nothing else: a node's own API.
pub fn pinned_client(cert: &str) -> Result<reqwest::Client, TlsError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = reqwest::Certificate::from_pem_bundle(cert.as_bytes())
        .map_err(|e| TlsError::Config(format!("the pinned certificate: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::Config(
            "the pinned certificate: no PEM certificate".into(),
        ));
    }
    reqwest::Client::builder()
        .pool_idle_timeout(CLIENT_IDLE)
        .tls_certs_only(certs)
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))
}

/// Records the certificates a server presents and accepts them: only for
/// [`discover_ca`], which trusts nothing it records until a hash it was
/// given matches. Handshake signatures are still checked.
#[derive(Debug)]
struct Recorder {
    seen: std::sync::Mutex<Vec<CertificateDer<'static>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.push(end_entity.clone().into_owned());
        seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// kubeadm's discovery: the certificate in the chain the server at `url`
/// presents whose hash is `pinned` (`sha256:<hex>`), as PEM. Nothing else
/// of that handshake is trusted; the caller then verifies every connection
/// against the certificate found, as a CA.
pub async fn discover_ca(url: &str, pinned: &str) -> Result<String, TlsError> {
    let u = reqwest::Url::parse(url).map_err(|e| TlsError::Config(format!("{url}: {e}")))?;
    let host = u
        .host_str()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        .ok_or_else(|| TlsError::Config(format!("{url}: no host")))?;
    let port = u.port_or_known_default().unwrap_or(443);
    let recorder = Arc::new(Recorder {
        seen: Default::default(),
        provider: provider(),
    });
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::clone(&recorder) as _)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| TlsError::Config(format!("{host}: {e}")))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), connect)
        .await
        .map_err(|_| TlsError::Config(format!("{url}: no TLS handshake within 10 s")))?
        .map_err(|e| TlsError::Config(format!("{url}: {e}")))?;
    let seen = recorder
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let found = seen
        .iter()
        .find(|c| super::ca::hash_of_der(c) == pinned)
        .ok_or_else(|| {
            TlsError::Config(format!(
                "{url} presents no certificate with the join token's hash {pinned}: not this cluster's server (or a man in the middle)"
            ))
        })?;
    Ok(pem::encode(&pem::Pem::new("CERTIFICATE", found.to_vec())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_loads_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let (cert, key) = self_signed(&["localhost".into(), "127.0.0.1".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&c, &cert).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&k, &key).unwrap_or_else(|e| panic!("{e}"));
        assert!(server_config(&c, &k).is_ok());
        let err = |r: Result<Arc<rustls::ServerConfig>, TlsError>| {
            r.err().map(|e| e.to_string()).unwrap_or_default()
        };
        assert!(
            err(server_config(&k, &k)).contains("no PEM certificate"),
            "a key where the certificate goes"
        );
        assert!(
            err(server_config(&c, &c)).contains("no PEM private key"),
            "a certificate where the key goes"
        );
        let (_, other_key) = self_signed(&["localhost".into()]).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&k, other_key).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            err(server_config(&c, &k)).contains("do not make a certificate and its key"),
            "{}",
            err(server_config(&c, &k))
        );
        let junk = dir.path().join("junk");
        std::fs::write(
            &junk,
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(server_config(&junk, &k).is_err());
        assert!(err(server_config(&dir.path().join("none"), &k)).contains("none"));
        assert!(client(Some(&junk)).is_err() && client(Some(&c)).is_ok() && client(None).is_ok());
        assert!(
            server_config_pem(&cert, &key).is_ok()
                && server_config_pem(&key, &key).is_err()
                && server_config_pem(&cert, &cert).is_err()
        );
        assert!(pinned_client("junk").is_err() && pinned_client(&cert).is_ok());
    }

    /// A pinned client reaches the server with that certificate, and no
    /// other: not one with another self-signed certificate for the same
    /// name, not plain HTTP.
    #[test]
    fn a_pinned_client_trusts_its_certificate_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let (cert, key) = self_signed(&["127.0.0.1".into()]).unwrap_or_else(|e| panic!("{e}"));
            let (other, _) = self_signed(&["127.0.0.1".into()]).unwrap_or_else(|e| panic!("{e}"));
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let port = listener
                .local_addr()
                .unwrap_or_else(|e| panic!("{e}"))
                .port();
            let app = axum::Router::new().route("/hi", axum::routing::get(|| async { "hello" }));
            tokio::spawn(crate::cluster::listen::serve(
                listener,
                app,
                Some(server_config_pem(&cert, &key).unwrap_or_else(|e| panic!("{e}"))),
                crate::cluster::listen::Limits::for_this_process(),
                std::future::pending(),
            ));
            let url = format!("https://127.0.0.1:{port}/hi");
            let got = pinned_client(&cert)
                .unwrap_or_else(|e| panic!("{e}"))
                .get(&url)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.text().await.unwrap_or_default(), "hello");
            assert!(
                pinned_client(&other)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .get(&url)
                    .send()
                    .await
                    .is_err(),
                "another certificate for the same name"
            );
            assert!(
                client(None)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .get(format!("http://127.0.0.1:{port}/hi"))
                    .send()
                    .await
                    .map(|r| !r.status().is_success())
                    .unwrap_or(true),
                "plain HTTP gets nothing"
            );
        });
    }
}
