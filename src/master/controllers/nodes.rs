//! Node lifecycle: a node is Ready while it reports within the grace period,
//! Unknown once it falls silent (or its Last Will arrives: the master then
//! forgets when it last heard from it). Heartbeats stay in memory; only the
//! transition is written. A node that is not Ready carries the
//! `node.kubernetes.io/unreachable` taints (NoSchedule, NoExecute), and once
//! it has been so for the eviction period its pods are deleted, so that their
//! controllers replace them elsewhere, as Kubernetes' taint-based eviction
//! does (with a default of seconds instead of five minutes). When the node
//! comes back its assignment no longer lists them and it stops them.

use k8s_openapi::api::core::v1::{Node, NodeCondition, Pod, Taint};

use super::{Action, Snapshot};
use crate::api::Object;

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    for node in snap.nodes() {
        let name = node.metadata.name.as_deref().unwrap_or("");
        let fresh = snap.last_seen.get(name).is_some_and(|t| {
            // Ahead of now: the allowance a restarted master gives.
            let age = snap.now.duration_since(*t);
            age.is_negative() || age.unsigned_abs() <= snap.node_grace
        });
        let (status, reason, message) = if fresh {
            (
                "True",
                "KubeletReady",
                "bramble agent is posting ready status",
            )
        } else {
            (
                "Unknown",
                "NodeStatusUnknown",
                "Bramble agent stopped posting node status.",
            )
        };
        let current = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"));
        if current.is_some_and(|c| c.status == status) {
            continue;
        }
        let mut n = node.clone();
        set_unreachable_taints(&mut n, !fresh, snap);
        let st = n.status.get_or_insert_with(Default::default);
        let conds = st.conditions.get_or_insert_with(Vec::new);
        conds.retain(|c| c.type_ != "Ready");
        let now = super::time(snap.now);
        conds.push(NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: Some(now),
        });
        out.push(Action::Update(Object::Node(n)));
    }
    out.extend(evictions(snap));
    out
}

fn set_unreachable_taints(n: &mut Node, unreachable: bool, snap: &Snapshot) {
    let spec = n.spec.get_or_insert_with(Default::default);
    let taints = spec.taints.get_or_insert_with(Vec::new);
    taints.retain(|t| t.key != UNREACHABLE_TAINT);
    if unreachable {
        for effect in ["NoSchedule", "NoExecute"] {
            taints.push(Taint {
                key: UNREACHABLE_TAINT.into(),
                effect: effect.into(),
                time_added: Some(super::time(snap.now)),
                value: None,
            });
        }
    }
    if taints.is_empty() {
        spec.taints = None;
    }
}

/// How long `pod` may stay on an unreachable node: its toleration of the
/// NoExecute taint (`None` seconds: forever), else the cluster's period.
fn tolerated_for(pod: &Pod, default: std::time::Duration) -> Option<std::time::Duration> {
    let taint = Taint {
        key: UNREACHABLE_TAINT.into(),
        effect: "NoExecute".into(),
        ..Default::default()
    };
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    match tolerations
        .into_iter()
        .flatten()
        .find(|t| crate::master::scheduler::tolerates(t, &taint))
    {
        Some(t) => t
            .toleration_seconds
            .map(|s| std::time::Duration::from_secs(s.max(0) as u64)),
        None => Some(default),
    }
}

/// Pods on nodes NotReady for longer than they tolerate: deleted outright
/// (their node cannot confirm a graceful stop; it stops them when it is back).
fn evictions(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    for node in snap.nodes() {
        let Some(cond) = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        else {
            continue;
        };
        if cond.status == "True" {
            continue;
        }
        let Some(since) = cond.last_transition_time.as_ref().map(|t| t.0) else {
            continue;
        };
        let down_for = snap.now.duration_since(since).unsigned_abs();
        let name = node.metadata.name.as_deref().unwrap_or("");
        for pod in snap.pods() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(name) {
                continue;
            }
            // A DaemonSet's pod belongs to its node: it would come back there.
            if super::controller_of(&pod.metadata).is_some_and(|r| r.kind == "DaemonSet") {
                continue;
            }
            if tolerated_for(pod, snap.pod_eviction).is_some_and(|limit| down_for >= limit) {
                out.push(Action::Delete {
                    key: crate::api::ObjectKey::new(
                        crate::api::Kind::Pod,
                        pod.metadata.namespace.as_deref().unwrap_or(""),
                        pod.metadata.name.as_deref().unwrap_or(""),
                    ),
                    resource_version: super::rv(&pod.metadata),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use std::time::Duration;

    #[test]
    fn ready_while_heard_from_then_unknown() {
        let mut snap = snapshot(vec![Object::Node(node("pi1", false))]);
        snap.node_grace = Duration::from_secs(15);
        snap.last_seen.insert("pi1".into(), snap.now);
        let actions = reconcile(&snap);
        let Some(Action::Update(Object::Node(n))) = actions.first() else {
            panic!("{actions:?}")
        };
        assert!(crate::master::controllers::node_ready(n));

        let mut snap = snapshot(vec![Object::Node(n.clone())]);
        snap.node_grace = Duration::from_secs(15);
        snap.last_seen.insert("pi1".into(), snap.now);
        assert_eq!(reconcile(&snap), vec![], "no write while nothing changes");

        snap.last_seen
            .insert("pi1".into(), snap.now - jiff::SignedDuration::from_secs(60));
        let actions = reconcile(&snap);
        let Some(Action::Update(Object::Node(n))) = actions.first() else {
            panic!("{actions:?}")
        };
        assert!(!crate::master::controllers::node_ready(n));
    }

    fn unreachable_since(n: &mut Node, snap: &Snapshot, secs: i64) {
        n.status = Some(k8s_openapi::api::core::v1::NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                last_transition_time: Some(crate::master::controllers::time(
                    snap.now - jiff::SignedDuration::from_secs(secs),
                )),
                ..Default::default()
            }]),
            ..Default::default()
        });
    }

    #[test]
    fn silent_node_is_tainted_and_its_pods_evicted_after_the_period() {
        let rs = replicaset("web", "default", 3);
        let mut tolerant = owned_pod("web-b", &rs, Some("pi1"), true);
        tolerant.spec.as_mut().unwrap().tolerations =
            Some(vec![k8s_openapi::api::core::v1::Toleration {
                key: Some(UNREACHABLE_TAINT.into()),
                operator: Some("Exists".into()),
                effect: Some("NoExecute".into()),
                toleration_seconds: Some(60),
                ..Default::default()
            }]);
        let plain = owned_pod("web-a", &rs, Some("pi1"), true);
        let elsewhere = owned_pod("web-c", &rs, Some("pi2"), true);
        let mut snap = snapshot(vec![]);
        let mut n = node("pi1", true);
        // Just went silent: Unknown and tainted, nothing evicted yet.
        snap.objects.insert(
            crate::api::Kind::Node,
            vec![std::sync::Arc::new(Object::Node(n.clone()))],
        );
        let actions = reconcile(&snap);
        let Some(Action::Update(Object::Node(tainted))) = actions.first() else {
            panic!("{actions:?}")
        };
        let taints = tainted.spec.as_ref().unwrap().taints.as_ref().unwrap();
        assert_eq!(taints.len(), 2, "{taints:?}");
        assert!(taints.iter().all(|t| t.key == UNREACHABLE_TAINT));

        // Unknown for 5 s with a 2 s period: the plain pod goes, the one
        // tolerating 60 s stays, the other node's stays.
        unreachable_since(&mut n, &snap, 5);
        let snap = snapshot(vec![
            Object::Node(n.clone()),
            Object::Node(node("pi2", true)),
            Object::Pod(plain),
            Object::Pod(tolerant),
            Object::Pod(elsewhere),
        ]);
        let deleted: Vec<String> = evictions(&snap)
            .into_iter()
            .map(|a| match a {
                Action::Delete { key, .. } => key.name,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(deleted, vec!["web-a".to_string()]);
    }
}
