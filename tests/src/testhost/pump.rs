//! The event loop both modes share: output chunks from reader threads, the
//! exit of the process that runs it all, and a deadline.

use std::io::Read;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use super::Stream;

/// Where bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Out(Stream),
    Control,
    Collect,
    /// Beats from the nested test host while it is alive.
    Heartbeat,
}

#[derive(Debug)]
pub enum Event {
    Data(Channel, Vec<u8>),
    /// A channel reached EOF.
    Closed,
    /// The process we wait for ended (its raw wait status rendered later).
    Exited(std::process::ExitStatus),
}

/// What heartbeats must look like: the first within `first_within` of the
/// start, then no gap longer than `silence`.
#[derive(Debug, Clone, Copy)]
pub struct Heartbeat {
    pub first_within: Duration,
    pub silence: Duration,
}

/// Everything the loop gathered.
#[derive(Debug, Default)]
pub struct Gathered {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub control: Vec<u8>,
    pub collect: Vec<u8>,
    pub exit: Option<std::process::ExitStatus>,
    pub timed_out: bool,
    /// Heartbeats had started and then stopped for longer than allowed.
    pub frozen: bool,
}

/// Reads `reader` to EOF on a thread, sending chunks as they come.
pub fn spawn_reader(mut reader: impl Read + Send + 'static, channel: Channel, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Event::Data(channel, buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

/// Runs until the process exited and every one of `channels` closed. At the
/// deadline, or when `heartbeat` says the machine froze, it
/// calls `kill` once and keeps draining (the kill makes the process exit and
/// its channels close).
pub fn pump(
    rx: &Receiver<Event>,
    channels: usize,
    deadline: Instant,
    heartbeat: Option<Heartbeat>,
    kill: &mut dyn FnMut(),
    sink: &mut dyn FnMut(Stream, &[u8]),
) -> Gathered {
    let mut g = Gathered::default();
    let mut open = channels;
    // When the machine counts as frozen if no beat comes first.
    let mut frozen_at = heartbeat.map(|h| Instant::now() + h.first_within);
    let mut killed = false;
    while g.exit.is_none() || open > 0 {
        let until = frozen_at.map_or(deadline, |f| f.min(deadline));
        let event = if killed {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(until.saturating_duration_since(Instant::now()))
        };
        match event {
            Ok(Event::Data(ch, data)) => match ch {
                Channel::Out(s) => {
                    sink(s, &data);
                    if s == Stream::Stdout {
                        g.stdout.extend(data)
                    } else {
                        g.stderr.extend(data)
                    }
                }
                Channel::Control => g.control.extend(data),
                Channel::Collect => g.collect.extend(data),
                Channel::Heartbeat => frozen_at = heartbeat.map(|h| Instant::now() + h.silence),
            },
            Ok(Event::Closed) => open = open.saturating_sub(1),
            Ok(Event::Exited(status)) => {
                g.exit = Some(status);
                // Beats end with the machine; only the deadline is left.
                frozen_at = None;
            }
            Err(RecvTimeoutError::Timeout) => {
                if Instant::now() >= deadline {
                    g.timed_out = true;
                } else {
                    g.frozen = true;
                }
                killed = true;
                kill();
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    g
}

/// Runs `child` to its end or `deadline`: its piped stdout and stderr stream
/// through `sink`; at the deadline it is killed with SIGKILL (its whole
/// process group when `group`, for a child started with `process_group(0)`).
pub fn watch_child(
    mut child: std::process::Child,
    deadline: Instant,
    group: bool,
    sink: &mut dyn FnMut(Stream, &[u8]),
) -> Gathered {
    let (tx, rx) = std::sync::mpsc::channel();
    let mut channels = 0;
    if let Some(out) = child.stdout.take() {
        spawn_reader(out, Channel::Out(Stream::Stdout), tx.clone());
        channels += 1;
    }
    if let Some(err) = child.stderr.take() {
        spawn_reader(err, Channel::Out(Stream::Stderr), tx.clone());
        channels += 1;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    std::thread::spawn(move || {
        if let Ok(status) = child.wait() {
            let _ = tx.send(Event::Exited(status));
        }
    });
    let mut kill = || {
        let _ = if group {
            nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL)
        } else {
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
        };
    };
    pump(&rx, channels, deadline, None, &mut kill, sink)
}

/// 0-255 like a shell reports it: the code, or 128+N when killed by signal N.
pub fn shell_status(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Feeds `events`, then answers a kill by ending the process.
    fn run(events: Vec<Event>, deadline: Duration, heartbeat: Option<Heartbeat>) -> Gathered {
        let (tx, rx) = mpsc::channel();
        for e in events {
            tx.send(e).unwrap();
        }
        let killer = tx.clone();
        let mut kill = move || {
            killer.send(Event::Closed).unwrap();
            killer
                .send(Event::Exited(
                    std::os::unix::process::ExitStatusExt::from_raw(9),
                ))
                .unwrap();
        };
        pump(
            &rx,
            1,
            Instant::now() + deadline,
            heartbeat,
            &mut kill,
            &mut |_, _| {},
        )
    }

    fn beats(first_within_ms: u64, silence_ms: u64) -> Option<Heartbeat> {
        Some(Heartbeat {
            first_within: Duration::from_millis(first_within_ms),
            silence: Duration::from_millis(silence_ms),
        })
    }

    #[test]
    fn silence_after_heartbeats_is_a_freeze() {
        let g = run(
            vec![Event::Data(Channel::Heartbeat, vec![b'\n'])],
            Duration::from_secs(60),
            beats(60_000, 50),
        );
        assert!(g.frozen && !g.timed_out);
    }

    #[test]
    fn no_first_beat_in_time_is_a_freeze() {
        let g = run(
            vec![Event::Data(Channel::Out(Stream::Stdout), b"x".to_vec())],
            Duration::from_secs(60),
            beats(50, 60_000),
        );
        assert!(g.frozen && !g.timed_out);
        assert_eq!(g.stdout, b"x");
    }

    #[test]
    fn without_heartbeat_watch_only_the_deadline_counts() {
        let g = run(
            vec![Event::Data(Channel::Out(Stream::Stdout), b"x".to_vec())],
            Duration::from_millis(100),
            None,
        );
        assert!(g.timed_out && !g.frozen);
    }

    #[test]
    fn an_exit_ends_the_watch_for_heartbeats() {
        let exited = Event::Exited(std::os::unix::process::ExitStatusExt::from_raw(0));
        let g = run(
            vec![Event::Data(Channel::Heartbeat, vec![b'\n']), exited],
            Duration::from_millis(200),
            beats(10, 10),
        );
        // The channel stays open past the exit: the deadline ends it, not a freeze.
        assert!(!g.frozen && g.timed_out);
    }
}
