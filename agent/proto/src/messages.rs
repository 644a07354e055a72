//! Control messages, JSON inside control frames. Unknown fields and
//! unknown message types are errors (`deny_unknown_fields`): the two sides
//! ship together, and a peer sending what we do not know is broken or
//! hostile. Sizes are bounded by the frame limit; [`ProcessSpec::validate`]
//! bounds the rest.

use serde::{Deserialize, Serialize};

/// Host -> agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToAgent {
    /// Set up the container (root, network, hostname) and start its main
    /// process as `process` (host-chosen id). Only once.
    Start {
        id: u64,
        process: u32,
        spec: Box<StartRequest>,
    },
    /// Start another process in the running container.
    Exec {
        id: u64,
        process: u32,
        spec: ProcessSpec,
    },
    /// Send `signal` to a process.
    Signal { id: u64, process: u32, signal: i32 },
    /// Resize a TTY-mode process's terminal.
    Resize {
        id: u64,
        process: u32,
        rows: u16,
        cols: u16,
    },
    /// Copy files out of or into the running container (`bulkhead cp`): a
    /// process of the agent's own, whose stdout (out) or stdin (in) carries
    /// a [`CopyHeader`] line and a tar stream; it ends with `Exited` like
    /// any other (code 0, or 1 with the reason on stderr).
    Copy {
        id: u64,
        process: u32,
        spec: CopySpec,
    },
    /// The host has the exit report of `process`.
    AckExit { process: u32 },
    /// Stop everything and power off.
    Shutdown { id: u64 },
}

/// Agent -> host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum FromAgent {
    /// First message on every connection.
    Hello(Hello),
    /// The outcome of request `id`.
    Reply {
        id: u64,
        result: Result<(), AgentError>,
    },
    /// A process ended; sent exactly once per started process, after its
    /// output streams are closed.
    Exited { process: u32, status: ExitStatus },
    /// The agent could not go on (a protocol error on its side); it closes
    /// the connection after this.
    Fatal { message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    pub protocol: u32,
    pub agent_version: String,
    /// Microseconds from the kernel handing over to the agent (boot clock)
    /// to the agent connected, if the agent could tell.
    pub boot_to_connected_us: Option<u64>,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{kind:?}: {message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The program was not found (a CLI maps this to 127).
    NotFound,
    /// The program exists but cannot be executed (126).
    NotExecutable,
    /// The request itself is wrong (bad field, unknown process, second start).
    InvalidRequest,
    /// Setting up failed (mount, user lookup, network, ...).
    Failed,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The container and its main process.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartRequest {
    pub process: ProcessSpec,
    pub root: RootSpec,
    pub hostname: Option<String>,
    /// Extra /etc/hosts lines besides localhost and the hostname.
    pub hosts: Vec<HostEntry>,
    pub dns: DnsSpec,
    pub network: Option<NetworkSpec>,
    /// How long the agent waits for the host to acknowledge the main
    /// process's exit before powering off anyway (ms; 0 = default 5000).
    pub exit_ack_timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessSpec {
    /// argv; `args[0]` is looked up in the process's PATH.
    pub args: Vec<String>,
    /// `KEY=value` entries; PATH defaults to the usual one when absent.
    pub env: Vec<String>,
    /// Working directory (absolute) [default: /].
    pub cwd: Option<String>,
    /// `uid[:gid]` or `name[:group]`, names from the image's /etc/passwd
    /// and /etc/group [default: 0:0].
    pub user: Option<String>,
    /// Supplementary group ids on top of the user's groups in /etc/group.
    pub additional_gids: Vec<u32>,
    pub rlimits: Vec<Rlimit>,
    /// Run on a pseudo-terminal (stdout carries both output streams).
    pub tty: bool,
    /// Initial terminal size in TTY mode.
    pub tty_size: Option<(u16, u16)>,
    /// The host will send stdin; without it stdin is /dev/null.
    pub stdin: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    pub resource: RlimitResource,
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RlimitResource {
    RlimitNofile,
    RlimitNproc,
    RlimitCore,
    RlimitStack,
    RlimitFsize,
    RlimitAs,
    RlimitMemlock,
    RlimitCpu,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RootSpec {
    /// Where the image's root filesystem is.
    pub source: RootSource,
    /// A read-write block device for the overlay's upper layer (formatted
    /// ext4); tmpfs when absent.
    pub scratch: Option<String>,
    /// Disks mounted inside the root once it is entered (named volumes).
    pub volumes: Vec<VolumeSpec>,
    /// tmpfs mounted inside the root (`--tmpfs`).
    pub tmpfs: Vec<TmpfsSpec>,
    /// The root read-only once it is set up (`--read-only`): writes go to
    /// tmpfs (/run, /tmp, [`RootSpec::tmpfs`]) and volumes only.
    pub read_only: bool,
}

/// A tmpfs at `target` inside the root, of `size_bytes` at most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmpfsSpec {
    /// Absolute, without `.` or `..`, not `/`.
    pub target: String,
    pub size_bytes: u64,
    /// Permission bits of its root (at most 0o7777).
    pub mode: u32,
    pub noexec: bool,
}

/// A named volume: an ext4 disk mounted at `target` inside the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    /// `/dev/vdb` .. `/dev/vdz` (the root disk is `/dev/vda`).
    pub device: String,
    /// Absolute, without `.` or `..`, not `/`.
    pub target: String,
    pub read_only: bool,
}

/// A mount's path inside the root: absolute, no `.`/`..`/NUL, not `/`.
fn check_target(target: &str) -> Result<(), String> {
    let parts: Vec<&str> = target.split('/').filter(|p| !p.is_empty()).collect();
    if !target.starts_with('/')
        || target.contains('\0')
        || parts.is_empty()
        || parts.iter().any(|p| *p == "." || *p == "..")
    {
        return Err(format!(
            "target {target:?}: absolute, without . or .., not /"
        ));
    }
    Ok(())
}

/// Most volumes (and tmpfs) a workload mounts.
pub const MAX_VOLUMES: usize = 16;

impl RootSpec {
    /// Checks the volumes: a data disk each (never the root's), each once,
    /// at most [`MAX_VOLUMES`], targets absolute without `.`/`..`/NUL and
    /// never `/`.
    pub fn validate(&self) -> Result<(), String> {
        if self.volumes.len() > MAX_VOLUMES || self.tmpfs.len() > MAX_VOLUMES {
            return Err(format!("more than {MAX_VOLUMES} volumes or tmpfs"));
        }
        for t in &self.tmpfs {
            check_target(&t.target).map_err(|e| format!("tmpfs {e}"))?;
            if t.mode > 0o7777 || t.size_bytes == 0 {
                return Err(format!(
                    "tmpfs at {:?}: mode at most 07777, a size above 0",
                    t.target
                ));
            }
        }
        for (i, v) in self.volumes.iter().enumerate() {
            let letter = v.device.strip_prefix("/dev/vd").unwrap_or_default();
            if letter.len() != 1 || !matches!(letter.as_bytes()[0], b'b'..=b'z') {
                return Err(format!(
                    "volume device {:?}: /dev/vdb to /dev/vdz",
                    v.device
                ));
            }
            check_target(&v.target).map_err(|e| format!("volume {e}"))?;
            if self.volumes[..i].iter().any(|o| o.device == v.device) {
                return Err(format!("volume device {:?} given twice", v.device));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RootSource {
    /// A block device (virtio-blk) with an ext4 or erofs filesystem,
    /// mounted read-only.
    Block { device: String, fstype: String },
    /// A directory already visible to the agent, bound read-only (the
    /// namespace-based tests, where the agent runs on a host).
    Directory { path: String },
}

impl Default for RootSource {
    fn default() -> Self {
        RootSource::Block {
            device: "/dev/vda".into(),
            fstype: "ext4".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub address: String,
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSpec {
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub interface: String,
    /// IPv4 address and prefix length, e.g. 10.0.0.2/24.
    pub address: String,
    pub gateway: Option<String>,
    pub mtu: Option<u32>,
}

/// Which way a copy goes, seen from the workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyDirection {
    /// From the workload to the host: the workload sends.
    Out,
    /// From the host into the workload: the workload receives.
    In,
}

/// One end of `bulkhead cp` inside a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopySpec {
    pub direction: CopyDirection,
    /// The path in the workload, absolute, as the user wrote it: a trailing
    /// `/.` (copy a directory's contents) and `/` (must be a directory)
    /// keep docker's meaning.
    pub path: String,
    /// Out: follow the path if it is a symlink (`-L`).
    pub follow_link: bool,
    /// In: keep the owners the stream carries (`-a`); else everything
    /// belongs to the workload's root.
    pub keep_owners: bool,
}

/// Longest path a copy names.
pub const MAX_COPY_PATH: usize = 4096;

impl CopySpec {
    /// An absolute path without NUL bytes, of at most [`MAX_COPY_PATH`].
    pub fn validate(&self) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.contains('\0') {
            return Err(format!(
                "copy path {:?}: absolute, without NUL bytes",
                self.path
            ));
        }
        if self.path.len() > MAX_COPY_PATH {
            return Err(format!("copy path longer than {MAX_COPY_PATH} bytes"));
        }
        Ok(())
    }
}

/// The first line of every copy stream (JSON, then `\n`, then a tar):
/// what the tree's top entry is, so the receiving end can place it as
/// `docker cp` does. The stream's entries all sit under `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyHeader {
    /// One path component (no `/`, not `.` or `..`); empty for a bare tar
    /// (`cp - NAME:DIR`) whose entries land in the directory as they are.
    pub name: String,
    pub dir: bool,
    /// The source ended in `/.`: its contents, not the directory itself.
    pub contents_only: bool,
}

/// Longest [`CopyHeader`] line accepted, newline included.
pub const MAX_COPY_HEADER: usize = 1024;

impl CopyHeader {
    /// Reads and checks the header line (one byte at a time: the tar that
    /// follows is not consumed).
    pub fn read_from(r: &mut impl std::io::Read) -> Result<Self, String> {
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        loop {
            match r.read(&mut b) {
                Ok(0) => return Err("the copy stream ended before its header".into()),
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) => line.push(b[0]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(format!("reading the copy header: {e}")),
            }
            if line.len() >= MAX_COPY_HEADER {
                return Err(format!("copy header longer than {MAX_COPY_HEADER} bytes"));
            }
        }
        let h: CopyHeader =
            serde_json::from_slice(&line).map_err(|e| format!("bad copy header: {e}"))?;
        h.validate()?;
        Ok(h)
    }

    /// The header line, newline included.
    pub fn to_line(&self) -> Vec<u8> {
        let mut v = encode(self);
        v.push(b'\n');
        v
    }

    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.contains('/') || n.contains('\0') || n == "." || n == ".." || n.len() > 255 {
            return Err(format!("copy header: bad name {n:?}"));
        }
        if n.is_empty() && !(self.dir && self.contents_only) {
            return Err("copy header: an unnamed stream must be a directory's contents".into());
        }
        Ok(())
    }
}

/// Most argv/env entries, groups, rlimits and hosts a request may carry.
pub const MAX_LIST: usize = 4096;

impl ProcessSpec {
    /// Checks what serde cannot: a non-empty argv, no NUL bytes anywhere,
    /// `KEY=value` env, an absolute cwd, bounded list sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.args.is_empty() {
            return Err("args is empty".into());
        }
        if self.args.len() > MAX_LIST
            || self.env.len() > MAX_LIST
            || self.additional_gids.len() > MAX_LIST
            || self.rlimits.len() > 64
        {
            return Err("too many args, env entries, groups or rlimits".into());
        }
        let strings = self
            .args
            .iter()
            .chain(&self.env)
            .chain(self.cwd.iter())
            .chain(self.user.iter());
        if strings.clone().any(|s| s.contains('\0')) {
            return Err("a string contains a NUL byte".into());
        }
        if let Some(bad) = self
            .env
            .iter()
            .find(|e| e.split_once('=').is_none_or(|(k, _)| k.is_empty()))
        {
            return Err(format!("env entry {bad:?} is not KEY=value"));
        }
        if let Some(cwd) = &self.cwd {
            if !cwd.starts_with('/') {
                return Err(format!("cwd {cwd:?} is not absolute"));
            }
        }
        if let Some(r) = self.rlimits.iter().find(|r| r.soft > r.hard) {
            return Err(format!("{:?}: soft limit above hard limit", r.resource));
        }
        Ok(())
    }
}

impl ToAgent {
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

impl FromAgent {
    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// Serializes a control message (infallible for these types).
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg)
        .unwrap_or_else(|e| format!(r#"{{"type":"fatal","message":"encode: {e}"}}"#).into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_headers_round_trip_and_refuse_junk() {
        let h = CopyHeader {
            name: "data".into(),
            dir: true,
            contents_only: false,
        };
        let mut line = h.to_line();
        line.extend_from_slice(b"tar bytes");
        let mut r = &line[..];
        assert_eq!(CopyHeader::read_from(&mut r), Ok(h));
        assert_eq!(r, b"tar bytes", "the tar after the header is not consumed");
        for bad in [
            &b""[..],
            b"{\"name\":\"a\",\"dir\":true,\"contents_only\":false}",
            b"not json\n",
            b"{\"name\":\"../x\",\"dir\":true,\"contents_only\":false}\n",
            b"{\"name\":\"..\",\"dir\":true,\"contents_only\":false}\n",
            b"{\"name\":\"\",\"dir\":false,\"contents_only\":false}\n",
            b"{\"name\":\"a\",\"dir\":true,\"contents_only\":false,\"x\":1}\n",
        ] {
            assert!(
                CopyHeader::read_from(&mut &bad[..]).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
        let long = vec![b' '; MAX_COPY_HEADER + 10];
        assert!(CopyHeader::read_from(&mut &long[..]).is_err());
        let spec = |path: &str| CopySpec {
            direction: CopyDirection::Out,
            path: path.into(),
            follow_link: false,
            keep_owners: false,
        };
        assert!(spec("/a/b").validate().is_ok());
        for bad in ["a/b", "", "/a\0b"] {
            assert!(spec(bad).validate().is_err(), "{bad:?} accepted");
        }
        assert!(spec(&format!("/{}", "a".repeat(MAX_COPY_PATH)))
            .validate()
            .is_err());
    }

    #[test]
    fn root_specs_refuse_bad_volumes() {
        let vol = |device: &str, target: &str| VolumeSpec {
            device: device.into(),
            target: target.into(),
            read_only: false,
        };
        let spec = |volumes: Vec<VolumeSpec>| RootSpec {
            volumes,
            ..RootSpec::default()
        };
        assert_eq!(
            spec(vec![vol("/dev/vdb", "/data"), vol("/dev/vdc", "/a/b")]).validate(),
            Ok(())
        );
        for bad in [
            vec![vol("/dev/vda", "/data")],
            vec![vol("/dev/sda", "/data")],
            vec![vol("/dev/vdbb", "/data")],
            vec![vol("/dev/vd", "/data")],
            vec![vol("/dev/vdB", "/data")],
            vec![vol("/dev/vdb", "data")],
            vec![vol("/dev/vdb", "/")],
            vec![vol("/dev/vdb", "//")],
            vec![vol("/dev/vdb", "/a/../b")],
            vec![vol("/dev/vdb", "/a/./b")],
            vec![vol("/dev/vdb", "/a\0b")],
            vec![vol("/dev/vdb", "/a"), vol("/dev/vdb", "/b")],
            (0..17)
                .map(|i| vol(&format!("/dev/vd{}", char::from(b'b' + i)), "/x"))
                .collect(),
        ] {
            assert!(spec(bad.clone()).validate().is_err(), "{bad:?} accepted");
        }
        let tmp = |target: &str, mode: u32, size_bytes: u64| RootSpec {
            tmpfs: vec![TmpfsSpec {
                target: target.into(),
                size_bytes,
                mode,
                noexec: false,
            }],
            ..RootSpec::default()
        };
        assert_eq!(tmp("/scratch", 0o1777, 1 << 20).validate(), Ok(()));
        for bad in [
            tmp("/", 0o755, 1),
            tmp("x", 0o755, 1),
            tmp("/a/../b", 0o755, 1),
            tmp("/t", 0o10000, 1),
            tmp("/t", 0o755, 0),
        ] {
            assert!(bad.validate().is_err(), "{bad:?} accepted");
        }
        // Unknown fields are refused, a missing list is empty.
        assert!(serde_json::from_str::<VolumeSpec>(
            r#"{"device":"/dev/vdb","target":"/a","read_only":false,"x":1}"#
        )
        .is_err());
        let r: RootSpec = serde_json::from_str("{}").unwrap_or_default();
        assert!(r.volumes.is_empty());
    }

    #[test]
    fn messages_round_trip() {
        let msgs = vec![
            ToAgent::Start {
                id: 1,
                process: 1,
                spec: Box::new(StartRequest {
                    process: ProcessSpec {
                        args: vec!["echo".into(), "hi".into()],
                        ..Default::default()
                    },
                    ..Default::default()
                }),
            },
            ToAgent::Signal {
                id: 2,
                process: 1,
                signal: 15,
            },
            ToAgent::AckExit { process: 1 },
        ];
        for m in msgs {
            assert_eq!(ToAgent::decode(&encode(&m)).unwrap(), m);
        }
        let replies = vec![
            FromAgent::Reply {
                id: 3,
                result: Err(AgentError::new(ErrorKind::NotFound, "nope: not found")),
            },
            FromAgent::Reply {
                id: 4,
                result: Ok(()),
            },
            FromAgent::Exited {
                process: 1,
                status: ExitStatus::Signal(9),
            },
            FromAgent::Hello(Hello {
                protocol: 1,
                agent_version: "x".into(),
                boot_to_connected_us: Some(5),
            }),
        ];
        for m in replies {
            assert_eq!(FromAgent::decode(&encode(&m)).unwrap(), m);
        }
    }

    #[test]
    fn unknown_types_fields_and_junk_are_rejected() {
        for bad in [
            &br#"{"type":"format_disk","id":1}"#[..],
            br#"{"type":"signal","id":1,"process":1,"signal":15,"extra":true}"#,
            br#"{"type":"signal","id":-1,"process":1,"signal":15}"#,
            br#"{"type":"signal","id":1,"process":1}"#,
            br#"{"id":1}"#,
            br#"[1,2,3]"#,
            b"\xff\xfe",
            b"",
            br#"{"type":"start","id":1,"process":1,"spec":{"process":{"args":["a"],"uid":0}}}"#,
        ] {
            assert!(
                ToAgent::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [
            &br#"{"type":"exited","process":1,"status":{"code":1,"signal":2}}"#[..],
            br#"{"type":"reply","id":1,"result":{"Maybe":null}}"#,
        ] {
            assert!(
                FromAgent::decode(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn process_specs_are_validated() {
        let ok = ProcessSpec {
            args: vec!["sh".into()],
            env: vec!["A=b".into(), "EMPTY=".into()],
            cwd: Some("/tmp".into()),
            ..Default::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        let bad = [
            ProcessSpec::default(),
            ProcessSpec {
                args: vec!["a\0b".into()],
                ..ok.clone()
            },
            ProcessSpec {
                env: vec!["NOEQUALS".into()],
                ..ok.clone()
            },
            ProcessSpec {
                env: vec!["=v".into()],
                ..ok.clone()
            },
            ProcessSpec {
                cwd: Some("relative".into()),
                ..ok.clone()
            },
            ProcessSpec {
                args: vec!["x".into(); MAX_LIST + 1],
                ..ok.clone()
            },
            ProcessSpec {
                rlimits: vec![Rlimit {
                    resource: RlimitResource::RlimitNofile,
                    soft: 2,
                    hard: 1,
                }],
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }
}
