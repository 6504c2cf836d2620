//! `scale`: set `spec.replicas` of a Deployment or ReplicaSet.

use crate::api::{Object, ObjectKey};
use crate::store::{Mode, Op};
use crate::transport::messages::{ApiError, ErrorCode, Response, ScaleRequest};

use super::{Ctx, not_found, store_error};

pub fn handle(ctx: &Ctx, req: ScaleRequest) -> Result<Response, ApiError> {
    if req.replicas < 0 {
        return Err(ApiError::new(
            ErrorCode::Invalid,
            format!(
                "--replicas={}: must be greater than or equal to 0",
                req.replicas
            ),
        ));
    }
    let key = ObjectKey::new(req.kind, &req.namespace, &req.name);
    let current = ctx
        .store
        .get(&key)
        .ok_or_else(|| not_found(req.kind, &req.name))?;
    let mut obj = (*current).clone();
    match &mut obj {
        Object::Deployment(d) => {
            d.spec.get_or_insert_with(Default::default).replicas = Some(req.replicas)
        }
        Object::ReplicaSet(r) => {
            r.spec.get_or_insert_with(Default::default).replicas = Some(req.replicas)
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "{} cannot be scaled: only deployments and replicasets",
                    req.kind.plural()
                ),
            ));
        }
    }
    ctx.store
        .commit(vec![Op::Update(obj)], Mode::Commit)
        .map_err(store_error)?;
    Ok(Response::Scaled(key))
}
