//! ReplicaSet controller: keeps `spec.replicas` pods of the template alive and
//! reports how many are ready.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    Action, Snapshot, controller_of, events, is_finished, is_ready, is_terminating, owner_ref, uid,
};
use crate::api::{Kind, Object};

const CONTROLLER: &str = "replicaset-controller";

/// Most pods one ReplicaSet creates or deletes in one pass (Kubernetes' burst
/// is 500); the next pass does the rest.
const BURST: usize = 500;

pub fn reconcile(snap: &Snapshot, names: &mut dyn FnMut() -> String) -> Vec<Action> {
    let mut by_owner: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for pod in snap.pods() {
        if let Some(r) = controller_of(&pod.metadata).filter(|r| r.kind == "ReplicaSet") {
            by_owner.entry(r.uid.as_str()).or_default().push(pod);
        }
    }
    let mut out = Vec::new();
    for rs in snap.replicasets() {
        if rs.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let owned = by_owner.get(uid(&rs.metadata)).cloned().unwrap_or_default();
        out.extend(reconcile_one(snap, rs, &owned, names));
    }
    out
}

fn reconcile_one(
    snap: &Snapshot,
    rs: &ReplicaSet,
    owned: &[&Pod],
    names: &mut dyn FnMut() -> String,
) -> Vec<Action> {
    let mut out = Vec::new();
    let desired = rs
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1)
        .max(0) as usize;
    let mut active: Vec<&Pod> = owned
        .iter()
        .copied()
        .filter(|p| !is_terminating(p) && !is_finished(p))
        .collect();
    if active.len() < desired {
        for _ in 0..(desired - active.len()).min(BURST) {
            if let Some(pod) = new_pod(rs, &names()) {
                let msg = format!(
                    "Created pod: {}",
                    pod.metadata.name.as_deref().unwrap_or("")
                );
                out.push(Action::Create(Object::Pod(pod)));
                out.push(events::emit(
                    snap,
                    &Object::ReplicaSet(rs.clone()),
                    false,
                    "SuccessfulCreate",
                    msg,
                    CONTROLLER,
                ));
            }
        }
    } else if active.len() > desired {
        // Delete the pods that matter least first, as Kubernetes ranks them:
        // unscheduled, then not running, then not ready, then the youngest.
        active.sort_by_key(|p| {
            let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            let running = super::pod_phase(p) == "Running";
            let created = p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            (scheduled, running, is_ready(p), std::cmp::Reverse(created))
        });
        for pod in active.iter().take((active.len() - desired).min(BURST)) {
            out.extend(super::pods::delete(pod, snap.now));
            let msg = format!(
                "Deleted pod: {}",
                pod.metadata.name.as_deref().unwrap_or("")
            );
            out.push(events::emit(
                snap,
                &Object::ReplicaSet(rs.clone()),
                false,
                "SuccessfulDelete",
                msg,
                CONTROLLER,
            ));
        }
    }

    let counted: Vec<&&Pod> = owned
        .iter()
        .filter(|p| !is_terminating(p) && !is_finished(p))
        .collect();
    let ready = counted.iter().filter(|p| is_ready(p)).count() as i32;
    let status = ReplicaSetStatus {
        replicas: counted.len() as i32,
        fully_labeled_replicas: Some(counted.len() as i32),
        ready_replicas: Some(ready),
        available_replicas: Some(ready),
        observed_generation: rs.metadata.generation,
        ..Default::default()
    };
    if rs.status.as_ref() != Some(&status) {
        let mut updated = rs.clone();
        updated.status = Some(status);
        out.push(Action::Update(Object::ReplicaSet(updated)));
    }
    out
}

/// A pod from the ReplicaSet's template, owned by it.
pub fn new_pod(rs: &ReplicaSet, suffix: &str) -> Option<Pod> {
    let spec = rs.spec.as_ref()?;
    let template = spec.template.as_ref()?;
    let rs_name = rs.metadata.name.as_deref()?;
    let tmeta = template.metadata.clone().unwrap_or_default();
    Some(Pod {
        metadata: ObjectMeta {
            name: Some(format!("{rs_name}-{suffix}")),
            namespace: rs.metadata.namespace.clone(),
            labels: tmeta.labels,
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner_ref(
                Kind::ReplicaSet,
                rs_name,
                uid(&rs.metadata),
            )]),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    })
}

/// Five characters from Kubernetes' alphabet for generated names (no vowels,
/// so no words, and no look-alike characters).
pub fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;

    #[test]
    fn creates_missing_pods_and_reports_status() {
        let rs = replicaset("web-abc", "default", 3);
        let snap = snapshot(vec![Object::ReplicaSet(rs.clone())]);
        let mut n = 0;
        let actions = reconcile(&snap, &mut || {
            n += 1;
            format!("p{n}")
        });
        let created: Vec<_> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Create(Object::Pod(p)) => Some(p),
                _ => None,
            })
            .collect();
        assert_eq!(created.len(), 3);
        assert_eq!(created[0].metadata.name.as_deref(), Some("web-abc-p1"));
        let owner = controller_of(&created[0].metadata).unwrap();
        assert_eq!(owner.uid, "uid-web-abc");
        assert_eq!(
            created[0].metadata.labels,
            rs.spec.unwrap().template.unwrap().metadata.unwrap().labels
        );
    }

    #[test]
    fn scales_down_unscheduled_first_and_settles() {
        let mut rs = replicaset("web-abc", "default", 1);
        let a = owned_pod("web-abc-a", &rs, Some("n1"), true);
        let b = owned_pod("web-abc-b", &rs, None, false);
        rs.status = None;
        let snap = snapshot(vec![
            Object::ReplicaSet(rs.clone()),
            Object::Pod(a),
            Object::Pod(b),
        ]);
        let actions = reconcile(&snap, &mut || unreachable!("no pod to create"));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Delete { key, .. } if key.name == "web-abc-b"))
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Delete { key, .. } if key.name == "web-abc-a"))
        );
    }

    #[test]
    fn steady_state_produces_nothing() {
        let mut rs = replicaset("web-abc", "default", 1);
        let a = owned_pod("web-abc-a", &rs, Some("n1"), true);
        rs.status = Some(ReplicaSetStatus {
            replicas: 1,
            fully_labeled_replicas: Some(1),
            ready_replicas: Some(1),
            available_replicas: Some(1),
            observed_generation: rs.metadata.generation,
            ..Default::default()
        });
        let snap = snapshot(vec![Object::ReplicaSet(rs), Object::Pod(a)]);
        assert_eq!(reconcile(&snap, &mut || unreachable!()), vec![]);
    }
}
