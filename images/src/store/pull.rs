//! Pulling from OCI distribution registries with `oci-client`: the
//! manifest fetched raw (its digest is over those bytes), an index
//! resolved to linux/amd64, each blob streamed to a temp file in the store
//! while hashed (never a whole layer in memory), then checked and renamed
//! into place. Blobs already in the store are not fetched again.

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

    // The manifest, raw; an index is resolved to linux/amd64.
    let (bytes, _) = retry(|| client.pull_manifest_raw(&r, &auth, ACCEPTED))
        .await
        .map_err(|e| {
            let msg = chain(&e);
            let hint = if !opts.insecure && msg.contains("wrong version number") {
                " (a plain-HTTP registry? use --insecure)"
            } else {
                ""
            };
            what(&format!("{msg}{hint}"))
        })?;
    if bytes.len() as u64 > super::MAX_JSON {
        return Err(what(&"manifest too large"));
    }
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
        let (bytes, _) = retry(|| client.pull_manifest_raw(&by_digest, &auth, ACCEPTED))
            .await
            .map_err(|e| what(&chain(&e)))?;
        if bytes.len() as u64 > super::MAX_JSON {
            return Err(what(&"platform manifest too large"));
        }
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

async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    mut f: impl FnMut() -> F,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt + 1 >= ATTEMPTS => return Err(e),
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
    }
}
