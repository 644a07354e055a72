//! The supervisor's health checker: the workload's check every interval,
//! each probe cut off at its timeout, the outcome in `health.json` (see
//! `state::health` for the rules). Exec probes run inside the workload as
//! `exec` does (a microVM's through its agent); TCP and HTTP probes connect
//! from the host to the workload's address, as a load balancer would. The
//! workload's answers are hostile input: HTTP goes through hyper, output is
//! cut to a few KiB.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bulkhead_agent_proto::ProcessSpec;

use super::attach::ExitReport;
use super::workload::{Control, Proc};
use crate::state::health::{Health, HealthSpec, Probe, ProbeResult, OUTPUT_BYTES};
use crate::state::record::now_ms;
use bulkhead_images::store::healthcheck::{
    HealthTest, Healthcheck, DEFAULT_INTERVAL, DEFAULT_RETRIES, DEFAULT_TIMEOUT,
};

/// What `run` (flags) or a service (its `health`) asks of the check; unset
/// values come from the image's HEALTHCHECK, then Docker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthAsk {
    /// Replaces the image's probe.
    pub probe: Option<Probe>,
    pub interval_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub start_period_ms: Option<u64>,
    pub retries: Option<u32>,
    /// No check at all, whatever the image says (`--no-healthcheck`).
    pub off: bool,
}

/// The check a workload gets: the ask over the image's HEALTHCHECK (an
/// image's `NONE` turns it off; so does `off`), checked against the bounds.
pub fn spec_for(
    image: Option<&Healthcheck>,
    ask: &HealthAsk,
) -> Result<Option<HealthSpec>, String> {
    if ask.off {
        return Ok(None);
    }
    let from_image = image.and_then(|h| match &h.test {
        HealthTest::Off => None,
        HealthTest::Exec(args) => Some(Probe::Exec(args.clone())),
        HealthTest::Shell(cmd) => Some(Probe::Exec(vec![
            "/bin/sh".into(),
            "-c".into(),
            cmd.clone(),
        ])),
    });
    let Some(probe) = ask.probe.clone().or(from_image) else {
        return Ok(None);
    };
    let ms = |d: Option<std::time::Duration>, default: std::time::Duration| {
        u64::try_from(d.unwrap_or(default).as_millis()).unwrap_or(u64::MAX)
    };
    let spec = HealthSpec {
        probe,
        interval_ms: ask
            .interval_ms
            .unwrap_or_else(|| ms(image.map(|h| h.interval), DEFAULT_INTERVAL)),
        timeout_ms: ask
            .timeout_ms
            .unwrap_or_else(|| ms(image.map(|h| h.timeout), DEFAULT_TIMEOUT)),
        start_period_ms: ask
            .start_period_ms
            .unwrap_or_else(|| ms(image.map(|h| h.start_period), std::time::Duration::ZERO)),
        retries: ask
            .retries
            .unwrap_or_else(|| image.map_or(DEFAULT_RETRIES, |h| h.retries)),
    };
    spec.check()?;
    Ok(Some(spec))
}

/// Starts a process in the workload (the supervisor's backend).
pub type Exec = Box<
    dyn Fn(ProcessSpec) -> Pin<Box<dyn Future<Output = Result<Proc, ExitReport>> + Send>>
        + Send
        + Sync,
>;

/// Runs `spec` until dropped (the supervisor aborts it when the workload
/// ends), writing each new state to `file`.
pub async fn run(
    spec: HealthSpec,
    base: ProcessSpec,
    addr: Option<Ipv4Addr>,
    exec: Exec,
    file: PathBuf,
) {
    let started = now_ms();
    let mut health = Health::default();
    let _ = write(&file, &health);
    let mut tick = tokio::time::interval(Duration::from_millis(spec.interval_ms));
    tick.tick().await; // the first check comes one interval after the start, as Docker's
    loop {
        tick.tick().await;
        let start_ms = now_ms();
        let timeout = Duration::from_millis(spec.timeout_ms);
        let (healthy, exit_code, output) = match &spec.probe {
            Probe::Exec(args) => {
                let mut p = base.clone();
                p.args.clone_from(args);
                p.tty = false;
                p.tty_size = None;
                p.stdin = false;
                probe_exec(&exec, p, timeout).await
            }
            Probe::Tcp { port } => match addr {
                Some(a) => probe_tcp(SocketAddr::from((a, *port)), timeout).await,
                None => (false, None, "no network address to connect to".into()),
            },
            Probe::Http { port, path } => match addr {
                Some(a) => probe_http(SocketAddr::from((a, *port)), path, timeout).await,
                None => (false, None, "no network address to connect to".into()),
            },
        };
        let in_start = now_ms().saturating_sub(started) < spec.start_period_ms;
        health.record(
            ProbeResult {
                start_ms,
                end_ms: now_ms(),
                healthy,
                exit_code,
                output: cut(output),
            },
            in_start,
            spec.retries,
        );
        let _ = write(&file, &health);
    }
}

fn write(file: &std::path::Path, h: &Health) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(h).map_err(std::io::Error::other)?;
    bulkhead_images::private::replace(file, &bytes)
}

fn cut(mut s: String) -> String {
    if s.len() > OUTPUT_BYTES {
        let mut end = OUTPUT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

async fn probe_exec(exec: &Exec, p: ProcessSpec, timeout: Duration) -> (bool, Option<i32>, String) {
    let mut proc = match exec(p).await {
        Ok(proc) => proc,
        Err(r) => {
            return (
                false,
                Some(r.code),
                r.error.unwrap_or_else(|| "could not start".into()),
            )
        }
    };
    let mut out = Vec::new();
    let run = async {
        while let Some((_, chunk)) = proc.output.recv().await {
            let room = OUTPUT_BYTES.saturating_sub(out.len());
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        (&mut proc.exit).await
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(r)) => (
            r.code == 0,
            Some(r.code),
            String::from_utf8_lossy(&out).into_owned(),
        ),
        Ok(Err(_)) => (false, None, "the probe's process was lost".into()),
        Err(_) => {
            let _ = proc.control.send(Control::Signal(libc::SIGKILL)).await;
            (
                false,
                None,
                format!("no answer within {} ms", timeout.as_millis()),
            )
        }
    }
}

async fn probe_tcp(addr: SocketAddr, timeout: Duration) -> (bool, Option<i32>, String) {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => (true, None, format!("connected to {addr}")),
        Ok(Err(e)) => (false, None, format!("connect to {addr}: {e}")),
        Err(_) => (
            false,
            None,
            format!(
                "connect to {addr}: no answer within {} ms",
                timeout.as_millis()
            ),
        ),
    }
}

async fn probe_http(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> (bool, Option<i32>, String) {
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("http: {e}"))?;
        let conn = tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .map_err(|e| format!("http request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("http: {e}"))?;
        conn.abort();
        Ok::<u16, String>(resp.status().as_u16())
    };
    match tokio::time::timeout(timeout, get).await {
        Ok(Ok(code)) => (
            (200..400).contains(&code),
            None,
            format!("GET {path}: {code}"),
        ),
        Ok(Err(e)) => (false, None, e),
        Err(_) => (
            false,
            None,
            format!("GET {path}: no answer within {} ms", timeout.as_millis()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A one-shot HTTP server on loopback answering `status` (or hanging).
    fn serve_once(answer: Option<&'static str>) -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            if let Ok((mut s, _)) = l.accept() {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                match answer {
                    Some(a) => {
                        let _ = s.write_all(a.as_bytes());
                    }
                    None => std::thread::sleep(Duration::from_secs(2)),
                }
            }
        });
        addr
    }

    #[test]
    fn http_probes_want_2xx_or_3xx_and_refuse_garbage_and_silence() {
        let rt = rt();
        let t = Duration::from_millis(500);
        let ok = serve_once(Some("HTTP/1.1 204 No Content\r\n\r\n"));
        assert!(rt.block_on(probe_http(ok, "/healthz", t)).0);
        let bad = serve_once(Some(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
        ));
        let r = rt.block_on(probe_http(bad, "/", t));
        assert!(!r.0 && r.2.contains("503"), "{r:?}");
        let garbage = serve_once(Some("\u{1b}[31mnot http at all\r\n\r\n"));
        assert!(!rt.block_on(probe_http(garbage, "/", t)).0);
        let silent = serve_once(None);
        let r = rt.block_on(probe_http(silent, "/", t));
        assert!(!r.0 && r.2.contains("no answer"), "{r:?}");
    }

    #[test]
    fn tcp_probes_need_a_listener() {
        let rt = rt();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        assert!(rt.block_on(probe_tcp(addr, Duration::from_millis(500))).0);
        drop(l);
        assert!(!rt.block_on(probe_tcp(addr, Duration::from_millis(500))).0);
    }

    #[test]
    fn the_ask_goes_over_the_image_and_none_turns_it_off() {
        let image = Healthcheck {
            test: HealthTest::Shell("curl -f localhost".into()),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            start_period: Duration::from_secs(5),
            retries: 4,
        };
        let s = spec_for(Some(&image), &HealthAsk::default())
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a check"));
        assert_eq!(
            s,
            HealthSpec {
                probe: Probe::Exec(vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "curl -f localhost".into()
                ]),
                interval_ms: 10_000,
                timeout_ms: 2_000,
                start_period_ms: 5_000,
                retries: 4,
            }
        );
        let ask = HealthAsk {
            probe: Some(Probe::Tcp { port: 5432 }),
            interval_ms: Some(1_000),
            ..HealthAsk::default()
        };
        let s = spec_for(Some(&image), &ask)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a check"));
        assert_eq!(
            (s.probe, s.interval_ms, s.retries),
            (Probe::Tcp { port: 5432 }, 1_000, 4)
        );
        let off = HealthAsk {
            off: true,
            ..ask.clone()
        };
        assert_eq!(spec_for(Some(&image), &off), Ok(None));
        let none = Healthcheck {
            test: HealthTest::Off,
            ..image
        };
        assert_eq!(spec_for(Some(&none), &HealthAsk::default()), Ok(None));
        assert_eq!(spec_for(None, &HealthAsk::default()), Ok(None));
        // Docker's defaults without an image check; the bounds hold.
        let s = spec_for(None, &ask)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("a check"));
        assert_eq!((s.timeout_ms, s.retries), (30_000, 3));
        let fast = HealthAsk {
            interval_ms: Some(10),
            ..ask
        };
        assert!(spec_for(None, &fast).is_err_and(|e| e.contains("interval")));
    }

    #[test]
    fn output_is_cut_on_a_character_boundary() {
        let s = "é".repeat(OUTPUT_BYTES);
        let c = cut(s);
        assert!(c.len() <= OUTPUT_BYTES && c.chars().all(|ch| ch == 'é'));
    }
}
