//! Pulls from a real registry (Debian's docker-registry on loopback) of an
//! image pushed by skopeo: by tag and by digest, a re-pull that fetches
//! nothing, a wrong digest, basic auth, and bearer tokens from a token server.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use bulkhead_images::store::pull::{pull, PullOptions};
use bulkhead_images::store::{import, Store};
use common::{unpack, Fixture, Registry, TokenServer};

fn insecure() -> PullOptions {
    PullOptions {
        insecure: true,
        basic_auth: None,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn pull_by_tag_and_digest_repull_is_a_no_op_and_a_wrong_digest_fails() {
    let f = Fixture::new();
    let reg = Registry::start(None);
    reg.push(&f.path("layout"), "busybox:t", None);
    let store = Store::open(f.path("store")).unwrap();
    let fetched = AtomicU64::new(0);
    let progress = |_: &bulkhead_images::store::Digest, done: u64, _total: u64| {
        fetched.fetch_max(done, Ordering::Relaxed);
    };
    let name = format!("{}/busybox:t", reg.addr);
    let got = rt()
        .block_on(pull(&store, &name, &insecure(), &progress))
        .unwrap();
    assert_eq!(got.names, std::slice::from_ref(&name));
    assert!(fetched.load(Ordering::Relaxed) > 0, "blobs were streamed");

    // The same tree as importing the layout the registry was fed from.
    let local = Store::open(f.path("local")).unwrap();
    import::import(&local, &f.path("layout"), Some("busybox:t")).unwrap();
    assert_eq!(
        unpack(&store, &name, &f.path("pulled")),
        unpack(&local, "busybox:t", &f.path("imported"))
    );

    // Again: nothing to fetch.
    fetched.store(0, Ordering::Relaxed);
    let again = rt()
        .block_on(pull(&store, &name, &insecure(), &progress))
        .unwrap();
    assert_eq!(
        (again.manifest.clone(), fetched.load(Ordering::Relaxed)),
        (got.manifest.clone(), 0)
    );

    // By digest, into a fresh store.
    let fresh = Store::open(f.path("fresh")).unwrap();
    let by_digest = format!("{}/busybox@{}", reg.addr, got.manifest);
    let d = rt()
        .block_on(pull(&fresh, &by_digest, &insecure(), &|_, _, _| {}))
        .unwrap();
    assert_eq!(d.manifest, got.manifest);
    assert!(fresh.image(&d.manifest).is_ok());

    let wrong = format!("{}/busybox@sha256:{}", reg.addr, "0".repeat(64));
    assert!(rt()
        .block_on(pull(&fresh, &wrong, &insecure(), &|_, _, _| {}))
        .is_err());
    assert!(rt()
        .block_on(pull(
            &fresh,
            &format!("{}/nope:t", reg.addr),
            &insecure(),
            &|_, _, _| {}
        ))
        .is_err());
}

#[test]
fn basic_auth_is_needed_and_used() {
    let f = Fixture::new();
    let reg = Registry::start(Some(("tester", "s3cret")));
    reg.push(&f.path("layout"), "private:t", Some("tester:s3cret"));
    let store = Store::open(f.path("store")).unwrap();
    let name = format!("{}/private:t", reg.addr);
    let anon = rt().block_on(pull(&store, &name, &insecure(), &|_, _, _| {}));
    assert!(anon.is_err(), "anonymous pull of a private image: {anon:?}");
    let opts = PullOptions {
        insecure: true,
        basic_auth: Some(("tester".into(), "s3cret".into())),
    };
    let got = rt()
        .block_on(pull(&store, &name, &opts, &|_, _, _| {}))
        .unwrap();
    assert!(store.image(&got.manifest).is_ok());
}

#[test]
fn bearer_tokens_from_the_registrys_token_server_are_fetched_and_used() {
    let f = Fixture::new();
    let tokens = TokenServer::start("tester", "t0ken-pass");
    let reg = Registry::start_token(&tokens);
    reg.push(&f.path("layout"), "tokened:t", Some("tester:t0ken-pass"));
    let store = Store::open(f.path("store")).unwrap();
    let name = format!("{}/tokened:t", reg.addr);
    let anon = rt().block_on(pull(&store, &name, &insecure(), &|_, _, _| {}));
    assert!(anon.is_err(), "anonymous pull behind token auth: {anon:?}");
    let wrong = PullOptions {
        insecure: true,
        basic_auth: Some(("tester".into(), "nope".into())),
    };
    assert!(
        rt().block_on(pull(&store, &name, &wrong, &|_, _, _| {}))
            .is_err(),
        "a wrong password gets no token"
    );
    let opts = PullOptions {
        insecure: true,
        basic_auth: Some(("tester".into(), "t0ken-pass".into())),
    };
    let got = rt()
        .block_on(pull(&store, &name, &opts, &|_, _, _| {}))
        .unwrap();
    assert!(store.image(&got.manifest).is_ok());
    assert!(!unpack(&store, &name, &f.path("pulled")).is_empty());
}
