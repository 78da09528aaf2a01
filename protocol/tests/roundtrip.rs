//! Every message survives encode → decode, alone and inside a frame.

mod common;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use protocol::{frame_codec, wire, Request, RequestFrame, Response, ResponseFrame, MAX_FRAME_LEN};
use tokio_util::codec::{Decoder, Encoder};

/// Encodes `v`, frames it, unframes it and decodes it.
fn through_frame<T>(v: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut codec = frame_codec(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    codec.encode(wire::encode(v).unwrap(), &mut buf).unwrap();
    let frame = codec.decode(&mut buf).unwrap().expect("a whole frame is buffered");
    assert!(buf.is_empty(), "the codec left {} bytes behind", buf.len());
    wire::decode(&frame).unwrap()
}

proptest! {
    #[test]
    fn request_frames_round_trip(frame in request_frame()) {
        let bytes = wire::encode(&frame).unwrap();
        prop_assert_eq!(&wire::decode::<RequestFrame>(&bytes).unwrap(), &frame);
        prop_assert_eq!(&through_frame(&frame), &frame);
    }

    #[test]
    fn response_frames_round_trip(frame in response_frame()) {
        let bytes = wire::encode(&frame).unwrap();
        prop_assert_eq!(&wire::decode::<ResponseFrame>(&bytes).unwrap(), &frame);
        prop_assert_eq!(&through_frame(&frame), &frame);
    }

    #[test]
    fn schemas_round_trip(s in schema()) {
        prop_assert_eq!(&through_frame(&s), &s);
    }
}

/// The strategies above really produce every variant, so the round trips cover them all.
#[test]
fn strategies_cover_every_variant() {
    let mut runner = TestRunner::deterministic();
    let mut seen_req = [false; REQUEST_VARIANTS];
    let mut seen_resp = [false; RESPONSE_VARIANTS];
    let mut seen_err = false;
    for _ in 0..2000 {
        let r: Request = request().new_tree(&mut runner).unwrap().current();
        seen_req[request_variant(&r)] = true;
        let f: ResponseFrame = response_frame().new_tree(&mut runner).unwrap().current();
        match &f.body {
            Ok(resp) => seen_resp[response_variant(resp)] = true,
            Err(_) => seen_err = true,
        }
    }
    assert!(seen_req.iter().all(|s| *s), "request variants seen: {seen_req:?}");
    assert!(seen_resp.iter().all(|s| *s), "response variants seen: {seen_resp:?}");
    assert!(seen_err, "no error body generated");
}

/// Several frames in one buffer come out one by one, in order.
#[test]
fn back_to_back_frames_decode_in_order() {
    let mut codec = frame_codec(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    for id in 0..5u64 {
        codec
            .encode(wire::encode(&RequestFrame { id, body: Request::Heartbeat }).unwrap(), &mut buf)
            .unwrap();
    }
    for id in 0..5u64 {
        let frame = codec.decode(&mut buf).unwrap().unwrap();
        assert_eq!(wire::decode::<RequestFrame>(&frame).unwrap().id, id);
    }
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
}

/// A message near the frame limit whose decoded size is several times its wire size (many
/// one-byte varints) is not refused by the decoder's memory limit.
#[test]
fn a_large_honest_message_is_within_the_decode_limit() {
    let values = vec![protocol::Value::Int(1); 2_000_000];
    let frame = ResponseFrame::ok(
        1,
        Response::Read { rows: vec![protocol::Row { key: 1, values }], applied_lsn: 7 },
    );
    let bytes = wire::encode(&frame).unwrap();
    assert!(bytes.len() < MAX_FRAME_LEN);
    assert!(bytes.len() * 6 > MAX_FRAME_LEN, "the message must claim more than a frame holds");
    assert_eq!(wire::decode::<ResponseFrame>(&bytes).unwrap(), frame);
}
