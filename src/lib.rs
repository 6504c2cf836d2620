//! Bramble: a small Kubernetes for Raspberry Pi clusters.
//!
//! # Layout
//!
//! One binary plays every role; this library does the work and `main.rs` only
//! parses arguments. The modules follow the map in `ARCHITECTURE.md`:
//!
//! - [`api`]: Kubernetes object types (from `k8s-openapi`), manifest parsing,
//!   defaults, validation, label selectors. Pure: no I/O.
//! - [`store`]: the master's redb store: objects keyed `kind/namespace/name`, a
//!   global resourceVersion, optimistic concurrency, watch after commit.
//! - [`transport`]: MQTT topics, the signed CBOR envelope, keys, the embedded
//!   broker (rumqttd) and the client (rumqttc).
//! - [`master`]: command handler (one file per verb), controllers (ReplicaSet,
//!   Deployment, endpoints, garbage collection), the scheduler, node assignments.
//! - [`worker`]: the node agent: assignments persisted in its own redb, the pod
//!   sync loop, status reports, log streams.
//! - [`runtime`]: the `Runtime` seam, its libcontainer implementation, the image
//!   store (OCI / docker archives, content-addressed layers, overlayfs), the fake.
//! - [`net`]: the `bramble0` bridge, per-pod network namespaces and veths, IPAM,
//!   Service ClusterIPs bound on the bridge.
//! - [`proxy`]: the in-agent L4 proxy for Services (ClusterIP and NodePort).
//! - [`cli`]: the kubectl-like client: one file per verb, kubectl's columns.
//! - [`bench`]: `bramble bench`, Bramble measured against Docker, Swarm and
//!   crun in one run; its measuring pieces serve the `cargo bench` targets too.
//! - [`up`]: `bramble up`, broker + master + worker in one process.
//! - [`config`]: on-disk configuration and paths shared by the roles and the CLI.
//! - [`install`]: systemd units and settings files (`bramble install`), Pi
//!   images prepared to join on first boot (`bramble image prepare-sd`).

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod install;
pub mod master;
pub mod net;
pub mod proxy;
pub mod runtime;
pub mod store;
pub mod transport;
pub mod up;
pub mod worker;
