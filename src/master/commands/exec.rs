//! `exec`: find the pod's node, check the container, and ask the node to run
//! the command for the client. As with `logs`, the bytes go node ↔ client
//! directly, signed by each; the master only introduces them.

use crate::transport::messages::{ApiError, ErrorCode, ExecRequest, Response, StreamKind};

use super::logs::{check_stream_id, container, locate, open};
use super::{Ctx, Effect};

pub fn handle(ctx: &Ctx, req: ExecRequest) -> Result<(Response, Effect), ApiError> {
    check_stream_id(&req.stream_id)?;
    if req.command.is_empty() {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "you must specify at least one command for the container",
        ));
    }
    let at = locate(ctx, &req.namespace, &req.pod)?;
    let phase = at
        .pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    if phase == "Succeeded" || phase == "Failed" {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("cannot exec into a container in a completed pod; current phase is {phase}"),
        ));
    }
    let container = container(&at.pod, req.container.as_deref(), true)?;
    let kind = StreamKind::Exec {
        container: container.clone(),
        command: req.command,
        stdin: req.stdin,
        tty: req.tty,
        size: req.size.filter(|_| req.tty),
    };
    Ok(open(ctx, at, req.stream_id, Some(container), kind))
}
