//! One accept loop for both APIs, the server's (plain or TLS) and each
//! node's, with the limits an unauthenticated peer meets before anything
//! else runs:
//!
//! - a cap on connections, below the descriptor limit so that the daemon
//!   always keeps descriptors of its own (lease renewal, its store, its
//!   children), and a cap per peer address;
//! - a deadline for the TLS handshake and for each request's headers,
//!   which also ends keep-alive connections that sit idle (hyper starts
//!   the header timer when it waits for the next request);
//! - when a cap is reached, the oldest connection with no request in
//!   flight makes room (idle and slow-header ones first go), so a flood of
//!   idle connections cannot lock out a client that sends a request; when
//!   every connection is busy the new one is closed at once.
//!
//! nginx's `limit_conn` and `client_header_timeout`, and the eviction of
//! idle connections that Envoy's overload manager does, are the models.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::sync::Notify;

/// Descriptors the daemon keeps for itself whatever its peers do.
pub const RESERVED_FDS: u64 = 128;
/// The most connections either API holds, descriptors allowing.
pub const MAX_CONNECTIONS: usize = 4096;
/// The most connections from one address.
pub const MAX_PER_PEER: usize = 64;
/// How long a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's headers may take to arrive, and how long a
/// keep-alive connection may wait for its next request.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body either API reads (a service spec is a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// What [`serve`] allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub per_peer: usize,
    pub handshake: Duration,
    pub headers: Duration,
}

impl Limits {
    /// The defaults, with the connection cap under this process's soft
    /// descriptor limit less [`RESERVED_FDS`].
    pub fn for_this_process() -> Limits {
        let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft);
        let room = usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX);
        Limits {
            connections: room.clamp(16, MAX_CONNECTIONS),
            per_peer: MAX_PER_PEER,
            handshake: HANDSHAKE_TIMEOUT,
            headers: HEADER_TIMEOUT,
        }
    }
}

/// One open connection as the table sees it.
struct Conn {
    peer: IpAddr,
    opened: Instant,
    /// Requests in flight (their response bodies included), and served.
    busy: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    evict: Arc<Notify>,
}

/// The open connections; a connection's task removes its entry when it
/// ends, an eviction removes it at once.
#[derive(Default)]
struct Table {
    conns: HashMap<u64, Conn>,
    next: u64,
}

impl Table {
    fn count_from(&self, peer: IpAddr) -> usize {
        self.conns.values().filter(|c| c.peer == peer).count()
    }

    /// Evicts a connection with no request in flight among those `which`
    /// picks: the oldest that never made a request, else the oldest idle
    /// keep-alive one; false if every one is busy.
    fn evict_oldest_idle(&mut self, which: impl Fn(&Conn) -> bool) -> bool {
        let victim = self
            .conns
            .iter()
            .filter(|(_, c)| which(c) && c.busy.load(Ordering::SeqCst) == 0)
            .min_by_key(|(_, c)| (c.served.load(Ordering::SeqCst) > 0, c.opened))
            .map(|(id, _)| *id);
        match victim.and_then(|id| self.conns.remove(&id)) {
            Some(c) => {
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Enters a connection from `peer`, making room under the per-peer
    /// cap, or says there is none. (The global cap is the descriptors'
    /// semaphore in [`serve`].)
    fn admit(&mut self, peer: IpAddr, limits: &Limits) -> Option<Admitted> {
        if self.count_from(peer) >= limits.per_peer && !self.evict_oldest_idle(|c| c.peer == peer) {
            return None;
        }
        let a = Admitted {
            id: self.next,
            busy: Arc::default(),
            served: Arc::default(),
            evict: Arc::default(),
        };
        self.next += 1;
        self.conns.insert(
            a.id,
            Conn {
                peer,
                opened: Instant::now(),
                busy: Arc::clone(&a.busy),
                served: Arc::clone(&a.served),
                evict: Arc::clone(&a.evict),
            },
        );
        Some(a)
    }
}

/// A connection let in: its id in the table and what its task shares.
struct Admitted {
    id: u64,
    busy: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
    evict: Arc<Notify>,
}

/// Counts one request in flight until it is dropped (with its response body).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(a: &Admitted) -> InFlight {
        a.served.fetch_add(1, Ordering::SeqCst);
        a.busy.fetch_add(1, Ordering::SeqCst);
        InFlight(Arc::clone(&a.busy))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) within `limits` until
/// `stop` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Limits,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let table = Arc::new(Mutex::new(Table::default()));
    // One permit per connection's descriptor, given back when the
    // connection is closed (not when it is told to close).
    let fds = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut stop => return Ok(()),
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors despite the cap: let some close.
                    eprintln!("bulkhead: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Full: the oldest idle connection goes, and this one waits (a
        // second at most) until its descriptor is closed. None idle: this
        // one goes at once.
        let permit = match Arc::clone(&fds).try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let evicted = table
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .evict_oldest_idle(|_| true);
                let freed =
                    tokio::time::timeout(Duration::from_secs(1), Arc::clone(&fds).acquire_owned());
                match (evicted, freed.await) {
                    (true, Ok(Ok(p))) => p,
                    _ => continue,
                }
            }
        };
        let admitted = table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(peer.ip(), &limits);
        let Some(admitted) = admitted else {
            continue; // its address is at its cap with busy connections
        };
        let (acceptor, app, table) = (acceptor.clone(), app.clone(), Arc::clone(&table));
        tokio::spawn(async move {
            let (id, evict) = (admitted.id, Arc::clone(&admitted.evict));
            tokio::select! {
                _ = evict.notified() => {}
                _ = connection(tcp, acceptor, app, admitted, &limits) => {}
            }
            // The connection (its descriptor) is dropped by now.
            drop(permit);
            table
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .conns
                .remove(&id);
        });
    }
}

/// One connection: the handshake (if TLS), then HTTP/1.1 requests.
async fn connection(
    tcp: tokio::net::TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    admitted: Admitted,
    limits: &Limits,
) {
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let in_flight = InFlight::enter(&admitted);
        let mut app = app.clone();
        async move {
            let resp = tower_service::Service::call(&mut app, req.map(axum::body::Body::new)).await;
            // The request stays in flight until its response body is done.
            resp.map(|r| {
                r.map(|b| {
                    axum::body::Body::new(b.map_frame(move |f| {
                        let _ = &in_flight;
                        f
                    }))
                })
            })
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.headers);
    match acceptor {
        None => {
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        }
        Some(acceptor) => {
            let Ok(Ok(stream)) = tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await
            else {
                return;
            };
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    }
}

/// A refused authentication waits this long before its answer, and the
/// connection closes after it: guessing is slow, and costs a connection.
pub const FAILED_AUTH_DELAY: Duration = Duration::from_millis(500);

/// Middleware: delays every 401 answer by [`FAILED_AUTH_DELAY`] and closes
/// its connection.
pub async fn delay_refusals(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut resp = next.run(req).await;
    if resp.status() == axum::http::StatusCode::UNAUTHORIZED {
        tokio::time::sleep(FAILED_AUTH_DELAY).await;
        resp.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// The limits every router of ours gets: the body cap and the delay on
/// refused authentication.
pub fn limited(router: axum::Router) -> axum::Router {
    router
        .layer(axum::middleware::from_fn(delay_refusals))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: usize, per_peer: usize) -> Limits {
        Limits {
            connections,
            per_peer,
            handshake: HANDSHAKE_TIMEOUT,
            headers: HEADER_TIMEOUT,
        }
    }

    #[test]
    fn the_oldest_idle_connection_goes_first_and_never_a_busy_one() {
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let l = limits(100, 2);
        let mut t = Table::default();
        let first = t.admit(a, &l).unwrap();
        let second = t.admit(a, &l).unwrap();
        let in_flight = InFlight::enter(&first); // a request on the first
                                                 // a's third: over its per-peer cap, so its oldest idle one (the second) goes.
        let third = t.admit(a, &l).unwrap();
        assert!(!t.conns.contains_key(&second.id) && t.conns.contains_key(&first.id));
        // The table's cap: the oldest idle one overall is a's third.
        let b1 = t.admit(b, &l).unwrap();
        assert!(t.evict_oldest_idle(|_| true));
        assert!(!t.conns.contains_key(&third.id) && t.conns.contains_key(&first.id));
        // The first's request ended: idle now, but it served one, so the
        // newer b1 that never asked anything goes before it.
        drop(in_flight);
        assert!(t.evict_oldest_idle(|_| true));
        assert!(!t.conns.contains_key(&b1.id) && t.conns.contains_key(&first.id));
        // Everything busy: nothing is evicted, and a newcomer over its
        // address's cap is refused.
        let _again = InFlight::enter(&first);
        let a2 = t.admit(a, &l).unwrap();
        let _busy = InFlight::enter(&a2);
        assert!(!t.evict_oldest_idle(|_| true));
        assert!(t.admit(a, &l).is_none());
        assert_eq!(t.conns.len(), 2);
    }

    #[test]
    fn the_connection_cap_stays_under_the_descriptor_limit() {
        let l = Limits::for_this_process();
        let (soft, _) =
            nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        assert!(l.connections <= MAX_CONNECTIONS);
        assert!(
            u64::try_from(l.connections).unwrap() + RESERVED_FDS <= soft.max(16 + RESERVED_FDS)
        );
    }
}
