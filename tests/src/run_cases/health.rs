//! What the run table checks of health checks (`--health-cmd`, run by the
//! workload's supervisor inside it): failing checks make the workload
//! unhealthy after `--health-retries` in a row, one passing check makes it
//! healthy again, `ps` and `inspect` show it; bad settings are refused
//! before anything is made.

use super::*;
use std::time::Duration;

/// `inspect NAME`'s health status once it is `want`, within `limit`
/// (checked every 200 ms: the supervisor writes it once per interval).
fn health_becomes(ctx: &Ctx, name: &str, want: &str, limit: Duration) -> (bool, String) {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let o = ctx.bh(&["inspect", name]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        if v["health"]["status"] == want {
            return (true, v["health"].to_string());
        }
        let last = format!("{} / {}", v["health"], show(&o));
        if std::time::Instant::now() > deadline {
            return (false, last);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(super) fn check_health(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    // A microVM's exec goes through its agent, in an emulated machine here.
    let limit = Duration::from_secs(if ctx.runtime == "microvm" { 90 } else { 30 });
    let o = ctx.out(ctx.run_cmd(
        &[
            "-d",
            "--name",
            "hc",
            "--health-cmd",
            "echo probing; test -f /tmp/ok",
            "--health-interval",
            "1s",
            "--health-retries",
            "2",
        ],
        &["sleep", "3600"],
    ));
    let (unhealthy, detail) = health_becomes(ctx, "hc", "unhealthy", limit);
    let v: serde_json::Value =
        serde_json::from_slice(&ctx.bh(&["inspect", "hc"]).stdout).unwrap_or_default();
    let last = &v["health"]["log"][v["health"]["log"]
        .as_array()
        .map_or(0, |l| l.len().max(1) - 1)];
    check(
        "health-failing-makes-unhealthy",
        o.status.success()
            && unhealthy
            && v["health"]["failing_streak"].as_u64() >= Some(2)
            && last["exit_code"] == 1
            && last["output"]
                .as_str()
                .is_some_and(|s| s.contains("probing")),
        format!("{} / {detail}", show(&o)),
    );
    let touched = ctx.bh(&["exec", "hc", "touch", "/tmp/ok"]);
    let (healthy, detail) = health_becomes(ctx, "hc", "healthy", limit);
    let ps = ctx.bh(&["ps"]);
    check(
        "health-passing-makes-healthy",
        touched.status.success()
            && healthy
            && text(&ps.stdout)
                .lines()
                .any(|l| l.contains(" hc ") && l.contains("(healthy)")),
        format!("{} / {detail} / {}", show(&touched), show(&ps)),
    );
    let rm = ctx.bh(&["rm", "-f", "hc"]);

    // Refused before anything is made: a too-short interval, and no check
    // together with a check.
    let before = ctx.bh(&["ps", "-a", "--format", "json"]);
    let fast = ctx.out(ctx.run_cmd(
        &["--rm", "--health-cmd", "true", "--health-interval", "10ms"],
        &["true"],
    ));
    let both = ctx.out(ctx.run_cmd(
        &["--rm", "--no-healthcheck", "--health-cmd", "true"],
        &["true"],
    ));
    let after = ctx.bh(&["ps", "-a", "--format", "json"]);
    check(
        "health-bad-settings-refused",
        rm.status.success()
            && fast.status.code() == Some(125)
            && text(&fast.stderr).contains("interval")
            && both.status.code() == Some(125)
            && text(&both.stderr).contains("--no-healthcheck")
            && before.stdout == after.stdout,
        format!("{} / {} / {}", show(&rm), show(&fast), show(&both)),
    );
}
