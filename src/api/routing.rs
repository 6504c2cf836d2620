//! Service routes: what every node's proxy needs to know, derived from Service
//! and Endpoints objects. Pure data; the master computes it, the wire carries it,
//! the proxy and the worker's network setup consume it.

use std::net::{Ipv4Addr, SocketAddrV4};

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// One Service as the proxy sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRoute {
    pub namespace: String,
    pub name: String,
    /// `None` for headless Services (nothing to listen on).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<RoutePort>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePort {
    pub name: String,
    pub protocol: Protocol,
    /// The Service port, listened on at the ClusterIP.
    pub port: u16,
    /// Listened on at every node address, for NodePort Services.
    pub node_port: Option<u16>,
    /// Ready endpoints only, in a stable order; round-robin walks this list.
    pub endpoints: Vec<SocketAddrV4>,
}
