//! The pod lifecycle, as one state machine: what the worker knows of each pod
//! ([`PodRecord`]), how runtime observations move it ([`PodRecord::observe`]),
//! how probe results move it ([`PodRecord::on_probe_result`]), and what to do
//! next ([`PodRecord::next_steps`], [`PodRecord::due_probes`]). Pure: times
//! are Unix milliseconds passed in, I/O results are fed back through the
//! `on_*` methods.
//!
//! A container's states and their transitions:
//!
//! ```text
//!   Waiting(ContainerCreating) ──start ok──▶ Running ──exit──▶ Terminated
//!        │  ▲                                  │                 │
//!   start│  └──── back-off over (policy) ──────┼─────────────────┤
//!   fails▼                                     │ liveness or     ▼
//!   Waiting(RunContainerError | …)             │ startup probe   Waiting(CrashLoopBackOff)
//!                                              ▼ failed
//!                                        Stop (preStop, SIGTERM,
//!                                        SIGKILL at the deadline) ──▶ exit
//! ```
//!
//! A pod runs its init containers one at a time, in order, each to a
//! successful exit, before any app container starts (restarting a failed one
//! unless the pod's policy is Never). Running app containers are probed:
//! a startup probe holds back the other two until it passes; a failing
//! liveness or startup probe stops the container, which then restarts under
//! the restart policy; readiness decides whether the container is ready, and
//! so whether the pod is in its Services' endpoints.
//!
//! Images: a start first settles the image (the worker's `images` module);
//! a pull runs in the background while the container waits
//! `ContainerCreating`. A failed pull is `ErrImagePull` for half its back-off,
//! then `ImagePullBackOff`; pull failures have their own back-off counter,
//! 10 s doubling to 5 min, reset when the container starts.
//!
//! A pod that is no longer wanted (gone from the assignment, or marked for
//! deletion) is stopped: each running container gets its preStop hook and
//! SIGTERM, SIGKILL at the grace deadline; containers are removed, the
//! network torn down, logs deleted; then it is `released` and, once the
//! master has dropped it, forgotten.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
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
    /// `Completed`, `Error`, `OOMKilled`, `ContainerStatusUnknown`.
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

/// A container being stopped: its preStop hook and SIGTERM are under way;
/// SIGKILL follows at `deadline`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stopping {
    pub since: i64,
    pub deadline: i64,
    pub kill_sent: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    Startup,
    Liveness,
    Readiness,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Startup => "Startup",
            ProbeKind::Liveness => "Liveness",
            ProbeKind::Readiness => "Readiness",
        }
    }

    /// The container's probe of this kind, if it has one Bramble can run
    /// (the others are reported as not implemented when applied, and act as
    /// if absent).
    pub fn of(self, c: &Container) -> Option<&Probe> {
        match self {
            ProbeKind::Startup => c.startup_probe.as_ref(),
            ProbeKind::Liveness => c.liveness_probe.as_ref(),
            ProbeKind::Readiness => c.readiness_probe.as_ref(),
        }
        .filter(|p| crate::worker::probes::supported(p))
    }
}

/// Consecutive results of one probe. Kept in memory only: probes run every
/// few seconds and writing their counters would wear the SD card.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeCounter {
    pub successes: u32,
    pub failures: u32,
    pub next_at: i64,
    pub in_flight: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub name: String,
    pub image: String,
    /// An init container: runs to completion before the app containers.
    #[serde(default)]
    pub init: bool,
    /// Runtime id of the current (or last) attempt.
    pub runtime_id: Option<String>,
    /// Starts attempted so far; names the next runtime id and log file.
    pub attempt: u32,
    /// Restarts after the first start, as `kubectl get pods` counts them.
    pub restart_count: u32,
    /// Restarts since the crash back-off was last reset (a run of
    /// [`BACKOFF_RESET_MS`] or more); the back-off is computed from this,
    /// not from `restart_count`, which only ever grows.
    #[serde(default)]
    pub crash_restarts: u32,
    pub state: CState,
    pub last_termination: Option<Terminated>,
    /// Not before this time (back-off).
    pub next_start_at: i64,
    /// The readiness probe's verdict (persisted, so an agent restart does
    /// not take a ready pod out of its Services).
    #[serde(default)]
    pub ready: bool,
    /// The startup probe has passed in this attempt.
    #[serde(default)]
    pub started: bool,
    /// The postStart hook of this attempt has run.
    #[serde(default)]
    pub post_started: bool,
    /// A failed liveness or startup probe asks for a restart (the message).
    #[serde(default)]
    pub kill_reason: Option<String>,
    /// The failed probe's own `terminationGracePeriodSeconds`, which then
    /// replaces the pod's (in ms).
    #[serde(default)]
    pub kill_grace_ms: Option<i64>,
    #[serde(default)]
    pub stopping: Option<Stopping>,
    #[serde(skip)]
    pub probes: BTreeMap<ProbeKind, ProbeCounter>,
    /// Image pulls failed in a row (the pull back-off), reset by a start.
    #[serde(default)]
    pub pull_failures: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub ip: Option<Ipv4Addr>,
    pub network_ready: bool,
    /// A failed network setup is retried no sooner than this.
    #[serde(default)]
    pub network_retry_at: i64,
    pub created_at: i64,
    /// When the first container started (`status.startTime`).
    pub started_at: Option<i64>,
    pub containers: BTreeMap<String, ContainerRecord>,
    /// Init containers in the order they run.
    #[serde(default)]
    pub init_order: Vec<String>,
    /// Every init container has completed; app containers may run.
    #[serde(default)]
    pub initialized: bool,
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
    /// Run the postStart hook of a container that just started.
    PostStart {
        container: String,
    },
    /// Remove the runtime container of a finished attempt.
    Remove {
        runtime_id: String,
    },
    /// Begin stopping a running container: its preStop hook, then SIGTERM
    /// (in the background); SIGKILL follows at `now + grace_ms`.
    Stop {
        container: String,
        grace_ms: i64,
        reason: String,
    },
    /// The grace period is over.
    Kill {
        runtime_id: String,
    },
    /// Containers are all gone: tear down the network, delete the logs.
    Release,
}

/// A probe to run now.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTask {
    pub container: String,
    pub kind: ProbeKind,
    pub probe: Probe,
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

/// Init containers restart on failure unless the pod never restarts.
fn init_policy(pod: &Pod) -> &'static str {
    if restart_policy(pod) == "Never" {
        "Never"
    } else {
        "OnFailure"
    }
}

pub fn backoff_ms(restarts: u32) -> i64 {
    if restarts == 0 {
        return 0;
    }
    let shift = (restarts - 1).min(16);
    (BACKOFF_BASE_MS << shift).min(BACKOFF_MAX_MS)
}

/// The spec of container `name` (init or app).
pub fn container_spec<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == name)
}

/// The grace period for stopping a pod's containers: the deletion's, else the
/// spec's, else 30 s.
pub fn grace_ms(pod: Option<&Pod>) -> i64 {
    pod.and_then(|p| {
        p.metadata
            .deletion_grace_period_seconds
            .or(p.spec.as_ref()?.termination_grace_period_seconds)
    })
    .unwrap_or(30)
    .max(0)
        * 1000
}

fn secs_ms(v: Option<i32>, default: i32) -> i64 {
    i64::from(v.unwrap_or(default).max(0)) * 1000
}

impl ContainerRecord {
    fn new(c: &Container, init: bool) -> ContainerRecord {
        ContainerRecord {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            init,
            runtime_id: None,
            attempt: 0,
            restart_count: 0,
            crash_restarts: 0,
            state: CState::Waiting {
                reason: if init {
                    "PodInitializing"
                } else {
                    "ContainerCreating"
                }
                .into(),
                message: None,
            },
            last_termination: None,
            next_start_at: 0,
            ready: false,
            started: false,
            post_started: false,
            kill_reason: None,
            kill_grace_ms: None,
            stopping: None,
            probes: BTreeMap::new(),
            pull_failures: 0,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state, CState::Running { .. })
    }

    fn completed(&self) -> bool {
        matches!(&self.state, CState::Terminated(t) if t.exit_code == 0)
    }

    /// The startup probe has passed, or there is none.
    pub fn effectively_started(&self, spec: Option<&Container>) -> bool {
        self.is_running()
            && (self.started || spec.is_none_or(|c| ProbeKind::Startup.of(c).is_none()))
    }

    /// Ready as `containerStatuses[].ready` means it.
    pub fn is_ready(&self, spec: Option<&Container>) -> bool {
        if self.init {
            return false;
        }
        self.effectively_started(spec)
            && self.stopping.is_none()
            && (self.ready || spec.is_none_or(|c| ProbeKind::Readiness.of(c).is_none()))
    }
}

impl PodRecord {
    pub fn new(pod: &Pod, now: i64) -> PodRecord {
        let mut r = PodRecord {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ip: None,
            network_ready: false,
            network_retry_at: 0,
            created_at: now,
            started_at: None,
            containers: BTreeMap::new(),
            init_order: Vec::new(),
            initialized: false,
            released: false,
        };
        r.sync_spec(pod);
        r
    }

    /// Adds records for containers the spec names (a record is never dropped
    /// while its pod lives: its runtime container may still need removing).
    pub fn sync_spec(&mut self, pod: &Pod) {
        let Some(spec) = pod.spec.as_ref() else {
            return;
        };
        let inits: Vec<String> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        if self.init_order.is_empty() && !inits.is_empty() {
            self.init_order = inits;
        }
        if self.init_order.is_empty() {
            self.initialized = true;
        }
        for c in spec.init_containers.iter().flatten() {
            self.containers
                .entry(c.name.clone())
                .or_insert_with(|| ContainerRecord::new(c, true));
        }
        for c in &spec.containers {
            self.containers
                .entry(c.name.clone())
                .or_insert_with(|| ContainerRecord::new(c, false));
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
        let app_policy = pod.map(restart_policy).unwrap_or("Never").to_string();
        let init_policy = pod.map(init_policy).unwrap_or("Never");
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
                    oom_killed,
                    ..
                }) => Terminated {
                    exit_code: *exit_code,
                    signal: *signal,
                    reason: if *oom_killed {
                        "OOMKilled"
                    } else if *exit_code == 0 {
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
            let policy = if c.init {
                init_policy
            } else {
                app_policy.as_str()
            };
            let restart = match policy {
                "Always" => true,
                "OnFailure" => term.exit_code != 0,
                _ => false,
            };
            let ran = term.finished_at - term.started_at;
            if ran >= BACKOFF_RESET_MS {
                c.crash_restarts = 0;
            }
            let delay = backoff_ms(c.crash_restarts);
            c.next_start_at = term.finished_at + delay;
            c.last_termination = Some(term.clone());
            c.ready = false;
            c.started = false;
            c.kill_reason = None;
            c.kill_grace_ms = None;
            c.stopping = None;
            c.probes.clear();
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
        if !self.initialized
            && self.init_order.iter().all(|n| {
                self.containers
                    .get(n)
                    .is_some_and(ContainerRecord::completed)
            })
        {
            self.initialized = true;
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

    /// An init container failed for good (the pod never restarts).
    pub fn init_failed(&self, pod: &Pod) -> bool {
        init_policy(pod) == "Never"
            && self.init_order.iter().any(|n| {
                matches!(self.containers.get(n).map(|c| &c.state), Some(CState::Terminated(t)) if t.exit_code != 0)
            })
    }

    /// What to do now. `pod` is the desired pod, or `None` when it is no
    /// longer wanted; `actual` is what the runtime holds.
    pub fn next_steps(
        &self,
        pod: Option<&Pod>,
        actual: &HashMap<String, ContainerState>,
        now: i64,
    ) -> Vec<Step> {
        let wanted = pod.filter(|p| p.metadata.deletion_timestamp.is_none());
        let mut steps = Vec::new();
        let Some(pod) = wanted else {
            if self.released {
                return steps;
            }
            let mut alive = false;
            for c in self.containers.values() {
                let Some(id) = &c.runtime_id else { continue };
                match actual.get(id) {
                    Some(ContainerState::Running { .. }) | Some(ContainerState::Created) => {
                        alive = true;
                        steps.extend(self.stop_steps(c, id, grace_ms(pod), "Stopping", now));
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
        };
        if !self.network_ready {
            if now >= self.network_retry_at {
                steps.push(Step::SetupNetwork);
            }
            return steps;
        }
        // Probe verdicts that stop a container, and postStart hooks.
        for c in self.containers.values().filter(|c| c.is_running()) {
            let Some(id) = &c.runtime_id else { continue };
            if let Some(reason) = &c.kill_reason {
                steps.extend(self.stop_steps(
                    c,
                    id,
                    c.kill_grace_ms.unwrap_or(grace_ms(Some(pod))),
                    reason,
                    now,
                ));
            } else if !c.post_started
                && container_spec(pod, &c.name)
                    .and_then(|s| s.lifecycle.as_ref())
                    .is_some_and(|l| l.post_start.is_some())
            {
                steps.push(Step::PostStart {
                    container: c.name.clone(),
                });
            }
        }
        if !self.initialized {
            let policy = init_policy(pod);
            for name in &self.init_order {
                let Some(c) = self.containers.get(name) else {
                    continue;
                };
                if c.completed() {
                    continue;
                }
                if Self::wants_start(c, policy, now) {
                    steps.extend(self.start_steps(c, actual));
                }
                // One at a time: later init containers wait for this one.
                break;
            }
            return steps;
        }
        let policy = restart_policy(pod);
        for c in self.containers.values().filter(|c| !c.init) {
            if Self::wants_start(c, policy, now) {
                steps.extend(self.start_steps(c, actual));
            }
        }
        steps
    }

    fn start_steps(
        &self,
        c: &ContainerRecord,
        actual: &HashMap<String, ContainerState>,
    ) -> Vec<Step> {
        let mut steps = Vec::new();
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
        steps
    }

    fn stop_steps(
        &self,
        c: &ContainerRecord,
        id: &str,
        grace: i64,
        reason: &str,
        now: i64,
    ) -> Vec<Step> {
        match &c.stopping {
            None => vec![Step::Stop {
                container: c.name.clone(),
                grace_ms: grace,
                reason: reason.to_string(),
            }],
            Some(s) if now >= s.deadline && !s.kill_sent => vec![Step::Kill {
                runtime_id: id.to_string(),
            }],
            Some(_) => Vec::new(),
        }
    }

    /// Probes to run now, in running app containers.
    pub fn due_probes(&self, pod: &Pod, now: i64) -> Vec<ProbeTask> {
        let mut out = Vec::new();
        for c in self.containers.values() {
            let CState::Running { started_at } = c.state else {
                continue;
            };
            if c.init || c.stopping.is_some() || c.kill_reason.is_some() {
                continue;
            }
            let Some(spec) = container_spec(pod, &c.name) else {
                continue;
            };
            let kinds: &[ProbeKind] = if c.effectively_started(Some(spec)) {
                &[ProbeKind::Liveness, ProbeKind::Readiness]
            } else {
                &[ProbeKind::Startup]
            };
            for &kind in kinds {
                let Some(probe) = kind.of(spec) else { continue };
                let counter = c.probes.get(&kind).cloned().unwrap_or_default();
                let first = started_at + secs_ms(probe.initial_delay_seconds, 0);
                let due = if counter.next_at == 0 {
                    first
                } else {
                    counter.next_at
                };
                if !counter.in_flight && now >= due {
                    out.push(ProbeTask {
                        container: c.name.clone(),
                        kind,
                        probe: probe.clone(),
                    });
                }
            }
        }
        out
    }

    pub fn on_probe_started(&mut self, container: &str, kind: ProbeKind) {
        if let Some(c) = self.containers.get_mut(container) {
            c.probes.entry(kind).or_default().in_flight = true;
        }
    }

    /// Folds one probe result in; returns what deserves an Event.
    pub fn on_probe_result(
        &mut self,
        container: &str,
        kind: ProbeKind,
        probe: &Probe,
        result: Result<(), String>,
        now: i64,
    ) -> Vec<Happening> {
        let mut happened = Vec::new();
        let Some(c) = self.containers.get_mut(container) else {
            return happened;
        };
        if !c.is_running() {
            return happened;
        }
        let counter = c.probes.entry(kind).or_default();
        counter.in_flight = false;
        counter.next_at = now + secs_ms(probe.period_seconds, 10);
        let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1) as u32;
        let success_threshold = match kind {
            ProbeKind::Readiness => probe.success_threshold.unwrap_or(1).max(1) as u32,
            _ => 1,
        };
        match result {
            Ok(()) => {
                counter.successes += 1;
                counter.failures = 0;
                if counter.successes >= success_threshold {
                    match kind {
                        ProbeKind::Startup => c.started = true,
                        ProbeKind::Readiness => c.ready = true,
                        ProbeKind::Liveness => {}
                    }
                }
            }
            Err(message) => {
                counter.failures += 1;
                counter.successes = 0;
                happened.push(Happening::warning(
                    "Unhealthy",
                    format!("{} probe failed: {message}", kind.as_str()),
                ));
                if counter.failures >= failure_threshold {
                    match kind {
                        ProbeKind::Readiness => c.ready = false,
                        ProbeKind::Liveness | ProbeKind::Startup => {
                            let what = if kind == ProbeKind::Liveness {
                                "liveness"
                            } else {
                                "startup"
                            };
                            let msg = format!(
                                "Container {} failed {what} probe, will be restarted",
                                c.name
                            );
                            happened.push(Happening::normal("Killing", msg.clone()));
                            c.kill_reason = Some(msg);
                            c.kill_grace_ms = probe
                                .termination_grace_period_seconds
                                .map(|s| s.max(0) * 1000);
                        }
                    }
                }
            }
        }
        happened
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
                c.crash_restarts = c.crash_restarts.saturating_add(1);
            }
            c.attempt += 1;
            c.runtime_id = Some(runtime_id);
            c.state = CState::Running { started_at };
            c.ready = false;
            c.started = false;
            c.post_started = false;
            c.kill_reason = None;
            c.kill_grace_ms = None;
            c.stopping = None;
            c.probes.clear();
        }
    }

    /// A start that failed before the container ran: wait and retry, with the
    /// same back-off as a crash.
    pub fn on_start_failed(&mut self, container: &str, reason: &str, message: String, now: i64) {
        if let Some(c) = self.containers.get_mut(container) {
            let failures = c.crash_restarts + u32::from(c.attempt > 0);
            c.next_start_at = now + backoff_ms(failures.max(1));
            if reason == "RunContainerError" {
                c.attempt += 1;
                if c.attempt > 1 {
                    c.restart_count += 1;
                    c.crash_restarts = c.crash_restarts.saturating_add(1);
                }
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

    pub fn on_post_started(&mut self, container: &str) {
        if let Some(c) = self.containers.get_mut(container) {
            c.post_started = true;
        }
    }

    /// The postStart hook failed: like Kubernetes, the container is killed
    /// (and restarts under the policy).
    pub fn on_post_start_failed(&mut self, container: &str, message: String) -> Happening {
        if let Some(c) = self.containers.get_mut(container) {
            c.post_started = true;
            c.kill_reason = Some(format!("PostStartHook failed: {message}"));
        }
        Happening::warning(
            "FailedPostStartHook",
            format!("PostStartHook failed for container {container}: {message}"),
        )
    }

    pub fn on_removed(&mut self, runtime_id: &str) {
        for c in self.containers.values_mut() {
            if c.runtime_id.as_deref() == Some(runtime_id) && !c.is_running() {
                // Keep the id only while its container exists.
                c.runtime_id = None;
            }
        }
    }

    /// A stop began: preStop and SIGTERM are under way.
    pub fn on_stop_begun(&mut self, container: &str, grace_ms: i64, now: i64) {
        if let Some(c) = self.containers.get_mut(container) {
            c.stopping = Some(Stopping {
                since: now,
                deadline: now + grace_ms,
                kill_sent: false,
            });
        }
    }

    pub fn on_killed(&mut self, runtime_id: &str) {
        for c in self.containers.values_mut() {
            if c.runtime_id.as_deref() == Some(runtime_id)
                && let Some(s) = c.stopping.as_mut()
            {
                s.kill_sent = true;
            }
        }
    }

    /// The pod's network is up (or it uses the host's): containers may start.
    pub fn on_network_ready(&mut self, ip: Option<Ipv4Addr>) {
        self.ip = ip;
        self.network_ready = true;
        self.network_retry_at = 0;
    }

    /// The pod's network namespace is gone (a reboot emptied its tmpfs):
    /// set it up again before the next start.
    pub fn on_network_lost(&mut self) {
        self.network_ready = false;
    }

    /// Setting up the pod's network failed (the kubelet's failed sandbox):
    /// its containers keep waiting with the reason as their message, the
    /// setup is tried again after [`BACKOFF_BASE_MS`] (the kubelet's retry
    /// of a failed pod sync), and a `FailedCreatePodSandBox` Warning is
    /// due. `ip`, when one was allocated, stays reserved for the retry.
    pub fn on_network_failed(
        &mut self,
        ip: Option<Ipv4Addr>,
        message: &str,
        now: i64,
    ) -> Happening {
        if ip.is_some() {
            self.ip = ip;
        }
        self.network_ready = false;
        self.network_retry_at = now + BACKOFF_BASE_MS;
        for c in self.containers.values_mut() {
            if let CState::Waiting { message: m, .. } = &mut c.state {
                *m = Some(format!("pod network: {message}"));
            }
        }
        Happening::warning(
            "FailedCreatePodSandBox",
            format!("Failed to create pod sandbox: {message}"),
        )
    }

    pub fn on_released(&mut self) {
        self.released = true;
        self.network_ready = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, TCPSocketAction};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn container(name: &str) -> Container {
        Container {
            name: name.into(),
            image: Some("demo".into()),
            ..Default::default()
        }
    }

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
                containers: vec![container("main")],
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
            oom_killed: false,
        }
    }

    fn running(pid: i32) -> ContainerState {
        ContainerState::Running { pid, started_at: 0 }
    }

    fn start(c: &str) -> Step {
        Step::Start {
            container: c.into(),
        }
    }

    #[test]
    fn network_first_then_start() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        let none = HashMap::new();
        assert_eq!(r.next_steps(Some(&p), &none, 0), vec![Step::SetupNetwork]);
        r.network_ready = true;
        assert_eq!(r.next_steps(Some(&p), &none, 0), vec![start("main")]);
        let id = r.next_runtime_id("main");
        assert_eq!(id, "0123456789ab-main-0");
        r.on_started("main", id.clone(), 5);
        let actual = HashMap::from([(id, running(1))]);
        assert_eq!(r.next_steps(Some(&p), &actual, 10), vec![]);
        assert!(r.containers["main"].is_ready(container_spec(&p, "main")));
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
            let happened = r.observe(Some(&p), &actual, now);
            let c = &r.containers["main"];
            delays.push(c.next_start_at - now);
            if c.next_start_at > now {
                assert!(
                    matches!(&c.state, CState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
                );
                assert_eq!(happened[0].reason, "BackOff");
                assert_eq!(r.next_steps(Some(&p), &actual, now), vec![]);
            }
            now = c.next_start_at;
            assert_eq!(
                r.next_steps(Some(&p), &actual, now),
                vec![
                    Step::Remove {
                        runtime_id: id.clone()
                    },
                    start("main")
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
        // Five quick crashes: the back-off has grown to 2 min 40 s.
        let mut t = 0;
        for attempt in 0..6 {
            let id = format!("a{attempt}");
            r.on_started("main", id.clone(), t);
            let actual = HashMap::from([(id, exited(1, t, t + 1))]);
            r.observe(Some(&p), &actual, t + 1);
            t = r.containers["main"].next_start_at;
        }
        assert_eq!(r.containers["main"].restart_count, 5);
        let grown = r.containers["main"].last_termination.clone().unwrap();
        assert_eq!(t - grown.finished_at, 160_000);
        // A run of 10 minutes resets it: the restart is immediate ...
        r.on_started("main", "long".into(), t);
        let end = t + BACKOFF_RESET_MS;
        let actual = HashMap::from([("long".to_string(), exited(1, t, end))]);
        r.observe(Some(&p), &actual, end);
        assert_eq!(r.containers["main"].next_start_at, end);
        assert!(matches!(r.containers["main"].state, CState::Terminated(_)));
        // ... and the next quick crash waits the first step, 10 s, not 5 min.
        r.on_started("main", "quick".into(), end);
        let actual = HashMap::from([("quick".to_string(), exited(1, end, end + 1))]);
        let happened = r.observe(Some(&p), &actual, end + 1);
        let c = &r.containers["main"];
        assert_eq!(c.next_start_at, end + 1 + BACKOFF_BASE_MS);
        assert!(matches!(&c.state, CState::Waiting { reason, .. } if reason == "CrashLoopBackOff"));
        assert_eq!(happened.len(), 1);
        // The count users see keeps going, as in Kubernetes.
        assert_eq!(c.restart_count, 7);
    }

    #[test]
    fn a_failed_network_setup_waits_warns_and_retries() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        let none = HashMap::new();
        assert_eq!(r.next_steps(Some(&p), &none, 0), vec![Step::SetupNetwork]);
        let ip = Ipv4Addr::new(10, 1, 0, 7);
        let h = r.on_network_failed(Some(ip), "creating veth: File exists", 1_000);
        assert!(h.warning);
        assert_eq!(h.reason, "FailedCreatePodSandBox");
        assert!(h.message.contains("creating veth: File exists"), "{h:?}");
        assert_eq!(r.ip, Some(ip));
        assert_eq!(
            r.containers["main"].state,
            CState::Waiting {
                reason: "ContainerCreating".into(),
                message: Some("pod network: creating veth: File exists".into()),
            }
        );
        // Nothing starts, and the setup waits out the retry delay.
        assert_eq!(r.next_steps(Some(&p), &none, 1_001), vec![]);
        let retry = 1_000 + BACKOFF_BASE_MS;
        assert_eq!(r.next_steps(Some(&p), &none, retry - 1), vec![]);
        assert_eq!(
            r.next_steps(Some(&p), &none, retry),
            vec![Step::SetupNetwork]
        );
        // A second failure keeps the IP if none is given, and warns again.
        let h = r.on_network_failed(None, "no free pod IP", retry);
        assert_eq!(h.reason, "FailedCreatePodSandBox");
        assert_eq!(r.ip, Some(ip));
        r.on_network_ready(Some(ip));
        assert_eq!(
            r.next_steps(Some(&p), &none, retry + 1),
            vec![start("main")]
        );
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
            let wants = r.next_steps(Some(&p), &actual, 1).contains(&start("main"));
            assert_eq!(wants, restarts, "{policy} exit {code}");
        }
    }

    #[test]
    fn stopping_sends_stop_then_kill_then_releases() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let alive = HashMap::from([("x".to_string(), running(1))]);
        assert_eq!(
            r.next_steps(None, &alive, 100),
            vec![Step::Stop {
                container: "main".into(),
                grace_ms: 30_000,
                reason: "Stopping".into()
            }]
        );
        r.on_stop_begun("main", 30_000, 100);
        assert_eq!(r.next_steps(None, &alive, 200), vec![]);
        assert_eq!(
            r.next_steps(None, &alive, 30_100),
            vec![Step::Kill {
                runtime_id: "x".into()
            }]
        );
        r.on_killed("x");
        assert_eq!(r.next_steps(None, &alive, 30_150), vec![]);
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
    fn deletion_grace_comes_from_the_pod() {
        let mut p = pod("Always");
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            jiff::Timestamp::UNIX_EPOCH,
        ));
        p.metadata.deletion_grace_period_seconds = Some(5);
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let alive = HashMap::from([("x".to_string(), running(1))]);
        assert_eq!(
            r.next_steps(Some(&p), &alive, 1),
            vec![Step::Stop {
                container: "main".into(),
                grace_ms: 5_000,
                reason: "Stopping".into()
            }]
        );
    }

    #[test]
    fn pull_failures_back_off_10_20_40_then_cap_and_reset() {
        let p = pod("Always");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        let none = HashMap::new();
        let mut now = 0;
        let mut delays = Vec::new();
        for _ in 0..7 {
            assert_eq!(r.next_steps(Some(&p), &none, now), vec![start("main")]);
            r.on_pull_started("main");
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
            vec![start("main")]
        );
    }

    fn with_inits(policy: &str) -> Pod {
        let mut p = pod(policy);
        p.spec.as_mut().unwrap().init_containers =
            Some(vec![container("first"), container("second")]);
        p
    }

    #[test]
    fn init_containers_run_in_order_before_the_app() {
        let p = with_inits("Always");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        let none = HashMap::new();
        assert_eq!(r.next_steps(Some(&p), &none, 0), vec![start("first")]);
        r.on_started("first", "f".into(), 0);
        let a = HashMap::from([("f".to_string(), running(1))]);
        assert_eq!(r.next_steps(Some(&p), &a, 1), vec![], "wait for the first");
        // It fails: restarted (init containers restart on failure), the
        // second does not start.
        let a = HashMap::from([("f".to_string(), exited(1, 0, 2))]);
        r.observe(Some(&p), &a, 2);
        assert_eq!(
            r.next_steps(Some(&p), &a, 2),
            vec![
                Step::Remove {
                    runtime_id: "f".into()
                },
                start("first")
            ]
        );
        r.on_removed("f");
        r.on_started("first", "f1".into(), 3);
        let a = HashMap::from([("f1".to_string(), exited(0, 3, 4))]);
        r.observe(Some(&p), &a, 4);
        assert!(!r.initialized);
        assert_eq!(r.next_steps(Some(&p), &a, 4), vec![start("second")]);
        r.on_started("second", "s".into(), 5);
        let a = HashMap::from([
            ("f1".to_string(), exited(0, 3, 4)),
            ("s".to_string(), exited(0, 5, 6)),
        ]);
        r.observe(Some(&p), &a, 6);
        assert!(r.initialized);
        assert_eq!(r.next_steps(Some(&p), &a, 6), vec![start("main")]);
        // A completed init container is never run again.
        r.on_started("main", "m".into(), 7);
        let a = HashMap::from([("m".to_string(), exited(1, 7, 8))]);
        r.observe(Some(&p), &a, 8);
        assert_eq!(
            r.next_steps(Some(&p), &a, 8),
            vec![
                Step::Remove {
                    runtime_id: "m".into()
                },
                start("main")
            ]
        );
    }

    #[test]
    fn a_failed_init_container_fails_a_never_pod() {
        let p = with_inits("Never");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("first", "f".into(), 0);
        let a = HashMap::from([("f".to_string(), exited(2, 0, 1))]);
        r.observe(Some(&p), &a, 1);
        assert!(r.init_failed(&p));
        assert_eq!(r.next_steps(Some(&p), &a, 100_000), vec![]);
    }

    fn tcp_probe(failure: i32, success: i32) -> Probe {
        Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(8080),
                host: None,
            }),
            initial_delay_seconds: Some(5),
            period_seconds: Some(10),
            failure_threshold: Some(failure),
            success_threshold: Some(success),
            ..Default::default()
        }
    }

    #[test]
    fn readiness_needs_successes_and_failures_take_it_away() {
        let mut p = pod("Always");
        p.spec.as_mut().unwrap().containers[0].readiness_probe = Some(tcp_probe(2, 2));
        let spec = container_spec(&p, "main").cloned();
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        assert!(
            !r.containers["main"].is_ready(spec.as_ref()),
            "not ready before a probe"
        );
        assert!(r.due_probes(&p, 4_999).is_empty(), "initial delay");
        let due = r.due_probes(&p, 5_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].kind, ProbeKind::Readiness);
        r.on_probe_started("main", ProbeKind::Readiness);
        assert!(
            r.due_probes(&p, 6_000).is_empty(),
            "one in flight at a time"
        );
        let probe = due[0].probe.clone();
        r.on_probe_result("main", ProbeKind::Readiness, &probe, Ok(()), 5_000);
        assert!(
            !r.containers["main"].is_ready(spec.as_ref()),
            "successThreshold 2"
        );
        assert!(r.due_probes(&p, 14_999).is_empty(), "period");
        r.on_probe_result("main", ProbeKind::Readiness, &probe, Ok(()), 15_000);
        assert!(r.containers["main"].is_ready(spec.as_ref()));
        let ev = r.on_probe_result(
            "main",
            ProbeKind::Readiness,
            &probe,
            Err("refused".into()),
            25_000,
        );
        assert_eq!(ev[0].reason, "Unhealthy");
        assert!(
            r.containers["main"].is_ready(spec.as_ref()),
            "failureThreshold 2"
        );
        r.on_probe_result(
            "main",
            ProbeKind::Readiness,
            &probe,
            Err("refused".into()),
            35_000,
        );
        assert!(!r.containers["main"].is_ready(spec.as_ref()));
    }

    #[test]
    fn failed_liveness_stops_and_restarts_the_container() {
        let mut p = pod("Always");
        p.spec.as_mut().unwrap().containers[0].liveness_probe = Some(tcp_probe(1, 1));
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let probe = r.due_probes(&p, 5_000)[0].probe.clone();
        let ev = r.on_probe_result(
            "main",
            ProbeKind::Liveness,
            &probe,
            Err("timeout".into()),
            5_000,
        );
        assert!(ev.iter().any(|e| e.reason == "Killing"));
        let alive = HashMap::from([("x".to_string(), running(1))]);
        let steps = r.next_steps(Some(&p), &alive, 5_001);
        assert!(
            matches!(&steps[..], [Step::Stop { container, .. }] if container == "main"),
            "{steps:?}"
        );
        r.on_stop_begun("main", 30_000, 5_001);
        assert!(
            r.due_probes(&p, 100_000).is_empty(),
            "no probes while stopping"
        );
        let dead = HashMap::from([("x".to_string(), exited(143, 0, 6_000))]);
        r.observe(Some(&p), &dead, 6_000);
        assert_eq!(
            r.next_steps(Some(&p), &dead, 6_000),
            vec![
                Step::Remove {
                    runtime_id: "x".into()
                },
                start("main")
            ]
        );
    }

    #[test]
    fn startup_probe_holds_back_the_others() {
        let mut p = pod("Always");
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.startup_probe = Some(tcp_probe(3, 1));
        c.liveness_probe = Some(tcp_probe(1, 1));
        let spec = container_spec(&p, "main").cloned();
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let due = r.due_probes(&p, 5_000);
        assert_eq!(
            due.iter().map(|t| t.kind).collect::<Vec<_>>(),
            vec![ProbeKind::Startup]
        );
        assert!(!r.containers["main"].is_ready(spec.as_ref()));
        r.on_probe_result("main", ProbeKind::Startup, &due[0].probe, Ok(()), 5_000);
        assert!(r.containers["main"].is_ready(spec.as_ref()));
        let due = r.due_probes(&p, 15_000);
        assert_eq!(
            due.iter().map(|t| t.kind).collect::<Vec<_>>(),
            vec![ProbeKind::Liveness]
        );
    }

    #[test]
    fn a_failed_startup_probe_stops_with_its_own_grace_period() {
        let mut p = pod("Always");
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        let mut startup = tcp_probe(1, 1);
        startup.termination_grace_period_seconds = Some(2);
        c.startup_probe = Some(startup);
        let mut live = tcp_probe(1, 1);
        live.termination_grace_period_seconds = Some(7);
        c.liveness_probe = Some(live);
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let due = r.due_probes(&p, 5_000);
        r.on_probe_result(
            "main",
            ProbeKind::Startup,
            &due[0].probe,
            Err("refused".into()),
            5_000,
        );
        let alive = HashMap::from([("x".to_string(), running(1))]);
        assert!(
            matches!(&r.next_steps(Some(&p), &alive, 5_001)[..],
                [Step::Stop { grace_ms: 2_000, reason, .. }] if reason.contains("failed startup probe")),
            "{:?}",
            r.next_steps(Some(&p), &alive, 5_001)
        );
    }

    #[test]
    fn exec_probes_are_run_and_empty_ones_are_not() {
        let mut p = pod("Always");
        let c = &mut p.spec.as_mut().unwrap().containers[0];
        c.readiness_probe = Some(Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec!["cat".into(), "/tmp/ready".into()]),
            }),
            period_seconds: Some(1),
            ..Default::default()
        });
        c.liveness_probe = Some(Probe {
            exec: Some(k8s_openapi::api::core::v1::ExecAction {
                command: Some(vec![]),
            }),
            ..Default::default()
        });
        let spec = container_spec(&p, "main").cloned();
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let due = r.due_probes(&p, 0);
        assert_eq!(
            due.iter().map(|t| t.kind).collect::<Vec<_>>(),
            vec![ProbeKind::Readiness]
        );
        assert!(!r.containers["main"].is_ready(spec.as_ref()));
        r.on_probe_result("main", ProbeKind::Readiness, &due[0].probe, Ok(()), 0);
        assert!(r.containers["main"].is_ready(spec.as_ref()));
        assert!(r.due_probes(&p, 999).is_empty());
        assert_eq!(r.due_probes(&p, 1_000).len(), 1);
    }

    #[test]
    fn probe_counters_are_not_persisted() {
        let mut p = pod("Always");
        p.spec.as_mut().unwrap().containers[0].readiness_probe = Some(tcp_probe(3, 1));
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let mut before = Vec::new();
        ciborium::into_writer(&r, &mut before).unwrap();
        let probe = r.due_probes(&p, 5_000)[0].probe.clone();
        r.on_probe_result(
            "main",
            ProbeKind::Readiness,
            &probe,
            Err("no".into()),
            5_000,
        );
        let mut after = Vec::new();
        ciborium::into_writer(&r, &mut after).unwrap();
        assert_eq!(
            before, after,
            "a failure below the threshold writes nothing"
        );
    }

    #[test]
    fn oom_kill_is_reported_as_oomkilled() {
        let p = pod("Never");
        let mut r = PodRecord::new(&p, 0);
        r.network_ready = true;
        r.on_started("main", "x".into(), 0);
        let actual = HashMap::from([(
            "x".to_string(),
            ContainerState::Exited {
                exit_code: 137,
                signal: Some(9),
                started_at: 0,
                finished_at: 5,
                oom_killed: true,
            },
        )]);
        r.observe(Some(&p), &actual, 5);
        let CState::Terminated(t) = &r.containers["main"].state else {
            panic!("{:?}", r.containers["main"].state)
        };
        assert_eq!((t.reason.as_str(), t.exit_code), ("OOMKilled", 137));
    }
}
