//! [`FakeRuntime`]: an in-memory [`Runtime`] for scheduler and scale tests
//! that simulate many nodes in one process. Containers "run" the moment they
//! are created; no process, file or cgroup is touched, so thousands cost
//! only their bookkeeping.
//!
//! Knobs: images made absent, images a "registry" can provide (a pull makes
//! them present), containers that exit (with a code, on start or after a
//! delay), call counts. Delays use tokio's clock, so tests with
//! paused time (`tokio::time::pause`) drive them without sleeping.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::images::{ImageAction, ImageInfo, PullPolicy, PullStats, RegistryAuth, normalize};
use super::{
    ContainerConfig, ContainerInfo, ContainerState, ExecHandle, ExecProcess, ExecSpec, Runtime,
    RuntimeError,
};

/// How many times each method was called.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallCounts {
    pub ensure_image: u64,
    pub run_container: u64,
    pub kill_container: u64,
    pub remove_container: u64,
    pub list_containers: u64,
}

struct Container {
    config: ContainerConfig,
    state: ContainerState,
    /// A scheduled exit: when, and with which code.
    exit_at: Option<(Instant, i32)>,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    absent_images: HashSet<String>,
    /// Absent images a pull can fetch.
    pullable: HashSet<String>,
    /// Container name → (exit code, delay after start).
    exits: HashMap<String, (i32, Duration)>,
    calls: CallCounts,
    next_pid: i32,
    /// Container name → what its containers report as their use.
    stats: HashMap<String, super::ContainerStats>,
}

pub struct FakeRuntime {
    state: Mutex<State>,
    events: watch::Sender<u64>,
}

impl Default for FakeRuntime {
    fn default() -> Self {
        FakeRuntime::new()
    }
}

fn image_key(image: &str) -> String {
    normalize(image).unwrap_or_else(|_| image.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl FakeRuntime {
    pub fn new() -> FakeRuntime {
        FakeRuntime {
            state: Mutex::new(State {
                next_pid: 1000,
                ..State::default()
            }),
            events: watch::Sender::new(0),
        }
    }

    /// Makes `image` absent (`ensure_image` and `run_container` fail with
    /// [`RuntimeError::ImageNotPresent`]) or present again.
    pub fn set_image_absent(&self, image: &str, absent: bool) {
        let mut s = self.lock();
        if absent {
            s.absent_images.insert(image_key(image));
        } else {
            s.absent_images.remove(&image_key(image));
        }
    }

    /// Lets a pull of the absent `image` succeed (making it present), as if a
    /// registry had it; a pull of an absent image that is not pullable fails
    /// with [`RuntimeError::RegistryNotFound`].
    pub fn set_pullable(&self, image: &str, pullable: bool) {
        let mut s = self.lock();
        if pullable {
            s.pullable.insert(image_key(image));
        } else {
            s.pullable.remove(&image_key(image));
        }
    }

    /// Containers named `container_name` started from now on exit with
    /// `exit_code` after `after` (`Duration::ZERO`: as soon as they start).
    pub fn exit_after(&self, container_name: &str, exit_code: i32, after: Duration) {
        self.lock()
            .exits
            .insert(container_name.to_string(), (exit_code, after));
    }

    /// Forgets an [`exit_after`](Self::exit_after) rule.
    pub fn clear_exit(&self, container_name: &str) {
        self.lock().exits.remove(container_name);
    }

    /// Makes a running container exit now with `exit_code` (a crash).
    pub fn exit_now(&self, id: &str, exit_code: i32) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        if Self::finish(c, exit_code, None) {
            drop(s);
            self.tick();
        }
        Ok(())
    }

    /// Containers named `container_name` report `stats` from now on.
    pub fn set_stats(&self, container_name: &str, stats: super::ContainerStats) {
        self.lock().stats.insert(container_name.to_string(), stats);
    }

    pub fn calls(&self) -> CallCounts {
        self.lock().calls.clone()
    }

    /// The config a container was created with.
    pub fn config_of(&self, id: &str) -> Option<ContainerConfig> {
        self.lock().containers.get(id).map(|c| c.config.clone())
    }

    /// How many containers exist (any state).
    pub fn len(&self) -> usize {
        self.lock().containers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake runtime lock")
    }

    fn tick(&self) {
        self.events.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Moves a running container to Exited; false if it was not running.
    fn finish(c: &mut Container, exit_code: i32, signal: Option<i32>) -> bool {
        let ContainerState::Running { started_at, .. } = c.state else {
            return false;
        };
        c.state = ContainerState::Exited {
            exit_code,
            signal,
            started_at,
            finished_at: now_ms(),
            oom_killed: false,
        };
        c.exit_at = None;
        true
    }

    /// Applies the scheduled exits that are due; ticks if any.
    fn apply_due(&self) {
        let now = Instant::now();
        let mut changed = false;
        for c in self.lock().containers.values_mut() {
            if let Some((at, code)) = c.exit_at
                && at <= now
            {
                changed |= Self::finish(c, code, None);
            }
        }
        if changed {
            self.tick();
        }
    }

    /// Wakes the event channel when a delayed exit falls due, on tokio's
    /// clock when there is a runtime (a cheap task), else on a thread.
    fn schedule_wakeup(&self, at: Instant) {
        let sender = self.events.clone();
        let wake = move || sender.send_modify(|v| *v = v.wrapping_add(1));
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    tokio::time::sleep_until(at).await;
                    wake();
                });
            }
            Err(_) => {
                std::thread::spawn(move || {
                    std::thread::sleep(at.saturating_duration_since(Instant::now()));
                    wake();
                });
            }
        }
    }
}

impl Runtime for FakeRuntime {
    fn ensure_image(
        &self,
        image: &str,
        policy: PullPolicy,
        _auth: &[RegistryAuth],
    ) -> Result<ImageInfo, RuntimeError> {
        let mut s = self.lock();
        s.calls.ensure_image += 1;
        let key = image_key(image);
        let present = !s.absent_images.contains(&key);
        let info = |pulled| ImageInfo {
            reference: key.clone(),
            manifest_digest: format!("sha256:{}", "0".repeat(64)),
            size: 0,
            pulled,
        };
        match policy.decide(present) {
            ImageAction::UsePresent => Ok(info(None)),
            ImageAction::NotPresent => Err(RuntimeError::ImageNotPresent(image.to_string())),
            ImageAction::Pull if present || s.pullable.contains(&key) => {
                s.absent_images.remove(&key);
                Ok(info(Some(PullStats::default())))
            }
            ImageAction::Pull => Err(RuntimeError::RegistryNotFound {
                registry: key.split('/').next().unwrap_or_default().to_string(),
                image: key.clone(),
                detail: "not in the fake runtime's registry".into(),
            }),
        }
    }

    fn run_container(&self, config: &ContainerConfig) -> Result<ContainerInfo, RuntimeError> {
        self.apply_due();
        let mut s = self.lock();
        s.calls.run_container += 1;
        if s.absent_images.contains(&image_key(&config.image)) {
            return Err(RuntimeError::ImageNotPresent(config.image.clone()));
        }
        if s.containers.contains_key(&config.id) {
            return Err(RuntimeError::AlreadyExists(config.id.clone()));
        }
        s.next_pid += 1;
        let running = ContainerState::Running {
            pid: s.next_pid,
            started_at: now_ms(),
        };
        let rule = s.exits.get(&config.container_name).copied();
        let mut container = Container {
            config: config.clone(),
            state: running.clone(),
            exit_at: None,
        };
        let info = ContainerInfo {
            id: config.id.clone(),
            pod_uid: config.pod_uid.clone(),
            container_name: config.container_name.clone(),
            state: running,
        };
        let mut wake_at = None;
        let mut exited_now = false;
        match rule {
            Some((code, after)) if after.is_zero() => {
                exited_now = Self::finish(&mut container, code, None);
            }
            Some((code, after)) => {
                let at = Instant::now() + after;
                container.exit_at = Some((at, code));
                wake_at = Some(at);
            }
            None => {}
        }
        s.containers.insert(config.id.clone(), container);
        drop(s);
        if exited_now {
            self.tick();
        }
        if let Some(at) = wake_at {
            self.schedule_wakeup(at);
        }
        Ok(info)
    }

    fn kill_container(&self, id: &str, signal: i32) -> Result<(), RuntimeError> {
        self.apply_due();
        let mut s = self.lock();
        s.calls.kill_container += 1;
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        let changed = Self::finish(c, 128 + signal, Some(signal));
        drop(s);
        if changed {
            self.tick();
        }
        Ok(())
    }

    fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.apply_due();
        let mut s = self.lock();
        s.calls.remove_container += 1;
        if let Some(c) = s.containers.get(id)
            && matches!(c.state, ContainerState::Running { .. })
        {
            return Err(RuntimeError::Operation {
                op: "remove",
                id: id.to_string(),
                reason: "still running; kill it first".into(),
            });
        }
        s.containers.remove(id);
        Ok(())
    }

    /// No process runs: with `stdin` the "process" echoes its stdin to its
    /// stdout until end-of-file; without, it prints its command line. Either
    /// way it exits 0 (128 + signal when signalled). No terminal, ever.
    fn exec(&self, id: &str, spec: &ExecSpec) -> Result<ExecHandle, RuntimeError> {
        self.apply_due();
        match self.lock().containers.get(id).map(|c| &c.state) {
            None => return Err(RuntimeError::NotFound(id.to_string())),
            Some(ContainerState::Running { .. }) => {}
            Some(_) => {
                return Err(RuntimeError::Operation {
                    op: "exec in",
                    id: id.to_string(),
                    reason: "the container is not running".into(),
                });
            }
        }
        FakeExec::start(spec).map_err(|source| RuntimeError::Io {
            context: format!("fake exec in {id}"),
            source,
        })
    }

    fn stats(&self, id: &str) -> Result<super::ContainerStats, RuntimeError> {
        let s = self.lock();
        let c = s
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))?;
        Ok(s.stats
            .get(&c.config.container_name)
            .copied()
            .unwrap_or_default())
    }

    fn list_containers(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        self.apply_due();
        let mut s = self.lock();
        s.calls.list_containers += 1;
        let mut out: Vec<ContainerInfo> = s
            .containers
            .values()
            .map(|c| ContainerInfo {
                id: c.config.id.clone(),
                pod_uid: c.config.pod_uid.clone(),
                container_name: c.config.container_name.clone(),
                state: c.state.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    fn events(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }
}

/// The fake's exec'd "process": a thread.
struct FakeExec {
    /// Readable (end-of-file) once the thread is done.
    exit_read: std::os::fd::OwnedFd,
    code: std::sync::Arc<Mutex<Option<i32>>>,
    /// The signal it was sent, if any.
    signalled: std::sync::Arc<std::sync::atomic::AtomicI32>,
}

impl FakeExec {
    fn start(spec: &ExecSpec) -> std::io::Result<ExecHandle> {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;

        let pipe = || -> std::io::Result<_> {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
            Ok((r, w))
        };
        let (stdin_r, stdin_w) = pipe()?;
        let (stdout_r, stdout_w) = pipe()?;
        let (stderr_r, stderr_w) = pipe()?;
        let (exit_read, exit_write) = pipe()?;
        let code = std::sync::Arc::new(Mutex::new(None));
        let signalled = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
        let echo = spec.stdin;
        let line = format!("{}\n", spec.command.join(" "));
        let (t_code, t_sig) = (code.clone(), signalled.clone());
        std::thread::Builder::new()
            .name("fake-exec".into())
            .spawn(move || {
                let mut input = std::fs::File::from(stdin_r);
                let mut output = std::fs::File::from(stdout_w);
                if echo {
                    let mut buf = [0u8; 8192];
                    while t_sig.load(Ordering::SeqCst) == 0 {
                        let mut fds = [nix::poll::PollFd::new(
                            std::os::fd::AsFd::as_fd(&input),
                            nix::poll::PollFlags::POLLIN,
                        )];
                        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16)) {
                            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                            Ok(_) => {}
                            Err(_) => break,
                        }
                        match input.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if output.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                } else {
                    let _ = output.write_all(line.as_bytes());
                }
                let sig = t_sig.load(Ordering::SeqCst);
                *t_code.lock().expect("fake exec lock") =
                    Some(if sig == 0 { 0 } else { 128 + sig });
                drop((output, stderr_w, exit_write));
            })?;
        Ok(ExecHandle {
            stdin: echo.then_some(stdin_w),
            stdout: stdout_r,
            stderr: Some(stderr_r),
            terminal: None,
            process: Box::new(FakeExec {
                exit_read,
                code,
                signalled,
            }),
        })
    }
}

impl ExecProcess for FakeExec {
    fn exit_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.exit_read)
    }

    fn try_wait(&self) -> Result<Option<i32>, RuntimeError> {
        Ok(*self.code.lock().expect("fake exec lock"))
    }

    fn signal(&self, signal: i32) -> Result<(), RuntimeError> {
        let _ = self.signalled.compare_exchange(
            0,
            signal,
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Resources;

    fn config(id: &str, name: &str) -> ContainerConfig {
        ContainerConfig {
            id: id.into(),
            pod_uid: format!("uid-{id}"),
            pod_namespace: "default".into(),
            pod_name: "p".into(),
            container_name: name.into(),
            image: "busybox".into(),
            command: vec![],
            args: vec![],
            env: vec![],
            working_dir: None,
            hostname: "p".into(),
            resolv_conf: None,
            netns: None,
            log_path: "/dev/null".into(),
            resources: Resources::default(),
            ..Default::default()
        }
    }

    fn state(rt: &FakeRuntime, id: &str) -> ContainerState {
        rt.list_containers()
            .unwrap()
            .into_iter()
            .find(|c| c.id == id)
            .unwrap()
            .state
    }

    #[test]
    fn lifecycle_and_counts() {
        let rt = FakeRuntime::new();
        let info = rt.run_container(&config("a", "web")).unwrap();
        assert!(matches!(info.state, ContainerState::Running { .. }));
        assert!(matches!(
            rt.run_container(&config("a", "web")),
            Err(RuntimeError::AlreadyExists(_))
        ));
        assert!(rt.remove_container("a").is_err());
        let events = rt.events();
        rt.kill_container("a", 9).unwrap();
        assert!(events.has_changed().unwrap());
        assert!(matches!(
            state(&rt, "a"),
            ContainerState::Exited {
                exit_code: 137,
                signal: Some(9),
                ..
            }
        ));
        rt.kill_container("a", 15).unwrap();
        rt.remove_container("a").unwrap();
        rt.remove_container("a").unwrap();
        assert!(matches!(
            rt.kill_container("a", 9),
            Err(RuntimeError::NotFound(_))
        ));
        let calls = rt.calls();
        assert_eq!(
            (
                calls.run_container,
                calls.kill_container,
                calls.remove_container
            ),
            (2, 3, 3)
        );
    }

    #[test]
    fn absent_images() {
        let rt = FakeRuntime::new();
        rt.set_image_absent("busybox:latest", true);
        assert!(matches!(
            rt.ensure_image("docker.io/library/busybox", PullPolicy::Never, &[]),
            Err(RuntimeError::ImageNotPresent(_))
        ));
        assert!(matches!(
            rt.ensure_image("busybox", PullPolicy::IfNotPresent, &[]),
            Err(RuntimeError::RegistryNotFound { .. })
        ));
        assert!(matches!(
            rt.run_container(&config("a", "c")),
            Err(RuntimeError::ImageNotPresent(_))
        ));
        rt.set_pullable("busybox", true);
        let info = rt
            .ensure_image("busybox", PullPolicy::IfNotPresent, &[])
            .unwrap();
        assert!(info.pulled.is_some());
        let info = rt.ensure_image("busybox", PullPolicy::Never, &[]).unwrap();
        assert!(info.pulled.is_none());
        rt.set_image_absent("busybox", false);
        rt.ensure_image("busybox", PullPolicy::Never, &[]).unwrap();
    }

    #[test]
    fn exit_on_start() {
        let rt = FakeRuntime::new();
        rt.exit_after("crash", 2, Duration::ZERO);
        let events = rt.events();
        rt.run_container(&config("a", "crash")).unwrap();
        assert!(events.has_changed().unwrap());
        assert!(matches!(
            state(&rt, "a"),
            ContainerState::Exited {
                exit_code: 2,
                signal: None,
                ..
            }
        ));
        rt.run_container(&config("b", "fine")).unwrap();
        rt.exit_now("b", 1).unwrap();
        assert!(matches!(
            state(&rt, "b"),
            ContainerState::Exited { exit_code: 1, .. }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn exit_after_a_delay_on_tokio_time() {
        let rt = FakeRuntime::new();
        rt.exit_after("slow", 7, Duration::from_secs(30));
        let mut events = rt.events();
        rt.run_container(&config("a", "slow")).unwrap();
        assert!(matches!(state(&rt, "a"), ContainerState::Running { .. }));
        events.changed().await.unwrap();
        assert!(matches!(
            state(&rt, "a"),
            ContainerState::Exited { exit_code: 7, .. }
        ));
    }

    #[test]
    fn thousands_of_containers() {
        let rt = FakeRuntime::new();
        for i in 0..5000 {
            rt.run_container(&config(&format!("c{i}"), "x")).unwrap();
        }
        assert_eq!(rt.list_containers().unwrap().len(), 5000);
    }
}
