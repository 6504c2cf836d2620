//! The in-agent L4 proxy for Services: a TCP or UDP listener per Service port
//! on its ClusterIP, for NodePorts on the node port address, and for
//! LoadBalancer Services on every node address. Each connection (or UDP flow)
//! goes to a ready endpoint chosen round-robin or by least connections, sticky
//! per client IP with `sessionAffinity: ClientIP`, trying the next endpoint when
//! one refuses; with a `Local` internal (ClusterIP) or external (NodePort,
//! LoadBalancer) traffic policy only to endpoints on this node. Same-node and cross-node endpoints go through the same path.
//!
//! Owns: its listening sockets and the connections and flows it accepted.
//! [`Proxy::apply`] reconciles the listeners to a full set of
//! [`ServiceRoute`]s: a Service port that keeps its addresses keeps its listener
//! and only swaps endpoints and policy (open connections go on, to their
//! endpoint even when it left the list: they drain); a removed one stops
//! accepting at once while its open TCP connections finish; a changed
//! ClusterIP or NodePort rebinds.
//!
//! Must not touch: addresses and links (the ClusterIPs are put on the bridge by
//! [`crate::net`]; listeners bind with `IP_FREEBIND`, so either may go first), the
//! store or the transport.

mod backend;
mod plan;
mod tcp;
mod udp;

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::api::routing::{Protocol, ServiceRoute};
use backend::Backend;
use plan::{BackendId, ListenKey};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    #[error("service port {service}: bind {addr}: {source}")]
    Bind {
        service: String,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("service port {service}: {addr} is already taken by {other}")]
    Conflict {
        service: String,
        addr: SocketAddr,
        other: String,
    },
    #[error("the proxy is shut down")]
    ShutDown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyConfig {
    /// Where NodePorts listen: `0.0.0.0` in production.
    pub node_port_addr: IpAddr,
    /// Where LoadBalancer Services' ports listen: the node's addresses.
    pub load_balancer_addrs: Vec<IpAddr>,
    /// This node's name: `Local` traffic policies keep to its endpoints.
    pub node_name: String,
}

struct Listener {
    backend: BackendId,
    local: SocketAddr,
    task: JoinHandle<()>,
}

#[derive(Default)]
struct State {
    listeners: BTreeMap<ListenKey, Listener>,
    backends: BTreeMap<BackendId, Arc<Backend>>,
    shut_down: bool,
}

pub struct Proxy {
    config: ProxyConfig,
    state: Mutex<State>,
    /// One reconcile (or shutdown) at a time: closing and rebinding a port must
    /// not interleave with another apply.
    apply_lock: tokio::sync::Mutex<()>,
    /// Set to `true` by [`Proxy::shutdown`]; open connections watch it.
    stop: watch::Sender<bool>,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Proxy {
        Proxy {
            config,
            state: Mutex::new(State::default()),
            apply_lock: tokio::sync::Mutex::new(()),
            stop: watch::Sender::new(false),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent
        // enough to reconcile from.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the listeners match `routes` (the full set, not a delta). Returns the
    /// ports that could not be served; all others are serving when it returns,
    /// and removed ones have stopped accepting.
    pub async fn apply(&self, routes: &[ServiceRoute]) -> Vec<ProxyError> {
        let _serial = self.apply_lock.lock().await;
        let plan = plan::plan(
            routes,
            self.config.node_port_addr,
            &self.config.load_balancer_addrs,
            &self.config.node_name,
        );
        let mut errors = plan.errors;

        let (to_close, to_open, closing) = {
            let mut state = self.state();
            if state.shut_down {
                return vec![ProxyError::ShutDown];
            }
            for (id, (endpoints, policy)) in &plan.backends {
                match state.backends.get(id) {
                    Some(backend) => {
                        if backend.update(endpoints, *policy) {
                            info!(service = %id, endpoints = endpoints.len(), "endpoints changed");
                        }
                    }
                    None => {
                        let backend = Arc::new(Backend::new(id.clone(), endpoints, *policy));
                        state.backends.insert(id.clone(), backend);
                    }
                }
            }
            let current: BTreeMap<ListenKey, BackendId> = state
                .listeners
                .iter()
                .map(|(key, listener)| (*key, listener.backend.clone()))
                .collect();
            let (to_close, to_open) = plan::diff(&current, &plan.listeners);
            let closing: Vec<Listener> = to_close
                .iter()
                .filter_map(|key| state.listeners.remove(key))
                .collect();
            (to_close, to_open, closing)
        };

        // Closed before anything is bound, so a port that moves to another
        // Service port can be bound again right away.
        for listener in closing {
            listener.task.abort();
            // The listening socket is dropped with the task; waiting for it makes
            // "removed" mean "refusing" by the time apply returns.
            let _ = listener.task.await;
            info!(service = %listener.backend, addr = %listener.local, "stopped listening");
        }
        debug!(
            closed = to_close.len(),
            opening = to_open.len(),
            "proxy reconcile"
        );

        let mut state = self.state();
        for key in to_open {
            let id = &plan.listeners[&key];
            let backend = state.backends[id].clone();
            let listener = open_listener(key, backend, self.stop.subscribe());
            match listener {
                Ok((local, task)) => {
                    info!(service = %id, addr = %local, "listening");
                    state.listeners.insert(
                        key,
                        Listener {
                            backend: id.clone(),
                            local,
                            task,
                        },
                    );
                }
                Err(source) => {
                    warn!(service = %id, addr = %key.addr, error = %source, "cannot listen");
                    errors.push(ProxyError::Bind {
                        service: id.to_string(),
                        addr: key.addr,
                        source,
                    });
                }
            }
        }
        // Backends no listener uses any more (connections keep their own Arc).
        let State {
            listeners,
            backends,
            ..
        } = &mut *state;
        let used: BTreeSet<&BackendId> = listeners.values().map(|l| &l.backend).collect();
        backends.retain(|id, _| used.contains(id));
        errors
    }

    /// Whether this proxy may still send a connection to `ip`: it is an
    /// endpoint of some Service port, or a TCP connection to it is open or
    /// being made. The agent waits for `false` before it signals a pod that is
    /// being deleted, so no request is cut (see `worker::drain`).
    pub fn routes_to(&self, ip: std::net::Ipv4Addr) -> bool {
        self.state().backends.values().any(|b| b.routes_to(ip))
    }

    /// The addresses being listened on, in order.
    pub fn listening(&self) -> Vec<SocketAddr> {
        self.state().listeners.values().map(|l| l.local).collect()
    }

    /// Stops every listener and closes every open connection; returns once they
    /// are all gone. Later [`Proxy::apply`] calls only report
    /// [`ProxyError::ShutDown`].
    pub async fn shutdown(&self) {
        let _serial = self.apply_lock.lock().await;
        let listeners = {
            let mut state = self.state();
            state.shut_down = true;
            state.backends.clear();
            std::mem::take(&mut state.listeners)
        };
        for listener in listeners.into_values() {
            listener.task.abort();
            let _ = listener.task.await;
        }
        self.stop.send_replace(true);
        // Every connection task holds a receiver; all dropped = all closed.
        self.stop.closed().await;
        info!("proxy shut down");
    }
}

/// Binds `key` and starts its accept loop; returns the bound address.
fn open_listener(
    key: ListenKey,
    backend: Arc<Backend>,
    stop: watch::Receiver<bool>,
) -> io::Result<(SocketAddr, JoinHandle<()>)> {
    match key.protocol {
        Protocol::Tcp => {
            let listener = tcp::bind(key.addr)?;
            let local = listener.local_addr()?;
            Ok((
                local,
                tokio::spawn(tcp::accept_loop(listener, backend, stop)),
            ))
        }
        // A UDP port has no connections to cut on shutdown: aborting its task
        // ends its flows.
        Protocol::Udp => {
            let socket = udp::bind(key.addr)?;
            let local = socket.local_addr()?;
            drop(stop);
            Ok((local, tokio::spawn(udp::serve_loop(socket, backend))))
        }
    }
}

impl Drop for Proxy {
    /// Stops accepting; open connections drain on their own.
    fn drop(&mut self) {
        for listener in self.state().listeners.values() {
            listener.task.abort();
        }
    }
}
