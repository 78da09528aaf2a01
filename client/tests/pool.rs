//! `Pool` against a test server: one connection per address, shared by concurrent callers,
//! replaced once closed.

mod common;

use client::{CallError, Pool};
use common::{Action, Config, TestServer, DEADLINE};
use protocol::{Request, Response};
use tokio::net::TcpListener;
use tokio::time::timeout;

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_gets_of_one_address_share_one_connection() {
    let server = TestServer::start(Config::new("Server1")).await;
    let pool = Pool::new("lb");
    let gets = (0..20).map(|_| {
        let pool = pool.clone();
        let addr = server.addr;
        tokio::spawn(async move { pool.get(addr).await })
    });
    let conns: Vec<_> = timeout(DEADLINE, futures::future::join_all(gets))
        .await
        .expect("gets hung")
        .into_iter()
        .map(|joined| joined.expect("task panicked").expect("get"))
        .collect();
    assert_eq!(server.accepts(), 1, "concurrent gets opened several connections");
    for conn in &conns {
        assert_eq!(conn.server_name(), "Server1");
        assert_eq!(conn.local_addr(), conns[0].local_addr(), "two different connections");
    }

    // A later get reuses it too.
    let again = pool.get(server.addr).await.expect("get");
    assert_eq!(again.local_addr(), conns[0].local_addr());
    assert_eq!(
        again.call(Request::Home).await.expect("home"),
        Response::Home { name: "Server1".into() }
    );
    assert_eq!(server.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn get_reconnects_after_the_server_drops_the_connection() {
    let config = Config::new("Server1").decide(|req| match req {
        Request::Heartbeat => Action::Hangup,
        _ => Action::Answer,
    });
    let server = TestServer::start(config).await;
    let pool = Pool::new("lb");
    let first = pool.get(server.addr).await.expect("get");
    let result = timeout(DEADLINE, first.call(Request::Heartbeat)).await.expect("hung");
    assert!(matches!(result, Err(CallError::Disconnected)), "{result:?}");
    assert!(first.is_closed());

    let second = pool.get(server.addr).await.expect("reconnect");
    assert!(!second.is_closed());
    assert_ne!(second.local_addr(), first.local_addr(), "the closed connection was handed out");
    assert_eq!(server.accepts(), 2);
    assert_eq!(
        second.call(Request::Home).await.expect("home"),
        Response::Home { name: "Server1".into() }
    );
}

#[tokio::test]
async fn remove_forgets_the_connection_but_its_holders_keep_it() {
    let server = TestServer::start(Config::new("Server1")).await;
    let pool = Pool::new("lb");
    let first = pool.get(server.addr).await.expect("get");
    pool.remove(server.addr);
    let second = pool.get(server.addr).await.expect("get after remove");
    assert_ne!(second.local_addr(), first.local_addr());
    assert_eq!(server.accepts(), 2);
    assert!(first.call(Request::Heartbeat).await.is_ok(), "a removed connection still works");
}

#[tokio::test]
async fn a_failed_connect_is_not_remembered() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let pool = Pool::new("lb");
    let err = timeout(DEADLINE, pool.get(addr)).await.expect("get hung").expect_err("port closed");
    assert!(err.is_retryable(), "{err}");

    // The same address starts serving: the next get connects instead of repeating the error.
    let listener = TcpListener::bind(addr).await.expect("rebind the same port");
    let server = TestServer::start_on(listener, Config::new("Server2"));
    let conn = pool.get(addr).await.expect("get after the server came up");
    assert_eq!(conn.server_name(), "Server2");
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn addresses_whose_connection_closed_are_forgotten_on_the_next_connect() {
    let gone = TestServer::start(Config::new("Server1").decide(|req| match req {
        Request::Heartbeat => Action::Hangup,
        _ => Action::Answer,
    }))
    .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let never = listener.local_addr().expect("addr");
    drop(listener);
    let pool = Pool::new("lb");
    let first = pool.get(gone.addr).await.expect("get");
    let result = timeout(DEADLINE, first.call(Request::Heartbeat)).await.expect("hung");
    assert!(matches!(result, Err(CallError::Disconnected)), "{result:?}");
    assert!(timeout(DEADLINE, pool.get(never)).await.expect("get hung").is_err());
    assert_eq!(pool.addresses(), 2, "both addresses are remembered until a connect");

    // A server under a new address (as a respawned node gets): connecting to it drops the
    // closed connection's address and the one that never connected, not the open one.
    let replacement = TestServer::start(Config::new("Server1")).await;
    let open = TestServer::start(Config::new("Server2")).await;
    let kept = pool.get(open.addr).await.expect("get");
    assert_eq!(pool.addresses(), 1, "the dead addresses are still remembered");
    pool.get(replacement.addr).await.expect("get");
    assert_eq!(pool.addresses(), 2);
    let again = pool.get(open.addr).await.expect("get");
    assert_eq!(again.local_addr(), kept.local_addr(), "an open connection was dropped");
    assert_eq!(open.accepts(), 1);
}
