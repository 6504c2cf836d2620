//! Message bodies: what travels inside the envelope on each topic.
//!
//! Commands and replies are one request/response pair per verb, keyed by a
//! correlation id. Assignments and the service table are full states with a
//! generation, never deltas, so a receiver that missed one just takes the next.

use serde::{Deserialize, Serialize};

use crate::api::routing::ServiceRoute;
use crate::api::{Kind, Object, ObjectKey, Pod};
use k8s_openapi::api::core::v1::PodStatus;

/// Client → master on `cmd/<verb>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Command {
    /// Correlation id, echoed in the reply.
    pub id: u64,
    /// Topic the reply goes to (`…/reply/<client-id>`).
    pub reply_to: String,
    /// The recipient id to address the reply to (`client:<client-id>`).
    pub reply_as: String,
    pub request: Request,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Apply(ApplyRequest),
    Get(GetRequest),
    Delete(DeleteRequest),
    Scale(ScaleRequest),
    Logs(LogsRequest),
    ClusterInfo,
}

impl Request {
    /// The `cmd/<verb>` topic level this request is sent on.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Apply(_) => "apply",
            Request::Get(_) => "get",
            Request::Delete(_) => "delete",
            Request::Scale(_) => "scale",
            Request::Logs(_) => "logs",
            Request::ClusterInfo => "cluster-info",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyRequest {
    pub objects: Vec<Object>,
    pub dry_run: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GetRequest {
    pub kind: Kind,
    /// `None`: every namespace (`-A`).
    pub namespace: Option<String>,
    pub name: Option<String>,
    /// A `-l` label selector.
    pub selector: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeleteRequest {
    pub kind: Kind,
    pub namespace: String,
    /// Names to delete; empty with a selector or `all` set.
    pub names: Vec<String>,
    pub selector: Option<String>,
    pub all: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ScaleRequest {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub replicas: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogsRequest {
    pub namespace: String,
    pub pod: String,
    pub container: Option<String>,
    pub follow: bool,
    pub tail: Option<u64>,
    /// Chosen by the client, which subscribes to the stream before asking.
    pub stream_id: String,
}

/// Master → client on `reply/<client-id>`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    pub result: Result<Response, ApiError>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Response {
    Applied(Vec<Applied>),
    Objects(Vec<Object>),
    Deleted(Vec<ObjectKey>),
    Scaled(ObjectKey),
    /// The stream is opened on `node`; its chunks are signed with `node_key`.
    LogStream {
        node: String,
        node_key: String,
    },
    ClusterInfo(ClusterInfo),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    pub key: ObjectKey,
    /// `created`, `configured`, `unchanged` as kubectl prints them.
    pub outcome: String,
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub broker: String,
    pub master_key: String,
    pub nodes: Vec<String>,
    pub cluster_cidr: String,
    pub service_cidr: String,
    pub version: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    BadRequest,
    Invalid,
    NotFound,
    AlreadyExists,
    Conflict,
    Forbidden,
    Unavailable,
    Internal,
}

#[derive(Clone, Debug, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

/// Master → worker on `node/<n>/assign` (retained): every pod the node should run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Assignment {
    pub node: String,
    /// Increases with every change; a worker ignores one older than what it has.
    pub generation: u64,
    /// The node's pod CIDR, as allocated by the master.
    pub pod_cidr: String,
    /// Pods bound to the node. A pod with `deletionTimestamp` set is to be stopped.
    pub pods: Vec<Pod>,
}

/// Master → every worker on `services` (retained).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceTable {
    pub generation: u64,
    pub routes: Vec<ServiceRoute>,
}

/// Worker → master on `node/<n>/status`: heartbeat, facts, pod statuses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    /// The last assignment and service table generations the worker holds; the
    /// master republishes when they lag.
    pub assignment_generation: u64,
    pub services_generation: u64,
    pub info: NodeFacts,
    /// Every pod the worker knows, including ones being torn down.
    pub pods: Vec<PodReport>,
    /// What happened to pods since the last report (`describe` shows them).
    #[serde(default)]
    pub events: Vec<PodEvent>,
}

/// Something that happened to a pod on its node, for an Event object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodEvent {
    pub pod_uid: String,
    pub namespace: String,
    pub pod: String,
    /// `Normal` or `Warning`.
    pub type_: String,
    /// `Started`, `BackOff`, `Unhealthy`…
    pub reason: String,
    pub message: String,
    /// Unix milliseconds, by the node's clock.
    pub at: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeFacts {
    pub addresses: Vec<String>,
    pub hostname: String,
    /// GOARCH names: amd64, arm64, arm.
    pub arch: String,
    pub os: String,
    pub os_image: String,
    pub kernel_version: String,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub max_pods: i64,
    pub agent_version: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodReport {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub status: PodStatus,
    /// All containers stopped and resources released: a deleted pod may go.
    pub terminated: bool,
    /// What its running containers use, measured in their cgroups; filled in
    /// heartbeats only (it changes all the time and must not make every
    /// report differ).
    #[serde(default)]
    pub usage: Vec<ContainerUsage>,
}

/// One container's resource use, as its node measured it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUsage {
    pub container: String,
    /// CPU time used since the container started, in nanoseconds (the master
    /// turns two samples into a rate).
    pub cpu_nanos: u64,
    /// Memory working set (usage less inactive file cache), in bytes.
    pub memory_bytes: u64,
    /// When it was read, Unix milliseconds by the node's clock.
    pub at_ms: i64,
}

/// Stream control and data on `node/<n>/stream/<id>/{in,out}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum StreamMsg {
    /// Master → worker: start serving.
    Open(StreamOpen),
    /// Worker → client.
    Data {
        seq: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Worker → client: no more data (error set when it ended badly).
    End { error: Option<String> },
    /// Client → worker: everything up to `seq` arrived; also the keep-alive.
    Ack { seq: u64 },
    /// Client → worker: stop.
    Close,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StreamOpen {
    pub id: String,
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub container: String,
    pub follow: bool,
    pub tail: Option<u64>,
    /// The client's public key (hex): only it may ack or close this stream.
    pub client_key: String,
    /// The client's sender id, as it signs its acks.
    pub client_id: String,
}
