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
        "refusing to join over {}: the join token, this node's token and its API secret would cross the network in the clear. Serve the API over TLS (`bulkhead server --tls-cert/--tls-key`, then https:// and --cacert here), or accept the risk with --insecure",
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
