//! The test host: run a command where `/dev/kvm` boots real Linux guests.
//!
//! ```no_run
//! # fn main() -> Result<(), bulkhead_tests::testhost::TestHostError> {
//! use bulkhead_tests::testhost::TestHost;
//! let out = TestHost::new()?.run(&["sh", "-c", "test -c /dev/kvm && echo KVM-OK"])?;
//! assert_eq!(out.stdout_str(), "KVM-OK\n");
//! # Ok(()) }
//! ```
//!
//! On a host with VT-x/AMD-V the command runs directly ([`Mode::Direct`]).
//! Elsewhere (`kvm_pvm`, no /dev/kvm) it runs inside QEMU in software
//! emulation with an emulated AMD CPU ([`Mode::Nested`]): Debian's cloud
//! kernel, `kvm-amd` loaded, the workspace's binaries in `/usr/local/bin`,
//! the guest kernel at [`GUEST_KERNEL_PATH`], staged files at their paths.
//! stdout and stderr travel on their own virtio-serial ports, apart from the
//! kernel console; the exit status comes back on a control port.

mod assets;
mod direct;
mod nested;
mod payload;
pub(crate) mod pump;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use payload::WorkspaceBinaries;

/// Where the nested test host holds the guest kernel (also `$BULKHEAD_KERNEL`
/// inside, in both modes).
pub const GUEST_KERNEL_PATH: &str = "/usr/share/bulkhead/vmlinux";

/// Where the workspace's binaries are inside the nested test host.
pub const BINARIES_DIR: &str = "/usr/local/bin";

/// Gets everything the nested test host needs ready (QEMU new enough, the
/// cloud kernel, the base initramfs), installing and downloading as needed.
pub fn prepare_nested() -> Result<(), TestHostError> {
    assets::prepare(&mut |m| eprintln!("testhost: {m}")).map(|_| ())
}

/// Debian's stock cloud kernel (bzImage) the nested test host boots on:
/// also a guest kernel for tests that need a distribution kernel.
pub fn stock_kernel() -> Result<PathBuf, TestHostError> {
    Ok(assets::prepare(&mut |m| eprintln!("testhost: {m}"))?.kernel)
}

/// How the command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On this host, which has hardware virtualization.
    Direct,
    /// In the QEMU-emulated test host.
    Nested,
}

impl Mode {
    /// Direct where `/dev/kvm` is hardware-backed, nested otherwise.
    /// `BULKHEAD_TESTHOST_MODE=direct|nested` overrides (for tests of the
    /// test host itself).
    pub fn detect() -> Result<Self, TestHostError> {
        match std::env::var("BULKHEAD_TESTHOST_MODE").ok().as_deref() {
            Some("direct") => return Ok(Mode::Direct),
            Some("nested") => return Ok(Mode::Nested),
            Some("") | Some("auto") | None => {}
            Some(other) => {
                return Err(TestHostError::Usage(format!(
                    "BULKHEAD_TESTHOST_MODE={other:?}: use direct, nested or auto"
                )))
            }
        }
        Ok(match bulkhead_vmm::host::detect() {
            bulkhead_vmm::host::KvmKind::Hardware => Mode::Direct,
            _ => Mode::Nested,
        })
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Direct => "direct (hardware KVM)",
            Mode::Nested => "nested test host (QEMU TCG, emulated AMD SVM)",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TestHostError {
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{binary} is older than {source_file}, which it is built from: rebuild it (`make build`) before using the test host")]
    StaleBinary {
        binary: PathBuf,
        source_file: PathBuf,
    },
    #[error("the test host ended without reporting an exit status{}\n--- console (last lines) ---\n{console}", .reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default())]
    NoStatus {
        reason: Option<String>,
        console: String,
    },
    #[error("the command timed out after {:?} in the test host\n--- its output (last lines) ---\n{output}\n--- console (last lines) ---\n{console}", .after)]
    Timeout {
        after: Duration,
        output: String,
        console: String,
    },
    #[error("collect {guest}: {why}")]
    Collect { guest: String, why: String },
    /// The emulated machine itself failed (QEMU's nested SVM emulation, not
    /// the command): worth booting it again.
    #[error("the nested test host broke down{}: {why} (a flaw of QEMU's emulation, not of the command)\n--- console (last lines) ---\n{console}", if *.boots > 1 { format!(" in each of {} boots", .boots) } else { String::new() })]
    BrokeDown {
        why: String,
        console: String,
        boots: u32,
    },
}

impl TestHostError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Exit code for the CLI: 124 for a timeout (like timeout(1)), else 125.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Timeout { .. } => 124,
            _ => 125,
        }
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct Output {
    /// The command's exit status, 0-255 (128+N when killed by signal N).
    pub status: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Kernel console of the nested test host (empty in direct mode).
    pub console: String,
    pub mode: Mode,
    /// Wall time of the whole run (boot included when nested).
    pub elapsed: Duration,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// A file or directory to place in the test host before the command runs.
#[derive(Debug, Clone)]
pub struct Stage {
    pub src: PathBuf,
    pub dst: String,
}

/// A path to copy out of the test host after the command ran.
#[derive(Debug, Clone)]
pub struct Collect {
    pub guest: String,
    pub host: PathBuf,
}

/// One run's settings; build with the methods, then [`TestHost::run`].
#[derive(Debug, Clone)]
pub struct TestHost {
    mode: Mode,
    stages: Vec<Stage>,
    collects: Vec<Collect>,
    env: Vec<(String, String)>,
    stdin: Vec<u8>,
    timeout: Duration,
    memory_mib: u32,
    cpus: u32,
    attempts: u32,
    frozen_after: Duration,
    binaries: WorkspaceBinaries,
}

/// vCPUs of the nested test host. More than a nested guest's vCPUs (2 in the
/// tests) plus one for the VMM's own threads, so no guest vCPU spinning on
/// another (IPIs, spinlocks) has to wait for the emulated machine to preempt
/// it: QEMU's emulated SVM sometimes stops delivering interrupts while a
/// nested guest spins, which froze 1-CPU test hosts in most boots of eight
/// 2-vCPU guests; with 3 CPUs, 28 boots in a row passed. Idle vCPUs cost
/// the host nothing.
pub const DEFAULT_CPUS: u32 = 3;

/// Boots of the nested test host per run when it breaks down (freezes or
/// panics: [`TestHostError::BrokeDown`]) rather than the command failing.
pub const DEFAULT_ATTEMPTS: u32 = 3;

impl TestHost {
    /// Settings for this machine: the mode is detected, the workspace
    /// binaries come from the target dir this crate was built into.
    pub fn new() -> Result<Self, TestHostError> {
        Ok(Self {
            mode: Mode::detect()?,
            stages: Vec::new(),
            collects: Vec::new(),
            env: Vec::new(),
            stdin: Vec::new(),
            timeout: Duration::from_secs(300),
            memory_mib: 2048,
            cpus: DEFAULT_CPUS,
            attempts: DEFAULT_ATTEMPTS,
            frozen_after: nested::FROZEN_AFTER,
            binaries: WorkspaceBinaries::from_env(),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Forces a mode (the test host's own tests run both).
    pub fn with_mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// Places `src` (file or directory, symlinks followed) at absolute `dst`.
    pub fn stage(mut self, src: impl AsRef<Path>, dst: impl Into<String>) -> Self {
        self.stages.push(Stage {
            src: src.as_ref().to_path_buf(),
            dst: dst.into(),
        });
        self
    }

    /// Copies `guest` (file or directory) to `host` after the command ran.
    pub fn collect(mut self, guest: impl Into<String>, host: impl AsRef<Path>) -> Self {
        self.collects.push(Collect {
            guest: guest.into(),
            host: host.as_ref().to_path_buf(),
        });
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The command's stdin (default: empty).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = bytes.into();
        self
    }

    /// Wall-clock limit for the whole run (default 300 s).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// Memory of the nested test host in MiB (default 2048).
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// vCPUs of the nested test host (default [`DEFAULT_CPUS`]).
    pub fn cpus(mut self, n: u32) -> Self {
        self.cpus = n.max(1);
        self
    }

    /// How many times to boot the nested test host when it breaks down
    /// (default [`DEFAULT_ATTEMPTS`]); a failing command is never retried.
    pub fn attempts(mut self, n: u32) -> Self {
        self.attempts = n.max(1);
        self
    }

    /// How long the nested test host may go without a heartbeat before it
    /// counts as frozen (default [`nested::FROZEN_AFTER`]).
    pub fn frozen_after(mut self, silence: Duration) -> Self {
        self.frozen_after = silence;
        self
    }

    /// Where the workspace binaries come from (default: this build's target dir).
    pub fn binaries(mut self, binaries: WorkspaceBinaries) -> Self {
        self.binaries = binaries;
        self
    }

    /// Runs `argv` and returns everything it produced.
    pub fn run(&self, argv: &[&str]) -> Result<Output, TestHostError> {
        self.run_streaming(argv, &mut |_, _| {})
    }

    /// Runs `argv`, handing output chunks to `sink` as they arrive (and
    /// still returning them all in the [`Output`]).
    pub fn run_streaming(
        &self,
        argv: &[&str],
        sink: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<Output, TestHostError> {
        self.validate(argv)?;
        match self.mode {
            Mode::Direct => direct::run(self, argv, sink),
            Mode::Nested => {
                let mut attempt = 1;
                loop {
                    match nested::run(self, argv, sink) {
                        Err(e @ TestHostError::BrokeDown { .. }) if attempt < self.attempts => {
                            attempt += 1;
                            eprintln!("testhost: {e}\ntesthost: booting it again (attempt {attempt} of {})", self.attempts);
                        }
                        Err(TestHostError::BrokeDown { why, console, .. }) => {
                            return Err(TestHostError::BrokeDown {
                                why,
                                console,
                                boots: attempt,
                            })
                        }
                        result => return result,
                    }
                }
            }
        }
    }

    fn validate(&self, argv: &[&str]) -> Result<(), TestHostError> {
        if argv.is_empty() {
            return Err(TestHostError::Usage("no command given".into()));
        }
        for s in &self.stages {
            check_guest_path("stage destination", &s.dst)?;
            if !s.src.exists() {
                return Err(TestHostError::Usage(format!(
                    "stage source {} does not exist",
                    s.src.display()
                )));
            }
        }
        for c in &self.collects {
            check_guest_path("collect path", &c.guest)?;
        }
        for (k, _) in &self.env {
            if k.is_empty()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                || k.as_bytes()[0].is_ascii_digit()
            {
                return Err(TestHostError::Usage(format!(
                    "environment name {k:?} is not a shell variable name"
                )));
            }
        }
        Ok(())
    }
}

/// Guest paths are absolute, without `..`, newlines or NULs.
fn check_guest_path(what: &str, p: &str) -> Result<(), TestHostError> {
    let bad = !p.starts_with('/')
        || p == "/"
        || p.contains('\n')
        || p.contains('\0')
        || p.split('/').any(|c| c == "..");
    if bad {
        return Err(TestHostError::Usage(format!(
            "{what} {p:?} must be an absolute path other than / without `..` or newlines"
        )));
    }
    Ok(())
}

/// Quotes a word for a POSIX shell.
pub(crate) fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_must_be_absolute_and_plain() {
        for ok in ["/a", "/usr/local/bin/x", "/a b/c"] {
            assert!(check_guest_path("p", ok).is_ok(), "{ok}");
        }
        for bad in ["", "/", "a/b", "/a/../b", "/a\nb", "/a\0"] {
            assert!(check_guest_path("p", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shell_quote_survives_quotes_and_specials() {
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME;`x`"), "'$HOME;`x`'");
    }

    #[test]
    fn env_names_are_checked() {
        let th = TestHost::new().unwrap().env("1BAD", "x");
        assert!(matches!(th.run(&["true"]), Err(TestHostError::Usage(_))));
        let th = TestHost::new().unwrap().env("A=B", "x");
        assert!(matches!(th.run(&["true"]), Err(TestHostError::Usage(_))));
    }
}
