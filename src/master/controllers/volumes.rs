//! The local-path provisioner, master side: PersistentVolumeClaims bound to
//! a directory on one node.
//!
//! The contract with the worker (which creates and mounts the directory):
//!
//! - A claim binds when the first pod using it is scheduled
//!   (`WaitForFirstConsumer`): the claim gets `spec.volumeName: pvc-<claim
//!   uid>`, the annotation `volume.kubernetes.io/selected-node: <node>`,
//!   status `Bound` with its requested capacity and access modes.
//! - The volume is the directory `<data dir>/volumes/<claim uid>` on that
//!   node, kept when pods come and go.
//! - A pod using claims carries, from the moment it is bound to a node, one
//!   annotation per claim volume: `volumes.bramble.io/<volume name>: <claim
//!   uid>`, so the worker knows the directory without reading claims.
//! - A pod using a claim bound to a node is only scheduled to that node (what
//!   a local PersistentVolume's node affinity does in Kubernetes); a pod whose
//!   claim does not exist is not scheduled.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, PersistentVolumeClaimStatus, Pod};

use super::{Action, Snapshot, is_finished, is_terminating};
use crate::api::Object;

pub const SELECTED_NODE_ANNOTATION: &str = "volume.kubernetes.io/selected-node";
/// Prefix of the pod annotations naming each claim volume's claim uid.
pub const POD_CLAIM_ANNOTATION_PREFIX: &str = "volumes.bramble.io/";
pub const STORAGE_CLASS: &str = "local-path";

/// The claims a pod's volumes name: (volume name, claim name).
pub fn claims_of(pod: &Pod) -> Vec<(String, String)> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            let c = v.persistent_volume_claim.as_ref()?;
            Some((v.name.clone(), c.claim_name.clone()))
        })
        .collect()
}

fn claim<'a>(snap: &'a Snapshot, ns: &str, name: &str) -> Option<&'a PersistentVolumeClaim> {
    snap.claims().find(|c| {
        c.metadata.name.as_deref() == Some(name) && c.metadata.namespace.as_deref() == Some(ns)
    })
}

/// The node a claim lives on, once bound.
pub fn claim_node(c: &PersistentVolumeClaim) -> Option<&str> {
    c.metadata
        .annotations
        .as_ref()?
        .get(SELECTED_NODE_ANNOTATION)
        .map(String::as_str)
        .filter(|_| c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound"))
}

/// Where the scheduler may put `pod` as far as its claims go: `Ok(None)`
/// anywhere, `Ok(Some(node))` only there, `Err` nowhere yet (the message
/// says why, as the scheduler's event does).
pub fn placement(snap: &Snapshot, pod: &Pod) -> Result<Option<String>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut node: Option<String> = None;
    for (_, cname) in claims_of(pod) {
        let Some(c) = claim(snap, ns, &cname) else {
            return Err(format!("persistentvolumeclaim \"{cname}\" not found"));
        };
        if c.metadata.deletion_timestamp.is_some() {
            return Err(format!(
                "persistentvolumeclaim \"{cname}\" is being deleted"
            ));
        }
        if let Some(n) = claim_node(c) {
            match &node {
                Some(other) if other != n => {
                    return Err(
                        "pod has unbound immediate PersistentVolumeClaims on different nodes"
                            .into(),
                    );
                }
                _ => node = Some(n.to_string()),
            }
        }
    }
    Ok(node)
}

/// Writes the claim-uid annotations on a pod being bound.
pub fn annotate(snap: &Snapshot, pod: &mut Pod) {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    for (vol, cname) in claims_of(pod) {
        if let Some(uid) = claim(snap, &ns, &cname).and_then(|c| c.metadata.uid.clone()) {
            pod.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(format!("{POD_CLAIM_ANNOTATION_PREFIX}{vol}"), uid);
        }
    }
}

/// Binds pending claims to the node of the first scheduled pod using them.
pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut wanted: BTreeMap<(String, String), String> = BTreeMap::new();
    for pod in snap.pods() {
        if is_terminating(pod) || is_finished(pod) {
            continue;
        }
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        for (_, cname) in claims_of(pod) {
            wanted
                .entry((ns.clone(), cname))
                .or_insert_with(|| node.clone());
        }
    }
    let mut out = Vec::new();
    for c in snap.claims() {
        if c.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let key = (
            c.metadata.namespace.clone().unwrap_or_default(),
            c.metadata.name.clone().unwrap_or_default(),
        );
        let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
        if bound {
            continue;
        }
        let mut c2 = c.clone();
        let status = c2
            .status
            .get_or_insert_with(PersistentVolumeClaimStatus::default);
        match wanted.get(&key) {
            Some(node) => {
                let uid = c.metadata.uid.clone().unwrap_or_default();
                c2.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(SELECTED_NODE_ANNOTATION.into(), node.clone());
                let spec = c2.spec.get_or_insert_with(Default::default);
                spec.volume_name = Some(format!("pvc-{uid}"));
                spec.storage_class_name
                    .get_or_insert_with(|| STORAGE_CLASS.into());
                status.phase = Some("Bound".into());
                status.access_modes = spec.access_modes.clone();
                status.capacity = spec
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.clone())
                    .map(|r| r.into_iter().filter(|(k, _)| k == "storage").collect());
            }
            None => status.phase = Some("Pending".into()),
        }
        if c2 != *c {
            out.push(Action::Update(Object::PersistentVolumeClaim(c2)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume};

    fn pvc(name: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: meta(name, "default"),
            spec: Some(Default::default()),
            status: None,
        }
    }

    fn pod_with_claim(node: Option<&str>) -> Pod {
        let rs = replicaset("db", "default", 1);
        let mut p = owned_pod("db-0", &rs, node, true);
        p.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: "data-db-0".into(),
                read_only: None,
            }),
            ..Default::default()
        }]);
        p
    }

    #[test]
    fn claim_binds_to_the_first_pods_node_and_then_pins_it() {
        let pod = pod_with_claim(None);
        let snap = snapshot(vec![Object::Pod(pod.clone())]);
        assert!(placement(&snap, &pod).unwrap_err().contains("not found"));
        let snap = snapshot(vec![
            Object::Pod(pod.clone()),
            Object::PersistentVolumeClaim(pvc("data-db-0")),
        ]);
        assert_eq!(placement(&snap, &pod), Ok(None));
        let mut annotated = pod.clone();
        annotate(&snap, &mut annotated);
        assert_eq!(
            annotated.metadata.annotations.as_ref().unwrap()["volumes.bramble.io/data"],
            "uid-data-db-0"
        );
        // Bound on n2: the claim follows.
        let bound = pod_with_claim(Some("n2"));
        let snap = snapshot(vec![
            Object::Pod(bound),
            Object::PersistentVolumeClaim(pvc("data-db-0")),
        ]);
        let actions = reconcile(&snap);
        let Some(Action::Update(Object::PersistentVolumeClaim(c))) = actions.first() else {
            panic!("{actions:?}")
        };
        assert_eq!(claim_node(c), Some("n2"));
        assert_eq!(
            c.spec.as_ref().unwrap().volume_name.as_deref(),
            Some("pvc-uid-data-db-0")
        );
        // A new pod for the claim may only go to n2.
        let snap = snapshot(vec![Object::PersistentVolumeClaim(c.clone())]);
        assert_eq!(placement(&snap, &pod), Ok(Some("n2".into())));
    }
}
