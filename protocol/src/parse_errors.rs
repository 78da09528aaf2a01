//! hyper answers a request it cannot parse (a broken request line or header, conflicting
//! lengths, a head over its size limit) by itself, before any service sees it: a bare
//! `400 Bad Request` (or `431`) with an empty body, then it closes the connection. It has no
//! hook for that answer, so [`JsonErrors`] sits under it on the socket and rewrites exactly
//! that answer into the contract's error shape, `{"message": "<Error> ...", "status":
//! "failure"}`, as every other refusal of the HTTP doors is.
//!
//! What is recognized: the last response head of a write, ending the write, with status
//! 4xx or 5xx, `connection: close`, `content-length: 0` and no `content-type`. Every answer
//! of the doors' own handlers carries a content type (JSON) or is a `2xx` without a body
//! (`/heartbeat`), and a JSON body cannot hold a raw CRLF, so nothing else matches. Should
//! hyper ever split that head over two writes, it goes out as it was: bare, as before.

use std::io;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that rewrites hyper's own bare error answers into the contract's JSON errors
/// (see the module doc); everything else passes through untouched.
pub struct JsonErrors<T> {
    inner: T,
    /// A rewritten write, accepted from hyper and not fully written yet, and how much of it
    /// is written.
    pending: Option<(Bytes, usize)>,
}

impl<T> JsonErrors<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> JsonErrors<T> {
        JsonErrors { inner, pending: None }
    }
}

impl<T: AsyncWrite + Unpin> JsonErrors<T> {
    /// Writes what is pending; ready once nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((buf, written)) = &mut self.pending {
            if *written >= buf.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &buf[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `total` bytes from hyper as `rewritten`, and starts writing them.
    fn take(
        &mut self,
        rewritten: Bytes,
        total: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        self.pending = Some((rewritten, 0));
        // Pending or not, the bytes are ours now: flush and shutdown finish the write.
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(total))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        match rewrite(&[buf]) {
            Some(rewritten) => this.take(rewritten, buf.len(), cx),
            None => Pin::new(&mut this.inner).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        match rewrite(bufs) {
            Some(rewritten) => {
                let total = bufs.iter().map(|s| s.len()).sum();
                this.take(rewritten, total, cx)
            }
            None => Pin::new(&mut this.inner).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The write made of `slices` with its final bare error answer in the contract's shape, or
/// `None` when it does not end with one.
fn rewrite<S: Deref<Target = [u8]>>(slices: &[S]) -> Option<Bytes> {
    // hyper writes the error head as one piece: the last non-empty slice.
    let last = slices.iter().rposition(|s| !s.is_empty())?;
    let (start, status) = bare_error_at_end(&slices[last])?;
    let head = &slices[last][start..];
    let body = error_json(status);
    let mut out =
        BytesMut::with_capacity(slices.iter().map(|s| s.len()).sum::<usize>() + body.len() + 64);
    for s in &slices[..last] {
        out.put_slice(s);
    }
    out.put_slice(&slices[last][..start]);
    // The head as hyper made it (status line, connection, date) without its empty length.
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if !line.to_ascii_lowercase().starts_with("content-length:") {
            out.put_slice(line.as_bytes());
            out.put_slice(b"\r\n");
        }
    }
    out.put_slice(b"content-type: application/json\r\n");
    out.put_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.put_slice(&body);
    Some(out.freeze())
}

/// Where the bare error head that ends `b` starts, and its status.
fn bare_error_at_end(b: &[u8]) -> Option<(usize, u16)> {
    if !b.ends_with(b"\r\n\r\n") {
        return None;
    }
    let start = b.windows(9).rposition(|w| w == b"HTTP/1.1 ")?;
    let head = std::str::from_utf8(&b[start..]).ok()?;
    let status: u16 = head.get(9..12)?.parse().ok()?;
    if !(400..600).contains(&status) {
        return None;
    }
    let lower = head.to_ascii_lowercase();
    let bare = lower.contains("\r\nconnection: close\r\n")
        && lower.contains("\r\ncontent-length: 0\r\n")
        && !lower.contains("\r\ncontent-type:");
    bare.then_some((start, status))
}

/// The contract's error body for hyper's own answer with `status`.
fn error_json(status: u16) -> Vec<u8> {
    let why = match status {
        400 => "malformed HTTP request: its request line, headers or framing cannot be parsed",
        414 => "the request URI is too long",
        431 => "the request's header fields are too large",
        505 => "HTTP version not supported: send HTTP/1.1 (or 1.0)",
        _ => "the request cannot be parsed",
    };
    let body = serde_json::json!({"message": format!("<Error> {why}"), "status": "failure"});
    body.to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const BARE_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Wed, 02 Dec 2026 15:42:02 GMT\r\n\r\n";
    const OK: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";

    fn split(answer: &[u8]) -> (String, serde_json::Value) {
        let text = String::from_utf8(answer.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn a_bare_error_becomes_the_contracts_json_with_its_status_and_length() {
        let out = rewrite(&[BARE_400]).unwrap();
        let (head, body) = split(&out);
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        assert!(head.contains("connection: close") && head.contains("date: "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let len = serde_json::to_vec(&body).unwrap().len();
        assert!(head.contains(&format!("content-length: {len}")), "{head}");
        assert!(!head.contains("content-length: 0"), "{head}");
        assert_eq!(body["status"], "failure");
        assert!(body["message"].as_str().unwrap().starts_with("<Error> malformed HTTP request"));

        let too_large = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let (head, body) = split(&rewrite(&[&too_large[..]]).unwrap());
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(body["message"].as_str().unwrap().contains("too large"), "{body}");
    }

    #[test]
    fn an_error_after_a_pipelined_answer_is_rewritten_and_the_answer_kept() {
        // One write holding an answer and the error (flattened), or both as slices.
        let joined = [OK, BARE_400].concat();
        for out in [rewrite(&[&joined[..]]).unwrap(), rewrite(&[OK, BARE_400]).unwrap()] {
            assert!(out.starts_with(OK));
            let (head, body) = split(&out[OK.len()..]);
            assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
            assert_eq!(body["status"], "failure");
        }
    }

    #[test]
    fn the_doors_own_answers_pass_untouched() {
        let json_error = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let heartbeat = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        let kept_alive = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        for w in [OK, &json_error[..], &heartbeat[..], &kept_alive[..], b"", b"HTTP/1.1 4"] {
            assert!(rewrite(&[w]).is_none(), "{:?}", String::from_utf8_lossy(w));
        }
        // The error head not at the end of the write (so not hyper's last words).
        assert!(rewrite(&[&[BARE_400, OK].concat()[..]]).is_none());
        assert!(rewrite(&[BARE_400, OK]).is_none());
    }

    #[tokio::test]
    async fn through_the_stream_a_slow_peer_still_gets_all_of_it() {
        // A duplex pipe of 16 bytes: the rewritten answer needs many writes.
        let (a, mut b) = tokio::io::duplex(16);
        let mut w = JsonErrors::new(a);
        let writer = tokio::spawn(async move {
            w.write_all(OK).await.unwrap();
            w.write_all(BARE_400).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert!(got.starts_with(OK));
        let (head, body) = split(&got[OK.len()..]);
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        assert_eq!(body["status"], "failure");
    }
}
