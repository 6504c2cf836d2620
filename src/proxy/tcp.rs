//! TCP: the listening socket, its accept loop, and one task per connection that
//! picks an endpoint (round-robin, next one on a failed connect) and copies bytes.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tracing::{debug, trace, warn};

use super::backend::{Backend, attempt_order};

/// How long one endpoint gets to accept before the next one is tried. An
/// unanswered ARP on the bridge takes about 3 s to fail on its own.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Pause after an accept error such as EMFILE, which would otherwise repeat at
/// once in a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const BACKLOG: u32 = 1024;

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

async fn forward(mut client: TcpStream, peer: SocketAddr, backend: &Backend) {
    let endpoints = backend.endpoints();
    if endpoints.is_empty() {
        debug!(service = %backend.id, %peer, "no ready endpoints; rejecting connection");
        reject(client);
        return;
    }
    let start = backend.next_start(endpoints.len());
    let mut upstream = None;
    for i in attempt_order(endpoints.len(), start) {
        let endpoint = endpoints[i];
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => {
                upstream = Some((stream, endpoint));
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
    let Some((mut upstream, endpoint)) = upstream else {
        warn!(service = %backend.id, %peer, endpoints = endpoints.len(), "no endpoint accepted the connection");
        reject(client);
        return;
    };
    drop(endpoints);
    // Request/response traffic: do not hold small writes back.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    trace!(service = %backend.id, %peer, %endpoint, "connected");
    match pipe(&mut client, &mut upstream).await {
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

/// The one place bytes move between client and endpoint, both ways at once. When
/// one side ends its stream the other side's write half is shut down
/// (half-close) and the other direction goes on. Swap in `splice(2)` here.
pub(crate) async fn pipe(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
) -> io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional(client, upstream).await
}
