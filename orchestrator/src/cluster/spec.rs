//! A service as users write it (`bulkhead deploy -f service.yaml`, YAML or
//! JSON) and its checks: every field known, every value in range, with the
//! field named in the error. Nothing here trusts the file.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::runtime::limits;
use crate::state::record::RuntimeKind;

/// Replicas of one service, at most.
pub const MAX_REPLICAS: u32 = 1000;
/// One instance's vCPUs (microvm) or CPU limit (container), at most.
pub const MAX_CPUS: f64 = 64.0;
/// One instance's memory, at most (MiB).
pub const MAX_MEMORY_MIB: u64 = 256 << 10;
/// What an instance asks for when the spec says nothing: a microVM's
/// default size, or a small container share.
pub const DEFAULT_VM: Resources = Resources {
    millicpus: limits::DEFAULT_VM_VCPUS as u64 * 1000,
    memory_mib: limits::DEFAULT_VM_MEMORY_MIB,
};
pub const DEFAULT_CONTAINER: Resources = Resources {
    millicpus: 100,
    memory_mib: 64,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("the service file does not parse (YAML or JSON, known fields only): {0}")]
    Syntax(String),
    #[error("{field}: {why}")]
    Field { field: &'static str, why: String },
}

fn field(field: &'static str, why: impl Into<String>) -> SpecError {
    SpecError::Field {
        field,
        why: why.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// Restart whenever it ends (servers).
    #[default]
    Always,
    /// Restart when it ends with a non-zero code or a signal.
    OnFailure,
    /// Never restart (batch jobs).
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Replicas go to the nodes holding the fewest of this service, then
    /// the least loaded.
    #[default]
    Spread,
    /// Replicas fill the most loaded node that still fits.
    Binpack,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// Only nodes with every one of these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// At most one replica of this service per node.
    #[serde(default)]
    pub anti_affinity: bool,
    #[serde(default)]
    pub strategy: Strategy,
}

/// Where instances may send traffic beyond the internet and their own
/// tenant network (see `network::egress`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Egress {
    /// CIDRs (or addresses) otherwise denied, e.g. a database on the LAN;
    /// never loopback, link-local (cloud metadata), multicast or reserved
    /// space, and never the control plane or its store, whatever is said.
    #[serde(default)]
    pub allow: Vec<String>,
    /// CIDRs (or addresses) never reached, even on the internet or inside
    /// an allowed range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// `false`: no internet, only the tenant network and what `allow`
    /// opens. Left out: the internet, unless the tenant's policy (set by
    /// the admin) forbids it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internet: Option<bool>,
}

impl Egress {
    fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && self.internet.is_none()
    }

    /// This egress under a tenant policy: where the tenant may not reach
    /// the internet, no internet and only the private part of `allow`.
    pub fn under(&self, tenant_internet: bool) -> Egress {
        if tenant_internet {
            return self.clone();
        }
        Egress {
            allow: self
                .allow
                .iter()
                .filter(|a| {
                    crate::network::egress::check_tenant_allow(a)
                        .is_ok_and(|n| crate::network::egress::is_private(&n))
                })
                .cloned()
                .collect(),
            deny: self.deny.clone(),
            internet: Some(false),
        }
    }

    /// Why this egress breaks a tenant policy that forbids the internet.
    pub fn breaks_no_internet(&self) -> Option<String> {
        if self.internet == Some(true) {
            return Some("internet: true".into());
        }
        self.allow
            .iter()
            .find(|a| {
                crate::network::egress::check_tenant_allow(a)
                    .is_ok_and(|n| !crate::network::egress::is_private(&n))
            })
            .map(|a| format!("allow {a} (the internet)"))
    }
}

/// A health check: one of `exec`, `tcp`, `http` (or none, to retime the
/// image's HEALTHCHECK), and its timing, as `bulkhead run --health-*`.
/// An unhealthy instance is stopped, then restarted by the service's
/// restart policy.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// A command run inside the instance (exec form, as `bulkhead exec`);
    /// exit 0 is healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    /// A port of the instance that accepts TCP connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// `GET path` on a port of the instance answers 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpCheck>,
    /// Time between checks: 500ms, 10s, 5m (default 30s, at least 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long one check may take (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failures in a row that make an instance unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// Failures this soon after the start do not count (default 0s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<String>,
    /// No check at all, whatever the image's HEALTHCHECK says.
    #[serde(default)]
    pub disable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    pub port: u16,
    #[serde(default = "root_path")]
    pub path: String,
}

fn root_path() -> String {
    "/".into()
}

impl Health {
    /// What the node asks of the instance's check; the bounds are checked
    /// here, so a bad check is refused at deploy, not on a node.
    pub fn ask(&self) -> Result<crate::runtime::health::HealthAsk, SpecError> {
        use crate::state::health::{parse_duration_ms, HealthSpec, Probe};
        let probes = [self.exec.is_some(), self.tcp.is_some(), self.http.is_some()];
        let probe = match (&self.exec, self.tcp, &self.http) {
            _ if probes.iter().filter(|p| **p).count() > 1 => {
                return Err(field("health", "one of exec, tcp or http, not several"))
            }
            (Some(args), _, _) => Some(Probe::Exec(args.clone())),
            (_, Some(port), _) => Some(Probe::Tcp { port }),
            (_, _, Some(h)) => Some(Probe::Http {
                port: h.port,
                path: h.path.clone(),
            }),
            _ => None,
        };
        if self.disable
            && (probe.is_some()
                || self.interval.is_some()
                || self.timeout.is_some()
                || self.retries.is_some()
                || self.start_period.is_some())
        {
            return Err(field(
                "health",
                "disable: true takes no check and no timing",
            ));
        }
        let duration = |f: &'static str, v: &Option<String>| {
            v.as_deref()
                .map(parse_duration_ms)
                .transpose()
                .map_err(|why| field(f, why))
        };
        let ask = crate::runtime::health::HealthAsk {
            probe,
            interval_ms: duration("health.interval", &self.interval)?,
            timeout_ms: duration("health.timeout", &self.timeout)?,
            start_period_ms: duration("health.start_period", &self.start_period)?,
            retries: self.retries,
            off: self.disable,
        };
        // The bounds, with Docker's defaults where nothing is said.
        let spec = HealthSpec {
            probe: ask
                .probe
                .clone()
                .unwrap_or_else(|| Probe::Exec(vec!["true".into()])),
            interval_ms: ask.interval_ms.unwrap_or(30_000),
            timeout_ms: ask.timeout_ms.unwrap_or(30_000),
            start_period_ms: ask.start_period_ms.unwrap_or(0),
            retries: ask.retries.unwrap_or(3),
        };
        spec.check().map_err(|why| field("health", why))?;
        if ask
            .probe
            .as_ref()
            .is_some_and(|p| matches!(p, Probe::Exec(a) if a.iter().any(|s| s.contains('\0'))))
        {
            return Err(field("health", "no NUL bytes in the command"));
        }
        Ok(ask)
    }
}

/// What the user writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default = "default_runtime")]
    pub runtime: RuntimeKind,
    #[serde(default = "one")]
    pub replicas: u32,
    /// vCPUs (microvm, rounded up) or a CPU share (container).
    pub cpus: Option<f64>,
    /// As `bulkhead run --memory`: 512m, 1g, or bytes.
    pub memory: Option<String>,
    #[serde(default)]
    pub restart: RestartPolicy,
    #[serde(default)]
    pub placement: Placement,
    /// As `bulkhead run -p`: [HOSTIP:]HOSTPORT:PORT[/tcp|/udp].
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Egress::is_empty")]
    pub egress: Egress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The stack it was deployed with (`services:` in a file), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
}

fn default_runtime() -> RuntimeKind {
    RuntimeKind::Microvm
}

fn one() -> u32 {
    1
}

/// CPU in thousandths and memory in MiB: integers, so sums are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resources {
    pub millicpus: u64,
    pub memory_mib: u64,
}

impl Resources {
    pub fn plus(self, o: Resources) -> Resources {
        Resources {
            millicpus: self.millicpus.saturating_add(o.millicpus),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
        }
    }

    pub fn times(self, n: u64) -> Resources {
        Resources {
            millicpus: self.millicpus.saturating_mul(n),
            memory_mib: self.memory_mib.saturating_mul(n),
        }
    }

    /// Both fit within `o`.
    pub fn within(self, o: Resources) -> bool {
        self.millicpus <= o.millicpus && self.memory_mib <= o.memory_mib
    }
}

/// A checked spec, with what one instance takes from a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub spec: ServiceSpec,
    pub memory_mib: Option<u64>,
    /// Per instance, including a microVM's VMM overhead.
    pub request: Resources,
}

/// A service file is at most this big.
pub const MAX_FILE_BYTES: usize = 64 << 10;
/// Brackets nested deeper than this are refused before parsing: the YAML
/// parser takes time quadratic in flow nesting (100k levels: ~50 s here).
pub const MAX_FLOW_DEPTH: usize = 32;

fn flow_depth(text: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Whether YAML `text` holds an anchor (`&a`) or alias (`*a`) token: a `&`
/// or `*` where a value starts (line start, after `: `, `- `, `[`, `{`,
/// `,`), outside quotes. Aliases repeat what they name: a 30 KiB string
/// aliased 8000 times in a 64 KiB file is 240 MiB once parsed.
fn has_anchor_or_alias(text: &str) -> bool {
    for line in text.lines() {
        let (mut quote, mut value_start) = (None::<char>, true);
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '\'' | '"') => quote = Some(c),
                (None, '#') if value_start => break,
                (None, '&' | '*') if value_start => return true,
                (None, ' ' | '\t') => {}
                (None, '[' | '{' | ',' | '-') => value_start = true,
                (None, ':') => value_start = true,
                (None, _) => value_start = false,
            }
        }
    }
    false
}

/// Parses a service file: JSON when it starts with `{`, else YAML.
pub fn parse(text: &str) -> Result<Service, SpecError> {
    let spec: ServiceSpec = if guard(text)? {
        serde_json::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| SpecError::Syntax(e.to_string()))?
    };
    check(spec)
}

/// The checks every file passes before it is parsed (size, nesting,
/// anchors); whether it is JSON.
pub(crate) fn guard(text: &str) -> Result<bool, SpecError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(SpecError::Syntax(format!(
            "{} bytes: a service file is at most {MAX_FILE_BYTES}",
            text.len()
        )));
    }
    if flow_depth(text) > MAX_FLOW_DEPTH {
        return Err(SpecError::Syntax(format!(
            "brackets nested deeper than {MAX_FLOW_DEPTH}"
        )));
    }
    let json = text.trim_start().starts_with('{');
    if !json && has_anchor_or_alias(text) {
        return Err(SpecError::Syntax("YAML anchors and aliases (&name, *name) are not accepted; quote a value that starts with & or *".into()));
    }
    Ok(json)
}

/// Every field in range; what one instance needs from a node.
pub fn check(spec: ServiceSpec) -> Result<Service, SpecError> {
    if !crate::state::paths::valid_name(&spec.name) {
        return Err(field(
            "name",
            format!(
                "{:?}: 1-64 of letters, digits, '_', '.', '-', starting with a letter or digit",
                spec.name
            ),
        ));
    }
    if spec.image.trim().is_empty() || spec.image.chars().any(char::is_whitespace) {
        return Err(field(
            "image",
            format!("{:?}: an image reference (e.g. busybox:latest)", spec.image),
        ));
    }
    if spec.replicas > MAX_REPLICAS {
        return Err(field(
            "replicas",
            format!("{} is over the limit of {MAX_REPLICAS}", spec.replicas),
        ));
    }
    if let Some(c) = spec.cpus {
        if !(c.is_finite() && c > 0.0 && c <= MAX_CPUS) {
            return Err(field(
                "cpus",
                format!("{c}: more than 0, at most {MAX_CPUS}"),
            ));
        }
    }
    let memory_mib = spec
        .memory
        .as_deref()
        .map(|m| {
            crate::runtime::limits::memory_for(spec.runtime, m)
                .map_err(|e| field("memory", e.to_string()))
        })
        .transpose()?;
    if let Some(m) = memory_mib {
        if !(16..=MAX_MEMORY_MIB).contains(&m) {
            return Err(field(
                "memory",
                format!("{m} MiB: between 16 MiB and {MAX_MEMORY_MIB} MiB"),
            ));
        }
    }
    for k in spec.env.keys() {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(field(
                "env",
                format!("{k:?}: a variable name (no '=', not empty)"),
            ));
        }
        if k.starts_with("BULKHEAD_") {
            return Err(field("env", format!("{k:?}: BULKHEAD_* names are the node's (it sets the instance's identity there)")));
        }
    }
    if spec.env.values().any(|v| v.contains('\0')) || spec.command.iter().any(|a| a.contains('\0'))
    {
        return Err(field("command", "no NUL bytes in arguments or values"));
    }
    let mut ports = Vec::new();
    for p in &spec.ports {
        let parsed =
            crate::network::Publish::parse(p).map_err(|e| field("ports", e.to_string()))?;
        // The node's own ports and addresses are not a tenant's to take.
        if parsed.host_port < 1024 {
            return Err(field(
                "ports",
                format!("{p}: host ports below 1024 are the node's; publish on 1024 or above"),
            ));
        }
        if parsed
            .host_ip
            .is_some_and(|ip| ip.is_loopback() || ip.is_link_local() || ip.is_multicast())
        {
            return Err(field(
                "ports",
                format!("{p}: a tenant publishes on the node's public addresses, not loopback or link-local"),
            ));
        }
        if let Some(q) = ports
            .iter()
            .find(|q: &&crate::network::Publish| q.clashes(&parsed))
        {
            return Err(field(
                "ports",
                format!("{p} and {q} claim the same host port"),
            ));
        }
        ports.push(parsed);
    }
    if !ports.is_empty() && !spec.placement.anti_affinity && spec.replicas > 1 {
        return Err(field(
            "ports",
            "replicas that publish a host port need placement.anti_affinity: true (one per node)",
        ));
    }
    let deny = |d: &str| {
        crate::network::egress::parse_deny(d)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let allow = |a: &str| crate::network::egress::check_tenant_allow(a).map(|_| ());
    type Check = dyn Fn(&str) -> Result<(), String>;
    for (name, list, check) in [
        ("egress.allow", &spec.egress.allow, &allow as &Check),
        ("egress.deny", &spec.egress.deny, &deny as &Check),
    ] {
        if list.len() > crate::network::egress::MAX_ALLOWS {
            return Err(field(
                name,
                format!(
                    "{} entries: at most {}",
                    list.len(),
                    crate::network::egress::MAX_ALLOWS
                ),
            ));
        }
        for c in list {
            check(c).map_err(|why| field(name, format!("{c:?}: {why}")))?;
        }
    }
    for (k, v) in &spec.placement.labels {
        if !valid_label(k) || !valid_label(v) {
            return Err(field(
                "placement.labels",
                format!("{k:?}={v:?}: 1-63 of letters, digits, '-', '_', '.', '/'"),
            ));
        }
    }
    if let Some(h) = &spec.health {
        h.ask()?;
    }
    if let Some(s) = &spec.stack {
        if !crate::state::paths::valid_name(s) {
            return Err(field(
                "stack",
                format!("{s:?}: letters, digits, '_', '.', '-', starting with a letter or digit"),
            ));
        }
    }
    let request = instance_request(spec.runtime, spec.cpus, memory_mib);
    Ok(Service {
        spec,
        memory_mib,
        request,
    })
}

/// Node label keys and values.
pub fn valid_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
}

/// What one instance takes from a node: a microVM its vCPUs (whole) and
/// guest memory plus the VMM's overhead (the same the jail's cgroup
/// allows), a container its limits.
pub fn instance_request(
    runtime: RuntimeKind,
    cpus: Option<f64>,
    memory_mib: Option<u64>,
) -> Resources {
    match runtime {
        RuntimeKind::Microvm => Resources {
            millicpus: u64::from(limits::vm_vcpus(cpus)) * 1000,
            memory_mib: memory_mib
                .unwrap_or(DEFAULT_VM.memory_mib)
                .saturating_add(limits::VMM_OVERHEAD_MIB),
        },
        RuntimeKind::Container => Resources {
            millicpus: cpus.map_or(DEFAULT_CONTAINER.millicpus, limits::millicpus),
            memory_mib: memory_mib.unwrap_or(DEFAULT_CONTAINER.memory_mib),
        },
    }
}

#[cfg(test)]
mod tests;
