//! `bulkhead server`: the control plane's settings, its store, its start.

use super::*;

#[derive(Debug, Args)]
pub struct ServerArgs {
    /// Where the API listens.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// file:PATH: one host (default: cluster.redb in the data dir); or
    /// etcds://HOST:PORT[,HOST:PORT...]: several servers share an etcd over
    /// TLS, one leads (etcd://: in the clear, with --insecure-store).
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// etcds://: the CA that signed etcd's serving certificates (PEM).
    #[arg(long, value_name = "FILE")]
    store_ca: Option<PathBuf>,
    /// etcds://: the client certificate shown to etcd (PEM; with
    /// --store-key), for etcd's --client-cert-auth.
    #[arg(long, value_name = "FILE", requires = "store_key")]
    store_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "store_cert")]
    store_key: Option<PathBuf>,
    /// etcd's own authentication: this user, its password from
    /// $BULKHEAD_STORE_PASSWORD or --store-password-file.
    #[arg(long, value_name = "NAME")]
    store_user: Option<String>,
    /// The etcd user's password (first line of FILE, not world-readable).
    #[arg(long, value_name = "FILE", requires = "store_user")]
    store_password_file: Option<PathBuf>,
    /// Reach etcd over etcd:// in the clear: the whole cluster state
    /// (tokens' hashes, tenants' environment, the sealed CA) crosses the
    /// network readable and forgeable. For a store on loopback or tests.
    #[arg(long)]
    insecure_store: bool,
    /// Where this server's API is for others (announced while it leads;
    /// default: http://LISTEN).
    #[arg(long, value_name = "URL")]
    advertise: Option<String>,
    /// etcd: the leader's lease; a standby takes over this long after the
    /// leader stopped renewing it.
    #[arg(long, default_value = "5s", value_name = "DURATION", value_parser = parse_duration_ms)]
    leader_lease: u64,
    /// Where a new store's admin token is written (default: beside a file
    /// store, or cluster.admin-token in the data dir).
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key)
    /// instead of one from the cluster's CA. Join tokens then carry the
    /// hash of the chain's last certificate.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Another name (DNS or IP address) for this server's certificate from
    /// the cluster CA; repeatable. Its listen address, --advertise host,
    /// host name and addresses, localhost and 127.0.0.1 are in it already.
    #[arg(long = "tls-name", value_name = "NAME")]
    tls_names: Vec<String>,
    /// The cluster key that seals the CA's key in the store: the first
    /// server makes it (default: cluster.key beside the admin token file);
    /// every further server of the same store needs a copy.
    #[arg(long, value_name = "FILE")]
    cluster_key_file: Option<PathBuf>,
    /// Serve plain HTTP: tokens, assignments and tenants' environment cross
    /// the network in the clear. Default: HTTPS with a certificate from
    /// the cluster's CA, made by the first server of a new store.
    #[arg(long, conflicts_with = "tls_cert")]
    insecure: bool,
    /// Without a heartbeat this long a node is lost: not ready, and its
    /// instances are replaced once its lease and the stop time are over.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration_ms)]
    heartbeat_grace: u64,
    /// A node's workloads stop themselves this long after the node last
    /// reached the server (at least the grace).
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = parse_duration_ms)]
    lease: u64,
    /// How long a workload may take to stop (stop signal, then SIGKILL
    /// halfway) before a replacement starts elsewhere.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration_ms)]
    stop_time: u64,
    /// Restart backoff: the first wait, doubling...
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_duration_ms)]
    backoff_initial: u64,
    /// ...up to this...
    #[arg(long, default_value = "5m", value_name = "DURATION", value_parser = parse_duration_ms)]
    backoff_cap: u64,
    /// ...and forgotten after a run this long.
    #[arg(long, default_value = "10m", value_name = "DURATION", value_parser = parse_duration_ms)]
    backoff_reset: u64,
    /// Tenant networks' addresses: each tenant gets a range of this pool,
    /// each node a tenant runs on a slice of that range (its bridge there).
    /// Keep it apart from the nodes' own networks.
    #[arg(long, default_value = crate::cluster::netpool::DEFAULT_POOL, value_name = "CIDR")]
    tenant_pool: String,
    /// The prefix length of each tenant's range.
    #[arg(long, default_value_t = crate::cluster::netpool::DEFAULT_RANGE_PREFIX, value_name = "BITS")]
    tenant_range: u8,
    /// The prefix length of each node's slice of a tenant's range.
    #[arg(long, default_value_t = crate::cluster::netpool::DEFAULT_SLICE_PREFIX, value_name = "BITS")]
    node_slice: u8,
    /// How a tenant's instances on different nodes reach each other:
    /// `wireguard` (encrypted and authenticated: kernel WireGuard where the
    /// kernel has it, else a userspace one) or `plain` (VXLAN in the
    /// clear, for underlays you trust as much as the nodes).
    #[arg(long, default_value = "wireguard", value_name = "KIND")]
    overlay: crate::network::overlay::Mode,
}

/// How to reach the etcd at `url`: TLS material and credentials read from
/// their files and the environment; plaintext refused without
/// --insecure-store, TLS flags refused where they would not be used.
fn store_access(a: &ServerArgs, url: &str) -> Result<crate::cluster::etcd::EtcdAccess> {
    let read = |f: &Option<PathBuf>| -> Result<Option<Vec<u8>>> {
        f.as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("{}", p.display())))
            .transpose()
    };
    crate::cluster::etcd::endpoints(url).map_err(anyhow::Error::msg)?;
    let tls = url.starts_with("etcds://");
    if !tls {
        if !a.insecure_store {
            bail!("--store {url}: etcd in the clear carries the cluster's whole state readable and forgeable; use etcds:// with --store-ca (and --store-cert/--store-key), or pass --insecure-store");
        }
        if a.store_ca.is_some() || a.store_cert.is_some() {
            bail!("--store-ca/--store-cert are for etcds://, not {url}");
        }
        eprintln!(
            "bulkhead server: warning: --insecure-store: the store {url} is reached in the clear"
        );
    } else if a.store_ca.is_none() {
        bail!("--store {url}: give --store-ca, the CA that signed etcd's certificate");
    }
    let user = match &a.store_user {
        None => None,
        Some(u) => {
            let password = crate::cli::secrets::secret(
                a.store_password_file.as_deref(),
                "BULKHEAD_STORE_PASSWORD",
            )?
            .with_context(|| {
                format!(
                    "--store-user {u}: set BULKHEAD_STORE_PASSWORD or give --store-password-file"
                )
            })?;
            Some((u.clone(), password))
        }
    };
    let client_pem = match (read(&a.store_cert)?, read(&a.store_key)?) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => None,
    };
    Ok(crate::cluster::etcd::EtcdAccess {
        ca_pem: read(&a.store_ca)?,
        client_pem,
        user,
    })
}

pub use crate::state::health::parse_duration_ms;

pub fn server(a: ServerArgs) -> Result<()> {
    // A connection per node and client: not systemd's soft 1024.
    if let Err(e) = crate::state::fdlimit::raise() {
        eprintln!("bulkhead server: warning: could not raise the descriptor limit: {e}");
    }
    let timing = Timing {
        grace_ms: a.heartbeat_grace,
        lease_ms: a.lease,
        stop_ms: a.stop_time,
    };
    let backoff = BackoffPolicy {
        initial_ms: a.backoff_initial,
        cap_ms: a.backoff_cap,
        reset_after_ms: a.backoff_reset,
    };
    let mut settings = Settings::new(timing, backoff).map_err(anyhow::Error::msg)?;
    let pool = crate::state::subnet::Subnet::parse(&a.tenant_pool)
        .map_err(|e| anyhow::anyhow!("--tenant-pool {}: {e}", a.tenant_pool))?;
    settings.pool = crate::cluster::netpool::Pool::new(pool, a.tenant_range, a.node_slice)
        .map_err(anyhow::Error::msg)?;
    settings.overlay = a.overlay;
    let (cluster, token_file, what) = match a.store.as_deref() {
        Some(s) if crate::cluster::etcd::is_etcd_url(s) => {
            let api = a.advertise.clone().unwrap_or_else(|| {
                format!(
                    "{}://{}",
                    if a.insecure { "http" } else { "https" },
                    a.listen
                )
            });
            let ttl = i64::try_from(a.leader_lease.div_ceil(1000).max(2)).unwrap_or(i64::MAX);
            let access = store_access(&a, s)?;
            let store =
                EtcdStore::open(s, &access, &api, ttl).with_context(|| format!("--store {s}"))?;
            let file = a
                .admin_token_file
                .clone()
                .unwrap_or_else(|| crate::state::paths::data_dir().join("cluster.admin-token"));
            (Cluster::new(store), file, s.to_string())
        }
        other => {
            if a.store_ca.is_some()
                || a.store_cert.is_some()
                || a.store_user.is_some()
                || a.insecure_store
            {
                bail!("--store-ca, --store-cert, --store-user and --insecure-store are for an etcd store, not a file store");
            }
            let path = match other {
                None => crate::state::paths::data_dir().join("cluster.redb"),
                Some(s) if s.starts_with("file:") && s.len() > 5 => PathBuf::from(&s[5..]),
                Some(s) => {
                    bail!("--store {s:?}: file:PATH (one host) or etcds://HOST:PORT[,HOST:PORT...]")
                }
            };
            let file = a
                .admin_token_file
                .clone()
                .unwrap_or_else(|| path.with_extension("admin-token"));
            (
                Cluster::new(FileStore::open(&path)?),
                file,
                path.display().to_string(),
            )
        }
    };
    let cluster = Arc::new(cluster);
    let tls = tls_for(&a, &cluster, &token_file)?;
    // The admin token: made by the first leader of a new store.
    let first = Arc::clone(&cluster);
    std::thread::spawn(move || loop {
        if first.is_leader() {
            match new_token().map_err(anyhow::Error::from).and_then(|t| Ok((first.init_admin(&t)?, t))) {
                Ok((true, token)) => match write_token(&token_file, &token) {
                    Ok(()) => eprintln!("bulkhead server: new cluster store {what}; the admin token is in {} (export BULKHEAD_TOKEN=$(cat {}) BULKHEAD_CACERT={})", token_file.display(), token_file.display(), token_file.with_file_name("cluster-ca.crt").display()),
                    Err(e) => eprintln!("bulkhead server: the admin token could not be written ({e:#}); it is {token}"),
                },
                Ok((false, _)) => {}
                Err(e) => {
                    eprintln!("bulkhead server: the admin token: {e:#}");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
            }
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    });
    // Store calls (redb, or etcd through its client thread) block the
    // worker that makes them: several workers, so a slow store call holds
    // up its own request, not every other one.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let control_plane = control_plane(&a);
    rt.block_on(crate::cluster::server::serve(
        cluster,
        a.listen,
        settings,
        tls,
        control_plane,
    ))
    .with_context(|| format!("serve on {}", a.listen))
}

/// How this server speaks: plain HTTP (`--insecure`, warned), the
/// operator's certificate, or (the default) one from the cluster CA, which
/// the first leader of a new store makes; a standby waits for it. With TLS
/// comes the hash join tokens carry. The CA's certificate is written
/// beside the admin token for clients (`BULKHEAD_CACERT`).
fn tls_for(
    a: &ServerArgs,
    cluster: &Cluster,
    token_file: &std::path::Path,
) -> Result<Option<(Arc<rustls::ServerConfig>, String)>> {
    use crate::cluster::ca::{hash_of_pem, ClusterCa};
    use crate::cluster::tls;
    if a.insecure {
        eprintln!("bulkhead server: warning: --insecure: plain HTTP; tokens, assignments and tenants' environment cross the network in the clear");
        return Ok(None);
    }
    if let (Some(c), Some(k)) = (&a.tls_cert, &a.tls_key) {
        let config = tls::server_config(c, k)?;
        let pem = std::fs::read_to_string(c).with_context(|| format!("{}", c.display()))?;
        let last = pem
            .split_inclusive("-----END CERTIFICATE-----")
            .filter(|p| p.contains("BEGIN CERTIFICATE"))
            .last()
            .and_then(hash_of_pem)
            .with_context(|| format!("{}: no certificate", c.display()))?;
        return Ok(Some((config, last)));
    }
    let key_file = a
        .cluster_key_file
        .clone()
        .unwrap_or_else(|| token_file.with_file_name("cluster.key"));
    let mut said = false;
    let ca = loop {
        match ClusterCa::load_or_make(cluster, &key_file, cluster.is_leader())
            .map_err(|e| anyhow::anyhow!(bulkhead_agent_proto::report(&e)))?
        {
            Some(ca) => break ca,
            None => {
                if !said {
                    eprintln!("bulkhead server: waiting for the leader to make the cluster CA");
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
    };
    let ca_file = token_file.with_file_name("cluster-ca.crt");
    if let Some(dir) = ca_file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&ca_file, &ca.cert_pem)
        .with_context(|| format!("write {}", ca_file.display()))?;
    let names = certificate_names(a);
    let (chain, key) = ca
        .serving_cert(&names)
        .map_err(|e| anyhow::anyhow!(bulkhead_agent_proto::report(&e)))?;
    eprintln!(
        "bulkhead server: TLS with a certificate from the cluster CA ({}) for {}",
        ca_file.display(),
        names.join(", ")
    );
    Ok(Some((tls::server_config_pem(&chain, &key)?, ca.hash())))
}

/// The names in this server's certificate: its listen address (or, when
/// unspecified, the host's addresses), its advertised host, its host name,
/// localhost and 127.0.0.1, and --tls-name.
fn certificate_names(a: &ServerArgs) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if a.listen.ip().is_unspecified() {
        for ifa in nix::ifaddrs::getifaddrs().into_iter().flatten() {
            if let Some(ip) = ifa.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                names.push(ip.ip().to_string());
            }
        }
    } else {
        names.push(a.listen.ip().to_string());
    }
    if let Some(h) = a
        .advertise
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
        .and_then(|u| {
            u.host_str()
                .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        })
    {
        names.push(h);
    }
    if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() {
            names.push(h.to_string());
        }
    }
    names.extend(a.tls_names.iter().cloned());
    names.sort();
    names.dedup();
    names
}

/// The addresses nodes keep workloads from: this server's (its listen
/// address unless unspecified, its advertised host) and its etcd's.
fn control_plane(a: &ServerArgs) -> Vec<String> {
    let mut hosts: Vec<(String, u16)> = Vec::new();
    if !a.listen.ip().is_unspecified() {
        hosts.push((a.listen.ip().to_string(), a.listen.port()));
    }
    if let Some(u) = a
        .advertise
        .as_deref()
        .and_then(|u| reqwest::Url::parse(u).ok())
    {
        if let Some(h) = u.host_str() {
            hosts.push((
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                u.port_or_known_default().unwrap_or(443),
            ));
        }
    }
    if let Some(etcd) = a.store.as_deref().and_then(crate::cluster::etcd::hosts_of) {
        for ep in etcd.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (h, p) = ep.rsplit_once(':').unwrap_or((ep, "2379"));
            hosts.push((
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                p.parse().unwrap_or(2379),
            ));
        }
    }
    let mut out: Vec<String> = Vec::new();
    for (h, port) in hosts {
        let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(h.as_str(), port))
            .map(|a| a.collect::<Vec<_>>())
            .unwrap_or_default();
        out.extend(
            resolved
                .into_iter()
                .filter(|s| s.is_ipv4() && !s.ip().is_unspecified())
                .map(|s| format!("{}/32", s.ip())),
        );
    }
    out.sort();
    out.dedup();
    out
}

pub(super) fn write_token(file: &std::path::Path, token: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("write {}", file.display()))?;
    writeln!(f, "{token}")?;
    Ok(())
}
