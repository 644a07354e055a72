//! What each run adds to the test host: the workspace's binaries (refusing
//! stale ones) with the shared libraries they need, staged files, and the
//! command itself.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{shell_quote, TestHost, TestHostError, BINARIES_DIR};
use bulkhead_images::initramfs::CpioWriter;

/// Binaries of the workspace the test host carries: (dir under the target
/// dir, name). The agent, the VMM and the jailer are the static builds
/// (`make static`), as shipped.
const WORKSPACE_BINARIES: &[(&str, &str)] = &[
    ("release", "bulkhead"),
    ("release", "bulkhead-testkit"),
    ("x86_64-unknown-linux-gnu/release", "bulkhead-vmm"),
    ("x86_64-unknown-linux-gnu/release", "bulkhead-agent"),
    ("x86_64-unknown-linux-gnu/release", "bulkhead-jailer"),
];

/// The target dir of a program cargo built with the release profile:
/// `<target>/release/<bin>` or `<target>/release/deps/<test>`.
fn target_dir_of(exe: &Path) -> Option<PathBuf> {
    let mut dir = exe.parent()?;
    if dir.file_name()? == "deps" {
        dir = dir.parent()?;
    }
    (dir.file_name()? == "release")
        .then(|| dir.parent().map(Path::to_path_buf))
        .flatten()
}

/// Where the workspace's built binaries are.
#[derive(Debug, Clone)]
pub struct WorkspaceBinaries {
    /// Cargo's target dir; `None`: carry no workspace binaries.
    pub target_dir: Option<PathBuf>,
}

impl WorkspaceBinaries {
    /// `$CARGO_TARGET_DIR`; else the target dir the running program was
    /// built into (`<target>/release/bulkhead-testhost`, or
    /// `<target>/release/deps/<test>`), so the CLI and the tests find the
    /// binaries built beside them however cargo was pointed; else `target/`
    /// in the workspace this crate is in.
    pub fn from_env() -> Self {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::current_exe()
                    .ok()
                    .and_then(|exe| target_dir_of(&exe))
            })
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        Self {
            target_dir: Some(dir),
        }
    }

    pub fn none() -> Self {
        Self { target_dir: None }
    }

    /// The binaries that are built, as (name, path); an error if one is
    /// older than a source file it was built from.
    pub fn present(&self) -> Result<Vec<(String, PathBuf)>, TestHostError> {
        let Some(target) = &self.target_dir else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (dir, name) in WORKSPACE_BINARIES {
            let bin = target.join(dir).join(name);
            if !bin.is_file() {
                continue;
            }
            check_fresh(&bin, &target.join(dir).join(format!("{name}.d")))?;
            out.push((name.to_string(), bin));
        }
        Ok(out)
    }

    /// The built, fresh binary `name` (one of the workspace's binaries).
    pub fn path(&self, name: &str) -> Result<PathBuf, TestHostError> {
        let target = self
            .target_dir
            .as_ref()
            .ok_or_else(|| TestHostError::Usage("no target dir".into()))?;
        let (dir, _) = WORKSPACE_BINARIES
            .iter()
            .find(|(_, n)| *n == name)
            .ok_or_else(|| {
                TestHostError::Usage(format!("{name} is not one of the workspace binaries"))
            })?;
        let bin = target.join(dir).join(name);
        if !bin.is_file() {
            return Err(TestHostError::Usage(format!(
                "{} is not built: run `make build`",
                bin.display()
            )));
        }
        check_fresh(&bin, &target.join(dir).join(format!("{name}.d")))?;
        Ok(bin)
    }

    /// The directories the binaries are built into (PATH in direct mode).
    pub fn dirs(&self) -> Vec<PathBuf> {
        let Some(target) = &self.target_dir else {
            return Vec::new();
        };
        let mut dirs: Vec<PathBuf> = WORKSPACE_BINARIES
            .iter()
            .map(|(d, _)| target.join(d))
            .collect();
        dirs.dedup();
        dirs
    }
}

/// Compares `bin` with every source listed in Cargo's dep-info file.
fn check_fresh(bin: &Path, dep_info: &Path) -> Result<(), TestHostError> {
    let built = fs::metadata(bin)
        .and_then(|m| m.modified())
        .map_err(TestHostError::io(format!("stat {}", bin.display())))?;
    let text = fs::read_to_string(dep_info).map_err(|e| TestHostError::Io {
        what: format!(
            "{} has no dep-info ({}), so its freshness cannot be checked",
            bin.display(),
            dep_info.display()
        ),
        source: e,
    })?;
    for src in dep_info_sources(&text) {
        // A source that vanished means the binary is stale too.
        let newer = match fs::metadata(&src).and_then(|m| m.modified()) {
            Ok(t) => t > built,
            Err(_) => true,
        };
        if newer {
            return Err(TestHostError::StaleBinary {
                binary: bin.to_path_buf(),
                source_file: src,
            });
        }
    }
    Ok(())
}

/// The prerequisites of the first rule of a Makefile-style dep-info file.
fn dep_info_sources(text: &str) -> Vec<PathBuf> {
    let Some(first) = text.lines().next() else {
        return Vec::new();
    };
    let Some((_, deps)) = split_rule(first) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = deps.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            ' ' => {
                if !cur.is_empty() {
                    out.push(PathBuf::from(std::mem::take(&mut cur)));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(PathBuf::from(cur));
    }
    out
}

/// Splits "target: deps" at the first unescaped ": ".
fn split_rule(line: &str) -> Option<(&str, &str)> {
    let bytes = line.as_bytes();
    (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b':' && bytes[i + 1] == b' ' && (i == 0 || bytes[i - 1] != b'\\'))
        .map(|i| (&line[..i], &line[i + 2..]))
}

/// Shared libraries (and the loader) a dynamically linked ELF needs, from ldd.
pub fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>, TestHostError> {
    if !is_elf(bin) {
        return Ok(Vec::new());
    }
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(TestHostError::io("run ldd"))?;
    // ldd exits 1 for static binaries ("not a dynamic executable").
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(parse_ldd(&text))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = match l.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The per-run archive appended to the base initramfs.
pub fn build(th: &TestHost, argv: &[&str]) -> Result<Vec<u8>, TestHostError> {
    let mut w = CpioWriter::new(Vec::new());
    let io = |what: &str| TestHostError::io(format!("payload: {what}"));
    let mut libs = BTreeSet::new();

    for (name, bin) in th.binaries.present()? {
        w.host_file(&format!("{BINARIES_DIR}/{name}"), 0o755, &bin)
            .map_err(io(&name))?;
        libs.extend(shared_libs(&bin)?);
    }
    for stage in &th.stages {
        add_tree(&mut w, &stage.src, &stage.dst, &mut libs)?;
    }
    for lib in &libs {
        let guest = lib.to_str().ok_or_else(|| {
            TestHostError::Usage(format!("library path {} is not UTF-8", lib.display()))
        })?;
        w.host_file(guest, 0o755, lib).map_err(io(guest))?;
    }

    w.file(
        "/testhost/cmd.sh",
        0o644,
        command_script(th, argv).as_bytes(),
    )
    .map_err(io("cmd.sh"))?;
    w.file("/testhost/stdin", 0o644, &th.stdin)
        .map_err(io("stdin"))?;
    let collect: String = th
        .collects
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i} {}\n", c.guest))
        .collect();
    w.file("/testhost/collect", 0o644, collect.as_bytes())
        .map_err(io("collect list"))?;
    w.finish().map_err(io("finish"))
}

/// The script the test host's init runs: environment, cwd, then `exec` argv
/// (so "not found" exits 127 and the status is the command's own).
fn command_script(th: &TestHost, argv: &[&str]) -> String {
    let mut s = String::from("cd / || exit 125\n");
    for (k, v) in &th.env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    s.push_str("exec");
    for a in argv {
        s.push(' ');
        s.push_str(&shell_quote(a));
    }
    s.push('\n');
    s
}

/// Adds a host file or directory tree at `dst`. The top is followed if it is
/// a symlink; symlinks inside directories stay symlinks.
fn add_tree<W: Write>(
    w: &mut CpioWriter<W>,
    src: &Path,
    dst: &str,
    libs: &mut BTreeSet<PathBuf>,
) -> Result<(), TestHostError> {
    let meta = fs::metadata(src).map_err(TestHostError::io(format!("stage {}", src.display())))?;
    add_entry(w, src, dst, &meta, libs)
}

fn add_entry<W: Write>(
    w: &mut CpioWriter<W>,
    src: &Path,
    dst: &str,
    meta: &fs::Metadata,
    libs: &mut BTreeSet<PathBuf>,
) -> Result<(), TestHostError> {
    let io = |what: String| TestHostError::io(what);
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() {
        let target = fs::read_link(src).map_err(io(format!("readlink {}", src.display())))?;
        w.symlink(dst, &target.to_string_lossy())
            .map_err(io(format!("stage {dst}")))?;
    } else if meta.is_dir() {
        w.dir(dst, mode).map_err(io(format!("stage {dst}")))?;
        let mut entries: Vec<_> = fs::read_dir(src)
            .map_err(io(format!("read {}", src.display())))?
            .collect::<Result<_, _>>()
            .map_err(io(format!("read {}", src.display())))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name();
            let name = name.to_str().ok_or_else(|| {
                TestHostError::Usage(format!("{}: file name is not UTF-8", e.path().display()))
            })?;
            let child_meta = fs::symlink_metadata(e.path())
                .map_err(io(format!("stat {}", e.path().display())))?;
            add_entry(w, &e.path(), &format!("{dst}/{name}"), &child_meta, libs)?;
        }
    } else if meta.is_file() {
        if mode & 0o111 != 0 {
            libs.extend(shared_libs(src)?);
        }
        w.host_file(dst, mode, src)
            .map_err(io(format!("stage {dst}")))?;
    } else {
        return Err(TestHostError::Usage(format!(
            "stage {}: only files, directories and symlinks can be staged (mode {:o})",
            src.display(),
            meta.mode()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_dir_comes_from_where_the_program_was_built() {
        assert_eq!(
            target_dir_of(Path::new("/c/target/release/bulkhead-testhost")),
            Some(PathBuf::from("/c/target"))
        );
        assert_eq!(
            target_dir_of(Path::new("/c/target/release/deps/vmm_e2e-123")),
            Some(PathBuf::from("/c/target"))
        );
        assert_eq!(
            target_dir_of(Path::new("/usr/local/bin/bulkhead-testhost")),
            None
        );
        assert_eq!(target_dir_of(Path::new("/c/target/debug/deps/x")), None);
    }

    #[test]
    fn dep_info_sources_handle_escaped_spaces() {
        let text = "/t/release/x: /src/a.rs /src/my\\ dir/b.rs\n\n/src/a.rs:\n";
        assert_eq!(
            dep_info_sources(text),
            vec![
                PathBuf::from("/src/a.rs"),
                PathBuf::from("/src/my dir/b.rs")
            ]
        );
        assert!(dep_info_sources("").is_empty());
        assert!(dep_info_sources("no rule here").is_empty());
    }

    #[test]
    fn stale_binary_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("main.rs");
        let bin = dir.path().join("bin");
        let dep = dir.path().join("bin.d");
        fs::write(&bin, "x").unwrap();
        fs::write(&src, "fn main(){}").unwrap();
        fs::write(&dep, format!("{}: {}\n", bin.display(), src.display())).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options()
            .write(true)
            .open(&bin)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(matches!(
            check_fresh(&bin, &dep),
            Err(TestHostError::StaleBinary { .. })
        ));
        fs::File::options()
            .write(true)
            .open(&bin)
            .unwrap()
            .set_modified(std::time::SystemTime::now())
            .unwrap();
        fs::File::options()
            .write(true)
            .open(&src)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(check_fresh(&bin, &dep).is_ok());
        assert!(check_fresh(&bin, &dir.path().join("missing.d")).is_err());
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }

    #[test]
    fn command_script_quotes_every_word() {
        let th = TestHost::new().unwrap().env("A", "x y");
        let s = command_script(&th, &["sh", "-c", "echo 'hi'; exit 7"]);
        assert_eq!(
            s,
            "cd / || exit 125\nexport A='x y'\nexec 'sh' '-c' 'echo '\\''hi'\\''; exit 7'\n"
        );
    }
}
