//! Deployment controller, after Kubernetes' `pkg/controller/deployment`.
//!
//! A Deployment owns one ReplicaSet per pod template (named `<deploy>-<hash>`
//! of the template); the ReplicaSet of the current template is the *new* one,
//! the others are *old*. Each pass takes one step, as Kubernetes' sync does,
//! and the next pass (triggered by the commit) takes the next:
//!
//! - **RollingUpdate**: scale the new ReplicaSet up while the total stays
//!   within `replicas + maxSurge`; scale old ones down while the available
//!   pods stay at least `replicas - maxUnavailable` (unhealthy old pods
//!   first). Numbers and percentages as Kubernetes resolves them (surge
//!   rounds up, unavailability down, both 0 means 1 unavailable).
//! - **Recreate**: scale every old ReplicaSet to 0, wait until their pods are
//!   gone, then create the new one at full size.
//! - **paused**: replica count changes only; no new ReplicaSet.
//!
//! Revisions: each ReplicaSet carries `deployment.kubernetes.io/revision`; a
//! template that comes back (`rollout undo`) makes its old ReplicaSet new
//! again with the next revision number, the earlier one kept in
//! `revision-history`. Old ReplicaSets scaled to 0 beyond
//! `revisionHistoryLimit` are deleted once a rollout completes.
//!
//! Status and conditions as kubectl shows them: Available (at least
//! `replicas - maxUnavailable` available), Progressing (NewReplicaSetCreated,
//! ReplicaSetUpdated, NewReplicaSetAvailable, ProgressDeadlineExceeded when no
//! progress was made for `progressDeadlineSeconds`, DeploymentPaused).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::{Action, Snapshot, adoption, controller_of, events, owner_ref, scaled_value, uid};
use crate::api::{Kind, Object};

pub const HASH_LABEL: &str = "pod-template-hash";
const CONTROLLER: &str = "deployment-controller";
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY_ANNOTATION: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
/// What `rollout restart` sets on the pod template.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";

pub const TIMED_OUT_REASON: &str = "ProgressDeadlineExceeded";
pub const NEW_RS_AVAILABLE_REASON: &str = "NewReplicaSetAvailable";
const NEW_RS_CREATED_REASON: &str = "NewReplicaSetCreated";
const RS_UPDATED_REASON: &str = "ReplicaSetUpdated";
const FOUND_NEW_RS_REASON: &str = "FoundNewReplicaSet";
const PAUSED_REASON: &str = "DeploymentPaused";
const RESUMED_REASON: &str = "DeploymentResumed";

pub fn reconcile(snap: &Snapshot) -> Vec<Action> {
    let mut out = Vec::new();
    let mut by_owner: BTreeMap<&str, Vec<&ReplicaSet>> = BTreeMap::new();
    for rs in snap.replicasets() {
        if let Some(r) = controller_of(&rs.metadata).filter(|r| r.kind == "Deployment") {
            by_owner.entry(r.uid.as_str()).or_default().push(rs);
        }
    }
    let mut claimed = std::collections::HashSet::new();
    for d in snap.deployments() {
        if d.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let mut owned = by_owner.get(uid(&d.metadata)).cloned().unwrap_or_default();
        // Orphaned ReplicaSets this Deployment selects become its own.
        if let Some(spec) = &d.spec {
            let orphans = adoption::orphans(
                snap.replicasets(),
                d.metadata.namespace.as_deref(),
                &spec.selector,
                |rs| &rs.metadata,
                &mut claimed,
            );
            for rs in orphans {
                let mut adopted = rs.clone();
                adoption::adopt(&mut adopted.metadata, Kind::Deployment, &d.metadata);
                out.push(Action::Update(Object::ReplicaSet(adopted)));
                owned.push(rs);
            }
        }
        out.extend(reconcile_one(snap, d, &owned));
    }
    out
}

pub fn revision(meta: &ObjectMeta) -> i64 {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn status_replicas(rs: &ReplicaSet) -> i32 {
    rs.status.as_ref().map_or(0, |s| s.replicas)
}

fn available(rs: &ReplicaSet) -> i32 {
    rs.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// maxSurge and maxUnavailable resolved against `replicas` (Kubernetes'
/// `ResolveFenceposts`): surge rounds up, unavailability rounds down, and
/// both 0 would deadlock, so unavailability becomes 1.
pub fn fenceposts(d: &Deployment) -> (i32, i32) {
    let Some(spec) = &d.spec else { return (0, 1) };
    let replicas = spec.replicas.unwrap_or(1);
    let ru = spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref());
    let surge = scaled_value(
        ru.and_then(|r| r.max_surge.as_ref())
            .or(Some(&default_quarter())),
        replicas,
        true,
    );
    let unavailable = scaled_value(
        ru.and_then(|r| r.max_unavailable.as_ref())
            .or(Some(&default_quarter())),
        replicas,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

fn default_quarter() -> k8s_openapi::apimachinery::pkg::util::intstr::IntOrString {
    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("25%".into())
}

fn is_recreate(d: &Deployment) -> bool {
    d.spec
        .as_ref()
        .and_then(|s| s.strategy.as_ref())
        .and_then(|s| s.type_.as_deref())
        == Some("Recreate")
}

/// Kubernetes' `MaxUnavailable`: 0 for Recreate or no replicas, at most
/// `replicas`.
pub fn max_unavailable(d: &Deployment) -> i32 {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if is_recreate(d) || replicas == 0 {
        return 0;
    }
    fenceposts(d).1.min(replicas)
}

/// How big the new ReplicaSet may be now (Kubernetes' `NewRSNewReplicas`).
pub fn new_rs_replicas(d: &Deployment, all_spec_total: i32, new_current: i32) -> i32 {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    if is_recreate(d) {
        return replicas;
    }
    let (surge, _) = fenceposts(d);
    let max_total = replicas + surge;
    if all_spec_total >= max_total {
        return new_current;
    }
    let up = (max_total - all_spec_total)
        .min(replicas - new_current)
        .max(0);
    new_current + up
}

/// Scale-down targets for old ReplicaSets in a rolling update
/// (`reconcileOldReplicaSets`), oldest first; returns the new replica counts
/// of the ones that change.
pub fn scale_down_old(
    d: &Deployment,
    new_rs: Option<(i32, i32)>,
    olds: &[(String, i32, i32)],
) -> BTreeMap<String, i32> {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let mut out = BTreeMap::new();
    let old_total: i32 = olds.iter().map(|o| o.1).sum();
    if old_total == 0 {
        return out;
    }
    let (new_spec, new_available) = new_rs.unwrap_or((0, 0));
    let all_total = old_total + new_spec;
    let min_available = replicas - max_unavailable(d);
    let new_unavailable = (new_spec - new_available).max(0);
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return out;
    }
    // Unhealthy old pods first: they cost no availability.
    let mut counts: Vec<(String, i32, i32)> = olds.to_vec();
    let mut cleaned = 0;
    for (name, spec, avail) in counts.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        if *spec == *avail {
            continue;
        }
        let n = (max_scaled_down - cleaned).min(*spec - *avail).max(0);
        if n > 0 {
            *spec -= n;
            cleaned += n;
            out.insert(name.clone(), *spec);
        }
    }
    // Then healthy ones, as far as availability allows.
    let available_total: i32 = counts.iter().map(|o| o.2.min(o.1)).sum::<i32>() + new_available;
    if available_total > min_available {
        let mut budget = available_total - min_available;
        for (name, spec, _) in counts.iter_mut() {
            if budget <= 0 {
                break;
            }
            if *spec == 0 {
                continue;
            }
            let n = (*spec).min(budget);
            *spec -= n;
            budget -= n;
            out.insert(name.clone(), *spec);
        }
    }
    out
}

fn reconcile_one(snap: &Snapshot, d: &Deployment, owned: &[&ReplicaSet]) -> Vec<Action> {
    let mut out = Vec::new();
    let Some(spec) = d.spec.as_ref() else {
        return out;
    };
    let Some(name) = d.metadata.name.as_deref() else {
        return out;
    };
    let dobj = Object::Deployment(d.clone());
    let replicas = spec.replicas.unwrap_or(1).max(0);
    let paused = spec.paused == Some(true);
    let hash = pod_template_hash(&spec.template);
    let new_rs = owned
        .iter()
        .copied()
        .find(|rs| rs.metadata.labels.as_ref().and_then(|l| l.get(HASH_LABEL)) == Some(&hash));
    let mut olds: Vec<&ReplicaSet> = owned
        .iter()
        .copied()
        .filter(|rs| new_rs.is_none_or(|n| n.metadata.uid != rs.metadata.uid))
        .collect();
    olds.sort_by_key(|rs| {
        (
            rs.metadata.creation_timestamp.as_ref().map(|t| t.0),
            revision(&rs.metadata),
        )
    });
    let max_old_revision = olds
        .iter()
        .map(|rs| revision(&rs.metadata))
        .max()
        .unwrap_or(0);

    // The target replica count (and annotations) of every owned ReplicaSet.
    let mut targets: BTreeMap<String, i32> = BTreeMap::new();
    let mut created: Option<ReplicaSet> = None;
    let mut new_revision = new_rs.map_or(max_old_revision + 1, |rs| revision(&rs.metadata));
    let mut bump_revision = false;
    if let Some(rs) = new_rs
        && revision(&rs.metadata) <= max_old_revision
    {
        new_revision = max_old_revision + 1;
        bump_revision = true;
    }
    let all_spec_total: i32 = owned.iter().map(|rs| spec_replicas(rs)).sum();
    let rs_name = |rs: &ReplicaSet| rs.metadata.name.clone().unwrap_or_default();

    if paused {
        // Only a change of scale is carried out while paused.
        let active_olds = olds.iter().any(|rs| spec_replicas(rs) > 0);
        if let Some(rs) = new_rs
            && !active_olds
            && spec_replicas(rs) != replicas
        {
            targets.insert(rs_name(rs), replicas);
        }
    } else if is_recreate(d) {
        let active: Vec<&&ReplicaSet> = olds.iter().filter(|rs| spec_replicas(rs) > 0).collect();
        if !active.is_empty() {
            for rs in active {
                targets.insert(rs_name(rs), 0);
            }
        } else if olds.iter().any(|rs| status_replicas(rs) > 0) {
            // Old pods still run: the new ones wait (that is Recreate).
        } else {
            match new_rs {
                None => created = Some(new_replicaset(d, name, &hash, replicas, new_revision)),
                Some(rs) if spec_replicas(rs) != replicas => {
                    targets.insert(rs_name(rs), replicas);
                }
                Some(_) => {}
            }
        }
    } else {
        match new_rs {
            None => {
                let n = new_rs_replicas(d, all_spec_total, 0);
                created = Some(new_replicaset(d, name, &hash, n, new_revision));
            }
            Some(rs) => {
                let have = spec_replicas(rs);
                let want = if have > replicas {
                    replicas
                } else {
                    new_rs_replicas(d, all_spec_total, have)
                };
                if want != have {
                    targets.insert(rs_name(rs), want);
                } else {
                    let olds_counts: Vec<(String, i32, i32)> = olds
                        .iter()
                        .map(|rs| (rs_name(rs), spec_replicas(rs), available(rs)))
                        .collect();
                    targets.extend(scale_down_old(d, Some((have, available(rs))), &olds_counts));
                }
            }
        }
    }

    // Actions for the ReplicaSets.
    if let Some(rs) = &created {
        let n = spec_replicas(rs);
        out.push(Action::Create(Object::ReplicaSet(rs.clone())));
        out.push(events::emit(
            snap,
            &dobj,
            false,
            "ScalingReplicaSet",
            format!("Scaled up replica set {name}-{hash} from 0 to {n}"),
            CONTROLLER,
        ));
    }
    for rs in owned {
        let n = rs_name(rs);
        let target = targets.get(&n).copied();
        let is_new = new_rs.is_some_and(|x| x.metadata.uid == rs.metadata.uid);
        let bump = is_new && bump_revision;
        let annotate = is_new
            && rs
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DESIRED_ANNOTATION))
                != Some(&replicas.to_string());
        if target.is_none() && !bump && (paused || !annotate) {
            continue;
        }
        let mut updated = (*rs).clone();
        let have = spec_replicas(rs);
        if let Some(t) = target {
            updated.spec.get_or_insert_with(Default::default).replicas = Some(t);
            if t != have {
                let direction = if t > have { "up" } else { "down" };
                out.push(events::emit(
                    snap,
                    &dobj,
                    false,
                    "ScalingReplicaSet",
                    format!("Scaled {direction} replica set {n} from {have} to {t}"),
                    CONTROLLER,
                ));
            }
        }
        let ann = updated
            .metadata
            .annotations
            .get_or_insert_with(Default::default);
        if is_new {
            ann.insert(DESIRED_ANNOTATION.into(), replicas.to_string());
        }
        if bump {
            let old = revision(&rs.metadata);
            if old > 0 {
                let history = match ann.get(REVISION_HISTORY_ANNOTATION) {
                    Some(h) if !h.is_empty() => format!("{h},{old}"),
                    _ => old.to_string(),
                };
                ann.insert(REVISION_HISTORY_ANNOTATION.into(), history);
            }
            ann.insert(REVISION_ANNOTATION.into(), new_revision.to_string());
            if let Some(cause) = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CHANGE_CAUSE_ANNOTATION))
            {
                ann.insert(CHANGE_CAUSE_ANNOTATION.into(), cause.clone());
            }
        }
        out.push(Action::Update(Object::ReplicaSet(updated)));
    }

    // Old ReplicaSets beyond the history limit go once the rollout is done.
    let status = compute_status(snap, d, owned, new_rs, created.as_ref());
    let complete = is_complete(d, &status);
    if complete && targets.is_empty() && created.is_none() {
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        let mut idle: Vec<&&ReplicaSet> = olds
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && status_replicas(rs) == 0
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if idle.len() > limit {
            idle.sort_by_key(|rs| revision(&rs.metadata));
            for rs in &idle[..idle.len() - limit] {
                out.push(Action::Delete {
                    key: Object::ReplicaSet((**rs).clone()).key(),
                    resource_version: super::rv(&rs.metadata),
                });
            }
        }
    }

    let want_rev = new_revision.to_string();
    let has_new = new_rs.is_some() || created.is_some();
    let rev_ok = !has_new
        || d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REVISION_ANNOTATION))
            == Some(&want_rev);
    if d.status.as_ref() != Some(&status) || !rev_ok {
        let mut d = d.clone();
        d.status = Some(status);
        if has_new {
            d.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(REVISION_ANNOTATION.into(), want_rev);
        }
        out.push(Action::Update(Object::Deployment(d)));
    }
    out
}

/// Kubernetes' `DeploymentComplete`.
pub fn is_complete(d: &Deployment, s: &DeploymentStatus) -> bool {
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    s.updated_replicas == Some(replicas)
        && s.replicas == Some(replicas)
        && s.available_replicas == Some(replicas)
        && s.observed_generation >= d.metadata.generation
}

fn compute_status(
    snap: &Snapshot,
    d: &Deployment,
    owned: &[&ReplicaSet],
    new_rs: Option<&ReplicaSet>,
    created: Option<&ReplicaSet>,
) -> DeploymentStatus {
    let spec = d.spec.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1);
    let name = d.metadata.name.as_deref().unwrap_or("");
    let sum = |f: &dyn Fn(&ReplicaSet) -> i32| owned.iter().map(|rs| f(rs)).sum::<i32>();
    let total = sum(&status_replicas);
    let ready = sum(&|rs| {
        rs.status
            .as_ref()
            .and_then(|s| s.ready_replicas)
            .unwrap_or(0)
    });
    let avail = sum(&available);
    let spec_total = sum(&spec_replicas);
    let updated = new_rs.map_or(0, status_replicas);
    let old = d.status.clone().unwrap_or_default();
    let mut status = DeploymentStatus {
        replicas: Some(total),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(avail),
        unavailable_replicas: Some((spec_total - avail).max(0)),
        observed_generation: d.metadata.generation,
        collision_count: old.collision_count,
        conditions: None,
        terminating_replicas: None,
    };
    let now = super::time(snap.now);
    let min_available = replicas - max_unavailable(d);
    let mut conditions: Vec<DeploymentCondition> = Vec::new();
    let available_cond = if avail >= min_available {
        (
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
        )
    } else {
        (
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
        )
    };
    conditions.push(set_condition(
        &old,
        "Available",
        available_cond.0,
        available_cond.1,
        available_cond.2.to_string(),
        &now,
        false,
    ));

    let rs_name = new_rs
        .or(created)
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_else(|| format!("{name}-{}", pod_template_hash(&spec.template)));
    let prev = old
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Progressing");
    let deadline = spec.progress_deadline_seconds;
    let paused = spec.paused == Some(true);
    let progressing = if paused {
        Some(set_condition(
            &old,
            "Progressing",
            "Unknown",
            PAUSED_REASON,
            "Deployment is paused".into(),
            &now,
            false,
        ))
    } else if prev.is_some_and(|p| p.reason.as_deref() == Some(PAUSED_REASON)) {
        Some(set_condition(
            &old,
            "Progressing",
            "Unknown",
            RESUMED_REASON,
            "Deployment is resumed".into(),
            &now,
            false,
        ))
    } else if deadline.is_none() || deadline == Some(i32::MAX) {
        None
    } else if created.is_some() {
        Some(set_condition(
            &old,
            "Progressing",
            "True",
            NEW_RS_CREATED_REASON,
            format!("Created new replica set \"{rs_name}\""),
            &now,
            true,
        ))
    } else if prev.is_some_and(|p| p.reason.as_deref() == Some(NEW_RS_AVAILABLE_REASON))
        && total == updated
        && old.updated_replicas == status.updated_replicas
        && is_complete(d, &status)
    {
        prev.cloned()
    } else if is_complete(d, &status) {
        Some(set_condition(
            &old,
            "Progressing",
            "True",
            NEW_RS_AVAILABLE_REASON,
            format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            &now,
            false,
        ))
    } else if has_progressed(&old, &status) || prev.is_none() {
        Some(set_condition(
            &old,
            "Progressing",
            "True",
            RS_UPDATED_REASON,
            format!("ReplicaSet \"{rs_name}\" is progressing."),
            &now,
            true,
        ))
    } else if timed_out(prev, deadline.unwrap_or(600), snap.now) {
        Some(set_condition(
            &old,
            "Progressing",
            "False",
            TIMED_OUT_REASON,
            format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
            &now,
            false,
        ))
    } else {
        let mut p = prev.cloned();
        // A new ReplicaSet found again after a restart of the master.
        if let Some(p) = &mut p
            && p.reason.as_deref() == Some(NEW_RS_AVAILABLE_REASON)
        {
            p.reason = Some(FOUND_NEW_RS_REASON.into());
            p.message = Some(format!("Found new replica set \"{rs_name}\""));
        }
        p
    };
    conditions.extend(progressing);
    status.conditions = Some(conditions);
    status
}

/// Kubernetes' `DeploymentProgressing`: more updated, ready or available
/// pods, or fewer old ones, than at the last pass.
fn has_progressed(old: &DeploymentStatus, new: &DeploymentStatus) -> bool {
    let old_olds = old.replicas.unwrap_or(0) - old.updated_replicas.unwrap_or(0);
    let new_olds = new.replicas.unwrap_or(0) - new.updated_replicas.unwrap_or(0);
    new.updated_replicas > old.updated_replicas
        || new_olds < old_olds
        || new.ready_replicas > old.ready_replicas
        || new.available_replicas > old.available_replicas
}

fn timed_out(prev: Option<&DeploymentCondition>, deadline: i32, now: jiff::Timestamp) -> bool {
    let Some(p) = prev else { return false };
    if p.reason.as_deref() == Some(TIMED_OUT_REASON) {
        return true;
    }
    let Some(from) = p.last_update_time.as_ref().map(|t| t.0) else {
        return false;
    };
    now.duration_since(from).as_secs() > i64::from(deadline)
}

/// A condition, keeping the old timestamps unless its status changed;
/// `touch` moves the update time (progress was made) even when nothing else
/// changed, which is what restarts the progress deadline.
fn set_condition(
    old: &DeploymentStatus,
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    touch: bool,
) -> DeploymentCondition {
    let prev = old.conditions.iter().flatten().find(|c| c.type_ == type_);
    let (transition, update) = match prev {
        Some(p) if p.status == status => {
            let same =
                p.reason.as_deref() == Some(reason) && p.message.as_deref() == Some(&message);
            let update = if same && !touch {
                p.last_update_time.clone()
            } else {
                Some(now.clone())
            };
            (p.last_transition_time.clone(), update)
        }
        _ => (Some(now.clone()), Some(now.clone())),
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
    let (surge, _) = fenceposts(d);
    let want = spec.replicas.unwrap_or(1);
    let mut annotations = BTreeMap::from([
        (REVISION_ANNOTATION.to_string(), revision.to_string()),
        (DESIRED_ANNOTATION.to_string(), want.to_string()),
        (
            MAX_REPLICAS_ANNOTATION.to_string(),
            (want + surge).to_string(),
        ),
    ]);
    if let Some(cause) = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CHANGE_CAUSE_ANNOTATION))
    {
        annotations.insert(CHANGE_CAUSE_ANNOTATION.into(), cause.clone());
    }
    ReplicaSet {
        metadata: ObjectMeta {
            name: Some(format!("{name}-{hash}")),
            namespace: d.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: Some(annotations),
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

/// The pod template a ReplicaSet was made from, as the Deployment held it
/// (without the hash label): what `rollout undo` puts back.
pub fn template_of(rs: &ReplicaSet) -> Option<k8s_openapi::api::core::v1::PodTemplateSpec> {
    let mut t = rs.spec.as_ref()?.template.clone()?;
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(HASH_LABEL);
    }
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::controllers::tests_support::*;
    use k8s_openapi::api::apps::v1::{
        DeploymentStrategy, ReplicaSetStatus, RollingUpdateDeployment,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    fn with_strategy(
        mut d: Deployment,
        surge: IntOrString,
        unavailable: IntOrString,
    ) -> Deployment {
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(surge),
                max_unavailable: Some(unavailable),
            }),
        });
        d
    }

    fn rs_of(d: &Deployment, hash: &str, spec: i32, avail: i32, rev: i64) -> ReplicaSet {
        let mut rs = new_replicaset(d, "web", hash, spec, rev);
        rs.metadata.uid = Some(format!("uid-{hash}"));
        rs.metadata.resource_version = Some("1".into());
        rs.metadata.creation_timestamp = Some(super::super::time(
            jiff::Timestamp::from_second(1_700_000_000 + rev).unwrap(),
        ));
        rs.status = Some(ReplicaSetStatus {
            replicas: spec,
            ready_replicas: Some(avail),
            available_replicas: Some(avail),
            ..Default::default()
        });
        rs
    }

    fn rs_updates(actions: &[Action]) -> BTreeMap<String, i32> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Update(Object::ReplicaSet(r)) | Action::Create(Object::ReplicaSet(r)) => {
                    Some((r.metadata.name.clone()?, r.spec.as_ref()?.replicas?))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn fenceposts_numbers_and_percents() {
        let d = deployment("web", "default", 10);
        assert_eq!(
            fenceposts(&d),
            (3, 2),
            "25% of 10: surge up, unavailable down"
        );
        let d = with_strategy(
            deployment("web", "default", 10),
            IntOrString::Int(0),
            IntOrString::Int(0),
        );
        assert_eq!(fenceposts(&d), (0, 1), "0 and 0 would deadlock");
        let d = with_strategy(
            deployment("web", "default", 3),
            IntOrString::String("50%".into()),
            IntOrString::String("50%".into()),
        );
        assert_eq!(fenceposts(&d), (2, 1));
        let d = with_strategy(
            deployment("web", "default", 3),
            IntOrString::Int(1),
            IntOrString::Int(5),
        );
        assert_eq!(max_unavailable(&d), 3, "capped at replicas");
    }

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
                .unwrap()[HASH_LABEL],
            hash
        );

        // Stored, then the Deployment is scaled to 5: the same ReplicaSet grows.
        let mut rs = rs;
        rs.metadata.uid = Some("rs-uid".into());
        let mut d5 = d.clone();
        d5.spec.as_mut().unwrap().replicas = Some(5);
        let snap = snapshot(vec![Object::Deployment(d5), Object::ReplicaSet(rs)]);
        let actions = reconcile(&snap);
        assert_eq!(rs_updates(&actions)[&format!("web-{hash}")], 5);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, Action::Create(Object::Event(e))
            if e.message.as_deref().is_some_and(|m| m.contains("from 2 to 5"))))
        );
    }

    /// A rolling update of 10 replicas with 25%/25% (surge 3, unavailable 2),
    /// driven pass by pass with every pod becoming available at once: the
    /// total never exceeds 13, availability never drops below 8, and it ends
    /// with the new ReplicaSet at 10 and the old one at 0.
    #[test]
    fn rolling_update_respects_surge_and_unavailability() {
        let mut d = deployment("web", "default", 10);
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("v2".into());
        let hash = pod_template_hash(&d.spec.as_ref().unwrap().template);
        let mut old = rs_of(&d, "old", 10, 10, 1);
        let mut new: Option<ReplicaSet> = None;
        for step in 0..20 {
            let mut objects = vec![
                Object::Deployment(d.clone()),
                Object::ReplicaSet(old.clone()),
            ];
            if let Some(n) = &new {
                objects.push(Object::ReplicaSet(n.clone()));
            }
            let actions = reconcile(&snapshot(objects));
            let updates = rs_updates(&actions);
            if updates.is_empty() {
                break;
            }
            for (name, n) in updates {
                if name == "web-old" {
                    old.spec.as_mut().unwrap().replicas = Some(n);
                    old.status = Some(ReplicaSetStatus {
                        replicas: n,
                        ready_replicas: Some(n),
                        available_replicas: Some(n),
                        ..Default::default()
                    });
                } else {
                    let mut rs = new.clone().unwrap_or_else(|| {
                        let mut r = rs_of(&d, &hash, 0, 0, 2);
                        r.metadata.name = Some(name.clone());
                        r
                    });
                    rs.spec.as_mut().unwrap().replicas = Some(n);
                    rs.status = Some(ReplicaSetStatus {
                        replicas: n,
                        ready_replicas: Some(n),
                        available_replicas: Some(n),
                        ..Default::default()
                    });
                    new = Some(rs);
                }
            }
            let total = spec_replicas(&old) + new.as_ref().map_or(0, spec_replicas);
            let avail = available(&old) + new.as_ref().map_or(0, available);
            assert!(total <= 13, "step {step}: {total} pods");
            assert!(avail >= 8, "step {step}: {avail} available");
        }
        assert_eq!(spec_replicas(&old), 0);
        assert_eq!(new.as_ref().map(spec_replicas), Some(10));
    }

    #[test]
    fn unavailable_new_pods_stop_the_rollout_at_max_unavailable() {
        // 4 replicas, surge 1, unavailable 1: the new pods never become
        // available (their image does not exist).
        let mut d = with_strategy(
            deployment("web", "default", 4),
            IntOrString::Int(1),
            IntOrString::Int(1),
        );
        d.spec
            .as_mut()
            .unwrap()
            .template
            .spec
            .as_mut()
            .unwrap()
            .containers[0]
            .image = Some("nope".into());
        let hash = pod_template_hash(&d.spec.as_ref().unwrap().template);
        let mut old = rs_of(&d, "old", 4, 4, 1);
        let mut new = rs_of(&d, &hash, 0, 0, 2);
        for _ in 0..10 {
            let actions = reconcile(&snapshot(vec![
                Object::Deployment(d.clone()),
                Object::ReplicaSet(old.clone()),
                Object::ReplicaSet(new.clone()),
            ]));
            for (name, n) in rs_updates(&actions) {
                let rs = if name == "web-old" {
                    &mut old
                } else {
                    &mut new
                };
                rs.spec.as_mut().unwrap().replicas = Some(n);
                let avail = if name == "web-old" { n } else { 0 };
                rs.status = Some(ReplicaSetStatus {
                    replicas: n,
                    ready_replicas: Some(avail),
                    available_replicas: Some(avail),
                    ..Default::default()
                });
            }
        }
        assert_eq!(spec_replicas(&old), 3, "one old pod gone, no more");
        assert_eq!(spec_replicas(&new), 2, "surge 1 over the 3 left");
    }

    #[test]
    fn progress_deadline_exceeded_without_progress() {
        let mut d = deployment("web", "default", 2);
        d.spec.as_mut().unwrap().progress_deadline_seconds = Some(10);
        let hash = pod_template_hash(&d.spec.as_ref().unwrap().template);
        let new = rs_of(&d, &hash, 2, 0, 1);
        let mut snap = snapshot(vec![
            Object::Deployment(d.clone()),
            Object::ReplicaSet(new.clone()),
        ]);
        let first = reconcile(&snap);
        let Some(Action::Update(Object::Deployment(d1))) = first
            .iter()
            .find(|a| matches!(a, Action::Update(Object::Deployment(_))))
            .cloned()
        else {
            panic!("status written: {first:?}")
        };
        let cond = |d: &Deployment| {
            d.status
                .as_ref()
                .unwrap()
                .conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Progressing")
                .cloned()
                .unwrap()
        };
        assert_eq!(cond(&d1).reason.as_deref(), Some(RS_UPDATED_REASON));
        // Eleven seconds later, nothing has moved.
        snap = snapshot(vec![
            Object::Deployment(d1.clone()),
            Object::ReplicaSet(new),
        ]);
        snap.now = snap
            .now
            .checked_add(jiff::SignedDuration::from_secs(11))
            .unwrap();
        let second = reconcile(&snap);
        let Some(Action::Update(Object::Deployment(d2))) = second
            .iter()
            .find(|a| matches!(a, Action::Update(Object::Deployment(_))))
            .cloned()
        else {
            panic!("status written: {second:?}")
        };
        let c = cond(&d2);
        assert_eq!(
            (c.status.as_str(), c.reason.as_deref()),
            ("False", Some(TIMED_OUT_REASON))
        );
        let avail = d2
            .status
            .as_ref()
            .unwrap()
            .conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Available")
            .unwrap()
            .status
            .clone();
        assert_eq!(avail, "False");
    }

    #[test]
    fn recreate_waits_for_old_pods() {
        let mut d = deployment("web", "default", 2);
        d.spec.as_mut().unwrap().strategy = Some(DeploymentStrategy {
            type_: Some("Recreate".into()),
            rolling_update: None,
        });
        let old = rs_of(&d, "old", 2, 2, 1);
        let actions = reconcile(&snapshot(vec![
            Object::Deployment(d.clone()),
            Object::ReplicaSet(old.clone()),
        ]));
        assert_eq!(
            rs_updates(&actions),
            BTreeMap::from([("web-old".to_string(), 0)])
        );
        // Scaled to 0 but its pods still terminate: nothing new yet.
        let mut draining = old.clone();
        draining.spec.as_mut().unwrap().replicas = Some(0);
        let actions = reconcile(&snapshot(vec![
            Object::Deployment(d.clone()),
            Object::ReplicaSet(draining.clone()),
        ]));
        assert!(rs_updates(&actions).is_empty(), "{actions:?}");
        draining.status = Some(ReplicaSetStatus::default());
        let actions = reconcile(&snapshot(vec![
            Object::Deployment(d),
            Object::ReplicaSet(draining),
        ]));
        assert!(actions.iter().any(|a| matches!(a, Action::Create(Object::ReplicaSet(r)) if r.spec.as_ref().unwrap().replicas == Some(2))));
    }

    #[test]
    fn rollback_reuses_the_old_replicaset_with_the_next_revision() {
        let d = deployment("web", "default", 2);
        let hash = pod_template_hash(&d.spec.as_ref().unwrap().template);
        let back = rs_of(&d, &hash, 0, 0, 1);
        let newer = rs_of(&d, "other", 2, 2, 2);
        let actions = reconcile(&snapshot(vec![
            Object::Deployment(d),
            Object::ReplicaSet(back),
            Object::ReplicaSet(newer),
        ]));
        let bumped = actions
            .iter()
            .find_map(|a| match a {
                Action::Update(Object::ReplicaSet(r))
                    if r.metadata.name.as_deref() == Some(&format!("web-{hash}")) =>
                {
                    Some(r.clone())
                }
                _ => None,
            })
            .expect("the old ReplicaSet is updated");
        let ann = bumped.metadata.annotations.unwrap();
        assert_eq!(ann[REVISION_ANNOTATION], "3");
        assert_eq!(ann[REVISION_HISTORY_ANNOTATION], "1");
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, Action::Create(Object::ReplicaSet(_))))
        );
    }

    #[test]
    fn history_limit_deletes_the_oldest_idle_replicasets() {
        let mut d = deployment("web", "default", 1);
        d.spec.as_mut().unwrap().revision_history_limit = Some(1);
        let hash = pod_template_hash(&d.spec.as_ref().unwrap().template);
        let mut cur = rs_of(&d, &hash, 1, 1, 4);
        cur.metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(DESIRED_ANNOTATION.into(), "1".into());
        let r1 = rs_of(&d, "r1", 0, 0, 1);
        let r2 = rs_of(&d, "r2", 0, 0, 2);
        let mut dd = d.clone();
        dd.status = Some(DeploymentStatus {
            replicas: Some(1),
            updated_replicas: Some(1),
            available_replicas: Some(1),
            observed_generation: Some(1),
            ..Default::default()
        });
        let actions = reconcile(&snapshot(vec![
            Object::Deployment(dd),
            Object::ReplicaSet(cur),
            Object::ReplicaSet(r1),
            Object::ReplicaSet(r2),
        ]));
        let deleted: Vec<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Delete { key, .. } => Some(key.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["web-r1"]);
    }

    #[test]
    fn hash_is_stable_and_template_sensitive() {
        let d = deployment("web", "default", 2);
        let t = &d.spec.as_ref().unwrap().template;
        assert_eq!(pod_template_hash(t), pod_template_hash(&t.clone()));
        let mut t2 = t.clone();
        t2.spec.as_mut().unwrap().containers[0].image = Some("other".into());
        assert_ne!(pod_template_hash(t), pod_template_hash(&t2));
        let rs = new_replicaset(&d, "web", &pod_template_hash(t), 1, 1);
        assert_eq!(template_of(&rs).as_ref(), Some(t));
    }
}
