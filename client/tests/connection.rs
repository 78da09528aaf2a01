//! `Connection` against a test server: pipelining, out-of-order answers, remote errors,
//! disconnects, timeouts, handshake failures and shutdown on drop.

mod common;

use std::time::Duration;

use client::{CallError, ConnectOptions, Connection, Error};
use common::{poll_until, read, Action, Config, TestServer, DEADLINE};
use futures::{SinkExt, StreamExt};
use protocol::{ErrorBody, ErrorKind, Request, RequestFrame, Response, ResponseFrame};
use rand::Rng;
use tokio::net::TcpListener;
use tokio::time::timeout;

#[test]
fn connections_and_pools_can_be_shared_between_tasks() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<Connection>();
    shareable::<client::Pool>();
}

/// Runs `n` calls at once, each from its own task, and checks each got the answer to its own
/// request.
async fn call_concurrently(conn: &Connection, n: i64) {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { (i, conn.call(read(i)).await) })
        })
        .collect();
    for task in tasks {
        let (i, result) = timeout(DEADLINE, task).await.expect("call hung").expect("task panicked");
        match result {
            Ok(Response::Read { applied_lsn, .. }) => {
                assert_eq!(applied_lsn, i as u64, "call {i} got another call's answer")
            }
            other => panic!("call {i}: expected a read answer, got {other:?}"),
        }
    }
    assert_eq!(conn.in_flight(), 0);
    assert!(!conn.is_closed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_calls_each_get_their_own_answer() {
    let server = TestServer::start(Config::new("Server1")).await;
    let conn = Connection::connect(server.addr, "test").await.expect("connect");
    assert_eq!(conn.server_name(), "Server1");
    assert_eq!(conn.peer_addr(), server.addr);
    call_concurrently(&conn, 1000).await;
    assert_eq!(server.received(), 1000);
    assert_eq!(server.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_in_reverse_order_reach_their_own_callers() {
    // The server holds every answer until all 1000 requests are in, then answers the last
    // first: every call is in flight at once and no answer comes in request order.
    let server = TestServer::start(Config::new("Server1").reverse_batch(1000)).await;
    let conn = Connection::connect(server.addr, "test").await.expect("connect");
    call_concurrently(&conn, 1000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn answers_in_random_order_reach_their_own_callers() {
    let config = Config::new("Server1").decide(|_| {
        Action::AnswerAfter(Duration::from_millis(rand::thread_rng().gen_range(0..20)))
    });
    let server = TestServer::start(config).await;
    let conn = Connection::connect(server.addr, "test").await.expect("connect");
    call_concurrently(&conn, 1000).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_error_comes_back_typed_and_the_connection_stays_usable() {
    let config = Config::new("Server1").decide(|req| match req {
        Request::Delete(d) if d.key == 7 => {
            Action::Fail(ErrorBody::not_found(format!("no row with Stud_id {}", d.key)))
        }
        _ => Action::Answer,
    });
    let server = TestServer::start(config).await;
    let conn = Connection::connect(server.addr, "test").await.expect("connect");

    let delete =
        |key| Request::Delete(protocol::DeleteReq { shard: "sh1".into(), key, only_if: None });
    match conn.call(delete(7)).await {
        Err(CallError::Remote(body)) => {
            assert_eq!(body.kind, ErrorKind::NotFound);
            assert_eq!(body.message, "<Error> no row with Stud_id 7");
        }
        other => panic!("expected a remote not-found error, got {other:?}"),
    }
    assert_eq!(conn.call(delete(8)).await.expect("delete 8"), Response::Deleted { key: 8, lsn: 8 });
    assert_eq!(
        conn.call(Request::Home).await.expect("home"),
        Response::Home { name: "Server1".into() }
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_in_flight_get_disconnected_when_the_server_hangs_up() {
    // Reads are never answered; a heartbeat makes the server close the connection.
    let config = Config::new("Server1").decide(|req| match req {
        Request::Heartbeat => Action::Hangup,
        _ => Action::Ignore,
    });
    let server = TestServer::start(config).await;
    let conn = Connection::connect(server.addr, "test").await.expect("connect");

    let waiting: Vec<_> = (0..50)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.call(read(i)).await })
        })
        .collect();
    server.wait_received(50).await;
    assert_eq!(conn.in_flight(), 50);

    let hangup = timeout(DEADLINE, conn.call(Request::Heartbeat)).await.expect("heartbeat hung");
    assert!(matches!(hangup, Err(CallError::Disconnected)), "{hangup:?}");
    for task in waiting {
        let result = timeout(DEADLINE, task).await.expect("a waiting call hung").expect("panic");
        assert!(matches!(result, Err(CallError::Disconnected)), "{result:?}");
    }
    assert!(conn.is_closed());
    assert_eq!(conn.in_flight(), 0);

    // A closed connection fails at once instead of waiting for a timeout.
    let later = timeout(Duration::from_secs(1), conn.call(Request::Home)).await;
    assert!(matches!(later, Ok(Err(CallError::Disconnected))), "{later:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_times_out_while_others_on_the_connection_succeed() {
    // Read 13 is never answered; the others are, a little late, so they overlap it.
    let config = Config::new("Server1").decide(|req| match req {
        Request::Read(r) if r.low == 13 => Action::Ignore,
        _ => Action::AnswerAfter(Duration::from_millis(20)),
    });
    let server = TestServer::start(config).await;
    let limit = Duration::from_millis(300);
    let options = ConnectOptions { request_timeout: Some(limit), ..ConnectOptions::default() };
    let conn = Connection::connect_with(server.addr, "test", options).await.expect("connect");

    let started = tokio::time::Instant::now();
    let stuck = {
        let conn = conn.clone();
        tokio::spawn(async move { conn.call(read(13)).await })
    };
    let others: Vec<_> = (100..120)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { (i, conn.call(read(i)).await) })
        })
        .collect();
    for task in others {
        let (i, result) = timeout(DEADLINE, task).await.expect("hung").expect("panic");
        assert!(
            matches!(result, Ok(Response::Read { applied_lsn, .. }) if applied_lsn == i as u64)
        );
    }
    let result = timeout(DEADLINE, stuck).await.expect("the stuck call hung").expect("panic");
    assert!(matches!(result, Err(CallError::Timeout)), "{result:?}");
    assert!(started.elapsed() >= limit, "timed out early, after {:?}", started.elapsed());
    // The timed-out call left nothing behind, and the connection still works.
    assert_eq!(conn.in_flight(), 0);
    assert!(!conn.is_closed());
    assert!(matches!(conn.call(read(5)).await, Ok(Response::Read { applied_lsn: 5, .. })));

    // A per-call limit overrides the connection's.
    let short = Duration::from_millis(50);
    let started = tokio::time::Instant::now();
    let result = conn.call_with_timeout(read(13), Some(short)).await;
    assert!(matches!(result, Err(CallError::Timeout)), "{result:?}");
    assert!(started.elapsed() < limit, "the per-call limit was ignored");
    assert_eq!(conn.in_flight(), 0);
}

#[tokio::test]
async fn a_cancelled_call_leaves_no_entry_behind() {
    let config = Config::new("Server1").decide(|_| Action::Ignore);
    let server = TestServer::start(config).await;
    let conn = Connection::connect(server.addr, "test").await.expect("connect");
    {
        let call = conn.call(read(1));
        tokio::pin!(call);
        // Poll the call far enough to be registered and sent, then drop it.
        let polled = futures::poll!(call.as_mut());
        assert!(polled.is_pending());
        assert_eq!(conn.in_flight(), 1);
    }
    assert_eq!(conn.in_flight(), 0);
}

#[tokio::test]
async fn a_request_over_the_frame_limit_fails_alone() {
    let server = TestServer::start(Config::new("Server1")).await;
    let conn = Connection::connect(server.addr, "test").await.expect("connect");
    let huge = protocol::Row {
        key: 1,
        values: vec![protocol::Value::Str("x".repeat(protocol::MAX_FRAME_LEN + 1))],
    };
    let write = Request::Write(protocol::WriteReq {
        shard: "sh1".into(),
        curr_idx: None,
        rows: vec![huge],
    });
    match conn.call(write).await {
        Err(CallError::Protocol(protocol::Error::Frame { detail })) => {
            assert!(detail.contains("exceeds the maximum frame length"), "{detail}")
        }
        other => panic!("expected a frame-limit error, got {other:?}"),
    }
    assert!(!conn.is_closed());
    assert!(matches!(conn.call(read(3)).await, Ok(Response::Read { applied_lsn: 3, .. })));
}

#[tokio::test]
async fn an_answer_for_an_unknown_id_is_ignored() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = async {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = protocol::framed(stream);
        protocol::server_handshake(&mut framed, "Odd").await.expect("handshake");
        let frame = framed.next().await.expect("a request").expect("a frame");
        let req: RequestFrame = protocol::wire::decode(&frame).expect("decode");
        let stray = ResponseFrame::ok(req.id + 1000, Response::Heartbeat);
        let real = ResponseFrame::ok(req.id, Response::Home { name: "Odd".into() });
        for answer in [stray, real] {
            framed.send(protocol::wire::encode(&answer).expect("encode")).await.expect("send");
        }
        framed
    };
    let call = async {
        let conn = Connection::connect(addr, "test").await.expect("connect");
        let answer = conn.call(Request::Home).await;
        (conn, answer)
    };
    let (_framed, (conn, answer)) =
        timeout(DEADLINE, async { tokio::join!(server, call) }).await.expect("hung");
    assert_eq!(answer.expect("home"), Response::Home { name: "Odd".into() });
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn a_server_of_another_protocol_version_is_refused_clearly() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = async {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = protocol::framed(stream);
        let _hello = framed.next().await.expect("a hello").expect("a frame");
        let reply = protocol::HelloReply::Ok { version: 9, name: "S9".into() };
        framed.send(protocol::wire::encode(&reply).expect("encode")).await.expect("send");
        framed
    };
    let (_framed, result) =
        timeout(DEADLINE, async { tokio::join!(server, Connection::connect(addr, "test")) })
            .await
            .expect("hung");
    let err = result.expect_err("a version-9 server must be refused");
    assert!(
        matches!(err, Error::Handshake { source: protocol::Error::Handshake(_), .. }),
        "{err:?}"
    );
    assert!(!err.is_retryable());
    assert_eq!(
        err.to_string(),
        format!(
            "cannot open a session with {addr}; handshake failed; server 'S9' speaks protocol \
             version 9; this client speaks version {}",
            protocol::PROTOCOL_VERSION
        )
    );
}

#[tokio::test]
async fn a_server_that_never_answers_the_handshake_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limit = Duration::from_millis(200);
    let options = ConnectOptions { handshake_timeout: limit, ..ConnectOptions::default() };
    // The listener accepts (the kernel completes TCP) but nobody ever answers.
    let result = timeout(DEADLINE, Connection::connect_with(addr, "test", options))
        .await
        .expect("connect hung past its handshake timeout");
    match result {
        Err(Error::HandshakeTimeout { addr: a, after }) => {
            assert_eq!(a, addr);
            assert_eq!(after, limit);
        }
        other => panic!("expected a handshake timeout, got {other:?}"),
    }
    drop(listener);
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_without_hanging() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let result = timeout(DEADLINE, Connection::connect(addr, "test")).await.expect("connect hung");
    match result {
        Err(e @ Error::Connect { .. }) => {
            assert!(e.is_retryable());
            assert!(e.to_string().starts_with(&format!("connect to {addr} failed; ")), "{e}");
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_every_clone_closes_the_connection() {
    let mut server = TestServer::start(Config::new("Server1")).await;
    let conn = Connection::connect(server.addr, "test").await.expect("connect");
    let clone = conn.clone();
    drop(conn);
    // One clone left: still open and usable.
    assert!(matches!(clone.call(read(1)).await, Ok(Response::Read { applied_lsn: 1, .. })));
    assert!(!clone.is_closed());
    drop(clone);
    assert!(server.wait_eof(DEADLINE).await, "the server never saw the connection close");
}

#[tokio::test]
async fn dropping_the_connection_ends_its_tasks_even_if_the_server_keeps_its_socket() {
    // A server that never closes its side: the reader must stop because we dropped the
    // connection, not because the peer hung up.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = async {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = protocol::framed(stream);
        protocol::server_handshake(&mut framed, "Quiet").await.expect("handshake");
        framed
    };
    let (mut framed, conn) = tokio::join!(server, Connection::connect(addr, "test"));
    let conn = conn.expect("connect");
    let metrics = tokio::runtime::Handle::current().metrics();
    assert_eq!(metrics.num_alive_tasks(), 2, "a connection runs a reader and a writer");

    drop(conn);
    poll_until("the connection's tasks to end", || metrics.num_alive_tasks() == 0).await;
    let end = timeout(DEADLINE, framed.next()).await.expect("the server never saw end of stream");
    assert!(end.is_none(), "expected end of stream, got {end:?}");
}

#[tokio::test]
async fn dropping_the_connection_ends_its_tasks_even_if_the_server_stops_reading() {
    // Far more than the socket buffers hold, so the writer blocks on a server that never
    // reads; dropping the connection must still end it.
    const CALLS: usize = 8;
    const ROW_BYTES: usize = 8 * 1024 * 1024;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = async {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = protocol::framed(stream);
        protocol::server_handshake(&mut framed, "Deaf").await.expect("handshake");
        framed
    };
    let (_framed, conn) = tokio::join!(server, Connection::connect(addr, "test"));
    let conn = conn.expect("connect");
    let calls: Vec<_> = (0..CALLS)
        .map(|i| {
            let conn = conn.clone();
            let row = protocol::Row {
                key: i as i64,
                values: vec![protocol::Value::Str("x".repeat(ROW_BYTES))],
            };
            let write = Request::Write(protocol::WriteReq {
                shard: "sh1".into(),
                curr_idx: None,
                rows: vec![row],
            });
            tokio::spawn(async move { conn.call(write).await })
        })
        .collect();
    poll_until("every call to be queued", || conn.in_flight() == CALLS).await;

    let metrics = tokio::runtime::Handle::current().metrics();
    for call in &calls {
        call.abort();
    }
    drop(conn);
    poll_until("every task to end", || metrics.num_alive_tasks() == 0).await;
    for call in calls {
        assert!(call.await.expect_err("aborted").is_cancelled());
    }
}
