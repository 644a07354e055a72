//! The host side of networking: bridges, TAPs, veth pairs, network
//! namespaces, sysctls (iproute2's `ip`), published-port sockets and the
//! nftables script (`nft`). Every step is idempotent where it can be, so a
//! retry or a sweep after a crash converges.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{Attachment, NetError, Network, Proto, Publish};

// sockaddr_in's family and size as the C types bind takes (both are small
// constants: checked when this compiles).
const AF_INET: libc::sa_family_t = 2;
const _: () = assert!(libc::AF_INET == AF_INET as i32);
const SOCKADDR_IN_LEN: libc::socklen_t = 16;
const _: () = assert!(std::mem::size_of::<libc::sockaddr_in>() == SOCKADDR_IN_LEN as usize);

/// `name` from PATH, then the sbin dirs (root's PATH may lack them).
pub(super) fn tool(name: &str, package: &str) -> Result<std::path::PathBuf, NetError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs =
        std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(std::path::PathBuf::from));
    match dirs.map(|d| d.join(name)).find(|p| p.is_file()) {
        Some(p) => Ok(p),
        None => Err(NetError::host(
            format!("workload networking needs `{name}`"),
            format!("not installed (apt-get install {package})"),
        )),
    }
}

/// Runs `prog` with `stdin`, inside the network namespace `netns` if given;
/// an error carries its stderr.
pub(super) fn run(
    prog: &Path,
    args: &[&str],
    stdin: &[u8],
    netns: Option<&OwnedFd>,
) -> Result<(), NetError> {
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(ns) = netns {
        let fd = ns.as_raw_fd();
        // SAFETY: setns is async-signal-safe and touches no memory of ours; the fd stays open until the child has exec'd.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
    }
    let what = format!("{} {}", prog.display(), args.join(" "));
    let mut child = cmd.spawn().map_err(|e| NetError::host(&what, e))?;
    if let Some(mut i) = child.stdin.take() {
        i.write_all(stdin).map_err(|e| NetError::host(&what, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::host(&what, e))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(NetError::host(
            what,
            if err.is_empty() {
                out.status.to_string()
            } else {
                err
            },
        ))
    }
}

/// `ip -batch -`: one command per line, stopping at the first failure.
pub(super) fn ip_batch(lines: &[String], netns: Option<&OwnedFd>) -> Result<(), NetError> {
    let ip = tool("ip", "iproute2")?;
    run(&ip, &["-batch", "-"], lines.join("\n").as_bytes(), netns).map_err(|e| match e {
        NetError::Host { why, .. } => NetError::host(format!("ip: {}", lines.join("; ")), why),
        other => other,
    })
}

/// The interfaces of our network namespace. From /proc/self/net/dev, not
/// /sys/class/net: sysfs shows the namespace of whoever mounted it, which
/// differs when bulkhead runs in a namespace of its own (the tests do).
fn links() -> Vec<String> {
    let text = std::fs::read_to_string("/proc/self/net/dev").unwrap_or_default();
    text.lines()
        .skip(2)
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

/// Our network namespace's interfaces whose names start with one of `prefixes`.
pub fn links_named(prefixes: &[&str]) -> Vec<String> {
    links()
        .into_iter()
        .filter(|l| prefixes.iter().any(|p| l.starts_with(p)))
        .collect()
}

pub fn link_exists(name: &str) -> bool {
    links().iter().any(|l| l == name)
}

fn sysctl(path: &str, value: &str) -> Result<(), NetError> {
    std::fs::write(path, value).map_err(|e| NetError::host(format!("set {path} to {value}"), e))
}

/// The network's bridge, up, with the gateway address and no IPv6 (the
/// host answers workloads nothing over it, with or without our tables);
/// `route_localnet` so connections to 127.0.0.1 can be DNATed out of it.
/// Its fail-closed routing rule comes first (before a new bridge exists;
/// put back for one an older bulkhead made).
pub fn ensure_bridge(net: &Network) -> Result<(), NetError> {
    ensure_fail_closed(&[net.bridge.as_str()])?;
    ip_batch(&bridge_lines(net), None)?;
    bridge_sysctls(net)
}

/// The `ip -batch` lines that make the bridge as [`ensure_bridge`] says.
fn bridge_lines(net: &Network) -> Vec<String> {
    let b = &net.bridge;
    let mut lines = Vec::new();
    if !link_exists(b) {
        lines.push(format!("link add {b} type bridge"));
    }
    lines.push(format!(
        "address replace {}/{} dev {b}",
        net.gateway(),
        net.subnet.prefix
    ));
    // A fixed MAC: a bridge left to itself takes its lowest port's, so it
    // changes when that workload goes, and every other workload's ARP entry
    // for the gateway is wrong until it expires (~50 s without traffic out).
    lines.push(format!(
        "link set {b} address {}",
        crate::state::subnet::mac_for(net.gateway())
    ));
    lines.push(format!("link set {b} up"));
    lines
}

fn bridge_sysctls(net: &Network) -> Result<(), NetError> {
    let b = &net.bridge;
    let v6 = format!("/proc/sys/net/ipv6/conf/{b}/disable_ipv6");
    if Path::new(&v6).exists() {
        sysctl(&v6, "1")?;
    }
    sysctl(&format!("/proc/sys/net/ipv4/conf/{b}/route_localnet"), "1")
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Whether the host forwards IPv4 now.
pub fn forwarding_on() -> Result<bool, NetError> {
    let v = std::fs::read_to_string(IP_FORWARD)
        .map_err(|e| NetError::host(format!("read {IP_FORWARD}"), e))?;
    Ok(v.trim() == "1")
}

/// Turns IPv4 forwarding on (workloads' traffic is routed).
pub fn enable_forwarding() -> Result<(), NetError> {
    if forwarding_on()? {
        return Ok(());
    }
    sysctl(IP_FORWARD, "1")
}

/// The host's routing policy rules (`ip -j rule show`).
fn routing_rules() -> Result<Vec<serde_json::Value>, NetError> {
    let ip = tool("ip", "iproute2")?;
    let out = Command::new(&ip)
        .args(["-j", "-4", "rule", "show"])
        .output()
        .map_err(|e| NetError::host("ip -j -4 rule show", e))?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| NetError::host("ip -j -4 rule show", e))?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

fn is_ours(rule: &serde_json::Value, bridge: &str) -> bool {
    let mask = format!("{:#x}", super::egress::BRIDGE_MARK);
    rule["priority"] == 0
        && rule["iif"] == bridge
        && rule["action"] == "prohibit"
        && rule["fwmask"] == mask.as_str()
        && rule["fwmark"] == "0"
}

/// Fail closed: the host routes a packet that arrives on one of these
/// bridges (to itself or onward) only if our nftables rules marked it.
/// With our tables flushed (a firewall reload), workloads reach nothing:
/// not the host's services, not its loopback (`route_localnet`), not the
/// LAN. This needs our rule before the `local` table's, which the kernel
/// keeps at preference 0: that rule moves to 1 (first of all others still),
/// ours take 0. Returns what it added, for people.
pub fn ensure_fail_closed(bridges: &[&str]) -> Result<Vec<String>, NetError> {
    let missing = |rules: &[serde_json::Value]| {
        let mut lines = Vec::new();
        if rules
            .iter()
            .any(|r| r["priority"] == 0 && r["table"] == "local")
        {
            if !rules
                .iter()
                .any(|r| r["priority"] == 1 && r["table"] == "local")
            {
                lines.push("rule add pref 1 table local".to_string());
            }
            lines.push("rule del pref 0 table local".to_string());
        }
        for b in bridges {
            if !rules.iter().any(|r| is_ours(r, b)) {
                lines.push(format!(
                    "rule add pref 0 iif {b} fwmark 0/{:#x} prohibit",
                    super::egress::BRIDGE_MARK
                ));
            }
        }
        lines
    };
    let lines = missing(&routing_rules()?);
    if lines.is_empty() {
        return Ok(lines);
    }
    // Each line on its own (`-force`): another bulkhead on this host (a
    // second data dir) may be making the same change; what counts is that
    // nothing is missing afterwards.
    let ip = tool("ip", "iproute2")?;
    let tried = run(
        &ip,
        &["-force", "-batch", "-"],
        lines.join("\n").as_bytes(),
        None,
    );
    match (missing(&routing_rules()?).is_empty(), tried) {
        (true, _) => Ok(lines),
        (false, Err(e)) => Err(e),
        (false, Ok(())) => Err(NetError::host(
            format!("ip: {}", lines.join("; ")),
            "the rules are still missing afterwards",
        )),
    }
}

/// Removes a bridge and its routing rule.
pub fn delete_bridge(name: &str) -> Result<(), NetError> {
    delete_link(name)?;
    if routing_rules()?.iter().any(|r| is_ours(r, name)) {
        ip_batch(
            &[format!(
                "rule del pref 0 iif {name} fwmark 0/{:#x} prohibit",
                super::egress::BRIDGE_MARK
            )],
            None,
        )?;
    }
    Ok(())
}

/// Whether our inet table is in the kernel (a firewall reload that
/// flushes the ruleset takes it along).
pub fn tables_present(table: &str) -> bool {
    let Ok(nft) = tool("nft", "nftables") else {
        return false;
    };
    Command::new(&nft)
        .args(["list", "table", "inet", table])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Deletes an interface if it is there.
pub fn delete_link(name: &str) -> Result<(), NetError> {
    if !link_exists(name) {
        return Ok(());
    }
    match ip_batch(&[format!("link del {name}")], None) {
        Err(_) if !link_exists(name) => Ok(()), // gone meanwhile (its netns ended)
        other => other,
    }
}

/// A TAP for a microVM, opened the way the VMM's own `Tap::open` does
/// (vnet headers, no packet info), on its network's bridge (made or put
/// right as [`ensure_bridge`] does, in the same `ip` run) and up. Not
/// persistent: it disappears when the last fd (the VMM's) closes.
pub fn open_tap(net: &Network, name: &str) -> Result<OwnedFd, NetError> {
    let what = format!("create TAP {name}");
    ensure_fail_closed(&[net.bridge.as_str()])?;
    let tap = bulkhead_vmm::devices::virtio::net::tap::Tap::open(name)
        .map_err(|e| NetError::host(&what, e))?;
    let fd = std::os::fd::AsFd::as_fd(&tap)
        .try_clone_to_owned()
        .map_err(|e| NetError::host(&what, e))?;
    let mut lines = bridge_lines(net);
    lines.push(format!("link set {name} master {} up", net.bridge));
    ip_batch(&lines, None)?;
    bridge_sysctls(net)?;
    Ok(fd)
}

/// A new, empty network namespace, held by the returned fd (no bind mount:
/// it ends with the last process in it and the last fd, crash or not).
pub fn new_netns() -> Result<OwnedFd, NetError> {
    let made = std::thread::spawn(|| -> std::io::Result<OwnedFd> {
        // SAFETY: unshare on this short-lived thread only; it touches no memory.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(std::fs::File::open("/proc/thread-self/ns/net")?.into())
    })
    .join();
    match made {
        Ok(r) => r.map_err(|e| NetError::host("create a network namespace", e)),
        Err(_) => Err(NetError::host(
            "create a network namespace",
            "the thread panicked",
        )),
    }
}

/// Runs `f` on a thread of its own inside `netns` (setns moves only the
/// calling thread, which ends with `f`): netlink there, no `ip` process.
fn in_netns<T: Send>(
    netns: &OwnedFd,
    what: &str,
    f: impl FnOnce() -> Result<T, bulkhead_agent::netlink::NetError> + Send,
) -> Result<T, NetError> {
    let done = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| NetError::host(format!("{what}: enter the namespace"), e))?;
            f().map_err(|e| NetError::host(what, bulkhead_agent_proto::report(&e)))
        })
        .join()
    });
    done.unwrap_or_else(|_| Err(NetError::host(what, "the thread panicked")))
}

/// Loopback up inside `netns`.
pub fn lo_up(netns: &OwnedFd) -> Result<(), NetError> {
    in_netns(netns, "loopback up", || {
        bulkhead_agent::netlink::configure(None)
    })
}

/// A veth pair: `a.host_if` on the bridge, the other end made directly in
/// `netns` as `eth0` with the workload's MAC (about 20 ms faster than making
/// it here and moving it), then loopback, its address and default route
/// over netlink from a thread inside the namespace (no `ip` there).
pub fn veth_into(net: &Network, a: &Attachment, netns: &OwnedFd) -> Result<(), NetError> {
    let ns_path = format!("/proc/{}/fd/{}", std::process::id(), netns.as_raw_fd());
    ensure_fail_closed(&[net.bridge.as_str()])?;
    // The bridge (made or put right as `ensure_bridge` does) and the pair, in one `ip` run.
    let mut lines = bridge_lines(net);
    lines.extend([
        format!(
            "link add {} type veth peer name eth0 address {} netns {ns_path}",
            a.host_if, a.mac
        ),
        format!("link set {} master {} up", a.host_if, a.bridge),
    ]);
    ip_batch(&lines, None)?;
    bridge_sysctls(net)?;
    let spec = bulkhead_agent_proto::NetworkSpec {
        interface: "eth0".into(),
        address: format!("{}/{}", a.ip, a.prefix),
        gateway: Some(a.gateway.to_string()),
        mtu: None,
    };
    in_netns(netns, "the workload's eth0", || {
        bulkhead_agent::netlink::configure(Some(&spec))
    })
}

/// A socket bound to a published port (never listening): it keeps host
/// programs off the port while the workload publishes it, and binding it
/// is the check that the port is free.
pub fn bind_port(p: &Publish) -> Result<OwnedFd, NetError> {
    let ty = match p.proto {
        Proto::Tcp => libc::SOCK_STREAM,
        Proto::Udp => libc::SOCK_DGRAM,
    };
    // SAFETY: socket() takes plain integers; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, ty | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetError::host("socket", std::io::Error::last_os_error()));
    }
    // SAFETY: a new fd that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ip = p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let addr = libc::sockaddr_in {
        sin_family: AF_INET,
        sin_port: p.host_port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: bind reads a sockaddr_in of the size given; `addr` outlives the call.
    if unsafe {
        libc::bind(
            sock.as_raw_fd(),
            std::ptr::addr_of!(addr).cast(),
            SOCKADDR_IN_LEN,
        )
    } < 0
    {
        let e = std::io::Error::last_os_error();
        let why = if e.raw_os_error() == Some(libc::EADDRINUSE) {
            "already in use on this host".to_string()
        } else {
            e.to_string()
        };
        return Err(NetError::Conflict(format!(
            "cannot publish {ip}:{}/{}: {why}",
            p.host_port, p.proto
        )));
    }
    Ok(sock)
}

/// The host's IPv4 addresses with prefix lengths, by interface (`ip -j`).
pub fn host_addresses() -> Result<Vec<(String, Ipv4Addr, u8)>, NetError> {
    let ip = tool("ip", "iproute2")?;
    let out = Command::new(&ip)
        .args(["-j", "-4", "address", "show"])
        .output()
        .map_err(|e| NetError::host("ip -j -4 address show", e))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| NetError::host("ip -j -4 address show", e))?;
    let mut all = Vec::new();
    for link in v.as_array().into_iter().flatten() {
        let name = link["ifname"].as_str().unwrap_or_default().to_string();
        for a in link["addr_info"].as_array().into_iter().flatten() {
            if let (Some(Ok(addr)), Some(len)) = (
                a["local"].as_str().map(str::parse::<Ipv4Addr>),
                a["prefixlen"].as_u64(),
            ) {
                all.push((name.clone(), addr, len.min(32) as u8));
            }
        }
    }
    Ok(all)
}

/// Interfaces whose names start with one of `prefixes` and that are ports
/// of one of `bridges` (`ip -j link`: its `master`).
pub fn ports_of(bridges: &[&str], prefixes: &[&str]) -> Result<Vec<String>, NetError> {
    let ip = tool("ip", "iproute2")?;
    let what = "ip -j link show";
    let out = Command::new(&ip)
        .args(["-j", "link", "show"])
        .output()
        .map_err(|e| NetError::host(what, e))?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| NetError::host(what, e))?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["master"].as_str().is_some_and(|m| bridges.contains(&m)))
        .filter_map(|l| l["ifname"].as_str())
        .filter(|n| prefixes.iter().any(|p| n.starts_with(p)))
        .map(str::to_string)
        .collect())
}

/// Claims this data dir's names on the host: a data dir whose tag another
/// data dir holds (a 1 in 65536 chance) is refused before it could replace
/// the other's tables. The claim is `/run/bulkhead/names/TAG` holding the
/// data dir's path; one whose data dir is gone is taken over.
pub fn claim_names(names: &super::HostNames, data: &Path) -> Result<(), NetError> {
    let Some(tag) = names.table().strip_prefix("bulkhead_").map(str::to_string) else {
        return Ok(());
    };
    let what = "claim this data dir's names on the host";
    let dir = Path::new(crate::state::paths::RUN_ROOT).join("names");
    let real = std::fs::canonicalize(data).unwrap_or_else(|_| data.to_path_buf());
    let mine = real.as_os_str().as_encoded_bytes();
    bulkhead_images::private::dir(&dir).map_err(|e| NetError::host(what, e))?;
    let claim = dir.join(&tag);
    match std::fs::read(&claim) {
        Ok(holder) if holder == mine => return Ok(()),
        Ok(holder) => {
            let holder = std::path::PathBuf::from(String::from_utf8_lossy(&holder).into_owned());
            if holder.join("state.redb").exists() {
                return Err(NetError::Conflict(format!("the data dirs {} and {} would share the host names of tag {tag} (tables bulkhead_{tag}, bridges b{tag}-*): move one", real.display(), holder.display())));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(NetError::host(what, e)),
    }
    bulkhead_images::private::write(&claim, mine).map_err(|e| NetError::host(what, e))
}

/// Replaces bulkhead's nftables tables with `script` in one transaction.
pub fn apply_rules(script: &str) -> Result<(), NetError> {
    let nft = tool("nft", "nftables")?;
    run(&nft, &["-f", "-"], script.as_bytes(), None)
}

/// The refused counters of `table` as the kernel holds them now, by name
/// (none when the table is not there).
pub fn refused_counts(table: &str) -> super::rules::Refused {
    let Ok(nft) = tool("nft", "nftables") else {
        return Default::default();
    };
    let out = Command::new(&nft)
        .args(["-j", "list", "counters", "table", "inet", table])
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => parse_counters(&o.stdout),
        _ => Default::default(),
    }
}

/// `nft -j list counters` output: each named counter's packets and bytes.
fn parse_counters(json: &[u8]) -> super::rules::Refused {
    let v: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    v.get("nftables")
        .and_then(|a| a.as_array())
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let c = e.get("counter")?;
            Some((
                c.get("name")?.as_str()?.to_string(),
                (c.get("packets")?.as_u64()?, c.get("bytes")?.as_u64()?),
            ))
        })
        .collect()
}

/// The nft script as the kernel holds it now (for `network inspect`).
pub fn list_rules(table: &str) -> Option<String> {
    let nft = tool("nft", "nftables").ok()?;
    let out = Command::new(&nft)
        .args(["list", "table", "inet", table])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_read_by_name_and_anything_else_is_skipped() {
        let json = br#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "inet", "name": "refused_bhtabc", "table": "t", "handle": 4, "packets": 5, "bytes": 300}},
            {"counter": {"family": "inet", "name": "odd", "packets": -1, "bytes": 3}},
            {"counter": {"family": "inet", "packets": 1, "bytes": 3}}]}"#;
        let c = parse_counters(json);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c.get("refused_bhtabc"), Some(&(5, 300)));
        assert!(parse_counters(b"not json").is_empty());
        assert!(parse_counters(b"{\"nftables\": 3}").is_empty());
    }
}
