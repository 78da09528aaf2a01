//! Encoding of messages into frame payloads: the one module that knows bincode, so the
//! encoding can be swapped without touching anyone else.
//!
//! bincode 2 (serde API), `config::standard()`: little-endian, variable-length integers.
//! Enums are encoded by variant index, so variants may only ever be appended, never
//! reordered or removed.

use bincode::config::{self, Configuration, Limit, LittleEndian, Varint};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::MAX_FRAME_LEN;
use crate::error::{Error, Result};

/// Most bytes the decoder may claim for one message. A length field inside a payload is
/// checked against it before anything is allocated, so a hostile length cannot make us
/// allocate without bound.
///
/// bincode counts claims in memory sizes, not wire bytes: a one-byte varint `u64` claims 8.
/// Eight bytes claimed per wire byte is the worst case for our types, so at 8× the frame
/// limit no frame the codec accepts is ever refused here.
pub const MAX_DECODE_LEN: usize = 8 * MAX_FRAME_LEN;

type WireConfig = Configuration<LittleEndian, Varint, Limit<MAX_DECODE_LEN>>;

fn wire_config() -> WireConfig {
    config::standard().with_limit::<MAX_DECODE_LEN>()
}

/// Encodes `v` as one frame payload.
pub fn encode<T: Serialize>(v: &T) -> Result<Bytes> {
    bincode::serde::encode_to_vec(v, wire_config())
        .map(Bytes::from)
        .map_err(|e| Error::Encode { detail: e.to_string() })
}

/// Decodes one frame payload; bytes left over after the message are an error, since they
/// mean the peer and we disagree about the message type.
pub fn decode<T: DeserializeOwned>(buf: &[u8]) -> Result<T> {
    let (v, used) = bincode::serde::decode_from_slice(buf, wire_config())
        .map_err(|e| Error::Decode { detail: e.to_string() })?;
    if used != buf.len() {
        return Err(Error::Decode {
            detail: format!("{} trailing bytes after a {}-byte message", buf.len() - used, used),
        });
    }
    Ok(v)
}

/// Decodes a message from the start of `buf`, ignoring what follows it: only for reading
/// the fields that every version of a message shares (see [`crate::handshake`]).
pub(crate) fn decode_prefix<T: DeserializeOwned>(buf: &[u8]) -> Result<T> {
    bincode::serde::decode_from_slice(buf, wire_config())
        .map(|(v, _used)| v)
        .map_err(|e| Error::Decode { detail: e.to_string() })
}
