//! The scheduler: a pure function from nodes and pods to bindings.
//!
//! Filters: the node is Ready and schedulable, and its labels satisfy the pod's
//! `nodeSelector` (which is how `kubernetes.io/arch` pins a pod to arm64 or
//! armv7 Pis). Scores: fewest pods of the same owner (spread a workload's
//! replicas), then fewest pods overall (least allocated), then name, so the
//! result is deterministic.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition};

use crate::api::Object;
use crate::master::controllers::{
    Action, Snapshot, controller_of, events, is_finished, is_terminating, node_ready, uid,
};

/// The component name Events from the scheduler carry.
const SCHEDULER: &str = "default-scheduler";

/// Why no node fits, in the words `kubectl describe` uses.
pub fn pick<'a>(
    nodes: &[&'a Node],
    pod: &Pod,
    load: &HashMap<String, usize>,
    spread: &HashMap<(String, String), usize>,
) -> Result<&'a str, String> {
    let selector = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let owner = controller_of(&pod.metadata)
        .map(|r| r.uid.clone())
        .unwrap_or_default();
    let (mut not_ready, mut unschedulable, mut mismatched) = (0, 0, 0);
    let mut best: Option<(usize, usize, &str)> = None;
    for node in nodes {
        let name = node.metadata.name.as_deref().unwrap_or("");
        if !node_ready(node) {
            not_ready += 1;
            continue;
        }
        if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            unschedulable += 1;
            continue;
        }
        let labels = node.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            mismatched += 1;
            continue;
        }
        let score = (
            spread
                .get(&(name.to_string(), owner.clone()))
                .copied()
                .unwrap_or(0),
            load.get(name).copied().unwrap_or(0),
            name,
        );
        if best.is_none_or(|b| score < b) {
            best = Some(score);
        }
    }
    if let Some((_, _, name)) = best {
        return Ok(name);
    }
    let mut reasons = Vec::new();
    if not_ready > 0 {
        reasons.push(format!("{not_ready} node(s) were not ready"));
    }
    if unschedulable > 0 {
        reasons.push(format!("{unschedulable} node(s) were unschedulable"));
    }
    if mismatched > 0 {
        reasons.push(format!(
            "{mismatched} node(s) didn't match Pod's node affinity/selector"
        ));
    }
    let mut msg = format!("0/{} nodes are available", nodes.len());
    if !reasons.is_empty() {
        msg.push_str(": ");
        msg.push_str(&reasons.join(", "));
    }
    msg.push('.');
    Err(msg)
}

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut nodes: Vec<&Node> = snap.nodes().collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut load: HashMap<String, usize> = HashMap::new();
    let mut spread: HashMap<(String, String), usize> = HashMap::new();
    let mut pending: BTreeMap<(Option<jiff::Timestamp>, String), &Pod> = BTreeMap::new();
    for pod in snap.pods() {
        if is_terminating(pod) || is_finished(pod) {
            continue;
        }
        match pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            Some(node) => {
                *load.entry(node.clone()).or_default() += 1;
                if let Some(r) = controller_of(&pod.metadata) {
                    *spread.entry((node, r.uid.clone())).or_default() += 1;
                }
            }
            None => {
                let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
                pending.insert((created, uid(&pod.metadata).to_string()), pod);
            }
        }
    }
    let mut out = Vec::new();
    for pod in pending.into_values() {
        let mut p = pod.clone();
        // A pod whose claims live on a node goes there (local volumes).
        let picked = match crate::master::controllers::volumes::placement(snap, pod) {
            Err(why) => Err(format!("0/{} nodes are available: {why}.", nodes.len())),
            Ok(None) => pick(&nodes, pod, &load, &spread),
            Ok(Some(n)) => {
                let there: Vec<&Node> = nodes
                    .iter()
                    .copied()
                    .filter(|x| x.metadata.name.as_deref() == Some(n.as_str()))
                    .collect();
                pick(&there, pod, &load, &spread)
            }
        };
        match picked {
            Ok(node) => {
                crate::master::controllers::volumes::annotate(snap, &mut p);
                *load.entry(node.to_string()).or_default() += 1;
                if let Some(r) = controller_of(&pod.metadata) {
                    *spread.entry((node.to_string(), r.uid.clone())).or_default() += 1;
                }
                p.spec.get_or_insert_with(Default::default).node_name = Some(node.to_string());
                set_scheduled(&mut p, snap, "True", None, None);
                let msg = format!(
                    "Successfully assigned {}/{} to {node}",
                    p.metadata.namespace.as_deref().unwrap_or(""),
                    p.metadata.name.as_deref().unwrap_or("")
                );
                let pod_obj = Object::Pod(p);
                let event = events::emit(snap, &pod_obj, false, "Scheduled", msg, SCHEDULER);
                out.push(Action::Update(pod_obj));
                out.push(event);
            }
            Err(message) => {
                if set_scheduled(
                    &mut p,
                    snap,
                    "False",
                    Some("Unschedulable"),
                    Some(message.clone()),
                ) {
                    let pod_obj = Object::Pod(p);
                    let event =
                        events::emit(snap, &pod_obj, true, "FailedScheduling", message, SCHEDULER);
                    out.push(Action::Update(pod_obj));
                    out.push(event);
                }
            }
        }
    }
    out
}

/// Sets the PodScheduled condition; returns whether anything changed.
fn set_scheduled(
    pod: &mut Pod,
    snap: &Snapshot,
    status: &str,
    reason: Option<&str>,
    message: Option<String>,
) -> bool {
    let st = pod.status.get_or_insert_with(Default::default);
    let conds = st.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conds.iter().find(|c| c.type_ == "PodScheduled")
        && c.status == status
        && c.reason.as_deref() == reason
        && c.message == message
    {
        return false;
    }
    conds.retain(|c| c.type_ != "PodScheduled");
    conds.push(PodCondition {
        type_: "PodScheduled".into(),
        status: status.into(),
        reason: reason.map(String::from),
        message,
        last_transition_time: Some(crate::master::controllers::time(snap.now)),
        ..Default::default()
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;

    fn bindings(actions: &[Action]) -> Vec<(String, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Update(Object::Pod(p)) => Some((
                    p.metadata.name.clone()?,
                    p.spec.as_ref()?.node_name.clone()?,
                )),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn spreads_replicas_over_ready_nodes() {
        let rs = replicaset("web-abc", "default", 6);
        let mut objects = vec![
            Object::Node(node("a", true)),
            Object::Node(node("b", true)),
            Object::Node(node("c", true)),
            Object::Node(node("down", false)),
        ];
        for i in 0..6 {
            objects.push(Object::Pod(owned_pod(&format!("p{i}"), &rs, None, false)));
        }
        let actions = reconcile(&snapshot(objects));
        let b = bindings(&actions);
        assert_eq!(b.len(), 6);
        for n in ["a", "b", "c"] {
            assert_eq!(b.iter().filter(|(_, node)| node == n).count(), 2, "{b:?}");
        }
        assert!(!b.iter().any(|(_, node)| node == "down"));
    }

    #[test]
    fn node_selector_on_arch_and_unschedulable_reason() {
        let rs = replicaset("web-abc", "default", 1);
        let mut pod = owned_pod("p", &rs, None, false);
        pod.spec.as_mut().unwrap().node_selector = Some(BTreeMap::from([(
            "kubernetes.io/arch".to_string(),
            "arm".to_string(),
        )]));
        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Node(node("b", false)),
            Object::Pod(pod.clone()),
        ]));
        assert_eq!(bindings(&actions), vec![]);
        let Some(Action::Update(Object::Pod(p))) = actions.first() else {
            panic!("{actions:?}")
        };
        let cond = p
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "PodScheduled")
            .unwrap();
        assert_eq!(
            cond.message.as_deref(),
            Some(
                "0/2 nodes are available: 1 node(s) were not ready, 1 node(s) didn't match Pod's node affinity/selector."
            )
        );
        // Same situation again: nothing to write.
        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Node(node("b", false)),
            Object::Pod(p.clone()),
        ]));
        assert_eq!(actions, vec![]);

        let mut armv7 = node("pi", true);
        armv7
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("kubernetes.io/arch".into(), "arm".into());
        let actions = reconcile(&snapshot(vec![
            Object::Node(node("a", true)),
            Object::Node(armv7),
            Object::Pod(pod),
        ]));
        assert_eq!(
            bindings(&actions),
            vec![("p".to_string(), "pi".to_string())]
        );
    }
}
