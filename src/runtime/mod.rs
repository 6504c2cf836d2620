//! The runtime seam: everything the pod sync loop needs from containers.
//!
//! Owns: the [`Runtime`] trait, its libcontainer implementation, the image
//! store (imported OCI / docker archives, content-addressed blobs, unpacked
//! layers, overlayfs rootfs) and the fake used by scheduler and scale tests.
//!
//! Must not touch: MQTT, the store, pod networking (the worker hands in the
//! network namespace path), or pod-level policy such as restarts and back-off
//! (the worker's sync loop decides; the runtime only does what it is told).
//!
//! - [`linux`]: [`LibcontainerRuntime`], its create helper and exit watcher.
//! - [`spec`]: the OCI runtime spec of a container (pure).
//! - [`images`]: the content-addressed [`ImageStore`], references, platforms.
//! - [`demo`]: the busybox demo image, built locally.
//! - [`logs`]: container log rotation, tail and follow.
//! - [`fake`]: the in-memory [`fake::FakeRuntime`].

pub mod demo;
pub mod fake;
pub mod images;
pub mod linux;
pub mod logs;
pub mod spec;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use self::images::{ImageStore, ImageSummary, Platform, ResolvedImage};
pub use self::linux::{HELPER_SUBCOMMAND, LibcontainerRuntime, RuntimeConfig, helper_main};

/// What the pod sync loop asks for: one container of one pod, fully resolved
/// (environment expanded, command and args as the manifest gave them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Runtime id, unique on this node: `<pod-uid-prefix>-<container-name>-<attempt>`.
    /// Only `[a-z0-9-]`, at most 63 characters.
    pub id: String,
    pub pod_uid: String,
    pub pod_namespace: String,
    pub pod_name: String,
    pub container_name: String,
    /// Image reference as the manifest wrote it (`busybox`, `reg:5000/a/b:1`, `x@sha256:…`).
    pub image: String,
    /// Kubernetes `command`: replaces the image's ENTRYPOINT when non-empty.
    pub command: Vec<String>,
    /// Kubernetes `args`: replaces the image's CMD when non-empty.
    pub args: Vec<String>,
    /// Added to (and overriding) the image's environment.
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// The pod's hostname (the pod name, as Kubernetes sets it).
    pub hostname: String,
    /// Network namespace to join (a bind-mounted nsfs file); `None` = host network.
    pub netns: Option<PathBuf>,
    /// stdout and stderr both go here, opened `O_APPEND`; the agent rotates it.
    pub log_path: PathBuf,
    pub resources: Resources,
}

/// Cgroup limits derived from the container's `resources`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_limit_bytes: Option<i64>,
    /// CPU limit in millicores (quota over a 100 ms period).
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (shares / weight).
    pub cpu_request_millis: Option<i64>,
}

/// What the runtime knows of a container right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    /// Created but its process not started (or start failed half-way).
    Created,
    Running {
        pid: i32,
        /// Unix time in milliseconds.
        started_at: i64,
    },
    Exited {
        /// Exit code; 128 + signal when killed by a signal, as Kubernetes reports it.
        exit_code: i32,
        signal: Option<i32>,
        started_at: i64,
        finished_at: i64,
    },
    /// The runtime has state for it but cannot tell (e.g. its exit code was lost
    /// while the agent was down).
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub pod_uid: String,
    pub container_name: String,
    pub state: ContainerState,
}

/// A container's resource use, read from its cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStats {
    /// CPU time used since the container started, in nanoseconds.
    pub cpu_nanos: u64,
    /// Memory working set: usage less inactive file cache, in bytes (what
    /// Kubernetes' metrics and `top` show).
    pub memory_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The image is not in the local store (and pulling is not possible / allowed).
    #[error("image {0:?} is not present on this node")]
    ImageNotPresent(String),
    #[error("image reference {reference:?} is invalid: {reason}")]
    InvalidImageReference { reference: String, reason: String },
    #[error("no container {0:?}")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    #[error("creating container {id}: {reason}")]
    Create { id: String, reason: String },
    #[error("{op} container {id}: {reason}")]
    Operation {
        op: &'static str,
        id: String,
        reason: String,
    },
    #[error("image store: {0}")]
    Image(String),
    /// A blob's content does not hash to the digest that names it; nothing was stored.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// No manifest of an image (index) is for this node's platform.
    #[error("no manifest for platform {wanted} in {what} (available: {available})")]
    NoMatchingPlatform {
        what: String,
        wanted: String,
        available: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// The one seam between the pod sync loop and containers.
///
/// Methods block (syscalls, forks, filesystem work); async callers use
/// `spawn_blocking`. Implementations are shared across tasks.
pub trait Runtime: Send + Sync + 'static {
    /// Fails with [`RuntimeError::ImageNotPresent`] unless the image can be run.
    fn ensure_image(&self, image: &str) -> Result<(), RuntimeError>;

    /// Creates and starts the container; returns once its process runs.
    fn run_container(&self, config: &ContainerConfig) -> Result<ContainerInfo, RuntimeError>;

    /// Sends `signal` to the container's process (its init; the pid namespace
    /// takes the rest down with it on SIGKILL). Not an error if it already exited.
    fn kill_container(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;

    /// Removes a container that is not running, and everything it held: rootfs
    /// mount and writable layer, cgroup, runtime state. Idempotent.
    fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Every container this runtime has state for, running or not.
    fn list_containers(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;

    /// Ticks whenever a container changes state on its own (exits), so the sync
    /// loop wakes without polling.
    fn events(&self) -> tokio::sync::watch::Receiver<u64>;

    /// What a running container uses now, from its cgroup (cgroup v1 or v2).
    fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;
}
