//! The serving side of the binary protocol (`protocol::server`) against a raw framed peer:
//! pipelined requests answered in place and in tasks of their own, answers of running
//! requests after the peer stopped sending, and a shutdown that a peer which never reads
//! cannot hold up.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::server::{self, Handler};
use protocol::Framed;
use protocol::{ErrorBody, Request, RequestFrame, Response, ResponseFrame};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// `Home` and `Forward` (its body echoed; refused when its method is `NO`) are answered in
/// place; `Heartbeat` after a short wait, in a task of its own; anything else is refused.
struct Echo;

impl Handler for Echo {
    fn name(&self) -> &str {
        "echo"
    }

    async fn handle(&self, req: Request) -> Result<Response, ErrorBody> {
        match req {
            Request::Home => Ok(Response::Home { name: "echo".into() }),
            Request::Forward(f) if f.method == "NO" => Err(ErrorBody::bad_request("not here")),
            Request::Forward(f) => Ok(Response::Forwarded { status: 200, body: f.body }),
            Request::Heartbeat => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(Response::Heartbeat)
            }
            other => Err(ErrorBody::bad_request(format!("not here: {}", other.name()))),
        }
    }

    fn answers_in_place(&self, req: &Request) -> bool {
        matches!(req, Request::Home | Request::Forward(_))
    }
}

struct Server {
    addr: std::net::SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cancel, tracker) = (CancellationToken::new(), TaskTracker::new());
        let serve = server::serve(listener, Arc::new(Echo), cancel.clone(), tracker.clone());
        tracker.spawn(serve);
        Server { addr, cancel, tracker }
    }

    /// Cancels and waits for every connection task; false if they outlast `limit`.
    async fn stop(self, limit: Duration) -> bool {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(limit, self.tracker.wait()).await.is_ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn connect(addr: std::net::SocketAddr) -> Framed<TcpStream> {
    let mut framed = protocol::framed(TcpStream::connect(addr).await.unwrap());
    assert_eq!(protocol::client_handshake(&mut framed, "test").await.unwrap(), "echo");
    framed
}

fn forward(method: &str, body: Vec<u8>) -> Request {
    Request::Forward(protocol::ForwardReq { method: method.into(), path: "/".into(), body })
}

fn frame(id: u64, body: Request) -> bytes::Bytes {
    protocol::wire::encode(&RequestFrame { id, body }).unwrap()
}

async fn next_answer(framed: &mut Framed<TcpStream>) -> ResponseFrame {
    let bytes = tokio::time::timeout(Duration::from_secs(10), framed.next())
        .await
        .expect("an answer within 10 s")
        .expect("the connection is open")
        .unwrap();
    protocol::wire::decode(&bytes).unwrap()
}

#[tokio::test]
async fn pipelined_requests_all_get_their_own_answer() {
    let server = Server::start().await;
    let mut peer = connect(server.addr).await;
    // Sent in one write: the server reads them as one batch.
    for id in 1..=200u64 {
        let body = match id % 4 {
            0 => Request::Heartbeat,
            1 => forward("NO", vec![]),
            _ => Request::Home,
        };
        peer.feed(frame(id, body)).await.unwrap();
    }
    SinkExt::<bytes::Bytes>::flush(&mut peer).await.unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..200 {
        let answer = next_answer(&mut peer).await;
        let expected_ok = answer.id % 4 != 1;
        match (&answer.body, answer.id % 4) {
            (Ok(Response::Heartbeat), 0) | (Ok(Response::Home { .. }), 2 | 3) => {}
            (Err(e), 1) => assert!(e.message.contains("not here"), "{e:?}"),
            other => panic!("answer {} is {other:?} (ok expected: {expected_ok})", answer.id),
        }
        assert!(seen.insert(answer.id), "answer {} came twice", answer.id);
    }
    assert_eq!(seen, (1..=200).collect::<BTreeSet<_>>());
    drop(peer);
    assert!(server.stop(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn running_requests_are_answered_after_the_peer_stops_sending() {
    let server = Server::start().await;
    let peer = connect(server.addr).await;
    let (mut sink, mut answers) = peer.split();
    for id in 1..=10u64 {
        sink.send(frame(id, Request::Heartbeat)).await.unwrap();
    }
    // Half-close: the server reads the end of the stream while all ten are still running.
    SinkExt::<bytes::Bytes>::close(&mut sink).await.unwrap();
    let mut ids = BTreeSet::new();
    while let Some(bytes) =
        tokio::time::timeout(Duration::from_secs(10), answers.next()).await.unwrap()
    {
        let answer: ResponseFrame = protocol::wire::decode(&bytes.unwrap()).unwrap();
        assert_eq!(answer.body, Ok(Response::Heartbeat));
        ids.insert(answer.id);
    }
    assert_eq!(ids, (1..=10).collect::<BTreeSet<_>>(), "every answer, then the end");
    assert!(server.stop(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_peer_that_never_reads_cannot_hold_up_shutdown() {
    let server = Server::start().await;
    let mut peer = connect(server.addr).await;
    // Requests whose answers are as large, until the socket buffers are full of answers
    // nobody reads: the server's flush then waits for ever, and it stops reading (a bounded
    // number of tries, each bounded in time).
    let big = forward("GET", vec![b'x'; 64 * 1024]);
    let mut sent = 0u64;
    for id in 1..=2_000u64 {
        let body = big.clone();
        match tokio::time::timeout(Duration::from_millis(200), peer.send(frame(id, body))).await {
            Ok(Ok(())) => sent += 1,
            // Our own send blocks: the server has stopped reading (it is stuck flushing).
            Err(_) => break,
            Ok(Err(e)) => panic!("send failed: {e}"),
        }
    }
    assert!(sent < 2_000, "the server kept reading while its answers piled up");
    assert!(
        server.stop(Duration::from_secs(5)).await,
        "shutdown waited for a peer that never reads"
    );
    drop(peer);
}
