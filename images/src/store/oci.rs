//! The OCI/Docker JSON documents we read, parsed strictly enough and no
//! further (unknown fields are ignored: registries add their own).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::digest::Digest;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// An OCI index or Docker manifest list.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// The parts of an image config bulkhead uses.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// The image's HEALTHCHECK, kept as the image wrote it (decoded and
    /// checked by [`RunConfig::healthcheck`]): an odd value here never
    /// makes the whole config unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<serde_json::Value>,
}

impl Index {
    /// The linux/amd64 manifest, or the only one when there is one.
    pub fn pick(&self) -> Option<&Descriptor> {
        let amd64 = self.manifests.iter().find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        });
        amd64.or(if self.manifests.len() == 1 {
            self.manifests.first()
        } else {
            None
        })
    }
}

impl RunConfig {
    /// The image's HEALTHCHECK, decoded; `Ok(None)` where it has none.
    pub fn healthcheck(
        &self,
    ) -> Result<Option<super::healthcheck::Healthcheck>, super::healthcheck::HealthcheckError> {
        match &self.healthcheck {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(raw) => super::healthcheck::decode(raw),
        }
    }

    /// The agent's process spec for this image: Entrypoint + Cmd, Env,
    /// WorkingDir, User (CLI overrides come later, in `bulkhead run`).
    pub fn process_spec(&self) -> bulkhead_agent_proto::ProcessSpec {
        let args = self
            .entrypoint
            .iter()
            .flatten()
            .chain(self.cmd.iter().flatten())
            .cloned()
            .collect();
        bulkhead_agent_proto::ProcessSpec {
            args,
            env: self.env.clone().unwrap_or_default(),
            cwd: self.working_dir.clone().filter(|w| !w.is_empty()),
            user: self.user.clone().filter(|u| !u.is_empty()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_spec_comes_from_entrypoint_cmd_env_workdir_user() {
        let c: ImageConfig = serde_json::from_str(r#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh","-c"],"Cmd":["echo hi"],"Env":["PATH=/bin"],"WorkingDir":"/srv","User":"1000:1000","ExposedPorts":{"80/tcp":{}},"StopSignal":"SIGQUIT","Labels":{"x":"y"}}}"#).unwrap_or_else(|e| panic!("{e}"));
        let p = c.config.process_spec();
        assert_eq!(p.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(
            (p.env, p.cwd.as_deref(), p.user.as_deref()),
            (
                vec!["PATH=/bin".to_string()],
                Some("/srv"),
                Some("1000:1000")
            )
        );
        assert_eq!(c.config.healthcheck(), Ok(None));
    }

    #[test]
    fn the_healthcheck_is_kept_and_a_bad_one_spoils_nothing_else() {
        let good: ImageConfig = serde_json::from_str(r#"{"config":{"Cmd":["nginx"],"Healthcheck":{"Test":["CMD-SHELL","wget -q -O- localhost"],"Interval":10000000000}}}"#).unwrap_or_else(|e| panic!("{e}"));
        let h = good.config.healthcheck().ok().flatten();
        assert_eq!(h.map(|h| h.interval.as_secs()), Some(10));
        // Written back (the store keeps configs as pulled; inspect shows it).
        let again: ImageConfig =
            serde_json::from_str(&serde_json::to_string(&good).unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, good);
        let bad: ImageConfig = serde_json::from_str(
            r#"{"config":{"Cmd":["nginx"],"Healthcheck":{"Test":"oops","Interval":-5}}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bad.config.process_spec().args, ["nginx"], "the rest reads");
        assert!(bad.config.healthcheck().is_err());
    }

    #[test]
    fn an_index_picks_linux_amd64() {
        let i: Index = serde_json::from_str(&format!(
            r#"{{"manifests":[{{"digest":"{a}","size":1,"platform":{{"architecture":"arm64","os":"linux"}}}},{{"digest":"{b}","size":2,"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
            a = Digest::of(b"a"),
            b = Digest::of(b"b")
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(i.pick().map(|d| d.size), Some(2));
    }
}
