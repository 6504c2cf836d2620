//! StatefulSet controller, after Kubernetes' `stateful_set_control.go`.
//!
//! Pods are named `<set>-<ordinal>`, with `hostname` their name and
//! `subdomain` the set's `serviceName`, so the headless Service gives each a
//! stable DNS name. Each `volumeClaimTemplate` gives every ordinal its own
//! claim `<template>-<set>-<ordinal>`, created before the pod and kept when
//! the pod goes (the claim, bound to a node, brings the pod back there; see
//! [`super::volumes`]).
//!
//! `OrderedReady` (the default) creates ordinals one at a time in order, each
//! once the ones before it are Running and Ready, and removes them from the
//! highest down, one at a time; `Parallel` does both at once. Updates:
//! `RollingUpdate` replaces pods in reverse ordinal order, one at a time,
//! waiting for each to be Ready again, and leaves ordinals below `partition`
//! at the old revision; `OnDelete` only gives the new template to pods the
//! user deletes. Revisions are `ControllerRevision`s ([`super::revisions`]).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimVolumeSource, Pod, PodStatus, PodTemplateSpec,
    Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::revisions::{self, REVISION_LABEL};
use super::{Action, Snapshot, events, is_available, is_ready, is_terminating, owner_ref, uid};
use crate::api::{Kind, Object};

const CONTROLLER: &str = "statefulset-controller";
pub const POD_NAME_LABEL: &str = "statefulset.kubernetes.io/pod-name";
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    for set in snap.statefulsets() {
        if set.metadata.deletion_timestamp.is_some() {
            continue;
        }
        out.extend(reconcile_one(snap, set));
    }
    out
}

/// The ordinal of a pod of set `name`, from its name.
pub fn ordinal(set_name: &str, pod_name: &str) -> Option<i32> {
    pod_name
        .strip_prefix(set_name)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

/// The claim name of template `template` for ordinal `ord` of set `set`.
pub fn claim_name(template: &str, set: &str, ord: i32) -> String {
    format!("{template}-{set}-{ord}")
}

fn running_ready(p: &Pod) -> bool {
    super::pod_phase(p) == "Running" && is_ready(p) && !is_terminating(p)
}

fn revision_of(p: &Pod) -> Option<&str> {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_LABEL))
        .map(String::as_str)
}

fn reconcile_one(snap: &Snapshot, set: &StatefulSet) -> Vec<Action> {
    let mut out = Vec::new();
    let Some(spec) = &set.spec else { return out };
    let Some(name) = set.metadata.name.as_deref() else {
        return out;
    };
    let ns = set.metadata.namespace.clone().unwrap_or_default();
    let set_obj = Object::StatefulSet(set.clone());
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
    let strategy = spec.update_strategy.clone().unwrap_or_default();
    let on_delete = strategy.type_.as_deref() == Some("OnDelete");
    let partition = strategy
        .rolling_update
        .as_ref()
        .and_then(|r| r.partition)
        .unwrap_or(0);

    let pods: BTreeMap<i32, &Pod> = snap
        .pods_of(uid(&set.metadata))
        .filter_map(|p| Some((ordinal(name, p.metadata.name.as_deref()?)?, p)))
        .collect();
    let update_revision = revisions::name_for(name, &spec.template);
    let old_status = set.status.clone().unwrap_or_default();
    let current_revision = old_status
        .current_revision
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| update_revision.clone());
    let in_use: Vec<&str> = pods.values().filter_map(|p| revision_of(p)).collect();
    out.extend(revisions::sync(
        snap,
        Kind::StatefulSet,
        &set.metadata,
        &spec.template,
        spec.revision_history_limit.unwrap_or(10).max(0) as usize,
        &in_use,
    ));
    let current_template = revisions::of(snap, uid(&set.metadata))
        .into_iter()
        .find(|r| r.metadata.name.as_deref() == Some(current_revision.as_str()))
        .and_then(revisions::template)
        .unwrap_or_else(|| spec.template.clone());

    // Claims first: a pod is only made once all of its claims exist.
    let claims_ready = |ord: i32| -> Result<BTreeMap<String, String>, Vec<PersistentVolumeClaim>> {
        let mut uids = BTreeMap::new();
        let mut missing = Vec::new();
        for t in spec.volume_claim_templates.iter().flatten() {
            let tname = t.metadata.name.clone().unwrap_or_default();
            let cname = claim_name(&tname, name, ord);
            match snap.claims().find(|c| {
                c.metadata.name.as_deref() == Some(cname.as_str())
                    && c.metadata.namespace.as_deref() == Some(ns.as_str())
            }) {
                Some(c) => {
                    uids.insert(tname, cname);
                    let _ = c;
                }
                None => {
                    let mut labels = t.metadata.labels.clone().unwrap_or_default();
                    labels.extend(spec.selector.match_labels.clone().unwrap_or_default());
                    missing.push(PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            name: Some(cname),
                            namespace: Some(ns.clone()),
                            labels: Some(labels),
                            annotations: t.metadata.annotations.clone(),
                            ..Default::default()
                        },
                        spec: t.spec.clone(),
                        status: Some(k8s_openapi::api::core::v1::PersistentVolumeClaimStatus {
                            phase: Some("Pending".into()),
                            ..Default::default()
                        }),
                    });
                }
            }
        }
        if missing.is_empty() {
            Ok(uids)
        } else {
            Err(missing)
        }
    };

    let mut acted = false;
    // Create or replace the ordinals that should exist, in order.
    for ord in 0..replicas {
        match pods.get(&ord) {
            None => {
                match claims_ready(ord) {
                    Err(missing) => {
                        for c in missing {
                            let cname = c.metadata.name.clone().unwrap_or_default();
                            out.push(Action::Create(Object::PersistentVolumeClaim(c)));
                            out.push(events::emit(
                                snap,
                                &set_obj,
                                false,
                                "SuccessfulCreate",
                                format!("create Claim {cname} Pod {name}-{ord} in StatefulSet {name} success"),
                                CONTROLLER,
                            ));
                        }
                    }
                    Ok(claims) => {
                        let use_current =
                            !on_delete && current_revision != update_revision && ord < partition;
                        let (template, rev) = if use_current {
                            (&current_template, current_revision.as_str())
                        } else {
                            (&spec.template, update_revision.as_str())
                        };
                        let pod = new_pod(set, template, rev, ord, &claims);
                        out.push(Action::Create(Object::Pod(pod)));
                        out.push(events::emit(
                            snap,
                            &set_obj,
                            false,
                            "SuccessfulCreate",
                            format!("create Pod {name}-{ord} in StatefulSet {name} successful"),
                            CONTROLLER,
                        ));
                    }
                }
                acted = true;
                if !parallel {
                    break;
                }
            }
            Some(p) if super::pod_phase(p) == "Failed" && !is_terminating(p) => {
                out.extend(super::pods::delete(p, snap.now));
                acted = true;
                if !parallel {
                    break;
                }
            }
            Some(p) if !parallel && !running_ready(p) => {
                // OrderedReady: the next ordinal waits for this one.
                acted = true;
                break;
            }
            Some(_) => {}
        }
    }
    // Condemned ordinals go from the highest down.
    let condemned: Vec<&&Pod> = pods.range(replicas..).rev().map(|(_, p)| p).collect();
    if !acted || parallel {
        let healthy_below = (0..replicas).all(|o| pods.get(&o).is_some_and(|p| running_ready(p)));
        for p in condemned {
            if is_terminating(p) {
                if !parallel {
                    break;
                }
                continue;
            }
            if !parallel && !healthy_below {
                break;
            }
            out.extend(super::pods::delete(p, snap.now));
            out.push(events::emit(
                snap,
                &set_obj,
                false,
                "SuccessfulDelete",
                format!(
                    "delete Pod {} in StatefulSet {name} successful",
                    p.metadata.name.as_deref().unwrap_or("")
                ),
                CONTROLLER,
            ));
            acted = true;
            if !parallel {
                break;
            }
        }
    }
    // Rolling update: the highest ordinal not yet updated, once all are healthy.
    if !acted && !on_delete {
        let all_healthy = (0..replicas).all(|o| pods.get(&o).is_some_and(|p| running_ready(p)));
        if all_healthy {
            for ord in (partition.max(0)..replicas).rev() {
                let Some(p) = pods.get(&ord) else { continue };
                if revision_of(p) != Some(update_revision.as_str()) {
                    out.extend(super::pods::delete(p, snap.now));
                    out.push(events::emit(
                        snap,
                        &set_obj,
                        false,
                        "SuccessfulDelete",
                        format!("delete Pod {name}-{ord} in StatefulSet {name} successful"),
                        CONTROLLER,
                    ));
                    break;
                }
            }
        }
    }

    // Status.
    let live: Vec<&&Pod> = pods.values().filter(|p| !is_terminating(p)).collect();
    let count = |rev: &str| live.iter().filter(|p| revision_of(p) == Some(rev)).count() as i32;
    let updated = count(&update_revision);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);
    let mut status = StatefulSetStatus {
        replicas: live.len() as i32,
        ready_replicas: Some(live.iter().filter(|p| is_ready(p)).count() as i32),
        available_replicas: Some(
            live.iter()
                .filter(|p| is_available(p, min_ready, snap.now))
                .count() as i32,
        ),
        current_replicas: Some(count(&current_revision)),
        updated_replicas: Some(updated),
        current_revision: Some(current_revision.clone()),
        update_revision: Some(update_revision.clone()),
        observed_generation: set.metadata.generation,
        collision_count: Some(old_status.collision_count.unwrap_or(0)),
        conditions: old_status.conditions.clone(),
    };
    // A finished rollout makes the update revision current.
    let target = if on_delete {
        0
    } else {
        replicas - partition.max(0)
    };
    if updated >= target.max(0) && updated == live.len() as i32 && live.len() as i32 == replicas {
        status.current_revision = Some(update_revision.clone());
        status.current_replicas = Some(updated);
    }
    if set.status.as_ref() != Some(&status) {
        let mut s = set.clone();
        s.status = Some(status);
        out.push(Action::Update(Object::StatefulSet(s)));
    }
    out
}

fn new_pod(
    set: &StatefulSet,
    template: &PodTemplateSpec,
    revision: &str,
    ord: i32,
    claims: &BTreeMap<String, String>,
) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let spec = set.spec.clone().unwrap_or_default();
    let pod_name = format!("{set_name}-{ord}");
    let tmeta = template.metadata.clone().unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.insert(REVISION_LABEL.into(), revision.to_string());
    labels.insert(POD_NAME_LABEL.into(), pod_name.clone());
    labels.insert(POD_INDEX_LABEL.into(), ord.to_string());
    let mut pod_spec = template.spec.clone().unwrap_or_default();
    pod_spec.hostname = Some(pod_name.clone());
    if !spec.service_name.as_deref().unwrap_or("").is_empty() {
        pod_spec.subdomain = spec.service_name.clone();
    }
    // Each claim template replaces the template's volume of the same name.
    for (tname, cname) in claims {
        let volumes = pod_spec.volumes.get_or_insert_with(Vec::new);
        volumes.retain(|v| &v.name != tname);
        volumes.push(Volume {
            name: tname.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: cname.clone(),
                read_only: None,
            }),
            ..Default::default()
        });
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(pod_name),
            namespace: set.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: tmeta.annotations,
            owner_references: Some(vec![owner_ref(
                Kind::StatefulSet,
                &set_name,
                uid(&set.metadata),
            )]),
            ..Default::default()
        },
        spec: Some(pod_spec),
        status: Some(PodStatus {
            phase: Some("Pending".into()),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::apps::v1::{
        RollingUpdateStatefulSetStrategy, StatefulSetSpec, StatefulSetUpdateStrategy,
    };
    use k8s_openapi::api::core::v1::PersistentVolumeClaimSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    fn set(replicas: i32, claims: bool) -> StatefulSet {
        StatefulSet {
            metadata: meta("web", "default"),
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                service_name: Some("nginx".into()),
                selector: LabelSelector {
                    match_labels: labels("web"),
                    ..Default::default()
                },
                template: template("web"),
                volume_claim_templates: claims.then(|| {
                    vec![PersistentVolumeClaim {
                        metadata: ObjectMeta {
                            name: Some("www".into()),
                            ..Default::default()
                        },
                        spec: Some(PersistentVolumeClaimSpec::default()),
                        status: None,
                    }]
                }),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Runs passes, committing creations and deletions and making every new
    /// pod Running and Ready when `ready` says so; returns the pods by name.
    fn drive(
        mut objects: Vec<Object>,
        passes: usize,
        ready: impl Fn(&str) -> bool,
    ) -> (Vec<Object>, Vec<Vec<String>>) {
        let mut created_per_pass = Vec::new();
        let mut n = 0;
        for _ in 0..passes {
            let actions = reconcile(&snapshot(objects.clone()));
            let mut created = Vec::new();
            for a in actions {
                match a {
                    Action::Create(Object::Pod(mut p)) => {
                        n += 1;
                        let name = p.metadata.name.clone().unwrap();
                        p.metadata.uid = Some(format!("pod-{n}"));
                        p.spec.as_mut().unwrap().node_name = Some("n1".into());
                        if ready(&name) {
                            let mut rp =
                                owned_pod("x", &replicaset("x", "default", 1), Some("n1"), true);
                            p.status = rp.status.take();
                        }
                        created.push(name);
                        objects.push(Object::Pod(p));
                    }
                    Action::Create(mut o @ Object::PersistentVolumeClaim(_)) => {
                        n += 1;
                        o.meta_mut().uid = Some(format!("pvc-{n}"));
                        objects.push(o);
                    }
                    Action::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some() => {
                        objects.retain(|o| o.name() != p.metadata.name.as_deref().unwrap());
                    }
                    Action::Update(Object::StatefulSet(s)) => {
                        objects.retain(|o| o.kind() != Kind::StatefulSet);
                        objects.insert(0, Object::StatefulSet(s));
                    }
                    _ => {}
                }
            }
            created_per_pass.push(created);
        }
        (objects, created_per_pass)
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_after_claims() {
        let (objects, per_pass) = drive(vec![Object::StatefulSet(set(3, true))], 8, |_| true);
        let created: Vec<String> = per_pass.into_iter().flatten().collect();
        assert_eq!(created, vec!["web-0", "web-1", "web-2"]);
        let pod0 = objects
            .iter()
            .find_map(|o| match o {
                Object::Pod(p) if p.metadata.name.as_deref() == Some("web-0") => Some(p.clone()),
                _ => None,
            })
            .unwrap();
        let spec = pod0.spec.unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("web-0"));
        assert_eq!(spec.subdomain.as_deref(), Some("nginx"));
        let vol = &spec.volumes.unwrap()[0];
        assert_eq!(
            vol.persistent_volume_claim.as_ref().unwrap().claim_name,
            "www-web-0"
        );
        assert!(objects.iter().any(|o| o.name() == "www-web-2"));
    }

    #[test]
    fn ordered_ready_waits_for_an_unready_ordinal() {
        let (_, per_pass) = drive(vec![Object::StatefulSet(set(3, false))], 5, |n| {
            n != "web-1"
        });
        let created: Vec<String> = per_pass.into_iter().flatten().collect();
        assert_eq!(created, vec!["web-0", "web-1"]);
    }

    #[test]
    fn parallel_creates_all_at_once() {
        let mut s = set(3, false);
        s.spec.as_mut().unwrap().pod_management_policy = Some("Parallel".into());
        let (_, per_pass) = drive(vec![Object::StatefulSet(s)], 1, |_| false);
        assert_eq!(per_pass[0], vec!["web-0", "web-1", "web-2"]);
    }

    #[test]
    fn scale_down_goes_from_the_highest_ordinal() {
        let (mut objects, _) = drive(vec![Object::StatefulSet(set(3, false))], 5, |_| true);
        if let Object::StatefulSet(s) = &mut objects[0] {
            s.spec.as_mut().unwrap().replicas = Some(1);
        }
        let actions = reconcile(&snapshot(objects));
        let deleted: Vec<String> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Update(Object::Pod(p)) if p.metadata.deletion_timestamp.is_some() => {
                    p.metadata.name.clone()
                }
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["web-2"]);
    }

    #[test]
    fn rolling_update_in_reverse_order_down_to_the_partition() {
        let (mut objects, _) = drive(vec![Object::StatefulSet(set(3, false))], 5, |_| true);
        // Record the current revision as the status would, then change the template.
        let status_objects = reconcile(&snapshot(objects.clone()));
        for a in status_objects {
            match a {
                Action::Update(Object::StatefulSet(s)) => objects[0] = Object::StatefulSet(s),
                Action::Create(o @ Object::ControllerRevision(_)) => objects.push(o),
                _ => {}
            }
        }
        if let Object::StatefulSet(s) = &mut objects[0] {
            let spec = s.spec.as_mut().unwrap();
            spec.template.spec.as_mut().unwrap().containers[0].image = Some("v2".into());
            spec.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateStatefulSetStrategy {
                    partition: Some(1),
                    max_unavailable: None,
                }),
            });
        }
        let (_, per_pass) = drive(objects, 8, |_| true);
        let recreated: Vec<String> = per_pass.into_iter().flatten().collect();
        assert_eq!(
            recreated,
            vec!["web-2", "web-1"],
            "web-0 is below the partition"
        );
    }

    #[test]
    fn on_delete_replaces_only_deleted_pods() {
        let (mut objects, _) = drive(vec![Object::StatefulSet(set(3, false))], 5, |_| true);
        for a in reconcile(&snapshot(objects.clone())) {
            match a {
                Action::Update(Object::StatefulSet(s)) => objects[0] = Object::StatefulSet(s),
                Action::Create(o @ Object::ControllerRevision(_)) => objects.push(o),
                _ => {}
            }
        }
        if let Object::StatefulSet(s) = &mut objects[0] {
            let spec = s.spec.as_mut().unwrap();
            spec.template.spec.as_mut().unwrap().containers[0].image = Some("v2".into());
            spec.update_strategy = Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            });
        }
        let (mut objects, per_pass) = drive(objects, 5, |_| true);
        assert!(
            per_pass.iter().all(Vec::is_empty),
            "a new template alone replaces nothing: {per_pass:?}"
        );
        // The user deletes web-1: it comes back with the new template.
        objects.retain(|o| o.name() != "web-1");
        let (objects, per_pass) = drive(objects, 3, |_| true);
        let recreated: Vec<String> = per_pass.into_iter().flatten().collect();
        assert_eq!(recreated, vec!["web-1"]);
        let image = |name: &str| {
            objects.iter().find_map(|o| match o {
                Object::Pod(p) if p.metadata.name.as_deref() == Some(name) => {
                    p.spec.as_ref().unwrap().containers[0].image.clone()
                }
                _ => None,
            })
        };
        assert_eq!(image("web-1").as_deref(), Some("v2"));
        assert_ne!(image("web-0").as_deref(), Some("v2"));
        assert_ne!(image("web-2").as_deref(), Some("v2"));
    }
}
