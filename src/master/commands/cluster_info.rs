//! `cluster-info`: where the cluster is and what it is made of.

use crate::api::Kind;
use crate::transport::messages::{ApiError, ClusterInfo, Response};

use super::Ctx;

pub fn handle(ctx: &Ctx) -> Result<Response, ApiError> {
    Ok(Response::ClusterInfo(ClusterInfo {
        broker: ctx.settings.broker_url.clone(),
        master_key: ctx.settings.master_key.clone(),
        nodes: ctx
            .store
            .list(Kind::Node, None)
            .iter()
            .map(|n| n.name().to_string())
            .collect(),
        cluster_cidr: ctx.settings.cluster_cidr.to_string(),
        service_cidr: ctx.settings.service_cidr.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }))
}
