//! `apply`: create or update objects, all of a request in one transaction.
//!
//! Each object arrives as the manifest wrote it and is merged with the live
//! one like kubectl's three-way merge ([`super::merge`]): what the manifest
//! sets wins, what the previous apply set and this one dropped is removed,
//! everything else (status, uid, allocated ClusterIPs and NodePorts, a pod's
//! node, a Deployment's revision, owner references, what `scale`, `label` or
//! an autoscaler changed) stays. The configuration is kept in the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation. A manifest
//! carrying a `resourceVersion` is refused with a conflict unless it is the
//! stored one. Every object is defaulted and validated again here: the CLI's
//! checks are a courtesy, the master's are the rule.

use std::collections::HashSet;
use std::sync::Arc;

use crate::api::{self, Kind, Object, ObjectKey};
use crate::master::controllers::deployment::REVISION_ANNOTATION;
use crate::master::services::Allocations;
use crate::store::{Mode, Op, Outcome};
use crate::transport::messages::{ApiError, Applied, ApplyRequest, ErrorCode, Response};

use super::merge::{self, LAST_APPLIED};
use super::{Ctx, store_error};

pub fn handle(ctx: &Ctx, req: ApplyRequest) -> Result<Response, ApiError> {
    if req.objects.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "no objects passed to apply",
        ));
    }
    let batch_namespaces: HashSet<String> = req
        .objects
        .iter()
        .filter(|o| o.kind() == Kind::Namespace)
        .map(|o| o.name().to_string())
        .collect();
    let mut seen = HashSet::new();
    let mut alloc = Allocations::from_store(ctx);
    let mut ops = Vec::new();
    for obj in req.objects {
        let key = obj.key();
        if !seen.insert(key.clone()) {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!("{key} appears twice in one apply"),
            ));
        }
        ops.push(Op::Put(prepare(ctx, obj, &mut alloc, &batch_namespaces)?));
    }
    let mode = if req.dry_run {
        Mode::DryRun
    } else {
        Mode::Commit
    };
    let outcomes = ctx.store.commit(ops, mode).map_err(store_error)?;
    Ok(Response::Applied(
        outcomes
            .into_iter()
            .map(|o| {
                let (obj, word) = match o {
                    Outcome::Created(o) => (o, "created"),
                    Outcome::Configured(o) => (o, "configured"),
                    Outcome::Unchanged(o) => (o, "unchanged"),
                    Outcome::Deleted(o) => (o, "deleted"),
                };
                Applied {
                    key: obj.key(),
                    outcome: word.to_string(),
                    warnings: Vec::new(),
                    object: req.dry_run.then(|| (*obj).clone()),
                }
            })
            .collect(),
    ))
}

fn invalid(obj: &Object, details: &[String]) -> ApiError {
    ApiError::new(
        ErrorCode::Invalid,
        format!(
            "{} \"{}\" is invalid: {}",
            obj.kind(),
            obj.name(),
            details.join(", ")
        ),
    )
}

/// The manifest object merged with the live one (see the module doc).
fn merged(ctx: &Ctx, mut written: Object) -> Result<Object, ApiError> {
    let kind = written.kind();
    if kind.namespaced()
        && written
            .meta()
            .namespace
            .as_deref()
            .is_none_or(str::is_empty)
    {
        written.meta_mut().namespace = Some(api::DEFAULT_NAMESPACE.to_string());
    }
    if kind == Kind::Node {
        return Ok(written);
    }
    let mut new = written.to_json();
    if let Some(m) = new.as_object_mut() {
        m.remove("status");
    }
    let text = merge::last_applied_text(&new);
    if let Some(md) = new.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        let ann = md
            .entry("annotations")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(a) = ann.as_object_mut() {
            a.insert(LAST_APPLIED.into(), serde_json::Value::String(text));
        }
    }
    let merged = match ctx.store.get(&written.key()) {
        Some(live) => {
            let last: Option<serde_json::Value> = live
                .meta()
                .annotations
                .as_ref()
                .and_then(|a| a.get(LAST_APPLIED))
                .and_then(|t| serde_json::from_str(t).ok());
            merge::three_way(last.as_ref(), &new, &live.to_json())
        }
        None => new,
    };
    Object::from_json(kind, merged).map_err(|e| {
        ApiError::new(
            ErrorCode::Invalid,
            format!(
                "{kind} \"{}\" is invalid: merging with the live object: {e}",
                written.name()
            ),
        )
    })
}

fn prepare(
    ctx: &Ctx,
    written: Object,
    alloc: &mut Allocations,
    batch_namespaces: &HashSet<String>,
) -> Result<Object, ApiError> {
    let mut obj = merged(ctx, written)?;
    api::defaults::apply(&mut obj);
    let errors: Vec<String> = api::validate::validate(&obj)
        .iter()
        .map(|e| e.to_string())
        .collect();
    if !errors.is_empty() {
        return Err(invalid(&obj, &errors));
    }
    let kind = obj.kind();
    if kind.namespaced() {
        let ns = obj.namespace().to_string();
        let exists = ctx
            .store
            .get(&ObjectKey::new(Kind::Namespace, "", &ns))
            .is_some_and(|n| n.meta().deletion_timestamp.is_none());
        if !exists && !batch_namespaces.contains(&ns) {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("namespaces \"{ns}\" not found"),
            ));
        }
    }
    let existing: Option<Arc<Object>> = ctx.store.get(&obj.key());
    if let Some(e) = &existing
        && e.meta().deletion_timestamp.is_some()
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{} is being deleted", e.key()),
        ));
    }
    match (&mut obj, existing.as_deref()) {
        (Object::Node(_), None) => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "nodes register themselves when they join; apply can only relabel an existing node",
            ));
        }
        (Object::Node(n), Some(Object::Node(old))) => {
            // Only labels, annotations and schedulability are the user's.
            let mut merged = old.clone();
            merged.metadata.labels = n.metadata.labels.take().or(merged.metadata.labels);
            let mut annotations = old.metadata.annotations.clone().unwrap_or_default();
            annotations.extend(n.metadata.annotations.take().unwrap_or_default());
            merged.metadata.annotations = Some(annotations);
            if let Some(u) = n.spec.as_ref().and_then(|s| s.unschedulable) {
                merged
                    .spec
                    .get_or_insert_with(Default::default)
                    .unschedulable = Some(u);
            }
            *n = merged;
            return Ok(obj);
        }
        (Object::Service(svc), old) => {
            let old = match old {
                Some(Object::Service(s)) => Some(s),
                _ => None,
            };
            alloc.prepare_service(ctx, svc, old)?;
        }
        (Object::Pod(pod), Some(Object::Pod(old))) => {
            let mut wanted = pod.spec.clone().unwrap_or_default();
            let have = old.spec.clone().unwrap_or_default();
            if wanted.node_name.is_none() {
                wanted.node_name = have.node_name.clone();
            }
            if wanted != have {
                return Err(invalid(
                    &obj,
                    &["spec: Forbidden: pod updates may not change fields of a running pod; delete and re-create it, or use a Deployment".to_string()],
                ));
            }
            pod.spec = Some(wanted);
        }
        (Object::Deployment(d), Some(Object::Deployment(old))) => {
            if let Some(rev) = old
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION_ANNOTATION))
            {
                d.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .entry(REVISION_ANNOTATION.to_string())
                    .or_insert_with(|| rev.clone());
            }
        }
        _ => {}
    }
    if let Some(old) = &existing {
        carry_server_fields(&mut obj, old);
    } else {
        clear_status(&mut obj);
    }
    Ok(obj)
}

/// Status and owner references are the server's: a manifest never sets them.
fn carry_server_fields(obj: &mut Object, old: &Object) {
    if obj.meta().owner_references.is_none() {
        obj.meta_mut().owner_references = old.meta().owner_references.clone();
    }
    match (obj, old) {
        (Object::Pod(n), Object::Pod(o)) => n.status = o.status.clone(),
        (Object::Deployment(n), Object::Deployment(o)) => n.status = o.status.clone(),
        (Object::ReplicaSet(n), Object::ReplicaSet(o)) => n.status = o.status.clone(),
        (Object::Service(n), Object::Service(o)) => n.status = o.status.clone(),
        (Object::Namespace(n), Object::Namespace(o)) => n.status = o.status.clone(),
        _ => {}
    }
}

fn clear_status(obj: &mut Object) {
    match obj {
        Object::Pod(p) => {
            p.status = Some(k8s_openapi::api::core::v1::PodStatus {
                phase: Some("Pending".into()),
                ..Default::default()
            })
        }
        Object::Deployment(d) => d.status = None,
        Object::ReplicaSet(r) => r.status = None,
        Object::Service(s) => s.status = None,
        Object::Namespace(n) => {
            n.status = Some(k8s_openapi::api::core::v1::NamespaceStatus {
                phase: Some("Active".into()),
                ..Default::default()
            })
        }
        _ => {}
    }
}
