//! `bulkhead image import|import-dir|ls|inspect|rm|gc|disk`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bulkhead_images::rootdisk::{self, Format};
use bulkhead_images::store::{import, Store};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Import an image from a `docker save` tarball or an OCI image layout
    /// (directory or tar). Every blob is checked against its digest.
    Import {
        path: PathBuf,
        /// Name (name[:tag]) to give it instead of the names inside.
        #[arg(long)]
        name: Option<String>,
    },
    /// Import a plain root directory as a one-layer image.
    ImportDir {
        dir: PathBuf,
        /// Name (name[:tag]) to give it.
        #[arg(long)]
        name: String,
    },
    /// List image names and their manifest digests.
    Ls,
    /// Print an image's config (Entrypoint, Cmd, Env, WorkingDir, User,
    /// ExposedPorts, StopSignal) and layers as JSON.
    Inspect { image: String },
    /// Remove an image name (blobs go at the next `gc`).
    Rm { image: String },
    /// Remove blobs and root disks no image name reaches.
    Gc,
    /// Build (or find cached) the image's root disk and print its path.
    Disk {
        image: String,
        /// ext4 or erofs.
        #[arg(long, default_value = "ext4")]
        format: Format,
    },
}

pub fn run(cmd: ImageCommand) -> Result<()> {
    let dir = Store::default_dir();
    let store = Store::open(&dir).with_context(|| format!("open the image store at {} (BULKHEAD_DATA moves it)", dir.display()))?;
    match cmd {
        ImageCommand::Import { path, name } => {
            eprintln!("importing {} ...", path.display());
            let i = import::import(&store, &path, name.as_deref())?;
            println!("{}", i.manifest);
            if i.names.is_empty() {
                eprintln!("(no name inside: refer to it by digest, or import again with --name)");
            }
            for n in i.names {
                eprintln!("named {n}");
            }
        }
        ImageCommand::ImportDir { dir, name } => {
            let i = import::import_dir(&store, &dir, &name)?;
            println!("{}", i.manifest);
        }
        ImageCommand::Ls => {
            let refs = store.refs()?;
            let width = refs.keys().map(String::len).max().unwrap_or(4).max(4);
            println!("{:width$}  MANIFEST", "NAME");
            for (n, d) in refs {
                println!("{n:width$}  {d}");
            }
        }
        ImageCommand::Inspect { image } => {
            let d = store.resolve(&image)?;
            let img = store.image(&d)?;
            let out = serde_json::json!({
                "manifest": d.as_str(),
                "config": img.manifest.config.digest.as_str(),
                "layers": img.manifest.layers.iter().map(|l| serde_json::json!({"digest": l.digest.as_str(), "size": l.size, "mediaType": l.media_type})).collect::<Vec<_>>(),
                "architecture": img.config.architecture,
                "os": img.config.os,
                "Config": img.config.config,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Rm { image } => {
            let d = store.remove_ref(&image)?;
            eprintln!("untagged {image} ({d}); `bulkhead image gc` frees its blobs");
        }
        ImageCommand::Gc => {
            let r = store.gc()?;
            eprintln!("removed {} blobs ({} MiB) and {} disks", r.blobs_removed, r.bytes_freed >> 20, r.disks_removed);
        }
        ImageCommand::Disk { image, format } => {
            let d = store.resolve(&image)?;
            let started = Instant::now();
            let path = rootdisk::build(&store, &d, format, &mut |m| eprintln!("{m}"))?;
            eprintln!("{} disk ready in {:.2?}", format.ext(), started.elapsed());
            println!("{}", path.display());
        }
    }
    Ok(())
}
