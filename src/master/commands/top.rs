//! `top nodes|pods`: what pods use, as their nodes measured it in cgroups
//! (kept in the master's memory, never stored). A node's use is the sum of
//! its pods'.

use std::collections::HashMap;

use crate::api::selector::Selector;
use crate::api::{Kind, Object};
use crate::master::controllers::hpa::milli;
use crate::transport::messages::{ApiError, ErrorCode, Response, TopReport, TopRequest, TopRow};

use super::Ctx;

pub fn handle(ctx: &Ctx, req: TopRequest) -> Result<Response, ApiError> {
    let sel = match req.selector.as_deref().filter(|s| !s.trim().is_empty()) {
        Some(s) => Some(Selector::parse(s).map_err(|e| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("invalid label selector {s:?}: {e}"),
            )
        })?),
        None => None,
    };
    let pods = ctx.store.list(
        Kind::Pod,
        if req.nodes {
            None
        } else {
            req.namespace.as_deref()
        },
    );
    let mut rows = Vec::new();
    if req.nodes {
        let mut per_node: HashMap<String, (i64, i64)> = HashMap::new();
        for p in &pods {
            let Object::Pod(p) = &**p else { continue };
            let (Some(node), Some(u)) = (
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                p.metadata.uid.as_deref().and_then(|u| ctx.usage.get(u)),
            ) else {
                continue;
            };
            let e = per_node.entry(node).or_default();
            e.0 += u.cpu_millis;
            e.1 += u.memory_bytes;
        }
        for n in ctx.store.list(Kind::Node, None) {
            let Object::Node(n) = &*n else { continue };
            if sel.as_ref().is_some_and(|s| {
                !s.matches(n.metadata.labels.as_ref().unwrap_or(&Default::default()))
            }) {
                continue;
            }
            let name = n.metadata.name.clone().unwrap_or_default();
            let alloc = n
                .status
                .as_ref()
                .and_then(|s| s.allocatable.clone())
                .unwrap_or_default();
            let (cpu, mem) = per_node.get(&name).copied().unwrap_or_default();
            rows.push(TopRow {
                namespace: String::new(),
                name,
                container: None,
                cpu_millis: cpu,
                memory_bytes: mem,
                cpu_capacity_millis: alloc.get("cpu").and_then(milli).unwrap_or(0),
                memory_capacity_bytes: alloc.get("memory").and_then(milli).unwrap_or(0) / 1000,
            });
        }
    } else {
        for p in &pods {
            let Object::Pod(pod) = &**p else { continue };
            if sel.as_ref().is_some_and(|s| !s.matches(p.labels())) {
                continue;
            }
            let Some(u) = pod.metadata.uid.as_deref().and_then(|u| ctx.usage.get(u)) else {
                continue;
            };
            let base = TopRow {
                namespace: p.namespace().to_string(),
                name: p.name().to_string(),
                ..Default::default()
            };
            if req.containers {
                for (c, (cpu, mem)) in &u.containers {
                    rows.push(TopRow {
                        container: Some(c.clone()),
                        cpu_millis: *cpu,
                        memory_bytes: *mem,
                        ..base.clone()
                    });
                }
            } else {
                rows.push(TopRow {
                    cpu_millis: u.cpu_millis,
                    memory_bytes: u.memory_bytes,
                    ..base
                });
            }
        }
    }
    Ok(Response::Top(TopReport { rows }))
}
