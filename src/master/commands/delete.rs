//! `delete`: by name, by label selector, or every object of a kind in a
//! namespace. Pods bound to a node are deleted gracefully; dependents go
//! through garbage collection (background cascade).

use std::sync::Arc;

use crate::api::selector::Selector;
use crate::api::{DEFAULT_NAMESPACE, Kind, Object, ObjectKey};
use crate::master::controllers::{Action, pods, rv};
use crate::store::Mode;
use crate::transport::messages::{ApiError, DeleteRequest, ErrorCode, Response};

use super::{Ctx, not_found, store_error, to_op};

pub fn handle(ctx: &Ctx, req: DeleteRequest) -> Result<Response, ApiError> {
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
        let action = match &**obj {
            Object::Pod(p) => match pods::delete(p, ctx.now) {
                Some(a) => a,
                None => continue, // already terminating
            },
            other => Action::Delete {
                key: other.key(),
                resource_version: rv(other.meta()),
            },
        };
        ops.push(to_op(action));
    }
    if !ops.is_empty() {
        ctx.store.commit(ops, Mode::Commit).map_err(store_error)?;
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
