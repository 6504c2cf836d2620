//! Controllers: level-triggered reconcilers in the style of kube-runtime.
//!
//! Each controller is a pure function from a [`Snapshot`] of the store to the
//! [`Action`]s that move the cluster toward what the objects ask for. The
//! master's loop takes a snapshot, runs every controller, commits the actions,
//! and runs again when the store changes or the resync timer fires, so a missed
//! change only delays convergence.
//!
//! Must not touch: the store, MQTT or clocks: everything comes in the snapshot.

pub mod adoption;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod hpa;
pub mod job;
pub mod loadbalancer;
pub mod namespace;
pub mod nodes;
pub mod pods;
pub mod replicaset;
pub mod revisions;
pub mod statefulset;
pub mod volumes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::PodCondition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::api::{
    ConfigMap, ControllerRevision, CronJob, DaemonSet, Deployment, Endpoints, Event,
    HorizontalPodAutoscaler, Job, Kind, Namespace, Node, Object, ObjectKey, PersistentVolumeClaim,
    Pod, ReplicaSet, Secret, Service, StatefulSet,
};

/// Everything a reconcile pass may look at.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub now: Timestamp,
    pub objects: BTreeMap<Kind, Vec<Arc<Object>>>,
    /// When each node last reported (in memory only: heartbeats are never stored).
    pub last_seen: HashMap<String, Timestamp>,
    /// Pods whose node reported every container stopped and everything released.
    pub terminated: HashSet<String>,
    /// How long a silent node stays Ready.
    pub node_grace: std::time::Duration,
    /// How long a node stays NotReady before its pods are evicted (pods
    /// that tolerate `node.kubernetes.io/unreachable` may stay longer).
    pub pod_eviction: std::time::Duration,
    /// What each pod's containers use now, as their nodes measured it (in
    /// memory only, like heartbeats), keyed by pod uid.
    pub usage: HashMap<String, PodUsage>,
}

/// A pod's resource use: CPU in millicores (a rate over the last report
/// interval) and memory working set in bytes, summed over its containers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodUsage {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// Per container name: (cpu millicores, memory bytes).
    pub containers: BTreeMap<String, (i64, i64)>,
    /// When it was measured.
    pub at: Timestamp,
}

/// What a controller wants done. Updates carry the resourceVersion they were
/// computed from, so a stale one fails with a conflict and is recomputed.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    Create(Object),
    Update(Object),
    Delete {
        key: ObjectKey,
        resource_version: u64,
    },
}

impl Action {
    pub fn describe(&self) -> String {
        match self {
            Action::Create(o) => format!("create {}", o.key()),
            Action::Update(o) => format!("update {}", o.key()),
            Action::Delete { key, .. } => format!("delete {key}"),
        }
    }
}

macro_rules! typed {
    ($fn:ident, $kind:ident, $ty:ident) => {
        pub fn $fn(&self) -> impl Iterator<Item = &$ty> + '_ {
            self.of(Kind::$kind).filter_map(|o| match o {
                Object::$ty(x) => Some(x),
                _ => None,
            })
        }
    };
}

impl Snapshot {
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Object> + '_ {
        self.objects.get(&kind).into_iter().flatten().map(|o| &**o)
    }

    typed!(pods, Pod, Pod);
    typed!(replicasets, ReplicaSet, ReplicaSet);
    typed!(deployments, Deployment, Deployment);
    typed!(services, Service, Service);
    typed!(endpoints, Endpoints, Endpoints);
    typed!(nodes, Node, Node);
    typed!(namespaces, Namespace, Namespace);
    typed!(configmaps, ConfigMap, ConfigMap);
    typed!(secrets, Secret, Secret);
    typed!(events, Event, Event);
    typed!(statefulsets, StatefulSet, StatefulSet);
    typed!(daemonsets, DaemonSet, DaemonSet);
    typed!(jobs, Job, Job);
    typed!(cronjobs, CronJob, CronJob);
    typed!(hpas, HorizontalPodAutoscaler, HorizontalPodAutoscaler);
    typed!(claims, PersistentVolumeClaim, PersistentVolumeClaim);
    typed!(revisions, ControllerRevision, ControllerRevision);

    /// Pods whose controller reference names `owner_uid`.
    pub fn pods_of<'a>(&'a self, owner_uid: &'a str) -> impl Iterator<Item = &'a Pod> + 'a {
        self.pods()
            .filter(move |p| controller_of(&p.metadata).is_some_and(|r| r.uid == owner_uid))
    }
}

/// Runs every controller once.
pub fn reconcile_all(snap: &Snapshot, names: &mut dyn FnMut() -> String) -> Vec<Action> {
    let mut actions = Vec::new();
    actions.extend(nodes::reconcile(snap));
    actions.extend(namespace::reconcile(snap));
    actions.extend(hpa::reconcile(snap));
    actions.extend(cronjob::reconcile(snap));
    actions.extend(deployment::reconcile(snap));
    actions.extend(replicaset::reconcile(snap, names));
    actions.extend(statefulset::reconcile(snap));
    actions.extend(daemonset::reconcile(snap, names));
    actions.extend(job::reconcile(snap, names));
    actions.extend(volumes::reconcile(snap));
    actions.extend(crate::master::scheduler::reconcile(snap));
    actions.extend(endpoints::reconcile(snap));
    actions.extend(loadbalancer::reconcile(snap));
    actions.extend(gc::reconcile(snap));
    actions.extend(pods::reconcile(snap));
    actions.extend(events::reconcile(snap));
    dedupe(actions)
}

/// One action per object: a later update of an object another controller
/// already updated in this pass is dropped (it was computed from the same
/// stale copy and would fail its resourceVersion check anyway, costing the
/// whole batch its single transaction).
fn dedupe(actions: Vec<Action>) -> Vec<Action> {
    let mut seen = HashSet::new();
    actions
        .into_iter()
        .filter(|a| match a {
            Action::Create(_) => true,
            Action::Update(o) => seen.insert(o.key()),
            Action::Delete { key, .. } => seen.insert(key.clone()),
        })
        .collect()
}

// ---- helpers shared by the controllers ----

pub fn uid(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> &str {
    meta.uid.as_deref().unwrap_or("")
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

pub fn owner_ref(kind: Kind, name: &str, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: kind.api_version().to_string(),
        kind: kind.as_str().to_string(),
        name: name.to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

pub fn is_terminating(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
}

pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

/// Succeeded or Failed: done for good, no longer counted as a replica.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

pub fn condition<'a>(pod: &'a Pod, type_: &str) -> Option<&'a PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn is_ready(pod: &Pod) -> bool {
    condition(pod, "Ready").is_some_and(|c| c.status == "True")
}

pub fn time(now: Timestamp) -> Time {
    Time(now)
}

/// Whether a node's Ready condition is True.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Kubernetes' `GetScaledValueFromIntOrPercent`: an absolute number, or a
/// percentage of `total` rounded up or down.
pub fn scaled_value(v: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match v {
        None => 0,
        Some(IntOrString::Int(i)) => *i,
        Some(IntOrString::String(s)) => {
            let pct: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            let num = pct * i64::from(total);
            let v = if round_up {
                (num + 99) / 100
            } else {
                num / 100
            };
            v as i32
        }
    }
}

/// Available: Ready for at least `min_ready_seconds` (Kubernetes'
/// `IsPodAvailable`).
pub fn is_available(pod: &Pod, min_ready_seconds: i32, now: Timestamp) -> bool {
    let Some(c) = condition(pod, "Ready").filter(|c| c.status == "True") else {
        return false;
    };
    if min_ready_seconds <= 0 {
        return true;
    }
    let since = c.last_transition_time.as_ref().map(|t| t.0).unwrap_or(now);
    now.duration_since(since).as_secs() >= i64::from(min_ready_seconds)
}

/// The object in a snapshot with this kind, namespace and name.
pub fn find<'a>(snap: &'a Snapshot, kind: Kind, ns: &str, name: &str) -> Option<&'a Object> {
    snap.of(kind)
        .find(|o| o.name() == name && o.namespace() == if kind.namespaced() { ns } else { "" })
}

pub fn rv(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> u64 {
    meta.resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Object builders for the controllers' unit tests.
#[cfg(test)]
pub mod tests_support {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, ReplicaSetSpec};
    use k8s_openapi::api::core::v1::{
        Container, ContainerPort, NodeCondition, NodeStatus, PodSpec, PodStatus, PodTemplateSpec,
        ServicePort, ServiceSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    pub fn labels(app: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([("app".to_string(), app.to_string())]))
    }

    pub fn meta(name: &str, ns: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            uid: Some(format!("uid-{name}")),
            generation: Some(1),
            resource_version: Some("1".into()),
            ..Default::default()
        }
    }

    pub fn template(app: &str) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: labels(app),
                ..Default::default()
            }),
            spec: Some(PodSpec {
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("bramble.local/demo:v1".into()),
                    ports: Some(vec![ContainerPort {
                        name: Some("http".into()),
                        container_port: 8080,
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }
    }

    pub fn replicaset(name: &str, ns: &str, replicas: i32) -> ReplicaSet {
        ReplicaSet {
            metadata: ObjectMeta {
                labels: labels("web"),
                ..meta(name, ns)
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: labels("web"),
                    ..Default::default()
                },
                template: Some(template("web")),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn deployment(name: &str, ns: &str, replicas: i32) -> Deployment {
        Deployment {
            metadata: meta(name, ns),
            spec: Some(DeploymentSpec {
                replicas: Some(replicas),
                selector: LabelSelector {
                    match_labels: labels("web"),
                    ..Default::default()
                },
                template: template("web"),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn owned_pod(name: &str, rs: &ReplicaSet, node: Option<&str>, ready: bool) -> Pod {
        let mut pod = replicaset::new_pod(rs, "x").unwrap();
        pod.metadata.name = Some(name.into());
        pod.metadata.uid = Some(format!("uid-{name}"));
        pod.metadata.resource_version = Some("1".into());
        pod.spec.as_mut().unwrap().node_name = node.map(String::from);
        pod.status = Some(PodStatus {
            phase: Some(if node.is_some() { "Running" } else { "Pending" }.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        pod
    }

    pub fn set_ip(pod: &mut Pod, ip: &str) {
        pod.status.get_or_insert_with(Default::default).pod_ip = Some(ip.into());
    }

    pub fn service(name: &str, ns: &str, app: &str, port: i32, target: IntOrString) -> Service {
        Service {
            metadata: meta(name, ns),
            spec: Some(ServiceSpec {
                selector: labels(app),
                ports: Some(vec![ServicePort {
                    port,
                    target_port: Some(target),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    pub fn node(name: &str, ready: bool) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(BTreeMap::from([(
                    "kubernetes.io/arch".to_string(),
                    "arm64".to_string(),
                )])),
                ..Default::default()
            },
            spec: None,
            status: ready.then(|| NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    /// A snapshot holding `objects` and the `default` namespace.
    pub fn snapshot(objects: Vec<Object>) -> Snapshot {
        let mut snap = Snapshot {
            now: jiff::Timestamp::from_second(1_800_000_000).unwrap(),
            node_grace: std::time::Duration::from_secs(15),
            pod_eviction: std::time::Duration::from_secs(2),
            ..Default::default()
        };
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some("default".into()),
                uid: Some("uid-ns-default".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        for o in std::iter::once(Object::Namespace(ns)).chain(objects) {
            snap.objects.entry(o.kind()).or_default().push(Arc::new(o));
        }
        snap
    }
}
