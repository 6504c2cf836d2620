//! ReplicaSet controller: keeps `spec.replicas` pods of the template alive and
//! reports how many are ready and available (ready for `minReadySeconds`).
//! It adopts orphan pods its selector matches (`matchLabels` and
//! `matchExpressions`) and releases owned pods it no longer matches.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{
    Action, Snapshot, adoption, controller_of, events, is_available, is_finished, is_ready,
    is_terminating, owner_ref, uid,
};
use crate::api::selector;
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
    let mut claimed = std::collections::HashSet::new();
    let no_labels = BTreeMap::new();
    for rs in snap.replicasets() {
        if rs.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(spec) = &rs.spec else { continue };
        let mut owned = by_owner.get(uid(&rs.metadata)).cloned().unwrap_or_default();
        // Owned pods the selector no longer matches are let go (and the
        // ReplicaSet makes up for them); matching orphans are taken in.
        let (keep, gone): (Vec<&Pod>, Vec<&Pod>) = owned.into_iter().partition(|p| {
            selector::matches(
                &spec.selector,
                p.metadata.labels.as_ref().unwrap_or(&no_labels),
            )
        });
        owned = keep;
        for p in gone {
            let mut released = p.clone();
            adoption::release(&mut released.metadata, uid(&rs.metadata));
            out.push(Action::Update(Object::Pod(released)));
        }
        let orphans = adoption::orphans(
            snap.pods().filter(|p| !is_finished(p)),
            rs.metadata.namespace.as_deref(),
            &spec.selector,
            |p| &p.metadata,
            &mut claimed,
        );
        for p in orphans {
            let mut adopted = p.clone();
            adoption::adopt(&mut adopted.metadata, Kind::ReplicaSet, &rs.metadata);
            out.push(Action::Update(Object::Pod(adopted)));
            owned.push(p);
        }
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
    let min_ready = rs
        .spec
        .as_ref()
        .and_then(|s| s.min_ready_seconds)
        .unwrap_or(0);
    let available = counted
        .iter()
        .filter(|p| is_available(p, min_ready, snap.now))
        .count() as i32;
    let status = ReplicaSetStatus {
        replicas: counted.len() as i32,
        fully_labeled_replicas: Some(counted.len() as i32),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
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
    fn adopts_matching_orphans_and_releases_mismatches() {
        let rs = replicaset("web-abc", "default", 2);
        let mut orphan = owned_pod("stray", &rs, Some("n1"), true);
        orphan.metadata.owner_references = None;
        let mut other = owned_pod("other", &rs, Some("n1"), true);
        other.metadata.owner_references = None;
        other.metadata.labels = labels("db");
        let mut relabelled = owned_pod("web-abc-r", &rs, Some("n1"), true);
        relabelled.metadata.labels = labels("db");
        let snap = snapshot(vec![
            Object::ReplicaSet(rs.clone()),
            Object::Pod(orphan),
            Object::Pod(other),
            Object::Pod(relabelled),
        ]);
        let mut n = 0;
        let actions = reconcile(&snap, &mut || {
            n += 1;
            format!("p{n}")
        });
        let adopted = actions.iter().any(|a| {
            matches!(a, Action::Update(Object::Pod(p))
            if p.metadata.name.as_deref() == Some("stray")
            && controller_of(&p.metadata).is_some_and(|r| r.uid == "uid-web-abc"))
        });
        assert!(adopted, "{actions:?}");
        let released = actions.iter().any(|a| matches!(a, Action::Update(Object::Pod(p))
            if p.metadata.name.as_deref() == Some("web-abc-r") && p.metadata.owner_references.is_none()));
        assert!(released, "{actions:?}");
        assert!(!actions.iter().any(|a| matches!(a, Action::Update(Object::Pod(p)) if p.metadata.name.as_deref() == Some("other"))));
        // The adopted pod counts: one more is created, not two.
        let created = actions
            .iter()
            .filter(|a| matches!(a, Action::Create(Object::Pod(_))))
            .count();
        assert_eq!(created, 1);
    }

    #[test]
    fn match_expressions_select() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let mut rs = replicaset("web-abc", "default", 1);
        rs.spec.as_mut().unwrap().selector =
            k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![LabelSelectorRequirement {
                    key: "app".into(),
                    operator: "In".into(),
                    values: Some(vec!["web".into(), "www".into()]),
                }]),
            };
        let mut orphan = owned_pod("stray", &rs, Some("n1"), true);
        orphan.metadata.owner_references = None;
        let snap = snapshot(vec![Object::ReplicaSet(rs), Object::Pod(orphan)]);
        let actions = reconcile(&snap, &mut || unreachable!("the orphan is enough"));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Update(Object::Pod(_))))
        );
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut rs = replicaset("web-abc", "default", 1);
        rs.spec.as_mut().unwrap().min_ready_seconds = Some(30);
        let mut a = owned_pod("web-abc-a", &rs, Some("n1"), true);
        let snap0 = snapshot(vec![]);
        a.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(super::super::time(
                snap0
                    .now
                    .checked_sub(jiff::SignedDuration::from_secs(10))
                    .unwrap(),
            ));
        let snap = snapshot(vec![Object::ReplicaSet(rs), Object::Pod(a)]);
        let actions = reconcile(&snap, &mut || unreachable!());
        let Some(Action::Update(Object::ReplicaSet(r))) = actions.first() else {
            panic!("{actions:?}")
        };
        let st = r.status.as_ref().unwrap();
        assert_eq!(
            (st.ready_replicas, st.available_replicas),
            (Some(1), Some(0))
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
