//! The crate's one error type.

use tokio_util::codec::LengthDelimitedCodecError;

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
    /// The peer closed the connection where a frame was expected.
    #[error("connection closed by peer")]
    ConnectionClosed,
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, Error>;

impl From<std::io::Error> for Error {
    /// `LengthDelimitedCodec` reports an oversize frame as an `io::Error` wrapping its own
    /// error type; telling it apart lets callers log "peer sent a too-large frame" instead of a
    /// transport failure.
    fn from(e: std::io::Error) -> Self {
        match e.get_ref().and_then(|inner| inner.downcast_ref::<LengthDelimitedCodecError>()) {
            Some(codec_err) => Error::Frame { detail: codec_err.to_string() },
            None => Error::Io(e),
        }
    }
}
