//! A workload's health check as its config keeps it, and its health as its
//! supervisor finds it (`health.json` beside `running.json`), with Docker's
//! rules: one success makes it healthy; `retries` failures in a row make it
//! unhealthy; failures in the start period do not count until the first
//! success.

use serde::{Deserialize, Serialize};

/// `500ms`, `10s`, `5m`, `1h`, or plain seconds -> milliseconds.
pub fn parse_duration_ms(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a number with ms, s, m or h (e.g. 10s)"))?;
    let mult = match unit {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{s:?}: the unit is ms, s, m or h")),
    };
    n.checked_mul(mult)
        .filter(|ms| *ms <= 7 * 24 * 3_600_000)
        .ok_or_else(|| format!("{s:?}: at most a week"))
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Probe {
    /// These arguments run inside the workload, as `exec` does (the
    /// image's `CMD-SHELL` and `--health-cmd` come as `/bin/sh -c CMD`):
    /// healthy when they exit 0.
    Exec(Vec<String>),
    /// A TCP connection to the workload's port is accepted.
    Tcp { port: u16 },
    /// `GET path` on the workload's port answers 2xx or 3xx.
    Http { port: u16, path: String },
}

/// A health check: the probe and its timing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSpec {
    pub probe: Probe,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub start_period_ms: u64,
    pub retries: u32,
}

/// Bounds every check is held to, whoever wrote it.
pub const MIN_INTERVAL_MS: u64 = 1_000;
pub const MIN_TIMEOUT_MS: u64 = 100;
pub const MAX_DURATION_MS: u64 = 86_400_000;
pub const MAX_RETRIES: u32 = 1_000;
/// Results kept in `health.json` (Docker keeps 5 too).
const LOG_LEN: usize = 5;
/// Bytes of a probe's output kept per result.
pub const OUTPUT_BYTES: usize = 4096;

impl HealthSpec {
    /// Whether it is within the bounds; the reason names the setting.
    pub fn check(&self) -> Result<(), String> {
        let within = |v: u64, min: u64, what: &str| {
            if (min..=MAX_DURATION_MS).contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "health check {what}: from {min} ms to a day, not {v} ms"
                ))
            }
        };
        within(self.interval_ms, MIN_INTERVAL_MS, "interval")?;
        within(self.timeout_ms, MIN_TIMEOUT_MS, "timeout")?;
        within(self.start_period_ms, 0, "start period")?;
        if !(1..=MAX_RETRIES).contains(&self.retries) {
            return Err(format!(
                "health check retries: from 1 to {MAX_RETRIES}, not {}",
                self.retries
            ));
        }
        match &self.probe {
            Probe::Exec(args) if args.is_empty() || args[0].is_empty() => {
                Err("health check command: empty".into())
            }
            Probe::Exec(args) if args.iter().map(String::len).sum::<usize>() > 64 * 1024 => {
                Err("health check command: longer than 64 KiB".into())
            }
            Probe::Tcp { port: 0 } | Probe::Http { port: 0, .. } => {
                Err("health check port: from 1 to 65535".into())
            }
            Probe::Http { path, .. }
                if !path.starts_with('/')
                    || path.len() > 2048
                    || path.bytes().any(|b| b.is_ascii_control() || b == b' ') =>
            {
                Err(format!(
                    "health check path {path:?}: starts with '/', no spaces or control characters, at most 2048 bytes"
                ))
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthStatus::Starting => "health: starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        })
    }
}

/// One probe's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub start_ms: u64,
    pub end_ms: u64,
    pub healthy: bool,
    /// The command's exit status (exec probes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The command's output or what went wrong, cut to `OUTPUT_BYTES`.
    pub output: String,
}

/// `health.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u32,
    pub log: Vec<ProbeResult>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            status: HealthStatus::Starting,
            failing_streak: 0,
            log: Vec::new(),
        }
    }
}

impl Health {
    /// Takes one result; `in_start_period`: the workload started less
    /// than the start period ago.
    pub fn record(&mut self, r: ProbeResult, in_start_period: bool, retries: u32) {
        if r.healthy {
            self.status = HealthStatus::Healthy;
            self.failing_streak = 0;
        } else if !(in_start_period && self.status == HealthStatus::Starting) {
            self.failing_streak = self.failing_streak.saturating_add(1);
            if self.failing_streak >= retries.max(1) {
                self.status = HealthStatus::Unhealthy;
            }
        }
        self.log.push(r);
        let over = self.log.len().saturating_sub(LOG_LEN);
        self.log.drain(..over);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(healthy: bool) -> ProbeResult {
        ProbeResult {
            start_ms: 1,
            end_ms: 2,
            healthy,
            exit_code: Some(i32::from(!healthy)),
            output: String::new(),
        }
    }

    #[test]
    fn dockers_rules_for_status_streak_and_start_period() {
        let mut h = Health::default();
        h.record(result(false), true, 2);
        h.record(result(false), true, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 0));
        h.record(result(false), false, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Starting, 1));
        h.record(result(false), false, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Unhealthy, 2));
        h.record(result(true), false, 2);
        assert_eq!((h.status, h.failing_streak), (HealthStatus::Healthy, 0));
        // Once healthy, the start period no longer hides failures.
        h.record(result(false), true, 2);
        assert_eq!(h.failing_streak, 1);
        for _ in 0..10 {
            h.record(result(true), false, 2);
        }
        assert_eq!(h.log.len(), LOG_LEN);
    }

    #[test]
    fn checks_outside_the_bounds_name_the_setting() {
        let ok = HealthSpec {
            probe: Probe::Http {
                port: 80,
                path: "/healthz".into(),
            },
            interval_ms: 1_000,
            timeout_ms: 500,
            start_period_ms: 0,
            retries: 3,
        };
        assert_eq!(ok.check(), Ok(()));
        let bad = |f: &dyn Fn(&mut HealthSpec)| {
            let mut s = ok.clone();
            f(&mut s);
            s.check().err().unwrap_or_default()
        };
        assert!(bad(&|s| s.interval_ms = 10).contains("interval"));
        assert!(bad(&|s| s.timeout_ms = MAX_DURATION_MS + 1).contains("timeout"));
        assert!(bad(&|s| s.retries = 0).contains("retries"));
        assert!(bad(&|s| s.probe = Probe::Exec(vec![])).contains("command"));
        assert!(bad(&|s| s.probe = Probe::Tcp { port: 0 }).contains("port"));
        for path in ["healthz", "/a b", "/a\r\nX: y"] {
            assert!(
                bad(&|s| s.probe = Probe::Http {
                    port: 80,
                    path: path.into()
                })
                .contains("path"),
                "{path:?}"
            );
        }
    }
}
