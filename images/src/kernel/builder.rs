//! Building the guest kernel: extract the source once per version, configure
//! from tinyconfig + fragment, check every listed symbol, `make vmlinux`,
//! publish `vmlinux` + `.config` into the cache atomically.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::fragment::{check, parse_dot_config, parse_fragment};
use super::{
    built_in, cache_key, kernel_cache_dir, BuiltKernel, KernelError, MICROVM_FRAGMENT,
    SOURCE_PACKAGE,
};
use crate::debian::{ensure_packages, installed_version, tail_lines};

/// Packages the build needs besides the source itself.
const BUILD_PACKAGES: &[&str] = &[
    SOURCE_PACKAGE,
    "make",
    "gcc",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
];

/// Objects a build of this config compiles, for the progress bar before the
/// first build has counted them itself.
const DEFAULT_OBJECT_ESTIMATE: u64 = 1800;

/// Where the build reports what it is doing.
pub trait BuildProgress {
    /// A new phase started (installing, extracting, configuring, compiling).
    fn phase(&mut self, what: &str);
    /// `done` of about `estimate` compile steps finished; `line` is the latest.
    fn compiled(&mut self, done: u64, estimate: u64, line: &str);
    /// The build finished (or failed): clear any live display.
    fn finish(&mut self);
}

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Parallel make jobs.
    pub jobs: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            jobs: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        }
    }
}

/// Builds the guest kernel unless the cache already holds it; returns it.
pub fn build(
    opts: &BuildOptions,
    progress: &mut dyn BuildProgress,
) -> Result<BuiltKernel, KernelError> {
    let result = build_inner(opts, progress);
    progress.finish();
    result
}

fn build_inner(
    opts: &BuildOptions,
    progress: &mut dyn BuildProgress,
) -> Result<BuiltKernel, KernelError> {
    let requirements = parse_fragment(MICROVM_FRAGMENT)?;
    let root = kernel_cache_dir()?;
    if let Some(version) = installed_version(SOURCE_PACKAGE)? {
        if let Some(k) = built_in(&root.join(cache_key(MICROVM_FRAGMENT, &version)), &version) {
            return Ok(k);
        }
    }
    ensure_packages(BUILD_PACKAGES, &mut |m| progress.phase(m))?;
    let version = installed_version(SOURCE_PACKAGE)?.ok_or(KernelError::SourceNotInstalled)?;
    let key = cache_key(MICROVM_FRAGMENT, &version);
    fs::create_dir_all(&root).map_err(KernelError::io(format!("create {}", root.display())))?;

    // One build at a time per cache; whoever waited may find it done.
    let _lock = lock(&root.join(".lock"))?;
    if let Some(k) = built_in(&root.join(&key), &version) {
        return Ok(k);
    }

    let tree = source_tree(&root, &version, progress)?;
    progress.phase("configuring (tinyconfig + microvm.config + olddefconfig)");
    let fragment_path = tree.join("bulkhead-microvm.config");
    fs::write(&fragment_path, MICROVM_FRAGMENT).map_err(KernelError::io("write fragment"))?;
    run_quiet(Command::new("make").arg("tinyconfig").current_dir(&tree))?;
    run_quiet(
        Command::new("scripts/kconfig/merge_config.sh")
            .args(["-m", ".config", "bulkhead-microvm.config"])
            .current_dir(&tree),
    )?;
    run_quiet(Command::new("make").arg("olddefconfig").current_dir(&tree))?;
    let config_text =
        fs::read_to_string(tree.join(".config")).map_err(KernelError::io("read .config"))?;
    let dropped = check(&requirements, &parse_dot_config(&config_text));
    if !dropped.is_empty() {
        return Err(KernelError::SymbolsDropped(dropped));
    }

    compile(&tree, opts.jobs, progress)?;
    publish(&root, &key, &tree, &version)
}

/// The extracted source for `version`, kept between builds so that a fragment
/// change recompiles only what it touches.
fn source_tree(
    root: &Path,
    version: &str,
    progress: &mut dyn BuildProgress,
) -> Result<PathBuf, KernelError> {
    let dir = root.join("src").join(version);
    let tree = dir.join(SOURCE_PACKAGE);
    if tree.join("Makefile").is_file() {
        return Ok(tree);
    }
    progress.phase(&format!("extracting {SOURCE_PACKAGE} {version}"));
    let tmp = root
        .join("src")
        .join(format!(".{version}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(KernelError::io(format!("create {}", tmp.display())))?;
    let tarball = format!("/usr/src/{SOURCE_PACKAGE}.tar.xz");
    run_quiet(Command::new("tar").args(["-xf", &tarball, "-C"]).arg(&tmp))?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir).map_err(KernelError::io(format!(
        "move source into {}",
        dir.display()
    )))?;
    Ok(tree)
}

fn compile(tree: &Path, jobs: usize, progress: &mut dyn BuildProgress) -> Result<(), KernelError> {
    let count_file = tree.join(".bulkhead-object-count");
    let estimate = fs::read_to_string(&count_file)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(DEFAULT_OBJECT_ESTIMATE);
    progress.phase(&format!("compiling vmlinux with {jobs} jobs"));
    let mut child = Command::new("nice")
        .args(["-n", "10", "make", &format!("-j{jobs}"), "vmlinux"])
        .current_dir(tree)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(KernelError::io("run make"))?;
    // Keep stderr (warnings, errors) for the report; read it on its own thread
    // so neither pipe fills up and stalls make.
    let stderr = child
        .stderr
        .take()
        .map(|e| std::thread::spawn(move || std::io::read_to_string(e).unwrap_or_default()));
    let mut done = 0u64;
    let mut recent = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if is_build_step(&line) {
                done += 1;
                progress.compiled(done, estimate.max(done), line.trim());
            }
            recent.push(line);
            if recent.len() > 40 {
                recent.remove(0);
            }
        }
    }
    let status = child.wait().map_err(KernelError::io("wait for make"))?;
    let err_text = stderr.and_then(|h| h.join().ok()).unwrap_or_default();
    if !status.success() {
        return Err(KernelError::Command {
            command: format!("make -j{jobs} vmlinux (in {})", tree.display()),
            status: status.to_string(),
            tail: format!("{}\n{}", recent.join("\n"), tail_lines(&err_text, 30)),
        });
    }
    if done > 100 {
        let _ = fs::write(&count_file, done.to_string());
    }
    Ok(())
}

fn is_build_step(line: &str) -> bool {
    let word = line.split_whitespace().next().unwrap_or("");
    matches!(
        word,
        "CC" | "AS"
            | "LD"
            | "AR"
            | "HOSTCC"
            | "HOSTLD"
            | "GEN"
            | "CHK"
            | "UPD"
            | "OBJCOPY"
            | "SYSHDR"
            | "SYSTBL"
            | "WRAP"
    )
}

/// Copies vmlinux and .config into `<root>/<key>/` via a temp dir and rename,
/// so a crash never leaves a half-published kernel.
fn publish(root: &Path, key: &str, tree: &Path, version: &str) -> Result<BuiltKernel, KernelError> {
    let tmp = root.join(format!(".{key}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(KernelError::io(format!("create {}", tmp.display())))?;
    for (from, to) in [("vmlinux", "vmlinux"), (".config", ".config")] {
        fs::copy(tree.join(from), tmp.join(to)).map_err(KernelError::io(format!("copy {from}")))?;
    }
    fs::write(
        tmp.join("source-version"),
        format!("{SOURCE_PACKAGE} {version}\n"),
    )
    .map_err(KernelError::io("write source-version"))?;
    let dest = root.join(key);
    fs::rename(&tmp, &dest).map_err(KernelError::io(format!("publish {}", dest.display())))?;
    built_in(&dest, version).ok_or_else(|| KernelError::Io {
        what: format!("publish {}", dest.display()),
        source: std::io::Error::other("vmlinux missing after publish"),
    })
}

fn run_quiet(cmd: &mut Command) -> Result<(), KernelError> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(KernelError::io(format!("run {shown}")))?;
    if out.status.success() {
        return Ok(());
    }
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Err(KernelError::Command {
        command: shown,
        status: out.status.to_string(),
        tail: tail_lines(&text, 30),
    })
}

/// An exclusive `flock` held until dropped.
fn lock(path: &Path) -> Result<nix::fcntl::Flock<fs::File>, KernelError> {
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(KernelError::io(format!("open {}", path.display())))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
        KernelError::Io {
            what: format!("lock {}", path.display()),
            source: e.into(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_kbuild_steps_only() {
        assert!(is_build_step("  CC      kernel/fork.o"));
        assert!(is_build_step("  LD      vmlinux.o"));
        assert!(!is_build_step("make[1]: Entering directory"));
        assert!(!is_build_step(""));
        assert!(!is_build_step("scripts/kconfig/conf  --syncconfig Kconfig"));
    }
}
