//! `get`: objects of one kind, by name, namespace and label selector.

use crate::api::selector::Selector;
use crate::api::{Object, ObjectKey};
use crate::transport::messages::{ApiError, ErrorCode, GetRequest, Response};

use super::{Ctx, not_found};

pub fn handle(ctx: &Ctx, req: GetRequest) -> Result<Response, ApiError> {
    let selector = match &req.selector {
        Some(s) if !s.trim().is_empty() => Some(Selector::parse(s).map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("invalid label selector {s:?}: {e}"),
            )
        })?),
        _ => None,
    };
    if let Some(name) = &req.name {
        let ns = req
            .namespace
            .as_deref()
            .unwrap_or(crate::api::DEFAULT_NAMESPACE);
        let key = ObjectKey::new(req.kind, ns, name);
        return match ctx.store.get(&key) {
            Some(o) => Ok(Response::Objects(vec![(*o).clone()])),
            None => Err(not_found(req.kind, name)),
        };
    }
    let ns = if req.kind.namespaced() {
        req.namespace.as_deref()
    } else {
        None
    };
    let objects: Vec<Object> = ctx
        .store
        .list(req.kind, ns)
        .into_iter()
        .filter(|o| selector.as_ref().is_none_or(|s| s.matches(o.labels())))
        .map(|o| (*o).clone())
        .collect();
    Ok(Response::Objects(objects))
}
