//! [`LibcontainerRuntime`]: the [`Runtime`] seam over youki's libcontainer.
//!
//! ```text
//! <state_dir>/<id>/                 libcontainer's state (tmpfs in production)
//! <state_dir>/.exec/                exec console sockets and helper logs, while they run
//! <containers_dir>/<id>/            the OCI bundle and everything else of one container:
//!     config.json                   the runtime spec
//!     rootfs/                       overlay mount: image layers + upper/
//!     upper/ work/                  the writable layer
//!     etc/{hosts,resolv.conf,hostname}  bind-mounted into the container
//!     meta.json                     pod uid, container name, log path (survives restarts)
//!     run.json                      init pid, its start time, started_at
//!     exit.json                     exit code, once reaped
//!     helper.log                    stderr of the create helper
//! ```
//!
//! Containers are created by a helper process (see [`helper`]) and outlive
//! the agent. The agent is a child subreaper, so a container's init becomes
//! its child once the helper exits: its exit is seen through a pidfd, reaped
//! with `waitpid` on that pid alone, and recorded in `exit.json`. A container
//! that exits while no agent runs (or that another agent process started)
//! cannot be reaped by us: it is reported [`ContainerState::Unknown`].
//! Processes started in a container (`exec`) go the same way, through their
//! own helper (see [`exec`]).
//!
//! Must not touch: pod networking (the network namespace is handed in),
//! restart policy, anything outside `state_dir`, `containers_dir`, the
//! image store's leases and the cgroups under `cgroup_prefix`.

mod cgroups;
mod devices;
pub mod exec;
pub mod helper;
mod rootfs;
mod watcher;

/// Mount points of every cgroup hierarchy: v1 controllers, named v1
/// hierarchies, the v2 unified one. A container's cgroup is
/// `<hierarchy>/<prefix>/<id>` in each.
pub use cgroups::hierarchies as cgroup_hierarchies;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::libcontainer::container::Container;
use ::libcontainer::error::LibcontainerError;
use ::libcontainer::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub(crate) use self::exec::set_window_size;
pub use self::exec::{EXEC_HELPER_SUBCOMMAND, exec_helper_main};
pub use self::helper::{HELPER_SUBCOMMAND, helper_main};
use self::watcher::{ExitWatcher, pidfd_open};
use super::images::layer::sha256_digest;
use super::images::{ImageAction, ImageInfo, ImageSettings, ImageStore, PullPolicy, RegistryAuth};
use super::spec::{self, EtcFiles, SpecInputs};
use super::{
    ContainerConfig, ContainerInfo, ContainerState, ExecHandle, ExecSpec, Runtime, RuntimeError,
};

pub struct RuntimeConfig {
    /// libcontainer's root; on tmpfs in production (`/run/bramble/<id>/containers`).
    pub state_dir: PathBuf,
    /// Per-container bundle and writable layer: `<data>/containers`.
    pub containers_dir: PathBuf,
    pub images: ImageStore,
    /// e.g. `bramble/<run-id>`: a container's cgroup is `/<prefix>/<id>`.
    pub cgroup_prefix: String,
    /// The bramble binary, run as `<helper_exe> __container-create <request>`.
    pub helper_exe: PathBuf,
}

pub struct LibcontainerRuntime {
    // Declared first so it drops (and joins its thread) first.
    watcher: ExitWatcher,
    inner: Arc<Inner>,
    /// How images are pulled and collected on this node.
    image_settings: ImageSettings,
}

struct Inner {
    state_dir: PathBuf,
    containers_dir: PathBuf,
    images: ImageStore,
    cgroup_prefix: String,
    helper_exe: PathBuf,
    /// Lease names are `<this>-<id>`, unique per containers_dir.
    lease_prefix: String,
    /// Whether memory limits also bar swap (the kernel accounts it).
    limit_swap: bool,
    events: watch::Sender<u64>,
    /// Held while reaping or signalling, so a pid is never signalled after
    /// it has been reaped (and could be reused).
    reap: Mutex<()>,
    /// Creates hold it shared (their helper may be creating the cgroup
    /// parents); removing the empty parents takes it exclusively.
    cgroup_parents: RwLock<()>,
    /// One exec helper at a time (each tidies what libcontainer leaves).
    exec_lock: Mutex<()>,
}

#[derive(Serialize, Deserialize)]
struct Meta {
    id: String,
    pod_uid: String,
    pod_namespace: String,
    pod_name: String,
    container_name: String,
    image: String,
    manifest_digest: String,
    log_path: PathBuf,
    created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct RunRecord {
    pid: i32,
    started_at: i64,
    /// Start time of the pid in clock ticks since boot, so that a reused pid
    /// is never mistaken for the container.
    start_ticks: u64,
}

#[derive(Serialize, Deserialize)]
struct ExitRecord {
    exit_code: i32,
    signal: Option<i32>,
    finished_at: i64,
    /// Read from the cgroup's memory events when the init was reaped.
    #[serde(default)]
    oom_killed: bool,
}

impl LibcontainerRuntime {
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        nix::sys::prctl::set_child_subreaper(true).map_err(|e| RuntimeError::Io {
            context: "becoming a child subreaper (PR_SET_CHILD_SUBREAPER)".into(),
            source: e.into(),
        })?;
        let prefix = config.cgroup_prefix.trim_matches('/').to_string();
        if prefix.is_empty()
            || Path::new(&prefix)
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(RuntimeError::Operation {
                op: "configure",
                id: String::new(),
                reason: format!(
                    "cgroup prefix {:?} must be a relative path like bramble/<run-id>",
                    config.cgroup_prefix
                ),
            });
        }
        for dir in [&config.state_dir, &config.containers_dir] {
            fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        }
        let canon =
            |p: &Path| fs::canonicalize(p).map_err(io_err(format!("resolving {}", p.display())));
        let containers_dir = canon(&config.containers_dir)?;
        let lease_prefix = sha256_digest(containers_dir.to_string_lossy().as_bytes())
            ["sha256:".len()..][..12]
            .to_string();
        let inner = Arc::new(Inner {
            state_dir: canon(&config.state_dir)?,
            containers_dir,
            images: config.images,
            cgroup_prefix: prefix,
            helper_exe: config.helper_exe,
            lease_prefix,
            limit_swap: cgroups::swap_accounting(),
            events: watch::Sender::new(0),
            reap: Mutex::new(()),
            cgroup_parents: RwLock::new(()),
            exec_lock: Mutex::new(()),
        });
        let on_exit = {
            let inner = Arc::clone(&inner);
            move |id: &str| {
                let state = inner.state_of(id);
                tracing::debug!(id, ?state, "container exited");
                inner.tick();
            }
        };
        let watcher = ExitWatcher::start(on_exit).map_err(io_err("starting the exit watcher"))?;
        let runtime = LibcontainerRuntime {
            watcher,
            inner,
            image_settings: ImageSettings::default(),
        };
        runtime.watch_existing()?;
        Ok(runtime)
    }

    /// Sets how this node pulls (platform, plain-HTTP registries, timeouts)
    /// and collects images; the defaults are the host's platform, only
    /// loopback registries over HTTP, and the kubelet's 85 % / 80 %.
    pub fn with_image_settings(mut self, settings: ImageSettings) -> Self {
        self.image_settings = settings;
        self
    }

    /// The cgroup path (`/<prefix>/<id>`) a container gets, relative to each
    /// hierarchy's mount point.
    pub fn cgroup_path(&self, id: &str) -> PathBuf {
        self.inner.cgroup_path(id)
    }

    /// Stops and removes every container of this runtime, then the cgroups
    /// under the prefix (for `bramble down`).
    pub fn cleanup_all(&self) -> Result<(), RuntimeError> {
        let containers = self.list_containers()?;
        for c in &containers {
            if matches!(c.state, ContainerState::Running { .. }) {
                self.kill_container(&c.id, libc::SIGKILL)?;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut first_err = None;
        for c in &containers {
            while matches!(self.inner.state_of(&c.id), ContainerState::Running { .. })
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            if let Err(e) = self.remove_container(&c.id) {
                first_err.get_or_insert(e);
            }
        }
        let _parents = self.inner.cgroup_parents.write().expect("cgroup lock");
        cgroups::remove_empty_tree_everywhere(Path::new(&self.inner.cgroup_prefix));
        cgroups::remove_empty_parents_everywhere(&Path::new(&self.inner.cgroup_prefix).join("x"));
        first_err.map_or(Ok(()), Err)
    }

    /// Re-arms exit detection for containers started before this process
    /// (or by another instance): they are not our children, so their exit
    /// will read as Unknown, but it is still noticed.
    fn watch_existing(&self) -> Result<(), RuntimeError> {
        for id in self.inner.ids()? {
            let dir = self.inner.containers_dir.join(&id);
            if dir.join("exit.json").exists() {
                continue;
            }
            let Some(run) = read_json::<RunRecord>(&dir.join("run.json")) else {
                continue;
            };
            if proc_stat(run.pid).is_some_and(|s| s.start_ticks == run.start_ticks && !s.zombie)
                && let Ok(fd) = pidfd_open(run.pid)
            {
                self.watcher.watch(&id, fd);
            }
        }
        Ok(())
    }

    fn create(&self, config: &ContainerConfig) -> Result<ContainerInfo, RuntimeError> {
        let inner = &self.inner;
        let id = config.id.as_str();
        let fail = |reason: String| RuntimeError::Create {
            id: id.to_string(),
            reason,
        };
        validate_id(id).map_err(fail)?;
        let image = inner.images.resolve(&config.image)?;
        if inner.state_dir.join(id).exists() {
            return Err(RuntimeError::AlreadyExists(id.to_string()));
        }
        let dir = inner.containers_dir.join(id);
        match fs::create_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RuntimeError::AlreadyExists(id.to_string()));
            }
            r => r.map_err(io_err(format!("creating {}", dir.display())))?,
        }
        // From here on a failure undoes everything done so far.
        let result = self.create_in(config, &image, &dir);
        if let Err(e) = &result {
            tracing::warn!(id, error = %e, "container creation failed; cleaning up");
            if let Err(cleanup) = inner.teardown(id) {
                tracing::error!(id, error = %cleanup, "cleaning up a failed container creation");
            }
        }
        result
    }

    fn create_in(
        &self,
        config: &ContainerConfig,
        image: &super::ResolvedImage,
        dir: &Path,
    ) -> Result<ContainerInfo, RuntimeError> {
        let inner = &self.inner;
        let id = config.id.as_str();
        let fail = |reason: String| RuntimeError::Create {
            id: id.to_string(),
            reason,
        };
        write_json(
            &dir.join("meta.json"),
            &Meta {
                id: id.to_string(),
                pod_uid: config.pod_uid.clone(),
                pod_namespace: config.pod_namespace.clone(),
                pod_name: config.pod_name.clone(),
                container_name: config.container_name.clone(),
                image: image.reference.clone(),
                manifest_digest: image.manifest_digest.clone(),
                log_path: config.log_path.clone(),
                created_at: now_ms(),
            },
        )?;
        inner.images.acquire_lease(&inner.lease_name(id), image)?;

        let etc = EtcFiles {
            hosts: dir.join("etc/hosts"),
            resolv_conf: dir.join("etc/resolv.conf"),
            hostname: dir.join("etc/hostname"),
        };
        fs::create_dir(dir.join("etc")).map_err(io_err("creating etc/"))?;
        let resolv = match &config.resolv_conf {
            Some(text) => text.clone().into_bytes(),
            None => fs::read("/etc/resolv.conf").unwrap_or_default(),
        };
        for (path, content) in [
            (&etc.hosts, spec::hosts_file(&config.hostname).into_bytes()),
            (&etc.resolv_conf, resolv),
            (&etc.hostname, format!("{}\n", config.hostname).into_bytes()),
        ] {
            fs::write(path, content).map_err(io_err(format!("writing {}", path.display())))?;
        }

        let (upper, work, rootfs) = (dir.join("upper"), dir.join("work"), dir.join("rootfs"));
        for d in [&upper, &work, &rootfs] {
            fs::create_dir(d).map_err(io_err(format!("creating {}", d.display())))?;
        }
        let mut layers = image.layer_dirs.clone();
        if layers.is_empty() {
            // overlayfs needs a lower layer; an image may have none.
            let empty = dir.join("empty");
            fs::create_dir(&empty).map_err(io_err("creating empty/"))?;
            layers.push(empty);
        }
        rootfs::mount_overlay(&layers, &upper, &work, &rootfs).map_err(fail)?;

        let passwd = rootfs::read_in_rootfs(&rootfs, "etc/passwd");
        let group = rootfs::read_in_rootfs(&rootfs, "etc/group");
        let host_devices = if config.security.privileged {
            devices::host_devices()
        } else {
            Vec::new()
        };
        let spec = spec::build_spec(&SpecInputs {
            config,
            image: &image.config,
            rootfs: &rootfs,
            cgroups_path: inner.cgroup_path(id),
            etc: &etc,
            passwd: passwd.as_deref(),
            group: group.as_deref(),
            limit_swap: inner.limit_swap,
            host_devices: &host_devices,
            available_caps: devices::available_caps(),
        })?;
        spec.save(dir.join("config.json"))
            .map_err(|e| fail(format!("writing config.json: {e}")))?;
        if let Some(cwd) = spec.process().as_ref().map(|p| p.cwd()) {
            rootfs::make_working_dir(&rootfs, &config.mounts, &cwd.to_string_lossy())
                .map_err(fail)?;
        }

        if let Some(parent) = config.log_path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let request = helper::CreateRequest {
            id: id.to_string(),
            state_dir: inner.state_dir.clone(),
            bundle: dir.to_path_buf(),
            log_path: config.log_path.clone(),
        };
        let pid = {
            let _parents = inner.cgroup_parents.read().expect("cgroup lock");
            helper::run_helper(&inner.helper_exe, &request, &dir.join("helper.log"))
                .map_err(fail)?
        };
        let started_at = now_ms();
        // The init is our child now (or a zombie child): its stat is readable
        // and its pid cannot be reused until we reap it.
        let start_ticks = proc_stat(pid).map(|s| s.start_ticks).ok_or_else(|| {
            fail(format!(
                "init pid {pid} vanished before it could be watched"
            ))
        })?;
        write_json(
            &dir.join("run.json"),
            &RunRecord {
                pid,
                started_at,
                start_ticks,
            },
        )?;
        match pidfd_open(pid) {
            Ok(fd) => self.watcher.watch(id, fd),
            Err(e) => return Err(fail(format!("pidfd_open({pid}): {e}"))),
        }
        Ok(ContainerInfo {
            id: id.to_string(),
            pod_uid: config.pod_uid.clone(),
            container_name: config.container_name.clone(),
            state: ContainerState::Running { pid, started_at },
        })
    }
}

impl Inner {
    fn cgroup_path(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("/{}/{id}", self.cgroup_prefix))
    }

    fn lease_name(&self, id: &str) -> String {
        format!("{}-{id}", self.lease_prefix)
    }

    fn tick(&self) {
        self.events.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Every container id with state here: libcontainer's or a bundle.
    fn ids(&self) -> Result<Vec<String>, RuntimeError> {
        let mut ids = Vec::new();
        for dir in [&self.state_dir, &self.containers_dir] {
            for entry in fs::read_dir(dir).map_err(io_err(format!("listing {}", dir.display())))? {
                let entry = entry.map_err(io_err(format!("listing {}", dir.display())))?;
                if let Some(name) = entry.file_name().to_str()
                    && validate_id(name).is_ok()
                    && entry.path().is_dir()
                    && !ids.iter().any(|i| i == name)
                {
                    ids.push(name.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    fn exists(&self, id: &str) -> bool {
        validate_id(id).is_ok()
            && (self.state_dir.join(id).exists() || self.containers_dir.join(id).exists())
    }

    /// The container's state, reaping its init if it is our exited child.
    fn state_of(&self, id: &str) -> ContainerState {
        let _reap = self.reap.lock().expect("reap lock");
        let dir = self.containers_dir.join(id);
        let run = read_json::<RunRecord>(&dir.join("run.json"));
        if let Some(exit) = read_json::<ExitRecord>(&dir.join("exit.json")) {
            return ContainerState::Exited {
                exit_code: exit.exit_code,
                signal: exit.signal,
                started_at: run.map_or(0, |r| r.started_at),
                finished_at: exit.finished_at,
                oom_killed: exit.oom_killed,
            };
        }
        let Some(run) = run else {
            return ContainerState::Created;
        };
        let Some(stat) = proc_stat(run.pid).filter(|s| s.start_ticks == run.start_ticks) else {
            // Gone, and not reaped by us: whoever reaped it kept the status.
            return ContainerState::Unknown;
        };
        let running = ContainerState::Running {
            pid: run.pid,
            started_at: run.started_at,
        };
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
        let (exit_code, signal) = match waitpid(Pid::from_raw(run.pid), Some(flags)) {
            Ok(WaitStatus::Exited(_, code)) => (code, None),
            Ok(WaitStatus::Signaled(_, sig, _)) => (128 + sig as i32, Some(sig as i32)),
            Ok(_) => return running,
            // Not our child (started by an earlier agent): alive or not, we
            // will never learn its exit code.
            Err(nix::errno::Errno::ECHILD) if stat.zombie => return ContainerState::Unknown,
            Err(nix::errno::Errno::ECHILD) => return running,
            Err(e) => {
                tracing::warn!(id, pid = run.pid, error = %e, "waitpid failed");
                return ContainerState::Unknown;
            }
        };
        // The cgroup outlives the init until the container is removed, so
        // its OOM count still says whether the kernel killed something.
        let oom_killed = cgroups::oom_killed(&self.cgroup_path(id));
        let exit = ExitRecord {
            exit_code,
            signal,
            finished_at: now_ms(),
            oom_killed,
        };
        if let Err(e) = write_json(&dir.join("exit.json"), &exit) {
            tracing::error!(id, error = %e, "recording the exit status");
        }
        self.tick();
        ContainerState::Exited {
            exit_code,
            signal,
            started_at: run.started_at,
            finished_at: exit.finished_at,
            oom_killed,
        }
    }

    fn info(&self, id: &str) -> ContainerInfo {
        let dir = self.containers_dir.join(id);
        let (pod_uid, container_name) = match read_json::<Meta>(&dir.join("meta.json")) {
            Some(m) => (m.pod_uid, m.container_name),
            None => {
                // Bundle gone or half-written: libcontainer kept the annotations.
                let annotations = ::libcontainer::container::State::load(&self.state_dir.join(id))
                    .ok()
                    .and_then(|s| s.annotations)
                    .unwrap_or_default();
                let get = |k: &str| annotations.get(k).cloned().unwrap_or_default();
                (
                    get(spec::ANNOTATION_POD_UID),
                    get(spec::ANNOTATION_CONTAINER_NAME),
                )
            }
        };
        ContainerInfo {
            id: id.to_string(),
            pod_uid,
            container_name,
            state: self.state_of(id),
        }
    }

    /// Removes everything a container holds. Best effort: every step runs,
    /// the first failure is returned.
    fn teardown(&self, id: &str) -> Result<(), RuntimeError> {
        let mut first: Option<RuntimeError> = None;
        let mut note = |r: Result<(), RuntimeError>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        let op = |reason: String| RuntimeError::Operation {
            op: "remove",
            id: id.to_string(),
            reason,
        };
        let state = self.state_dir.join(id);
        if state.exists() {
            note(match Container::load(state.clone()) {
                // Forced: a container left Created by a crash still has a
                // process waiting for its start signal.
                Ok(mut c) => c
                    .delete(true)
                    .map_err(|e| op(format!("libcontainer delete: {e}"))),
                Err(_) => fs::remove_dir_all(&state)
                    .map_err(io_err(format!("removing {}", state.display()))),
            });
        }
        note(
            cgroups::remove_everywhere(&self.cgroup_path(id))
                .map_err(|e| op(format!("removing cgroup: {e}"))),
        );
        let dir = self.containers_dir.join(id);
        note(
            rootfs::unmount(&dir.join("rootfs")).map_err(|e| op(format!("unmounting rootfs: {e}"))),
        );
        if dir.exists() && !rootfs::is_mount_point(&dir.join("rootfs")) {
            note(fs::remove_dir_all(&dir).map_err(io_err(format!("removing {}", dir.display()))));
        }
        note(self.images.release_lease(&self.lease_name(id)));
        first.map_or(Ok(()), Err)
    }
}

impl Runtime for LibcontainerRuntime {
    fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
        auth: &[RegistryAuth],
    ) -> Result<ImageInfo, RuntimeError> {
        let store = &self.inner.images;
        let found = store.resolve(image);
        match (policy.decide(found.is_ok()), found) {
            (_, Err(e @ RuntimeError::InvalidImageReference { .. })) => Err(e),
            // Absent, damaged (a layer gone) or to be refreshed: pull.
            (ImageAction::Pull, _) => {
                super::images::pull::pull_blocking(store, image, auth, &self.image_settings.pull)
            }
            (_, Ok(r)) => Ok(store.info(&r)),
            // Never: the store's error says what is missing.
            (_, Err(e)) => Err(e),
        }
    }

    fn collect_images(&self) -> Result<Vec<String>, RuntimeError> {
        self.inner.images.collect_for_disk(&self.image_settings.gc)
    }

    fn set_registry_mirror(&self, mirror: Option<super::RegistryMirror>) -> bool {
        self.image_settings.pull.mirror.set(mirror)
    }

    fn run_container(&self, config: &ContainerConfig) -> Result<ContainerInfo, RuntimeError> {
        self.create(config)
    }

    fn kill_container(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        if !inner.exists(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        let op = |reason: String| RuntimeError::Operation {
            op: "kill",
            id: id.to_string(),
            reason,
        };
        let signal = Signal::try_from(signal).map_err(|e| op(e.to_string()))?;
        let _reap = inner.reap.lock().expect("reap lock");
        let dir = inner.containers_dir.join(id);
        if dir.join("exit.json").exists() {
            return Ok(());
        }
        if let Some(run) = read_json::<RunRecord>(&dir.join("run.json"))
            && !proc_stat(run.pid).is_some_and(|s| s.start_ticks == run.start_ticks && !s.zombie)
        {
            return Ok(()); // already exited
        }
        let mut container = match Container::load(inner.state_dir.join(id)) {
            Ok(c) => c,
            Err(_) if !inner.state_dir.join(id).exists() => return Ok(()),
            Err(e) => return Err(op(format!("loading libcontainer state: {e}"))),
        };
        match container.kill(signal, false) {
            Ok(()) | Err(LibcontainerError::IncorrectStatus(_)) => Ok(()),
            Err(e) => Err(op(e.to_string())),
        }
    }

    fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let inner = &self.inner;
        if !inner.exists(id) {
            return Ok(());
        }
        if let ContainerState::Running { pid, .. } = inner.state_of(id) {
            return Err(RuntimeError::Operation {
                op: "remove",
                id: id.to_string(),
                reason: format!("still running (pid {pid}); kill it first"),
            });
        }
        inner.teardown(id)?;
        // Last one out removes the empty cgroup parents, unless a create is
        // under way (its helper may be making them right now).
        if inner.ids()?.is_empty()
            && let Ok(_parents) = inner.cgroup_parents.try_write()
        {
            cgroups::remove_empty_parents_everywhere(&inner.cgroup_path(id));
        }
        Ok(())
    }

    fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecHandle, RuntimeError> {
        let inner = &self.inner;
        if !inner.exists(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        if !matches!(inner.state_of(id), ContainerState::Running { .. }) {
            return Err(RuntimeError::Operation {
                op: "exec in",
                id: id.to_string(),
                reason: "the container is not running".into(),
            });
        }
        // Console sockets and helper logs; a dot keeps it out of `ids()`.
        let scratch = inner.state_dir.join(".exec");
        let _one_at_a_time = inner.exec_lock.lock().expect("exec lock");
        exec::exec(&inner.helper_exe, &inner.state_dir, &scratch, id, spec)
    }

    fn list_containers(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self
            .inner
            .ids()?
            .iter()
            .map(|id| self.inner.info(id))
            .collect())
    }

    fn events(&self) -> watch::Receiver<u64> {
        self.inner.events.subscribe()
    }

    fn stats(&self, id: &str) -> Result<super::ContainerStats, RuntimeError> {
        if !self.inner.exists(id) {
            return Err(RuntimeError::NotFound(id.to_string()));
        }
        cgroups::stats(&self.inner.cgroup_path(id)).map_err(|e| RuntimeError::Operation {
            op: "reading the cgroup of",
            id: id.to_string(),
            reason: e.to_string(),
        })
    }
}

/// Runtime ids: `[a-z0-9-]`, 1 to 63 characters (a DNS label's alphabet).
fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 63 {
        return Err(format!("id {id:?} must be 1 to 63 characters"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(format!("id {id:?} may contain only a-z, 0-9 and -"));
    }
    Ok(())
}

struct ProcStat {
    start_ticks: u64,
    zombie: bool,
}

/// State and start time of `pid` from `/proc/<pid>/stat`.
fn proc_stat(pid: i32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // `pid (comm) state ...`: comm may contain anything, so split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        zombie: matches!(*fields.first()?, "Z" | "X"),
        // Field 22 overall; the state is field 3.
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&fs::read(path).ok()?).ok()
}

/// Written to a temporary name and renamed, so a crash never leaves half a file.
fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(value).expect("record serializes");
    fs::write(&tmp, bytes)
        .and_then(|_| fs::rename(&tmp, path))
        .map_err(io_err(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(validate_id("abc-123").is_ok());
        for bad in ["", "A", "a_b", "a.b", "../x", &"a".repeat(64)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    fn inner(dir: &Path) -> Inner {
        let sub = |s: &str| {
            let p = dir.join(s);
            fs::create_dir_all(&p).unwrap();
            p
        };
        Inner {
            state_dir: sub("state"),
            containers_dir: sub("containers"),
            images: ImageStore::open(&sub("images")).unwrap(),
            cgroup_prefix: "bramble-unit".into(),
            helper_exe: "/nonexistent".into(),
            lease_prefix: "x".into(),
            limit_swap: false,
            events: watch::Sender::new(0),
            reap: Mutex::new(()),
            cgroup_parents: RwLock::new(()),
            exec_lock: Mutex::new(()),
        }
    }

    fn fake_run(inner: &Inner, id: &str, pid: i32, start_ticks: u64) {
        let dir = inner.containers_dir.join(id);
        fs::create_dir_all(&dir).unwrap();
        write_json(
            &dir.join("run.json"),
            &RunRecord {
                pid,
                started_at: 1,
                start_ticks,
            },
        )
        .unwrap();
    }

    /// Containers that are not our children (started by an earlier agent):
    /// alive reads as Running, gone or replaced by a reused pid as Unknown,
    /// and a reused pid is never signalled.
    #[test]
    fn states_of_containers_that_are_not_our_children() {
        let dir = tempfile::tempdir().unwrap();
        let inner = inner(dir.path());
        let init = proc_stat(1).unwrap();
        fake_run(&inner, "alive", 1, init.start_ticks);
        assert_eq!(
            inner.state_of("alive"),
            ContainerState::Running {
                pid: 1,
                started_at: 1
            }
        );
        fake_run(&inner, "reused", 1, init.start_ticks + 1);
        assert_eq!(inner.state_of("reused"), ContainerState::Unknown);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let ticks = proc_stat(pid).map_or(0, |s| s.start_ticks);
        child.wait().unwrap();
        fake_run(&inner, "gone", pid, ticks);
        assert_eq!(inner.state_of("gone"), ContainerState::Unknown);
        fs::create_dir_all(inner.containers_dir.join("fresh")).unwrap();
        assert_eq!(inner.state_of("fresh"), ContainerState::Created);
        assert_eq!(inner.ids().unwrap(), ["alive", "fresh", "gone", "reused"]);
    }

    #[test]
    fn stat_parsing() {
        let line = "1234 (weird ) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.start_ticks, 987654);
        assert!(!s.zombie);
        let z = parse_stat("1 (x) Z 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 42 0").unwrap();
        assert!(z.zombie);
        assert_eq!(z.start_ticks, 42);
    }
}
