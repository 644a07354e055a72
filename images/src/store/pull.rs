//! Pulling from OCI distribution registries with `oci-client`: the
//! manifest fetched raw (its digest is over those bytes), an index
//! resolved to linux/amd64, each blob streamed to a temp file in the store
//! while hashed (never a whole layer in memory), then checked and renamed
//! into place. Blobs already in the store are not fetched again.
//!
//! The registry is not trusted with our memory or disk: a manifest is read
//! chunk by chunk and refused past [`MAX_MANIFEST`] (the limit the
//! distribution registry itself enforces), a blob is cut off at the size
//! its descriptor declared, and a blob that would leave the store's disk
//! with less than [`DISK_RESERVE`] free is not fetched at all.

use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::Digest as _;
use tokio::io::AsyncWrite;

use super::oci::{self, Index, Manifest};
use super::{Digest, Imported, Store, StoreError};

/// How to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Plain HTTP (for a registry on loopback in tests or local setups).
    pub insecure: bool,
    /// user, password; else `~/.docker/config.json`'s entry, else anonymous.
    pub basic_auth: Option<(String, String)>,
}

/// Progress of one blob: (digest, bytes so far, total).
pub type Progress<'a> = &'a (dyn Fn(&Digest, u64, u64) + Send + Sync);

const ACCEPTED: &[&str] = &[
    oci::OCI_MANIFEST,
    oci::DOCKER_MANIFEST,
    oci::OCI_INDEX,
    oci::DOCKER_LIST,
];
const ATTEMPTS: u32 = 3;

/// The largest manifest or index accepted (the distribution registry's own
/// limit on what it stores).
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Free space a pull leaves on the store's disk, for the rest of the node.
pub const DISK_RESERVE: u64 = 512 << 20;

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
pub fn free_bytes(dir: &std::path::Path) -> Result<u64, StoreError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| StoreError::Io {
        what: format!("statvfs {}", dir.display()),
        source: e.into(),
    })?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Refuses `need` more bytes under `dir` when fewer than `need` plus the
/// reserve are free.
pub fn check_space(dir: &std::path::Path, need: u64, what: &str) -> Result<(), StoreError> {
    let free = free_bytes(dir)?;
    if need.saturating_add(DISK_RESERVE) > free {
        return Err(StoreError::NoSpace {
            what: what.to_string(),
            need,
            free,
            dir: dir.display().to_string(),
        });
    }
    Ok(())
}

fn bad(what: impl std::fmt::Display) -> StoreError {
    StoreError::Bad(what.to_string())
}

/// An error with its causes ("error sending request" alone says little).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let c_s = c.to_string();
        if !s.contains(&c_s) {
            s.push_str(": ");
            s.push_str(&c_s);
        }
        cur = c.source();
    }
    s
}

/// Credentials for `registry` from `~/.docker/config.json` (`auths.<registry>.auth`,
/// base64 of `user:password`), if any.
pub fn docker_config_auth(registry: &str) -> Option<(String, String)> {
    let home = std::env::var_os("HOME")?;
    let text = std::fs::read(std::path::Path::new(&home).join(".docker/config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    let auths = v.get("auths")?.as_object()?;
    let entry = auths
        .get(registry)
        .or_else(|| auths.get(&format!("https://{registry}")))?;
    let decoded = base64_decode(entry.get("auth")?.as_str()?)?;
    let (u, p) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|b| *b != b'=' && !b.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            acc |= val(*c)? << (18 - 6 * i);
        }
        let n = chunk.len().saturating_sub(1);
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// Pulls `reference` into the store and names it.
pub async fn pull(
    store: &Store,
    reference: &str,
    opts: &PullOptions,
    progress: Progress<'_>,
) -> Result<Imported, StoreError> {
    // The TLS stack's crypto: ring, chosen once per process (Err = already set).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let r: Reference = reference
        .parse()
        .map_err(|e| bad(format!("image reference {reference:?}: {e}")))?;
    let registry = r.resolve_registry().to_string();
    let protocol = if opts.insecure {
        ClientProtocol::HttpsExcept(vec![r.registry().to_string(), registry.clone()])
    } else {
        ClientProtocol::Https
    };
    let client = Client::new(ClientConfig {
        protocol,
        ..Default::default()
    });
    let auth = match opts
        .basic_auth
        .clone()
        .or_else(|| docker_config_auth(r.registry()))
    {
        Some((u, p)) => RegistryAuth::Basic(u, p),
        None => RegistryAuth::Anonymous,
    };
    let what = |e: &dyn std::fmt::Display| bad(format!("{reference}: {e}"));
    let manifests = ManifestFetcher::new(&client, &r, &auth, opts)
        .await
        .map_err(|e| {
            let msg = e.to_string();
            let hint = if !opts.insecure && msg.contains("wrong version number") {
                " (a plain-HTTP registry? use --insecure)"
            } else {
                ""
            };
            what(&format!("{msg}{hint}"))
        })?;

    // The manifest, raw; an index is resolved to linux/amd64.
    let bytes = retry_if(|| manifests.get(&r), ManifestError::transient)
        .await
        .map_err(|e| what(&e))?;
    let mut manifest_digest = Digest::of(&bytes);
    if let Some(d) = r.digest() {
        if d != manifest_digest.as_str() {
            return Err(StoreError::DigestMismatch {
                what: format!("manifest of {reference}"),
                expected: Digest::parse(d)?,
                actual: manifest_digest,
            });
        }
    }
    let mut manifest_bytes = bytes.to_vec();
    if serde_json::from_slice::<Manifest>(&manifest_bytes).is_err() {
        let index: Index = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| what(&format!("neither a manifest nor an index: {e}")))?;
        store.put_bytes(&manifest_bytes, "index")?;
        let pick = index
            .pick()
            .ok_or_else(|| what(&"no linux/amd64 image in the index"))?
            .clone();
        let by_digest = r.clone_with_digest(pick.digest.to_string());
        let bytes = retry_if(|| manifests.get(&by_digest), ManifestError::transient)
            .await
            .map_err(|e| what(&e))?;
        manifest_digest = Digest::of(&bytes);
        if manifest_digest != pick.digest {
            return Err(StoreError::DigestMismatch {
                what: "platform manifest".into(),
                expected: pick.digest,
                actual: manifest_digest,
            });
        }
        manifest_bytes = bytes.to_vec();
    }
    let manifest: Manifest =
        serde_json::from_slice(&manifest_bytes).map_err(|e| what(&format!("manifest: {e}")))?;

    for desc in std::iter::once(&manifest.config).chain(&manifest.layers) {
        if store.has_blob(&desc.digest) {
            continue;
        }
        check_space(store.root(), desc.size, &format!("blob {}", desc.digest))?;
        let mut last_err = None;
        for attempt in 0..ATTEMPTS {
            match fetch_blob(store, &client, &r, &desc.digest, desc.size, progress).await {
                Ok(()) => {
                    last_err = None;
                    break;
                }
                Err(e @ StoreError::DigestMismatch { .. }) => return Err(e),
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        if let Some(e) = last_err {
            return Err(e);
        }
    }
    let stored = store.put_bytes(&manifest_bytes, "manifest")?;
    debug_assert_eq!(stored, manifest_digest);
    let name = r.whole();
    let mut names = Vec::new();
    if r.tag().is_some() || r.digest().is_none() {
        let tagged = match r.digest() {
            Some(_) => name.split('@').next().unwrap_or(&name).to_string(),
            None => name.clone(),
        };
        store.set_ref(&tagged, &manifest_digest)?;
        names.push(super::normalise(&tagged));
    }
    Ok(Imported {
        manifest: manifest_digest,
        names,
    })
}

/// Why a manifest could not be fetched.
#[derive(Debug, thiserror::Error)]
enum ManifestError {
    #[error("{0}")]
    Http(String),
    #[error("the registry answered {status} for {url}")]
    Status { status: u16, url: String },
    #[error("the manifest is larger than {MAX_MANIFEST} bytes: refused before reading it all")]
    TooLarge,
}

impl ManifestError {
    /// Worth another try: the network, or the registry's own trouble (5xx,
    /// 429); not a refusal or a manifest too large, which would only come
    /// again.
    fn transient(&self) -> bool {
        match self {
            ManifestError::Http(_) => true,
            ManifestError::Status { status, .. } => *status >= 500 || *status == 429,
            ManifestError::TooLarge => false,
        }
    }
}

/// GETs manifests itself, so that a body is read chunk by chunk under
/// [`MAX_MANIFEST`]; oci-client only gives it the credentials (a bearer
/// token from the registry's token server, or basic auth).
struct ManifestFetcher {
    http: reqwest::Client,
    scheme: &'static str,
    authorization: Option<String>,
}

impl ManifestFetcher {
    async fn new(
        client: &Client,
        r: &Reference,
        auth: &RegistryAuth,
        opts: &PullOptions,
    ) -> Result<Self, ManifestError> {
        let http = |e: &(dyn std::error::Error + 'static)| ManifestError::Http(chain(e));
        let token = retry(|| client.auth(r, auth, oci_client::RegistryOperation::Pull))
            .await
            .map_err(|e| http(&e))?;
        let authorization = match (token, auth) {
            (Some(t), _) => Some(format!("Bearer {t}")),
            (None, RegistryAuth::Basic(u, p)) => Some(format!(
                "Basic {}",
                base64_encode(format!("{u}:{p}").as_bytes())
            )),
            (None, _) => None,
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(10))
                .build()
                .map_err(|e| http(&e))?,
            scheme: if opts.insecure { "http" } else { "https" },
            authorization,
        })
    }

    /// The manifest `r` names (by digest if it has one), raw.
    async fn get(&self, r: &Reference) -> Result<Vec<u8>, ManifestError> {
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.scheme,
            r.resolve_registry(),
            r.repository(),
            r.digest().or(r.tag()).unwrap_or("latest")
        );
        let mut req = self
            .http
            .get(&url)
            .header(reqwest::header::ACCEPT, ACCEPTED.join(", "));
        if let Some(a) = &self.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let mut res = req
            .send()
            .await
            .map_err(|e| ManifestError::Http(chain(&e)))?;
        if !res.status().is_success() {
            return Err(ManifestError::Status {
                status: res.status().as_u16(),
                url,
            });
        }
        if res.content_length().is_some_and(|n| n > MAX_MANIFEST) {
            return Err(ManifestError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| ManifestError::Http(chain(&e)))?
        {
            if (body.len() + chunk.len()) as u64 > MAX_MANIFEST {
                return Err(ManifestError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ABC[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    f: impl FnMut() -> F,
) -> Result<T, E> {
    retry_if(f, |_| true).await
}

/// [`retry`], but an error `transient` says is final ends it at once.
async fn retry_if<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> F,
    transient: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt + 1 >= ATTEMPTS || !transient(&e) => return Err(e),
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                attempt += 1;
            }
        }
    }
}

/// Streams one blob into a temp file while hashing, then publishes it.
async fn fetch_blob(
    store: &Store,
    client: &Client,
    r: &Reference,
    digest: &Digest,
    size: u64,
    progress: Progress<'_>,
) -> Result<(), StoreError> {
    let tmp = store.temp_file()?;
    let file = tokio::fs::File::from_std(tmp.reopen().map_err(|e| StoreError::Io {
        what: "reopen a temp file".into(),
        source: e,
    })?);
    let mut writer = HashingWriter {
        inner: file,
        hasher: sha2::Sha256::new(),
        written: 0,
        digest,
        size,
        progress,
    };
    client
        .pull_blob(r, digest.as_str(), &mut writer)
        .await
        .map_err(|e| bad(format!("blob {digest}: {}", chain(&e))))?;
    tokio::io::AsyncWriteExt::flush(&mut writer)
        .await
        .map_err(|e| StoreError::Io {
            what: format!("write blob {digest}"),
            source: e,
        })?;
    writer.inner.sync_all().await.map_err(|e| StoreError::Io {
        what: format!("sync blob {digest}"),
        source: e,
    })?;
    let actual = Digest::from_hasher(writer.hasher.clone());
    if actual != *digest {
        return Err(StoreError::DigestMismatch {
            what: format!("blob from {}", r.whole()),
            expected: digest.clone(),
            actual,
        });
    }
    tmp.persist(store.blob_path(digest))
        .map_err(|e| StoreError::Io {
            what: format!("publish blob {digest}"),
            source: e.error,
        })?;
    Ok(())
}

struct HashingWriter<'a> {
    inner: tokio::fs::File,
    hasher: sha2::Sha256,
    written: u64,
    digest: &'a Digest,
    size: u64,
    progress: Progress<'a>,
}

impl AsyncWrite for HashingWriter<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        // A registry sends what the descriptor declared, and not a byte
        // more: the rest would fill the disk before the digest could fail.
        if this.written.saturating_add(buf.len() as u64) > this.size {
            return Poll::Ready(Err(std::io::Error::other(format!(
                "the registry sent more than the {} bytes blob {} declares",
                this.size, this.digest
            ))));
        }
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.hasher.update(&buf[..n]);
                this.written += n as u64;
                (this.progress)(this.digest, this.written, this.size);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_docker_auth_strings() {
        assert_eq!(
            base64_decode("dXNlcjpwYXNz").as_deref(),
            Some(&b"user:pass"[..])
        );
        assert_eq!(base64_decode("YTpi").as_deref(), Some(&b"a:b"[..]));
        assert_eq!(base64_decode("YTpiYw==").as_deref(), Some(&b"a:bc"[..]));
        assert!(base64_decode("!!!!").is_none());
        for s in ["", "a", "ab", "abc", "user:pass", "a:bc"] {
            assert_eq!(
                base64_decode(&base64_encode(s.as_bytes())).as_deref(),
                Some(s.as_bytes())
            );
        }
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
    }
}
