//! The frame codec: partial frames wait, oversize frames are errors.

use bytes::{BufMut, Bytes, BytesMut};
use protocol::codec::FRAME_HEADER_LEN;
use protocol::{frame_codec, Error, MAX_FRAME_LEN};
use tokio_util::codec::{Decoder, Encoder};

fn encoded_frame(payload: &'static [u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    frame_codec(MAX_FRAME_LEN).encode(Bytes::from_static(payload), &mut buf).unwrap();
    buf
}

#[test]
fn the_length_prefix_is_u32_big_endian() {
    let buf = encoded_frame(b"hello");
    assert_eq!(&buf[..], b"\x00\x00\x00\x05hello");
}

#[test]
fn a_frame_fed_byte_by_byte_appears_only_with_its_last_byte() {
    let payload = b"shardgate frame payload";
    let whole = encoded_frame(payload);
    let mut codec = frame_codec(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    for (i, byte) in whole.iter().enumerate() {
        buf.put_u8(*byte);
        let out = codec.decode(&mut buf).unwrap();
        if i + 1 < whole.len() {
            assert_eq!(out, None, "frame produced after {} of {} bytes", i + 1, whole.len());
        } else {
            assert_eq!(out.as_deref(), Some(&payload[..]));
        }
    }
    assert!(buf.is_empty());
}

#[test]
fn an_empty_payload_is_a_frame() {
    let mut buf = encoded_frame(b"");
    assert_eq!(buf.len(), FRAME_HEADER_LEN);
    assert_eq!(frame_codec(MAX_FRAME_LEN).decode(&mut buf).unwrap().as_deref(), Some(&b""[..]));
}

#[test]
fn an_oversize_length_prefix_is_a_decoder_error() {
    let mut codec = frame_codec(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    buf.put_u32(MAX_FRAME_LEN as u32 + 1);
    buf.put_slice(b"only a few bytes follow");
    let err = codec.decode(&mut buf).expect_err("an oversize prefix must be refused at once");
    assert!(matches!(Error::from(err), Error::Frame { .. }));
}

#[test]
fn the_limit_is_inclusive_and_applies_both_ways() {
    let mut codec = frame_codec(8);
    let mut buf = BytesMut::new();
    codec.encode(Bytes::from_static(b"12345678"), &mut buf).unwrap();
    assert_eq!(codec.decode(&mut buf).unwrap().as_deref(), Some(&b"12345678"[..]));

    let err = codec.encode(Bytes::from_static(b"123456789"), &mut buf).unwrap_err();
    assert!(matches!(Error::from(err), Error::Frame { .. }));

    let mut buf = BytesMut::new();
    buf.put_u32(9);
    buf.put_slice(b"123456789");
    assert!(codec.decode(&mut buf).is_err());
}

#[test]
fn a_transport_error_stays_an_io_error() {
    let err = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
    assert!(matches!(Error::from(err), Error::Io(_)));
}
