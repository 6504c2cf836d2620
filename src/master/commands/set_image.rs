//! `set image KIND/NAME container=image…`: the image of named containers
//! (`*`: all) of a workload's pod template, or of a pod.

use crate::api::{Object, ObjectKey};
use crate::store::{Mode, Op};
use crate::transport::messages::{ApiError, ErrorCode, Response, SetImageRequest};
use k8s_openapi::api::core::v1::PodSpec;

use super::{Ctx, not_found, store_error};

fn pod_spec(obj: &mut Object) -> Option<&mut PodSpec> {
    match obj {
        Object::Pod(p) => p.spec.as_mut(),
        Object::Deployment(d) => d.spec.as_mut()?.template.spec.as_mut(),
        Object::ReplicaSet(r) => r.spec.as_mut()?.template.as_mut()?.spec.as_mut(),
        Object::StatefulSet(s) => s.spec.as_mut()?.template.spec.as_mut(),
        Object::DaemonSet(d) => d.spec.as_mut()?.template.spec.as_mut(),
        Object::Job(j) => j.spec.as_mut()?.template.spec.as_mut(),
        Object::CronJob(c) => c
            .spec
            .as_mut()?
            .job_template
            .spec
            .as_mut()?
            .template
            .spec
            .as_mut(),
        _ => None,
    }
}

pub fn handle(ctx: &Ctx, req: SetImageRequest) -> Result<Response, ApiError> {
    let key = ObjectKey::new(req.kind, &req.namespace, &req.name);
    let live = ctx
        .store
        .get(&key)
        .ok_or_else(|| not_found(req.kind, &req.name))?;
    let mut obj = (*live).clone();
    let spec = pod_spec(&mut obj).ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{} have no containers to set an image on",
                req.kind.plural()
            ),
        )
    })?;
    for (container, image) in &req.images {
        let mut found = false;
        let init = spec.init_containers.iter_mut().flatten();
        for c in spec.containers.iter_mut().chain(init) {
            if container == "*" || &c.name == container {
                c.image = Some(image.clone());
                found = true;
            }
        }
        if !found {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unable to find container named \"{container}\""),
            ));
        }
    }
    let mut check = obj.clone();
    crate::api::defaults::apply(&mut check);
    let errors: Vec<String> = crate::api::validate::validate(&check)
        .iter()
        .map(|e| e.to_string())
        .collect();
    if !errors.is_empty() {
        return Err(ApiError::new(ErrorCode::Invalid, errors.join(", ")));
    }
    let mode = if req.dry_run {
        Mode::DryRun
    } else {
        Mode::Commit
    };
    ctx.store
        .commit(vec![Op::Update(obj)], mode)
        .map_err(store_error)?;
    Ok(Response::Done(vec![(key, "image updated".into())]))
}
