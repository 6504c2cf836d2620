//! Deployment controller: one ReplicaSet per pod template (named by the
//! template's hash), scaled to the Deployment's replicas; ReplicaSets of older
//! templates scaled to zero. Rolling updates with surge and unavailability
//! limits come later; today a new template replaces the old one's pods at once.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{Action, Snapshot, controller_of, events, owner_ref, uid};
use crate::api::{Kind, Object};

pub const HASH_LABEL: &str = "pod-template-hash";
const CONTROLLER: &str = "deployment-controller";
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut by_owner: BTreeMap<&str, Vec<&ReplicaSet>> = BTreeMap::new();
    for rs in snap.replicasets() {
        if let Some(r) = controller_of(&rs.metadata).filter(|r| r.kind == "Deployment") {
            by_owner.entry(r.uid.as_str()).or_default().push(rs);
        }
    }
    let mut out = Vec::new();
    for d in snap.deployments() {
        if d.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let owned = by_owner.get(uid(&d.metadata)).cloned().unwrap_or_default();
        out.extend(reconcile_one(snap, d, &owned));
    }
    out
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn reconcile_one(snap: &Snapshot, d: &Deployment, owned: &[&ReplicaSet]) -> Vec<Action> {
    let mut out = Vec::new();
    let Some(spec) = d.spec.as_ref() else {
        return out;
    };
    let Some(name) = d.metadata.name.as_deref() else {
        return out;
    };
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let paused = spec.paused == Some(true);
    let hash = pod_template_hash(&spec.template);
    let current = owned
        .iter()
        .copied()
        .find(|rs| rs.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash));
    let max_revision = owned.iter().map(|rs| revision(rs)).max().unwrap_or(0);

    let new_revision;
    match current {
        None if !paused => {
            new_revision = max_revision + 1;
            out.push(Action::Create(Object::ReplicaSet(new_replicaset(
                d,
                name,
                &hash,
                replicas,
                new_revision,
            ))));
            let msg = format!("Scaled up replica set {name}-{hash} from 0 to {replicas}");
            out.push(events::emit(
                snap,
                &Object::Deployment(d.clone()),
                false,
                "ScalingReplicaSet",
                msg,
                CONTROLLER,
            ));
        }
        None => new_revision = max_revision,
        Some(rs) => {
            new_revision = revision(rs);
            let have = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            if have != replicas && !paused {
                let direction = if replicas > have { "up" } else { "down" };
                let msg = format!(
                    "Scaled {direction} replica set {} from {have} to {replicas}",
                    rs.metadata.name.as_deref().unwrap_or("")
                );
                let mut rs = rs.clone();
                if let Some(s) = rs.spec.as_mut() {
                    s.replicas = Some(replicas);
                }
                out.push(Action::Update(Object::ReplicaSet(rs)));
                out.push(events::emit(
                    snap,
                    &Object::Deployment(d.clone()),
                    false,
                    "ScalingReplicaSet",
                    msg,
                    CONTROLLER,
                ));
            }
        }
    }
    if !paused {
        for old in owned
            .iter()
            .filter(|rs| current.is_none_or(|c| c.metadata.uid != rs.metadata.uid))
        {
            if old.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) != 0 {
                let mut rs = (*old).clone();
                if let Some(s) = rs.spec.as_mut() {
                    s.replicas = Some(0);
                }
                out.push(Action::Update(Object::ReplicaSet(rs)));
            }
        }
    }

    // Status from what the ReplicaSets report.
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| owned.iter().map(|rs| f(rs)).sum::<i32>();
    let total = sum(&|rs| rs.status.as_ref().map_or(0, |s| s.replicas));
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let available = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0)
    });
    let updated = current
        .and_then(|rs| rs.status.as_ref())
        .map_or(0, |s| s.replicas);
    let complete =
        current.is_some() && updated == replicas && total == replicas && available == replicas;
    let old = d.status.clone().unwrap_or_default();
    let conditions = vec![
        condition(
            &old,
            snap,
            "Available",
            available >= replicas,
            if available >= replicas {
                (
                    "MinimumReplicasAvailable",
                    "Deployment has minimum availability.".to_string(),
                )
            } else {
                (
                    "MinimumReplicasUnavailable",
                    "Deployment does not have minimum availability.".to_string(),
                )
            },
        ),
        condition(
            &old,
            snap,
            "Progressing",
            true,
            if complete {
                (
                    "NewReplicaSetAvailable",
                    format!("ReplicaSet \"{name}-{hash}\" has successfully progressed."),
                )
            } else {
                (
                    "ReplicaSetUpdated",
                    format!("ReplicaSet \"{name}-{hash}\" is progressing."),
                )
            },
        ),
    ];
    let status = DeploymentStatus {
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((replicas - available).max(0)),
        observed_generation: d.metadata.generation,
        conditions: Some(conditions),
        ..Default::default()
    };
    let want_rev = new_revision.to_string();
    let rev_ok = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        == Some(&want_rev);
    if d.status.as_ref() != Some(&status) || (!rev_ok && new_revision > 0) {
        let mut d = d.clone();
        d.status = Some(status);
        if new_revision > 0 {
            d.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(REVISION_ANNOTATION.into(), want_rev);
        }
        out.push(Action::Update(Object::Deployment(d)));
    }
    out
}

/// A condition, keeping the old timestamps unless its status or reason changed
/// (otherwise every pass would rewrite the Deployment).
fn condition(
    old: &DeploymentStatus,
    snap: &Snapshot,
    type_: &str,
    ok: bool,
    (reason, message): (&str, String),
) -> DeploymentCondition {
    let status = if ok { "True" } else { "False" };
    let prev = old.conditions.iter().flatten().find(|c| c.type_ == type_);
    let now = super::time(snap.now);
    let (transition, update) = match prev {
        Some(p) if p.status == status && p.reason.as_deref() == Some(reason) => {
            (p.last_transition_time.clone(), p.last_update_time.clone())
        }
        Some(p) if p.status == status => (p.last_transition_time.clone(), Some(now.clone())),
        _ => (Some(now.clone()), Some(now)),
    };
    DeploymentCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(message),
        last_transition_time: transition,
        last_update_time: update,
    }
}

fn new_replicaset(
    d: &Deployment,
    name: &str,
    hash: &str,
    replicas: i32,
    revision: i64,
) -> ReplicaSet {
    let spec = d.spec.as_ref().expect("checked by the caller");
    let mut template = spec.template.clone();
    let tmeta = template.metadata.get_or_insert_with(Default::default);
    tmeta
        .labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.to_string());
    let mut selector: LabelSelector = spec.selector.clone();
    selector
        .match_labels
        .get_or_insert_with(Default::default)
        .insert(HASH_LABEL.into(), hash.to_string());
    let mut labels = tmeta.labels.clone().unwrap_or_default();
    labels.insert(HASH_LABEL.into(), hash.to_string());
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (REVISION_ANNOTATION.to_string(), revision.to_string()),
                (
                    "deployment.kubernetes.io/desired-replicas".to_string(),
                    replicas.to_string(),
                ),
            ])),
            owner_references: Some(vec![owner_ref(Kind::Deployment, name, uid(&d.metadata))]),
            ..Default::default()
        },
        spec: Some(ReplicaSetSpec {
            replicas: Some(replicas),
            min_ready_seconds: spec.min_ready_seconds,
            selector,
            template: Some(template),
        }),
        status: None,
    }
}

/// The template's hash, as a short name suffix: FNV-1a over the template's
/// CBOR encoding (deterministic: maps are ordered), spelled with Kubernetes'
/// safe alphabet as `rand.SafeEncodeString` does.
pub fn pod_template_hash(template: &k8s_openapi::api::core::v1::PodTemplateSpec) -> String {
    let mut bytes = Vec::new();
    ciborium::into_writer(template, &mut bytes).expect("CBOR into a Vec cannot fail");
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    h.to_string()
        .bytes()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;

    #[test]
    fn creates_one_replicaset_then_scales_it() {
        let d = deployment("web", "default", 2);
        let snap = snapshot(vec![Object::Deployment(d.clone())]);
        let actions = reconcile(&snap);
        let rs = actions
            .iter()
            .find_map(|a| match a {
                Action::Create(Object::ReplicaSet(rs)) => Some(rs.clone()),
                _ => None,
            })
            .expect("a ReplicaSet is created");
        let hash = pod_template_hash(&d.spec.as_ref().unwrap().template);
        assert_eq!(
            rs.metadata.name.as_deref(),
            Some(format!("web-{hash}").as_str())
        );
        assert_eq!(rs.spec.as_ref().unwrap().replicas, Some(2));
        assert_eq!(
            rs.spec
                .as_ref()
                .unwrap()
                .selector
                .match_labels
                .as_ref()
                .unwrap()
                .get(HASH_LABEL),
            Some(&hash)
        );

        // Stored, then the Deployment is scaled to 5: the same ReplicaSet grows.
        let mut rs = rs;
        rs.metadata.uid = Some("rs-uid".into());
        let mut d5 = d.clone();
        d5.spec.as_mut().unwrap().replicas = Some(5);
        let snap = snapshot(vec![Object::Deployment(d5), Object::ReplicaSet(rs)]);
        let actions = reconcile(&snap);
        assert!(
            actions.iter().any(|a| matches!(a,
            Action::Update(Object::ReplicaSet(r)) if r.spec.as_ref().unwrap().replicas == Some(5)))
        );
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Create(Object::ReplicaSet(_))))
        );
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Create(Object::Event(e))
            if e.message.as_deref().is_some_and(|m| m.contains("from 2 to 5"))))
        );
    }

    #[test]
    fn new_template_scales_old_replicaset_to_zero() {
        let d = deployment("web", "default", 2);
        let mut old = new_replicaset(&d, "web", "oldhash", 2, 1);
        old.metadata.uid = Some("old".into());
        let snap = snapshot(vec![Object::Deployment(d), Object::ReplicaSet(old)]);
        let actions = reconcile(&snap);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Create(Object::ReplicaSet(r))
            if r.metadata.annotations.as_ref().unwrap()[REVISION_ANNOTATION] == "2"))
        );
        assert!(actions.iter().any(|a| matches!(a, Action::Update(Object::ReplicaSet(r))
            if r.metadata.uid.as_deref() == Some("old") && r.spec.as_ref().unwrap().replicas == Some(0))));
    }

    #[test]
    fn hash_is_stable_and_template_sensitive() {
        let d = deployment("web", "default", 2);
        let t = &d.spec.as_ref().unwrap().template;
        assert_eq!(pod_template_hash(t), pod_template_hash(&t.clone()));
        let mut t2 = t.clone();
        t2.spec.as_mut().unwrap().containers[0].image = Some("other".into());
        assert_ne!(pod_template_hash(t), pod_template_hash(&t2));
    }
}
