//! [`Connection`]: open a connection (TCP, handshake), call over it, close it.
//!
//! A connection owns two tasks, a writer and a reader (see `writer` and `reader`). They stop
//! together: when the peer closes or the socket fails (either task notices and cancels the
//! other), or when the last clone of the `Connection` is dropped. Every way of stopping
//! closes the table of waiting calls first, so no call is left waiting.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::{Request, RequestFrame, Response, MAX_FRAME_LEN};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};
use tokio_util::codec::{Framed, FramedParts};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::error::{CallError, Error, Result};
use crate::pending::Pending;
use crate::{reader, writer};

/// Default limit on resolving the address and opening the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Default limit on the handshake; a peer that accepts but never answers must not hold the
/// caller forever.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Request frames that may wait for the writer before callers have to wait too; this bounds
/// the memory a flood of calls to a slow server can take.
pub const WRITE_QUEUE_LEN: usize = 1024;

/// Timeouts of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Limit on resolving the address and opening the TCP connection.
    pub connect_timeout: Duration,
    /// Limit on the handshake after TCP connect.
    pub handshake_timeout: Duration,
    /// Limit on each call, from queueing its request to its answer; `None` waits as long as
    /// the connection lives.
    pub request_timeout: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            connect_timeout: CONNECT_TIMEOUT,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            request_timeout: None,
        }
    }
}

/// A pipelined connection to one shardgate server. Cheap to clone; all clones share the
/// socket, and many calls may be in flight on it at once.
#[derive(Clone)]
pub struct Connection {
    inner: Arc<Inner>,
}

struct Inner {
    queue: mpsc::Sender<Bytes>,
    pending: Arc<Pending>,
    shutdown: CancellationToken,
    server_name: String,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    request_timeout: Option<Duration>,
}

impl Drop for Inner {
    /// The writer stops by itself once the queue's last sender is gone, and stops the reader,
    /// but only after writing what is still queued; against a peer that no longer reads that
    /// never finishes. Cancelling stops both now, whatever the peer does.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Connection {
    /// Connects to `addr` and shakes hands as `peer_name`, with the default timeouts.
    pub async fn connect(addr: impl ToSocketAddrs, peer_name: &str) -> Result<Connection> {
        Connection::connect_with(addr, peer_name, ConnectOptions::default()).await
    }

    /// Connects to `addr` and shakes hands as `peer_name`, with the given timeouts.
    pub async fn connect_with(
        addr: impl ToSocketAddrs,
        peer_name: &str,
        options: ConnectOptions,
    ) -> Result<Connection> {
        let (stream, peer_addr) = open_tcp(addr, options.connect_timeout).await?;
        let local_addr =
            stream.local_addr().map_err(|source| Error::Connect { addr: peer_addr, source })?;
        // Requests are small and latency-bound; the writer already batches, so Nagle would
        // only add delay.
        stream.set_nodelay(true).map_err(|source| Error::Connect { addr: peer_addr, source })?;

        let mut framed = protocol::framed(stream);
        let after = options.handshake_timeout;
        let server_name =
            match timeout(after, protocol::client_handshake(&mut framed, peer_name)).await {
                Ok(Ok(name)) => name,
                Ok(Err(source)) => return Err(Error::Handshake { addr: peer_addr, source }),
                Err(_elapsed) => return Err(Error::HandshakeTimeout { addr: peer_addr, after }),
            };
        debug!(server = %server_name, %peer_addr, "connected");
        Ok(Connection::start(framed, server_name, peer_addr, local_addr, options))
    }

    /// Splits the handshaken socket between a writer and a reader task.
    fn start(
        framed: protocol::Framed<TcpStream>,
        server_name: String,
        peer_addr: SocketAddr,
        local_addr: SocketAddr,
        options: ConnectOptions,
    ) -> Connection {
        let parts = framed.into_parts();
        let (read_half, write_half) = parts.io.into_split();
        // Each half takes its direction of the session (key and frame counter).
        let (send_codec, recv_codec) = parts.codec.split();
        // Carry over whatever the handshake read past the server's reply, so an answer that
        // came in the same packet is not lost.
        let mut read_parts = FramedParts::new::<Bytes>(read_half, recv_codec);
        read_parts.read_buf = parts.read_buf;
        let stream = Framed::from_parts(read_parts);

        let (queue, queue_rx) = mpsc::channel(WRITE_QUEUE_LEN);
        let pending = Arc::new(Pending::new());
        let shutdown = CancellationToken::new();
        tokio::spawn(writer::run(
            write_half,
            send_codec,
            queue_rx,
            pending.clone(),
            shutdown.clone(),
            server_name.clone(),
        ));
        tokio::spawn(reader::run(stream, pending.clone(), shutdown.clone(), server_name.clone()));
        Connection {
            inner: Arc::new(Inner {
                queue,
                pending,
                shutdown,
                server_name,
                peer_addr,
                local_addr,
                request_timeout: options.request_timeout,
            }),
        }
    }

    /// Sends `req` and waits for its answer, within the connection's request timeout.
    pub async fn call(&self, req: Request) -> std::result::Result<Response, CallError> {
        self.call_with_timeout(req, self.inner.request_timeout).await
    }

    /// Sends `req` and waits for its answer, within `limit` instead of the connection's
    /// request timeout (`None`: no limit).
    pub async fn call_with_timeout(
        &self,
        req: Request,
        limit: Option<Duration>,
    ) -> std::result::Result<Response, CallError> {
        let inner = &*self.inner;
        if inner.pending.is_closed() {
            return Err(CallError::Disconnected);
        }
        let id = inner.pending.next_id();
        let frame = protocol::wire::encode(&RequestFrame { id, body: req })?;
        // The writer's codec would refuse it and that error would close the connection for
        // every caller; refused here, it fails only this call.
        if frame.len() > MAX_FRAME_LEN {
            return Err(CallError::Protocol(protocol::Error::Frame {
                detail: format!(
                    "request of {} bytes exceeds the maximum frame length of {MAX_FRAME_LEN} bytes",
                    frame.len()
                ),
            }));
        }
        let answer = inner.pending.register(id).ok_or(CallError::Disconnected)?;
        let mut waiting = Waiting { pending: &inner.pending, id, answered: false };

        let exchange = async {
            inner.queue.send(frame).await.map_err(|_| CallError::Disconnected)?;
            let answer = answer.await;
            waiting.answered = true;
            match answer {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(body)) => Err(CallError::Remote(body)),
                // The table was closed: the connection is gone.
                Err(_) => Err(CallError::Disconnected),
            }
        };
        match limit {
            Some(limit) => timeout(limit, exchange).await.unwrap_or(Err(CallError::Timeout)),
            None => exchange.await,
        }
    }

    /// The name the server gave in the handshake.
    pub fn server_name(&self) -> &str {
        &self.inner.server_name
    }

    /// The server's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.peer_addr
    }

    /// This side's socket address; tells two connections to one server apart.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Whether the connection has stopped; every call on it fails with
    /// [`CallError::Disconnected`] and a new connection is needed.
    pub fn is_closed(&self) -> bool {
        self.inner.pending.is_closed()
    }

    /// How many calls are waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.inner.pending.len()
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("server_name", &self.inner.server_name)
            .field("peer_addr", &self.inner.peer_addr)
            .field("local_addr", &self.inner.local_addr)
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// A call's entry in the table of waiting calls, removed if the call ends without its
/// answer (timeout, or the caller dropped the future), so the table only holds live calls.
struct Waiting<'a> {
    pending: &'a Pending,
    id: u64,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.pending.forget(self.id);
        }
    }
}

/// Resolves `addr` and connects to the first address that accepts, all within `limit`;
/// returns the stream and the address it reached.
/// The address this process's outgoing connections leave from, when set.
static SOURCE_IP: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// Makes every connection this process opens from now on leave from `ip` (the address its
/// own listener is bound to), so that peers, and firewall rules, see each process at its own
/// address even when several share one host (127.0.0.2, 127.0.0.3, ... on loopback). The
/// first call wins; an unspecified or loopback-default address (0.0.0.0, ::, 127.0.0.1, ::1)
/// leaves the choice to the kernel.
pub fn set_source_ip(ip: std::net::IpAddr) {
    let default = ip.is_unspecified()
        || ip == std::net::IpAddr::from([127, 0, 0, 1])
        || ip == std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST);
    if !default {
        let _ = SOURCE_IP.set(ip);
    }
}

/// `TcpStream::connect`, from the source address of [`set_source_ip`] when one is set and
/// of the same family as `addr`.
async fn connect_from_source(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let Some(&ip) = SOURCE_IP.get().filter(|ip| ip.is_ipv4() == addr.is_ipv4()) else {
        return TcpStream::connect(addr).await;
    };
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.bind(SocketAddr::new(ip, 0))?;
    socket.connect(addr).await
}

async fn open_tcp(addr: impl ToSocketAddrs, limit: Duration) -> Result<(TcpStream, SocketAddr)> {
    let deadline = Instant::now() + limit;
    let addrs = match tokio::time::timeout_at(deadline, tokio::net::lookup_host(addr)).await {
        Ok(Ok(addrs)) => addrs,
        Ok(Err(e)) => return Err(Error::Resolve(e)),
        Err(_elapsed) => {
            return Err(Error::Resolve(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("resolution took longer than {limit:?}"),
            )))
        }
    };
    let mut last_err = None;
    for addr in addrs {
        match tokio::time::timeout_at(deadline, connect_from_source(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(source)) => last_err = Some(Error::Connect { addr, source }),
            Err(_elapsed) => return Err(Error::ConnectTimeout { addr, after: limit }),
        }
    }
    Err(last_err.unwrap_or_else(|| {
        Error::Resolve(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the address resolved to no socket address",
        ))
    }))
}
