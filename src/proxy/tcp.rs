//! TCP: the listening socket, its accept loop, and one task per connection that
//! picks an endpoint (by the port's policy, the next one on a failed connect)
//! and moves bytes: through a small buffer for request/response traffic, with
//! `splice(2)` (socket → pipe → socket, never through user space) once a
//! direction carries bulk data.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::sys::socket::{Shutdown, setsockopt, shutdown, sockopt};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tracing::{debug, trace, warn};

use super::backend::Backend;

/// How long one endpoint gets to accept before the next one is tried. An
/// unanswered ARP on the bridge takes about 3 s to fail on its own.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Pause after an accept error such as EMFILE, which would otherwise repeat at
/// once in a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const BACKLOG: u32 = 1024;

/// Bytes one `splice` call asks for: the default pipe capacity (16 pages).
const SPLICE_CHUNK: usize = 64 * 1024;

/// A listening socket on `addr`. `SO_REUSEADDR` lets a port be bound again while
/// connections of its previous listener linger; `IP_FREEBIND` lets a ClusterIP
/// listener be bound before its address is on the bridge, so the proxy and the
/// network setup need no ordering between them.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv4() {
        setsockopt(&socket, sockopt::IpFreebind, &true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Accepts until the task is aborted (which closes the listener). The listener
/// is its only state, so an idle Service port costs this one task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    backend: Arc<Backend>,
    stop: watch::Receiver<bool>,
) {
    loop {
        match listener.accept().await {
            Ok((client, peer)) => {
                tokio::spawn(serve(client, peer, backend.clone(), stop.clone()));
            }
            Err(err) => {
                warn!(service = %backend.id, error = %err, "accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    backend: Arc<Backend>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::select! {
        // The connection ends by itself: both sides closed, or an error.
        () = forward(client, peer, &backend) => {}
        // `Proxy::shutdown` cuts open connections. A dropped proxy does not:
        // then the sender is gone and the connection drains.
        Ok(_) = stop.wait_for(|stopped| *stopped) => {
            debug!(service = %backend.id, %peer, "connection closed by proxy shutdown");
        }
    }
}

async fn forward(client: TcpStream, peer: SocketAddr, backend: &Backend) {
    let order = backend.order(peer.ip());
    if order.is_empty() {
        debug!(service = %backend.id, %peer, "no ready endpoints; rejecting connection");
        reject(client);
        return;
    }
    let mut upstream = None;
    for endpoint in &order {
        // Counted first, then checked: an endpoint that left the list since
        // `order` (its pod is being stopped) is not tried, and one still
        // listed is not stopped while this connection may reach it.
        let connecting = backend.connecting(*endpoint);
        if !backend.has(*endpoint) {
            debug!(service = %backend.id, %endpoint, "endpoint left; trying the next");
            continue;
        }
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => {
                upstream = Some((stream, *endpoint, connecting));
                break;
            }
            Ok(Err(err)) => {
                debug!(service = %backend.id, %endpoint, error = %err, "endpoint refused; trying the next")
            }
            Err(_) => {
                debug!(service = %backend.id, %endpoint, "endpoint connect timed out; trying the next")
            }
        }
    }
    let Some((upstream, endpoint, connecting)) = upstream else {
        warn!(service = %backend.id, %peer, endpoints = order.len(), "no endpoint accepted the connection");
        reject(client);
        return;
    };
    // Counted (least-connections, drain) and remembered (affinity) while open.
    let _active = backend.connected(peer.ip(), endpoint);
    drop(connecting);
    // Request/response traffic: do not hold small writes back.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    trace!(service = %backend.id, %peer, %endpoint, "connected");
    match pipe(&client, &upstream).await {
        Ok((up, down)) => {
            trace!(service = %backend.id, %peer, %endpoint, up, down, "connection finished")
        }
        Err(err) => {
            debug!(service = %backend.id, %peer, %endpoint, error = %err, "connection ended with an error")
        }
    }
}

/// Closes with a reset, so the client sees a refusal rather than an empty reply.
fn reject(client: TcpStream) {
    let _ = client.set_zero_linger();
    drop(client);
}

/// The one place bytes move between client and endpoint, both ways at once.
/// When one side ends its stream the other side's write half is shut down
/// (half-close) and the other direction goes on. Returns the bytes sent up
/// (client → endpoint) and down.
pub(crate) async fn pipe(client: &TcpStream, upstream: &TcpStream) -> io::Result<(u64, u64)> {
    let mode = copy_mode();
    tokio::try_join!(
        one_way(client, upstream, mode),
        one_way(upstream, client, mode)
    )
}

/// How bytes move. Measured (BENCHMARKS.md): for small request/response
/// traffic a user-space copy is a little faster (one `read` and one `write`
/// per message, no pipe), for bulk transfers `splice(2)` is (no copy through
/// user space). `Auto`, the default, starts with the copy and switches a
/// direction to splice once a read fills the whole buffer, HAProxy's
/// `splice-auto` rule. `BRAMBLE_PROXY_COPY=splice|read-write` forces one, to
/// measure them on a given board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyMode {
    Auto,
    Splice,
    ReadWrite,
}

fn copy_mode() -> CopyMode {
    static MODE: std::sync::OnceLock<CopyMode> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("BRAMBLE_PROXY_COPY").as_deref() {
        Ok("read-write") => CopyMode::ReadWrite,
        Ok("splice") => CopyMode::Splice,
        _ => CopyMode::Auto,
    })
}

/// The user-space buffer: big enough for any request or response of
/// request/response traffic, small enough that a full one means bulk.
const COPY_BUFFER: usize = 16 * 1024;

/// `src` → `dst` until `src` ends, then half-closes `dst`.
async fn one_way(src: &TcpStream, dst: &TcpStream, mode: CopyMode) -> io::Result<u64> {
    let mut total = 0u64;
    if mode != CopyMode::Splice {
        let mut buf = vec![0u8; COPY_BUFFER];
        loop {
            let n = src
                .async_io(Interest::READABLE, || {
                    nix::unistd::read(src, &mut buf).map_err(io::Error::from)
                })
                .await?;
            if n == 0 {
                half_close(dst)?;
                return Ok(total);
            }
            let mut sent = 0;
            while sent < n {
                sent += dst
                    .async_io(Interest::WRITABLE, || {
                        nix::unistd::write(dst, &buf[sent..n]).map_err(io::Error::from)
                    })
                    .await?;
            }
            total += n as u64;
            if mode == CopyMode::Auto && n == COPY_BUFFER {
                break;
            }
        }
    }
    total += splice_one_way(src, dst).await?;
    Ok(total)
}

/// ENOTCONN: the peer already went away entirely.
fn half_close(dst: &TcpStream) -> io::Result<()> {
    match shutdown(dst.as_raw_fd(), Shutdown::Write) {
        Ok(()) | Err(nix::errno::Errno::ENOTCONN) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// `src` → a pipe → `dst` until `src` ends, then half-closes `dst`. The pipe
/// is drained completely before `src` is read again, so a read only waits on
/// the socket and a write only on the peer.
async fn splice_one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let (pipe_out, pipe_in): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut total = 0u64;
    loop {
        let filled = src
            .async_io(Interest::READABLE, || {
                splice(
                    src.as_fd(),
                    None,
                    pipe_in.as_fd(),
                    None,
                    SPLICE_CHUNK,
                    flags,
                )
                .map_err(io::Error::from)
            })
            .await?;
        if filled == 0 {
            half_close(dst)?;
            return Ok(total);
        }
        let mut left = filled;
        while left > 0 {
            let sent = dst
                .async_io(Interest::WRITABLE, || {
                    splice(pipe_out.as_fd(), None, dst.as_fd(), None, left, flags)
                        .map_err(io::Error::from)
                })
                .await?;
            left -= sent;
        }
        total += filled as u64;
    }
}
