//! When a failed instance starts again: exponential backoff (default 10 s
//! doubling to a 5 min cap), the streak forgotten once an instance ran long
//! enough (default 10 min). Time comes from a `Clock`, so tests drive it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::spec::RestartPolicy;

/// Milliseconds on some monotonic scale.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// CLOCK_MONOTONIC (never steps back with the wall clock).
#[derive(Debug, Default, Clone, Copy)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        crate::state::fencing::monotonic_ms()
    }
}

/// Wall-clock milliseconds: what servers that take over from each other
/// (possibly on other hosts) agree on, kept in sync by NTP.
#[derive(Debug, Default, Clone, Copy)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        crate::state::record::now_ms()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct FakeClock(AtomicU64);

impl FakeClock {
    pub fn at(ms: u64) -> Self {
        FakeClock(AtomicU64::new(ms))
    }

    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackoffPolicy {
    pub initial_ms: u64,
    pub cap_ms: u64,
    /// A run at least this long forgets the streak of failures.
    pub reset_after_ms: u64,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial_ms: 10_000,
            cap_ms: 300_000,
            reset_after_ms: 600_000,
        }
    }
}

/// One instance's restart bookkeeping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarts {
    /// Restarts so far (shown to users; never reset).
    pub total: u32,
    /// Failures in a row since the last long enough run.
    pub streak: u32,
    /// Not before this time (`Clock::now_ms`).
    pub next_at_ms: Option<u64>,
}

/// Whether an instance that ended with `code` starts again.
pub fn wants_restart(policy: RestartPolicy, code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => code != 0,
        RestartPolicy::Never => false,
    }
}

impl Restarts {
    /// The instance started at `started_ms` ended at `ended_ms`: when it
    /// may start again (`None`: its policy says never).
    pub fn ended(
        &mut self,
        policy: RestartPolicy,
        backoff: &BackoffPolicy,
        code: i32,
        started_ms: u64,
        ended_ms: u64,
    ) -> Option<u64> {
        if !wants_restart(policy, code) {
            self.next_at_ms = None;
            return None;
        }
        if ended_ms.saturating_sub(started_ms) >= backoff.reset_after_ms {
            self.streak = 0;
        }
        let delay = backoff
            .initial_ms
            .saturating_mul(1u64.checked_shl(self.streak).unwrap_or(u64::MAX))
            .min(backoff.cap_ms);
        self.streak = self.streak.saturating_add(1);
        let at = ended_ms.saturating_add(delay);
        self.next_at_ms = Some(at);
        Some(at)
    }

    /// Due now (the reconciler starts it and counts it).
    pub fn due(&self, now_ms: u64) -> bool {
        self.next_at_ms.is_some_and(|at| now_ms >= at)
    }

    pub fn started(&mut self) {
        self.total = self.total.saturating_add(1);
        self.next_at_ms = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash loop on a fake clock: 10, 20, 40, 80, 160 s, then 300 s
    /// each; a 10-minute run starts over at 10 s; exit 0 under on-failure
    /// and anything under never stay down.
    #[test]
    fn the_default_schedule_on_a_fake_clock() {
        let clock = FakeClock::at(1_000);
        let policy = BackoffPolicy::default();
        let mut r = Restarts::default();
        let mut delays = Vec::new();
        for _ in 0..8 {
            let started = clock.now_ms();
            clock.advance(Duration::from_secs(1)); // it crashes after a second
            let at = r
                .ended(RestartPolicy::Always, &policy, 1, started, clock.now_ms())
                .unwrap_or(0);
            delays.push((at - clock.now_ms()) / 1000);
            assert!(!r.due(clock.now_ms()) && !r.due(at - 1));
            clock.advance(Duration::from_millis(at - clock.now_ms()));
            assert!(r.due(clock.now_ms()));
            r.started();
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(r.total, 8);
        let started = clock.now_ms();
        clock.advance(Duration::from_secs(600));
        let at = r.ended(RestartPolicy::Always, &policy, 137, started, clock.now_ms());
        assert_eq!(
            at,
            Some(clock.now_ms() + 10_000),
            "ten minutes up: the streak is forgotten"
        );
        let started = clock.now_ms();
        clock.advance(Duration::from_secs(599));
        assert_eq!(
            r.ended(RestartPolicy::Always, &policy, 1, started, clock.now_ms()),
            Some(clock.now_ms() + 20_000),
            "a minute short of it: not"
        );
        assert_eq!(
            r.ended(
                RestartPolicy::OnFailure,
                &policy,
                0,
                started,
                clock.now_ms()
            ),
            None
        );
        assert_eq!(r.next_at_ms, None);
        assert!(r
            .ended(
                RestartPolicy::OnFailure,
                &policy,
                3,
                started,
                clock.now_ms()
            )
            .is_some());
        assert_eq!(
            r.ended(RestartPolicy::Never, &policy, 3, started, clock.now_ms()),
            None
        );
    }

    #[test]
    fn long_streaks_and_short_schedules_do_not_overflow() {
        let policy = BackoffPolicy {
            initial_ms: 100,
            cap_ms: 400,
            reset_after_ms: 1_000,
        };
        let mut r = Restarts {
            total: u32::MAX,
            streak: 200,
            next_at_ms: None,
        };
        assert_eq!(
            r.ended(RestartPolicy::Always, &policy, 1, 0, u64::MAX - 10),
            Some(u64::MAX)
        );
        r.started();
        assert_eq!(r.total, u32::MAX);
        let mut fresh = Restarts::default();
        let d: Vec<u64> = (0..4)
            .map(|i| {
                fresh
                    .ended(RestartPolicy::Always, &policy, 1, i * 10, i * 10 + 5)
                    .unwrap_or(0)
                    - (i * 10 + 5)
            })
            .collect();
        assert_eq!(d, [100, 200, 400, 400]);
    }
}
