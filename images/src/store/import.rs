//! Images from files: an OCI image layout (directory or tar), a
//! `docker save` tarball (legacy `manifest.json` format; newer Docker
//! writes an OCI layout, handled as such), or a plain root directory.
//! Every blob is streamed into the store and checked against its digest;
//! JSON documents are read with a size cap.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::Deserialize;

use super::oci::{self, Descriptor, Index, Manifest};
use super::{Digest, Store, StoreError, MAX_JSON};

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Imported {
    pub manifest: Digest,
    /// References set (`name:tag`).
    pub names: Vec<String>,
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

/// Most files an image archive may hold (layers, configs, side files).
const MAX_ARCHIVE_FILES: usize = 10_000;

fn read_capped(r: impl Read, what: &str) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::new();
    r.take(MAX_JSON + 1)
        .read_to_end(&mut v)
        .map_err(io(format!("read {what}")))?;
    if v.len() as u64 > MAX_JSON {
        return Err(StoreError::Bad(format!("{what} is over {MAX_JSON} bytes")));
    }
    Ok(v)
}

/// Imports `path`: a directory with `oci-layout`, a tar holding an OCI
/// layout or a `docker save` image. `name` overrides the names found inside.
pub fn import(store: &Store, path: &Path, name: Option<&str>) -> Result<Imported, StoreError> {
    if path.is_dir() {
        if !path.join("oci-layout").is_file() {
            return Err(StoreError::Bad(format!("{}: a directory without oci-layout (for a plain root filesystem use `bulkhead image import-dir`)", path.display())));
        }
        let mut docs = BTreeMap::new();
        for f in ["oci-layout", "index.json"] {
            let file = std::fs::File::open(path.join(f))
                .map_err(io(format!("open {}", path.join(f).display())))?;
            docs.insert(f.to_string(), read_capped(file, f)?);
        }
        let blobs = path.join("blobs/sha256");
        for e in std::fs::read_dir(&blobs)
            .map_err(io(format!("list {}", blobs.display())))?
            .flatten()
        {
            let hex = e.file_name().to_string_lossy().into_owned();
            let Ok(d) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            let f = std::fs::File::open(e.path())
                .map_err(io(format!("open {}", e.path().display())))?;
            store.put_blob(f, Some(&d), &format!("blob {d}"))?;
        }
        return finish_oci(store, &docs, name);
    }
    let file = std::fs::File::open(path).map_err(io(format!("open {}", path.display())))?;
    let (bounded, budget) = crate::tarbound::BoundedReader::new(file);
    let mut archive = tar::Archive::new(bounded);
    // The tar crate's messages quote the bytes it choked on: keep one short line.
    let not_tar = |e: std::io::Error| {
        let msg: String = e
            .to_string()
            .lines()
            .next()
            .unwrap_or_default()
            .chars()
            .take(80)
            .collect();
        StoreError::Bad(format!(
            "{}: not a docker save or OCI layout tarball ({msg})",
            path.display()
        ))
    };
    // Every file goes to the store as a blob as it streams by (tar order
    // is not ours to choose); the small JSON documents are kept aside.
    let mut docs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut by_path: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
    let mut entries = archive.entries().map_err(not_tar)?;
    loop {
        budget.arm();
        let Some(entry) = entries.next() else { break };
        budget.disarm();
        let mut entry = entry.map_err(not_tar)?;
        // Each file becomes a blob: a tarball of a million tiny files is not an image.
        if by_path.len() >= MAX_ARCHIVE_FILES {
            return Err(StoreError::Bad(format!(
                "{}: more than {MAX_ARCHIVE_FILES} files; not an image archive",
                path.display()
            )));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            // Drained uncounted: only headers and metadata count.
            std::io::copy(&mut entry, &mut std::io::sink()).map_err(not_tar)?;
            continue;
        }
        let p = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        if matches!(
            p.as_str(),
            "oci-layout" | "index.json" | "manifest.json" | "repositories"
        ) {
            docs.insert(p.clone(), read_capped(entry, &p)?);
            continue;
        }
        let expected = p
            .strip_prefix("blobs/sha256/")
            .and_then(|hex| Digest::parse(&format!("sha256:{hex}")).ok());
        let (d, size) = store.put_blob(entry, expected.as_ref(), &p)?;
        by_path.insert(p, (d, size));
    }
    if docs.contains_key("index.json") {
        return finish_oci(store, &docs, name);
    }
    if let Some(m) = docs.get("manifest.json") {
        return finish_docker(store, m, &by_path, name);
    }
    Err(StoreError::Bad(format!(
        "{}: neither an OCI layout (index.json) nor a docker save tarball (manifest.json)",
        path.display()
    )))
}

fn finish_oci(
    store: &Store,
    docs: &BTreeMap<String, Vec<u8>>,
    name: Option<&str>,
) -> Result<Imported, StoreError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Layout {
        image_layout_version: String,
    }
    let layout: Layout =
        serde_json::from_slice(docs.get("oci-layout").map(Vec::as_slice).unwrap_or(b""))
            .map_err(|e| StoreError::Bad(format!("oci-layout: {e}")))?;
    if !layout.image_layout_version.starts_with("1.") {
        return Err(StoreError::Bad(format!(
            "OCI layout version {} (want 1.x)",
            layout.image_layout_version
        )));
    }
    let index: Index =
        serde_json::from_slice(docs.get("index.json").map(Vec::as_slice).unwrap_or(b""))
            .map_err(|e| StoreError::Bad(format!("index.json: {e}")))?;
    let pick = index.pick().or_else(|| {
        index
            .manifests
            .iter()
            .find(|d| d.media_type == oci::OCI_MANIFEST || d.media_type == oci::DOCKER_MANIFEST)
    });
    let top =
        pick.ok_or_else(|| StoreError::Bad("index.json lists no linux/amd64 image".into()))?;
    let image = store.image(&top.digest)?; // resolves a nested index too
    check_blobs(store, &image.manifest)?;
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => top
            .annotations
            .get("io.containerd.image.name")
            .or_else(|| top.annotations.get("org.opencontainers.image.ref.name"))
            .map(|n| vec![n.clone()])
            .unwrap_or_default(),
    };
    for n in &names {
        store.set_ref(n, &image.manifest_digest)?;
    }
    Ok(Imported {
        manifest: image.manifest_digest,
        names: names.iter().map(|n| super::normalise(n)).collect(),
    })
}

fn check_blobs(store: &Store, m: &Manifest) -> Result<(), StoreError> {
    for d in std::iter::once(&m.config).chain(&m.layers) {
        if !store.has_blob(&d.digest) {
            return Err(StoreError::Bad(format!(
                "the image needs blob {} which the archive does not hold",
                d.digest
            )));
        }
    }
    Ok(())
}

fn finish_docker(
    store: &Store,
    manifest_json: &[u8],
    by_path: &BTreeMap<String, (Digest, u64)>,
    name: Option<&str>,
) -> Result<Imported, StoreError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry {
        config: String,
        #[serde(default)]
        repo_tags: Option<Vec<String>>,
        layers: Vec<String>,
    }
    let entries: Vec<Entry> = serde_json::from_slice(manifest_json)
        .map_err(|e| StoreError::Bad(format!("manifest.json: {e}")))?;
    let [entry] = entries.as_slice() else {
        return Err(StoreError::Bad(format!(
            "manifest.json holds {} images; import one at a time",
            entries.len()
        )));
    };
    let find = |p: &str| {
        by_path
            .get(p.trim_start_matches("./"))
            .cloned()
            .ok_or_else(|| {
                StoreError::Bad(format!(
                    "manifest.json names {p}, which the tarball does not hold"
                ))
            })
    };
    let (config, config_size) = find(&entry.config)?;
    // Legacy docker save names the config after its digest: hold it to that.
    if let Some(hex) = entry.config.strip_suffix(".json") {
        if hex.len() == 64 && hex != config.hex() {
            return Err(StoreError::DigestMismatch {
                what: entry.config.clone(),
                expected: Digest::parse(&format!("sha256:{hex}"))?,
                actual: config,
            });
        }
    }
    let mut layers = Vec::new();
    for l in &entry.layers {
        let (digest, size) = find(l)?;
        // Layers in a docker save are plain tar (gzip is recognised by magic when unpacking).
        layers.push(Descriptor {
            media_type: oci::OCI_LAYER_TAR.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        });
    }
    let manifest = Manifest {
        schema_version: 2,
        media_type: oci::OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: oci::OCI_CONFIG.into(),
            digest: config,
            size: config_size,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers,
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|e| StoreError::Bad(e.to_string()))?;
    let md = store.put_bytes(&bytes, "manifest")?;
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => entry.repo_tags.clone().unwrap_or_default(),
    };
    for n in &names {
        store.set_ref(n, &md)?;
    }
    Ok(Imported {
        manifest: md,
        names: names.iter().map(|n| super::normalise(n)).collect(),
    })
}

/// Imports a plain root directory as a one-layer image named `name`.
pub fn import_dir(store: &Store, dir: &Path, name: &str) -> Result<Imported, StoreError> {
    if !dir.is_dir() {
        return Err(StoreError::Bad(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut tmp = store.temp_file()?;
    {
        let mut b = tar::Builder::new(&mut tmp);
        b.follow_symlinks(false);
        b.append_dir_all(".", dir)
            .map_err(io(format!("pack {}", dir.display())))?;
        b.finish().map_err(io("pack"))?;
    }
    let f = std::fs::File::open(tmp.path()).map_err(io("reopen the layer"))?;
    let (layer, size) = store.put_blob(f, None, "layer")?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": [format!("PATH={}", bulkhead_agent_proto::DEFAULT_PATH)], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.as_str()]}
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| StoreError::Bad(e.to_string()))?;
    let cd = store.put_bytes(&config_bytes, "config")?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: oci::OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: oci::OCI_CONFIG.into(),
            digest: cd,
            size: config_bytes.len() as u64,
            platform: None,
            annotations: BTreeMap::new(),
        },
        layers: vec![Descriptor {
            media_type: oci::OCI_LAYER_TAR.into(),
            digest: layer,
            size,
            platform: None,
            annotations: BTreeMap::new(),
        }],
    };
    let md = store.put_bytes(
        &serde_json::to_vec(&manifest).map_err(|e| StoreError::Bad(e.to_string()))?,
        "manifest",
    )?;
    store.set_ref(name, &md)?;
    Ok(Imported {
        manifest: md,
        names: vec![super::normalise(name)],
    })
}
