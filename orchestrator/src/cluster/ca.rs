//! The cluster's certificate authority. The first server to lead a new
//! store makes it; every server's serving certificate comes from it, so a
//! node that trusts the CA fails over between servers. Its certificate is
//! public (in the store at `/ca`, and beside the admin token for the CLI);
//! its key is in the store sealed (ChaCha20-Poly1305) under the cluster
//! key, 32 random bytes that never enter the store: the first server
//! writes them to a file, and each further server is given that file
//! (kubeadm's certificate key for `--upload-certs` works the same way).
//!
//! Join tokens carry the SHA-256 of the CA's certificate (kubeadm's
//! discovery hash, over the whole certificate rather than its key), so a
//! joining node trusts exactly this CA without being given a file.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state::{Cluster, StateError};
use super::store::{Compare, Op, StoreError};

const KEY: &str = "/ca";
const CA_NAME: &str = "bulkhead cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("the cluster store")]
    Store(#[from] StateError),
    #[error("the cluster key {path}")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Key(String),
    #[error("making a certificate")]
    Cert(#[from] rcgen::Error),
    #[error("the CA in the store is damaged ({0})")]
    Corrupt(String),
}

/// The CA as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    cert_pem: String,
    /// The key's PKCS#8 DER, sealed: nonce then ciphertext and tag, hex.
    sealed_key: String,
}

/// The CA, unsealed: what a server signs its certificate with.
pub struct ClusterCa {
    pub cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("hash", &self.hash())
            .finish_non_exhaustive()
    }
}

/// `sha256:<hex>` of a PEM certificate's DER: what join tokens carry.
pub fn hash_of_pem(pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    Some(hash_of_der(&der))
}

/// `sha256:<hex>` of a certificate's DER.
pub fn hash_of_der(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn sealing_key(cluster_key: &[u8; 32]) -> Result<LessSafeKey, CaError> {
    UnboundKey::new(&CHACHA20_POLY1305, cluster_key)
        .map(LessSafeKey::new)
        .map_err(|_| CaError::Key("the cluster key is not a ChaCha20 key".into()))
}

fn random<const N: usize>() -> Result<[u8; N], CaError> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|source| CaError::KeyFile {
            path: "/dev/urandom".into(),
            source,
        })?;
    Ok(b)
}

fn seal(cluster_key: &[u8; 32], plain: &[u8]) -> Result<String, CaError> {
    let nonce = random::<NONCE_LEN>()?;
    let mut data = plain.to_vec();
    sealing_key(cluster_key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(CA_NAME),
            &mut data,
        )
        .map_err(|_| CaError::Key("sealing failed".into()))?;
    Ok(hex::encode([&nonce[..], &data].concat()))
}

fn open(cluster_key: &[u8; 32], sealed: &str) -> Result<Vec<u8>, CaError> {
    let bytes = hex::decode(sealed).map_err(|e| CaError::Corrupt(e.to_string()))?;
    if bytes.len() < NONCE_LEN {
        return Err(CaError::Corrupt("the sealed key is too short".into()));
    }
    let (nonce, rest) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce)
        .map_err(|_| CaError::Corrupt("the sealed key's nonce".into()))?;
    let mut data = rest.to_vec();
    let plain = sealing_key(cluster_key)?
        .open_in_place(nonce, Aad::from(CA_NAME), &mut data)
        .map_err(|_| {
            CaError::Key(
                "this cluster key does not open the store's CA key: give this server the cluster key of the server that made the store (--cluster-key-file)".into(),
            )
        })?;
    Ok(plain.to_vec())
}

/// The cluster key from `path`, or a new one written there (0600) when
/// `create` and the file does not exist.
fn cluster_key(path: &Path, create: bool) -> Result<[u8; 32], CaError> {
    let err = |source| CaError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let bytes = hex::decode(text.trim()).map_err(|_| {
                CaError::Key(format!("{}: not 64 hex digits", path.display()))
            })?;
            bytes
                .try_into()
                .map_err(|_| CaError::Key(format!("{}: not 64 hex digits", path.display())))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = random::<32>()?;
            bulkhead_images::private::write(path, format!("{}\n", hex::encode(key)).as_bytes())
                .map_err(err)?;
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CaError::Key(format!(
            "{}: no cluster key here, and this store's CA was made by another server: copy that server's cluster key to this path (--cluster-key-file)",
            path.display()
        ))),
        Err(e) => Err(err(e)),
    }
}

impl ClusterCa {
    /// The store's CA, made now (with the cluster key at `key_file`, made
    /// too if missing) when the store has none and `may_make` (this server
    /// leads); `None` when it has none and this server may not make it.
    pub fn load_or_make(
        cluster: &Cluster,
        key_file: &Path,
        may_make: bool,
    ) -> Result<Option<ClusterCa>, CaError> {
        if let Some(e) = cluster.store.get(KEY).map_err(StateError::from)? {
            let stored: Stored = serde_json::from_slice(&e.value)
                .map_err(|err| CaError::Corrupt(err.to_string()))?;
            let der = open(&cluster_key(key_file, false)?, &stored.sealed_key)?;
            let key = KeyPair::try_from(der.as_slice())?;
            return Ok(Some(ClusterCa {
                cert_pem: stored.cert_pem,
                key,
            }));
        }
        if !may_make {
            return Ok(None);
        }
        let ck = cluster_key(key_file, true)?;
        let key = KeyPair::generate()?;
        let cert = ca_params()?.self_signed(&key)?;
        let stored = Stored {
            cert_pem: cert.pem(),
            sealed_key: seal(&ck, &key.serialize_der())?,
        };
        let value = serde_json::to_vec(&stored).map_err(|e| CaError::Corrupt(e.to_string()))?;
        match cluster.store.txn(
            &[Compare::Absent(KEY.into())],
            &[Op::Put(KEY.into(), value)],
        ) {
            Ok(_) => Ok(Some(ClusterCa {
                cert_pem: stored.cert_pem,
                key,
            })),
            // Another server made it meanwhile: use that one.
            Err(StoreError::Conflict(_)) => Self::load_or_make(cluster, key_file, false),
            Err(e) => Err(StateError::from(e).into()),
        }
    }

    /// `sha256:<hex>` of the CA's certificate.
    pub fn hash(&self) -> String {
        hash_of_pem(&self.cert_pem).unwrap_or_default()
    }

    /// A serving certificate for `names` (DNS names or IP addresses) signed
    /// by the CA: (chain PEM, leaf then CA; key PEM).
    pub fn serving_cert(&self, names: &[String]) -> Result<(String, String), CaError> {
        let issuer = ca_params()?.self_signed(&self.key)?;
        let mut p = CertificateParams::new(names.to_vec())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "bulkhead server");
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate()?;
        let leaf = p.signed_by(&leaf_key, &issuer, &self.key)?;
        Ok((
            format!("{}{}", leaf.pem(), self.cert_pem),
            leaf_key.serialize_pem(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::store::FileStore;

    #[test]
    fn the_first_server_makes_the_ca_and_others_need_its_key() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = Cluster::new(
            FileStore::open(&dir.path().join("c.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        let key1 = dir.path().join("k1");
        assert!(
            ClusterCa::load_or_make(&c, &key1, false)
                .map(|x| x.is_none())
                .unwrap_or(false),
            "a standby makes none"
        );
        let ca = ClusterCa::load_or_make(&c, &key1, true)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("made"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&key1)
                .unwrap_or_else(|e| panic!("{e}"))
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        // Loaded again with the same key: the same CA.
        let again = ClusterCa::load_or_make(&c, &key1, true)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("loaded"));
        assert_eq!(
            (again.cert_pem.as_str(), again.hash()),
            (ca.cert_pem.as_str(), ca.hash())
        );
        assert!(ca.hash().starts_with("sha256:") && ca.hash().len() == 7 + 64);
        // Another server without the key, or with another key: a clear refusal.
        let missing = ClusterCa::load_or_make(&c, &dir.path().join("none"), true);
        assert!(format!("{:?}", missing.err()).contains("copy that server's cluster key"));
        let other = dir.path().join("k2");
        std::fs::write(&other, hex::encode([7u8; 32])).unwrap_or_else(|e| panic!("{e}"));
        let wrong = ClusterCa::load_or_make(&c, &other, true);
        assert!(format!("{:?}", wrong.err()).contains("does not open"));
        // The key is in the store only sealed.
        let raw: Vec<u8> = c
            .store
            .list("/")
            .unwrap_or_default()
            .iter()
            .flat_map(|e| e.value.clone())
            .collect();
        let der = ca.key.serialize_der();
        assert!(!raw.windows(32).any(|w| w == &der[der.len() - 32..]));
    }

    /// A client that trusts only the CA reaches a server whose certificate
    /// it signed, under the names it was made for.
    #[test]
    fn serving_certificates_chain_to_the_ca() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let c = Cluster::new(
            FileStore::open(&dir.path().join("c.redb")).unwrap_or_else(|e| panic!("{e}")),
        );
        let ca = ClusterCa::load_or_make(&c, &dir.path().join("k"), true)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("made"));
        let (chain, key) = ca
            .serving_cert(&["127.0.0.1".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
            let app = axum::Router::new().route("/hi", axum::routing::get(|| async { "hello" }));
            tokio::spawn(crate::cluster::listen::serve(
                listener,
                app,
                Some(
                    crate::cluster::tls::server_config_pem(&chain, &key)
                        .unwrap_or_else(|e| panic!("{e}")),
                ),
                crate::cluster::listen::Limits::for_this_process(),
                std::future::pending(),
            ));
            let got = crate::cluster::tls::pinned_client(&ca.cert_pem)
                .unwrap_or_else(|e| panic!("{e}"))
                .get(format!("https://127.0.0.1:{port}/hi"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(got.text().await.unwrap_or_default(), "hello");
            // Discovery: the chain holds the CA the hash names, and only it.
            let url = format!("https://127.0.0.1:{port}");
            let found = crate::cluster::tls::discover_ca(&url, &ca.hash()).await;
            assert_eq!(
                found.ok().and_then(|p| hash_of_pem(&p)),
                Some(ca.hash()),
                "the CA found is the CA named"
            );
            let other = hash_of_der(b"another cluster");
            let refused = crate::cluster::tls::discover_ca(&url, &other).await;
            assert!(format!("{:?}", refused.err()).contains("man in the middle"));
        });
    }
}
