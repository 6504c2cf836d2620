//! `logs`: find the pod's node and ask it to stream the container's log to the
//! client. The bytes go node → client directly (signed by the node); the master
//! only introduces them. Also the helpers `exec` and `port-forward` share:
//! locating a pod's node and choosing its container.

use k8s_openapi::api::core::v1::Pod;

use crate::api::{Kind, NODE_KEY_ANNOTATION, Object, ObjectKey};
use crate::transport::messages::{
    ApiError, ErrorCode, LogsRequest, Response, StreamKind, StreamOpen,
};
use crate::transport::topics::valid_level;

use super::{Ctx, Effect, not_found};

/// A pod, bound to a node whose key the master knows.
pub(super) struct Located {
    pub pod: Pod,
    pub node: String,
    pub node_key: String,
}

pub(super) fn check_stream_id(id: &str) -> Result<(), ApiError> {
    if !valid_level(id) || id.len() > 64 {
        return Err(ApiError::new(ErrorCode::BadRequest, "bad stream id"));
    }
    Ok(())
}

pub(super) fn locate(ctx: &Ctx, namespace: &str, name: &str) -> Result<Located, ApiError> {
    let obj = ctx
        .store
        .get(&ObjectKey::new(Kind::Pod, namespace, name))
        .ok_or_else(|| not_found(Kind::Pod, name))?;
    let Object::Pod(pod) = &*obj else {
        return Err(not_found(Kind::Pod, name));
    };
    let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("pod {name} does not have a host assigned"),
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
    Ok(Located {
        pod: pod.clone(),
        node,
        node_key,
    })
}

/// The container a request names, or the pod's only one. `default_first`:
/// with several and none named, the first (kubectl exec's "Defaulted
/// container") rather than an error (kubectl logs).
pub(super) fn container(
    pod: &Pod,
    asked: Option<&str>,
    default_first: bool,
) -> Result<String, ApiError> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let containers = pod
        .spec
        .as_ref()
        .map(|s| s.containers.as_slice())
        .unwrap_or_default();
    match asked {
        Some(c) if containers.iter().any(|x| x.name == c) => Ok(c.to_string()),
        Some(c) => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("container {c} is not valid for pod {name}"),
        )),
        None if containers.len() == 1 || (default_first && !containers.is_empty()) => {
            Ok(containers[0].name.clone())
        }
        None => {
            let names: Vec<_> = containers.iter().map(|c| c.name.as_str()).collect();
            Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    names.join(" ")
                ),
            ))
        }
    }
}

/// Builds the reply and the `Open` the node gets.
pub(super) fn open(
    ctx: &Ctx,
    at: Located,
    stream_id: String,
    container: Option<String>,
    kind: StreamKind,
) -> (Response, Effect) {
    let open = StreamOpen {
        id: stream_id,
        namespace: at.pod.metadata.namespace.clone().unwrap_or_default(),
        pod: at.pod.metadata.name.clone().unwrap_or_default(),
        pod_uid: at.pod.metadata.uid.clone().unwrap_or_default(),
        kind,
        client_key: ctx.caller.key.clone(),
        client_id: ctx.caller.id.clone(),
    };
    (
        Response::Stream {
            node: at.node.clone(),
            node_key: at.node_key,
            container,
        },
        Effect::OpenStream {
            node: at.node,
            open,
        },
    )
}

pub fn handle(ctx: &Ctx, req: LogsRequest) -> Result<(Response, Effect), ApiError> {
    check_stream_id(&req.stream_id)?;
    let at = locate(ctx, &req.namespace, &req.pod)?;
    let container = container(&at.pod, req.container.as_deref(), false)?;
    if req.previous {
        let restarted = at
            .pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == container))
            .is_some_and(|c| {
                c.restart_count > 0
                    || c.last_state
                        .as_ref()
                        .is_some_and(|l| l.terminated.is_some())
            });
        if !restarted {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!(
                    "previous terminated container \"{container}\" in pod \"{}\" not found",
                    req.pod
                ),
            ));
        }
    }
    let kind = StreamKind::Logs {
        container: container.clone(),
        follow: req.follow,
        tail: req.tail,
        previous: req.previous,
        since: req.since,
        timestamps: req.timestamps,
    };
    Ok(open(ctx, at, req.stream_id, Some(container), kind))
}
