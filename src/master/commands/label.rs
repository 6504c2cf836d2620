//! `label` and `annotate`: set and remove labels or annotations on objects
//! (by name, selector or `--all`), all in one transaction, with kubectl's
//! rules: an existing key keeps its value unless `--overwrite`, and
//! `--resource-version` makes the change conditional.

use std::sync::Arc;

use crate::api::selector::Selector;
use crate::api::{Object, ObjectKey};
use crate::store::{Mode, Op};
use crate::transport::messages::{ApiError, ErrorCode, LabelRequest, Response};

use super::{Ctx, not_found, store_error};

pub fn handle(ctx: &Ctx, req: LabelRequest) -> Result<Response, ApiError> {
    let what = if req.annotations {
        "annotated"
    } else {
        "labeled"
    };
    for k in req.set.keys() {
        let errs = if req.annotations {
            crate::api::validate::qualified_name_errors(k)
        } else {
            crate::api::validate::qualified_name_errors(k)
                .into_iter()
                .chain(crate::api::validate::label_value_errors(&req.set[k]))
                .collect()
        };
        if !errs.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Invalid,
                format!(
                    "invalid {} {k:?}: {}",
                    if req.annotations {
                        "annotation"
                    } else {
                        "label"
                    },
                    errs.join("; ")
                ),
            ));
        }
    }
    let ns = if req.kind.namespaced() {
        req.namespace.as_str()
    } else {
        ""
    };
    let targets: Vec<Arc<Object>> = if !req.names.is_empty() {
        req.names
            .iter()
            .map(|n| {
                ctx.store
                    .get(&ObjectKey::new(req.kind, ns, n))
                    .ok_or_else(|| not_found(req.kind, n))
            })
            .collect::<Result<_, _>>()?
    } else if req.all || req.selector.is_some() {
        let sel = match &req.selector {
            Some(s) => Some(Selector::parse(s).map_err(|e| {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("invalid label selector {s:?}: {e}"),
                )
            })?),
            None => None,
        };
        ctx.store
            .list(req.kind, req.kind.namespaced().then_some(ns))
            .into_iter()
            .filter(|o| sel.as_ref().is_none_or(|s| s.matches(o.labels())))
            .collect()
    } else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "one or more resources must be specified as <resource> <name> or <resource>/<name>",
        ));
    };
    let mut ops = Vec::new();
    let mut done = Vec::new();
    for live in targets {
        let mut obj = (*live).clone();
        let meta = obj.meta_mut();
        let map = if req.annotations {
            meta.annotations.get_or_insert_with(Default::default)
        } else {
            meta.labels.get_or_insert_with(Default::default)
        };
        let before = map.clone();
        for (k, v) in &req.set {
            match map.get(k) {
                Some(old) if old != v && !req.overwrite => {
                    return Err(ApiError::new(
                        ErrorCode::Invalid,
                        format!("'{k}' already has a value ({old}), and --overwrite is false"),
                    ));
                }
                _ => {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
        for k in &req.remove {
            map.remove(k);
        }
        let changed = *map != before;
        if map.is_empty() {
            if req.annotations {
                meta.annotations = None;
            } else {
                meta.labels = None;
            }
        }
        if let Some(rv) = &req.resource_version {
            meta.resource_version = Some(rv.clone());
        }
        let key = obj.key();
        if changed || req.resource_version.is_some() {
            ops.push(Op::Update(obj));
        }
        done.push((
            key,
            if changed {
                what.to_string()
            } else {
                format!("not {what}")
            },
        ));
    }
    if !ops.is_empty() {
        let mode = if req.dry_run {
            Mode::DryRun
        } else {
            Mode::Commit
        };
        ctx.store.commit(ops, mode).map_err(store_error)?;
    }
    Ok(Response::Done(done))
}
