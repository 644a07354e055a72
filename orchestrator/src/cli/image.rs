//! `bulkhead image import|import-dir|ls|inspect|rm|gc|disk`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use bulkhead_images::rootdisk::{self, Format};
use bulkhead_images::store::healthcheck::HealthTest;
use bulkhead_images::store::{import, Store};
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Pull an image from a registry (OCI distribution API): the manifest
    /// raw, linux/amd64 out of an index, each blob streamed to disk and
    /// checked; blobs already in the store are not fetched again.
    /// Credentials: $BULKHEAD_REGISTRY_CREDS or --creds-file (USER:PASSWORD),
    /// else ~/.docker/config.json, else anonymous.
    Pull {
        /// registry/repository[:tag|@digest]
        reference: String,
        /// Plain HTTP (a registry on loopback).
        #[arg(long)]
        insecure: bool,
        /// A file holding USER:PASSWORD for basic auth (default:
        /// $BULKHEAD_REGISTRY_CREDS). Never the password as an argument.
        #[arg(long, value_name = "FILE")]
        creds_file: Option<PathBuf>,
        /// Refused: see --creds-file.
        #[arg(long, hide = true, value_name = "USER:PASSWORD")]
        creds: Option<String>,
    },
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

/// `disk` and `gc` create and delete trees owned by the image's ids: a
/// non-root caller runs them again as root of a user namespace with its
/// subordinate ids (see `bulkhead_images::userns`). `None`: run here.
pub fn rerun_rootless(cmd: &ImageCommand) -> Option<Result<std::process::ExitCode>> {
    if nix::unistd::geteuid().is_root()
        || !matches!(cmd, ImageCommand::Disk { .. } | ImageCommand::Gc)
    {
        return None;
    }
    let run = || -> Result<std::process::ExitCode> {
        let dir = Store::default_dir();
        let exe = std::env::current_exe().context("find our own binary")?;
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
        let status =
            bulkhead_images::userns::rerun_inside(&exe, &args, &[("BULKHEAD_DATA", &dir)])?;
        Ok(std::process::ExitCode::from(
            status.code().map_or(1, |c| u8::try_from(c).unwrap_or(1)),
        ))
    };
    Some(run())
}

pub fn run(cmd: ImageCommand) -> Result<()> {
    let dir = Store::default_dir();
    let store = Store::open(&dir).with_context(|| {
        format!(
            "open the image store at {} (BULKHEAD_DATA moves it)",
            dir.display()
        )
    })?;
    match cmd {
        ImageCommand::Pull {
            reference,
            insecure,
            creds_file,
            creds,
        } => {
            if creds.is_some() {
                return Err(super::secrets::no_secret_in_argv(
                    "--creds",
                    "BULKHEAD_REGISTRY_CREDS",
                    "--creds-file",
                ));
            }
            let basic_auth =
                match super::secrets::secret(creds_file.as_deref(), "BULKHEAD_REGISTRY_CREDS")? {
                    Some(c) => Some(
                        c.split_once(':')
                            .map(|(u, p)| (u.to_string(), p.to_string()))
                            .context("registry credentials: USER:PASSWORD")?,
                    ),
                    None => None,
                };
            let opts = bulkhead_images::store::pull::PullOptions {
                insecure,
                basic_auth,
            };
            let bars = indicatif::MultiProgress::new();
            let style = indicatif::ProgressStyle::with_template(
                "{prefix} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            let by_blob: std::sync::Mutex<
                std::collections::HashMap<String, indicatif::ProgressBar>,
            > = Default::default();
            let progress = |d: &bulkhead_images::store::Digest, done: u64, total: u64| {
                let mut map = by_blob.lock().unwrap_or_else(|p| p.into_inner());
                let bar = map.entry(d.to_string()).or_insert_with(|| {
                    let b = bars.add(indicatif::ProgressBar::new(total));
                    b.set_style(style.clone());
                    b.set_prefix(d.hex()[..12].to_string());
                    b
                });
                bar.set_position(done);
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let i = rt.block_on(bulkhead_images::store::pull::pull(
                &store, &reference, &opts, &progress,
            ))?;
            for b in by_blob.lock().unwrap_or_else(|p| p.into_inner()).values() {
                b.finish();
            }
            println!("{}", i.manifest);
            for n in i.names {
                eprintln!("named {n}");
            }
        }
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
                "healthcheck": match img.config.config.healthcheck() {
                    Ok(None) => serde_json::Value::Null,
                    Ok(Some(h)) => serde_json::json!({
                        "test": match &h.test {
                            HealthTest::Off => serde_json::json!("none"),
                            HealthTest::Exec(args) => serde_json::json!({ "exec": args }),
                            HealthTest::Shell(cmd) => serde_json::json!({ "shell": cmd }),
                        },
                        "interval_s": h.interval.as_secs_f64(),
                        "timeout_s": h.timeout.as_secs_f64(),
                        "start_period_s": h.start_period.as_secs_f64(),
                        "retries": h.retries,
                    }),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                },
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        ImageCommand::Rm { image } => {
            let d = store.remove_ref(&image)?;
            eprintln!("untagged {image} ({d}); `bulkhead image gc` frees its blobs");
        }
        ImageCommand::Gc => {
            let r = store.gc()?;
            eprintln!(
                "removed {} blobs ({} MiB), {} disks, {} trees and {} stale temp entries",
                r.blobs_removed,
                r.bytes_freed >> 20,
                r.disks_removed,
                r.trees_removed,
                r.temp_removed
            );
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
