//! Mutual authentication of a connection with a per-job secret (HMAC-SHA256).
//!
//! Both sides exchange fixed-size hellos (each with a fresh random nonce), then each proves
//! it knows the secret with a MAC over both hellos and its side's label:
//!
//! 1. initiator -> responder: `hello_i`
//! 2. responder -> initiator: `hello_r`, `mac(responder, hello_i, hello_r)`
//! 3. initiator -> responder: `mac(initiator, hello_i, hello_r)`
//!
//! A replayed step 3 fails because `hello_r` carries a fresh nonce; a reflected MAC fails
//! because the side label differs. Without a configured secret (loopback jobs), the MAC is
//! keyed with the empty key: it then only guards against accidental cross-talk.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::hello::HELLO_LEN;

/// Length of a MAC in bytes.
pub const MAC_LEN: usize = 32;

/// Which side of the handshake computes the MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that opened the connection.
    Initiator,
    /// The side that accepted it.
    Responder,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Initiator => b"ringcc v1 initiator",
            Side::Responder => b"ringcc v1 responder",
        }
    }
}

fn keyed(secret: &[u8], side: Side, hello_i: &[u8; HELLO_LEN], hello_r: &[u8; HELLO_LEN]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key"));
    m.update(side.label());
    m.update(hello_i);
    m.update(hello_r);
    m
}

/// The MAC `side` sends. (A constant in a build with the test-only `unchecked` feature.)
pub fn mac(secret: &[u8], side: Side, hello_i: &[u8; HELLO_LEN], hello_r: &[u8; HELLO_LEN]) -> [u8; MAC_LEN] {
    if cfg!(feature = "unchecked") {
        return [0; MAC_LEN];
    }
    keyed(secret, side, hello_i, hello_r).finalize().into_bytes().into()
}

/// Checks in constant time that `tag` is the MAC `side` must send.
pub fn verify(secret: &[u8], side: Side, hello_i: &[u8; HELLO_LEN], hello_r: &[u8; HELLO_LEN], tag: &[u8]) -> bool {
    if cfg!(feature = "unchecked") {
        tracing::warn!("built with the test-only `unchecked` feature: connections are not authenticated");
        return tag == [0; MAC_LEN];
    }
    keyed(secret, side, hello_i, hello_r).verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn right_secret_side_and_hellos_only() {
        let (a, b) = ([1u8; HELLO_LEN], [2u8; HELLO_LEN]);
        let t = mac(b"secret", Side::Initiator, &a, &b);
        assert!(verify(b"secret", Side::Initiator, &a, &b, &t));
        assert!(!verify(b"other", Side::Initiator, &a, &b, &t));
        assert!(!verify(b"secret", Side::Responder, &a, &b, &t), "a reflected MAC must fail");
        assert!(!verify(b"secret", Side::Initiator, &a, &[3u8; HELLO_LEN], &t), "a replay with a new nonce must fail");
        assert!(!verify(b"secret", Side::Initiator, &a, &b, &t[..31]));
    }
}
