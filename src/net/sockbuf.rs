//! Socket buffer sizes: ringcc's own ([`SOCKET_BUFFER_BYTES`]) where the system lets the
//! whole request through, the kernel's autotuning otherwise.
//!
//! Setting `SO_SNDBUF` or `SO_RCVBUF` turns the kernel's autotuning off for that buffer, and
//! the kernel clamps the request to `net.core.wmem_max` / `net.core.rmem_max`: 212992 bytes
//! on a stock Linux, so a 4 MiB request would end as a fixed buffer of 416 KiB (the kernel
//! doubles it), below a 10 Gbit/s link's bandwidth-delay product at half a millisecond.
//! Autotuning instead grows each buffer up to `net.ipv4.tcp_wmem` / `tcp_rmem`'s maximum
//! (4 and 6 MiB by default). So a buffer is sized here only where its limit is at least the
//! request, and left to autotuning (logged once) where it is not.
//!
//! The unsent part of the send buffer is bounded separately ([`limit_unsent`]).

use std::sync::OnceLock;

use socket2::SockRef;

use crate::limits::{SOCKET_BUFFER_BYTES, SOCKET_NOTSENT_LOWAT_BYTES};

/// Sets the send buffer, if the system's limit lets the whole request through.
pub(crate) fn size_send(s: SockRef<'_>) -> std::io::Result<()> {
    if policy().send {
        s.set_send_buffer_size(SOCKET_BUFFER_BYTES)?;
    }
    Ok(())
}

/// Sets the receive buffer, if the system's limit lets the whole request through. Called
/// before `connect` and `listen`, so the window scale the handshake announces fits it.
pub(crate) fn size_recv(s: SockRef<'_>) -> std::io::Result<()> {
    if policy().recv {
        s.set_recv_buffer_size(SOCKET_BUFFER_BYTES)?;
    }
    Ok(())
}

/// Bounds the bytes queued in the socket but not yet sent to
/// [`SOCKET_NOTSENT_LOWAT_BYTES`] (`TCP_NOTSENT_LOWAT`): writes past it report `WouldBlock`
/// and the socket reports itself writable again once the backlog is under it.
pub(crate) fn limit_unsent(stream: &std::net::TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value: libc::c_int = SOCKET_NOTSENT_LOWAT_BYTES as libc::c_int;
    // SAFETY: `stream` owns an open socket for the duration of the call, and the option
    // value points to a live `c_int` whose exact size is passed (socket2 0.5 has no setter).
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Which buffers ringcc sizes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Policy {
    send: bool,
    recv: bool,
}

fn policy() -> Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    *POLICY.get_or_init(|| {
        let limit = |name: &str| std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).ok();
        let (wmem, rmem) = (limit("wmem_max"), limit("rmem_max"));
        let p = Policy { send: sized_here(wmem.as_deref()), recv: sized_here(rmem.as_deref()) };
        for (set, name, value) in [(p.send, "wmem_max", &wmem), (p.recv, "rmem_max", &rmem)] {
            if !set {
                tracing::info!(
                    limit = value.as_deref().map_or("", str::trim),
                    wanted = SOCKET_BUFFER_BYTES,
                    "net.core.{name} is below ringcc's socket buffer size: leaving that buffer to the kernel's autotuning (raise net.core.{name} to {SOCKET_BUFFER_BYTES} or more to let ringcc size it)"
                );
            }
        }
        p
    })
}

/// Whether to size a buffer given its limit's sysctl text (`None`: unknown, e.g. no
/// `/proc`; then ringcc sizes it as before and the kernel clamps it as it must).
fn sized_here(limit: Option<&str>) -> bool {
    match limit.map(|t| t.trim().parse::<usize>()) {
        Some(Ok(max)) => max >= SOCKET_BUFFER_BYTES,
        Some(Err(_)) | None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stock_limit_leaves_the_buffer_to_autotuning() {
        // Linux's default net.core.wmem_max / rmem_max.
        assert!(!sized_here(Some("212992\n")));
        assert!(!sized_here(Some(&(SOCKET_BUFFER_BYTES - 1).to_string())));
    }

    #[test]
    fn a_limit_that_fits_the_request_lets_ringcc_size_it() {
        assert!(sized_here(Some(&format!("{SOCKET_BUFFER_BYTES}\n"))));
        assert!(sized_here(Some("67108864")));
    }

    #[test]
    fn the_unsent_backlog_is_bounded_on_a_real_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let stream = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        limit_unsent(&stream).expect("setsockopt");
        use std::os::fd::AsRawFd;
        let mut got: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an open socket, and `got`/`len` are live and sized for the option.
        let r = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_NOTSENT_LOWAT,
                (&mut got as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        assert_eq!(got as u32, SOCKET_NOTSENT_LOWAT_BYTES);
    }

    #[test]
    fn an_unknown_limit_sizes_it_as_before() {
        assert!(sized_here(None));
        assert!(sized_here(Some("not a number")));
    }
}
