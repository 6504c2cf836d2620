//! Garbage collection: objects whose owners are gone, and objects in a
//! namespace that no longer exists, are deleted (background cascade, the
//! Kubernetes default). Pods go through the graceful path.

use std::collections::HashSet;

use super::{Action, Snapshot, rv};
use crate::api::{Kind, Object};

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let uids: HashSet<&str> = snap
        .objects
        .values()
        .flatten()
        .filter_map(|o| o.meta().uid.as_deref())
        .collect();
    let namespaces: HashSet<&str> = snap
        .namespaces()
        .filter(|n| n.metadata.deletion_timestamp.is_none())
        .filter_map(|n| n.metadata.name.as_deref())
        .collect();
    let mut out = Vec::new();
    for obj in snap.objects.values().flatten() {
        let kind = obj.kind();
        let orphaned = match &obj.meta().owner_references {
            Some(refs) if !refs.is_empty() => refs.iter().all(|r| !uids.contains(r.uid.as_str())),
            _ => false,
        };
        let homeless = kind.namespaced() && !namespaces.contains(obj.namespace());
        if !(orphaned || homeless) {
            continue;
        }
        match &**obj {
            Object::Pod(p) => out.extend(super::pods::delete(p, snap.now)),
            _ if kind == Kind::Node || kind == Kind::Namespace => {}
            other => out.push(Action::Delete {
                key: other.key(),
                resource_version: rv(other.meta()),
            }),
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
}
