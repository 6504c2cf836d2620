//! `scale`: set `spec.replicas` of a Deployment, ReplicaSet or StatefulSet,
//! with kubectl's preconditions (`--resource-version`, `--current-replicas`).

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
    let replicas = match &mut obj {
        Object::Deployment(d) => &mut d.spec.get_or_insert_with(Default::default).replicas,
        Object::ReplicaSet(r) => &mut r.spec.get_or_insert_with(Default::default).replicas,
        Object::StatefulSet(s) => &mut s.spec.get_or_insert_with(Default::default).replicas,
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "{} cannot be scaled: only deployments, replicasets and statefulsets",
                    req.kind.plural()
                ),
            ));
        }
    };
    if let Some(want) = req.current_replicas
        && replicas.unwrap_or(1) != want
    {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "Expected replicas to be {want}, was {}",
                replicas.unwrap_or(1)
            ),
        ));
    }
    *replicas = Some(req.replicas);
    if let Some(rv) = req.resource_version {
        obj.meta_mut().resource_version = Some(rv);
    }
    let mode = if req.dry_run {
        Mode::DryRun
    } else {
        Mode::Commit
    };
    ctx.store
        .commit(vec![Op::Update(obj)], mode)
        .map_err(store_error)?;
    Ok(Response::Scaled(key))
}
