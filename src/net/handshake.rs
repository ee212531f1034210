//! Blocking handshake steps over a `TcpStream` (ring links and the coordinator client).
//! See `wire::auth` for the protocol. Every read is fixed-size and bounded by the
//! handshake timeout.

use std::io::{Read, Write};
use std::net::TcpStream;

use crate::limits::HANDSHAKE_TIMEOUT;
use crate::wire::auth::{self, Side, MAC_LEN};
use crate::wire::hello::{Hello, HELLO_LEN};

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    /// The socket failed or timed out.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer's hello is malformed or not the one expected.
    #[error("unexpected hello: {0}")]
    Hello(String),
    /// The peer's MAC is wrong: another secret, another job, or a replay.
    #[error("authentication failed (wrong secret, another job, or a replayed handshake)")]
    BadMac,
}

/// Reads exactly `buf`, waiting at most `HANDSHAKE_TIMEOUT`, or less if the caller already
/// set a shorter read timeout on the stream (its own deadline).
fn read_exact_timed(stream: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<()> {
    let limit = stream.read_timeout()?.map_or(HANDSHAKE_TIMEOUT, |t| t.min(HANDSHAKE_TIMEOUT));
    stream.set_read_timeout(Some(limit))?;
    stream.read_exact(buf)
}

/// A fresh nonce from the OS.
pub(crate) fn nonce() -> [u8; 16] {
    let mut n = [0u8; 16];
    // A failing OS RNG leaves zeros: handshakes still authenticate, replays of the same
    // hello pair become possible. Linux's getrandom does not fail once seeded.
    let _ = getrandom::getrandom(&mut n);
    n
}

/// Initiator step 1: send our hello. Returns its bytes for the later steps.
pub(crate) fn send_hello(stream: &mut TcpStream, hello: &Hello) -> Result<[u8; HELLO_LEN], HandshakeError> {
    let bytes = hello.encode();
    stream.write_all(&bytes)?;
    Ok(bytes)
}

/// Responder step 2: send our hello and our MAC.
pub(crate) fn answer(
    stream: &mut TcpStream,
    secret: &[u8],
    hello_i: &[u8; HELLO_LEN],
    mine: &Hello,
) -> Result<[u8; HELLO_LEN], HandshakeError> {
    let hello_r = mine.encode();
    let mut out = [0u8; HELLO_LEN + MAC_LEN];
    out[..HELLO_LEN].copy_from_slice(&hello_r);
    out[HELLO_LEN..].copy_from_slice(&auth::mac(secret, Side::Responder, hello_i, &hello_r));
    stream.write_all(&out)?;
    Ok(hello_r)
}

/// Initiator step 3: read the responder's hello and MAC, check both, send our MAC.
/// `check` validates the responder's hello fields.
pub(crate) fn finish_initiator(
    stream: &mut TcpStream,
    secret: &[u8],
    hello_i: &[u8; HELLO_LEN],
    check: impl Fn(&Hello) -> Result<(), String>,
) -> Result<Hello, HandshakeError> {
    let mut b = [0u8; HELLO_LEN + MAC_LEN];
    read_exact_timed(stream, &mut b)?;
    let mut hello_r = [0u8; HELLO_LEN];
    hello_r.copy_from_slice(&b[..HELLO_LEN]);
    let h = Hello::decode(&hello_r).map_err(|e| HandshakeError::Hello(e.to_string()))?;
    if !auth::verify(secret, Side::Responder, hello_i, &hello_r, &b[HELLO_LEN..]) {
        return Err(HandshakeError::BadMac);
    }
    check(&h).map_err(HandshakeError::Hello)?;
    stream.write_all(&auth::mac(secret, Side::Initiator, hello_i, &hello_r))?;
    stream.set_read_timeout(None)?;
    Ok(h)
}

/// Responder step 4: read and check the initiator's MAC.
pub(crate) fn finish_responder(
    stream: &mut TcpStream,
    secret: &[u8],
    hello_i: &[u8; HELLO_LEN],
    hello_r: &[u8; HELLO_LEN],
) -> Result<(), HandshakeError> {
    let mut tag = [0u8; MAC_LEN];
    read_exact_timed(stream, &mut tag)?;
    if !auth::verify(secret, Side::Initiator, hello_i, hello_r, &tag) {
        return Err(HandshakeError::BadMac);
    }
    stream.set_read_timeout(None)?;
    Ok(())
}
