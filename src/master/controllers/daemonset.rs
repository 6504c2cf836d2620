//! DaemonSet controller: one pod per eligible node (its labels match the
//! template's `nodeSelector`), new nodes included, pods on nodes that no
//! longer fit removed. Pods are created already bound to their node (the
//! DaemonSet is its own scheduler, as it was in Kubernetes before 1.12).
//!
//! Updates: `RollingUpdate` replaces old-revision pods while at most
//! `maxUnavailable` (number or percent of the desired count, default 1)
//! nodes lack an available pod, old unavailable ones first; `OnDelete`
//! replaces only pods the user deletes. Revisions are `ControllerRevision`s.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::revisions::{self, REVISION_LABEL};
use super::{
    Action, Snapshot, events, is_available, is_finished, is_ready, is_terminating, owner_ref,
    scaled_value, uid,
};
use crate::api::{Kind, Object};

const CONTROLLER: &str = "daemonset-controller";
pub const GENERATION_LABEL: &str = "pod-template-generation";

pub fn reconcile(snap: &Snapshot, names: &mut dyn FnMut() -> String) -> Vec<Action> {
    let mut out = Vec::new();
    let mut nodes: Vec<&Node> = snap.nodes().collect();
    nodes.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for ds in snap.daemonsets() {
        if ds.metadata.deletion_timestamp.is_some() {
            continue;
        }
        out.extend(reconcile_one(snap, ds, &nodes, names));
    }
    out
}

/// Whether the DaemonSet wants a pod on `node`.
pub fn eligible(ds: &DaemonSet, node: &Node) -> bool {
    let selector = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default();
    let labels = node.metadata.labels.clone().unwrap_or_default();
    node.metadata.deletion_timestamp.is_none()
        && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn reconcile_one(
    snap: &Snapshot,
    ds: &DaemonSet,
    nodes: &[&Node],
    names: &mut dyn FnMut() -> String,
) -> Vec<Action> {
    let mut out = Vec::new();
    let Some(spec) = &ds.spec else { return out };
    let Some(name) = ds.metadata.name.as_deref() else {
        return out;
    };
    let ds_obj = Object::DaemonSet(ds.clone());
    let update_revision = revisions::name_for(name, &spec.template);
    let mut by_node: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for p in snap.pods_of(uid(&ds.metadata)) {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(p);
    }
    let in_use: Vec<&str> = by_node
        .values()
        .flatten()
        .filter_map(|p| p.metadata.labels.as_ref()?.get(REVISION_LABEL))
        .map(String::as_str)
        .collect();
    out.extend(revisions::sync(
        snap,
        Kind::DaemonSet,
        &ds.metadata,
        &spec.template,
        spec.revision_history_limit.unwrap_or(10).max(0) as usize,
        &in_use,
    ));
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let is_new = |p: &Pod| {
        p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(REVISION_LABEL))
            == Some(&update_revision)
    };

    let wanted: Vec<&str> = nodes
        .iter()
        .filter(|n| eligible(ds, n))
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let desired = wanted.len() as i32;
    let mut deletions: Vec<&Pod> = Vec::new();
    let mut creations: Vec<&str> = Vec::new();
    let mut misscheduled = 0;
    // Per wanted node: the pod that serves it, if any.
    let mut serving: BTreeMap<&str, &Pod> = BTreeMap::new();
    for node in &wanted {
        let mut live: Vec<&Pod> = by_node
            .get(*node)
            .into_iter()
            .flatten()
            .copied()
            .filter(|p| !is_terminating(p))
            .collect();
        // A failed daemon pod is replaced.
        for p in live.iter().filter(|p| is_finished(p)) {
            deletions.push(p);
        }
        live.retain(|p| !is_finished(p));
        live.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        match live.split_first() {
            None => {
                let terminating = by_node.get(*node).is_some_and(|v| !v.is_empty());
                if !terminating {
                    creations.push(node);
                }
            }
            Some((first, extra)) => {
                serving.insert(node, first);
                deletions.extend(extra.iter().copied());
            }
        }
    }
    for (node, pods) in &by_node {
        if !wanted.contains(&node.as_str()) {
            for p in pods {
                if !is_terminating(p) {
                    misscheduled += 1;
                    deletions.push(p);
                }
            }
        }
    }

    // Rolling update within maxUnavailable.
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    if strategy.type_.as_deref() != Some("OnDelete") {
        let max_unavailable = scaled_value(
            strategy
                .rolling_update
                .as_ref()
                .and_then(|r| r.max_unavailable.as_ref())
                .or(Some(
                    &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
                )),
            desired,
            true,
        )
        .max(1);
        let unavailable = wanted
            .iter()
            .filter(|n| {
                serving
                    .get(*n)
                    .is_none_or(|p| !is_available(p, min_ready, snap.now))
            })
            .count() as i32;
        let mut budget = max_unavailable - unavailable;
        let mut old: Vec<&Pod> = serving.values().copied().filter(|p| !is_new(p)).collect();
        // Unavailable old pods cost nothing to replace.
        old.sort_by_key(|p| is_available(p, min_ready, snap.now));
        for p in old {
            if !is_available(p, min_ready, snap.now) {
                deletions.push(p);
            } else if budget > 0 {
                budget -= 1;
                deletions.push(p);
            }
        }
    }

    for node in creations {
        out.push(Action::Create(Object::Pod(new_pod(
            ds,
            node,
            &update_revision,
            &names(),
            snap,
        ))));
        out.push(events::emit(
            snap,
            &ds_obj,
            false,
            "SuccessfulCreate",
            format!("Created pod on node {node}"),
            CONTROLLER,
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for p in deletions {
        if !seen.insert(uid(&p.metadata).to_string()) {
            continue;
        }
        out.extend(super::pods::delete(p, snap.now));
        out.push(events::emit(
            snap,
            &ds_obj,
            false,
            "SuccessfulDelete",
            format!("Deleted pod: {}", p.metadata.name.as_deref().unwrap_or("")),
            CONTROLLER,
        ));
    }

    let scheduled: Vec<&Pod> = serving.values().copied().collect();
    let ready = scheduled.iter().filter(|p| is_ready(p)).count() as i32;
    let available = scheduled
        .iter()
        .filter(|p| is_available(p, min_ready, snap.now))
        .count() as i32;
    let status = DaemonSetStatus {
        desired_number_scheduled: desired,
        current_number_scheduled: scheduled.len() as i32,
        number_misscheduled: misscheduled,
        number_ready: ready,
        updated_number_scheduled: Some(scheduled.iter().filter(|p| is_new(p)).count() as i32),
        number_available: Some(available),
        number_unavailable: Some((desired - available).max(0)),
        observed_generation: ds.metadata.generation,
        collision_count: ds.status.as_ref().and_then(|s| s.collision_count),
        conditions: None,
    };
    if ds.status.as_ref() != Some(&status) {
        let mut d = ds.clone();
        d.status = Some(status);
        out.push(Action::Update(Object::DaemonSet(d)));
    }
    out
}

fn new_pod(ds: &DaemonSet, node: &str, revision: &str, suffix: &str, snap: &Snapshot) -> Pod {
    let spec = ds.spec.clone().unwrap_or_default();
    let name = ds.metadata.name.clone().unwrap_or_default();
    let tmeta = spec.template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), revision.to_string());
    labels.insert(
        GENERATION_LABEL.into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    let mut pod_spec = spec.template.spec.clone().unwrap_or_default();
    pod_spec.node_name = Some(node.to_string());
    Pod {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{suffix}")),
            namespace: ds.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner_ref(Kind::DaemonSet, &name, uid(&ds.metadata))]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some(super::time(snap.now)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::apps::v1::DaemonSetSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn ds() -> DaemonSet {
        let mut t = template("agent");
        t.spec.as_mut().unwrap().node_selector =
            Some([("kubernetes.io/arch".to_string(), "arm64".to_string())].into());
        DaemonSet {
            metadata: meta("agent", "default"),
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: labels("agent"),
                    ..Default::default()
                },
                template: t,
                ..Default::default()
            }),
            status: None,
        }
    }

    fn names() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("p{n}")
        }
    }

    #[test]
    fn one_pod_per_eligible_node_including_new_ones() {
        let mut amd = node("x86", true);
        amd.metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("kubernetes.io/arch".into(), "amd64".into());
        let snap = snapshot(vec![
            Object::DaemonSet(ds()),
            Object::Node(node("pi1", true)),
            Object::Node(node("pi2", false)),
            Object::Node(amd),
        ]);
        let actions = reconcile(&snap, &mut names());
        let nodes: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Create(Object::Pod(p)) => p.spec.as_ref()?.node_name.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(nodes, vec!["pi1", "pi2"]);
    }

    #[test]
    fn rolling_update_replaces_one_at_a_time() {
        let mut d = ds();
        let mut objects = vec![
            Object::Node(node("pi1", true)),
            Object::Node(node("pi2", true)),
        ];
        let old_rev = revisions::name_for("agent", &d.spec.as_ref().unwrap().template);
        for (i, n) in ["pi1", "pi2"].iter().enumerate() {
            let mut p = new_pod(&d, n, &old_rev, &format!("o{i}"), &snapshot(vec![]));
            p.metadata.uid = Some(format!("o{i}"));
            let ready = owned_pod("x", &replicaset("x", "default", 1), Some(n), true);
            p.status = ready.status;
            objects.push(Object::Pod(p));
        }
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("v2".into());
        objects.push(Object::DaemonSet(d));
        let actions = reconcile(&snapshot(objects), &mut names());
        let deleted = actions
            .iter()
            .filter(|a| matches!(a, Action::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some()))
            .count();
        assert_eq!(deleted, 1, "maxUnavailable 1: {actions:?}");
    }
}
