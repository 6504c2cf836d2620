//! Namespace lifecycle: a deleted namespace is `Terminating` (it keeps its
//! `deletionTimestamp`) while garbage collection deletes everything in it;
//! once nothing is left, the namespace itself goes.

use std::collections::HashSet;

use super::{Action, Snapshot, rv};
use crate::api::{Kind, Object};

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let terminating: Vec<&crate::api::Namespace> = snap
        .namespaces()
        .filter(|n| n.metadata.deletion_timestamp.is_some())
        .collect();
    if terminating.is_empty() {
        return Vec::new();
    }
    let occupied: HashSet<&str> = snap
        .objects
        .iter()
        .filter(|(k, _)| k.namespaced())
        .flat_map(|(_, v)| v.iter())
        .map(|o| o.namespace())
        .collect();
    let mut out = Vec::new();
    for ns in terminating {
        let name = ns.metadata.name.as_deref().unwrap_or("");
        if occupied.contains(name) {
            if ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating") {
                let mut n = ns.clone();
                n.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
                out.push(Action::Update(Object::Namespace(n)));
            }
        } else {
            out.push(Action::Delete {
                key: crate::api::ObjectKey::new(Kind::Namespace, "", name),
                resource_version: rv(&ns.metadata),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;

    #[test]
    fn a_terminating_namespace_goes_once_empty() {
        let mut snap = snapshot(vec![Object::ConfigMap(crate::api::ConfigMap {
            metadata: meta("c", "default"),
            ..Default::default()
        })]);
        let mut ns = snap.namespaces().next().unwrap().clone();
        ns.metadata.deletion_timestamp = Some(super::super::time(snap.now));
        snap.objects.insert(
            Kind::Namespace,
            vec![std::sync::Arc::new(Object::Namespace(ns.clone()))],
        );
        let actions = reconcile(&snap);
        assert!(
            matches!(&actions[..], [Action::Update(Object::Namespace(n))]
            if n.status.as_ref().unwrap().phase.as_deref() == Some("Terminating"))
        );
        snap.objects.remove(&Kind::ConfigMap);
        assert!(
            matches!(&reconcile(&snap)[..], [Action::Delete { key, .. }] if key.name == "default")
        );
    }
}
