//! A tiny shardgate server for the client's tests: handshakes, then answers each request as
//! its [`Config::decide`] says, so tests can make answers late, out of order, failed, missing,
//! or cut off by a hang-up.

#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{SinkExt, StreamExt};
use protocol::Framed;
use protocol::{Request, RequestFrame, Response, ResponseFrame};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Longest any test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Answer with [`echo`] at once.
    Answer,
    /// Answer with [`echo`] after this long (other requests are served meanwhile).
    AnswerAfter(Duration),
    /// Answer with this error.
    Fail(protocol::ErrorBody),
    /// Never answer.
    Ignore,
    /// Close the connection without answering this or any request still held.
    Hangup,
}

type Decide = Arc<dyn Fn(&Request) -> Action + Send + Sync>;

/// How the server behaves.
#[derive(Clone)]
pub struct Config {
    /// The name given in the handshake and in `Home` answers.
    pub name: String,
    /// What to do with each request.
    pub decide: Decide,
    /// Hold immediate answers until this many are held, then send them newest first.
    pub reverse_batch: Option<usize>,
}

impl Config {
    pub fn new(name: &str) -> Config {
        Config { name: name.to_string(), decide: Arc::new(|_| Action::Answer), reverse_batch: None }
    }

    pub fn decide(mut self, f: impl Fn(&Request) -> Action + Send + Sync + 'static) -> Config {
        self.decide = Arc::new(f);
        self
    }

    pub fn reverse_batch(mut self, n: usize) -> Config {
        self.reverse_batch = Some(n);
        self
    }
}

/// An answer that identifies its request: `Read` answers carry the request's `low` as
/// `applied_lsn`, `Delete` answers its key.
pub fn echo(server_name: &str, req: &Request) -> Response {
    match req {
        Request::Home => Response::Home { name: server_name.to_string() },
        Request::Heartbeat => Response::Heartbeat,
        Request::Config(c) => Response::Configured {
            name: server_name.to_string(),
            shards: c.shards.iter().map(|s| s.shard_id.clone()).collect(),
        },
        Request::Copy(_) => Response::Copy { shards: vec![] },
        Request::Read(r) => Response::Read { rows: vec![], applied_lsn: r.low as u64 },
        Request::Write(w) => {
            Response::Written { count: w.rows.len() as u64, current_idx: 0, lsn: 0 }
        }
        Request::Update(u) => Response::Updated { key: u.key, lsn: 0 },
        Request::Delete(d) => Response::Deleted { key: d.key, lsn: d.key as u64 },
        // Replication and control commands: an answer that names no data.
        _ => Response::Heartbeat,
    }
}

/// A read request identified by `n`.
pub fn read(n: i64) -> Request {
    Request::Read(protocol::ReadReq {
        shard: "sh1".into(),
        low: n,
        high: n,
        min_lsn: 0,
        consistency: Default::default(),
    })
}

/// A running test server; stops (with every connection) when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    eofs: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        TestServer::start_on(listener, config)
    }

    /// Serves on an already bound listener, e.g. one bound to an address used before.
    pub fn start_on(listener: TcpListener, config: Config) -> TestServer {
        let addr = listener.local_addr().expect("local addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let (eof_tx, eofs) = mpsc::unbounded_channel();
        let task =
            tokio::spawn(accept_loop(listener, config, accepts.clone(), received.clone(), eof_tx));
        TestServer { addr, accepts, received, eofs, task }
    }

    /// TCP connections accepted so far.
    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Requests received so far, over all connections.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Waits until a client closes a connection (the server reads end of stream); false if
    /// none did within `limit`.
    pub async fn wait_eof(&mut self, limit: Duration) -> bool {
        matches!(tokio::time::timeout(limit, self.eofs.recv()).await, Ok(Some(())))
    }

    /// Waits until the server has received `n` requests; panics after [`DEADLINE`].
    pub async fn wait_received(&self, n: usize) {
        poll_until("server to receive requests", || self.received() >= n).await;
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        // The accept task owns the JoinSet of connections, so this ends them all.
        self.task.abort();
    }
}

/// Polls `cond` until it holds; panics naming `what` after [`DEADLINE`].
pub async fn poll_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    config: Config,
    accepts: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    eof_tx: mpsc::UnboundedSender<()>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                accepts.fetch_add(1, Ordering::SeqCst);
                connections.spawn(serve(stream, config.clone(), received.clone(), eof_tx.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

type ServerFramed = Framed<TcpStream>;

type Delayed = Pin<Box<dyn Future<Output = ResponseFrame> + Send>>;

async fn serve(
    stream: TcpStream,
    config: Config,
    received: Arc<AtomicUsize>,
    eof_tx: mpsc::UnboundedSender<()>,
) {
    let mut framed = protocol::framed(stream);
    if protocol::server_handshake(&mut framed, &config.name).await.is_err() {
        return;
    }
    let mut delayed: FuturesUnordered<Delayed> = FuturesUnordered::new();
    let mut held: Vec<ResponseFrame> = Vec::new();
    loop {
        tokio::select! {
            frame = framed.next() => {
                let Some(Ok(frame)) = frame else {
                    let _ = eof_tx.send(());
                    return;
                };
                let req: RequestFrame =
                    protocol::wire::decode(&frame).expect("the client sent a malformed request");
                received.fetch_add(1, Ordering::SeqCst);
                let answer = echo(&config.name, &req.body);
                match (config.decide)(&req.body) {
                    Action::Answer => {
                        let answer = ResponseFrame::ok(req.id, answer);
                        match config.reverse_batch {
                            None => send(&mut framed, &answer).await,
                            Some(n) => {
                                held.push(answer);
                                if held.len() >= n {
                                    for answer in held.drain(..).rev() {
                                        send(&mut framed, &answer).await;
                                    }
                                }
                            }
                        }
                    }
                    Action::AnswerAfter(delay) => {
                        let id = req.id;
                        delayed.push(Box::pin(async move {
                            tokio::time::sleep(delay).await;
                            ResponseFrame::ok(id, answer)
                        }));
                    }
                    Action::Fail(body) => send(&mut framed, &ResponseFrame::err(req.id, body)).await,
                    Action::Ignore => {}
                    Action::Hangup => return,
                }
            }
            Some(answer) = delayed.next() => send(&mut framed, &answer).await,
        }
    }
}

async fn send(framed: &mut ServerFramed, answer: &ResponseFrame) {
    let bytes = protocol::wire::encode(answer).expect("encode an answer");
    // The client may have gone; its own test notices, not this server.
    let _ = framed.send(bytes).await;
}
