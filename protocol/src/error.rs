//! The crate's one error type.

use tokio_util::codec::LengthDelimitedCodecError;

use crate::codec::FrameError;

/// Everything that can go wrong while framing, encoding, decoding or shaking hands.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The transport failed (reset, broken pipe, ...).
    #[error("io error; {0}")]
    Io(std::io::Error),
    /// The frame codec refused a frame, e.g. a length prefix above the maximum frame length.
    #[error("bad frame; {detail}")]
    Frame {
        /// What the codec reported.
        detail: String,
    },
    /// A value could not be encoded.
    #[error("encode failed; {detail}")]
    Encode {
        /// What the encoder reported.
        detail: String,
    },
    /// A frame's payload is not a valid message of the expected type.
    #[error("decode failed; {detail}")]
    Decode {
        /// What the decoder reported.
        detail: String,
    },
    /// The peer is not a shardgate peer or speaks another protocol version.
    #[error("handshake failed; {0}")]
    Handshake(String),
    /// A frame of an authenticated session does not open: it was altered, dropped, replayed
    /// or reordered on the way, or sealed with another key (see [`crate::codec`]). The
    /// connection cannot be trusted any more and is closed; nothing of the frame is used.
    #[error("session broken; {detail}")]
    Session {
        /// Which frame, and why.
        detail: String,
    },
    /// The peer closed the connection where a frame was expected.
    #[error("connection closed by peer")]
    ConnectionClosed,
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl From<std::io::Error> for Error {
    /// The codecs report an oversize frame (and the frame codec a frame that does not open)
    /// as an `io::Error` wrapping their own error type; telling them apart lets callers log
    /// "peer sent a too-large frame" or "the session is broken" instead of a transport
    /// failure.
    fn from(e: std::io::Error) -> Self {
        let inner = e.get_ref();
        if let Some(codec_err) = inner.and_then(|i| i.downcast_ref::<LengthDelimitedCodecError>()) {
            return Error::Frame { detail: codec_err.to_string() };
        }
        match inner.and_then(|i| i.downcast_ref::<FrameError>()) {
            Some(e @ FrameError::TooLong { .. }) => Error::Frame { detail: e.to_string() },
            Some(FrameError::Session(detail)) => Error::Session { detail: detail.clone() },
            None => Error::Io(e),
        }
    }
}
