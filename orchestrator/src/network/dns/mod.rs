//! A resolver per network (podman's aardvark-dns model): `bulkhead __dns`,
//! one small process per network that has workloads, on the bridge's
//! gateway address, port 53 (UDP and TCP). It answers the names of the
//! network's workloads (`--name`) and their reverse names, NXDOMAIN for
//! other single-label names, and forwards the rest to the host's
//! nameservers. The default network has none (as docker's default bridge).
//!
//! ```text
//! answer.rs   one query -> answer | forward | drop (pure)
//! server.rs   the process: sockets bound, then no privileges (nobody),
//!             the names file re-read when it changes
//! ```
//!
//! Every network change (`lifecycle::apply`, under `network.lock`) writes
//! each network's names from the store's leases to
//! `/run/bulkhead/dns/<bridge>.json`, starts the network's resolver when it
//! gets its first workload and stops it with its last. Names therefore
//! resolve from the moment a workload's lease exists until it is released,
//! and only on its own network: the rules let a bridge reach no gateway's
//! port 53 but its own, and the resolver answers only its own subnet.

pub mod answer;
pub mod server;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Attachment, NetError, Network, Subnet};

/// The user and group the resolver runs as once its sockets are bound.
pub const NOBODY: u32 = 65534;

/// What a network's resolver knows: written by `sync`, read by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub subnet: Subnet,
    /// Lower-case name -> addresses.
    pub names: BTreeMap<String, Vec<Ipv4Addr>>,
}

/// A cluster tenant's service names, as its node got them from the server
/// (`<bridge>.cluster.json`): lower-case name -> addresses.
pub type ClusterNames = BTreeMap<String, Vec<Ipv4Addr>>;

/// Whether a network gets a resolver: every one but the default network.
pub fn serves(net: &Network) -> bool {
    net.name != super::DEFAULT_NETWORK
}

/// `/run/bulkhead/dns`: root's, readable by the resolvers' group only.
pub fn dir() -> PathBuf {
    std::path::Path::new(crate::state::paths::RUN_ROOT).join("dns")
}

fn table_path(bridge: &str) -> PathBuf {
    dir().join(format!("{bridge}.json"))
}

fn cluster_path(bridge: &str) -> PathBuf {
    dir().join(format!("{bridge}.cluster.json"))
}

/// Held (flock) by the running resolver; holds its pid and start time.
fn lock_path(bridge: &str) -> PathBuf {
    dir().join(format!("{bridge}.lock"))
}

fn host(what: &str, e: impl std::fmt::Display) -> NetError {
    NetError::host(what.to_string(), e)
}

/// `/run/bulkhead` passable (0711, as the containers' base needs it too),
/// `dns/` in it root's and the resolvers' group's.
fn ensure_dir() -> Result<(), NetError> {
    let d = dir();
    let what = "make the resolvers' dir";
    let run = std::path::Path::new(crate::state::paths::RUN_ROOT);
    std::fs::create_dir_all(&d).map_err(|e| host(what, e))?;
    std::fs::set_permissions(run, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| host(what, e))?;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o750))
        .map_err(|e| host(what, e))?;
    nix::unistd::chown(&d, Some(0.into()), Some(NOBODY.into())).map_err(|e| host(what, e))
}

/// The names on `net`, from its leases: each workload's names, lower-cased.
pub fn table_of(net: &Network, leases: &[Attachment]) -> Table {
    let mut names: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
    for a in leases.iter().filter(|a| a.network == net.name) {
        for n in &a.names {
            names.entry(n.to_ascii_lowercase()).or_default().push(a.ip);
        }
    }
    Table {
        subnet: net.subnet,
        names,
    }
}

/// Brings each network's resolver in line with its leases (lock held).
pub fn sync(nets: &[Network], leases: &[Attachment]) -> Result<(), NetError> {
    for net in nets.iter().filter(|n| serves(n)) {
        if leases.iter().any(|a| a.network == net.name) {
            write_table(&net.bridge, &table_of(net, leases))?;
            ensure_running(&net.bridge)?;
        } else {
            stop(&net.bridge)?;
        }
    }
    Ok(())
}

/// Sets the cluster names `bridge`'s resolver answers beside its
/// workloads' (the node daemon, for a tenant's network).
pub fn set_cluster_names(bridge: &str, names: &ClusterNames) -> Result<(), NetError> {
    let bytes = serde_json::to_vec(names).map_err(|e| host("encode the names", e))?;
    write_names(&cluster_path(bridge), &bytes)
}

fn write_table(bridge: &str, table: &Table) -> Result<(), NetError> {
    let bytes = serde_json::to_vec(table).map_err(|e| host("encode the names", e))?;
    write_names(&table_path(bridge), &bytes)
}

/// Written aside and renamed in, readable by the resolvers' group; left
/// alone when unchanged.
fn write_names(path: &std::path::Path, bytes: &[u8]) -> Result<(), NetError> {
    ensure_dir()?;
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let what = "write the resolver's names";
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(|e| host(what, e))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640))
        .map_err(|e| host(what, e))?;
    nix::unistd::chown(&tmp, Some(0.into()), Some(NOBODY.into())).map_err(|e| host(what, e))?;
    std::fs::rename(&tmp, path).map_err(|e| host(what, e))
}

/// Starts the resolver of `bridge` unless it runs; returns once it serves.
fn ensure_running(bridge: &str) -> Result<(), NetError> {
    if super::daemon::holder(&lock_path(bridge))?.is_some() {
        return Ok(());
    }
    super::daemon::spawn(
        &format!("start the resolver of {bridge}"),
        &["__dns", "--bridge", bridge],
        &dir().join(format!("{bridge}.log")),
    )
}

/// Stops the resolver of `bridge` (waits until it is gone) and removes
/// its files.
pub fn stop(bridge: &str) -> Result<(), NetError> {
    super::daemon::kill(&lock_path(bridge))?;
    for p in [
        table_path(bridge),
        cluster_path(bridge),
        lock_path(bridge),
        dir().join(format!("{bridge}.log")),
    ] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(host("remove the resolver's files", e)),
        }
    }
    Ok(())
}
