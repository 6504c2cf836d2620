//! Garbage collection through ownerReferences, and the cascading deletion
//! policies of Kubernetes:
//!
//! - **Background** (the default): the owner goes at once; objects all of
//!   whose owners are gone are deleted here afterwards.
//! - **Foreground**: the owner stays, with a `deletionTimestamp` and the
//!   `foregroundDeletion` finalizer, until its dependents are gone; they are
//!   deleted here (in foreground themselves when they own something), then
//!   the owner.
//! - **Orphan**: done by the `delete` command in one transaction (dependents
//!   lose their reference to the owner, the owner goes).
//!
//! Objects in a namespace that is gone or terminating are deleted too. Pods
//! always go through the graceful path.

use std::collections::{HashMap, HashSet};

use super::{Action, Snapshot, rv};
use crate::api::{Kind, Object};

pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

/// Whether `obj` is being deleted in the foreground.
pub fn in_foreground(obj: &Object) -> bool {
    obj.meta().deletion_timestamp.is_some()
        && obj
            .meta()
            .finalizers
            .iter()
            .flatten()
            .any(|f| f == FOREGROUND_FINALIZER)
}

/// The action that deletes `obj`: gracefully for pods, in the foreground for
/// owners when `foreground`, else at once.
pub fn delete(
    obj: &Object,
    foreground: bool,
    has_dependents: bool,
    now: jiff::Timestamp,
) -> Option<Action> {
    match obj {
        Object::Pod(p) => super::pods::delete(p, now),
        _ if obj.meta().deletion_timestamp.is_some() => None,
        _ if foreground && has_dependents => {
            let mut o = obj.clone();
            let m = o.meta_mut();
            m.deletion_timestamp = Some(super::time(now));
            m.deletion_grace_period_seconds = Some(0);
            let f = m.finalizers.get_or_insert_with(Vec::new);
            if !f.iter().any(|x| x == FOREGROUND_FINALIZER) {
                f.push(FOREGROUND_FINALIZER.into());
            }
            Some(Action::Update(o))
        }
        _ => Some(Action::Delete {
            key: obj.key(),
            resource_version: rv(obj.meta()),
        }),
    }
}

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut by_uid: HashMap<&str, &Object> = HashMap::new();
    let mut dependents: HashMap<&str, Vec<&Object>> = HashMap::new();
    for obj in snap.objects.values().flatten() {
        if let Some(u) = obj.meta().uid.as_deref() {
            by_uid.insert(u, obj);
        }
        for r in obj.meta().owner_references.iter().flatten() {
            dependents.entry(r.uid.as_str()).or_default().push(obj);
        }
    }
    let namespaces: HashSet<&str> = snap
        .namespaces()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let mut out = Vec::new();
    let mut done: HashSet<String> = HashSet::new();
    for obj in snap.objects.values().flatten() {
        let kind = obj.kind();
        if kind == Kind::Node || kind == Kind::Namespace {
            continue;
        }
        let uid = obj.meta().uid.as_deref().unwrap_or("");
        let deps = dependents.get(uid).map(Vec::as_slice).unwrap_or_default();
        if in_foreground(obj) {
            // Dependents first; the owner once none is left.
            if deps.is_empty() {
                out.push(Action::Delete {
                    key: obj.key(),
                    resource_version: rv(obj.meta()),
                });
            } else {
                for d in deps {
                    let d_uid = d.meta().uid.clone().unwrap_or_default();
                    let d_has = dependents
                        .get(d_uid.as_str())
                        .is_some_and(|v| !v.is_empty());
                    if done.insert(d_uid)
                        && let Some(a) = delete(d, true, d_has, snap.now)
                    {
                        out.push(a);
                    }
                }
            }
            continue;
        }
        let orphaned = match &obj.meta().owner_references {
            Some(refs) if !refs.is_empty() => {
                refs.iter().all(|r| !by_uid.contains_key(r.uid.as_str()))
            }
            _ => false,
        };
        let homeless = kind.namespaced() && !namespaces.contains(obj.namespace());
        if (orphaned || homeless) && done.insert(uid.to_string()) {
            out.extend(delete(obj, false, !deps.is_empty(), snap.now));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;

    #[test]
    fn orphans_and_homeless_objects_are_collected() {
        let rs = replicaset("web-abc", "default", 1);
        let orphan_pod = owned_pod("web-abc-x", &rs, Some("n1"), true);
        let mut lost = replicaset("lost", "nowhere", 1);
        lost.metadata.owner_references = None;
        let snap = snapshot(vec![Object::Pod(orphan_pod), Object::ReplicaSet(lost)]);
        let actions = reconcile(&snap);
        assert_eq!(actions.len(), 2, "{actions:?}");
        // The bound pod is deleted gracefully, the ReplicaSet at once.
        assert!(actions.iter().any(|a| matches!(a, Action::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some())));
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Delete { key, .. } if key.name == "lost"))
        );
    }

    #[test]
    fn owned_objects_with_live_owners_stay() {
        let rs = replicaset("web-abc", "default", 1);
        let pod = owned_pod("web-abc-x", &rs, Some("n1"), true);
        let snap = snapshot(vec![Object::ReplicaSet(rs), Object::Pod(pod)]);
        assert_eq!(reconcile(&snap), vec![]);
    }

    #[test]
    fn foreground_deletes_dependents_first_then_the_owner() {
        let d = deployment("web", "default", 1);
        let mut rs = replicaset("web-abc", "default", 1);
        rs.metadata.owner_references = Some(vec![crate::master::controllers::owner_ref(
            Kind::Deployment,
            "web",
            "uid-web",
        )]);
        let pod = owned_pod("web-abc-x", &rs, Some("n1"), true);
        let snap0 = snapshot(vec![]);
        let Some(Action::Update(owner)) = delete(&Object::Deployment(d), true, true, snap0.now)
        else {
            panic!()
        };
        assert!(in_foreground(&owner));
        let snap = snapshot(vec![
            owner.clone(),
            Object::ReplicaSet(rs.clone()),
            Object::Pod(pod),
        ]);
        let actions = reconcile(&snap);
        // The ReplicaSet (which owns a pod) goes in the foreground too; the Deployment waits.
        assert!(
            actions.iter().any(
                |a| matches!(a, Action::Update(o) if o.name() == "web-abc" && in_foreground(o))
            ),
            "{actions:?}"
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Delete { key, .. } if key.name == "web"))
        );
        let snap = snapshot(vec![owner]);
        assert!(matches!(&reconcile(&snap)[..], [Action::Delete { key, .. }] if key.name == "web"));
    }
}
