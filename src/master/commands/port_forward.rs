//! `port-forward`: one stream per forwarded connection. The master checks the
//! pod runs and introduces the client to its node, which connects to the port
//! on the pod's loopback.

use crate::transport::messages::{ApiError, ErrorCode, PortForwardRequest, Response, StreamKind};

use super::logs::{check_stream_id, locate, open};
use super::{Ctx, Effect};

pub fn handle(ctx: &Ctx, req: PortForwardRequest) -> Result<(Response, Effect), ApiError> {
    check_stream_id(&req.stream_id)?;
    if req.port == 0 {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "port 0 cannot be forwarded",
        ));
    }
    let at = locate(ctx, &req.namespace, &req.pod)?;
    let phase = at
        .pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    if phase != "Running" {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("unable to forward port because pod is not running. Current status={phase}"),
        ));
    }
    let kind = StreamKind::PortForward { port: req.port };
    Ok(open(ctx, at, req.stream_id, None, kind))
}
