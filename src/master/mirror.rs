//! The master's registry mirror: its image store, served read-only to the
//! cluster's own nodes and admins (`runtime::images::mirror`), so that an
//! image imported on the master reaches every worker without an outside
//! registry.
//!
//! Starting it turns on the store's `keep-layer-blobs` (imports and pulls
//! keep what a registry hands out), binds the listener, and works out the
//! address the workers are told in the Service table. Who may read: a
//! request must carry a token signed by a registered node's key or an admin
//! key (`transport::mirror_token`); the node keys are looked up in the store
//! at each request, so a node deleted from the cluster reads nothing more.
//! Tag resolutions are signed with the cluster key.
//!
//! Owns: that wiring. Must not touch: the HTTP protocol or the store's
//! layout (the runtime's), the reconcile loop.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::api::{Kind, NODE_KEY_ANNOTATION, Object, ObjectKey};
use crate::runtime::images::mirror::{self, Access, Authorize};
use crate::runtime::{ImageStore, RuntimeError};
use crate::store::Store;
use crate::transport::envelope::admin_id;
use crate::transport::{KeyPair, PublicKey, mirror_token};

/// The default port (`bramble master`): the registry port 5000 is often
/// taken on a home server, and k3s's embedded mirror shares its API port.
pub const DEFAULT_PORT: u16 = 5050;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorError {
    #[error("registry mirror: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("registry mirror: {0}")]
    Store(#[from] RuntimeError),
}

/// Who the mirror serves, and the key it signs tag digests with.
pub struct Readers {
    /// The master's store: registered nodes' keys.
    pub store: Store,
    pub admin_keys: Vec<PublicKey>,
    /// How far ahead of our clock a token may be dated.
    pub clock_window: Duration,
    /// The cluster key, which every node pinned when it joined.
    pub cluster_key: KeyPair,
}

/// Serves `images` on `listen` until `shutdown` flips; returns the bound
/// address (the port chosen when `listen`'s is 0).
pub async fn start(
    listen: SocketAddr,
    images: ImageStore,
    readers: Readers,
    shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, MirrorError> {
    images.set_keep_layer_blobs(true)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| MirrorError::Listen {
            addr: listen,
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MirrorError::Listen {
            addr: listen,
            source,
        })?;
    warn_about_incomplete(&images);
    let key = readers.cluster_key.clone();
    let access = Access {
        authorize: authorizer(readers),
        sign: Arc::new(move |message: &[u8]| key.sign(message)),
    };
    tokio::spawn(mirror::serve(listener, images, access, shutdown));
    Ok(bound)
}

/// Accepts the signed tokens of registered nodes and of admins.
pub fn authorizer(readers: Readers) -> Authorize {
    Arc::new(move |token: Option<&str>| {
        let token = token.ok_or_else(|| {
            "a token is needed: the cluster's nodes and admins sign their own".to_string()
        })?;
        mirror_token::verify(
            token,
            jiff::Timestamp::now().as_second(),
            readers.clock_window,
            |id| key_of(&readers, id),
        )
        .map_err(|e| e.to_string())
    })
}

fn key_of(readers: &Readers, id: &str) -> Option<PublicKey> {
    if let Some(name) = id.strip_prefix("node:") {
        let node = readers.store.get(&ObjectKey::new(Kind::Node, "", name))?;
        let Object::Node(node) = &*node else {
            return None;
        };
        return node
            .metadata
            .annotations
            .as_ref()?
            .get(NODE_KEY_ANNOTATION)?
            .parse()
            .ok();
    }
    readers
        .admin_keys
        .iter()
        .find(|k| admin_id(k) == id)
        .copied()
}

/// Images stored before the store kept layer blobs cannot be served whole:
/// say which, once, rather than leave workers to find out.
fn warn_about_incomplete(images: &ImageStore) {
    let Ok(list) = images.list() else {
        return;
    };
    let incomplete: Vec<String> = list
        .into_iter()
        .filter(|i| !images.servable(&i.digest))
        .map(|i| i.reference)
        .collect();
    if !incomplete.is_empty() {
        tracing::warn!(
            images = %incomplete.join(", "),
            "the registry mirror cannot serve these images (stored before it kept layer blobs); import them again"
        );
    }
}

/// The mirror's address as workers are told it: `advertise` when given;
/// else the listen address when it names one; else, with a broker on this
/// machine (embedded, or a loopback URL), just `:port` (a worker reaches
/// the master at its broker's host); else the address this machine uses
/// towards the broker.
pub fn advertised(
    bound: SocketAddr,
    advertise: Option<&str>,
    broker_host: &str,
    broker_port: u16,
) -> String {
    if let Some(a) = advertise {
        return a.to_string();
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let local_broker = broker_host.eq_ignore_ascii_case("localhost")
        || broker_host
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified());
    if !local_broker
        && let Some(ip) = route_source(broker_host, broker_port)
        && !ip.is_loopback()
    {
        return SocketAddr::new(ip, bound.port()).to_string();
    }
    format!(":{}", bound.port())
}

/// The source address the kernel picks towards `host` (a UDP "connect"
/// sends nothing).
fn route_source(host: &str, port: u16) -> Option<IpAddr> {
    let socket = UdpSocket::bind(("0.0.0.0", 0)).ok()?;
    socket.connect((host, port)).ok()?;
    Some(socket.local_addr().ok()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertised_addresses() {
        let any: SocketAddr = "0.0.0.0:5050".parse().unwrap();
        let one: SocketAddr = "10.0.0.2:5050".parse().unwrap();
        assert_eq!(
            advertised(any, Some("pi.local:5050"), "127.0.0.1", 1883),
            "pi.local:5050"
        );
        assert_eq!(advertised(one, None, "127.0.0.1", 1883), "10.0.0.2:5050");
        assert_eq!(advertised(any, None, "127.0.0.1", 1883), ":5050");
        assert_eq!(advertised(any, None, "localhost", 1883), ":5050");
        // A broker elsewhere: the address we reach it from (loopback here,
        // where the route to 127.0.0.2 stays on lo, so left to the workers).
        assert_eq!(advertised(any, None, "127.0.0.2", 1883), ":5050");
    }
}
