//! [`FakeRuntime`]: an in-memory [`Runtime`] for scheduler and scale tests
//! that simulate many nodes in one process. Containers "run" the moment they
//! are created; no process, file or cgroup is touched, so thousands cost
//! only their bookkeeping.
//!
//! Knobs: images made absent, containers that exit (with a code, on start or
//! after a delay), call counts. Delays use tokio's clock, so tests with
//! paused time (`tokio::time::pause`) drive them without sleeping.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::images::normalize;
use super::{ContainerConfig, ContainerInfo, ContainerState, Runtime, RuntimeError};

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
    fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        let mut s = self.lock();
        s.calls.ensure_image += 1;
        if s.absent_images.contains(&image_key(image)) {
            return Err(RuntimeError::ImageNotPresent(image.to_string()));
        }
        Ok(())
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
            netns: None,
            log_path: "/dev/null".into(),
            resources: Resources::default(),
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
            rt.ensure_image("docker.io/library/busybox"),
            Err(RuntimeError::ImageNotPresent(_))
        ));
        assert!(matches!(
            rt.run_container(&config("a", "c")),
            Err(RuntimeError::ImageNotPresent(_))
        ));
        rt.set_image_absent("busybox", false);
        rt.ensure_image("busybox").unwrap();
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
