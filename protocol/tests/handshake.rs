//! Handshakes over an in-memory duplex pipe.

use futures::{SinkExt, StreamExt};
use protocol::handshake::{Hello, HelloReply, MAGIC, PROTOCOL_VERSION};
use protocol::{client_handshake, framed, server_handshake, wire, Error, Request, RequestFrame};

#[tokio::test]
async fn matching_peers_learn_each_others_names() {
    let (a, b) = tokio::io::duplex(4096);
    let (mut client, mut server) = (framed(a), framed(b));
    let (c, s) = tokio::join!(
        client_handshake(&mut client, "lb-1"),
        server_handshake(&mut server, "Server2")
    );
    assert_eq!(c.unwrap(), "Server2");
    let hello = s.unwrap();
    assert_eq!(hello.peer, "lb-1");
    assert_eq!(hello.magic, MAGIC);

    // The connection carries requests after the handshake.
    let req = RequestFrame { id: 42, body: Request::Home };
    client.send(wire::encode(&req).unwrap()).await.unwrap();
    let frame = server.next().await.unwrap().unwrap();
    assert_eq!(wire::decode::<RequestFrame>(&frame).unwrap(), req);
}

/// Plays a raw client sending `hello`; returns the reply and the server's result.
async fn raw_client(hello: Hello) -> (HelloReply, protocol::Result<Hello>) {
    let (a, b) = tokio::io::duplex(4096);
    let (mut client, mut server) = (framed(a), framed(b));
    let client_side = async {
        client.send(wire::encode(&hello).unwrap()).await.unwrap();
        let frame = client.next().await.unwrap().unwrap();
        wire::decode::<HelloReply>(&frame).unwrap()
    };
    tokio::join!(client_side, server_handshake(&mut server, "Server1"))
}

#[tokio::test]
async fn another_version_is_refused_with_a_clear_message_on_both_sides() {
    let newer = PROTOCOL_VERSION + 1;
    let (reply, server) = raw_client(Hello { version: newer, ..Hello::new("new-client") }).await;
    let expected = format!(
        "protocol version {newer} not supported; this server speaks version {PROTOCOL_VERSION}"
    );
    assert_eq!(reply, HelloReply::Err { message: expected.clone() });
    match server {
        Err(Error::Handshake(m)) => assert_eq!(m, expected),
        other => panic!("expected a handshake error, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_magic_is_refused_with_a_clear_message_on_both_sides() {
    let (reply, server) = raw_client(Hello { magic: *b"GET ", ..Hello::new("curl") }).await;
    match (reply, server) {
        (HelloReply::Err { message }, Err(Error::Handshake(m))) => {
            assert!(message.starts_with("bad magic: this is not a shardgate peer"), "{message}");
            assert_eq!(message, m);
        }
        other => panic!("expected refusals, got {other:?}"),
    }
}

#[tokio::test]
async fn a_server_that_hangs_up_is_connection_closed() {
    let (a, b) = tokio::io::duplex(4096);
    let mut client = framed(a);
    drop(b);
    let err = client_handshake(&mut client, "lb").await.unwrap_err();
    assert!(matches!(err, Error::ConnectionClosed | Error::Io(_)), "{err:?}");
}

#[tokio::test]
async fn a_refused_client_gets_the_servers_message() {
    let (a, b) = tokio::io::duplex(4096);
    let (mut client, mut server) = (framed(a), framed(b));
    let fake_server = async {
        let _ = server.next().await;
        let reply = HelloReply::Err { message: "shutting down".into() };
        server.send(wire::encode(&reply).unwrap()).await.unwrap();
    };
    let (c, ()) = tokio::join!(client_handshake(&mut client, "lb"), fake_server);
    match c {
        Err(Error::Handshake(m)) => assert_eq!(m, "shutting down"),
        other => panic!("expected a handshake error, got {other:?}"),
    }
}
