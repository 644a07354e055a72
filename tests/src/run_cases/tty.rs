//! What the run table checks of terminals (`-t`): the workload sees one,
//! and output written just before a quick exit is not lost. The OCI
//! runtime's copy between two ptys once dropped it on a loaded host (crun
//! stops copying when its child exits); the supervisor now reads the pty
//! crun makes itself, so quick `-t` runs, four at once on a host kept busy,
//! each keep theirs (the old way lost 10-20% of them so).

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

pub(super) fn check_tty(ctx: &Ctx, check: &mut impl FnMut(&str, bool, String)) {
    let o = ctx.out(ctx.run_cmd(
        &["--rm", "-t"],
        &["sh", "-c", "test -t 0 && test -t 1 && echo is-a-tty"],
    ));
    check(
        "tty",
        o.status.code() == Some(0) && text(&o.stdout).contains("is-a-tty"),
        show(&o),
    );
    // A microVM's start costs seconds in the emulated test host: this
    // load is a container's.
    if ctx.runtime != "container" {
        return;
    }
    let busy = AtomicBool::new(true);
    let lost: Vec<String> = std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while busy.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            });
        }
        // The spinners stop however this closure ends.
        let _stop = StopOnDrop(&busy);
        let runs: Vec<_> = (0..4)
            .map(|t| {
                s.spawn(move || {
                    let mut lost = Vec::new();
                    for i in 0..10 {
                        let word = format!("quick-{t}-{i}");
                        let o = ctx.out(ctx.run_cmd(
                            &["--rm", "-t"],
                            &["sh", "-c", &format!("echo {word}; exit 3")],
                        ));
                        if o.status.code() != Some(3) || !text(&o.stdout).contains(&word) {
                            lost.push(format!("{word}: {}", show(&o)));
                        }
                    }
                    lost
                })
            })
            .collect();
        runs.into_iter()
            .flat_map(|r| {
                r.join()
                    .unwrap_or_else(|_| vec!["a run thread panicked".into()])
            })
            .collect()
    });
    check(
        "tty-quick-output-kept-40-runs-4-at-once-on-a-busy-host",
        lost.is_empty(),
        format!("{lost:?}"),
    );
}
