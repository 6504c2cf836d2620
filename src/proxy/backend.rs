//! A Service port's ready endpoints and its round-robin position, shared by its
//! listeners and swapped in place when the endpoints change.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::plan::BackendId;

pub(crate) struct Backend {
    pub id: BackendId,
    /// Connections take a snapshot (an `Arc` clone, no allocation), so a swap
    /// never disturbs one that is already choosing or connected.
    endpoints: RwLock<Arc<[SocketAddrV4]>>,
    next: AtomicUsize,
}

impl Backend {
    pub fn new(id: BackendId, endpoints: &[SocketAddrV4]) -> Backend {
        Backend {
            id,
            endpoints: RwLock::new(endpoints.into()),
            next: AtomicUsize::new(0),
        }
    }

    /// Replaces the endpoint list; returns whether it changed.
    pub fn set_endpoints(&self, endpoints: &[SocketAddrV4]) -> bool {
        let mut current = self.endpoints.write().unwrap_or_else(|e| e.into_inner());
        if **current == *endpoints {
            return false;
        }
        *current = endpoints.into();
        true
    }

    pub fn endpoints(&self) -> Arc<[SocketAddrV4]> {
        self.endpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where the next connection starts in a list of `len` endpoints.
    pub fn next_start(&self, len: usize) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed) % len.max(1)
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
        }
    }

    #[test]
    fn attempt_order_wraps_and_tries_each_once() {
        assert_eq!(attempt_order(3, 1).collect::<Vec<_>>(), vec![1, 2, 0]);
        assert_eq!(attempt_order(3, 0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(attempt_order(0, 0).count(), 0);
    }

    #[test]
    fn starts_rotate_round_robin() {
        let backend = Backend::new(id(), &[]);
        let starts: Vec<_> = (0..5).map(|_| backend.next_start(2)).collect();
        assert_eq!(starts, vec![0, 1, 0, 1, 0]);
        assert_eq!(backend.next_start(0), 0);
    }

    #[test]
    fn swap_replaces_only_on_change_and_keeps_old_snapshots() {
        let a: SocketAddrV4 = "10.88.0.2:80".parse().unwrap();
        let b: SocketAddrV4 = "10.88.0.3:80".parse().unwrap();
        let backend = Backend::new(id(), &[a]);
        let before = backend.endpoints();
        assert!(!backend.set_endpoints(&[a]));
        assert!(backend.set_endpoints(&[b]));
        assert_eq!(*before, [a]);
        assert_eq!(*backend.endpoints(), [b]);
    }
}
