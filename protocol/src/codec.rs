//! Framing of the binary protocol.
//!
//! Format of one frame on the wire:
//!
//! ```text
//! { len: u32 big-endian | payload: len bytes }
//! ```
//!
//! `len` counts the payload only (not the 4 length bytes). The payload is one message encoded
//! by [`crate::wire`]. A length above the decoder's maximum is an error from the decoder, so
//! a hostile or confused peer cannot make us buffer an unbounded frame; the connection that
//! sent it is closed and no other is affected.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

/// Largest frame payload, in bytes, that the default codec accepts or sends.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// Bytes of the length prefix in front of every frame.
pub const FRAME_HEADER_LEN: usize = 4;

/// A codec for the frame format above, refusing payloads longer than `max_frame_len` bytes
/// in both directions.
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

/// Wraps a transport in the frame codec with the default maximum, [`MAX_FRAME_LEN`].
pub fn framed<T: AsyncRead + AsyncWrite>(io: T) -> Framed<T, LengthDelimitedCodec> {
    Framed::new(io, frame_codec(MAX_FRAME_LEN))
}
