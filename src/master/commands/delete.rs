//! `delete`: by name, by label selector, or every object of a kind in a
//! namespace, with kubectl's cascading policies (`--cascade`):
//!
//! - `background` (default): the object goes now; garbage collection
//!   removes its dependents afterwards.
//! - `foreground`: the object gets a `deletionTimestamp` and the
//!   `foregroundDeletion` finalizer and stays until garbage collection has
//!   removed its dependents.
//! - `orphan`: its dependents lose their reference to it, in the same
//!   transaction that deletes it, and stay.
//!
//! Pods bound to a node are deleted gracefully; a namespace becomes
//! Terminating and goes once everything in it is gone. All of one request
//! is one transaction.

use std::sync::Arc;

use crate::api::selector::Selector;
use crate::api::{DEFAULT_NAMESPACE, Kind, Object, ObjectKey};
use crate::master::controllers::{Action, adoption, gc, pods, rv};
use crate::store::{Mode, Op};
use crate::transport::messages::{ApiError, DeleteRequest, ErrorCode, Response};

use super::{Ctx, not_found, store_error, to_op};

pub fn handle(ctx: &Ctx, req: DeleteRequest) -> Result<Response, ApiError> {
    let policy = req.propagation.as_deref().unwrap_or("background");
    if !matches!(policy, "background" | "foreground" | "orphan") {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("--cascade={policy}: must be \"background\", \"foreground\", or \"orphan\""),
        ));
    }
    let targets = targets(ctx, &req)?;
    let mut ops = Vec::new();
    let mut keys = Vec::new();
    for obj in &targets {
        if obj.kind() == Kind::Namespace && obj.name() == DEFAULT_NAMESPACE {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "namespaces \"default\" is forbidden: this namespace may not be deleted",
            ));
        }
        keys.push(obj.key());
        let uid = obj.meta().uid.clone().unwrap_or_default();
        let dependents = ctx.store.dependents(&uid);
        if policy == "orphan" {
            for d in &dependents {
                let mut d = (**d).clone();
                adoption::release(d.meta_mut(), &uid);
                ops.push(Op::Update(d));
            }
        }
        let action = match &**obj {
            Object::Pod(p) => match pods::delete(p, ctx.now) {
                Some(a) => a,
                None => continue, // already terminating
            },
            Object::Namespace(n) => {
                if n.metadata.deletion_timestamp.is_some() {
                    continue;
                }
                let mut n = n.clone();
                n.metadata.deletion_timestamp = Some(crate::master::controllers::time(ctx.now));
                n.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
                Action::Update(Object::Namespace(n))
            }
            other if policy == "foreground" => {
                match gc::delete(other, true, !dependents.is_empty(), ctx.now) {
                    Some(a) => a,
                    None => continue,
                }
            }
            other => Action::Delete {
                key: other.key(),
                resource_version: rv(other.meta()),
            },
        };
        ops.push(to_op(action));
    }
    if !ops.is_empty() {
        let mode = if req.dry_run {
            Mode::DryRun
        } else {
            Mode::Commit
        };
        ctx.store.commit(ops, mode).map_err(store_error)?;
    }
    Ok(Response::Deleted(keys))
}

fn targets(ctx: &Ctx, req: &DeleteRequest) -> Result<Vec<Arc<Object>>, ApiError> {
    let ns = if req.kind.namespaced() {
        req.namespace.as_str()
    } else {
        ""
    };
    if !req.names.is_empty() {
        return req
            .names
            .iter()
            .map(|name| {
                ctx.store
                    .get(&ObjectKey::new(req.kind, ns, name))
                    .ok_or_else(|| not_found(req.kind, name))
            })
            .collect();
    }
    let selector = match &req.selector {
        Some(s) => Some(Selector::parse(s).map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("invalid label selector {s:?}: {e}"),
            )
        })?),
        None if req.all => None,
        None => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                "resource(s) were provided, but no name was specified",
            ));
        }
    };
    let scope = req.kind.namespaced().then_some(ns);
    Ok(ctx
        .store
        .list(req.kind, scope)
        .into_iter()
        .filter(|o| selector.as_ref().is_none_or(|s| s.matches(o.labels())))
        .collect())
}
