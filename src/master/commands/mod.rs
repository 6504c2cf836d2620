//! The command handler: one file per verb, each with a `handle` function from a
//! request to a response. Commands run against the store; the only effect
//! beyond it (opening a stream on a node: logs, exec, port-forward) is
//! returned, not performed.

pub mod apply;
pub mod cluster_info;
pub mod cordon;
pub mod delete;
pub mod exec;
pub mod get;
pub mod label;
pub mod logs;
pub mod merge;
pub mod port_forward;
pub mod rollout;
pub mod scale;
pub mod set_image;
pub mod token;
pub mod top;

use std::ops::RangeInclusive;

use ipnet::Ipv4Net;

use crate::master::controllers::Action;
use crate::store::{Op, Store, StoreError};
use crate::transport::messages::{ApiError, ErrorCode, Request, Response, StreamOpen};

/// Cluster-wide settings the handlers need.
#[derive(Clone, Debug)]
pub struct Settings {
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub node_port_range: RangeInclusive<u16>,
    pub broker_url: String,
    pub master_key: String,
    /// The DNS domain of the cluster (`cluster.local`).
    pub cluster_domain: String,
}

/// Who sent the command (already verified).
#[derive(Clone, Debug)]
pub struct Caller {
    pub id: String,
    pub key: String,
}

pub struct Ctx<'a> {
    pub store: &'a Store,
    pub settings: &'a Settings,
    pub caller: &'a Caller,
    pub now: jiff::Timestamp,
    /// Pod uid → resource use, from heartbeats (for `top`).
    pub usage: &'a std::collections::HashMap<String, crate::master::controllers::PodUsage>,
}

/// Something the master must send because of a command.
#[derive(Clone, Debug)]
pub enum Effect {
    OpenStream { node: String, open: StreamOpen },
}

pub fn handle(ctx: &Ctx, request: Request) -> (Result<Response, ApiError>, Vec<Effect>) {
    match request {
        Request::Apply(r) => (apply::handle(ctx, r), vec![]),
        Request::Get(r) => (get::handle(ctx, r), vec![]),
        Request::Delete(r) => (delete::handle(ctx, r), vec![]),
        Request::Scale(r) => (scale::handle(ctx, r), vec![]),
        Request::ClusterInfo => (cluster_info::handle(ctx), vec![]),
        Request::Rollout(r) => (rollout::handle(ctx, r), vec![]),
        Request::SetImage(r) => (set_image::handle(ctx, r), vec![]),
        Request::Label(r) => (label::handle(ctx, r), vec![]),
        Request::Cordon(r) => (cordon::handle(ctx, r), vec![]),
        Request::Top(r) => (top::handle(ctx, r), vec![]),
        Request::Token(r) => (token::handle(ctx, r), vec![]),
        Request::Logs(r) => with_effect(logs::handle(ctx, r)),
        Request::Exec(r) => with_effect(exec::handle(ctx, r)),
        Request::PortForward(r) => with_effect(port_forward::handle(ctx, r)),
    }
}

fn with_effect(
    r: Result<(Response, Effect), ApiError>,
) -> (Result<Response, ApiError>, Vec<Effect>) {
    match r {
        Ok((resp, effect)) => (Ok(resp), vec![effect]),
        Err(e) => (Err(e), vec![]),
    }
}

pub fn store_error(e: StoreError) -> ApiError {
    let code = match &e {
        StoreError::Conflict { .. } => ErrorCode::Conflict,
        StoreError::NotFound(_) => ErrorCode::NotFound,
        StoreError::AlreadyExists(_) => ErrorCode::AlreadyExists,
        StoreError::Invalid { .. } => ErrorCode::Invalid,
        _ => ErrorCode::Internal,
    };
    ApiError::new(code, e.to_string())
}

/// A controller action as a store operation.
pub fn to_op(action: Action) -> Op {
    match action {
        Action::Create(o) => Op::Create(o),
        Action::Update(o) => Op::Update(o),
        Action::Delete {
            key,
            resource_version,
        } => Op::Delete {
            key,
            expected_rv: Some(resource_version),
        },
    }
}

/// kubectl's `pods "web" not found`.
pub fn not_found(kind: crate::api::Kind, name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("{} \"{name}\" not found", kind.plural()),
    )
}
