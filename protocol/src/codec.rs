//! Framing of the binary protocol, and the protection of every frame after the handshake.
//!
//! Format of one frame on the wire:
//!
//! ```text
//! plain:   { len: u32 big-endian | payload: len bytes }
//! sealed:  { len: u32 big-endian | AES-256-GCM(payload): len - 16 bytes | tag: 16 bytes }
//! ```
//!
//! `len` counts what follows it (not the 4 length bytes). The payload is one message encoded
//! by [`crate::wire`]. A length above the decoder's maximum is an error from the decoder, so
//! a hostile or confused peer cannot make us buffer an unbounded frame; the connection that
//! sent it is closed and no other is affected.
//!
//! # Bounded before trust
//! A [`FrameCodec`] starts in handshake mode: until the handshake is done
//! ([`FrameCodec::start_session`]), frames of at most [`HANDSHAKE_MAX_FRAME_LEN`] bytes are
//! taken either way (the handshake's messages are a few dozen bytes), so a caller that is not
//! (yet) authenticated cannot make a door reserve a 16 MiB buffer. Then the normal maximum
//! ([`MAX_FRAME_LEN`] by default) applies to the payload; a sealed frame may be
//! [`TAG_LEN`] bytes longer on the wire.
//!
//! # Authenticated sessions
//! With a cluster secret (see [`crate::auth`]), the handshake proves the secret both ways over
//! two fresh nonces, and both sides derive from the secret and the nonces one key per
//! direction ([`crate::auth::session_keys`], HKDF-SHA256 with a label per direction). From
//! then on every frame is sealed with AES-256-GCM under its direction's key, with an
//! implicit nonce: the number of frames sent before it in that direction (a 64-bit counter,
//! never sent). An on-path relay therefore can neither read a frame nor change one: a
//! changed, dropped, replayed or reordered frame, or a frame sent back the other way, fails
//! to open on the receiver (the nonce or key it is opened with is not the one it was sealed
//! with), and the receiver closes the connection before the frame is decoded, so nothing of
//! it is applied. Without a secret (insecure mode) frames stay plain.
//!
//! Why not TLS: the cluster already shares a secret and the handshake already proves it both
//! ways, so keys derived from it authenticate both ends with no certificates to create,
//! distribute, rotate and check; sealing adds no round trip to the handshake (TLS 1.3 would
//! add one before ours); and it needs two small RustCrypto crates (`hkdf`, `aes-gcm`, which
//! use AES-NI and PCLMULQDQ when the CPU has them) instead of a TLS stack. What it does not
//! give: forward secrecy (whoever learns the cluster secret and recorded a session's
//! handshake can read that session) — the secret file is the one thing to keep.
//!
//! Sealing is done in place in the codec's write buffer and opening in place in the frame
//! read: no allocation per frame beyond the plain codec's.

use std::io;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// Largest frame payload, in bytes, that the default codec accepts or sends.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Largest frame, in bytes, either side accepts before the handshake is done.
pub const HANDSHAKE_MAX_FRAME_LEN: usize = 4 * 1024;

/// Bytes of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// Bytes of the authentication tag at the end of a sealed frame.
pub const TAG_LEN: usize = 16;

/// Bytes of a session key (AES-256).
pub const SESSION_KEY_LEN: usize = 32;

/// A transport framed by [`FrameCodec`]: what every binary-protocol connection is.
pub type Framed<T> = tokio_util::codec::Framed<T, FrameCodec>;

/// A bare length-delimited codec for the frame format above, refusing frames longer than
/// `max_frame_len` bytes in both directions. It knows no handshake and no sealing: for tools
/// and tests that look at frames on the wire. Connections use [`FrameCodec`].
pub fn frame_codec(max_frame_len: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_offset(0)
        .length_field_length(FRAME_HEADER_LEN)
        .length_adjustment(0)
        .num_skip(FRAME_HEADER_LEN)
        .big_endian()
        .max_frame_length(max_frame_len)
        .new_codec()
}

/// Wraps a transport in a [`FrameCodec`] with the default maximum, [`MAX_FRAME_LEN`], in
/// handshake mode.
pub fn framed<T: AsyncRead + AsyncWrite>(io: T) -> Framed<T> {
    Framed::new(io, FrameCodec::new(MAX_FRAME_LEN))
}

/// A frame the codec refuses to send or to take: too long, or (in a session) one that does
/// not open. `Error::from` reports the first as [`crate::Error::Frame`], the second as
/// [`crate::Error::Session`].
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A frame longer than the codec's current maximum.
    #[error("frame of {len} bytes exceeds the maximum frame length of {max} bytes{when}")]
    TooLong {
        /// The frame's length.
        len: usize,
        /// The maximum it exceeds.
        max: usize,
        /// `""`, or why the maximum is this small.
        when: &'static str,
    },
    /// A sealed frame that does not open, or a direction that cannot be used.
    #[error("{0}")]
    Session(String),
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// One direction's key and frame counter.
struct Sealing {
    cipher: Aes256Gcm,
    /// Frames sealed (or opened) so far in this direction: the next frame's nonce.
    counter: u64,
}

impl Sealing {
    fn new(key: &[u8; SESSION_KEY_LEN]) -> Box<Sealing> {
        Box::new(Sealing { cipher: Aes256Gcm::new(key.into()), counter: 0 })
    }

    /// The next frame's nonce (96 bits: 32 zero bits, then the counter big-endian), and
    /// the counter moved past it.
    fn next_nonce(&mut self) -> Result<Nonce<aes_gcm::aead::consts::U12>, FrameError> {
        let n = self.counter;
        self.counter = n.checked_add(1).ok_or_else(|| {
            FrameError::Session("session exhausted: 2^64 frames; reconnect".into())
        })?;
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&n.to_be_bytes());
        Ok(nonce.into())
    }
}

/// The state of one direction of a connection.
enum Direction {
    /// Frames pass as they are (before the handshake, or in insecure mode).
    Plain,
    /// Frames are sealed (sending) or opened (receiving) with this key.
    Sealed(Box<Sealing>),
    /// A frame failed to open: the stream cannot be trusted any more.
    Broken,
    /// This half of a [`FrameCodec::split`] does not go this way.
    Elsewhere,
}

/// The frame codec of every binary-protocol connection: length-delimited frames
/// (a `LengthDelimitedCodec` inside), bounded to [`HANDSHAKE_MAX_FRAME_LEN`] until the
/// handshake is done, then sealed and opened with the session's keys when it has some (see
/// the module doc). Send [`Bytes`] (a payload), receive [`BytesMut`] (a payload).
pub struct FrameCodec {
    frames: LengthDelimitedCodec,
    /// The largest payload once the handshake is done.
    max_payload: usize,
    /// Whether the handshake is done (the small limit is lifted).
    started: bool,
    send: Direction,
    recv: Direction,
}

impl FrameCodec {
    /// A codec in handshake mode that, once the session starts, takes and sends payloads of
    /// at most `max_payload` bytes.
    pub fn new(max_payload: usize) -> FrameCodec {
        FrameCodec {
            frames: frame_codec(HANDSHAKE_MAX_FRAME_LEN.min(max_payload)),
            max_payload,
            started: false,
            send: Direction::Plain,
            recv: Direction::Plain,
        }
    }

    /// Ends handshake mode: the full maximum applies from the next frame on, and with
    /// `keys` (`(send key, receive key)`) every later frame is sealed and opened with them.
    /// Called by the handshake on both sides once it has succeeded.
    pub fn start_session(
        &mut self,
        keys: Option<(&[u8; SESSION_KEY_LEN], &[u8; SESSION_KEY_LEN])>,
    ) {
        self.started = true;
        let extra = match keys {
            Some((send, recv)) => {
                self.send = Direction::Sealed(Sealing::new(send));
                self.recv = Direction::Sealed(Sealing::new(recv));
                TAG_LEN
            }
            None => 0,
        };
        self.frames.set_max_frame_length(self.max_payload.saturating_add(extra));
    }

    /// Whether frames are sealed (a session with keys has started).
    pub fn is_sealed(&self) -> bool {
        matches!(self.send, Direction::Sealed(_)) || matches!(self.recv, Direction::Sealed(_))
    }

    /// The largest payload sent or taken now.
    pub fn max_payload(&self) -> usize {
        if self.started {
            self.max_payload
        } else {
            HANDSHAKE_MAX_FRAME_LEN.min(self.max_payload)
        }
    }

    /// Splits the codec into a half that only encodes (the sending direction, its key and
    /// counter) and a half that only decodes (the receiving one), for a connection whose
    /// reads and writes are done by separate tasks over separate halves of the socket.
    pub fn split(self) -> (FrameCodec, FrameCodec) {
        let FrameCodec { frames, max_payload, started, send, recv } = self;
        let sender = FrameCodec {
            frames: frames.clone(),
            max_payload,
            started,
            send,
            recv: Direction::Elsewhere,
        };
        let receiver =
            FrameCodec { frames, max_payload, started, send: Direction::Elsewhere, recv };
        (sender, receiver)
    }

    fn too_long(&self, len: usize) -> FrameError {
        let when = if self.started { "" } else { " before the handshake is done" };
        FrameError::TooLong { len, max: self.max_payload(), when }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        if payload.len() > self.max_payload() {
            return Err(self.too_long(payload.len()).into());
        }
        let sealing = match &mut self.send {
            Direction::Plain => return self.frames.encode(payload, dst),
            Direction::Sealed(s) => s,
            Direction::Broken | Direction::Elsewhere => {
                return Err(
                    FrameError::Session("this half of the codec does not send".into()).into()
                )
            }
        };
        let nonce = sealing.next_nonce()?;
        // Sealed in place, right where the frame goes in the write buffer.
        dst.reserve(FRAME_HEADER_LEN + payload.len() + TAG_LEN);
        dst.put_u32((payload.len() + TAG_LEN) as u32);
        let start = dst.len();
        dst.extend_from_slice(&payload);
        let tag = sealing
            .cipher
            .encrypt_in_place_detached(&nonce, b"", &mut dst[start..])
            .map_err(|_| FrameError::Session("a frame could not be sealed".into()))?;
        dst.extend_from_slice(&tag);
        Ok(())
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        let Some(mut frame) = self.frames.decode(src)? else { return Ok(None) };
        let sealing = match &mut self.recv {
            Direction::Plain => return Ok(Some(frame)),
            Direction::Sealed(s) => s,
            Direction::Broken => {
                return Err(FrameError::Session("the session is broken".into()).into())
            }
            Direction::Elsewhere => {
                return Err(
                    FrameError::Session("this half of the codec does not receive".into()).into()
                )
            }
        };
        let number = sealing.counter;
        let opened = match frame.len().checked_sub(TAG_LEN) {
            None => false,
            Some(end) => match sealing.next_nonce() {
                Err(e) => return Err(e.into()),
                Ok(nonce) => {
                    let tag = Tag::clone_from_slice(&frame[end..]);
                    let ok = sealing
                        .cipher
                        .decrypt_in_place_detached(&nonce, b"", &mut frame[..end], &tag)
                        .is_ok();
                    frame.truncate(end);
                    ok
                }
            },
        };
        if !opened {
            self.recv = Direction::Broken;
            return Err(FrameError::Session(format!(
                "frame {number} of the session does not open: it was altered, dropped, \
                 replayed, reordered or sealed with another key"
            ))
            .into());
        }
        Ok(Some(frame))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: [u8; SESSION_KEY_LEN] = [1; SESSION_KEY_LEN];
    const K2: [u8; SESSION_KEY_LEN] = [2; SESSION_KEY_LEN];

    /// A caller's and a server's codec in a session: caller sends with K1, server with K2.
    fn pair() -> (FrameCodec, FrameCodec) {
        let (mut c, mut s) = (FrameCodec::new(MAX_FRAME_LEN), FrameCodec::new(MAX_FRAME_LEN));
        c.start_session(Some((&K1, &K2)));
        s.start_session(Some((&K2, &K1)));
        (c, s)
    }

    fn seal(codec: &mut FrameCodec, payload: &[u8]) -> BytesMut {
        let mut wire = BytesMut::new();
        codec.encode(Bytes::copy_from_slice(payload), &mut wire).unwrap();
        wire
    }

    fn open(codec: &mut FrameCodec, wire: &BytesMut) -> io::Result<Option<BytesMut>> {
        codec.decode(&mut wire.clone())
    }

    fn session_error(r: io::Result<Option<BytesMut>>) -> crate::Error {
        crate::Error::from(r.expect_err("the frame opened"))
    }

    #[test]
    fn sealed_frames_round_trip_and_hide_the_payload() {
        let (mut c, mut s) = pair();
        for (i, msg) in [&b"first request"[..], b"", b"third"].iter().enumerate() {
            let wire = seal(&mut c, msg);
            assert_eq!(wire.len(), FRAME_HEADER_LEN + msg.len() + TAG_LEN, "frame {i}");
            if !msg.is_empty() {
                assert!(!wire.windows(msg.len()).any(|w| w == *msg), "frame {i} is readable");
            }
            assert_eq!(open(&mut s, &wire).unwrap().as_deref(), Some(*msg));
        }
        // And the other way.
        let wire = seal(&mut s, b"answer");
        assert_eq!(open(&mut c, &wire).unwrap().as_deref(), Some(&b"answer"[..]));
    }

    #[test]
    fn the_same_payload_seals_differently_each_time() {
        let (mut c, _) = pair();
        assert_ne!(seal(&mut c, b"same"), seal(&mut c, b"same"));
    }

    #[test]
    fn a_flipped_bit_anywhere_fails_to_open_and_breaks_the_session() {
        let (mut c, _) = pair();
        let wire = seal(&mut c, b"Promote sh1");
        for at in FRAME_HEADER_LEN..wire.len() {
            let (_, mut s) = pair();
            let mut bad = wire.clone();
            bad[at] ^= 0x10;
            let e = session_error(open(&mut s, &bad));
            assert!(matches!(e, crate::Error::Session { .. }), "byte {at}: {e:?}");
            // Not even the genuine frame opens afterwards.
            assert!(open(&mut s, &wire).is_err(), "byte {at}");
        }
    }

    #[test]
    fn a_dropped_replayed_reordered_or_reflected_frame_fails_to_open() {
        let (mut c, _) = pair();
        let (f0, f1) = (seal(&mut c, b"zero"), seal(&mut c, b"one"));

        let (_, mut s) = pair();
        assert!(open(&mut s, &f1).is_err(), "frame 1 opened in place of a dropped frame 0");

        let (_, mut s) = pair();
        assert!(open(&mut s, &f0).unwrap().is_some());
        assert!(open(&mut s, &f0).is_err(), "a replayed frame 0 opened");

        let (_, mut s) = pair();
        assert!(open(&mut s, &f1).is_err(), "frames swapped");

        // A frame of the caller sent back to the caller (the other direction's key).
        let (mut c2, _) = pair();
        let e = session_error(open(&mut c2, &f0));
        assert!(e.to_string().contains("does not open"), "{e}");

        // Too short to carry a tag.
        let (_, mut s) = pair();
        let mut stub = BytesMut::new();
        stub.put_u32(3);
        stub.put_slice(b"abc");
        assert!(open(&mut s, &stub).is_err());
    }

    #[test]
    fn a_frame_sealed_for_another_session_does_not_open() {
        let (mut c, _) = pair();
        let wire = seal(&mut c, b"write");
        let mut other = FrameCodec::new(MAX_FRAME_LEN);
        let k3 = [3; SESSION_KEY_LEN];
        other.start_session(Some((&K2, &k3)));
        assert!(open(&mut other, &wire).is_err());
    }

    #[test]
    fn before_the_handshake_only_small_frames_pass_either_way() {
        let mut c = FrameCodec::new(MAX_FRAME_LEN);
        let mut big = BytesMut::new();
        big.put_u32(MAX_FRAME_LEN as u32);
        big.put_slice(b"a few bytes");
        let e = crate::Error::from(c.decode(&mut big).unwrap_err());
        assert!(matches!(e, crate::Error::Frame { .. }), "{e:?}");
        assert!(big.capacity() < 64 * 1024, "a 16 MiB claim reserved {} bytes", big.capacity());
        let e = c.encode(Bytes::from(vec![0; HANDSHAKE_MAX_FRAME_LEN + 1]), &mut BytesMut::new());
        let e = crate::Error::from(e.unwrap_err());
        assert!(e.to_string().contains("before the handshake"), "{e}");
        assert!(c
            .encode(Bytes::from(vec![0; HANDSHAKE_MAX_FRAME_LEN]), &mut BytesMut::new())
            .is_ok());
        // Once the session starts, the full maximum (plus the tag on the wire) applies.
        let (mut c, mut s) = pair();
        let wire = seal(&mut c, &vec![7; 1 << 20]);
        assert_eq!(open(&mut s, &wire).unwrap().map(|f| f.len()), Some(1 << 20));
        let mut insecure = FrameCodec::new(16);
        insecure.start_session(None);
        assert!(!insecure.is_sealed());
        let mut wire = BytesMut::new();
        insecure.encode(Bytes::from_static(b"plain text"), &mut wire).unwrap();
        assert_eq!(&wire[FRAME_HEADER_LEN..], b"plain text");
        let e = insecure.encode(Bytes::from(vec![0; 17]), &mut BytesMut::new()).unwrap_err();
        assert!(matches!(crate::Error::from(e), crate::Error::Frame { .. }));
    }

    #[test]
    fn split_halves_keep_each_directions_counter() {
        let (c, mut s) = pair();
        let (mut send, mut recv) = c.split();
        let wire = seal(&mut send, b"request 0");
        assert!(open(&mut s, &wire).unwrap().is_some());
        let wire = seal(&mut send, b"request 1");
        assert!(open(&mut s, &wire).unwrap().is_some());
        let answer = seal(&mut s, b"answer 0");
        assert_eq!(open(&mut recv, &answer).unwrap().as_deref(), Some(&b"answer 0"[..]));
        assert!(send.decode(&mut answer.clone()).is_err(), "the sending half received");
        assert!(recv.encode(Bytes::from_static(b"x"), &mut BytesMut::new()).is_err());
    }
}
