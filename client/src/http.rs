//! A minimal HTTP/1.1 JSON client (keep-alive, one request at a time per connection) for
//! tests, benchmarks and scripts that talk to the HTTP shims the way curl or the original
//! Python clients do: JSON bodies on any method, GET and DELETE included.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest response head (status line + headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Largest response body accepted.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// One keep-alive HTTP/1.1 connection.
pub struct HttpClient {
    stream: BufReader<TcpStream>,
}

/// A response: status code and body bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The body as JSON (`Null` when empty).
    pub fn json(&self) -> std::io::Result<serde_json::Value> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| invalid(format!("body is not JSON: {e}")))
    }
}

impl HttpClient {
    /// Opens a connection (TCP_NODELAY, so a request is never held back by Nagle).
    pub async fn connect(addr: SocketAddr) -> std::io::Result<HttpClient> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(HttpClient { stream: BufReader::new(s) })
    }

    /// Whether the server has closed this idle connection (or sent something unasked, which
    /// makes it unusable too). Checked before a request is sent on a kept-alive connection,
    /// so the request never goes to a connection that is already gone.
    pub fn is_closed(&self) -> bool {
        if !self.stream.buffer().is_empty() {
            return true;
        }
        let mut probe = [0u8; 1];
        !matches!(
            self.stream.get_ref().try_read(&mut probe),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Sends `method path` with `body` (JSON, `Content-Length`) and reads the response.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<HttpReply> {
        let mut msg = format!(
            "{method} {path} HTTP/1.1\r\nHost: shardgate\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        // One write: a head and a body in two segments would wait out Nagle + delayed ACK.
        msg.extend_from_slice(body);
        self.stream.get_mut().write_all(&msg).await?;
        self.read_response().await
    }

    /// Sends `body` serialized as JSON (none when `None`); returns status and JSON body.
    pub async fn json(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> std::io::Result<(u16, serde_json::Value)> {
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| invalid(e.to_string()))?,
            None => Vec::new(),
        };
        let reply = self.request(method, path, &bytes).await?;
        Ok((reply.status, reply.json()?))
    }

    async fn read_response(&mut self) -> std::io::Result<HttpReply> {
        let mut head_bytes = 0;
        let status_line = self.line(&mut head_bytes).await?;
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        let mut chunked = false;
        loop {
            let line = self.line(&mut head_bytes).await?;
            if line.is_empty() {
                break;
            }
            let Some((k, v)) = line.split_once(':') else { continue };
            if k.eq_ignore_ascii_case("content-length") {
                length =
                    Some(v.trim().parse::<usize>().map_err(|_| invalid("bad content-length"))?);
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.to_ascii_lowercase().contains("chunked");
            }
        }
        let body = if chunked {
            let mut body = Vec::new();
            loop {
                let size_line = self.line(&mut head_bytes).await?;
                let size =
                    usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| invalid(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    while !self.line(&mut head_bytes).await?.is_empty() {}
                    break;
                }
                if body.len() + size > MAX_BODY_BYTES {
                    return Err(invalid("response body too large"));
                }
                let at = body.len();
                body.resize(at + size, 0);
                self.stream.read_exact(&mut body[at..]).await?;
                self.line(&mut head_bytes).await?;
            }
            body
        } else {
            let len = length.unwrap_or(0);
            if len > MAX_BODY_BYTES {
                return Err(invalid("response body too large"));
            }
            let mut body = vec![0u8; len];
            self.stream.read_exact(&mut body).await?;
            body
        };
        Ok(HttpReply { status, body })
    }

    async fn line(&mut self, budget: &mut usize) -> std::io::Result<String> {
        let mut line = String::new();
        let n = self.stream.read_line(&mut line).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        *budget += n;
        if *budget > MAX_HEAD_BYTES {
            return Err(invalid("response head too large"));
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}
