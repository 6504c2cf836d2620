//! `rollout undo|pause|resume|restart` on the master, so each is one
//! checked transaction (kubectl does them as client-side patches).
//!
//! History: a Deployment's is its ReplicaSets (revision annotation and
//! template); a StatefulSet's or DaemonSet's its ControllerRevisions.

use crate::api::{Kind, Object, ObjectKey};
use crate::master::controllers::deployment::{RESTARTED_AT_ANNOTATION, revision, template_of};
use crate::master::controllers::revisions;
use crate::store::{Mode, Op};
use crate::transport::messages::{ApiError, ErrorCode, Response, RolloutAction, RolloutRequest};
use k8s_openapi::api::core::v1::PodTemplateSpec;

use super::{Ctx, not_found, store_error};

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, msg)
}

/// The revisions of a workload, oldest first: (number, template).
pub fn history(ctx: &Ctx, obj: &Object) -> Vec<(i64, PodTemplateSpec)> {
    let uid = obj.meta().uid.clone().unwrap_or_default();
    let mut out: Vec<(i64, PodTemplateSpec)> = ctx
        .store
        .dependents(&uid)
        .iter()
        .filter_map(|d| match (&**d, obj.kind()) {
            (Object::ReplicaSet(rs), Kind::Deployment) => {
                Some((revision(&rs.metadata), template_of(rs)?))
            }
            (Object::ControllerRevision(r), Kind::StatefulSet | Kind::DaemonSet) => {
                Some((r.revision, revisions::template(r)?))
            }
            _ => None,
        })
        .collect();
    out.sort_by_key(|(n, _)| *n);
    out
}

fn template_mut(obj: &mut Object) -> Option<&mut PodTemplateSpec> {
    match obj {
        Object::Deployment(d) => Some(&mut d.spec.as_mut()?.template),
        Object::StatefulSet(s) => Some(&mut s.spec.as_mut()?.template),
        Object::DaemonSet(d) => Some(&mut d.spec.as_mut()?.template),
        _ => None,
    }
}

pub fn handle(ctx: &Ctx, req: RolloutRequest) -> Result<Response, ApiError> {
    if !matches!(
        req.kind,
        Kind::Deployment | Kind::StatefulSet | Kind::DaemonSet
    ) {
        return Err(bad(format!(
            "no rollout for {}: only deployments, statefulsets and daemonsets",
            req.kind.plural()
        )));
    }
    let key = ObjectKey::new(req.kind, &req.namespace, &req.name);
    let live = ctx
        .store
        .get(&key)
        .ok_or_else(|| not_found(req.kind, &req.name))?;
    let mut obj = (*live).clone();
    let resource = format!("{}.apps", req.kind.plural());
    let paused = matches!(&obj, Object::Deployment(d) if d.spec.as_ref().and_then(|s| s.paused) == Some(true));
    let word = match &req.action {
        RolloutAction::Pause | RolloutAction::Resume => {
            let Object::Deployment(d) = &mut obj else {
                return Err(bad(format!(
                    "{resource} \"{}\" pausing is not supported",
                    req.name
                )));
            };
            let pause = req.action == RolloutAction::Pause;
            if paused == pause {
                return Err(bad(format!(
                    "{resource} \"{}\" is {}",
                    req.name,
                    if pause {
                        "already paused"
                    } else {
                        "not paused"
                    }
                )));
            }
            d.spec.get_or_insert_with(Default::default).paused = pause.then_some(true);
            if pause { "paused" } else { "resumed" }
        }
        RolloutAction::Restart => {
            if paused {
                return Err(bad(format!(
                    "{resource} \"{}\" can't restart paused deployment (run rollout resume first)",
                    req.name
                )));
            }
            let t = template_mut(&mut obj).ok_or_else(|| bad("object has no pod template"))?;
            t.metadata
                .get_or_insert_with(Default::default)
                .annotations
                .get_or_insert_with(Default::default)
                .insert(RESTARTED_AT_ANNOTATION.into(), ctx.now.to_string());
            "restarted"
        }
        RolloutAction::Undo { to_revision } => {
            if paused {
                return Err(bad(format!(
                    "{resource} \"{}\" can't rollback paused deployment (run rollout resume first)",
                    req.name
                )));
            }
            let history = history(ctx, &obj);
            if history.is_empty() {
                return Err(bad(format!(
                    "no rollout history found for {} \"{}\"",
                    req.kind.qualified(),
                    req.name
                )));
            }
            let current_template = template_mut(&mut obj).cloned().unwrap_or_default();
            let current = match &obj {
                Object::Deployment(d) => revision(&d.metadata),
                _ => history
                    .iter()
                    .find(|(_, t)| *t == current_template)
                    .map_or(0, |(n, _)| *n),
            };
            let target = match to_revision.filter(|n| *n != 0) {
                Some(n) => history.iter().find(|(r, _)| *r == n).ok_or_else(|| {
                    bad(format!("unable to find specified revision {n} in history"))
                })?,
                None => history
                    .iter()
                    .rev()
                    .find(|(r, _)| *r < current || current == 0)
                    .filter(|(r, _)| *r != current)
                    .ok_or_else(|| bad("no revision found to roll back to"))?,
            };
            if target.1 == current_template {
                return Ok(Response::Done(vec![(
                    key,
                    format!(
                        "skipped rollback (current template already matches revision {})",
                        target.0
                    ),
                )]));
            }
            if let Some(t) = template_mut(&mut obj) {
                *t = target.1.clone();
            }
            "rolled back"
        }
    };
    let mode = if req.dry_run {
        Mode::DryRun
    } else {
        Mode::Commit
    };
    ctx.store
        .commit(vec![Op::Update(obj)], mode)
        .map_err(store_error)?;
    Ok(Response::Done(vec![(key, word.to_string())]))
}
