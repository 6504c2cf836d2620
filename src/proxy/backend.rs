//! A Service port's ready endpoints and how the next connection picks one:
//! round-robin or least-connections, with ClientIP session affinity on top.
//! Shared by the port's listeners and updated in place when the route changes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::api::routing::Balance;

use super::plan::BackendId;

/// Affinity entries beyond this many are swept of expired ones on insert, so
/// a stream of one-off clients cannot grow the table without bound.
const AFFINITY_SWEEP_AT: usize = 4096;

/// How a port balances, from its route.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Policy {
    pub balance: Balance,
    /// ClientIP affinity and its inactivity timeout.
    pub affinity: Option<Duration>,
}

pub(crate) struct Backend {
    pub id: BackendId,
    /// Connections take a snapshot (an `Arc` clone, no allocation), so a swap
    /// never disturbs one that is already choosing or connected.
    endpoints: RwLock<Arc<[SocketAddrV4]>>,
    policy: RwLock<Policy>,
    /// Bumped by every endpoint change; UDP flows compare it to notice that
    /// their endpoint may be gone.
    generation: AtomicU64,
    next: AtomicUsize,
    /// Open connections (TCP) and live flows (UDP) per endpoint, for
    /// least-connections. Entries stay while a guard holds them.
    active: Mutex<HashMap<SocketAddrV4, Arc<AtomicUsize>>>,
    affinity: Mutex<HashMap<IpAddr, (SocketAddrV4, Instant)>>,
}

/// Counts one connection (or flow) on its endpoint until dropped.
pub(crate) struct ActiveGuard {
    count: Arc<AtomicUsize>,
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    pub fn new(id: BackendId, endpoints: &[SocketAddrV4], policy: Policy) -> Backend {
        Backend {
            id,
            endpoints: RwLock::new(endpoints.into()),
            policy: RwLock::new(policy),
            generation: AtomicU64::new(0),
            next: AtomicUsize::new(0),
            active: Mutex::new(HashMap::new()),
            affinity: Mutex::new(HashMap::new()),
        }
    }

    /// Replaces the endpoint list and the policy; returns whether the
    /// endpoints changed.
    pub fn update(&self, endpoints: &[SocketAddrV4], policy: Policy) -> bool {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = policy;
        if policy.affinity.is_none() {
            self.affinity
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clear();
        }
        let mut current = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        if **current == *endpoints {
            return false;
        }
        *current = endpoints.into();
        self.generation.fetch_add(1, Ordering::Release);
        // Counts of endpoints that left and have no connection open go.
        self.active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|ep, n| endpoints.contains(ep) || n.load(Ordering::Relaxed) > 0);
        true
    }

    pub fn endpoints(&self) -> Arc<[SocketAddrV4]> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn policy(&self) -> Policy {
        *self.policy.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a new connection may still go to `ip` (one of the endpoints),
    /// or a TCP connection to it is open or being made. UDP flows do not
    /// count: they idle for 30 s and a stopped endpoint only moves them.
    pub fn routes_to(&self, ip: Ipv4Addr) -> bool {
        if self.endpoints().iter().any(|e| *e.ip() == ip) {
            return true;
        }
        !self.id.udp
            && self
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|(e, n)| *e.ip() == ip && n.load(Ordering::Relaxed) > 0)
    }

    /// Whether `endpoint` is still one of the ready endpoints.
    pub fn has(&self, endpoint: SocketAddrV4) -> bool {
        self.endpoints().contains(&endpoint)
    }

    /// The endpoints a new connection from `client` tries, in order: its
    /// affinity endpoint first when it has a live one, then by the policy
    /// (round-robin from the next start, or fewest open connections first).
    pub fn order(&self, client: IpAddr) -> Vec<SocketAddrV4> {
        let endpoints = self.endpoints();
        if endpoints.is_empty() {
            return Vec::new();
        }
        let policy = self.policy();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        let mut order: Vec<SocketAddrV4> = attempt_order(endpoints.len(), start)
            .map(|i| endpoints[i])
            .collect();
        if policy.balance == Balance::LeastConnections {
            let active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            let load = |ep: &SocketAddrV4| active.get(ep).map_or(0, |n| n.load(Ordering::Relaxed));
            // Stable: equal loads keep the rotation, so ties still spread.
            order.sort_by_key(load);
        }
        if let Some(timeout) = policy.affinity {
            let affinity = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((ep, at)) = affinity.get(&client)
                && at.elapsed() <= timeout
                && let Some(pos) = order.iter().position(|e| e == ep)
            {
                let ep = order.remove(pos);
                order.insert(0, ep);
            }
        }
        order
    }

    /// Records that `client` is now connected to `endpoint`: refreshes its
    /// affinity and counts the connection until the guard drops.
    pub fn connected(&self, client: IpAddr, endpoint: SocketAddrV4) -> ActiveGuard {
        if let Some(timeout) = self.policy().affinity {
            let mut affinity = self.affinity.lock().unwrap_or_else(|e| e.into_inner());
            if affinity.len() >= AFFINITY_SWEEP_AT {
                affinity.retain(|_, (_, at)| at.elapsed() <= timeout);
            }
            affinity.insert(client, (endpoint, Instant::now()));
        }
        self.connecting(endpoint)
    }

    /// Counts a connection to `endpoint` that is being made, until the guard
    /// drops: taken before the connect, so [`Backend::routes_to`] never
    /// misses a connection between the choice of an endpoint and its open.
    pub fn connecting(&self, endpoint: SocketAddrV4) -> ActiveGuard {
        let count = self
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(endpoint)
            .or_default()
            .clone();
        count.fetch_add(1, Ordering::Relaxed);
        ActiveGuard { count }
    }
}

/// Endpoint indices a connection tries, in order: each once, from `start`,
/// wrapping around.
pub(crate) fn attempt_order(len: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..len).map(move |i| (start + i) % len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> BackendId {
        BackendId {
            namespace: "default".into(),
            name: "web".into(),
            port: 80,
            udp: false,
            local: false,
        }
    }

    fn ep(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 88, 0, 50));

    #[test]
    fn attempt_order_wraps_and_tries_each_once() {
        assert_eq!(attempt_order(3, 1).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(attempt_order(3, 0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(attempt_order(0, 0).count(), 0);
    }

    #[test]
    fn round_robin_rotates_and_tries_everyone() {
        let (a, b) = (ep("10.88.0.2:80"), ep("10.88.0.3:80"));
        let backend = Backend::new(id(), &[a, b], Policy::default());
        assert_eq!(backend.order(CLIENT), vec![a, b]);
        assert_eq!(backend.order(CLIENT), vec![b, a]);
        assert_eq!(backend.order(CLIENT), vec![a, b]);
        assert!(
            Backend::new(id(), &[], Policy::default())
                .order(CLIENT)
                .is_empty()
        );
    }

    #[test]
    fn least_connections_prefers_the_idle_endpoint() {
        let (a, b, c) = (ep("10.88.0.2:80"), ep("10.88.0.3:80"), ep("10.88.0.4:80"));
        let policy = Policy {
            balance: Balance::LeastConnections,
            affinity: None,
        };
        let backend = Backend::new(id(), &[a, b, c], policy);
        let _a1 = backend.connected(CLIENT, a);
        let _a2 = backend.connected(CLIENT, a);
        let b1 = backend.connected(CLIENT, b);
        for _ in 0..3 {
            assert_eq!(backend.order(CLIENT)[0], c);
        }
        let _c1 = backend.connected(CLIENT, c);
        let _c2 = backend.connected(CLIENT, c);
        drop(b1);
        assert_eq!(backend.order(CLIENT)[0], b);
    }

    #[test]
    fn an_endpoint_is_routed_to_until_listed_nowhere_and_idle() {
        let (a, b) = (ep("10.88.0.2:80"), ep("10.88.0.3:80"));
        let ip_a = *a.ip();
        let backend = Backend::new(id(), &[a, b], Policy::default());
        assert!(backend.routes_to(ip_a), "listed");
        let connecting = backend.connecting(a);
        assert!(backend.update(&[b], Policy::default()));
        assert!(backend.routes_to(ip_a), "a connection is being made");
        let open = backend.connected(CLIENT, a);
        drop(connecting);
        assert!(backend.routes_to(ip_a), "a connection is open");
        drop(open);
        assert!(!backend.routes_to(ip_a), "drained");
        assert!(backend.routes_to(*b.ip()));
    }

    #[test]
    fn client_ip_affinity_sticks_until_the_endpoint_goes() {
        let (a, b) = (ep("10.88.0.2:80"), ep("10.88.0.3:80"));
        let policy = Policy {
            balance: Balance::RoundRobin,
            affinity: Some(Duration::from_secs(60)),
        };
        let backend = Backend::new(id(), &[a, b], policy);
        let first = backend.order(CLIENT)[0];
        drop(backend.connected(CLIENT, first));
        for _ in 0..5 {
            assert_eq!(backend.order(CLIENT)[0], first);
        }
        let other = IpAddr::V4(std::net::Ipv4Addr::new(10, 88, 0, 51));
        let picks: std::collections::BTreeSet<_> =
            (0..4).map(|_| backend.order(other)[0]).collect();
        assert_eq!(picks.len(), 2, "other clients still rotate");
        let left = if first == a { b } else { a };
        assert!(backend.update(&[left], policy));
        assert_eq!(backend.order(CLIENT), vec![left]);
    }

    #[test]
    fn update_replaces_only_on_change_and_keeps_old_snapshots() {
        let (a, b) = (ep("10.88.0.2:80"), ep("10.88.0.3:80"));
        let backend = Backend::new(id(), &[a], Policy::default());
        let before = backend.endpoints();
        let g = backend.generation();
        assert!(!backend.update(&[a], Policy::default()));
        assert_eq!(backend.generation(), g);
        assert!(backend.update(&[b], Policy::default()));
        assert_ne!(backend.generation(), g);
        assert_eq!(*before, [a]);
        assert_eq!(*backend.endpoints(), [b]);
        assert!(backend.has(b) && !backend.has(a));
    }
}
