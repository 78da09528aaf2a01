//! Whatever bytes a peer sends, decoding returns a value or an error; it never panics and
//! never allocates what a forged length asks for.

mod common;

use common::*;
use proptest::prelude::*;
use protocol::handshake::{Hello, HelloReply};
use protocol::wire::{self, MAX_DECODE_LEN};
use protocol::{Consistency, Error, ReadReq, Request, RequestFrame, ResponseFrame};

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        // A successful decode must be the unique reading of these bytes: re-encoding gives
        // them back.
        if let Ok(v) = wire::decode::<RequestFrame>(&bytes) {
            prop_assert_eq!(wire::decode::<RequestFrame>(&wire::encode(&v).unwrap()).unwrap(), v);
        }
        if let Ok(v) = wire::decode::<ResponseFrame>(&bytes) {
            prop_assert_eq!(wire::decode::<ResponseFrame>(&wire::encode(&v).unwrap()).unwrap(), v);
        }
        let _ = wire::decode::<Hello>(&bytes);
        let _ = wire::decode::<HelloReply>(&bytes);
    }

    #[test]
    fn every_truncation_of_a_request_is_an_error(frame in request_frame()) {
        let bytes = wire::encode(&frame).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(
                wire::decode::<RequestFrame>(&bytes[..cut]).is_err(),
                "a {}-byte prefix of a {}-byte message decoded", cut, bytes.len()
            );
        }
    }

    #[test]
    fn every_truncation_of_a_response_is_an_error(frame in response_frame()) {
        let bytes = wire::encode(&frame).unwrap();
        for cut in 0..bytes.len() {
            prop_assert!(
                wire::decode::<ResponseFrame>(&bytes[..cut]).is_err(),
                "a {}-byte prefix of a {}-byte message decoded", cut, bytes.len()
            );
        }
    }

    #[test]
    fn trailing_bytes_are_an_error(frame in request_frame(), extra in 1usize..8) {
        let mut bytes = wire::encode(&frame).unwrap().to_vec();
        bytes.extend(std::iter::repeat_n(0u8, extra));
        match wire::decode::<RequestFrame>(&bytes) {
            Err(Error::Decode { detail }) => prop_assert!(detail.contains("trailing"), "{}", detail),
            other => prop_assert!(false, "expected a decode error, got {:?}", other),
        }
    }

    #[test]
    fn corrupted_bytes_never_panic(frame in response_frame(), at in any::<prop::sample::Index>(), xor in 1u8..) {
        let mut bytes = wire::encode(&frame).unwrap().to_vec();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Ok(v) = wire::decode::<ResponseFrame>(&bytes) {
            prop_assert_ne!(v, frame);
        }
    }
}

/// Pins the wire layout of one message, so the forged lengths below hit the field they aim at.
#[test]
fn golden_read_request() {
    let frame = RequestFrame {
        id: 0,
        body: Request::Read(ReadReq {
            shard: "ab".into(),
            low: 0,
            high: 0,
            min_lsn: 0,
            consistency: Consistency::Linearizable,
        }),
    };
    // id=0 | variant 4 (Read) | shard len 2 | "ab" | low 0 | high 0 (zig-zag varints) | min_lsn 0
    // | consistency variant 1
    assert_eq!(&wire::encode(&frame).unwrap()[..], &[0, 4, 2, b'a', b'b', 0, 0, 0, 1]);
}

/// `[id 0 | Read | shard length (u64 varint, marker 253) | ...]` with the given length.
fn read_request_with_shard_len(len: u64) -> Vec<u8> {
    let mut bytes = vec![0, 4, 253];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(b"ab\0\0\0\0");
    bytes
}

#[test]
fn a_forged_huge_string_length_is_refused_without_allocating() {
    for len in [u64::MAX, 1 << 60, (MAX_DECODE_LEN as u64) + 1] {
        match wire::decode::<RequestFrame>(&read_request_with_shard_len(len)) {
            Err(Error::Decode { .. }) => {}
            other => panic!("length {len}: expected a decode error, got {other:?}"),
        }
    }
}

#[test]
fn a_forged_huge_row_count_is_refused() {
    // id 0 | variant 5 (Write) | shard "a" | curr_idx None | rows length 2^60 | one byte
    let mut bytes = vec![0, 5, 1, b'a', 0, 253];
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    bytes.push(0);
    assert!(matches!(wire::decode::<RequestFrame>(&bytes), Err(Error::Decode { .. })));
}
