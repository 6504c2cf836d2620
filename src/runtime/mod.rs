//! The runtime seam: everything the pod sync loop needs from containers.
//!
//! Owns: the [`Runtime`] trait, its libcontainer implementation, the image
//! store (registry pulls, imported OCI / docker archives, content-addressed
//! blobs, unpacked layers, overlayfs rootfs, disk-pressure image GC) and the
//! fake used by scheduler and scale tests.
//!
//! Must not touch: MQTT, the store, pod networking (the worker hands in the
//! network namespace path), or pod-level policy such as restarts and back-off
//! (the worker's sync loop decides; the runtime only does what it is told).
//!
//! - [`linux`]: [`LibcontainerRuntime`], its create helper and exit watcher.
//! - [`spec`]: the OCI runtime spec of a container (pure).
//! - [`images`]: the content-addressed [`ImageStore`], references, platforms,
//!   registry pulls, credentials and disk-pressure garbage collection.
//! - [`demo`]: the busybox demo image, built locally.
//! - [`logs`]: container log rotation, tail and follow.
//! - [`log_times`]: when each stretch of a log was written (`--since`).
//! - [`fake`]: the in-memory [`fake::FakeRuntime`].

pub mod demo;
pub mod fake;
pub mod images;
pub mod linux;
pub mod log_times;
pub mod logs;
pub mod spec;

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use self::images::{
    Credential, ImageInfo, ImageSettings, ImageStore, ImageSummary, Platform, PullPolicy,
    RegistryAuth, RegistryMirror, ResolvedImage,
};
pub use self::linux::{
    EXEC_HELPER_SUBCOMMAND, HELPER_SUBCOMMAND, LibcontainerRuntime, RuntimeConfig,
    exec_helper_main, helper_main,
};

/// What the pod sync loop asks for: one container of one pod, fully resolved
/// (environment expanded, command and args as the manifest gave them).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
    /// The container's `/etc/resolv.conf` (cluster DNS and search domains,
    /// from `dnsPolicy`); `None` copies the node's.
    #[serde(default)]
    pub resolv_conf: Option<String>,
    /// Network namespace to join (a bind-mounted nsfs file); `None` = host network.
    pub netns: Option<PathBuf>,
    /// stdout and stderr both go here, opened `O_APPEND`; the agent rotates it.
    pub log_path: PathBuf,
    pub resources: Resources,
    /// Bind mounts (the pod's volumes), in the order the manifest lists them.
    #[serde(default)]
    pub mounts: Vec<BindMount>,
    #[serde(default)]
    pub security: SecurityConfig,
    /// Share the host's PID namespace (`hostPID`).
    #[serde(default)]
    pub host_pid: bool,
}

/// Cgroup limits derived from the container's `resources`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub memory_limit_bytes: Option<i64>,
    /// CPU limit in millicores (quota over a 100 ms period).
    pub cpu_limit_millis: Option<i64>,
    /// CPU request in millicores (shares / weight); `None` gets the minimum
    /// weight, as the kubelet gives containers without a request.
    pub cpu_request_millis: Option<i64>,
    /// Most tasks (processes and threads) the container may have.
    #[serde(default)]
    pub pids_limit: Option<i64>,
}

/// A host file or directory bind-mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the container.
    pub destination: String,
    pub read_only: bool,
    pub propagation: Propagation,
}

/// Kubernetes `mountPropagation`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Propagation {
    /// `None`: rprivate.
    #[default]
    Private,
    /// rslave: host mounts appear in the container.
    HostToContainer,
    /// rshared: both ways (privileged containers only).
    Bidirectional,
}

/// The container's effective `securityContext` (the pod's, overridden by the
/// container's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecurityConfig {
    /// Overrides the image's user.
    pub run_as_user: Option<u32>,
    /// Overrides the primary group.
    pub run_as_group: Option<u32>,
    /// Refuse to start when the process would run as UID 0.
    pub run_as_non_root: bool,
    /// `supplementalGroups` and `fsGroup`, added to the process's groups.
    pub supplemental_groups: Vec<u32>,
    pub read_only_rootfs: bool,
    /// All capabilities, all host devices, no masked or read-only paths.
    pub privileged: bool,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// Capability names as Kubernetes writes them (`NET_ADMIN`, `ALL`).
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
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
        /// The kernel's OOM killer killed a process of the container's cgroup.
        #[serde(default)]
        oom_killed: bool,
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
    /// The container's configuration cannot be run as asked (runAsNonRoot
    /// with a root image, an unknown capability): Kubernetes'
    /// `CreateContainerConfigError`, not a runtime failure.
    #[error("container {id}: {reason}")]
    Config { id: String, reason: String },
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
    /// The registry refused the request for want of (valid) credentials:
    /// HTTP 401, or 403.
    #[error("pulling {image} from {registry}: unauthorized: {detail}")]
    RegistryUnauthorized {
        registry: String,
        image: String,
        detail: String,
    },
    /// The repository, tag or a blob does not exist there: HTTP 404.
    #[error("pulling {image} from {registry}: not found: {detail}")]
    RegistryNotFound {
        registry: String,
        image: String,
        detail: String,
    },
    /// Any other HTTP error status (5xx, 429, …).
    #[error("pulling {image} from {registry}: the registry answered HTTP {status}: {detail}")]
    RegistryStatus {
        registry: String,
        image: String,
        status: u16,
        detail: String,
    },
    /// No answer, or the connection dropped (refused, reset, timed out, TLS).
    #[error("pulling {image} from {registry}: {cause}")]
    RegistryConnection {
        registry: String,
        image: String,
        cause: String,
    },
    /// The registry answered something that is not a usable image
    /// (unsupported manifest schema or media type, malformed JSON, sizes that disagree).
    #[error("pulling {image} from {registry}: {reason}")]
    RegistryProtocol {
        registry: String,
        image: String,
        reason: String,
    },
    /// The image store's filesystem is full (ENOSPC / EDQUOT); nothing partial was kept.
    #[error("{context}: no space left on device")]
    DiskFull { context: String },
    /// Neither the master's registry mirror nor the image's own registry
    /// gave the image: both reasons.
    #[error("{registry} (the master's registry mirror {mirror} did not either: {mirror_error})")]
    PullFailed {
        mirror: String,
        mirror_error: Box<RuntimeError>,
        registry: Box<RuntimeError>,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The file of CAs trusted for registries (`--registry-ca`).
    #[error("registry CA file {}: {reason}", path.display())]
    RegistryCa {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// A process to run in a running container (`kubectl exec`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecSpec {
    pub command: Vec<String>,
    /// Added to (and overriding) the container's environment.
    pub env: Vec<(String, String)>,
    /// Run it on a terminal (its controlling terminal; stdin, stdout and
    /// stderr all on it).
    pub tty: bool,
    /// Keep its stdin for the caller; else it reads `/dev/null`.
    pub stdin: bool,
    /// The terminal's first size, `(cols, rows)`.
    pub size: Option<(u16, u16)>,
}

/// A process started by [`Runtime::exec`] and the caller's ends of its stdio.
/// Dropping it kills and reaps the process if nobody waited for it.
pub struct ExecHandle {
    /// Where its stdin is written (the terminal with `tty`); `None` without `stdin`.
    pub stdin: Option<OwnedFd>,
    /// Where its stdout is read (the terminal with `tty`).
    pub stdout: OwnedFd,
    /// Where its stderr is read; `None` with `tty`.
    pub stderr: Option<OwnedFd>,
    /// The terminal's master side, with `tty`.
    pub terminal: Option<OwnedFd>,
    pub process: Box<dyn ExecProcess>,
}

impl ExecHandle {
    /// Sets the terminal's size (no-op without one); its foreground process
    /// group gets SIGWINCH.
    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), RuntimeError> {
        match &self.terminal {
            Some(t) => set_terminal_size(std::os::fd::AsFd::as_fd(t), cols, rows),
            None => Ok(()),
        }
    }
}

/// Sets the size of the terminal `fd` is a side of (`TIOCSWINSZ`).
pub fn set_terminal_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> Result<(), RuntimeError> {
    linux::set_window_size(fd, cols, rows).map_err(|source| RuntimeError::Io {
        context: "setting the terminal size".into(),
        source,
    })
}

/// The exec'd process itself.
pub trait ExecProcess: Send + Sync {
    /// Becomes readable once the process has exited (a pidfd), for polling.
    fn exit_fd(&self) -> BorrowedFd<'_>;
    /// Its exit code once it has exited (128 + signal when killed), reaping
    /// it; `None` while it runs.
    fn try_wait(&self) -> Result<Option<i32>, RuntimeError>;
    /// Signals it and its process group; a no-op once it has been reaped.
    fn signal(&self, signal: i32) -> Result<(), RuntimeError>;
}

/// The one seam between the pod sync loop and containers.
///
/// Methods block (syscalls, forks, filesystem work); async callers use
/// `spawn_blocking`. Implementations are shared across tasks.
pub trait Runtime: Send + Sync + 'static {
    /// Makes `image` ready to run as `policy` says: `Never` only looks in the
    /// node's store (fails with [`RuntimeError::ImageNotPresent`]),
    /// `IfNotPresent` pulls when it is absent, `Always` pulls (a pull of an
    /// image already stored fetches only its manifest and config). `auth` are
    /// the credentials the pod's `imagePullSecrets` name; the ones matching the
    /// image's registry are tried in turn, else the pull is anonymous. May take
    /// minutes: callers run it off the sync loop.
    fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &[RegistryAuth],
    ) -> Result<ImageInfo, RuntimeError>;

    /// When the image store's filesystem is fuller than the node's high
    /// threshold, removes images no container uses, least recently used
    /// first, until it is below the low threshold. Returns the references
    /// removed. Runtimes without a disk (the fake) have nothing to collect.
    fn collect_images(&self) -> Result<Vec<String>, RuntimeError> {
        Ok(Vec::new())
    }

    /// Where later pulls look first: the master's registry mirror as it
    /// advertises it (`None`: straight to each image's registry). Returns
    /// whether that changed. Runtimes that pull nothing ignore it.
    fn set_registry_mirror(&self, mirror: Option<RegistryMirror>) -> bool {
        let _ = mirror;
        false
    }

    /// Creates and starts the container; returns once its process runs.
    fn run_container(&self, config: &ContainerConfig) -> Result<ContainerInfo, RuntimeError>;

    /// Sends `signal` to the container's process (its init; the pid namespace
    /// takes the rest down with it on SIGKILL). Not an error if it already exited.
    fn kill_container(&self, id: &str, signal: i32) -> Result<(), RuntimeError>;

    /// Removes a container that is not running, and everything it held: rootfs
    /// mount and writable layer, cgroup, runtime state. Idempotent.
    fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Starts a process in the running container `id`: its namespaces, its
    /// cgroup, its user and working directory (`kubectl exec`).
    fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecHandle, RuntimeError>;

    /// Every container this runtime has state for, running or not.
    fn list_containers(&self) -> Result<Vec<ContainerInfo>, RuntimeError>;

    /// Ticks whenever a container changes state on its own (exits), so the sync
    /// loop wakes without polling.
    fn events(&self) -> tokio::sync::watch::Receiver<u64>;

    /// What a running container uses now, from its cgroup (cgroup v1 or v2).
    fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;
}
