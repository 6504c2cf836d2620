//! The pod lifecycle, as one state machine: what the worker knows of each pod
//! ([`PodRecord`]), how runtime observations move it ([`PodRecord::observe`]),
//! and what to do next ([`PodRecord::next_steps`]). Pure: times are Unix
//! milliseconds passed in, I/O results are fed back through the `on_*` methods.
//!
//! Container states and their transitions:
//!
//! ```text
//!   Waiting(ContainerCreating) ──start ok──▶ Running ──exit──▶ Terminated
//!        │  ▲                                                    │
//!   start│  └──── back-off over (restartPolicy allows) ──────────┤
//!   fails▼                                                       ▼
//!   Waiting(RunContainerError | ErrImageNeverPull)      Waiting(CrashLoopBackOff)
//!
//!   Waiting(ContainerCreating, pulling) ──pull fails──▶ Waiting(ErrImagePull)
//!        ▲                                                   │ half the back-off
//!        └──── back-off over: pull again ──── Waiting(ImagePullBackOff) ◀┘
//! ```
//!
//! A pull runs in the background (the worker's `images` module); its
//! failures have their own back-off counter, 10 s doubling to 5 min, reset
//! when the container starts.
//!
//! A pod that is no longer wanted (gone from the assignment, or marked for
//! deletion) is stopped: SIGTERM, SIGKILL at its grace deadline, containers
//! removed, network torn down, logs deleted; then it is `released` and, once
//! the master has dropped it, forgotten.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use crate::runtime::ContainerState;

/// Back-off after a crash: 10 s doubling to 5 min, as the kubelet does; the
/// first restart is immediate.
pub const BACKOFF_BASE_MS: i64 = 10_000;
pub const BACKOFF_MAX_MS: i64 = 300_000;
/// A container that ran this long before exiting restarts without back-off.
pub const BACKOFF_RESET_MS: i64 = 600_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminated {
    pub exit_code: i32,
    pub signal: Option<i32>,
    /// `Completed`, `Error`, `ContainerStatusUnknown`.
    pub reason: String,
    pub started_at: i64,
    pub finished_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: i64,
    },
    Terminated(Terminated),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// Runtime id of the current (or last) attempt.
    pub runtime_id: Option<String>,
    /// Starts attempted so far; names the next runtime id and log file.
    pub attempt: u32,
    /// Restarts after the first start, as `kubectl get pods` counts them.
    pub restart_count: u32,
    pub state: CState,
    pub last_termination: Option<Terminated>,
    /// Not before this time (back-off).
    pub next_start_at: i64,
    /// Image pulls failed in a row (the pull back-off), reset by a start.
    #[serde(default)]
    pub pull_failures: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub since: i64,
    /// When SIGKILL follows the SIGTERM.
    pub deadline: i64,
    pub term_sent: bool,
    pub kill_sent: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub network_ready: bool,
    pub created_at: i64,
    /// When the first container started (`status.startTime`).
    pub started_at: Option<i64>,
    pub containers: BTreeMap<String, ContainerRecord>,
    pub stopping: Option<Stopping>,
    /// Everything stopped, removed and torn down.
    pub released: bool,
}

/// Something that happened to a pod, worth an Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Happening {
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

impl Happening {
    pub fn normal(reason: &str, message: String) -> Happening {
        Happening {
            warning: false,
            reason: reason.into(),
            message,
        }
    }

    pub fn warning(reason: &str, message: String) -> Happening {
        Happening {
            warning: true,
            reason: reason.into(),
            message,
        }
    }
}

/// One piece of I/O the worker should do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    SetupNetwork,
    /// Start `container` (its next attempt).
    Start {
        container: String,
    },
    /// Remove the runtime container of a finished attempt.
    Remove {
        runtime_id: String,
    },
    Signal {
        runtime_id: String,
        signal: i32,
    },
    /// Containers are all gone: tear down the network, delete the logs.
    Release,
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

pub fn backoff_ms(restart_count: u32) -> i64 {
    if restart_count == 0 {
        return 0;
    }
    let shift = (restart_count - 1).min(16);
    (BACKOFF_BASE_MS << shift).min(BACKOFF_MAX_MS)
}

impl PodRecord {
    pub fn new(pod: &Pod, now: i64) -> PodRecord {
        let mut r = PodRecord {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip: None,
            network_ready: false,
            created_at: now,
            started_at: None,
            containers: BTreeMap::new(),
            stopping: None,
            released: false,
        };
        r.sync_spec(pod);
        r
    }

    /// Adds records for containers the spec names (a record is never dropped
    /// while its pod lives: its runtime container may still need removing).
    pub fn sync_spec(&mut self, pod: &Pod) {
        for c in pod.spec.iter().flat_map(|s| s.containers.iter()) {
            self.containers
                .entry(c.name.clone())
                .or_insert_with(|| ContainerRecord {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    runtime_id: None,
                    attempt: 0,
                    restart_count: 0,
                    state: CState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: None,
                    },
                    last_termination: None,
                    next_start_at: 0,
                    pull_failures: 0,
                });
        }
    }

    /// Folds what the runtime reports into the records: a running container
    /// that exited (or vanished) becomes Terminated, and its back-off is set.
    /// `pod` is `None` when the pod is no longer wanted. Returns what deserves
    /// an Event.
    pub fn observe(
        &mut self,
        pod: Option<&Pod>,
        actual: &HashMap<String, ContainerState>,
        now: i64,
    ) -> Vec<Happening> {
        let mut happened = Vec::new();
        let policy = pod.map(restart_policy).unwrap_or("Never").to_string();
        for c in self.containers.values_mut() {
            // A failed pull is shown as such for half its back-off, then as
            // the back-off it is.
            if let CState::Waiting { reason, .. } = &c.state
                && reason == "ErrImagePull"
                && c.pull_failures > 0
                && now >= c.next_start_at - backoff_ms(c.pull_failures) / 2
            {
                let message = format!("Back-off pulling image \"{}\"", c.image);
                happened.push(Happening::warning("BackOff", message.clone()));
                c.state = CState::Waiting {
                    reason: "ImagePullBackOff".into(),
                    message: Some(message),
                };
            }
            let CState::Running { started_at } = c.state else {
                continue;
            };
            let id = c.runtime_id.clone().unwrap_or_default();
            let term = match actual.get(&id) {
                Some(ContainerState::Running { .. }) | Some(ContainerState::Created) => continue,
                Some(ContainerState::Exited {
                    exit_code,
                    signal,
                    finished_at,
                    ..
                }) => Terminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: if *exit_code == 0 {
                        "Completed"
                    } else {
                        "Error"
                    }
                    .into(),
                    started_at,
                    finished_at: *finished_at,
                },
                // Gone, or its exit code lost while the agent was down.
                Some(ContainerState::Unknown) | None => Terminated {
                    exit_code: 137,
                    signal: None,
                    reason: "ContainerStatusUnknown".into(),
                    started_at,
                    finished_at: now,
                },
            };
            let restart = match policy.as_str() {
                "Always" => true,
                "OnFailure" => term.exit_code != 0,
                _ => false,
            };
            let ran = term.finished_at - term.started_at;
            let delay = if ran >= BACKOFF_RESET_MS {
                0
            } else {
                backoff_ms(c.restart_count)
            };
            c.next_start_at = term.finished_at + delay;
            c.last_termination = Some(term.clone());
            if restart && delay > 0 {
                happened.push(Happening::warning(
                    "BackOff",
                    format!(
                        "Back-off restarting failed container {} in pod {}_{}({})",
                        c.name, self.name, self.namespace, self.uid
                    ),
                ));
            }
            c.state = if restart && delay > 0 {
                CState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: Some(format!(
                        "back-off {}s restarting failed container={} pod={}_{}({})",
                        delay / 1000,
                        c.name,
                        self.name,
                        self.namespace,
                        self.uid
                    )),
                }
            } else {
                CState::Terminated(term)
            };
        }
        happened
    }

    /// Whether a container in this state wants another start now.
    fn wants_start(c: &ContainerRecord, policy: &str, now: i64) -> bool {
        if now < c.next_start_at {
            return false;
        }
        match &c.state {
            CState::Running { .. } => false,
            CState::Waiting { .. } => true,
            CState::Terminated(t) => match policy {
                "Always" => true,
                "OnFailure" => t.exit_code != 0,
                _ => false,
            },
        }
    }

    /// What to do now. `pod` is the desired pod, or `None` when it is no
    /// longer wanted; `actual` is what the runtime holds.
    pub fn next_steps(
        &self,
        pod: Option<&Pod>,
        actual: &HashMap<String, ContainerState>,
        now: i64,
    ) -> Vec<Step> {
        let stopping = pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
        let mut steps = Vec::new();
        if stopping {
            if self.released {
                return steps;
            }
            let mut alive = false;
            for c in self.containers.values() {
                let Some(id) = &c.runtime_id else { continue };
                match actual.get(id) {
                    Some(ContainerState::Running { .. }) | Some(ContainerState::Created) => {
                        alive = true;
                        let st = self.stopping.as_ref();
                        if st.is_none_or(|s| !s.term_sent) {
                            steps.push(Step::Signal {
                                runtime_id: id.clone(),
                                signal: libc::SIGTERM,
                            });
                        } else if st.is_some_and(|s| now >= s.deadline && !s.kill_sent) {
                            steps.push(Step::Signal {
                                runtime_id: id.clone(),
                                signal: libc::SIGKILL,
                            });
                        }
                    }
                    Some(_) => steps.push(Step::Remove {
                        runtime_id: id.clone(),
                    }),
                    None => {}
                }
            }
            if !alive && !steps.iter().any(|s| matches!(s, Step::Remove { .. })) {
                steps.push(Step::Release);
            }
            return steps;
        }
        let pod = pod.expect("not stopping, so wanted");
        if !self.network_ready {
            steps.push(Step::SetupNetwork);
            return steps;
        }
        let policy = restart_policy(pod);
        for c in self.containers.values() {
            if !Self::wants_start(c, policy, now) {
                continue;
            }
            // The previous attempt's container must go before the next starts.
            if let Some(id) = &c.runtime_id
                && actual.contains_key(id)
            {
                steps.push(Step::Remove {
                    runtime_id: id.clone(),
                });
            }
            steps.push(Step::Start {
                container: c.name.clone(),
            });
        }
        steps
    }

    /// The runtime id the next attempt of `container` gets.
    pub fn next_runtime_id(&self, container: &str) -> String {
        let attempt = self.containers.get(container).map_or(0, |c| c.attempt);
        let uid: String = self
            .uid
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let name: String = container
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        format!("{}-{}-{}", uid.to_ascii_lowercase(), name, attempt)
    }

    pub fn on_started(&mut self, container: &str, runtime_id: String, started_at: i64) {
        self.started_at.get_or_insert(started_at);
        if let Some(c) = self.containers.get_mut(container) {
            c.pull_failures = 0;
            if c.attempt > 0 {
                c.restart_count += 1;
            }
            c.attempt += 1;
            c.runtime_id = Some(runtime_id);
            c.state = CState::Running { started_at };
        }
    }

    /// A start that failed before the container ran: wait and retry, with the
    /// same back-off as a crash.
    pub fn on_start_failed(&mut self, container: &str, reason: &str, message: String, now: i64) {
        if let Some(c) = self.containers.get_mut(container) {
            let failures = c.restart_count + u32::from(c.attempt > 0);
            c.next_start_at = now + backoff_ms(failures.max(1));
            if reason == "RunContainerError" {
                c.attempt += 1;
                c.restart_count += u32::from(c.attempt > 1);
            }
            c.state = CState::Waiting {
                reason: reason.to_string(),
                message: Some(message),
            };
        }
    }

    /// A background pull of the container's image began.
    pub fn on_pull_started(&mut self, container: &str) {
        if let Some(c) = self.containers.get_mut(container) {
            c.state = CState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
        }
    }

    /// A pull failed: `ErrImagePull` (or `InvalidImageName`), and the next
    /// pull waits out the pull back-off (10 s, doubling, capped at 5 min).
    pub fn on_pull_failed(&mut self, container: &str, reason: &str, message: String, now: i64) {
        if let Some(c) = self.containers.get_mut(container) {
            c.pull_failures = c.pull_failures.saturating_add(1);
            c.next_start_at = now + backoff_ms(c.pull_failures);
            c.state = CState::Waiting {
                reason: reason.to_string(),
                message: Some(message),
            };
        }
    }

    pub fn on_removed(&mut self, runtime_id: &str) {
        for c in self.containers.values_mut() {
            if c.runtime_id.as_deref() == Some(runtime_id)
                && !matches!(c.state, CState::Running { .. })
            {
                // Keep the id only while its container exists.
                c.runtime_id = None;
            }
        }
    }

    pub fn on_signalled(&mut self, signal: i32, grace_ms: i64, now: i64) {
        let st = self.stopping.get_or_insert(Stopping {
            since: now,
            deadline: now + grace_ms,
            term_sent: false,
            kill_sent: false,
        });
        if signal == libc::SIGKILL {
            st.kill_sent = true;
        } else {
            st.term_sent = true;
        }
    }

    pub fn on_released(&mut self) {
        self.released = true;
        self.network_ready = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(policy: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("web-1".into()),
                namespace: Some("default".into()),
                uid: Some("0123456789abcdef".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                restart_policy: Some(policy.into()),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("demo".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        }
    }

    fn exited(code: i32, started: i64, finished: i64) -> ContainerState {
        ContainerState::Exited {
            exit_code: code,
            signal: None,
            started_at: started,
            finished_at: finished,
        }
    }

    #[test]
    fn network_first_then_start() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        let none = HashMap::new();
        assert_eq!(r.next_steps(Some(&p), &none, 0), vec![Step::SetupNetwork]);
        r.network_ready = true;
        assert_eq!(
            r.next_steps(Some(&p), &none, 0),
            vec![Step::Start {
                container: "main".into()
            }]
        );
        let id = r.next_runtime_id("main");
        assert_eq!(id, "0123456789ab-main-0");
        r.on_started("main", id.clone(), 5);
        let actual = HashMap::from([(
            id,
            ContainerState::Running {
                pid: 1,
                started_at: 5,
            },
        )]);
        assert_eq!(r.next_steps(Some(&p), &actual, 10), vec![]);
    }

    #[test]
    fn crash_loop_backs_off_10_20_40_then_caps() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..8 {
            let id = r.next_runtime_id("main");
            r.on_started("main", id.clone(), now);
            now += 1_000;
            let actual = HashMap::from([(id.clone(), exited(1, now - 1_000, now))]);
            r.observe(Some(&p), &actual, now);
            let c = &r.containers["main"];
            delays.push(c.next_start_at - now);
            // Before the back-off is over nothing starts; after it, the old
            // container is removed and a new one started.
            if c.next_start_at > now {
                assert!(
                    matches!(&c.state, CState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
                );
                assert_eq!(r.next_steps(Some(&p), &actual, now), vec![]);
            }
            now = c.next_start_at;
            assert_eq!(
                r.next_steps(Some(&p), &actual, now),
                vec![
                    Step::Remove {
                        runtime_id: id.clone()
                    },
                    Step::Start {
                        container: "main".into()
                    }
                ]
            );
            r.on_removed(&id);
        }
        assert_eq!(
            delays,
            vec![0, 10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
        assert_eq!(r.containers["main"].restart_count, 7);
    }

    #[test]
    fn long_run_resets_backoff() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.containers.get_mut("main").unwrap().restart_count = 5;
        r.on_started("main", "x".into(), 0);
        let actual = HashMap::from([("x".to_string(), exited(1, 0, BACKOFF_RESET_MS))]);
        r.observe(Some(&p), &actual, BACKOFF_RESET_MS);
        assert_eq!(r.containers["main"].next_start_at, BACKOFF_RESET_MS);
    }

    #[test]
    fn restart_policies() {
        for (policy, code, restarts) in [
            ("Never", 1, false),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Always", 0, true),
        ] {
            let p = pod(policy);
            let mut r = PodRecord::new(&p, 0);
            r.network_ready = true;
            r.on_started("main", "x".into(), 0);
            let actual = HashMap::from([("x".to_string(), exited(code, 0, 1))]);
            r.observe(Some(&p), &actual, 1);
            let wants = r.next_steps(Some(&p), &actual, 1).contains(&Step::Start {
                container: "main".into(),
            });
            assert_eq!(wants, restarts, "{policy} exit {code}");
        }
    }

    #[test]
    fn stopping_sends_term_then_kill_then_releases() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let running = HashMap::from([(
            "x".to_string(),
            ContainerState::Running {
                pid: 1,
                started_at: 0,
            },
        )]);
        assert_eq!(
            r.next_steps(None, &running, 100),
            vec![Step::Signal {
                runtime_id: "x".into(),
                signal: libc::SIGTERM
            }]
        );
        r.on_signalled(libc::SIGTERM, 30_000, 100);
        assert_eq!(r.next_steps(None, &running, 200), vec![]);
        assert_eq!(
            r.next_steps(None, &running, 30_100),
            vec![Step::Signal {
                runtime_id: "x".into(),
                signal: libc::SIGKILL
            }]
        );
        r.on_signalled(libc::SIGKILL, 30_000, 30_100);
        let dead = HashMap::from([("x".to_string(), exited(137, 0, 30_200))]);
        assert_eq!(
            r.next_steps(None, &dead, 30_300),
            vec![Step::Remove {
                runtime_id: "x".into()
            }]
        );
        r.on_removed("x");
        assert_eq!(
            r.next_steps(None, &HashMap::new(), 30_400),
            vec![Step::Release]
        );
        r.on_released();
        assert_eq!(r.next_steps(None, &HashMap::new(), 30_500), vec![]);
    }

    #[test]
    fn pull_failures_back_off_10_20_40_then_cap_and_reset() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        let none = HashMap::new();
        let start = vec![Step::Start {
            container: "main".into(),
        }];
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            assert_eq!(r.next_steps(Some(&p), &none, now), start);
            r.on_pull_started("main");
            assert!(matches!(
                &r.containers["main"].state,
                CState::Waiting { reason, .. } if reason == "ContainerCreating"
            ));
            now += 500;
            r.on_pull_failed("main", "ErrImagePull", "HTTP 404".into(), now);
            let next = r.containers["main"].next_start_at;
            delays.push(next - now);
            // ErrImagePull first, nothing to do while backing off…
            assert!(r.observe(Some(&p), &none, now).is_empty());
            assert!(matches!(
                &r.containers["main"].state,
                CState::Waiting { reason, message: Some(m) } if reason == "ErrImagePull" && m == "HTTP 404"
            ));
            assert_eq!(r.next_steps(Some(&p), &none, now), vec![]);
            // …then ImagePullBackOff, with a BackOff event, once.
            let half = now + (next - now) / 2;
            let happened = r.observe(Some(&p), &none, half);
            assert_eq!(happened.len(), 1);
            assert_eq!(happened[0].reason, "BackOff");
            assert!(happened[0].message.contains("demo"));
            assert!(r.observe(Some(&p), &none, half + 1).is_empty());
            assert!(matches!(
                &r.containers["main"].state,
                CState::Waiting { reason, .. } if reason == "ImagePullBackOff"
            ));
            assert_eq!(r.next_steps(Some(&p), &none, next - 1), vec![]);
            now = next;
        }
        assert_eq!(
            delays,
            vec![10_000, 20_000, 40_000, 80_000, 160_000, 300_000, 300_000]
        );
        // A start resets the pull back-off (not the restart count).
        r.on_started("main", "x".into(), now);
        assert_eq!(r.containers["main"].pull_failures, 0);
        assert_eq!(r.containers["main"].restart_count, 0);
    }

    #[test]
    fn vanished_container_is_unknown_and_restarted() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        r.observe(Some(&p), &HashMap::new(), 50);
        let last = r.containers["main"].last_termination.clone().unwrap();
        assert_eq!(last.reason, "ContainerStatusUnknown");
        assert_eq!(
            r.next_steps(Some(&p), &HashMap::new(), 50),
            vec![Step::Start {
                container: "main".into()
            }]
        );
    }
}
