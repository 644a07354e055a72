//! How a node reaches the server: its kept identity, the servers' URLs
//! (https:// unless --insecure), the addresses its workloads are kept
//! from, and the client that finds the leader.

use super::*;

/// This node's name and token, kept (0600) so a restarted daemon proves it
/// is the node that holds the name: a join under a registered name that
/// holds a token needs that token.
#[derive(Debug, serde::Serialize, Deserialize)]
pub(super) struct Identity {
    pub(super) name: String,
    pub(super) token: String,
}

pub(super) fn identity_file(data: &Path) -> PathBuf {
    data.join("node").join("identity.json")
}

pub(super) fn read_identity(data: &Path, name: &str) -> Option<String> {
    let text = std::fs::read_to_string(identity_file(data)).ok()?;
    let id: Identity = serde_json::from_str(&text).ok()?;
    (id.name == name).then_some(id.token)
}

pub(super) fn write_identity(data: &Path, name: &str, token: &str) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(&Identity {
        name: name.into(),
        token: token.into(),
    })
    .map_err(std::io::Error::other)?;
    crate::state::record::write_private(&identity_file(data), &bytes)
}

/// The servers' URLs that are not https://, unless `insecure` allows them.
pub fn refuse_cleartext(servers: &str, insecure: bool) -> Result<(), NodeError> {
    let plain: Vec<&str> = servers
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty() && !u.starts_with("https://"))
        .collect();
    if plain.is_empty() || insecure {
        return Ok(());
    }
    Err(NodeError::Local(format!(
        "refusing to join over {}: the join token, this node's token and its API secret would cross the network in the clear. Use the server's https:// URL (a server speaks TLS unless started with --insecure; the join token names its CA), or accept the risk with --insecure",
        plain.join(", ")
    )))
}

/// The addresses no workload on this node may reach: the servers' (their
/// URLs' hosts, resolved) and what the server says of itself and its store.
pub(super) fn protected_addresses(servers: &str, said: &[String]) -> Vec<crate::network::Subnet> {
    let mut out = Vec::new();
    for url in servers.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let Ok(u) = reqwest::Url::parse(url) else {
            continue;
        };
        let Some(host) = u
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
        else {
            continue;
        };
        let port = u.port_or_known_default().unwrap_or(443);
        if let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port)) {
            out.extend(addrs.filter_map(|a| match a.ip() {
                std::net::IpAddr::V4(ip) => Some(crate::network::Subnet {
                    base: ip,
                    prefix: 32,
                }),
                std::net::IpAddr::V6(_) => None,
            }));
        }
    }
    out.extend(
        said.iter()
            .filter_map(|a| crate::network::Subnet::parse_cidr(a).ok()),
    );
    out
}

pub(super) struct Client {
    /// One server, or several sharing a store: the leader answers.
    pub(super) bases: Vec<String>,
    pub(super) http: reqwest::Client,
    /// The last one that answered (tried first).
    pub(super) current: usize,
}

impl Client {
    pub(super) fn new(servers: &str, http: reqwest::Client) -> Client {
        let bases = servers
            .split(',')
            .map(|b| b.trim().trim_end_matches('/').to_string())
            .filter(|b| !b.is_empty())
            .collect();
        Client {
            bases,
            http,
            current: 0,
        }
    }

    pub(super) fn name(&self) -> String {
        self.bases.join(",")
    }

    pub(super) async fn post<T: serde::de::DeserializeOwned>(
        &mut self,
        path: &str,
        token: &str,
        body: &impl serde::Serialize,
    ) -> Result<T, NodeError> {
        let mut last = NodeError::Server(self.name(), "no server URL".into());
        for k in 0..self.bases.len() {
            let i = (self.current + k) % self.bases.len();
            let base = self.bases[i].clone();
            let resp = match self
                .http
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .json(body)
                .timeout(Duration::from_secs(5))
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    last = NodeError::Server(base, e.to_string());
                    continue;
                }
            };
            let status = resp.status();
            let text = resp
                .text()
                .await
                .map_err(|e| NodeError::Server(base.clone(), e.to_string()))?;
            if status == reqwest::StatusCode::SERVICE_UNAVAILABLE {
                last = NodeError::Server(base, text); // a standby: try the next
                continue;
            }
            self.current = i;
            if status == reqwest::StatusCode::UNAUTHORIZED
                || status == reqwest::StatusCode::FORBIDDEN
            {
                return Err(NodeError::Refused(text));
            }
            if status == reqwest::StatusCode::CONFLICT {
                let why = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                return Err(NodeError::Conflict(why));
            }
            if !status.is_success() {
                return Err(NodeError::Server(base, format!("{status}: {text}")));
            }
            return serde_json::from_str(&text).map_err(|e| {
                NodeError::Server(base, format!("an answer that does not parse: {e}"))
            });
        }
        Err(last)
    }
}

/// A join token as `node token create` prints it: the secret, then (from
/// a server with TLS) `.sha256:<hex>`, the hash of its CA's certificate.
pub(super) fn split_join_token(token: &str) -> (String, Option<String>) {
    match token.trim().split_once('.') {
        Some((secret, hash)) if hash.starts_with("sha256:") => {
            (secret.to_string(), Some(hash.to_string()))
        }
        _ => (token.trim().to_string(), None),
    }
}

fn kept_ca_file(data: &Path) -> PathBuf {
    data.join("node").join("cluster-ca.crt")
}

/// How this node trusts the servers: --cacert; else the cluster CA the
/// join token's hash names, found in a server's chain (kubeadm's
/// discovery) and kept in the data dir; else the CA kept from an earlier
/// join; else the system's roots (a server with a public certificate).
pub(super) async fn trust(
    cfg: &NodeConfig,
    pinned: Option<&str>,
) -> Result<reqwest::Client, NodeError> {
    let local = |e: super::super::tls::TlsError| NodeError::Local(e.to_string());
    if cfg.cacert.is_some() {
        return super::super::tls::client(cfg.cacert.as_deref()).map_err(local);
    }
    let kept = kept_ca_file(&cfg.data);
    let kept_pem = std::fs::read_to_string(&kept).ok();
    let kept_hash = kept_pem.as_deref().and_then(super::super::ca::hash_of_pem);
    let https: Vec<&str> = cfg
        .server
        .split(',')
        .map(str::trim)
        .filter(|u| u.starts_with("https://"))
        .collect();
    let pem = match (pinned, kept_pem) {
        (Some(p), Some(pem)) if kept_hash.as_deref() == Some(p) => pem,
        (Some(p), _) if !https.is_empty() => {
            let mut last = None;
            let mut found = None;
            for url in &https {
                match super::super::tls::discover_ca(url, p).await {
                    Ok(pem) => {
                        found = Some(pem);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            let pem = match (found, last) {
                (Some(pem), _) => pem,
                (None, e) => {
                    let why = e.map(|e| e.to_string()).unwrap_or_default();
                    return Err(NodeError::Local(format!("the cluster CA: {why}")));
                }
            };
            crate::state::record::write_private(&kept, pem.as_bytes()).map_err(|e| {
                NodeError::Local(format!("keep the cluster CA in {}: {e}", kept.display()))
            })?;
            pem
        }
        (None, Some(pem)) => pem,
        _ => return super::super::tls::client(None).map_err(local),
    };
    super::super::tls::pinned_client(&pem).map_err(local)
}

/// The node API's key and certificate for `host`: kept in the data dir
/// (0600) and used again after a restart while the host is the same, so
/// the server's pin stays true; made anew for another host.
pub(super) fn api_certificate(data: &Path, host: &str) -> Result<(String, String), NodeError> {
    #[derive(serde::Serialize, Deserialize)]
    struct Kept {
        host: String,
        cert: String,
        key: String,
    }
    let file = data.join("node").join("api-tls.json");
    if let Some(k) = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Kept>(&b).ok())
        .filter(|k| k.host == host)
    {
        return Ok((k.cert, k.key));
    }
    let (cert, key) = super::super::tls::self_signed(&[host.to_string()])
        .map_err(|e| NodeError::Local(format!("the node API's certificate: {e}")))?;
    let kept = Kept {
        host: host.into(),
        cert,
        key,
    };
    let bytes = serde_json::to_vec(&kept).map_err(std::io::Error::other);
    bytes
        .and_then(|b| crate::state::record::write_private(&file, &b))
        .map_err(|e| NodeError::Local(format!("keep the node API's certificate: {e}")))?;
    Ok((kept.cert, kept.key))
}
