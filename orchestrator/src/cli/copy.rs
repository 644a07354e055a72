//! `bulkhead cp`.

use anyhow::Result;
use clap::Args;

use crate::runtime::copy::{self, CopyRequest, Endpoint};
use crate::state::paths::{data_dir, Paths};
use crate::state::State;

const AFTER: &str = "\
Paths are placed as `docker cp` places them: a file goes into a directory,
over a file, or to a new name; a directory goes into a directory (with
SRC_PATH ending in `/.`, only its contents), or to a new name. A workload's
path is inside its root; a symlink there is followed inside the root, and
one that leads out of it is refused.

Works on running workloads of both runtimes and on stopped containers (their
writable layer stays until `rm`; not their volumes). A stopped microVM's
writes ended with it: keep data in a volume. Copied to the host, files never
keep a setuid or setgid bit, and devices and sockets are skipped.

Examples:
  bulkhead cp web:/etc/nginx ./nginx-conf
  bulkhead cp -a ./site/. web:/usr/share/nginx/html
  bulkhead cp db:/var/log/db.log - | tar -tv";

#[derive(Debug, Args)]
#[command(after_help = AFTER)]
pub struct CpArgs {
    /// Keep owners (uid:gid) as they are at the source; without it, what
    /// lands in a workload belongs to its root and what lands on the host
    /// to you.
    #[arg(short = 'a', long)]
    archive: bool,
    /// Follow SRC_PATH if it is a symlink.
    #[arg(short = 'L', long = "follow-link")]
    follow_link: bool,
    /// Print nothing when it worked.
    #[arg(short, long)]
    quiet: bool,
    /// NAME:SRC_PATH, a host path, or - (a tar stream on stdin).
    src: String,
    /// NAME:DEST_PATH, a host path, or - (a tar stream on stdout).
    dest: String,
}

pub fn cp(a: CpArgs) -> Result<()> {
    let req = CopyRequest {
        src: Endpoint::parse(&a.src),
        dest: Endpoint::parse(&a.dest),
        archive: a.archive,
        follow_link: a.follow_link,
    };
    let copied = copy::copy(&State::new(Paths::new(data_dir())), &req)?;
    for n in &copied.notes {
        eprintln!("bulkhead: {n}");
    }
    if !a.quiet && a.dest != "-" {
        eprintln!("copied {} to {}", human(copied.bytes), a.dest);
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / f64::from(1u32 << 30)),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20)),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}
