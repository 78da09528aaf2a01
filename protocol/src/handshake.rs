//! The first frame each way on every connection: the caller sends [`Hello`], the server
//! answers [`HelloReply`]. Only then do request frames flow.
//!
//! The layout of `Hello` starts with `magic` and `version` and must keep doing so in every
//! future version, so that any server can still tell an old or new peer which version it
//! speaks instead of failing with a decode error.
//!
//! The handshake's frames are plain and small (the codec takes at most
//! [`HANDSHAKE_MAX_FRAME_LEN`](crate::codec::HANDSHAKE_MAX_FRAME_LEN) bytes until it is done).
//! Once it has succeeded, both sides start the session in their codec
//! ([`FrameCodec::start_session`](crate::codec::FrameCodec::start_session)): with a cluster
//! secret, with the keys derived from it and both nonces ([`auth::session_keys`]), so every
//! later frame is sealed; without one, plain.
//!
//! Neither side times out here; callers wrap the handshake in `tokio::time::timeout` so a
//! silent peer cannot hold a connection slot.

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::auth;
use crate::codec::Framed;
use crate::error::{Error, Result};
use crate::wire;

/// First bytes of every shardgate hello; anything else is not our peer.
pub const MAGIC: [u8; 4] = *b"SGP\x01";

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 4;

/// The caller's first frame.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Must be [`MAGIC`].
    pub magic: [u8; 4],
    /// The caller's [`PROTOCOL_VERSION`].
    pub version: u16,
    /// Who is calling, for the server's logs.
    pub peer: String,
    /// The caller's random nonce, for the cluster authentication (see [`crate::auth`]).
    pub nonce: [u8; auth::NONCE_LEN],
}

impl Hello {
    /// The hello this build sends, naming the caller `peer`, with a fresh nonce.
    pub fn new(peer: impl Into<String>) -> Hello {
        Hello { magic: MAGIC, version: PROTOCOL_VERSION, peer: peer.into(), nonce: auth::nonce() }
    }
}

/// The server's answer to [`Hello`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum HelloReply {
    /// Accepted; requests may follow.
    Ok {
        /// The server's [`PROTOCOL_VERSION`].
        version: u16,
        /// The server's name.
        name: String,
    },
    /// Refused; the server closes the connection after sending this.
    Err {
        /// Why, for the caller's logs.
        message: String,
    },
    /// The server has a cluster secret: it proves it knows it, and asks the caller to prove
    /// it too (an [`auth::AuthProof`] frame), before its `Ok` (see [`crate::auth`]).
    Challenge {
        /// The server's random nonce.
        nonce: [u8; auth::NONCE_LEN],
        /// HMAC(secret, "server" | caller nonce | server nonce).
        proof: [u8; auth::PROOF_LEN],
    },
}

/// The part of `Hello` every version shares; decoded when a full `Hello` does not decode.
#[derive(Deserialize)]
struct HelloPrefix {
    magic: [u8; 4],
    version: u16,
}

fn check_magic_and_version(magic: [u8; 4], version: u16) -> std::result::Result<(), String> {
    if magic != MAGIC {
        return Err(format!("bad magic: this is not a shardgate peer (got {magic:02x?})"));
    }
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version} not supported; this server speaks version {PROTOCOL_VERSION}"
        ));
    }
    Ok(())
}

/// Whether a server of this build accepts `hello`; the message says why not.
pub fn check_hello(hello: &Hello) -> std::result::Result<(), String> {
    check_magic_and_version(hello.magic, hello.version)
}

async fn send_msg<T, M>(framed: &mut Framed<T>, msg: &M) -> Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
    M: Serialize,
{
    framed.send(wire::encode(msg)?).await?;
    Ok(())
}

async fn recv_frame<T>(framed: &mut Framed<T>) -> Result<bytes::BytesMut>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    match framed.next().await {
        None => Err(Error::ConnectionClosed),
        Some(frame) => Ok(frame?),
    }
}

/// Tells the caller why it is refused (best effort: it may already be gone, and the refusal
/// is the error that matters to our caller); the error to return.
async fn refuse<T>(framed: &mut Framed<T>, message: String) -> Error
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let _ = send_msg(framed, &HelloReply::Err { message: message.clone() }).await;
    Error::Handshake(message)
}

/// What a server makes of the first frame: the hello, or the message to refuse it with.
fn read_hello(frame: &[u8]) -> std::result::Result<Hello, String> {
    match wire::decode::<Hello>(frame) {
        Ok(hello) => check_hello(&hello).map(|()| hello),
        Err(full_err) => match wire::decode_prefix::<HelloPrefix>(frame) {
            Ok(prefix) => {
                check_magic_and_version(prefix.magic, prefix.version)?;
                Err(format!("malformed hello; {full_err}"))
            }
            Err(_) => Err("bad magic: this is not a shardgate peer".to_string()),
        },
    }
}

/// Caller side: sends `hello`, waits for the reply, returns the server's name.
async fn handshake_as<T>(framed: &mut Framed<T>, hello: &Hello) -> Result<String>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    handshake_as_with(framed, hello, auth::secret()).await
}

async fn handshake_as_with<T>(
    framed: &mut Framed<T>,
    hello: &Hello,
    secret: Option<&[u8]>,
) -> Result<String>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    send_msg(framed, hello).await?;
    let frame = recv_frame(framed).await?;
    let mut reply = wire::decode::<HelloReply>(&frame).map_err(|e| {
        Error::Handshake(format!("bad reply: the server is not a shardgate peer; {e}"))
    })?;
    let mut keys = None;
    if let HelloReply::Challenge { nonce, proof } = reply {
        let Some(secret) = secret else {
            return Err(Error::Handshake(
                "the server requires the cluster secret, which this process does not have \
                 (--secret-file or SHARDGATE_SECRET_FILE)"
                    .into(),
            ));
        };
        if !auth::verify_server(secret, &hello.nonce, &nonce, &proof) {
            return Err(Error::Handshake(
                "the server's proof of the cluster secret is wrong: it has another secret".into(),
            ));
        }
        let answer = auth::AuthProof { proof: auth::caller_proof(secret, &nonce, &hello.nonce) };
        send_msg(framed, &answer).await?;
        keys = Some(auth::session_keys(secret, &hello.nonce, &nonce));
        let frame = recv_frame(framed).await?;
        reply = wire::decode::<HelloReply>(&frame)
            .map_err(|e| Error::Handshake(format!("bad reply after authentication; {e}")))?;
    } else if let (HelloReply::Ok { name, .. }, true) = (&reply, secret.is_some()) {
        return Err(Error::Handshake(format!(
            "server '{name}' did not prove the cluster secret; refusing to talk to it"
        )));
    }
    match reply {
        HelloReply::Ok { version, name } if version == hello.version => {
            let keys = keys.as_ref().map(|k| (&k.caller_to_server, &k.server_to_caller));
            framed.codec_mut().start_session(keys);
            Ok(name)
        }
        HelloReply::Ok { version, name } => Err(Error::Handshake(format!(
            "server '{name}' speaks protocol version {version}; this client speaks version {}",
            hello.version
        ))),
        HelloReply::Err { message } => Err(Error::Handshake(message)),
        HelloReply::Challenge { .. } => {
            Err(Error::Handshake("the server asked for authentication twice".into()))
        }
    }
}

/// Caller side of the handshake, presenting itself as `peer_name`; returns the server's name.
pub async fn client_handshake<T>(framed: &mut Framed<T>, peer_name: &str) -> Result<String>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    handshake_as(framed, &Hello::new(peer_name)).await
}

/// [`client_handshake`] with an explicit cluster secret (`None`: none) instead of the
/// process's.
pub async fn client_handshake_with<T>(
    framed: &mut Framed<T>,
    peer_name: &str,
    secret: Option<&[u8]>,
) -> Result<String>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    handshake_as_with(framed, &Hello::new(peer_name), secret).await
}

/// Server side of the handshake, answering as `server_name`; returns the caller's hello.
/// A caller that is not a shardgate peer or speaks another version is told why (a
/// `HelloReply::Err`) and the same message comes back as [`Error::Handshake`]; the caller
/// should then drop the connection.
pub async fn server_handshake<T>(framed: &mut Framed<T>, server_name: &str) -> Result<Hello>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    server_handshake_with(framed, server_name, auth::secret()).await
}

/// [`server_handshake`] with an explicit cluster secret (`None`: none) instead of the
/// process's.
pub async fn server_handshake_with<T>(
    framed: &mut Framed<T>,
    server_name: &str,
    secret: Option<&[u8]>,
) -> Result<Hello>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let (hello, ()) = server_handshake_admit(framed, server_name, secret, || Ok(())).await?;
    Ok(hello)
}

/// [`server_handshake_with`] that, once the caller has proved the secret (or at once without
/// one), asks `admit` whether it may come in: `admit`'s value comes back with the hello (a
/// connection slot, say), or its message is sent to the caller as a `HelloReply::Err` in
/// place of the `Ok` and comes back as [`Error::Handshake`]. So a caller that cannot
/// authenticate never takes what `admit` hands out.
pub async fn server_handshake_admit<T, A>(
    framed: &mut Framed<T>,
    server_name: &str,
    secret: Option<&[u8]>,
    admit: impl FnOnce() -> std::result::Result<A, String>,
) -> Result<(Hello, A)>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let frame = recv_frame(framed).await?;
    let hello = match read_hello(&frame) {
        Ok(hello) => hello,
        Err(message) => return Err(refuse(framed, message).await),
    };
    let mut keys = None;
    if let Some(secret) = secret {
        let nonce = auth::nonce();
        let proof = auth::server_proof(secret, &hello.nonce, &nonce);
        send_msg(framed, &HelloReply::Challenge { nonce, proof }).await?;
        let frame = recv_frame(framed).await?;
        let proved = wire::decode::<auth::AuthProof>(&frame)
            .is_ok_and(|p| auth::verify_caller(secret, &nonce, &hello.nonce, &p.proof));
        if !proved {
            let message =
                format!("authentication failed: '{}' does not know the cluster secret", hello.peer);
            return Err(refuse(framed, message).await);
        }
        keys = Some(auth::session_keys(secret, &hello.nonce, &nonce));
    }
    let admitted = match admit() {
        Ok(a) => a,
        Err(message) => return Err(refuse(framed, message).await),
    };
    let reply = HelloReply::Ok { version: PROTOCOL_VERSION, name: server_name.to_string() };
    send_msg(framed, &reply).await?;
    // The `Ok` went plain; everything after it is sealed.
    let keys = keys.as_ref().map(|k| (&k.server_to_caller, &k.caller_to_server));
    framed.codec_mut().start_session(keys);
    Ok((hello, admitted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::framed;

    fn newer_message() -> String {
        format!(
            "protocol version {} not supported; this server speaks version {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        )
    }

    #[test]
    fn check_hello_explains_refusals() {
        assert_eq!(check_hello(&Hello::new("lb")), Ok(()));
        let bad_magic = Hello { magic: *b"HTTP", ..Hello::new("x") };
        assert!(check_hello(&bad_magic)
            .unwrap_err()
            .starts_with("bad magic: this is not a shardgate peer"));
        let newer = Hello { version: PROTOCOL_VERSION + 1, ..Hello::new("x") };
        assert_eq!(check_hello(&newer).unwrap_err(), newer_message());
    }

    #[test]
    fn a_longer_future_hello_still_gets_the_version_message() {
        #[derive(Serialize)]
        struct HelloNext {
            magic: [u8; 4],
            version: u16,
            features: Vec<String>,
        }
        let frame = wire::encode(&HelloNext {
            magic: MAGIC,
            version: PROTOCOL_VERSION + 1,
            features: vec!["zstd".into()],
        })
        .unwrap();
        let msg = read_hello(&frame).unwrap_err();
        assert_eq!(msg, newer_message());
    }

    #[test]
    fn garbage_first_frame_is_bad_magic() {
        let msg = read_hello(b"GET / HTTP/1.1\r\n").unwrap_err();
        assert!(msg.starts_with("bad magic"), "{msg}");
        assert!(read_hello(b"").unwrap_err().starts_with("bad magic"));
    }

    #[tokio::test]
    async fn a_client_of_another_version_is_refused_on_both_sides() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut client, mut server) = (framed(a), framed(b));
        let hello = Hello { version: PROTOCOL_VERSION + 1, ..Hello::new("future-client") };
        let (c, s) = tokio::join!(
            handshake_as(&mut client, &hello),
            server_handshake(&mut server, "Server1")
        );
        let expected = newer_message();
        match (c, s) {
            (Err(Error::Handshake(cm)), Err(Error::Handshake(sm))) => {
                assert_eq!(cm, expected);
                assert_eq!(sm, expected);
            }
            other => panic!("expected handshake errors on both sides, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_client_with_bad_magic_is_refused_on_both_sides() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut client, mut server) = (framed(a), framed(b));
        let hello = Hello { magic: *b"RESP", ..Hello::new("stranger") };
        let (c, s) = tokio::join!(
            handshake_as(&mut client, &hello),
            server_handshake(&mut server, "Server1")
        );
        match (c, s) {
            (Err(Error::Handshake(cm)), Err(Error::Handshake(sm))) => {
                assert!(cm.starts_with("bad magic: this is not a shardgate peer"), "{cm}");
                assert_eq!(cm, sm);
            }
            other => panic!("expected handshake errors on both sides, got {other:?}"),
        }
    }

    /// Runs both sides of a handshake with the given secrets.
    async fn both(
        client_secret: Option<&[u8]>,
        server_secret: Option<&[u8]>,
    ) -> (Result<String>, Result<Hello>) {
        let (a, b) = tokio::io::duplex(4096);
        let (mut client, mut server) = (framed(a), framed(b));
        // The caller drops its end when it gives up, as a real one closes the connection.
        let caller = async move { client_handshake_with(&mut client, "lb", client_secret).await };
        tokio::join!(caller, server_handshake_with(&mut server, "Server1", server_secret))
    }

    #[tokio::test]
    async fn the_same_secret_on_both_sides_authenticates() {
        let (c, s) = both(Some(b"sesame"), Some(b"sesame")).await;
        assert_eq!(c.unwrap(), "Server1");
        assert_eq!(s.unwrap().peer, "lb");
        let (c, s) = both(None, None).await;
        assert!(c.is_ok() && s.is_ok());
    }

    #[tokio::test]
    async fn after_an_authenticated_handshake_frames_are_sealed_both_ways() {
        for secret in [Some(&b"sesame"[..]), None] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let (mut client, mut server) = (framed(a), framed(b));
            let (c, s) = tokio::join!(
                client_handshake_with(&mut client, "lb", secret),
                server_handshake_with(&mut server, "S", secret)
            );
            assert!(c.is_ok() && s.is_ok(), "{c:?} {s:?}");
            assert_eq!(client.codec().is_sealed(), secret.is_some());
            assert_eq!(server.codec().is_sealed(), secret.is_some());
            // Larger than the handshake's limit: the full one applies now.
            let big = bytes::Bytes::from(vec![b'q'; 8 * 1024]);
            client.send(big.clone()).await.unwrap();
            assert_eq!(server.next().await.unwrap().unwrap(), big);
            server.send(bytes::Bytes::from_static(b"answer")).await.unwrap();
            assert_eq!(&client.next().await.unwrap().unwrap()[..], b"answer");
        }
    }

    #[tokio::test]
    async fn a_wrong_or_missing_secret_is_refused_on_both_sides() {
        // Wrong secret: the caller finds the server's proof wrong and stops; the server
        // never sees a valid proof.
        let (c, s) = both(Some(b"guess"), Some(b"sesame")).await;
        assert!(
            matches!(&c, Err(Error::Handshake(m)) if m.contains("proof of the cluster secret is wrong")),
            "{c:?}"
        );
        assert!(s.is_err(), "{s:?}");
        // No secret against a server that has one.
        let (c, s) = both(None, Some(b"sesame")).await;
        assert!(
            matches!(&c, Err(Error::Handshake(m)) if m.contains("requires the cluster secret")),
            "{c:?}"
        );
        assert!(s.is_err(), "{s:?}");
        // A caller with a secret refuses a server without one (it could be anyone).
        let (c, _) = both(Some(b"sesame"), None).await;
        assert!(matches!(&c, Err(Error::Handshake(m)) if m.contains("did not prove")), "{c:?}");
    }

    #[tokio::test]
    async fn a_forged_proof_is_refused_by_the_server() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut client, mut server) = (framed(a), framed(b));
        let forger = async {
            send_msg(&mut client, &Hello::new("mallory")).await?;
            let _challenge = recv_frame(&mut client).await?;
            send_msg(&mut client, &auth::AuthProof { proof: [7; auth::PROOF_LEN] }).await?;
            let reply = recv_frame(&mut client).await?;
            wire::decode::<HelloReply>(&reply)
        };
        let (f, s) = tokio::join!(forger, server_handshake_with(&mut server, "S", Some(b"k")));
        match f.unwrap() {
            HelloReply::Err { message } => assert!(message.contains("authentication failed")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(s, Err(Error::Handshake(_))));
    }

    #[tokio::test]
    async fn a_server_of_another_version_is_refused_by_the_client() {
        let (a, b) = tokio::io::duplex(4096);
        let (mut client, mut server) = (framed(a), framed(b));
        let fake_server = async {
            let _hello = recv_frame(&mut server).await?;
            send_msg(&mut server, &HelloReply::Ok { version: 9, name: "S9".into() }).await
        };
        let (c, s) = tokio::join!(client_handshake(&mut client, "lb"), fake_server);
        assert!(s.is_ok(), "{s:?}");
        match c {
            Err(Error::Handshake(m)) => {
                let want = format!(
                    "server 'S9' speaks protocol version 9; this client speaks version {PROTOCOL_VERSION}"
                );
                assert_eq!(m, want)
            }
            other => panic!("expected a handshake error, got {other:?}"),
        }
    }
}
