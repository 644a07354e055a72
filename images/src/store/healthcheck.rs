//! An image's HEALTHCHECK, as Docker writes it into the image config
//! (`config.Healthcheck`: `Test`, and durations in nanoseconds). Kept raw
//! by the config reader, so an odd value never makes a whole image
//! unusable, and decoded here, checked, when something needs it.

use std::time::Duration;

/// What the check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthTest {
    /// `NONE`: the image turns off a check its base image had.
    Off,
    /// `CMD`: these arguments, executed directly.
    Exec(Vec<String>),
    /// `CMD-SHELL`: this command, through the image's shell.
    Shell(String),
}

/// A decoded HEALTHCHECK with Docker's defaults where it leaves a value at 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Healthcheck {
    pub test: HealthTest,
    pub interval: Duration,
    pub timeout: Duration,
    pub start_period: Duration,
    pub retries: u32,
}

/// Docker's defaults: every 30 s, 30 s to answer, 3 failures in a row.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;

/// Why an image's HEALTHCHECK cannot be used; the message names the field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HealthcheckError {
    #[error("the image's Healthcheck is not an object")]
    NotAnObject,
    #[error("the image's Healthcheck.Test: {0}")]
    Test(&'static str),
    #[error("the image's Healthcheck.{0}: a number of nanoseconds from 0 to one day")]
    Duration(&'static str),
    #[error("the image's Healthcheck.Retries: a number from 0 to 1000")]
    Retries,
}

/// Decodes `raw` (the config's `Healthcheck` value). `Ok(None)`: the
/// image has none (an empty `Test` inherits, and nothing is inherited here).
pub fn decode(raw: &serde_json::Value) -> Result<Option<Healthcheck>, HealthcheckError> {
    let obj = raw.as_object().ok_or(HealthcheckError::NotAnObject)?;
    let test = match obj.get("Test") {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(t) => t
            .as_array()
            .ok_or(HealthcheckError::Test("a list of strings"))?
            .iter()
            .map(|s| s.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or(HealthcheckError::Test("a list of strings"))?,
    };
    let test = match test.split_first() {
        None => return Ok(None),
        Some((kind, rest)) => match (kind.as_str(), rest) {
            ("NONE", []) => HealthTest::Off,
            ("NONE", _) => return Err(HealthcheckError::Test("NONE takes no arguments")),
            ("CMD", []) => return Err(HealthcheckError::Test("CMD needs a command")),
            ("CMD", args) => HealthTest::Exec(args.to_vec()),
            ("CMD-SHELL", [cmd]) if !cmd.trim().is_empty() => HealthTest::Shell(cmd.clone()),
            ("CMD-SHELL", _) => {
                return Err(HealthcheckError::Test("CMD-SHELL takes one command string"))
            }
            _ => return Err(HealthcheckError::Test("starts with NONE, CMD or CMD-SHELL")),
        },
    };
    let duration = |field: &'static str, default: Duration| -> Result<Duration, HealthcheckError> {
        match obj.get(field) {
            None | Some(serde_json::Value::Null) => Ok(default),
            Some(v) => match v.as_u64() {
                Some(0) => Ok(default),
                Some(ns) if ns <= 86_400_000_000_000 => Ok(Duration::from_nanos(ns)),
                _ => Err(HealthcheckError::Duration(field)),
            },
        }
    };
    let retries = match obj.get("Retries") {
        None | Some(serde_json::Value::Null) => DEFAULT_RETRIES,
        Some(v) => match v.as_u64() {
            Some(0) => DEFAULT_RETRIES,
            Some(n) if n <= 1000 => u32::try_from(n).map_err(|_| HealthcheckError::Retries)?,
            _ => return Err(HealthcheckError::Retries),
        },
    };
    Ok(Some(Healthcheck {
        test,
        interval: duration("Interval", DEFAULT_INTERVAL)?,
        timeout: duration("Timeout", DEFAULT_TIMEOUT)?,
        start_period: duration("StartPeriod", Duration::ZERO)?,
        retries,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Result<Option<Healthcheck>, HealthcheckError> {
        decode(&serde_json::from_str(s).unwrap_or_else(|e| panic!("{s}: {e}")))
    }

    #[test]
    fn dockers_forms_decode_with_its_defaults() {
        let h = d(r#"{"Test":["CMD-SHELL","curl -f http://localhost/ || exit 1"],"Interval":5000000000,"Retries":2}"#)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a check"));
        assert_eq!(
            h,
            Healthcheck {
                test: HealthTest::Shell("curl -f http://localhost/ || exit 1".into()),
                interval: Duration::from_secs(5),
                timeout: DEFAULT_TIMEOUT,
                start_period: Duration::ZERO,
                retries: 2,
            }
        );
        let h = d(r#"{"Test":["CMD","/bin/check","--fast"],"Timeout":0,"StartPeriod":1000000}"#)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a check"));
        assert_eq!(
            h.test,
            HealthTest::Exec(vec!["/bin/check".into(), "--fast".into()])
        );
        assert_eq!(
            (h.timeout, h.start_period, h.retries),
            (DEFAULT_TIMEOUT, Duration::from_millis(1), 3)
        );
        assert_eq!(
            d(r#"{"Test":["NONE"]}"#).ok().flatten().map(|h| h.test),
            Some(HealthTest::Off)
        );
        assert_eq!(
            d(r#"{"Test":[]}"#),
            Ok(None),
            "empty: inherit, nothing here"
        );
        assert_eq!(d(r#"{}"#), Ok(None));
    }

    #[test]
    fn malformed_checks_are_refused_naming_the_field() {
        for (raw, want) in [
            ("[]", HealthcheckError::NotAnObject),
            ("\"CMD true\"", HealthcheckError::NotAnObject),
            (
                r#"{"Test":"CMD true"}"#,
                HealthcheckError::Test("a list of strings"),
            ),
            (
                r#"{"Test":["CMD",1]}"#,
                HealthcheckError::Test("a list of strings"),
            ),
            (
                r#"{"Test":["CMD"]}"#,
                HealthcheckError::Test("CMD needs a command"),
            ),
            (
                r#"{"Test":["CMD-SHELL"]}"#,
                HealthcheckError::Test("CMD-SHELL takes one command string"),
            ),
            (
                r#"{"Test":["CMD-SHELL","a","b"]}"#,
                HealthcheckError::Test("CMD-SHELL takes one command string"),
            ),
            (
                r#"{"Test":["CMD-SHELL","  "]}"#,
                HealthcheckError::Test("CMD-SHELL takes one command string"),
            ),
            (
                r#"{"Test":["NONE","x"]}"#,
                HealthcheckError::Test("NONE takes no arguments"),
            ),
            (
                r#"{"Test":["RUN","x"]}"#,
                HealthcheckError::Test("starts with NONE, CMD or CMD-SHELL"),
            ),
            (
                r#"{"Test":["CMD","x"],"Interval":-1}"#,
                HealthcheckError::Duration("Interval"),
            ),
            (
                r#"{"Test":["CMD","x"],"Timeout":1.5}"#,
                HealthcheckError::Duration("Timeout"),
            ),
            (
                r#"{"Test":["CMD","x"],"StartPeriod":"1s"}"#,
                HealthcheckError::Duration("StartPeriod"),
            ),
            (
                r#"{"Test":["CMD","x"],"Interval":18446744073709551615}"#,
                HealthcheckError::Duration("Interval"),
            ),
            (
                r#"{"Test":["CMD","x"],"Retries":-3}"#,
                HealthcheckError::Retries,
            ),
            (
                r#"{"Test":["CMD","x"],"Retries":4294967296}"#,
                HealthcheckError::Retries,
            ),
        ] {
            assert_eq!(d(raw), Err(want), "{raw}");
        }
    }
}
