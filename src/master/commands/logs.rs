//! `logs`: find the pod's node and ask it to stream the container's log to the
//! client. The bytes go node → client directly (signed by the node); the master
//! only introduces them.

use crate::api::{Kind, NODE_KEY_ANNOTATION, Object, ObjectKey};
use crate::transport::messages::{ApiError, ErrorCode, LogsRequest, Response, StreamOpen};
use crate::transport::topics::valid_level;

use super::{Ctx, Effect, not_found};

pub fn handle(ctx: &Ctx, req: LogsRequest) -> Result<(Response, Effect), ApiError> {
    if !valid_level(&req.stream_id) || req.stream_id.len() > 64 {
        return Err(ApiError::new(ErrorCode::BadRequest, "bad stream id"));
    }
    let obj = ctx
        .store
        .get(&ObjectKey::new(Kind::Pod, &req.namespace, &req.pod))
        .ok_or_else(|| not_found(Kind::Pod, &req.pod))?;
    let Object::Pod(pod) = &*obj else {
        return Err(not_found(Kind::Pod, &req.pod));
    };
    let spec = pod.spec.clone().unwrap_or_default();
    let container = match &req.container {
        Some(c) => {
            if !spec.containers.iter().any(|x| &x.name == c) {
                return Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("container {c} is not valid for pod {}", req.pod),
                ));
            }
            c.clone()
        }
        None if spec.containers.len() == 1 => spec.containers[0].name.clone(),
        None => {
            let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "a container name must be specified for pod {}, choose one of: [{}]",
                    req.pod,
                    names.join(" ")
                ),
            ));
        }
    };
    let Some(node) = spec.node_name.clone() else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("pod {} is not scheduled to a node yet", req.pod),
        ));
    };
    let node_key = ctx
        .store
        .get(&ObjectKey::new(Kind::Node, "", &node))
        .and_then(|n| {
            n.meta()
                .annotations
                .as_ref()?
                .get(NODE_KEY_ANNOTATION)
                .cloned()
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unavailable,
                format!("node {node} is not registered"),
            )
        })?;
    let open = StreamOpen {
        id: req.stream_id.clone(),
        namespace: req.namespace.clone(),
        pod: req.pod.clone(),
        pod_uid: pod.metadata.uid.clone().unwrap_or_default(),
        container,
        follow: req.follow,
        tail: req.tail,
        client_key: ctx.caller.key.clone(),
        client_id: ctx.caller.id.clone(),
    };
    Ok((
        Response::LogStream {
            node: node.clone(),
            node_key,
        },
        Effect::OpenStream { node, open },
    ))
}
