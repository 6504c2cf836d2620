//! UDP: a socket per Service port address and a *flow* per client address. A
//! flow is a socket connected to the endpoint the port's policy picked; the
//! client's datagrams go out on it and the endpoint's replies come back from
//! the Service address the client sent to (for a wildcard NodePort socket,
//! the exact local address, learnt with `IP_PKTINFO`).
//!
//! UDP has no connection to drain: a flow whose endpoint left the ready list
//! moves to another endpoint with its next datagram (what kube-proxy does by
//! clearing conntrack), a refused endpoint (ICMP port unreachable) makes the
//! flow resend its last datagram to the next endpoint, a flow idle for
//! [`FLOW_IDLE`] ends, and every flow ends with its listener.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, SockaddrIn,
    bind as bind_fd, recvmsg, sendmsg, setsockopt, socket, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, trace, warn};

use super::backend::{ActiveGuard, Backend};

/// A flow with no datagram either way for this long ends (conntrack's
/// default UDP timeout).
pub(crate) const FLOW_IDLE: Duration = Duration::from_secs(30);

/// Flows per listening socket; datagrams of new clients beyond it are dropped
/// until some flow ends, so a flood of source ports cannot exhaust the
/// agent's file descriptors.
const MAX_FLOWS: usize = 4096;

/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;

/// A UDP socket on `addr` with `IP_FREEBIND` (as for TCP) and, on a wildcard
/// address, `IP_PKTINFO` so replies leave from the address that was asked.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let SocketAddr::V4(v4) = addr else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "IPv6 Service addresses are not supported",
        ));
    };
    let fd: OwnedFd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::IpFreebind, &true)?;
    if v4.ip().is_unspecified() {
        setsockopt(&fd, sockopt::Ipv4PacketInfo, &true)?;
    }
    bind_fd(fd.as_raw_fd(), &SockaddrIn::from(v4))?;
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// The listening side: where replies go out from.
struct Listener {
    socket: UdpSocket,
    wildcard: bool,
}

impl Listener {
    /// One datagram, its sender and (on a wildcard socket) the local address
    /// it was sent to.
    async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, Option<Ipv4Addr>)> {
        if !self.wildcard {
            let (n, from) = self.socket.recv_from(buf).await?;
            return Ok((n, from, None));
        }
        self.socket
            .async_io(Interest::READABLE, || {
                let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
                let mut iov = [IoSliceMut::new(buf)];
                let msg = recvmsg::<SockaddrIn>(
                    self.socket.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::empty(),
                )?;
                let local = msg.cmsgs().ok().and_then(|mut c| {
                    c.find_map(|m| match m {
                        ControlMessageOwned::Ipv4PacketInfo(info) => {
                            Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)))
                        }
                        _ => None,
                    })
                });
                let from = msg
                    .address
                    .map(|a| SocketAddr::V4(SocketAddrV4::new(a.ip(), a.port())))
                    .ok_or_else(|| io::Error::other("datagram without a source address"))?;
                Ok((msg.bytes, from, local))
            })
            .await
    }

    async fn send(&self, data: &[u8], to: SocketAddr, local: Option<Ipv4Addr>) -> io::Result<()> {
        let (Some(local), SocketAddr::V4(to)) = (local, to) else {
            self.socket.send_to(data, to).await?;
            return Ok(());
        };
        let mut info: libc::in_pktinfo = empty_pktinfo();
        info.ipi_spec_dst.s_addr = u32::from(local).to_be();
        self.socket
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(data)];
                let cmsg = [ControlMessage::Ipv4PacketInfo(&info)];
                sendmsg(
                    self.socket.as_raw_fd(),
                    &iov,
                    &cmsg,
                    MsgFlags::empty(),
                    Some(&SockaddrIn::from(to)),
                )?;
                Ok(())
            })
            .await
    }
}

fn empty_pktinfo() -> libc::in_pktinfo {
    libc::in_pktinfo {
        ipi_ifindex: 0,
        ipi_spec_dst: libc::in_addr { s_addr: 0 },
        ipi_addr: libc::in_addr { s_addr: 0 },
    }
}

/// Where one client's datagrams go now.
struct Route {
    endpoint: SocketAddrV4,
    generation: u64,
    /// Endpoints that refused since the last reply.
    refused: Vec<SocketAddrV4>,
    active: ActiveGuard,
}

struct Flow {
    client: SocketAddr,
    local: Option<Ipv4Addr>,
    socket: UdpSocket,
    route: Mutex<Route>,
    /// The client's last datagram, resent when its endpoint refuses.
    last: Mutex<Vec<u8>>,
    lastactive: Mutex<Instant>,
}

impl Flow {
    fn touch(&self) {
        *self.lastactive.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn idle_since(&self) -> Instant {
        *self.lastactive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Marks the current endpoint as refusing; returns it.
    fn refused(&self) -> SocketAddrV4 {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        let endpoint = route.endpoint;
        route.refused.push(endpoint);
        endpoint
    }

    /// Points the flow at the first endpoint of the policy's order that has not
    /// refused; `false` when none is left.
    fn repoint(&self, backend: &Backend) -> bool {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        let order = backend.order(self.client.ip());
        let Some(next) = order.into_iter().find(|e| !route.refused.contains(e)) else {
            return false;
        };
        if let Err(e) = connect_now(&self.socket, next) {
            debug!(service = %backend.id, endpoint = %next, error = %e, "cannot point flow");
            return false;
        }
        route.active = backend.connected(self.client.ip(), next);
        route.endpoint = next;
        route.generation = backend.generation();
        true
    }
}

/// `connect(2)` on a UDP socket only sets its peer: it never waits.
fn connect_now(socket: &UdpSocket, endpoint: SocketAddrV4) -> io::Result<()> {
    nix::sys::socket::connect(socket.as_raw_fd(), &SockaddrIn::from(endpoint))?;
    Ok(())
}

fn is_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECONNREFUSED)
}

/// Serves one listening socket until the task is aborted, which also ends
/// every flow (they live in its `JoinSet`).
pub(crate) async fn serve_loop(socket: UdpSocket, backend: Arc<Backend>) {
    let wildcard = socket
        .local_addr()
        .map(|a| a.ip().is_unspecified())
        .unwrap_or(false);
    let listener = Arc::new(Listener { socket, wildcard });
    let flows: Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>> = Arc::default();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // Reap finished flow tasks so the set does not grow.
        while tasks.try_join_next().is_some() {}
        let (n, client, local) = match listener.recv(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors for earlier replies surface here; they concern
                // one client, not the socket.
                trace!(service = %backend.id, error = %e, "receive error");
                continue;
            }
        };
        let data = &buf[..n];
        let existing = flows
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client)
            .cloned();
        let flow = match existing {
            Some(flow) => flow,
            None => {
                let count = flows.lock().unwrap_or_else(|e| e.into_inner()).len();
                if count >= MAX_FLOWS {
                    debug!(service = %backend.id, %client, "too many UDP flows; datagram dropped");
                    continue;
                }
                let Some(flow) = new_flow(&backend, client, local) else {
                    continue;
                };
                let flow = Arc::new(flow);
                flows
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client, flow.clone());
                tasks.spawn(replies(
                    flow.clone(),
                    listener.clone(),
                    backend.clone(),
                    flows.clone(),
                ));
                flow
            }
        };
        flow.touch();
        {
            let moved = {
                let route = flow.route.lock().unwrap_or_else(|e| e.into_inner());
                route.generation != backend.generation() && !backend.has(route.endpoint)
            };
            if moved && !flow.repoint(&backend) {
                debug!(service = %backend.id, %client, "no ready endpoint; datagram dropped");
                continue;
            }
        }
        {
            let mut last = flow.last.lock().unwrap_or_else(|e| e.into_inner());
            last.clear();
            last.extend_from_slice(data);
        }
        send_up(&flow, &backend, data).await;
    }
}

fn new_flow(backend: &Backend, client: SocketAddr, local: Option<Ipv4Addr>) -> Option<Flow> {
    let order = backend.order(client.ip());
    let Some(&first) = order.first() else {
        debug!(service = %backend.id, %client, "no ready endpoints; datagram dropped");
        return None;
    };
    let socket = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|s| {
            s.set_nonblocking(true)?;
            UdpSocket::from_std(s)
        })
        .and_then(|s| connect_now(&s, first).map(|()| s));
    let socket = match socket {
        Ok(s) => s,
        Err(e) => {
            warn!(service = %backend.id, error = %e, "cannot open a UDP flow socket");
            return None;
        }
    };
    trace!(service = %backend.id, %client, endpoint = %first, "new UDP flow");
    Some(Flow {
        client,
        local,
        socket,
        route: Mutex::new(Route {
            endpoint: first,
            generation: backend.generation(),
            refused: Vec::new(),
            active: backend.connected(client.ip(), first),
        }),
        last: Mutex::new(Vec::new()),
        lastactive: Mutex::new(Instant::now()),
    })
}

/// Sends a client datagram to the flow's endpoint; a pending refusal from an
/// earlier datagram moves the flow on first.
async fn send_up(flow: &Flow, backend: &Backend, data: &[u8]) {
    for _ in 0..=backend.endpoints().len() {
        match flow.socket.send(data).await {
            Ok(_) => return,
            Err(e) if is_refused(&e) => {
                let endpoint = flow.refused();
                debug!(service = %backend.id, %endpoint, "endpoint refused; trying the next");
                if !flow.repoint(backend) {
                    return;
                }
            }
            Err(e) => {
                trace!(service = %backend.id, error = %e, "datagram dropped");
                return;
            }
        }
    }
}

/// Carries the endpoint's replies back to the client until the flow idles out.
async fn replies(
    flow: Arc<Flow>,
    listener: Arc<Listener>,
    backend: Arc<Backend>,
    flows: Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let deadline = flow.idle_since() + FLOW_IDLE;
        tokio::select! {
            r = flow.socket.recv(&mut buf) => match r {
                Ok(n) => {
                    flow.touch();
                    flow.route.lock().unwrap_or_else(|e| e.into_inner()).refused.clear();
                    if let Err(e) = listener.send(&buf[..n], flow.client, flow.local).await {
                        trace!(service = %backend.id, client = %flow.client, error = %e, "reply dropped");
                    }
                }
                Err(e) if is_refused(&e) => {
                    let endpoint = flow.refused();
                    debug!(service = %backend.id, %endpoint, "endpoint refused; resending to the next");
                    if !flow.repoint(&backend) {
                        break;
                    }
                    let last = flow.last.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    send_up(&flow, &backend, &last).await;
                }
                Err(e) => {
                    debug!(service = %backend.id, error = %e, "UDP flow failed");
                    break;
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                if flow.idle_since() + FLOW_IDLE <= Instant::now() {
                    break;
                }
            }
        }
    }
    flows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&flow.client);
    trace!(service = %backend.id, client = %flow.client, "UDP flow ended");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    #[test]
    fn refusal_is_recognised() {
        assert!(is_refused(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
        assert!(!is_refused(&io::Error::from_raw_os_error(libc::EAGAIN)));
    }

    #[tokio::test]
    async fn wildcard_sockets_learn_the_local_address() {
        let socket = bind("0.0.0.0:0".parse().unwrap()).unwrap();
        let port = socket.local_addr().unwrap().port();
        let listener = Listener {
            socket,
            wildcard: true,
        };
        let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        client.send_to(b"hi", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 16];
        let (n, from, local) = listener.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(from, client.local_addr().unwrap());
        assert_eq!(local, Some(Ipv4Addr::LOCALHOST));
        listener.send(b"yo", from, local).await.unwrap();
        let (n, reply_from) = client.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"yo");
        assert_eq!(reply_from.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
}
