//! Direct mode: this host has hardware KVM, so the command runs here.
//!
//! Staged paths are created for the run and removed after it; a stage never
//! overwrites something that exists (it is an error), so a run cannot damage
//! the host it borrows.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::symlink;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use super::pump::{shell_status, watch_child};
use super::{Mode, Output, Stream, TestHost, TestHostError};

pub fn run(
    th: &TestHost,
    argv: &[&str],
    sink: &mut dyn FnMut(Stream, &[u8]),
) -> Result<Output, TestHostError> {
    let started = Instant::now();
    let staged = Staged::apply(th)?;

    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..]).current_dir("/").process_group(0);
    let mut path: Vec<PathBuf> = th.binaries.dirs();
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    cmd.env(
        "PATH",
        std::env::join_paths(path).map_err(|e| TestHostError::Usage(format!("PATH: {e}")))?,
    );
    if let Ok(k) = bulkhead_images::kernel::find_built() {
        cmd.env("BULKHEAD_KERNEL", k.vmlinux);
    }
    cmd.envs(th.env.iter().map(|(k, v)| (k, v)));
    let mut child = match cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        // As a shell would report it, so both modes agree.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied
            ) =>
        {
            let (status, what) = if e.kind() == io::ErrorKind::NotFound {
                (127, "not found")
            } else {
                (126, "permission denied")
            };
            let msg = format!("{}: {what}\n", argv[0]);
            sink(Stream::Stderr, msg.as_bytes());
            return Ok(Output {
                status,
                stdout: Vec::new(),
                stderr: msg.into_bytes(),
                console: String::new(),
                mode: Mode::Direct,
                elapsed: started.elapsed(),
            });
        }
        Err(e) => return Err(TestHostError::io(format!("start {}", argv[0]))(e)),
    };

    if let Some(mut stdin) = child.stdin.take() {
        let bytes = th.stdin.clone();
        // A command that does not read its stdin gets EPIPE here; that is fine.
        std::thread::spawn(move || stdin.write_all(&bytes));
    }
    let gathered = watch_child(child, started + th.timeout, true, sink);
    if gathered.timed_out {
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&gathered.stdout),
            String::from_utf8_lossy(&gathered.stderr)
        );
        return Err(TestHostError::Timeout {
            after: th.timeout,
            output: super::tail_lines(&output, 25),
            console: String::new(),
        });
    }
    let status = gathered.exit.map(shell_status).unwrap_or(125);
    for c in &th.collects {
        let src = Path::new(&c.guest);
        if fs::symlink_metadata(src).is_err() {
            return Err(TestHostError::Collect {
                guest: c.guest.clone(),
                why: "not found".into(),
            });
        }
        copy_tree(src, &c.host).map_err(|e| TestHostError::Collect {
            guest: c.guest.clone(),
            why: e.to_string(),
        })?;
    }
    drop(staged);
    Ok(Output {
        status,
        stdout: gathered.stdout,
        stderr: gathered.stderr,
        console: String::new(),
        mode: Mode::Direct,
        elapsed: started.elapsed(),
    })
}

/// What one run created on the host, removed on drop (top-most first made).
struct Staged {
    created: Vec<PathBuf>,
}

impl Staged {
    fn apply(th: &TestHost) -> Result<Self, TestHostError> {
        let mut staged = Staged {
            created: Vec::new(),
        };
        for s in &th.stages {
            let dst = PathBuf::from(&s.dst);
            if fs::symlink_metadata(&dst).is_ok() {
                return Err(TestHostError::Usage(format!(
                    "stage: {} exists on this host; direct mode never overwrites",
                    dst.display()
                )));
            }
            // Remember the highest directory we create, to remove it later.
            let mut top = dst.clone();
            while let Some(parent) = top.parent() {
                if parent.exists() {
                    break;
                }
                top = parent.to_path_buf();
            }
            staged.created.push(top);
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)
                    .map_err(TestHostError::io(format!("create {}", parent.display())))?;
            }
            let src = fs::canonicalize(&s.src)
                .map_err(TestHostError::io(format!("stage {}", s.src.display())))?;
            copy_tree(&src, &dst).map_err(TestHostError::io(format!(
                "stage {} to {}",
                src.display(),
                dst.display()
            )))?;
        }
        Ok(staged)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for p in self.created.iter().rev() {
            let _ = match fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => fs::remove_dir_all(p),
                Ok(_) => fs::remove_file(p),
                Err(_) => Ok(()),
            };
        }
    }
}

/// Moves (or copies, across filesystems) `src` to `dst`, replacing `dst`.
pub fn place(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::symlink_metadata(dst) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(dst)?,
        Ok(_) => fs::remove_file(dst)?,
        Err(_) => {}
    }
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::rename(src, dst) {
        Ok(()) => Ok(()),
        Err(_) => copy_tree(src, dst),
    }
}

/// `cp -a` for files, directories and symlinks (symlinks stay symlinks).
pub fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if meta.file_type().is_symlink() {
        symlink(fs::read_link(src)?, dst)
    } else if meta.is_dir() {
        fs::create_dir(dst)?;
        for e in fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()))?;
        }
        fs::set_permissions(dst, meta.permissions())
    } else if meta.is_file() {
        fs::copy(src, dst).map(|_| ())
    } else {
        Err(io::Error::other(format!(
            "{}: not a file, directory or symlink",
            src.display()
        )))
    }
}
